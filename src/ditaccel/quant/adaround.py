"""Scale-aware AdaRound for FP (and INT) grids: learn to round each weight up or down.

FP grids have many step sizes. With plain AdaRound (``W = (floor(W/s) + h(alpha)) * s``)
the gradient on ``alpha`` grows with ``s``, so large-magnitude weights move fast and small
ones barely move. FP4DiT stores the variable as ``V' = s * alpha`` instead; the gradient on
``V'`` no longer depends on ``s``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ditaccel.quant.formats import (
    FPFormat,
    IntFormat,
    _expand,
    encode,
    fp_step,
    group_absmax,
    int_params,
    parse_format,
)
from ditaccel.quant.linear import QuantLinear

__all__ = ["AdaRoundLinear", "rectified_sigmoid", "beta_schedule", "optimize_rounding"]

ZETA = 1.1
GAMMA = -0.1


def rectified_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """``clip(sigmoid(x) * (zeta - gamma) + gamma, 0, 1)``: reaches exactly 0 and 1."""
    return (torch.sigmoid(x) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def beta_schedule(it: int, iters: int, warmup: float, start: float = 20.0, end: float = 2.0) -> float | None:
    """Regulariser exponent at iteration ``it``: ``None`` during warm-up, then linear ``start -> end``."""
    w = int(warmup * iters)
    if it < w:
        return None
    rel = (it - w) / max(1, iters - w)
    return end + (start - end) * max(0.0, 1.0 - rel)


class AdaRoundLinear(nn.Module):
    """Temporary stand-in for an ``nn.Linear`` while its rounding is learned.

    Holds, per weight, the grid point below it (``lower``), the grid step there (``step``,
    in weight units) and the clamp bounds; the only trainable tensor is ``v = step * alpha``.
    """

    def __init__(self, linear: nn.Linear, weight_format: str | FPFormat | IntFormat, group_size: int = 128) -> None:
        super().__init__()
        self.fmt = parse_format(weight_format)
        self.group_size = group_size
        w = linear.weight.detach()
        self.out_features, self.in_features = w.shape
        self.weight_dtype = w.dtype
        cols = w.shape[1]
        wd = w.double()
        if isinstance(self.fmt, FPFormat):
            scale = group_absmax(w, group_size)
            zero = None
            a = _expand(scale.double(), group_size, cols)
            k = a / self.fmt.int_max  # weight units per bias-0 grid unit
            y = torch.where(a > 0, wd / torch.where(a > 0, k, 1.0), torch.zeros_like(wd))
            s_y = fp_step(y, self.fmt)
            lower = torch.floor(y / s_y) * s_y * k
            step = s_y * k
            lo, hi = -a, a
            rest = y / s_y - torch.floor(y / s_y)
        else:
            scale, zero = int_params(w, self.fmt, group_size)
            s = _expand(scale.double(), group_size, cols)
            if self.fmt.symmetric:
                lo, hi = -self.fmt.qmax * s, self.fmt.qmax * s
            else:
                z = _expand(zero.double(), group_size, cols)
                lo, hi = -z * s, (self.fmt.qmax - z) * s
            safe = torch.where(s > 0, s, torch.ones_like(s))
            lower = torch.floor(wd / safe) * s
            step = s
            rest = wd / safe - torch.floor(wd / safe)
        dead = step <= 0
        step = torch.where(dead, torch.full_like(step, 1e-12), step)
        rest = rest.clamp(1e-4, 1 - 1e-4)
        alpha = -torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0)
        self.register_buffer("scale", scale.float())
        self.register_buffer("zero", zero if zero is not None else torch.zeros(0, dtype=torch.uint8))
        self.register_buffer("lower", lower.float())
        self.register_buffer("step", step.float())
        self.register_buffer("lo", lo.float())
        self.register_buffer("hi", hi.float())
        self.v = nn.Parameter((step * alpha).float())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.hard = False

    def h(self) -> torch.Tensor:
        return rectified_sigmoid(self.v / self.step)

    def soft_weight(self) -> torch.Tensor:
        h = (self.h() >= 0.5).float() if self.hard else self.h()
        w = torch.maximum(torch.minimum(self.lower + h * self.step, self.hi), self.lo)
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.soft_weight().to(x.dtype)
        b = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, w, b)

    def regulariser(self, beta: float) -> torch.Tensor:
        """``sum(1 - |2h - 1|^beta)``: zero only when every ``h`` is exactly 0 or 1."""
        return (1 - (2 * self.h() - 1).abs().pow(beta)).sum()

    @torch.no_grad()
    def to_quant_linear(self) -> QuantLinear:
        """Hard-round (``h >= 0.5``) and re-encode on the *same* grid into packed codes."""
        w = torch.maximum(torch.minimum(self.lower + (self.h() >= 0.5).float() * self.step, self.hi), self.lo)
        zero = self.zero if self.zero.numel() else None
        codes, scales, zeros = encode(w, self.fmt, self.group_size, scale=self.scale, zero=zero)
        return QuantLinear.from_codes(codes, scales, zeros, self.bias, self.fmt, self.group_size,
                                      compute_dtype=self.weight_dtype)


def optimize_rounding(
    modules: list[AdaRoundLinear],
    loss_fn: Callable[[], torch.Tensor],
    iters: int,
    lr: float = 1e-4,
    reg_weight: float = 0.01,
    warmup: float = 0.2,
    beta_start: float = 20.0,
    beta_end: float = 2.0,
    progress: Iterator[int] | None = None,
) -> list[float]:
    """Adam on every ``v``; ``loss_fn()`` returns the reconstruction loss of one minibatch.

    Returns the reconstruction loss per iteration (for logs and tests).
    """
    params = [m.v for m in modules]
    opt = torch.optim.Adam(params, lr=lr)
    history: list[float] = []
    steps = progress if progress is not None else range(iters)
    for it in steps:
        opt.zero_grad(set_to_none=True)
        rec = loss_fn()
        beta = beta_schedule(it, iters, warmup, beta_start, beta_end)
        loss = rec
        if beta is not None and reg_weight > 0:
            loss = rec + reg_weight * sum(m.regulariser(beta) for m in modules)
        loss.backward()
        opt.step()
        val = float(rec.detach())
        if not math.isfinite(val):
            raise FloatingPointError("AdaRound reconstruction loss became non-finite")
        history.append(val)
    return history
