"""Quantized forward speed against full precision, on the bundled model and PixArt-alpha geometry.

Why: 4-bit weights only help a user if generation is not much slower (issue 11: FP4 W4A8
ran at 0.35x of full precision). This times, in one process with interleaved repeats:

1. the per-layer options: weight decode (the previous ``[256, 2]`` embedding table, the
   int64 pair table, the native kernel, ``torch.compile``) and per-token FP rounding
   (log2/floor/exp2 vs exponent bits in eager torch vs the native kernel);
2. whole transformer forwards: full precision vs W4A8 / W4A6 / weight-only FP and W4A8
   INT, through the previous portable path (a frozen copy below), the current one (native
   kernels for decode and rounding, and without them: eager torch; int8
   GEMM where both sides fit int8, and its float-GEMM form; Q/K/V grouped into one GEMM and
   one rounding, and each projection alone) and, with ``--compile``, the
   compiled kernel; float paths are checked bit-identical, the int8 GEMM's difference shown;
3. with ``--ecad``, FP4 W4A8 together with a cache schedule on the bundled pipeline; with
   ``--pixart-ecad``, with FORA(2)/FORA(3) in a bare denoising loop on the PixArt geometry.

Run: OMP_NUM_THREADS=1 python bench/bench_quant_speed.py [--repeats 15] [--compile] [--ecad] [--pixart-ecad]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from ditaccel._io import atomic_write_text
from ditaccel._machine import machine_description
from ditaccel.quant import (
    FP4DiTConfig,
    QuantLinear,
    native,
    quantize_,
    quantized_layers,
    set_activation_quant,
)
from ditaccel.quant.formats import quantize_per_token
from ditaccel.quant.kernels import compile_linears
from ditaccel.quant.linear import group_projections
from ditaccel.testing.quant_reference import previous_per_token

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

VARIANTS = [  # (label, weights, acts)
    ("FP W4A8 (e2m1/e3m0 + e3m4)", "e2m1", "e3m4"),
    ("FP W4A6 (e2m1/e3m0 + e2m3)", "e2m1", "e2m3"),
    ("FP weight-only (e2m1/e3m0)", "e2m1", "none"),
    ("INT W4A8 (int4 + int8)", "int4", "int8"),
]


# ---- the previous portable path (commit 696bdd9), frozen here to measure against -------------
def legacy_dequant(m: QuantLinear, dtype: torch.dtype) -> torch.Tensor:
    from ditaccel.quant.packing import pair_table

    table = pair_table(m.fmt, m.qweight.device).view(torch.float32).view(256, 2)
    vals = F.embedding(m.qweight.long(), table).reshape(m.out_features, -1, m.group_size)
    if m.zeros.numel():
        vals = vals - m.zeros.unsqueeze(-1).float()
    return (vals * m.scales.unsqueeze(-1)).reshape(m.out_features, m.in_features).to(dtype)


def legacy_forward(m: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    if m.act_format is not None:
        x = previous_per_token(x, m.act_format)
    y = F.linear(x, legacy_dequant(m, x.dtype), m.bias)
    return previous_per_token(y, m.out_act_format) if m.out_act_format is not None else y


class LegacyPath:
    """Context manager: every ``QuantLinear`` runs the previous portable forward."""

    def __enter__(self) -> None:
        self.saved = QuantLinear.forward
        QuantLinear.forward = legacy_forward  # type: ignore[method-assign]

    def __exit__(self, *exc: object) -> None:
        QuantLinear.forward = self.saved  # type: ignore[method-assign]


# ---- timing ---------------------------------------------------------------------------------
#: The clock: wall time, or with ``--cpu-time`` this thread's CPU time (less disturbed while other
#: jobs share the cores; the timed work runs on this one thread: ``torch.set_num_threads(1)``).
CLOCK: Callable[[], float] = time.perf_counter


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per call of each function, one call of each per round, rounds repeated."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t = CLOCK()
            f()
            times[k].append(CLOCK() - t)
    return times


def ratio_stats(base: list[float], other: list[float]) -> tuple[float, float, float]:
    """Median, min and max over rounds of ``base / other`` (speed relative to ``base``)."""
    r = sorted(b / o for b, o in zip(base, other, strict=True))
    return statistics.median(r), r[0], r[-1]


def fmt_ratio(s: tuple[float, float, float]) -> str:
    return f"{s[0]:.2f}x ({s[1]:.2f}-{s[2]:.2f})"


# ---- models ---------------------------------------------------------------------------------
def bundled(batch: int) -> tuple[torch.nn.Module, Callable[[torch.nn.Module], torch.Tensor]]:
    from ditaccel.pipeline import load_pipeline

    t = load_pipeline().transformer.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, 16, 16, generator=g)
    enc = torch.randn(batch, 16, 128, generator=g)
    kw = dict(encoder_hidden_states=enc, timestep=torch.full((batch,), 500),
              added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)
    return t, lambda m: m(x, **kw)[0]


def pixart(blocks: int, device: str = "cpu",
           dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, Callable[[torch.nn.Module], torch.Tensor]]:
    from diffusers import PixArtTransformer2DModel

    from bench_speed import TEXT_LEN

    torch.manual_seed(0)
    t = PixArtTransformer2DModel(
        sample_size=32, num_layers=blocks, attention_head_dim=72, num_attention_heads=16, in_channels=4,
        out_channels=8, patch_size=2, cross_attention_dim=1152, caption_channels=4096,
        norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6, use_additional_conditions=False,
    ).eval().to(device, dtype)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 32, 32, generator=g).to(device, dtype)
    enc = torch.randn(2, TEXT_LEN, 4096, generator=g).to(device, dtype)
    kw = dict(encoder_hidden_states=enc, timestep=torch.full((2,), 500, device=device),
              encoder_attention_mask=torch.ones(2, TEXT_LEN, device=device),
              added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)
    return t, lambda m: m(x, **kw)[0]


def quantized(t: torch.nn.Module, weights: str) -> torch.nn.Module:
    q = copy.deepcopy(t)
    quantize_(q, FP4DiTConfig(weights=weights, adaround=False, kept_storage="model", progress=False))
    return q


def set_compiled(q: torch.nn.Module, on: bool) -> None:
    if on:
        compile_linears(q)
    else:
        for m in quantized_layers(q).values():
            m.compiled = None


def set_grouped(q: torch.nn.Module, on: bool) -> None:
    """Q/K/V grouping (one batched GEMM and one rounding per attention) on, or each layer alone."""
    if on:
        group_projections(q)
    else:
        for m in quantized_layers(q).values():
            m.group = None


def set_int_gemm(q: torch.nn.Module, on: bool) -> None:
    for m in quantized_layers(q).values():
        m.int_gemm = on


def model_rows(t: torch.nn.Module, call: Callable[[torch.nn.Module], torch.Tensor], repeats: int,
               compiled: bool) -> list[dict[str, object]]:
    """Interleaved FP / previous / current (/ compiled) forwards for every variant, plus bit-identity."""
    qs = {w: quantized(t, w) for w in ("e2m1", "int4")}
    rows = []
    for label, w, acts in VARIANTS:
        q = qs[w]
        set_activation_quant(q, acts)
        fns = model_paths(q, call, compiled, int8=acts in ("int8", "e2m3", "e3m4"))
        fns = {"fp": lambda: call(t), **fns}
        with torch.no_grad():
            ref, cur = fns.get("current, float GEMM", fns["current"])(), fns["current"]()
            # previous == the float path; compiled == current (both take the int8 GEMM where it applies)
            same = (torch.equal(fns["previous"](), ref) and torch.equal(fns["current, Q/K/V separate"](), cur)
                    and torch.equal(fns["current, no native kernels"](), cur)
                    and (not compiled or torch.equal(fns["compiled, no native kernels"](), cur)))
            rel = float((cur - ref).abs().max() / ref.abs().max())
            times = interleaved(fns, repeats)
        row: dict[str, object] = {"variant": label, "fp_ms": 1e3 * statistics.median(times["fp"]), "identical": same,
                                  "int8_rel": rel if "current, float GEMM" in fns else None}
        for k in fns:
            if k != "fp":
                row[k] = ratio_stats(times["fp"], times[k])
                row[k + "_ms"] = 1e3 * statistics.median(times[k])
        rows.append(row)
        print(row, flush=True)
    return rows


def model_paths(q: torch.nn.Module, call: Callable[[torch.nn.Module], torch.Tensor], compiled: bool,
                int8: bool) -> dict[str, Callable[[], torch.Tensor]]:
    """The quantized model's forward through each path (previous, current, float GEMM, compiled)."""
    def legacy() -> torch.Tensor:
        with LegacyPath():
            return call(q)

    def toggled(setter: Callable[[torch.nn.Module, bool], None], on: bool) -> Callable[[], torch.Tensor]:
        def go() -> torch.Tensor:
            setter(q, on)
            try:
                return call(q)
            finally:
                setter(q, not on)
        return go

    def eager() -> torch.Tensor:
        with native.enabled(False):
            return call(q)

    fns = {"previous": legacy, "current": lambda: call(q), "current, no native kernels": eager,
           "current, Q/K/V separate": toggled(set_grouped, False)}
    if int8:
        fns["current, float GEMM"] = toggled(set_int_gemm, False)
    if compiled:  # on the CPU compiled layers take the native kernels where built: time the compiled rounding
        def compiled_rounding() -> torch.Tensor:
            with native.enabled(False):
                return toggled(set_compiled, True)()

        fns["compiled, no native kernels"] = compiled_rounding
    return fns


