"""GPU check: caching and FP4 on full-size PixArt-alpha 1024 and FLUX.1 geometries, eager and compiled.

Why: the other benchmarks run on a shared CPU. This one is ready for the day a GPU is lent: one
script, random weights (no downloads), bf16, within ~8 minutes on one H100. For each model it
times the transformer over one 20-step generation (the scheduler, text encoders and VAE are
not part of it) for these rows, eager and under ``torch.compile``:

- baseline (no hooks); FORA(2); the ECAD paper's PixArt-alpha "fast" schedule (bits rebuilt in
  tests/data, PixArt only); FirstBlockCache (diffusers, through ditaccel's peer glue);
  FP4 weights (ditaccel.quant, E2M1 round-to-nearest, activations unquantized).

It writes measured speedup, MACs speedup, peak memory and dynamo's graph-break / graph counts to
bench/results/gpu.md. A row that fails records its error; rows past ``--budget-s`` are skipped.

``--small`` runs the same rows on the CPU with the same block structure (28 PixArt blocks,
19 + 38 FLUX blocks) at tiny width, fp32, compiled with dynamo's ``eager`` backend: a fast
test runs it, so the script cannot rot.

Run:  python bench/device_check.py                 # on a GPU machine
      python bench/device_check.py --small --out /tmp/small.md
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from ditaccel._io import atomic_write_text
from ditaccel._machine import machine_description
from ditaccel.caching import CacheSchedule, apply_schedule, presets, schedule_macs
from ditaccel.evaluate.measure import PeakMemory, median, timed

HERE = Path(__file__).resolve().parent
ECAD_FAST = HERE.parent / "tests" / "data" / "ecad_pixart_alpha_256_fast.json"
STEPS = 20


@dataclass
class Geometry:
    """One model at one size: how to build it and what one transformer call gets."""

    name: str
    family: str
    build: Callable[[], torch.nn.Module]
    inputs: Callable[[torch.nn.Module, torch.device, torch.dtype], dict[str, Any]]
    height: int
    width: int
    batch: int
    text_len: int
    time_scale: float  # timestep passed = t * time_scale (FLUX takes t / 1000)
    steps: int = STEPS


@dataclass
class Row:
    model: str
    method: str
    mode: str
    seconds: float | None = None
    first_call: float | None = None
    macs_speedup: str = ""
    peak_bytes: int | None = None
    graph_breaks: int | None = None
    graphs: int | None = None
    note: str = ""
    speedup: float | None = field(default=None)


def _pixart(small: bool) -> Geometry:
    from diffusers import PixArtTransformer2DModel

    size, width, heads, head_dim, cap = (16, 16, 2, 8, 32) if small else (1024, 1152, 16, 72, 4096)
    text = 16 if small else 120  # PixArt-alpha pads T5 to 120 tokens

    def build() -> torch.nn.Module:
        return PixArtTransformer2DModel(
            sample_size=size // 8, num_layers=28, attention_head_dim=head_dim, num_attention_heads=heads,
            in_channels=4, out_channels=8, patch_size=2, cross_attention_dim=width, caption_channels=cap,
            norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
            use_additional_conditions=not small)

    def inputs(t: torch.nn.Module, dev: torch.device, dtype: torch.dtype) -> dict[str, Any]:
        g = torch.Generator().manual_seed(0)
        cond = {"resolution": None, "aspect_ratio": None}
        if t.config.use_additional_conditions:
            cond = {"resolution": torch.tensor([[size, size]] * 2, dtype=dtype, device=dev),
                    "aspect_ratio": torch.tensor([[1.0]] * 2, dtype=dtype, device=dev)}
        return {"hidden_states": torch.randn(2, 4, size // 8, size // 8, generator=g).to(dev, dtype),
                "encoder_hidden_states": torch.randn(2, text, cap, generator=g).to(dev, dtype),
                "encoder_attention_mask": torch.ones(2, text, device=dev), "added_cond_kwargs": cond}

    name = "PixArt-alpha tiny (28 blocks, width 16)" if small else "PixArt-alpha XL-2 1024"
    return Geometry(name, "pixart", build, inputs, size, size, 2, text, 1.0)


def _flux(small: bool) -> Geometry:
    from diffusers import FluxPipeline, FluxTransformer2DModel

    size, heads, head_dim, joint, pooled, rope = (
        (16, 2, 8, 32, 16, (2, 2, 4)) if small else (1024, 24, 128, 4096, 768, (16, 56, 56)))
    text = 16 if small else 512  # FluxPipeline's max_sequence_length

    def build() -> torch.nn.Module:
        return FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=head_dim,
            num_attention_heads=heads, joint_attention_dim=joint, pooled_projection_dim=pooled,
            guidance_embeds=True, axes_dims_rope=rope)

    def inputs(t: torch.nn.Module, dev: torch.device, dtype: torch.dtype) -> dict[str, Any]:
        g = torch.Generator().manual_seed(0)
        side = size // 16  # VAE factor 8, then 2x2 latent patches per token
        return {"hidden_states": torch.randn(1, side * side, 64, generator=g).to(dev, dtype),
                "encoder_hidden_states": torch.randn(1, text, joint, generator=g).to(dev, dtype),
                "pooled_projections": torch.randn(1, pooled, generator=g).to(dev, dtype),
                "guidance": torch.full((1,), 3.5, device=dev, dtype=dtype),
                "img_ids": FluxPipeline._prepare_latent_image_ids(1, side, side, dev, dtype),
                "txt_ids": torch.zeros(text, 3, device=dev, dtype=dtype)}

    name = "FLUX.1 tiny (19 + 38 blocks, width 16)" if small else "FLUX.1 [dev] 1024"
    return Geometry(name, "flux", build, inputs, size, size, 1, text, 1e-3)


def generation(model: Callable[..., Any], geo: Geometry, inputs: dict[str, Any]) -> Callable[[], None]:
    """One generation's transformer calls (``geo.steps`` decreasing timesteps), latents nudged by each output."""
    ts = torch.linspace(999, 0, geo.steps)

    def run() -> None:
        x = inputs["hidden_states"].clone()
        with torch.no_grad():
            for t in ts:
                step_t = torch.full((geo.batch,), float(t) * geo.time_scale, device=x.device, dtype=x.dtype)
                out = model(**{**inputs, "hidden_states": x}, timestep=step_t, return_dict=False)[0]
                x = x - 0.01 * out[:, : x.shape[1]].to(x.dtype)

    return run


