"""Weight-only FP4/INT4 through ``torch.compile``: packed codes in memory, dequant + matmul generated.

Why: the torchao kernels re-express the weights in a hardware format (``torchao-fp8``
keeps 8 bits per weight, twice the 4-bit footprint), while this path keeps exactly the
``QuantLinear`` buffers (two codes per byte + group scales) between calls. On a GPU,
Inductor turns the unpack + grid lookup + group-scale multiply into one generated Triton
kernel feeding the matmul (with ``mode="max-autotune"`` it may fuse the dequantization
into the matmul's prologue); the full-size weight exists only inside one call. On the
CPU the eager pair-table decode measured faster than the generated C++ one, so there
only the per-token activation rounding is compiled (one reduction + one elementwise
pass, for the float and the int8 GEMM paths), and only where the native kernels
(:mod:`ditaccel.quant.native`, faster still) are not built. Outputs are bit-identical to the portable
path (same operations in the same order; checked in the tests, the GPU form included:
it is generated as C++ on the CPU there).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ditaccel.errors import DitaccelError
from ditaccel.quant.packing import pair_table

__all__ = ["COMPILED_KERNEL", "check_compiled", "compiled_levels", "dequant_linear"]

#: The kernel name ``FP4DiTConfig.kernel`` / ``load_quantized(kernel=...)`` use for this path.
COMPILED_KERNEL = "compiled"

_CODE_VALUES: dict[tuple[str, str], torch.Tensor] = {}
_COMPILED: dict[tuple, Any] = {}


def dequant_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    values: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    bias: torch.Tensor | None,
    group_size: int,
) -> torch.Tensor:
    """``F.linear(x, dequant(qweight), bias)`` for packed nibbles, written for Inductor to fuse.

    ``values`` maps a 4-bit code to its grid value / integer level (16 float32 entries).
    """
    out_f = qweight.shape[0]
    v = torch.stack([values[(qweight & 15).long()], values[(qweight >> 4).long()]], dim=-1)
    v = v.reshape(out_f, scales.shape[1], group_size)
    if zeros is not None:
        v = v - zeros.unsqueeze(-1)
    w = (v * scales.unsqueeze(-1)).reshape(out_f, -1).to(x.dtype)
    return F.linear(x, w, bias)


def code_values(module: nn.Module) -> torch.Tensor:
    """The 16 float32 values a layer's 4-bit codes stand for (cached per format and device)."""
    key = (module.fmt.name, str(module.qweight.device))
    if key not in _CODE_VALUES:
        pairs = pair_table(module.fmt, module.qweight.device)[:16].view(torch.float32).view(16, 2)
        _CODE_VALUES[key] = pairs[:, 0].contiguous()  # byte b < 16 has low nibble b, high nibble 0
    return _CODE_VALUES[key]


def compiled_fn(backend: str = "inductor", mode: str | None = None) -> Any:
    """One compiled :func:`dequant_linear` per (backend, mode), shape-generic.

    ``dynamic=True``: one graph serves every layer width and token count (a DiT has a few
    distinct widths and several token counts), where static shapes would hit Dynamo's
    recompile limit and fall back to eager. Pass plain tensors (not ``nn.Parameter``),
    whose shapes Dynamo would otherwise treat as static.
    """
    key = ("dequant_linear", backend, mode)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(dequant_linear, backend=backend, mode=mode, dynamic=True)
    return _COMPILED[key]


def compiled_per_token(backend: str = "inductor", mode: str | None = None) -> Any:
    """:func:`~ditaccel.quant.formats.quantize_per_token` compiled: one reduction + one fused pass."""
    from ditaccel.quant.formats import quantize_per_token

    key = ("per_token", backend, mode)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(quantize_per_token, backend=backend, mode=mode, dynamic=True)
    return _COMPILED[key]


def compiled_levels(backend: str = "inductor", mode: str | None = None) -> Any:
    """:func:`~ditaccel.quant.formats.per_token_levels` compiled, for the integer GEMM's activation levels."""
    from ditaccel.quant.formats import per_token_levels

    key = ("levels", backend, mode)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(per_token_levels, backend=backend, mode=mode, dynamic=True)
    return _COMPILED[key]


def check_compiled(device: torch.device | str | None = None) -> None:
    """Raise a one-line ``DitaccelError`` when ``torch.compile`` cannot generate kernels here."""
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            raise DitaccelError("kernel 'compiled' on a GPU needs Triton: pip install triton, "
                                "or use kernel='portable'") from None
        return
    import shutil

    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        raise DitaccelError("kernel 'compiled' on the CPU needs a C++ compiler (g++ or clang++) for torch.compile: "
                            "install one, or use kernel='portable'")
