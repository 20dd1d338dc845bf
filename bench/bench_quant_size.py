"""Quantized checkpoint size against the fp16 checkpoint, per kept-layer storage, at two model sizes.

Why: the file ratio depends on how much of a model sits in the layers kept out of 4-bit
(embeddings, adaLN-single, caption projection, final layer). That share is 6 % of the
3.4 M-parameter bundled model but 2-3 % of a real PixArt-alpha, so this measures both:
the bundled model and a transformer with PixArt-XL-2 geometry (28 blocks, hidden 1152,
T5-XXL caption width 4096; random weights, since sizes do not depend on the values).
Weights are rounded to nearest (no calibration needed for sizes). The fp16 checkpoint is
the transformer's state dict in fp16 written with safetensors, measured on disk.

Run:  python bench/bench_quant_size.py [--out bench/results/quant_size.md]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from ditaccel._io import atomic_write_text
from ditaccel._machine import machine_description
from ditaccel.quant import FP4DiTConfig, load_quantized, quantize_, round_kept_, save_quantized, weight_bytes

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
STORAGES = ("model", "float16", "int8")


def _fp16_file_bytes(transformer: torch.nn.Module, d: str) -> int:
    sd = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in transformer.state_dict().items()}
    path = Path(d) / "fp16.safetensors"
    save_file(sd, str(path))
    return path.stat().st_size


def measure(name: str, build) -> list[dict]:
    """One row per kept storage: file / fp16 file, bits per weight, loaded memory in an fp16 model."""
    import copy

    tr = build()
    params = sum(p.numel() for p in tr.parameters())
    with tempfile.TemporaryDirectory() as d:
        fp16_file = _fp16_file_bytes(tr, d)
    fp16_mem = sum(2 * t.numel() for t in list(tr.parameters()) + list(tr.buffers()) if t.is_floating_point())
    template = copy.deepcopy(tr).half()  # an fp16 deployment to load into
    t0 = time.perf_counter()
    quantize_(tr, FP4DiTConfig(adaround=False, kept_storage="model", progress=False))
    rtn_s = time.perf_counter() - t0
    kept_share = 1 - sum(m.in_features * m.out_features for m in tr.modules()
                         if type(m).__name__ == "QuantLinear") / params
    rows = []
    for storage in STORAGES:
        ts = copy.deepcopy(tr)
        round_kept_(ts, storage)
        with tempfile.TemporaryDirectory() as d:
            stats = save_quantized(ts, d, kept_storage=storage)
            size = sum(f.stat().st_size for f in Path(d).iterdir())
            loaded = load_quantized(d, copy.deepcopy(template))
            mem = weight_bytes(loaded)
        rows.append({"model": name, "params": params, "kept_share": kept_share, "storage": storage,
                     "bits": stats["bits_per_weight"], "file": size, "fp16_file": fp16_file,
                     "ratio": size / fp16_file, "mem_ratio": mem / fp16_mem, "rtn_s": rtn_s})
        print(rows[-1], flush=True)
        del ts, loaded
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(HERE / "results" / "quant_size.md"))
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import ditaccel
    from bench_speed import build_transformer

    rows = measure("bundled (12 blocks, hidden 128)", lambda: ditaccel.load_pipeline().transformer)
    rows += measure("PixArt-XL-2 geometry (28 blocks, hidden 1152)", build_transformer)
    lines = [
        "# Quantized checkpoint size vs the fp16 checkpoint",
        "",
        f"Machine: {machine_description()}.",
        f"Command: `python bench/bench_quant_size.py{' --threads ' + str(args.threads) if args.threads else ''}`",
        "",
        "Weights: FP4DiT defaults (E2M1, E3M0 for the first FFN linear, groups of 128), round-to-nearest; "
        "calibration changes code values, not sizes. The fp16 checkpoint is the transformer's state dict in fp16, "
        "written with safetensors. Loaded memory: the folder loaded into an fp16 copy of the model (parameters + "
        "buffers) over the fp16 weights.",
        "",
        "| model | parameters | share kept out of 4-bit | kept layers stored | bits/weight (4-bit layers) "
        "| file | fp16 file | file / fp16 | loaded memory / fp16 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.1f} M | {100 * r['kept_share']:.1f} % | {r['storage']} "
                     f"| {r['bits']:.3f} | {r['file'] / 1e6:.2f} MB | {r['fp16_file'] / 1e6:.2f} MB "
                     f"| {r['ratio']:.3f} | {r['mem_ratio']:.3f} |")
    lines += [
        "",
        "- `model`: kept layers in the model's own dtype (fp32 here); `float16`: the default of `ditaccel "
        "quantize` and `FP4DiTConfig`; `int8`: `--kept-storage int8`, the kept Linear weights as int8 codes with a "
        "power-of-two scale per output row (other kept tensors float16).",
        "- Round-to-nearest took " + ", ".join(f"{r['rtn_s']:.0f} s ({r['model'].split(' (')[0]})"
                                                for r in rows if r["storage"] == "model") + ".",
    ]
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