def _dynamo_counts() -> tuple[int, int]:
    from torch._dynamo.utils import counters

    return sum(counters["graph_break"].values()), int(counters["stats"]["unique_graphs"])


def _measure(row: Row, model: Callable[..., Any], geo: Geometry, inputs: dict[str, Any], dev: torch.device,
             repeats: int) -> None:
    run = generation(model, geo, inputs)
    row.first_call = timed(run, dev).wall  # warm-up (and compilation, when compiled)
    with PeakMemory(dev) as pm:
        row.seconds = median([timed(run, dev).wall for _ in range(repeats)])
    row.peak_bytes = pm.peak
    if row.mode != "eager":
        row.graph_breaks, row.graphs = _dynamo_counts()


def _methods(geo: Geometry, t: torch.nn.Module) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = [("baseline", None), ("FORA(2)", presets.fora(t, 2, steps=geo.steps))]
    if geo.family == "pixart":
        ecad = CacheSchedule.load(ECAD_FAST, t)
        out.append(("ECAD fast (paper, PixArt-alpha 256)", ecad if ecad.steps == geo.steps else ecad.resample(geo.steps)))
    out.append(("FirstBlockCache", "fbc"))
    return out


def _install(t: torch.nn.Module, how: Any, steps: int) -> Any:
    if how is None:
        return None
    if isinstance(how, CacheSchedule):
        return apply_schedule(t, how)
    from ditaccel.caching.dynamic import apply_peer_cache

    return apply_peer_cache(SimpleNamespace(transformer=t), how, {"num_inference_steps": steps})


def _macs(t: torch.nn.Module, geo: Geometry, how: Any) -> str:
    if not isinstance(how, CacheSchedule) and how is not None:
        return "dynamic"
    full = schedule_macs(t, presets.none(t, steps=geo.steps), geo.height, geo.width, geo.batch, geo.text_len)
    s = how if how is not None else presets.none(t, steps=geo.steps)
    return f"{full / schedule_macs(t, s, geo.height, geo.width, geo.batch, geo.text_len):.2f}x"


