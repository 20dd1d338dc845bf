"""``QuantLinear``: an ``nn.Linear`` replacement that *stores* packed 4-bit codes.

The paper's code keeps dequantized fp16 weights plus the originals, which saves nothing.
Here the module holds only ``qweight`` (two codes per byte, or one byte per code for
formats wider than 4 bits), the group scales (and INT zero points) as buffers, plus the
bias in high precision; the float weight exists only transiently inside ``forward``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ditaccel.errors import DitaccelError
from ditaccel.quant.formats import (
    FPFormat,
    IntFormat,
    decode,
    encode,
    parse_format,
    quantize_per_token,
)
from ditaccel.quant.packing import pack_nibbles, unpack_nibbles

__all__ = ["QuantLinear", "weight_bytes"]


class QuantLinear(nn.Module):
    """Linear layer with packed low-bit weights, dequantized in ``forward``.

    ``act_format`` quantizes the *input* per token at run time (A6/A8); ``out_act_format``
    quantizes the *output* per token, which is how Q, K and V are quantized: the
    ``to_q/to_k/to_v`` projections produce them, so no attention processor is replaced
    and every diffusers ``Attention`` variant works unchanged. The softmax output is
    never quantized.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        weight_format: str | FPFormat | IntFormat,
        group_size: int = 128,
        bias: bool = True,
        act_format: str | None = None,
        out_act_format: str | None = None,
        compute_dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.fmt = parse_format(weight_format)
        self.group_size = int(group_size)
        self.act_format = act_format
        self.out_act_format = out_act_format
        self.compute_dtype = compute_dtype
        n_groups = -(-in_features // self.group_size)
        packed = self.fmt.bits <= 4
        qcols = (in_features + 1) // 2 if packed else in_features
        self.register_buffer("qweight", torch.zeros(out_features, qcols, dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.zeros(out_features, n_groups, dtype=torch.float32, device=device))
        needs_zero = isinstance(self.fmt, IntFormat) and not self.fmt.symmetric
        self.register_buffer(
            "zeros",
            torch.zeros(out_features, n_groups if needs_zero else 0, dtype=torch.uint8, device=device),
        )
        #: ``(backend, mode)`` once :func:`ditaccel.quant.fused.compile_linears` routed this layer
        #: through the compiled dequant-matmul; ``None``: the eager portable forward.
        self.compiled: tuple[str, str | None] | None = None
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        """Follow device moves but keep group scales in float32 under ``.half()`` / ``.to(dtype)``.

        The scales define the grid (the group max maps to itself only in float32); the
        bias and the compute dtype follow the model.
        """
        scales = self.scales
        out = super()._apply(fn, recurse)
        self._buffers["scales"] = scales.to(device=self.scales.device)
        if self.bias is not None:
            self.compute_dtype = self.bias.dtype
        return out

    @property
    def packed(self) -> bool:
        return self.fmt.bits <= 4

    @classmethod
    def from_codes(
        cls,
        codes: torch.Tensor,
        scales: torch.Tensor,
        zeros: torch.Tensor | None,
        bias: torch.Tensor | None,
        weight_format: str | FPFormat | IntFormat,
        group_size: int = 128,
        act_format: str | None = None,
        out_act_format: str | None = None,
        compute_dtype: torch.dtype | None = None,
    ) -> QuantLinear:
        """Build from unpacked codes ``[out, in]`` and group scales (what AdaRound and RTN produce)."""
        out_f, in_f = codes.shape
        m = cls(in_f, out_f, weight_format, group_size, bias is not None, act_format, out_act_format,
                compute_dtype, device=codes.device)
        m.qweight.copy_(pack_nibbles(codes) if m.packed else codes)
        m.scales.copy_(scales)
        if m.zeros.numel():
            m.zeros.copy_(zeros)
        if bias is not None:
            m.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        return m

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        weight_format: str | FPFormat | IntFormat,
        group_size: int = 128,
        act_format: str | None = None,
        out_act_format: str | None = None,
    ) -> QuantLinear:
        """Round-to-nearest quantization of an existing ``nn.Linear``."""
        fmt = parse_format(weight_format)
        codes, scales, zeros = encode(linear.weight.detach(), fmt, group_size)
        return cls.from_codes(codes, scales, zeros, linear.bias, fmt, group_size, act_format, out_act_format,
                              compute_dtype=linear.weight.dtype)

    def codes(self) -> torch.Tensor:
        """Unpacked codes ``[out, in]``."""
        return unpack_nibbles(self.qweight, self.in_features) if self.packed else self.qweight

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The float weight ``[out, in]`` these codes stand for (built on demand, not stored).

        Fast path (packed codes, whole groups): one gather per *byte* from a 256-entry
        table of int64 words, each two float32 values (low and high nibble), then an
        in-place broadcast multiply by the group scales: four passes over the weight,
        bit-identical to :func:`decode`, without unpacking or expanding scales.
        """
        dtype = dtype or self.compute_dtype or torch.float32
        zeros = self.zeros if self.zeros.numel() else None
        if self.packed and self.in_features % self.group_size == 0:
            idx = self.qweight.view(-1).to(torch.int32)
            vals = _pair_table(self.fmt, self.qweight.device).index_select(0, idx).view(torch.float32)
            vals = vals.view(self.out_features, -1, self.group_size)  # [out, groups, group]: fresh, owned
            if zeros is not None:
                vals.sub_(zeros.unsqueeze(-1))
            return vals.mul_(self.scales.unsqueeze(-1)).view(self.out_features, self.in_features).to(dtype)
        return decode(self.codes(), self.fmt, self.scales, self.group_size, zeros, dtype=dtype)

    @property
    def weight(self) -> torch.Tensor:
        """Dequantized weight, for code that reads ``.weight`` (shape/dtype checks, LoRA...)."""
        return self.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        quant = quantize_per_token
        if self.compiled is not None:
            from ditaccel.quant.fused import code_values, compiled_fn, compiled_per_token

            quant = compiled_per_token(*self.compiled)
        if self.act_format is not None:
            x = _shared_act_quant(x, self.act_format, quant)
        b = self.bias.to(x.dtype) if self.bias is not None else None
        if self.compiled is not None:
            zeros = self.zeros if self.zeros.numel() else None
            y = compiled_fn(*self.compiled)(x, self.qweight, code_values(self), self.scales, zeros,
                                            None if b is None else b.detach(), self.group_size)
        else:
            y = F.linear(x, self.dequantize(x.dtype), b)
        if self.out_act_format is not None:
            y = quant(y, self.out_act_format)
        return y

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, weight={self.fmt.name}, "
            f"group={self.group_size}, act={self.act_format}, out_act={self.out_act_format}"
        )

    def bits_per_weight(self) -> float:
        """Storage bits per weight, group scales and zero points included (bias excluded)."""
        n = self.in_features * self.out_features
        storage = self.qweight.numel() * 8 + self.scales.numel() * 32 + self.zeros.numel() * 8
        return storage / n


class _LastActQuant(threading.local):
    """The last per-token quantization done on this thread: input (weakly), its version, format, result."""

    ref: weakref.ref | None = None
    version: int = -1
    fmt: str = ""
    out: torch.Tensor | None = None


_LAST = _LastActQuant()


def _shared_act_quant(x: torch.Tensor, fmt: str,
                      quant: Callable[[torch.Tensor, str], torch.Tensor] = quantize_per_token) -> torch.Tensor:
    """``quantize_per_token(x, fmt)``, reused when the previous call quantized this same tensor.

    Sibling projections read one input (``to_q``/``to_k``/``to_v`` on the normed hidden
    states, ``to_k``/``to_v`` on the text states), so it is quantized once, not three
    times. Identity is the tensor object itself (a weak reference) plus its in-place
    version counter; tensors that need grad are never shared.
    """
    last = _LAST
    if (not x.requires_grad and last.ref is not None and last.ref() is x and last.version == x._version
            and last.fmt == fmt):
        return last.out  # type: ignore[return-value]
    out = quant(x, fmt)
    if not x.requires_grad:
        last.ref, last.version, last.fmt, last.out = weakref.ref(x), x._version, fmt, out
    return out


_TABLES: dict[tuple[str, str], torch.Tensor] = {}


def _pair_table(fmt: FPFormat | IntFormat, device: torch.device) -> torch.Tensor:
    """``[256]`` int64: for each byte, the float32 values of its low and high nibble side by side.

    A value is the grid value (FP), the signed level (symmetric INT) or the raw level (INT
    with zero point). Gathering 8-byte words is one ``index_select`` of contiguous rows,
    where a ``[256, 2]`` float table costs an embedding lookup of 2-wide rows.
    """
    key = (fmt.name, str(device))
    if key not in _TABLES:
        codes = torch.arange(16)
        if isinstance(fmt, FPFormat):
            per_code = fmt.grid()[:16]
        elif fmt.symmetric:
            per_code = torch.where(codes >= 8, codes - 16, codes).float()
        else:
            per_code = codes.float()
        b = torch.arange(256)
        pairs = torch.stack([per_code[b & 15], per_code[b >> 4]], dim=-1).contiguous()
        _TABLES[key] = pairs.view(torch.int64).reshape(256).to(device)
    return _TABLES[key]


def weight_bytes(module: nn.Module) -> int:
    """Bytes held by a module's parameters and buffers: the weight memory we report."""
    seen: set[int] = set()
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


def check_act_format(name: str | None) -> str | None:
    """Validate an activation format name (``None``/``"none"`` means off)."""
    if name is None or str(name).lower() == "none":
        return None
    fmt = parse_format(name)
    if fmt.bits > 8:
        raise DitaccelError(f"activation format {name!r} is wider than 8 bits: use e2m3, e3m4, e4m3 or int8")
    return fmt.name
