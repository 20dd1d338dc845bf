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


def _load(args: argparse.Namespace) -> Any:
    from ditaccel.pipeline import load_pipeline

    pipe = load_pipeline(args.model, device=args.device)
    if getattr(args, "quantized", None) is not None:
        from ditaccel.quant import load_quantized

        load_quantized(args.quantized, pipe)
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
    from ditaccel._io import atomic_write, atomic_write_text
    from ditaccel.pipeline import generate_images
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
    from ditaccel.pipeline import pipeline_call_kwargs

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
    from PIL import Image

    records = []
    meta = {"steps": effective.get("num_inference_steps"), "guidance": effective.get("guidance_scale")}
    if args.schedule is not None:
        meta["schedule"] = str(args.schedule)
    if args.quantized is not None:
        meta["quantized"] = str(args.quantized)
    t0 = time.perf_counter()
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
            atomic_write_text(out / "images.jsonl", "".join(json.dumps(r) + "\n" for r in records))
            prog.advance(task, len(chunk))
    if handle is not None:
        handle.remove()
    console.print(f"wrote {len(records)} images to {out} in {time.perf_counter() - t0:.1f}s")
    return 0


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
    g.add_argument("--out", type=Path, required=True)
    g.set_defaults(func=cmd_generate)
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