def layer_rows(repeats: int, compiled: bool) -> list[str]:
    """Per-layer options on one FFN-up layer, as time relative to the fp32 linear."""
    lines = []
    for name, (o, i, tokens) in {"bundled FFN up, batch 2": (512, 128, 128),
                                 "bundled FFN up, batch 16": (512, 128, 1024),
                                 "PixArt FFN up, batch 2": (4608, 1152, 512)}.items():
        lines += layer_table(name, o, i, tokens, repeats, compiled)
    return lines


def layer_table(name: str, o: int, i: int, tokens: int, repeats: int, compiled: bool) -> list[str]:
    """Decode + matmul options and per-token rounding options for one weight shape."""
    from ditaccel.quant.fused import code_values, compiled_fn, compiled_per_token

    torch.manual_seed(0)
    lin = torch.nn.Linear(i, o)
    m = QuantLinear.from_linear(lin, "e2m1", 128)
    x = torch.randn(tokens, i)

    def eager(f: Callable[[], object]) -> Callable[[], object]:
        def go() -> object:
            with native.enabled(False):
                return f()
        return go

    def dec() -> object:
        return F.linear(x, m.dequantize(x.dtype), m.bias)

    def a8() -> object:
        return quantize_per_token(x, "e3m4")

    def int8() -> object:
        return quantize_per_token(x, "int8")

    fns: dict[str, Callable[[], object]] = {
        "fp32 linear": lambda: F.linear(x, lin.weight, lin.bias),
        "decode: [256,2] embedding (previous)": lambda: F.linear(x, legacy_dequant(m, x.dtype), m.bias),
        "decode: int64 pair table (eager)": eager(dec),
        "A8 rounding: log2/floor/exp2 (previous)": lambda: previous_per_token(x, "e3m4"),
        "A8 rounding: exponent bits (eager)": eager(a8),
        "A8 INT8 rounding (eager)": eager(int8),
    }
    if native.available():
        fns |= {"decode: native kernel (current)": dec, "A8 rounding: native kernel (current)": a8,
                "A8 INT8 rounding: native kernel (current)": int8}
    if compiled:
        fns["decode: torch.compile dequant+linear"] = lambda: compiled_fn()(
            x, m.qweight, code_values(m), m.scales, None, m.bias, m.group_size)
        fns["A8 rounding: torch.compile exponent bits"] = lambda: compiled_per_token()(x, "e3m4")
    if hasattr(torch, "_int_mm"):
        xi = torch.randint(-127, 128, (tokens, i), dtype=torch.int8)
        wi = torch.randint(-12, 13, (i, o), dtype=torch.int8)
        fns["int8 x int8 GEMM (torch._int_mm, no scales)"] = lambda: torch._int_mm(xi, wi)
    with torch.no_grad():
        times = interleaved(fns, repeats)
    base = times["fp32 linear"]
    lines = [f"\n{name}: weight [{o}, {i}], {tokens} tokens; fp32 linear {1e6 * statistics.median(base):.0f} us\n",
             "| option | median us | time / fp32 linear (min-max) |\n|---|---|---|"]
    for k, v in times.items():
        r = sorted(a / b for a, b in zip(v, base, strict=True))
        lines.append(f"| {k} | {1e6 * statistics.median(v):.0f} | {statistics.median(r):.2f} ({r[0]:.2f}-{r[-1]:.2f}) |")
    return lines


