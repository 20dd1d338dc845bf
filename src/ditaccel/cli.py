"""The ``ditaccel`` command: thin argument parsing over the library, output through rich."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ditaccel.errors import DitaccelError

console = Console(stderr=True)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=False,
    )


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DitaccelError(f"--out {out} is a file; pass a folder path")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="pipeline folder or hub id (default: the bundled model)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--quantized", type=Path, default=None, help="folder written by `ditaccel quantize`")


def add_compile_arg(p: argparse.ArgumentParser) -> None:
    """``--compile``: regional torch.compile of the cacheable components (see ditaccel.caching.compile)."""
    p.add_argument("--compile", action="store_true",
                   help="torch.compile (inductor) each cacheable component; cache schedules then add no graph "
                        "break and no recompile (the first generation pays the compile time)")


def _load(args: argparse.Namespace) -> Any:
    from ditaccel.pipeline import load_pipeline

    pipe = load_pipeline(args.model, device=args.device)
    if getattr(args, "quantized", None) is not None:
        from ditaccel.quant import load_quantized

        load_quantized(args.quantized, pipe)
    if getattr(args, "compile", False):
        from ditaccel.caching import compile_components

        compile_components(pipe)
    return pipe


# ----------------------------------------------------------------------------- generate


def _resolve_prompts(args: argparse.Namespace) -> list[str]:
    from ditaccel.prompts import load_prompts

    if args.prompt:
        return list(args.prompt)
    if args.prompts:
        return load_prompts(args.prompts)
    raise DitaccelError("no prompts given; pass --prompt TEXT or --prompts SET|FILE")


def cmd_generate(args: argparse.Namespace) -> int:
    from PIL import Image

    from ditaccel._io import atomic_write, atomic_write_text
    from ditaccel.pipeline import generate_images, pipeline_call_kwargs
    from ditaccel.prompts import parse_seeds

    prompts = _resolve_prompts(args)
    seeds = parse_seeds(args.seeds)
    if args.batch_size < 1:
        raise DitaccelError(f"--batch-size must be >= 1, got {args.batch_size}")
    out: Path = args.out
    _check_out_dir(out)
    schedule = None
    if args.schedule is not None:
        from ditaccel.caching import CacheSchedule

        schedule = CacheSchedule.load(args.schedule)
    pipe = _load(args)
    call = {"num_inference_steps": args.steps, "guidance_scale": args.guidance}
    effective = pipeline_call_kwargs(pipe, **call)
    handle = None
    if schedule is not None:
        from ditaccel.caching import apply_schedule

        steps = effective.get("num_inference_steps")
        if steps is not None and steps != schedule.steps:
            console.print(f"schedule made for {schedule.steps} steps; mapping it to {steps} by nearest step")
            schedule = schedule.resample(steps)
        handle = apply_schedule(pipe, schedule)
    jobs = [(p, s) for p in prompts for s in seeds]
    out.mkdir(parents=True, exist_ok=True)
    records = []
    meta = {"steps": effective.get("num_inference_steps"), "guidance": effective.get("guidance_scale")}
    if args.schedule is not None:
        meta["schedule"] = str(args.schedule)
    if args.quantized is not None:
        meta["quantized"] = str(args.quantized)
    t0 = time.perf_counter()
    try:
        with _progress() as prog:
            task = prog.add_task("generating", total=len(jobs))
            for start in range(0, len(jobs), args.batch_size):
                chunk = jobs[start : start + args.batch_size]
                images = generate_images(
                    pipe, [p for p, _ in chunk], [s for _, s in chunk], batch_size=args.batch_size, **call
                )
                for k, ((prompt, seed), img) in enumerate(zip(chunk, images, strict=True)):
                    name = f"{start + k:05d}.png"
                    atomic_write(out / name, lambda tmp, img=img: Image.fromarray(img).save(tmp, format="PNG"))
                    records.append({"file": name, "prompt": prompt, "seed": seed, **meta})
                # the index is rewritten after every batch, so a crash keeps what was written
                atomic_write_text(out / "images.jsonl", "".join(json.dumps(r) + "\n" for r in records))
                prog.advance(task, len(chunk))
    finally:
        if handle is not None:
            handle.remove()
    console.print(f"wrote {len(records)} images to {out} in {time.perf_counter() - t0:.1f}s")
    return 0


# ----------------------------------------------------------------------------- quantize


# design.md's shorthands: fp4 = E2M1 weights, fp8 = E3M4 (the paper's A8), fp6 = E2M3 (A6).
_FORMAT_ALIASES = {"fp4": "e2m1", "fp8": "e3m4", "fp6": "e2m3"}
# The paper's 2500 AdaRound iterations take ~47 min on the bundled model on 2 CPU cores
# (bench/results/quant.md); 300 keep `quantize` within ~7 min there.
BUNDLED_ADAROUND_ITERS = 300


def cmd_quantize(args: argparse.Namespace) -> int:
    from ditaccel.models import image_size
    from ditaccel.pipeline import pipeline_call_kwargs
    from ditaccel.prompts import load_prompts, parse_seeds
    from ditaccel.quant import (
        FP4DiTConfig,
        calibration_from_images,
        collect_calibration,
        load_image_folder,
        quantize_,
        save_quantized,
    )

    out: Path = args.out
    _check_out_dir(out)
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise DitaccelError(f"--out {out} is not empty; pick a new folder or pass --overwrite")
    iters = args.iters if args.iters is not None else (BUNDLED_ADAROUND_ITERS if args.model is None else 2500)
    if iters < 1:
        raise DitaccelError(f"--iters must be >= 1, got {iters}")
    weights = _FORMAT_ALIASES.get(args.weights, args.weights)
    acts = _FORMAT_ALIASES.get(args.acts, args.acts)
    config = FP4DiTConfig(weights=weights, acts=acts, adaround=not args.no_adaround, iters=iters,
                          kept_storage=args.kept_storage)
    prompts = load_prompts(args.calib_prompts) if args.calib_prompts else _default_calib_prompts(args.model)
    seeds = parse_seeds(args.calib_seeds)
    if args.quantized is not None:
        raise DitaccelError("quantize starts from full-precision weights; drop --quantized")
    folders = [Path(f) for f in (args.calib_images or [])]
    for folder in folders:  # before loading the model
        if not folder.is_dir():
            raise DitaccelError(f"--calib-images {folder} is not a folder; pass a folder of images + captions")
    pipe = _load(args)
    t0 = time.perf_counter()
    console.print(f"collecting calibration data: {len(prompts)} prompts x {len(seeds)} seeds along the sampler")
    kw = pipeline_call_kwargs(pipe, num_inference_steps=args.steps)
    calib = collect_calibration(pipe, prompts, seeds, **kw)
    h, w = image_size(pipe, kw)
    for folder in folders:  # the paper's way too: real images, VAE-encoded, noised at every step
        images, captions = load_image_folder(folder, h, w)
        console.print(f"adding {len(images)} real images from {folder}, noised along the sampler's timesteps")
        calib = calib + calibration_from_images(pipe, images, captions, **kw)
    report = quantize_(pipe.transformer, config, calib=calib)
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


def _default_calib_prompts(model: str | None) -> list[str]:
    from ditaccel.prompts import load_prompts

    return load_prompts("calibration") if model is None else load_prompts("parti", limit=32)


# ----------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    from ditaccel.demo import run_demo

    return run_demo(args.out, generations=args.generations, population=args.population, console=console)


# ----------------------------------------------------------------------------- entry


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ditaccel", description="Faster, smaller diffusion transformers.")
    sub = ap.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate images (optionally with a cache schedule / quantized model)")
    _add_model_args(g)
    src = g.add_mutually_exclusive_group()
    src.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    src.add_argument("--prompts", help="prompt set (calibration, heldout, all, parti, coco, drawbench, imagereward) or file")
    g.add_argument("--seeds", default="0", help="e.g. 0,1,2 or 0-7")
    g.add_argument("--steps", type=int, default=None, help="denoising steps (model default when omitted)")
    g.add_argument("--guidance", type=float, default=None, help="CFG scale (model default when omitted)")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--schedule", type=Path, default=None, help="CacheSchedule JSON")
    add_compile_arg(g)
    g.add_argument("--out", type=Path, required=True)
    g.set_defaults(func=cmd_generate)

    q = sub.add_parser("quantize", help="FP4DiT post-training quantization of the transformer (packed FP4 weights)")
    _add_model_args(q)
    q.add_argument("--weights", default="e2m1",
                   help="e2m1 (= fp4) | e1m2 | e3m0 | auto | int4 (default e2m1; the first FFN linear gets E3M0)")
    q.add_argument("--acts", default="e3m4", help="e2m3 (= fp6) | e3m4 (= fp8) | e4m3 | int8 | none (online, per token)")
    q.add_argument("--calib-prompts", default=None, help="prompt set or file (default: the model's calibration prompts)")
    q.add_argument("--calib-seeds", default="0", help="seeds per calibration prompt")
    q.add_argument("--calib-images", action="append", metavar="DIR",
                   help="also calibrate on real images, noised at every step (the paper's way): a folder of images "
                        "with NAME.txt captions or an images.jsonl (repeatable)")
    q.add_argument("--steps", type=int, default=None, help="sampler steps for the calibration trajectories")
    q.add_argument("--iters", type=int, default=None,
                   help=f"AdaRound iterations per block (default: the paper's 2500; {BUNDLED_ADAROUND_ITERS} on the bundled model)")
    q.add_argument("--no-adaround", action="store_true", help="round-to-nearest only")
    q.add_argument("--kept-storage", default="float16",
                   help="storage of the layers kept out of 4-bit (embeddings, adaLN, final layer): float16 (default), "
                        "bfloat16, model (its own dtype), or int8 weights for the smallest file")
    q.add_argument("--overwrite", action="store_true", help="allow a non-empty --out")
    q.add_argument("--out", type=Path, required=True)
    q.set_defaults(func=cmd_quantize)

    from ditaccel.evaluate.cli import add_parsers as add_eval_parsers
    from ditaccel.search.cli import add_parsers as add_search_parsers

    add_search_parsers(sub)
    add_eval_parsers(sub)

    d = sub.add_parser("demo", help="a short caching search on the bundled model, printed next to FORA, with images")
    d.add_argument("--out", type=Path, default=Path("runs/demo"))
    d.add_argument("--generations", type=int, default=4)
    d.add_argument("--population", type=int, default=16)
    d.set_defaults(func=cmd_demo)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DitaccelError as e:
        print(f"ditaccel: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
