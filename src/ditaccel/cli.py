"""The ``ditaccel`` command: thin argument parsing over the library, output through rich.

The entry point (``main``). ``generate``, ``quantize``, ``schedule`` and ``demo`` live here,
``search``/``frontier`` in ``ditaccel.search.cli``, ``eval`` in ``ditaccel.evaluate.cli``; the flags
they share come from ``ditaccel.cli_common``, and no module imports this one back.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ditaccel.cli_common import (
    Parser,
    add_compile_arg,
    add_model_args,
    check_out,
    console,
    guidance_scale,
    load_model,
    positive_int,
    progress,
)
from ditaccel.errors import DitaccelError, Interrupted, ScheduleError

# ----------------------------------------------------------------------------- generate


def _resolve_prompts(args: argparse.Namespace) -> list[str]:
    from ditaccel.prompts import load_prompts

    if args.prompt:
        return list(args.prompt)
    if args.prompts:
        return load_prompts(args.prompts)
    raise DitaccelError("no prompts given; pass --prompt TEXT or --prompts SET|FILE")


_INDEX = "images.jsonl"


def _earlier_images(out: Path, resume: bool) -> list[dict[str, Any]]:
    """The records of an earlier ``generate`` in ``out`` (``check_out`` refused a non-empty one without ``--resume``)."""
    from ditaccel._io import read_checked_jsonl

    if not (out.is_dir() and any(out.iterdir())):
        if resume:
            console.print(f"--resume: {out} holds no earlier images; starting a new folder")
        return []
    if not (out / _INDEX).is_file():
        raise DitaccelError(f"--out {out} holds files but no {_INDEX}, so it is not a `ditaccel generate` folder; "
                            "choose a new folder")
    fix = "restore it from a copy, or choose a new --out"
    rows = read_checked_jsonl(out / _INDEX, "image index", fix)
    if not rows:  # generate writes the index after its first batch: never empty
        raise DitaccelError(f"{out / _INDEX} indexes no images (emptied?); {fix}")
    if any(r.get("count") not in (None, len(rows)) for r in rows):  # each record knows the index's length
        raise DitaccelError(f"{out / _INDEX} holds {len(rows)} records but says it held {rows[-1].get('count')} "
                            f"(cut short?); {fix}")
    for r in rows:
        r.pop("count", None)
    for i, r in enumerate(rows, 1):
        if not (isinstance(r.get("file"), str) and r["file"].removesuffix(".png").isdigit()
                and isinstance(r.get("prompt"), str) and isinstance(r.get("seed"), int)):
            raise DitaccelError(f"{out / _INDEX} line {i} is not a `ditaccel generate` record; {fix}")
        if not (out / r["file"]).is_file():
            raise DitaccelError(f"{out / _INDEX} lists {r['file']}, which is not in {out}; {fix}")
    return rows


def _next_number(out: Path, records: list[dict[str, Any]]) -> int:
    """One past the highest numbered image, indexed or not, so no earlier file is ever replaced."""
    names = [r["file"] for r in records] + ([f.name for f in out.glob("*.png")] if out.is_dir() else [])
    nums = [int(n.removesuffix(".png")) for n in names if n.removesuffix(".png").isdigit()]
    return max(nums, default=-1) + 1


def cmd_generate(args: argparse.Namespace) -> int:
    from ditaccel.prompts import parse_seeds

    prompts = _resolve_prompts(args)
    seeds = parse_seeds(args.seeds)
    if args.batch_size < 1:
        raise DitaccelError(f"--batch-size must be >= 1, got {args.batch_size}")
    out: Path = check_out(args.out, "--resume", args.resume, to=" to add to its images")
    records = _earlier_images(out, args.resume)
    schedule = None
    if args.schedule is not None:
        from ditaccel.caching import CacheSchedule

        schedule = CacheSchedule.load(args.schedule)
    pipe = load_model(args)
    from ditaccel.pipeline import pipeline_call_kwargs

    call = {"num_inference_steps": args.steps, "guidance_scale": args.guidance}
    effective = pipeline_call_kwargs(pipe, **call)
    meta = {"steps": effective.get("num_inference_steps"), "guidance": effective.get("guidance_scale")}
    if args.schedule is not None:
        meta["schedule"] = str(args.schedule)
    if args.quantized is not None:
        meta["quantized"] = str(args.quantized)
    def key(record: dict[str, Any]) -> str:
        return json.dumps({k: v for k, v in record.items() if k != "file"}, sort_keys=True)

    done = {key(r) for r in records}
    jobs = [(p, s) for p in prompts for s in seeds if key({"prompt": p, "seed": s, **meta}) not in done]
    if len(jobs) < len(prompts) * len(seeds):
        console.print(f"--resume: {len(prompts) * len(seeds) - len(jobs)} images are already in {out}; "
                      f"generating the other {len(jobs)}")
    handle = None
    if schedule is not None:
        from ditaccel.caching import apply_schedule

        steps = effective.get("num_inference_steps")
        if steps is not None and steps != schedule.steps:
            console.print(f"schedule made for {schedule.steps} steps; mapping it to {steps} by nearest step")
            schedule = schedule.resample(steps)
        handle = apply_schedule(pipe, schedule)
    t0 = time.perf_counter()
    try:
        written = _generate_into(pipe, out, jobs, records, meta, call, args.batch_size)
    finally:
        if handle is not None:
            handle.remove()
    console.print(f"wrote {written} images to {out} in {time.perf_counter() - t0:.1f}s "
                  f"({len(records)} in its {_INDEX})")
    return 0


def _generate_into(pipe: Any, out: Path, jobs: list[tuple[str, int]], records: list[dict[str, Any]],
                   meta: dict[str, Any], call: dict[str, Any], batch_size: int) -> int:
    """Generate ``jobs`` into ``out``, adding to ``records``; the index is rewritten after every batch."""
    from PIL import Image

    from ditaccel._io import atomic_write, atomic_write_text, checked_jsonl_line
    from ditaccel.pipeline import generate_images

    out.mkdir(parents=True, exist_ok=True)
    number, written = _next_number(out, records), 0
    try:
        with progress() as prog:
            task = prog.add_task("generating", total=len(jobs))
            for start in range(0, len(jobs), batch_size):
                chunk = jobs[start : start + batch_size]
                images = generate_images(pipe, [p for p, _ in chunk], [s for _, s in chunk],
                                         batch_size=batch_size, **call)
                for (prompt, seed), img in zip(chunk, images, strict=True):
                    name = f"{number:05d}.png"
                    atomic_write(out / name, lambda tmp, img=img: Image.fromarray(img).save(tmp, format="PNG"))
                    records.append({"file": name, "prompt": prompt, "seed": seed, **meta})
                    number += 1
                # a crash keeps every finished batch indexed; an unindexed image is never overwritten
                atomic_write_text(out / _INDEX, "".join(checked_jsonl_line({**r, "count": len(records)})
                                                        for r in records))
                written += len(chunk)
                prog.advance(task, len(chunk))
    except KeyboardInterrupt:
        raise Interrupted(f"kept {written} new images in {out} ({len(records)} indexed in {_INDEX}); rerun the "
                          f"same command with --resume to generate the other {len(jobs) - written}") from None
    return written


# ----------------------------------------------------------------------------- quantize


# The paper's 2500 AdaRound iterations take ~47 min on the bundled model on 2 CPU cores
# (bench/results/quant.md); 300 keep `quantize` within ~7 min there.
BUNDLED_ADAROUND_ITERS = 300


def cmd_quantize(args: argparse.Namespace) -> int:
    from ditaccel.models import image_size
    from ditaccel.pipeline import is_bundled, pipeline_call_kwargs
    from ditaccel.prompts import load_prompts, parse_seeds
    from ditaccel.quant import (
        FP4DiTConfig,
        calibration_from_images,
        collect_calibration,
        load_image_folder,
        quantize_,
        save_quantized,
    )
    from ditaccel.quant.formats import FORMAT_ALIASES

    out: Path = check_out(args.out, "--overwrite", args.overwrite, to=" to write into it")
    bundled = is_bundled(args.model)
    iters = args.iters if args.iters is not None else (BUNDLED_ADAROUND_ITERS if bundled else 2500)
    if iters < 1:
        raise DitaccelError(f"--iters must be >= 1, got {iters}")
    weights = FORMAT_ALIASES.get(args.weights, args.weights)
    acts = FORMAT_ALIASES.get(args.acts, args.acts)
    config = FP4DiTConfig(weights=weights, acts=acts, adaround=not args.no_adaround, iters=iters,
                          kept_storage=args.kept_storage)
    prompts = load_prompts(args.calib_prompts) if args.calib_prompts else _default_calib_prompts(bundled)
    seeds = parse_seeds(args.calib_seeds)
    if args.quantized is not None:
        raise DitaccelError("quantize starts from full-precision weights; drop --quantized")
    folders = [Path(f) for f in (args.calib_images or [])]
    for folder in folders:  # before loading the model
        if not folder.is_dir():
            raise DitaccelError(f"--calib-images {folder} is not a folder; pass a folder of images + captions")
    pipe = load_model(args)
    t0 = time.perf_counter()
    try:  # nothing is written before the end, so an interruption loses only time
        console.print(f"collecting calibration data: {len(prompts)} prompts x {len(seeds)} seeds along the sampler")
        kw = pipeline_call_kwargs(pipe, num_inference_steps=args.steps)
        calib = collect_calibration(pipe, prompts, seeds, **kw)
        h, w = image_size(pipe, kw)
        for folder in folders:  # the paper's way too: real images, VAE-encoded, noised at every step
            images, captions = load_image_folder(folder, h, w)
            console.print(f"adding {len(images)} real images from {folder}, noised along the sampler's timesteps")
            calib = calib + calibration_from_images(pipe, images, captions, **kw)
        report = quantize_(pipe.transformer, config, calib=calib)
    except KeyboardInterrupt:
        raise Interrupted(f"nothing was written to {out} (quantize writes it only when done); rerun to start "
                          "again") from None
    stats = save_quantized(pipe.transformer, out, config)
    console.print(
        f"quantized in {time.perf_counter() - t0:.0f}s: {stats.get('bits_per_weight', float('nan')):.2f} bits/weight, "
        f"file {stats.get('file_ratio_vs_fp16', float('nan')):.2f}x of fp16 -> {out}"
    )
    if report.block_mse and report.block_mse_rtn:
        rtn = sum(report.block_mse_rtn.values()) / len(report.block_mse_rtn)
        ada = sum(report.block_mse.values()) / len(report.block_mse)
        console.print(f"mean block reconstruction MSE: round-to-nearest {rtn:.3e} -> calibrated {ada:.3e}")
    return 0


def _default_calib_prompts(bundled: bool) -> list[str]:
    from ditaccel.prompts import load_prompts

    return load_prompts("calibration") if bundled else load_prompts("parti", limit=32)


# ----------------------------------------------------------------------------- schedule convert


def cmd_schedule_convert(args: argparse.Namespace) -> int:
    from ditaccel.caching import CacheSchedule
    from ditaccel.caching.ecad_format import is_ecad

    src: Path = args.input
    out: Path = args.output
    if out.exists() and not args.overwrite:
        raise DitaccelError(f"{out} exists; pick a new file or pass --overwrite")
    if out.exists() and out.resolve() == src.resolve():
        raise DitaccelError(f"IN and OUT are the same file {out}; write the conversion to a new file")
    from ditaccel._io import read_json

    d = read_json(src, "schedule file", "pass a ditaccel or ECAD schedule file", ScheduleError)
    schedule = CacheSchedule.from_dict(d, source=str(src))
    to = args.to or ("ditaccel" if is_ecad(d) else "ecad")
    model = None
    if args.model is not None:
        from ditaccel.pipeline import load_pipeline

        model = load_pipeline(args.model, device="cpu", dtype="float32")
        schedule.validate_for(model)
    if to == "ecad":
        schedule.to_ecad(out, model)
    else:
        schedule.save(out)
    console.print(f"wrote {out} ({to} format): {schedule.family}, {schedule.steps} steps x {schedule.blocks} "
                  f"blocks, {schedule.recompute_fraction():.1%} of components recomputed")
    return 0


# ----------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    from ditaccel.demo import run_demo

    check_out(args.out)
    try:
        return run_demo(args.out, generations=args.generations, population=args.population, console=console)
    except KeyboardInterrupt:
        raise Interrupted(f"the search so far is kept in {args.out / 'search'} (its checkpoint, if a generation "
                          "finished); rerun the same `ditaccel demo` to continue it") from None


# ----------------------------------------------------------------------------- entry


def _add_generate_parser(sub: Any) -> None:
    g = sub.add_parser("generate", help="generate images (optionally with a cache schedule / quantized model)")
    add_model_args(g)
    src = g.add_mutually_exclusive_group()
    src.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    src.add_argument("--prompts", help="prompt set (calibration, heldout, all, parti, coco, drawbench, imagereward) or file")
    g.add_argument("--seeds", default="0", help="e.g. 0,1,2 or 0-7")
    g.add_argument("--steps", type=positive_int, default=None, help="denoising steps (model default when omitted)")
    g.add_argument("--guidance", type=guidance_scale, default=None, help="CFG scale (model default when omitted)")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--schedule", type=Path, default=None, help="CacheSchedule JSON")
    add_compile_arg(g)
    g.add_argument("--out", type=Path, required=True,
                   help="output folder: NNNNN.png + images.jsonl. A folder that already holds files is refused "
                        "unless --resume")
    g.add_argument("--resume", action="store_true",
                   help="add to the images already in --out: prompt/seed pairs indexed there with the same "
                        "settings are skipped (finishes an interrupted run), new images are numbered after the "
                        "existing ones; nothing is overwritten")
    g.set_defaults(func=cmd_generate)


def _add_quantize_parser(sub: Any) -> None:
    q = sub.add_parser("quantize", help="FP4DiT post-training quantization of the transformer (packed FP4 weights)")
    add_model_args(q)
    from ditaccel.quant.api import ACT_CHOICES, WEIGHT_CHOICES
    from ditaccel.quant.formats import formats_help

    q.add_argument("--weights", default="e2m1",
                   help=f"{formats_help(WEIGHT_CHOICES)} (default e2m1; the first FFN linear gets E3M0)")
    q.add_argument("--acts", default="e3m4", help=f"{formats_help(ACT_CHOICES)} (online, per token)")
    q.add_argument("--calib-prompts", default=None, help="prompt set or file (default: the model's calibration prompts)")
    q.add_argument("--calib-seeds", default="0", help="seeds per calibration prompt")
    q.add_argument("--calib-images", action="append", metavar="DIR",
                   help="also calibrate on real images, noised at every step (the paper's way): a folder of images "
                        "with NAME.txt captions or an images.jsonl (repeatable)")
    q.add_argument("--steps", type=positive_int, default=None, help="sampler steps for the calibration trajectories")
    q.add_argument("--iters", type=int, default=None,
                   help=f"AdaRound iterations per block (default: the paper's 2500; {BUNDLED_ADAROUND_ITERS} on the bundled model)")
    q.add_argument("--no-adaround", action="store_true", help="round-to-nearest only")
    q.add_argument("--kept-storage", default="float16",
                   help="storage of the layers kept out of 4-bit (embeddings, adaLN, final layer): float16 (default), "
                        "bfloat16, model (its own dtype), or int8 weights for the smallest file")
    q.add_argument("--overwrite", action="store_true", help="allow a non-empty --out")
    q.add_argument("--out", type=Path, required=True)
    q.set_defaults(func=cmd_quantize)


def _add_schedule_parser(sub: Any) -> None:
    sc = sub.add_parser("schedule", help="cache schedule files: convert between ditaccel's and ECAD's JSON")
    sc_sub = sc.add_subparsers(dest="schedule_command", required=True)
    cv = sc_sub.add_parser("convert", help="ECAD schedule JSON <-> ditaccel schedule JSON (input format detected)")
    cv.add_argument("input", type=Path, metavar="IN", help="schedule file, ditaccel's or ECAD's")
    cv.add_argument("output", type=Path, metavar="OUT", help="file to write")
    cv.add_argument("--to", choices=("ecad", "ditaccel"), default=None,
                    help="output format (default: the other one)")
    cv.add_argument("--model", default=None,
                    help="pipeline to check the schedule against (and, for FLUX, its double/single block split)")
    cv.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    cv.set_defaults(func=cmd_schedule_convert)


def _add_demo_parser(sub: Any) -> None:
    d = sub.add_parser("demo", help="a short caching search on the bundled model, printed next to FORA, with images")
    d.add_argument("--out", type=Path, default=Path("runs/demo"))
    d.add_argument("--generations", type=positive_int, default=4)
    d.add_argument("--population", type=positive_int, default=16)
    d.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    """The ``ditaccel`` parser: each subcommand's flags are registered by its own function."""
    from ditaccel.evaluate.cli import add_parsers as add_eval_parsers
    from ditaccel.search.cli import add_parsers as add_search_parsers

    ap = Parser(prog="ditaccel", description="Faster, smaller diffusion transformers.")
    sub = ap.add_subparsers(dest="command", required=True)
    for add in (_add_generate_parser, _add_quantize_parser, _add_schedule_parser, add_search_parsers,
                add_eval_parsers, _add_demo_parser):
        add(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; user errors print one ``ditaccel: error:`` line (exit 2), Ctrl-C what was kept (130)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if hasattr(args, "device"):
            from ditaccel.device import resolve_args

            resolve_args(args)  # 'auto' -> 'cuda'/'cpu' and a torch dtype; unknown devices fail here, in one line
        return int(args.func(args) or 0)
    except DitaccelError as e:
        return _fail(str(e))
    except OSError as e:  # disk full, permissions, a path that vanished: the OS's reason, not a traceback
        where = f" {e.filename}" if e.filename else ""
        return _fail(f"cannot access{where}: {e.strerror or type(e).__name__}; check the path, its permissions "
                     "and free space")
    except Interrupted as e:
        print(f"ditaccel: interrupted: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("ditaccel: interrupted", file=sys.stderr)
        return 130


def _fail(message: str) -> int:
    print("ditaccel: error: " + " ".join(message.split("\n")), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