def profile_lines(batch: int, acts: str = "e3m4") -> list[str]:
    """torch.profiler top operators (self CPU) of one quantized FFN-up layer and one whole block."""
    from torch.profiler import profile

    t, call = bundled(batch)
    q = quantized(t, "e2m1")
    set_activation_quant(q, acts)
    # two inputs in turn: one input again would be served from the siblings' shared rounding
    xs = list(torch.randn(2, batch * 64, 128, generator=torch.Generator().manual_seed(0)))
    layer = QuantLinear.from_linear(torch.nn.Linear(128, 512), "e2m1", 128, act_format=acts)
    lines = []
    for name, fn, n in ((f"one QuantLinear 128->512, {batch * 64} tokens, W4A8 ({acts})", lambda: layer(xs.append(xs.pop(0)) or xs[0]), 50),
                        (f"whole bundled forward, batch {batch}, W4A8 ({acts})",
                         lambda: call(q), 3)):
        with torch.no_grad():
            for _ in range(3):
                fn()
            with profile() as p:
                for _ in range(n):
                    fn()
        rows = sorted(p.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]
        total = sum(e.self_cpu_time_total for e in p.key_averages())
        lines += [f"\n{name}: {n} calls under torch.profiler (its overhead included), self CPU per call\n",
                  "| operator | calls per call | self CPU us per call | share |", "|---|---|---|---|"]
        lines += [f"| {e.key} | {e.count / n:.0f} | {e.self_cpu_time_total / n:.0f} | "
                  f"{e.self_cpu_time_total / total:.0%} |" for e in rows]
    return lines


