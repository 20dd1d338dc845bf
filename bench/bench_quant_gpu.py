"""GPU check of the weight-only FP4 path that keeps 4-bit weights in GPU memory (kernel ``compiled``).

Why: on a GPU the portable path dequantizes in eager ops and the torchao kernels
re-express the weights in 8 bits (``torchao-fp8``) or need Blackwell (MXFP4/NVFP4). The
``compiled`` kernel keeps the packed codes and has Inductor generate the dequant (Triton)
feeding the matmul. This script checks, on one CUDA GPU, on PixArt-alpha 256 geometry
(random weights, fp16):

- the compiled path's output equals the portable path's (bitwise, else the max difference);
- forward time of fp16, portable FP4, compiled FP4 (and torchao-fp8 when available), with
  interleaved repeats;
- weight memory and peak allocated memory of each.

Without a CUDA GPU it says so and exits 0: the path is then tested on the CPU only
(tests/test_quant_fast.py); bench/results/quant_gpu.md holds one H100's numbers.

Run: python bench/bench_quant_gpu.py [--blocks 28] [--repeats 10] [--mode max-autotune]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ditaccel._io import atomic_write_text
from ditaccel._machine import machine_description
from ditaccel.quant import FP4DiTConfig, quantize_, weight_bytes
from ditaccel.quant.kernels import apply_kernel, compile_linears, kernel_available

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=28)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--mode", default=None, help="torch.compile mode, e.g. max-autotune (prologue fusion into the matmul)")
    ap.add_argument("--out", default=str(HERE / "results" / "quant_gpu.md"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_quant_gpu: no CUDA GPU here; the compiled FP4 path is tested on the CPU only "
              "(tests/test_quant_fast.py); bench/results/quant_gpu.md holds one H100's numbers.")
        return
    from bench_quant_speed import pixart

    fp, call = pixart(args.blocks, "cuda", torch.float16)
    q = copy.deepcopy(fp)
    quantize_(q, FP4DiTConfig(adaround=False, acts="none", kept_storage="float16", progress=False))
    paths = {"fp16": fp, "FP4 portable": q}
    qc = copy.deepcopy(q)
    compile_linears(qc, mode=args.mode)
    paths["FP4 compiled"] = qc
    if kernel_available("torchao-fp8"):
        q8 = copy.deepcopy(q)
        apply_kernel(q8, "torchao-fp8")
        paths["torchao-fp8 (from FP4)"] = q8

    def run(m: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return call(m)

    outs = {k: run(m) for k, m in paths.items()}  # also the compile warm-up
    same = torch.equal(outs["FP4 compiled"], outs["FP4 portable"])
    diff = float((outs["FP4 compiled"].float() - outs["FP4 portable"].float()).abs().max())
    times = {k: [] for k in paths}
    for _ in range(args.repeats):
        for k, m in paths.items():
            times[k] += timed(lambda m=m: run(m), 1)
    lines = ["# Weight-only FP4 on a GPU: compiled kernel vs portable vs fp16", "",
             f"- Command: `python bench/bench_quant_gpu.py {' '.join(sys.argv[1:])}`",
             f"- Device: {torch.cuda.get_device_name()}; {machine_description()}",
             f"- Model: PixArt-alpha 256 geometry, {args.blocks} blocks, random weights, fp16, batch 2.",
             f"- Compiled vs portable output: {'bit-identical' if same else f'max abs difference {diff:.3e}'}.", "",
             "| path | median ms | speed vs fp16 | weight MiB |", "|---|---|---|---|"]
    base = statistics.median(times["fp16"])
    for k, m in paths.items():
        med = statistics.median(times[k])
        lines.append(f"| {k} | {1e3 * med:.1f} | {base / med:.2f}x | {weight_bytes(m) / 2**20:.1f} |")
    atomic_write_text(Path(args.out), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
