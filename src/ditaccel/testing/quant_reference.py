"""The per-token activation rounding as it was before the bit-exact fast path (commit 696bdd9).

Why keep it: the tests prove the fast path bit-identical to it, and ``bench/bench_quant_speed.py``
measures the fast path against it. One frozen copy serves both.
"""

from __future__ import annotations

import torch

from ditaccel.quant.formats import FPFormat, parse_format


def log2_step(y: torch.Tensor, fmt: FPFormat) -> torch.Tensor:
    """The previous rounding step, through log2/floor/exp2 (what the bit form replaced)."""
    exp = torch.floor(torch.log2(y.abs().clamp(min=torch.finfo(y.dtype).tiny))).clamp(min=1.0)
    return torch.exp2(exp - fmt.man_bits)


def log2_round(y: torch.Tensor, fmt: FPFormat) -> torch.Tensor:
    s = log2_step(y, fmt)
    return (torch.round(y / s) * s).clamp(-fmt.int_max, fmt.int_max)


def previous_per_token(x: torch.Tensor, name: str) -> torch.Tensor:
    """Per-token absmax scaling, then ``log2_round`` (FP) or uniform rounding (INT)."""
    fmt = parse_format(name)
    xf = x.float()
    amax = xf.abs().amax(dim=-1, keepdim=True)
    safe = torch.where(amax > 0, amax, torch.ones_like(amax))
    if isinstance(fmt, FPFormat):
        out = log2_round(xf / safe * fmt.int_max, fmt) * (safe / fmt.int_max)
    else:
        qmax = 2 ** (fmt.int_bits - 1) - 1
        step = safe / qmax
        out = torch.round(xf / step).clamp(-qmax, qmax) * step
    return out.to(x.dtype)
