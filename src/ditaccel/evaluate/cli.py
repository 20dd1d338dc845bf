"""``ditaccel eval``: argument parsing only; the work is in ``ditaccel.evaluate``."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ditaccel.cli_common import (
    add_compile_arg,
    add_metric_path_arg,
    add_model_args,
    check_out,
    console,
    guidance_scale,
    load_model,
    metric_names_help,
    parse_metric_paths,
    positive_int,
)
from ditaccel.errors import DitaccelError, Interrupted


def _seeds(text: str) -> list[int]:
    from ditaccel.prompts import parse_seeds

    return parse_seeds(text)


def cmd_eval(args: argparse.Namespace) -> int:
    from ditaccel.evaluate import EvalConfig, evaluate
    from ditaccel.evaluate.runner import precheck

    out: Path = check_out(args.out)
    if args.batch_size < 1 or args.repeats < 1 or args.timing_images < 1:
        raise DitaccelError("--batch-size, --repeats and --timing-images must be >= 1")
    if getattr(args, "quantized", None) is not None:
        raise DitaccelError("eval quantizes for its fp4-*/int-* rows itself; drop --quantized")
    paths = parse_metric_paths(args.metric_path)  # any metric's keys: each metric takes its own
    cfg = EvalConfig(
        methods=args.methods, out=out, prompts=args.prompts, seeds=_seeds(args.seeds), metrics=args.metrics,
        reference=args.reference, metric_paths=paths, model=args.model, device=args.device, steps=args.steps,
        guidance=args.guidance, batch_size=args.batch_size, limit=args.limit, timing_images=args.timing_images,
        timing_repeats=args.repeats, quant_calib_prompts=args.quant_calib_prompts, ray_address=args.ray,
        command="ditaccel " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )
    precheck(cfg)  # one-line errors (methods, metrics, weights, reference) before the model loads
    pipe = load_model(args)
    try:
        result = evaluate(cfg, pipe=pipe)
    except KeyboardInterrupt:
        kept = sum(1 for _ in (out / "images").glob("*/*.png"))
        raise Interrupted(f"kept {kept} generated images under {out / 'images'}; rerun the same command to reuse "
                          "them and generate the rest") from None
    from ditaccel.evaluate.report import markdown

    console.print(markdown(result))
    console.print(f"wrote {out}/results.md, results.json, grid.png, quality_vs_speed.png")
    return 0


def add_parsers(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``eval`` on the main ``ditaccel`` parser."""
    from ditaccel.evaluate.methods import methods_table

    p = subparsers.add_parser(
        "eval", help="compare methods and peers side by side (speed, MACs, memory, quality)",
        description="Every method on the same prompts, seeds and machine: measured speedup, MACs speedup, "
                    "peak memory, weight bytes, PSNR/SSIM to the baseline, adherence (bundled model) and "
                    "CLIP/ImageReward/HPSv2/FID from local weights.")
    add_model_args(p)
    add_compile_arg(p)
    p.add_argument("--methods", required=True,
                   help="comma list of rows, a cache and a quantization joined by '+' (e.g. "
                        "baseline,fora:3,fbc:sweep,fp4-w4a8+ecad:runs/x:2.5x); NAME:sweep expands to NAME's "
                        f"knob grid, peers:sweep to every grid. Methods: {methods_table()}")
    p.add_argument("--prompts", default="heldout",
                   help="calibration, heldout, all, parti, coco, drawbench, imagereward, or a file (MJHQ meta_data.json)")
    p.add_argument("--seeds", default="0", help="e.g. 0,1,2 or 0-3")
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N prompts")
    p.add_argument("--metrics", default=None,
                   help=f"comma list of {metric_names_help()} (default: adherence on the bundled model, psnr, "
                        "ssim)")
    add_metric_path_arg(p)
    p.add_argument("--reference", type=Path, default=None, help="FID reference: folder of images or .npz stats")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=positive_int, default=None, help="denoising steps (model default when omitted)")
    p.add_argument("--guidance", type=guidance_scale, default=None, help="CFG scale (model default when omitted)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--timing-images", type=int, default=2, help="images per timed generation")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per method (median; 1 warm-up first)")
    p.add_argument("--quant-calib-prompts", type=positive_int, default=8, help="calibration prompts for fp4-*/int-* rows")
    p.add_argument("--ray", default=None, metavar="ADDR", help="spread image generation over a Ray cluster "
                   "(address, or 'local')")
    p.set_defaults(func=cmd_eval)
    return p