def ecad_rows(repeats: int, images: int, compiled: bool, schedule_files: list[str] | None = None) -> list[str]:
    """Bundled pipeline: baseline, a cache schedule, FP4 W4A8 and both, whole generation wall time."""
    from ditaccel.caching import apply_schedule, presets
    from ditaccel.pipeline import generate_images, load_pipeline
    from ditaccel.zoo import shapes

    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    fp = pipe.transformer
    q = quantized(fp, "e2m1")
    set_activation_quant(q, "e3m4")
    prompts = shapes.heldout_prompts()[:images]
    kw = dict(num_inference_steps=20, guidance_scale=3.0)
    lines = []
    if schedule_files:
        from ditaccel.caching import CacheSchedule

        schedules = [(f"ECAD {Path(f).stem}", CacheSchedule.load(f, pipe)) for f in schedule_files]
    else:
        schedules = [("fora:2", presets.fora(pipe, 2)), ("fora:3", presets.fora(pipe, 3))]
    for sname, sched in schedules:
        def run(transformer: torch.nn.Module, schedule: object | None, comp: bool = False) -> Callable[[], object]:
            def go() -> object:
                pipe.transformer = transformer
                set_compiled(q, comp)
                h = apply_schedule(pipe, schedule) if schedule is not None else None
                try:
                    with native.enabled(not comp):  # compiled: its own rounding, not the native kernels
                        return generate_images(pipe, prompts, list(range(images)), batch_size=images, **kw)
                finally:
                    if h is not None:
                        h.remove()
                    set_compiled(q, False)
                    pipe.transformer = fp
            return go
        fns = {"baseline": run(fp, None), sname: run(fp, sched), "fp4 W4A8": run(q, None),
               f"fp4 W4A8 + {sname}": run(q, sched)}
        if compiled:
            fns["fp4 W4A8 compiled, no native"] = run(q, None, True)
            fns[f"fp4 W4A8 compiled, no native + {sname}"] = run(q, sched, True)
        times = interleaved(fns, repeats, warmup=1)
        base = times["baseline"]
        lines.append(f"\nSchedule {sname}; {images} images per generation call (batch {2 * images} with CFG), "
                     f"20 steps; baseline {statistics.median(base):.2f} s per call\n")
        lines.append("| method | median s | speedup vs baseline (min-max) |\n|---|---|---|")
        for k, v in times.items():
            lines.append(f"| {k} | {statistics.median(v):.2f} | {fmt_ratio(ratio_stats(base, v))} |")
        own = ratio_stats(base, times[sname])[0]
        for k in [k for k in times if k.endswith(f" + {sname}")]:
            lines.append(f"\n{k} keeps {ratio_stats(base, times[k])[0] / own:.2f} of the schedule's own speedup "
                         "(target >= 0.9).")
    return lines