def build(geo: Geometry, dev: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The random-weight transformer, built directly in ``dtype`` on ``dev`` (no fp32 copy of FLUX's 12B)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(dev):
            return geo.build().eval()
    finally:
        torch.set_default_dtype(old)


def plan(models: list[tuple[Geometry, torch.nn.Module]], modes: list[str]) -> list[tuple[int, str, str, Any]]:
    """(model index, mode, method, how): every eager row first, then compiled, FP4 (in place) last."""
    fp4 = "FP4 weights (E2M1 RTN)"
    out = [(i, m, name, how) for m in modes for i, (geo, t) in enumerate(models) for name, how in _methods(geo, t)]
    return out + [(i, m, fp4, "fp4") for i in range(len(models)) for m in modes]


def run_row(row: Row, geo: Geometry, t: torch.nn.Module, how: Any, backend: str, dev: torch.device,
            inputs: dict[str, Any], repeats: int) -> None:
    """Install the method, time it (eager or compiled), remove it; errors are recorded in ``row.note``."""
    try:
        if how == "fp4" and not getattr(t, "_device_check_fp4", False):
            from ditaccel.quant import FP4DiTConfig, quantize_

            quantize_(t, FP4DiTConfig(weights="e2m1", acts="none", adaround=False))
            t._device_check_fp4 = True
        row.macs_speedup = "1.00x (same MACs)" if how == "fp4" else _macs(t, geo, how)
        handle = _install(t, None if how == "fp4" else how, geo.steps)
        try:
            if row.mode != "eager":
                torch._dynamo.reset()
                torch._dynamo.utils.counters.clear()
            model = t if row.mode == "eager" else torch.compile(t, backend=backend)
            _measure(row, model, geo, inputs, dev, repeats)
        finally:
            if handle is not None:
                handle.remove()
    except Exception as e:  # a failing row is a result too: record it and go on
        row.note = f"error: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:160]}"


def _speedups(rows: list[Row]) -> None:
    base = {(r.model, r.mode): r.seconds for r in rows if r.method == "baseline" and r.seconds}
    for r in rows:
        b = base.get((r.model, r.mode))
        if b and r.seconds:
            r.speedup = b / r.seconds


def report(rows: list[Row], args: argparse.Namespace, dev: torch.device, dtype: torch.dtype, wall: float) -> str:
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "none (CPU)"
    cmd = ("python bench/device_check.py" + (" --small" if args.small else "")
           + f" --repeats {args.repeats} --steps {args.steps} --modes {args.modes} --models {args.models}")
    lines = [
        "# Device check: caching and FP4 on full-size geometries" + (" (--small CPU mode)" if args.small else ""),
        "",
        f"- Card: {gpu}. Machine: {machine_description()}.",
        f"- Command: `{cmd}`; {wall:.0f} s in all.",
        f"- Random weights, {str(dtype).removeprefix('torch.')}, transformer only, one {args.steps}-step generation "
        f"(median of {args.repeats} after one warm-up call, which for compiled rows includes compilation). "
        "Speedup: against the baseline row of the same model and mode. Peak memory: "
        + ("torch.cuda.max_memory_allocated during the timed runs." if dev.type == "cuda"
           else "RSS growth above the start of the timed runs (CPU)."),
        "",
        "| model | mode | method | s / generation | speedup | MACs speedup | first call s | peak memory (MiB) "
        "| graph breaks | graphs | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(x: float | None, fmt: str) -> str:
        return "" if x is None else format(x, fmt)

    for r in rows:
        mem = None if r.peak_bytes is None else r.peak_bytes / 2**20
        lines.append(f"| {r.model} | {r.mode} | {r.method} | {f(r.seconds, '.3f')} | "
                     f"{f(r.speedup, '.2f') + ('x' if r.speedup else '')} | {r.macs_speedup} | "
                     f"{f(r.first_call, '.2f')} | {f(mem, '.0f')} | {f(r.graph_breaks, 'd')} | {f(r.graphs, 'd')} "
                     f"| {r.note} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true", help="tiny widths on the CPU (fp32, dynamo 'eager' backend)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--steps", type=int, default=STEPS, help="denoising steps (the ECAD schedule is resampled)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip rows once this many seconds have passed")
    ap.add_argument("--backend", default=None, help="torch.compile backend (default inductor; eager with --small)")
    ap.add_argument("--modes", default="eager,compiled", help="comma list of eager, compiled")
    ap.add_argument("--models", default="pixart,flux", help="comma list of pixart, flux")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "gpu.md")
    args = ap.parse_args(argv)
    bad = (set(args.modes.split(",")) - {"eager", "compiled"}) | (set(args.models.split(",")) - {"pixart", "flux"})
    if args.steps < 2:
        print(f"device_check: error: --steps must be at least 2, got {args.steps}", file=sys.stderr)
        return 2
    if bad:
        print(f"device_check: error: unknown mode/model {', '.join(sorted(bad))}; use eager,compiled and "
              f"pixart,flux", file=sys.stderr)
        return 2
    if args.small:
        dev, dtype = torch.device("cpu"), torch.float32
    elif torch.cuda.is_available():
        dev, dtype = torch.device("cuda"), torch.bfloat16
    else:
        print("device_check: error: no CUDA GPU here; run on a GPU machine or pass --small", file=sys.stderr)
        return 2
    backend = args.backend or ("eager" if args.small else "inductor")
    start = time.monotonic()
    geos = [replace(g(args.small), steps=args.steps) for g in (_pixart, _flux)
            if g.__name__.strip("_") in args.models.split(",")]
    models = [(geo, build(geo, dev, dtype)) for geo in geos]
    inputs = [geo.inputs(t, dev, dtype) for geo, t in models]
    rows: list[Row] = []
    for i, mode, name, how in plan(models, args.modes.split(",")):
        geo, t = models[i]
        row = Row(geo.name, name, "eager" if mode == "eager" else f"compiled ({backend})")
        rows.append(row)
        if time.monotonic() > start + args.budget_s:
            row.note = "skipped: time budget spent"
        else:
            run_row(row, geo, t, how, backend, dev, inputs[i], args.repeats)
        print(f"{geo.name} | {row.mode} | {name} | {row.seconds} | {row.note}", flush=True)
    _speedups(rows)
    atomic_write_text(args.out, report(rows, args, dev, dtype, time.monotonic() - start))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
