"""``auto`` (FP and INT per layer) against all-FP and all-INT, on the bundled model and a heavy-tailed copy.

Why: a uniform INT grid suits light-tailed weights, FP's log grid heavy-tailed ones, and a
user cannot tell which case a model is in. The bundled model's weights are light-tailed
(kurtosis ~2.2); the synthetic model maps each quantized layer's weights through a
Student-t quantile transform (rank -> t quantile, rescaled to the layer's own mean and
standard deviation), which keeps every weight's order and the layer's variance but gives
real-DiT-like heavy tails. Round-to-nearest block reconstruction MSE on the same
calibration data, activations in full precision (weights only).

Run: OMP_NUM_THREADS=1 python bench/bench_quant_auto.py [--df 4] [--prompts 8]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from scipy import stats

from ditaccel._io import atomic_write_text
from ditaccel._machine import machine_description
from ditaccel.quant import FP4DiTConfig, collect_calibration, quantize_
from ditaccel.quant.api import format_summary, target_linears

HERE = Path(__file__).resolve().parent

CONFIGS = [  # (label, weights, first FFN format, auto candidates)
    ("FP: e2m1 + e3m0 first FFN (paper)", "e2m1", "e3m0", None),
    ("FP: e1m2 everywhere", "e1m2", None, None),
    ("all-FP auto (e2m1/e1m2/e3m0 per layer)", "auto", None, ("e2m1", "e1m2", "e3m0")),
    ("all-INT (int4 min-max)", "int4", None, None),
    ("auto (e2m1/e1m2/e3m0/int4 per layer and block)", "auto", None, ("e2m1", "e1m2", "e3m0", "int4")),
]


@torch.no_grad()
def student_t_copy(transformer: torch.nn.Module, df: float) -> torch.nn.Module:
    """The model with every quantized layer's weights mapped through a Student-t quantile transform."""
    t = copy.deepcopy(transformer)
    for name in target_linears(t, FP4DiTConfig()):
        w = t.get_submodule(name).weight
        flat = w.detach().double().flatten()
        u = (torch.argsort(torch.argsort(flat)).double() + 0.5) / flat.numel()
        q = torch.from_numpy(stats.t.ppf(u.numpy(), df))
        q = (q - q.mean()) / q.std() * flat.std() + flat.mean()
        w.copy_(q.view_as(w).to(w.dtype))
    return t


def kurtosis(transformer: torch.nn.Module) -> float:
    """Mean over quantized layers of the weights' kurtosis (Gaussian 3, uniform 1.8)."""
    ks = []
    for name in target_linears(transformer, FP4DiTConfig()):
        w = transformer.get_submodule(name).weight.detach().double().flatten()
        z = (w - w.mean()) / w.std()
        ks.append(float(z.pow(4).mean()))
    return sum(ks) / len(ks)


def rows(transformer: torch.nn.Module, calib: object) -> list[str]:
    out = []
    for label, weights, first, cands in CONFIGS:
        cfg = FP4DiTConfig(weights=weights, first_ffn_weights=first, adaround=False, acts="none", progress=False,
                           kept_storage="model", **({"auto_candidates": cands} if cands else {}))
        t0 = time.time()
        rep = quantize_(copy.deepcopy(transformer), cfg, calib=calib)
        counts = ", ".join(f"{k} x{v}" for k, v in sorted(format_summary(rep).items()))
        worst = max(rep.block_mse_rtn.values())
        out.append(f"| {label} | {rep.mean_block_mse_rtn:.3e} | {worst:.3e} | {counts} | {time.time() - t0:.0f} |")
        print(out[-1], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--df", type=float, default=4.0, help="Student-t degrees of freedom (lower: heavier tails)")
    ap.add_argument("--prompts", type=int, default=8, help="calibration prompts (one seed each)")
    ap.add_argument("--out", default=str(HERE / "results" / "quant_auto.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    from ditaccel.pipeline import load_pipeline, pipeline_call_kwargs
    from ditaccel.zoo import shapes

    t0 = time.time()
    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    calib = collect_calibration(pipe, shapes.calibration_prompts()[:args.prompts], seeds=[0],
                                **pipeline_call_kwargs(pipe, num_inference_steps=20, guidance_scale=3.0))
    heavy = student_t_copy(pipe.transformer, args.df)
    head = "| weights | mean block MSE (RTN) | worst block MSE | formats chosen | quantize_ s |\n|---|---|---|---|---|"
    lines = ["# `auto` over FP and INT formats: block reconstruction MSE", "",
             f"- Command: `OMP_NUM_THREADS=1 python bench/bench_quant_auto.py {' '.join(sys.argv[1:])}`",
             f"- Calibration: {args.prompts} calibration prompts x seed 0, every step of 20, cond + uncond "
             f"({len(calib.records)} transformer calls); round-to-nearest, group 128, activations in full precision.",
             "- Block MSE: each block's output against full precision, its inputs from the partly quantized model "
             "(as quantize_ reports it).", ""]
    for title, model in (("Bundled model", pipe.transformer),
                         (f"Heavy-tailed copy (Student-t df={args.df:g} quantile transform, variance matched)", heavy)):
        lines += [f"## {title}: weight kurtosis {kurtosis(model):.2f}", "", head, *rows(model, calib), ""]
    lines += [f"- Machine: {machine_description()}; shared with other jobs during the run.",
              f"- Wall time: {time.time() - t0:.0f} s."]
    atomic_write_text(Path(args.out), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