def pixart_schedule_rows(blocks: int, steps: int, repeats: int, compiled: bool) -> list[str]:
    """PixArt-alpha geometry (random weights): a ``steps``-step denoising loop on the bare transformer,
    full precision / FP4 W4A8 (/ compiled), each without and with FORA(2) and FORA(3).

    Why: the combined bar asks how much of a schedule's speedup survives quantization; on the
    bundled model the quantized forward itself is slow, here it is near full speed. The loop calls
    only the transformer (no text encoder or VAE), with timesteps falling from 999 to 0.
    """
    from ditaccel.caching import apply_schedule, presets

    fp, _ = pixart(blocks)
    q = quantized(fp, "e2m1")
    set_activation_quant(q, "e3m4")
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 32, 32, generator=g)
    from bench_speed import TEXT_LEN

    enc = torch.randn(2, TEXT_LEN, 4096, generator=g)
    kw = dict(encoder_hidden_states=enc, encoder_attention_mask=torch.ones(2, TEXT_LEN),
              added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)
    timesteps = torch.linspace(999, 0, steps).round().long()

    def run(model: torch.nn.Module, n: int | None, comp: bool = False) -> Callable[[], object]:
        def go() -> object:
            set_compiled(q, comp)
            h = apply_schedule(model, presets.fora(model, n, steps)) if n else None
            try:
                x = x0
                with native.enabled(not comp):  # compiled: its own rounding, not the native kernels
                    for ts in timesteps:
                        x = x + 0.05 * (model(x, timestep=ts.expand(2), **kw)[0][:, :4] - x)
                return x
            finally:
                if h is not None:
                    h.remove()
                set_compiled(q, False)
        return go

    fns = {"baseline": run(fp, None), "fp4 W4A8": run(q, None)}
    if compiled:
        fns["fp4 W4A8 compiled, no native"] = run(q, None, True)
    for n in (2, 3):
        fns[f"fora:{n}"] = run(fp, n)
        fns[f"fp4 W4A8 + fora:{n}"] = run(q, n)
        if compiled:
            fns[f"fp4 W4A8 compiled, no native + fora:{n}"] = run(q, n, True)
    with torch.no_grad():
        times = interleaved(fns, repeats, warmup=1)
    base = times["baseline"]
    lines = [f"\nPixArt-alpha geometry, {blocks} blocks, batch 2, {steps} steps (transformer calls only); "
             f"baseline {statistics.median(base):.2f} s per loop\n",
             "| method | median s | speedup vs baseline (min-max) |", "|---|---|---|"]
    lines += [f"| {k} | {statistics.median(v):.2f} | {fmt_ratio(ratio_stats(base, v))} |" for k, v in times.items()]
    for n in (2, 3):
        own = ratio_stats(base, times[f"fora:{n}"])[0]
        for k in [k for k in times if k.endswith(f" + fora:{n}")]:
            lines.append(f"\n{k} keeps {ratio_stats(base, times[k])[0] / own:.2f} of the schedule's own speedup "
                         "(target >= 0.9).")
    return lines


def table(title: str, rows: list[dict[str, object]], compiled: bool) -> list[str]:
    cols = ["previous", "current", "current, no native kernels", "current, Q/K/V separate",
            "current, float GEMM"] + (["compiled, no native kernels"] if compiled else [])
    out = [f"\n### {title}\n", "| variant | fp32 ms | " + " | ".join(f"{c}: ms, speed vs fp32" for c in cols)
           + " | bitwise: previous == current float path, no native kernels == Q/K/V separate == current "
           "(and compiled == current) "
           "| int8 GEMM max diff / max abs |",
           "|---" * (4 + len(cols)) + "|"]
    for r in rows:
        cells = " | ".join(f"{r[c + '_ms']:.1f}, {fmt_ratio(r[c])}" if c in r else "-" for c in cols)
        rel = "-" if r["int8_rel"] is None else f"{r['int8_rel']:.1e}"
        out.append(f"| {r['variant']} | {r['fp_ms']:.1f} | {cells} | {'yes' if r['identical'] else 'NO'} | {rel} |")
    return out


