"""``ditaccel eval``: argument parsing only; the work is in ``ditaccel.evaluate``."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ditaccel.errors import DitaccelError, Interrupted


def _seeds(text: str) -> list[int]:
    from ditaccel.prompts import parse_seeds

    return parse_seeds(text)


def cmd_eval(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ditaccel.evaluate import EvalConfig, evaluate
    from ditaccel.evaluate.runner import precheck

    console = Console(stderr=True)
    from ditaccel._io import check_out_dir

    out: Path = check_out_dir(args.out)
    if args.batch_size < 1 or args.repeats < 1 or args.timing_images < 1:
        raise DitaccelError("--batch-size, --repeats and --timing-images must be >= 1")
    if getattr(args, "quantized", None) is not None:
        raise DitaccelError("eval quantizes for its fp4-*/int-* rows itself; drop --quantized")
    paths = {k: v for k, v in {
        "clip_path": args.clip, "imagereward_path": args.imagereward, "med_config": args.imagereward_med_config,
        "bert_path": args.bert, "hpsv2_path": args.hpsv2, "open_clip_path": args.open_clip,
        "inception_path": args.inception}.items() if v is not None}
    cfg = EvalConfig(
        methods=args.methods, out=out, prompts=args.prompts, seeds=_seeds(args.seeds), metrics=args.metrics,
        reference=args.reference, metric_paths=paths, model=args.model, device=args.device, steps=args.steps,
        guidance=args.guidance, batch_size=args.batch_size, limit=args.limit, timing_images=args.timing_images,
        timing_repeats=args.repeats, quant_calib_prompts=args.quant_calib_prompts, ray_address=args.ray,
        command="ditaccel " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )
    precheck(cfg)  # one-line errors (methods, metrics, weights, reference) before the model loads
    from ditaccel.cli import _load

    pipe = _load(args)
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
    from ditaccel.cli import _add_model_args, add_compile_arg, guidance_scale, positive_int
    from ditaccel.evaluate.methods import methods_table

    p = subparsers.add_parser(
        "eval", help="compare methods and peers side by side (speed, MACs, memory, quality)",
        description="Every method on the same prompts, seeds and machine: measured speedup, MACs speedup, "
                    "peak memory, weight bytes, PSNR/SSIM to the baseline, adherence (bundled model) and "
                    "CLIP/ImageReward/HPSv2/FID from local weights.")
    _add_model_args(p)
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
                   help="comma list of adherence, psnr, ssim, clip, imagereward, hpsv2, fid "
                        "(default: adherence on the bundled model, psnr, ssim)")
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
    for flag, what in (("--clip", "transformers CLIP folder"), ("--imagereward", "ImageReward.pt"),
                       ("--imagereward-med-config", "ImageReward med_config.json"),
                       ("--bert", "bert-base-uncased tokenizer folder"), ("--hpsv2", "HPSv2 checkpoint"),
                       ("--open-clip", "open_clip ViT-H-14 weights"), ("--inception", "FID Inception weights")):
        p.add_argument(flag, type=Path, default=None, help=f"local {what}")
    p.set_defaults(func=cmd_eval)
    return p