def memory_lines(pixart_blocks: int) -> list[str]:
    """Weight memory of the timed models (quantized linears packed, kept layers in the model's fp32)."""
    from ditaccel.quant import weight_bytes

    lines = ["", "## Weight memory of the timed models (parameters + buffers)", "",
             "| model | fp32 MiB | FP4 (E2M1/E3M0), as timed | INT4, as timed |", "|---|---|---|---|"]
    for name, (t, _) in (("bundled", bundled(2)), (f"PixArt-alpha geometry, {pixart_blocks} blocks", pixart(pixart_blocks))):
        full = weight_bytes(t)
        fp4, int4 = weight_bytes(quantized(t, "e2m1")), weight_bytes(quantized(t, "int4"))
        cells = " | ".join(f"{b / 2**20:.2f} ({b / full:.3f}x)" for b in (fp4, int4))
        lines.append(f"| {name} | {full / 2**20:.2f} | {cells} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--pixart-blocks", type=int, default=3)
    ap.add_argument("--pixart-repeats", type=int, default=7)
    ap.add_argument("--compile", action="store_true", help="also time the torch.compile kernel")
    ap.add_argument("--ecad", action="store_true", help="also time FP4 W4A8 with cache schedules in the pipeline")
    ap.add_argument("--ecad-images", type=int, default=4)
    ap.add_argument("--pixart-ecad", action="store_true",
                    help="also time FP4 W4A8 with FORA(2)/FORA(3) on the PixArt geometry (a bare denoising loop)")
    ap.add_argument("--pixart-ecad-steps", type=int, default=10)
    ap.add_argument("--ecad-schedule", action="append", metavar="JSON",
                    help="a searched schedule file to time instead of fora:2 / fora:3 (repeatable)")
    ap.add_argument("--skip-layers", action="store_true", help="skip the per-layer options table")
    ap.add_argument("--skip-models", action="store_true")
    ap.add_argument("--memory-only", action="store_true", help="only the weight-memory table (no timing)")
    ap.add_argument("--profile", action="store_true", help="also a torch.profiler operator table (batch 16)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with this thread's CPU time instead of the wall clock (for a shared machine)")
    ap.add_argument("--out", default=str(HERE / "results" / "quant_speed.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    global CLOCK
    if args.cpu_time:
        CLOCK = time.thread_time
    load0 = os.getloadavg()[0]
    t0 = time.time()
    if args.memory_only:
        print("\n".join(memory_lines(args.pixart_blocks)))
        return
    lines = ["# Quantized forward speed vs full precision (CPU)", "",
             f"- Command: `OMP_NUM_THREADS=1 python bench/bench_quant_speed.py {' '.join(sys.argv[1:])}`",
             "- Ratios: each round calls every path once in turn; a ratio is fp32 time / path time within one round; "
             "the median over rounds is shown with the min-max range in brackets.",
             f"- Clock: {'thread CPU time (time.thread_time)' if args.cpu_time else 'wall time (time.perf_counter)'}; "
             f"load average {load0:.1f} at the start.",
             "- Native kernels (`ditaccel.quant.native`): " + (
                 f"built, {native.library().dq_simd() or 'no'}-bit vector decode" if native.available()
                 else f"not available ({native.unavailable_reason()}): current == no native kernels")]
    if not args.skip_models:
        for title, (t, call), reps in (
                ("Bundled model, batch 2 (one image with CFG, 64 image tokens)", bundled(2), args.repeats),
                ("Bundled model, batch 16 (8 images with CFG: the CLI's default batch)", bundled(16), args.repeats),
                (f"PixArt-alpha 256 geometry, {args.pixart_blocks} of its 28 blocks (hidden 1152, 16 heads, "
                 "256 image + 120 text tokens, batch 2), random weights", pixart(args.pixart_blocks), args.pixart_repeats)):
            lines += table(title, model_rows(t.eval(), call, reps, args.compile), args.compile)
    if not args.skip_models:
        lines += memory_lines(args.pixart_blocks)
    if not args.skip_layers:
        lines += ["", "## Per-layer options (time relative to the fp32 linear, lower is better)"]
        lines += layer_rows(args.repeats * 3, args.compile)
    if args.profile:
        lines += ["", "## Where the time goes (torch.profiler, bundled model)"] + profile_lines(16)
    if args.ecad:
        lines += ["", "## FP4 W4A8 with a cache schedule (bundled pipeline, whole generation)"]
        lines += ecad_rows(max(3, args.repeats // 3), args.ecad_images, args.compile, args.ecad_schedule)
    if args.pixart_ecad:
        lines += ["", "## FP4 W4A8 with a cache schedule (PixArt-alpha geometry, random weights)"]
        lines += pixart_schedule_rows(args.pixart_blocks, args.pixart_ecad_steps, max(3, args.pixart_repeats // 2),
                                      args.compile)
    lines += ["", f"- Machine: {machine_description()}; the 2-core machine was shared with other jobs during the run, "
              "so absolute times vary 10-20 % and more; compare ratios within a table. The compiled path's "
              "first calls (compilation) fall in the warm-up rounds.",
              f"- Wall time of the run: {time.time() - t0:.0f} s."]
    atomic_write_text(Path(args.out), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
