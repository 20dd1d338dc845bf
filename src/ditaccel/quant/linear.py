"""``QuantLinear``: an ``nn.Linear`` replacement that *stores* packed 4-bit codes.

The paper's code keeps dequantized fp16 weights plus the originals, which saves nothing.
Here the module holds only ``qweight`` (two codes per byte, or one byte per code for
formats wider than 4 bits), the group scales (and INT zero points) as buffers, plus the
bias in high precision; the float weight exists only transiently inside ``forward``.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import ditaccel.quant.native as native
from ditaccel.errors import DitaccelError
from ditaccel.quant.formats import (
    FPFormat,
    IntFormat,
    _native_params,
    _scratch,
    decode,
    encode,
    int8_digits,
    int8_multiplier,
    int_multiplier,
    parse_format,
    per_token_levels,
    quantize_per_token,
)
from ditaccel.quant.fused import code_values, compiled_fn, compiled_levels, compiled_per_token
from ditaccel.quant.packing import pack_nibbles, pair_table, unpack_nibbles

__all__ = ["INT_GEMM_MAX_DIGITS", "INT_GEMM_MIN_ROWS", "QuantLinear", "group_projections", "weight_bytes"]

#: Token rows below which the integer GEMM is skipped: at 128 rows (the bundled model, one
#: image with CFG) its extra small ops cost more than the GEMM saves (one round of
#: bench_quant_speed.py, before this threshold: INT W4A8 0.59x of fp32 with it, 0.78x without;
#: W4A6 0.52x vs 0.58x; at 1024 rows it won, 0.79x vs 0.62x).
INT_GEMM_MIN_ROWS = 256
#: Activation formats needing more int8 digits than this keep the float GEMM. E3M4 takes two
#: (one int8 GEMM each): measured slower than the float path (0.79x vs 0.88x of fp32 on PixArt
#: geometry, 0.49x vs 0.55x on the bundled model at batch 16), so only one-digit formats
#: (INT8, INT6, E2M3) use the integer GEMM.
INT_GEMM_MAX_DIGITS = 1


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
        #: ``(backend, mode)`` once :func:`ditaccel.quant.kernels.compile_linears` routed this layer
        #: through the compiled dequant-matmul; ``None``: the eager portable forward.
        self.compiled: tuple[str, str | None] | None = None
        #: Integer GEMMs (``torch._int_mm``) when activations and weights have integer levels: see
        #: :meth:`_forward_int8`. ``False``: the float path, bitwise as before.
        self.int_gemm = True
        #: ``(group, position)`` when :func:`group_projections` made this layer one of sibling
        #: projections that read one input (Q/K/V): they then run as one GEMM and one rounding.
        self.group: tuple[_ProjectionGroup, int] | None = None
        #: The native decode's arguments (see ``_native_weight``), keyed by the buffers' addresses.
        self._native_plan: tuple[Any, ...] | None = None
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
            return _dequantize_packed((self,), dtype).view(self.out_features, self.in_features)
        return decode(self.codes(), self.fmt, self.scales, self.group_size, zeros, dtype=dtype)

    @property
    def weight(self) -> torch.Tensor:
        """Dequantized weight, for code that reads ``.weight`` (shape/dtype checks, LoRA...)."""
        return self.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.group is not None and not torch.compiler.is_compiling():  # grouping is eager-only state
            y = _grouped_forward(self, x)
            if y is not None:
                return y
        quant, quant_owned = _rounding(self, x)
        eager = quant is quantize_per_token
        if self._int8_ready(x):
            y = self._forward_int8(x, None if eager else compiled_levels(*self.compiled))  # type: ignore[misc]
            return quant_owned(y, self.out_act_format) if self.out_act_format is not None else y
        if eager and x.dtype is torch.float32:
            y = self._forward_native(x)
            if y is not None:
                return y
        if self.act_format is not None:
            x = _shared_act_quant(x, self.act_format, quant)
        b = self.bias.to(x.dtype) if self.bias is not None else None
        if self.compiled is not None and x.device.type != "cpu":  # CPU: the eager decode measured faster
            zeros = self.zeros if self.zeros.numel() else None
            y = compiled_fn(*self.compiled)(x, self.qweight, code_values(self), self.scales, zeros,
                                            None if b is None else b.detach(), self.group_size)
        else:
            y = F.linear(x, self.dequantize(x.dtype), b)
        if self.out_act_format is not None:
            y = quant_owned(y, self.out_act_format)  # y is this call's own output: rounded in place
        return y

    def _forward_native(self, x: torch.Tensor) -> torch.Tensor | None:
        """The eager float path with the native kernels called directly (float32 CPU input), or ``None``.

        Why: on small layers (the bundled model, one image) the Python around each kernel cost more
        than the kernels: ``dequantize`` + ``quantize_per_token`` added ~45 us per call to a 128-wide
        layer whose ``F.linear`` takes ~8 us. Same operations, same values as the general path.
        """
        if x.requires_grad or not x.is_cpu or torch.compiler.is_compiling():  # before library(): no build traced
            return None
        lib = native.library()
        if lib is None:
            return None
        w = self._native_weight(lib)
        if w is None:
            return None
        if self.act_format is not None:
            x = _shared_act_quant(x, self.act_format, _into_input_buffer)
        bias = self._parameters["bias"]
        if bias is not None and bias.dtype != x.dtype:  # a .half() layer given float32 input, as the eager path allows
            bias = bias.to(x.dtype)
        y = F.linear(x, w, bias)
        if self.out_act_format is not None:
            if y.requires_grad:  # a bias that needs grad: autograd must see the rounding
                return _quantize_owned(y, self.out_act_format)
            native.round_rows(y, y, _act_params(self.out_act_format))  # y: this call's own output
        return y

    def _native_weight(self, lib: Any) -> torch.Tensor | None:
        """The float32 weight ``[out, in]`` decoded by the native kernel (fresh, not kept), or ``None``
        when this layer's storage does not suit it (8-bit codes, a partial last group, not contiguous)."""
        plan = self._native_args()
        if plan is None:
            return None
        w = torch.empty(self.out_features, self.in_features)
        lib.dq_decode(*plan[2], w.data_ptr(), *plan[3], torch.get_num_threads() if plan[4] else 1)
        return w

    def _native_args(self) -> tuple[Any, ...] | None:
        """The native decode's arguments as ``(key, values, (codes, values, scales, zeros) addresses,
        (rows, groups, group), parallel)``, or ``None`` when the storage does not suit the kernel.

        Kept between calls, keyed by the buffers' addresses (so a moved, replaced or deep-copied buffer
        makes a new set): the per-call Python cost was most of the decode's time on the bundled model's
        layers (5 of 10 us for a 512x128 weight).
        """
        b = self._buffers
        q, s, z = b["qweight"], b["scales"], b["zeros"]
        key = (q.data_ptr(), s.data_ptr(), z.data_ptr())
        plan = self._native_plan
        if plan is None or plan[0] != key:
            if not (self.packed and self.in_features % self.group_size == 0 and q.is_contiguous()
                    and s.is_contiguous() and z.is_contiguous() and q.is_cpu and s.dtype == torch.float32):
                return None
            values = code_values(self)
            args = (key[0], values.data_ptr(), key[1], key[2] if z.numel() else None)
            shape = (self.out_features, s.shape[1], self.group_size)
            big = self.out_features * self.in_features >= native.PARALLEL_MIN
            plan = self._native_plan = (key, values, args, shape, big)
        return plan

    def _int8_ready(self, x: torch.Tensor) -> bool:
        """Whether this call can run as int8 x int8 GEMMs (``torch._int_mm``; CPU only: unmeasured on GPUs)."""
        return (self.int_gemm and x.numel() >= INT_GEMM_MIN_ROWS * self.in_features  # cheapest tests first
                and x.is_cpu and self.act_format is not None
                and self.packed and self.in_features % self.group_size == 0 and not x.requires_grad
                and hasattr(torch, "_int_mm")
                and (int8_digits(parse_format(self.act_format)) or 99) <= INT_GEMM_MAX_DIGITS
                and int8_multiplier(self.fmt) is not None)

    def _forward_int8(self, x: torch.Tensor, levels: Callable[..., Any] | None = None) -> torch.Tensor:
        """``x @ W^T + b`` as exact int8 GEMMs per weight group, scaled in float32 afterwards.

        Activation levels (per token) and weight levels (per group) are integers (E2M1 in
        [-12, 12], E2M3 in [-60, 60], INT levels as they are; E3M4's [-1984, 1984] as two
        base-128 digits, one GEMM each), so products and sums are exact in int32; float32
        rounding enters only in the scaling.
        The result is the portable path's up to float32 rounding (bounded in the tests).
        ``levels``: a compiled :func:`per_token_levels` (``kernel="compiled"``).
        """
        xi, xs = _shared_act_int8(x, self.act_format, levels or per_token_levels)
        xi, xs = xi.reshape(xi.shape[0], -1, self.in_features), xs.reshape(-1, 1)
        wi = pair_table(self.fmt, self.qweight.device, int8=True).index_select(0, self.qweight.view(-1).to(torch.int32))
        wi = wi.view(torch.int8).view(self.out_features, -1, self.group_size)
        if self.zeros.numel():
            wi = wi - self.zeros.view(torch.int8).unsqueeze(-1)  # levels 0..15 minus zero point: [-15, 15]
        ws = self.scales / int8_multiplier(self.fmt)  # [out, groups], exact for power-of-two multipliers
        if isinstance(self.fmt, FPFormat):
            ws = ws / self.fmt.int_max
        y: torch.Tensor | None = None
        for g in range(ws.shape[1]):
            cols, wg = slice(g * self.group_size, (g + 1) * self.group_size), wi[:, g].t()
            acc = torch._int_mm(xi[0][:, cols], wg)
            if xi.shape[0] == 2:  # two base-128 digits: high * 128 + low, exact in int32
                acc = acc.mul_(128).add_(torch._int_mm(xi[1][:, cols], wg))
            term = acc * ws[:, g]
            y = term if y is None else y.add_(term)
        y = y.mul_(xs)  # type: ignore[union-attr]
        if self.bias is not None:
            y = y.add_(self.bias.float())
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)

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

    # -- checkpoint form (ditaccel.quant.io): the layer as a JSON spec plus its packed tensors, and back

    def checkpoint_spec(self) -> dict[str, Any]:
        """What ``from_checkpoint`` rebuilds this layer from, besides its tensors (JSON types only)."""
        return {"format": self.fmt.name, "in_features": self.in_features, "out_features": self.out_features,
                "group_size": self.group_size, "bias": self.bias is not None, "act_format": self.act_format,
                "out_act_format": self.out_act_format,
                "compute_dtype": str(self.compute_dtype or torch.float32).removeprefix("torch.")}

    @classmethod
    def from_checkpoint(cls, spec: dict[str, Any], tensors: dict[str, torch.Tensor],
                        compute_dtype: torch.dtype) -> QuantLinear:
        """A CPU layer from ``checkpoint_spec()`` and its tensors by buffer name (``qweight``, ``scales``,
        ``zeros`` if the format has zero points, ``bias`` if the spec has one).

        Why here: the checkpoint reader then never writes this module's buffers itself. Raises
        ``KeyError(name)`` for a missing tensor and ``ValueError`` naming one of the wrong shape or dtype.
        """
        m = cls(spec["in_features"], spec["out_features"], spec["format"], spec["group_size"], bias=spec["bias"],
                act_format=spec.get("act_format"), out_act_format=spec.get("out_act_format"),
                compute_dtype=compute_dtype, device="cpu")
        for name, target in (("qweight", m.qweight), ("scales", m.scales), ("zeros", m.zeros)):
            if target.numel() == 0 and name not in tensors:
                continue
            t = tensors[name]
            if t.shape != target.shape or t.dtype != target.dtype:
                raise ValueError(f"{name} has shape {tuple(t.shape)}/{t.dtype}, expected "
                                 f"{tuple(target.shape)}/{target.dtype}")
            target.copy_(t)
        if spec["bias"]:
            b = tensors["bias"]
            if b.shape != (m.out_features,):
                raise ValueError(f"bias has shape {tuple(b.shape)}, expected ({m.out_features},)")
            m.bias = nn.Parameter(b.to(compute_dtype), requires_grad=False)
        return m


def _rounding(layer: QuantLinear, x: torch.Tensor) -> tuple[Callable[[torch.Tensor, str], torch.Tensor],
                                                            Callable[[torch.Tensor, str], torch.Tensor]]:
    """The layer's per-token rounding as (for an input, for its own output, rounded in place): eager, or
    the compiled kernel's when ``compile_linears`` routed the layer.

    On the CPU the native kernels replace the compiled rounding when they are built: bit-identical,
    and faster (bundled model, batch 16, W4A8: 0.90x of fp32 against 0.77x compiled, 7 interleaved
    rounds, ``bench/results/quant_speed.md``; the compiled rounding pays Dynamo's guards on every call).
    """
    if layer.compiled is None or (x.is_cpu and not torch.compiler.is_compiling() and native.library() is not None):
        return quantize_per_token, _quantize_owned
    return _compiled_quants(compiled_per_token(*layer.compiled))


def _dequantize_packed(layers: tuple[QuantLinear, ...], dtype: torch.dtype) -> torch.Tensor:
    """The float weights of packed layers with whole groups, stacked ``[len(layers) * out, groups, group]``.

    One gather per *byte* from a 256-entry table of int64 words, each two float32 values (low
    and high nibble), then an in-place broadcast multiply by the group scales: bit-identical to
    :func:`decode`, without unpacking or expanding scales. Several layers (same format, shape and
    group size) decode in one pass over their concatenated codes: fewer small ops per call.
    On the CPU the native kernel (:mod:`ditaccel.quant.native`), when available, does the unpack,
    lookup and scaling of each layer in one pass instead, with the same float32 products.
    """
    m = layers[0]
    lib = native.library() if m.qweight.is_cpu and not torch.compiler.is_compiling() else None
    plans = [lay._native_args() for lay in layers] if lib is not None else []
    if plans and all(p is not None for p in plans):
        out = torch.empty(len(layers) * m.out_features, m.scales.shape[1], m.group_size)
        base, step = out.data_ptr(), m.out_features * m.in_features * out.element_size()
        for i, p in enumerate(plans):  # one pass per layer, straight into its rows
            lib.dq_decode(*p[2], base + i * step, *p[3], torch.get_num_threads() if p[4] else 1)  # type: ignore[index]
        return out.to(dtype)
    cat = (lambda ts: ts[0]) if len(layers) == 1 else torch.cat
    idx = cat([lay.qweight.view(-1) for lay in layers]).to(torch.int32)
    vals = pair_table(m.fmt, m.qweight.device).index_select(0, idx).view(torch.float32)
    vals = vals.view(len(layers) * m.out_features, -1, m.group_size)  # fresh, owned
    if m.zeros.numel():
        vals.sub_(cat([lay.zeros for lay in layers]).unsqueeze(-1))
    return vals.mul_(cat([lay.scales for lay in layers]).unsqueeze(-1)).to(dtype)


class _ProjectionGroup:
    """Sibling projections that read one input (``to_q``/``to_k``/``to_v``, or ``to_k``/``to_v`` of a
    cross-attention), run as one batched GEMM over their stacked decoded weights and one per-token
    rounding of all outputs.

    Why: each eager rounding has a fixed cost (~39 us on the bundled model's 128-wide layers) and
    each layer its own decode and GEMM call; here Q, K and V take one of each. The first member
    computes all outputs; the others take theirs if they are called with that same tensor (object
    and version), else the group is switched off for good and each layer runs alone. Values are
    bit-identical: the rounding is per (token, projection) and each output column is its own dot
    product. Nothing is stored between calls but the pending outputs of one attention.
    """

    def __init__(self, members: tuple[QuantLinear, ...]) -> None:
        self.members = members
        self.disabled = False
        #: Outputs computed for later members are not all taken yet (a miss then means another call order).
        self.waiting = False

    def fusable(self, x: torch.Tensor) -> bool:
        """Whether this call can run fused: CPU float32, no grad, same configuration in every member."""
        m = self.members[0]
        if (self.disabled or x.requires_grad or x.is_inference() or not x.is_cpu or x.dtype != torch.float32
                or m._int8_ready(x)):
            return False
        key = _group_key(m)
        return all(_group_key(o) == key for o in self.members[1:])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every member's output for input ``x``, each a contiguous ``[*x.shape[:-1], out]`` tensor."""
        m = self.members[0]
        quant, quant_owned = _rounding(m, x)
        if m.act_format is not None:
            x = _shared_act_quant(x, m.act_format, quant)
        n = len(self.members)
        if m.packed and m.in_features % m.group_size == 0:
            w = _dequantize_packed(self.members, x.dtype).view(n, m.out_features, m.in_features)
        else:
            w = torch.stack([o.dequantize(x.dtype) for o in self.members])
        w = w.transpose(1, 2)
        x2 = x.reshape(1, -1, m.in_features).expand(n, -1, -1)
        if m.bias is not None:
            b = torch.stack([o.bias for o in self.members]).to(x.dtype).unsqueeze(1)
            y = torch.baddbmm(b, x2, w)  # [n, tokens, out]: each member's output contiguous
        else:
            y = torch.bmm(x2, w)
        if m.out_act_format is not None:
            y = quant_owned(y, m.out_act_format)  # per last-dim vector: per (member, token)
        return [y[i].view(*x.shape[:-1], m.out_features) for i in range(n)]


def _group_key(m: QuantLinear) -> tuple[Any, ...]:
    return (m.fmt, m.group_size, m.in_features, m.out_features, m.act_format, m.out_act_format, m.compiled,
            m.int_gemm, m.bias is None)


class _PendingOutputs(threading.local):
    """Outputs a group computed for its later members, with the input they were computed for."""

    group: _ProjectionGroup | None = None
    ref: weakref.ref | None = None
    version: int = -1
    outs: list[torch.Tensor | None] = []  # noqa: RUF012 (per-thread, replaced, never mutated in place)


_PENDING = _PendingOutputs()


def _grouped_forward(layer: QuantLinear, x: torch.Tensor) -> torch.Tensor | None:
    """``layer``'s output through its projection group, or ``None``: run the layer alone."""
    group, pos = layer.group  # type: ignore[misc]
    p = _PENDING
    if pos > 0:
        if p.group is group and p.ref is not None and p.ref() is x and p.version == x._version \
                and p.outs[pos] is not None:
            out, p.outs[pos] = p.outs[pos], None
            if all(o is None for o in p.outs):
                p.group, p.ref, p.outs, group.waiting = None, None, [], False
            return out
        if p.group is group or group.waiting:
            # a sibling read another tensor, or the siblings run in another order (K before Q):
            # fusing would compute some outputs twice, so each layer runs alone from now on
            group.disabled, group.waiting = True, False
            if p.group is group:
                p.group, p.ref, p.outs = None, None, []
        return None
    if not group.fusable(x):
        return None
    outs: list[torch.Tensor | None] = list(group.forward(x))
    first, outs[0] = outs[0], None
    p.group, p.ref, p.version, p.outs, group.waiting = group, weakref.ref(x), x._version, outs, True
    return first


def group_projections(model: nn.Module) -> int:
    """Group each attention's sibling ``QuantLinear`` projections that read one input; returns the count.

    Self-attention: ``to_q``, ``to_k``, ``to_v``; cross-attention (``is_cross_attention``):
    ``to_k``, ``to_v`` (the query reads the image tokens). A forward-time grouping only: the layers,
    their buffers and the checkpoint layout stay as they are, and a group whose members differ in
    format (``auto``) or are not called on one tensor runs its layers alone.
    """
    for m in model.modules():
        if isinstance(m, QuantLinear):
            m.group = None
    count = 0
    for mod in model.modules():
        names = ("to_k", "to_v") if getattr(mod, "is_cross_attention", False) else ("to_q", "to_k", "to_v")
        members = tuple(getattr(mod, n, None) for n in names)
        if not all(isinstance(m, QuantLinear) for m in members):
            continue
        group = _ProjectionGroup(members)  # type: ignore[arg-type]
        for i, m in enumerate(members):
            m.group = (group, i)  # type: ignore[union-attr]
        count += 1
    return count


class _LastActQuant(threading.local):
    """The last per-token quantization done on this thread: input (weakly), its version, format, result."""

    ref: weakref.ref | None = None
    version: int = -1
    fmt: str = ""
    out: Any = None  # a tensor, or (int8 codes, scales) for the integer GEMM


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
    if quant is quantize_per_token:  # eager: the result goes to a reused buffer (see _into_input_buffer)
        quant = _into_input_buffer
    if x.requires_grad or x.is_inference():  # inference tensors have no version counter: not shared
        last.ref = None  # the buffer the cached result lives in is about to be overwritten
        return quant(x, fmt)
    if last.ref is not None and last.ref() is x and last.version == x._version and last.fmt == fmt:
        return last.out  # type: ignore[return-value]
    out = quant(x, fmt)
    last.ref, last.version, last.fmt, last.out = weakref.ref(x), x._version, fmt, out
    return out


def _shared_act_int8(x: torch.Tensor, fmt: str,
                     levels_fn: Callable[..., Any] = per_token_levels) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token int8 digits ``[digits, *x.shape]`` and float32 scales of ``x``, shared between
    siblings like :func:`_shared_act_quant`: ``(sum of digit * 128^k) * scale`` is
    ``quantize_per_token(x, fmt)``."""
    f = parse_format(fmt)
    last = _LAST
    tag = fmt + ":int8"
    share = not x.is_inference()  # inference tensors have no version counter
    if share and last.ref is not None and last.ref() is x and last.version == x._version and last.fmt == tag:
        return last.out  # type: ignore[return-value]
    levels, scale = levels_fn(x, f)
    mult = int_multiplier(f)
    ints = levels.mul_(mult)  # exact: multiplying by a power of two
    if int8_digits(f) == 2:
        high = (ints / 128).round_()
        digits = torch.stack([high, ints.sub_(high * 128)])  # low digit in [-64, 64]
    else:
        digits = ints.unsqueeze(0)
    out = (digits.to(torch.int8), scale / mult)
    if share:
        last.ref, last.version, last.fmt, last.out = weakref.ref(x), x._version, tag, out
    return out


@functools.cache
def _act_params(fmt: str) -> tuple[bool, float, float]:
    """The native rounding kernel's arguments for an activation format name."""
    return _native_params(parse_format(fmt))


def _into_input_buffer(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """``quantize_per_token(x, fmt)`` written into a per-thread buffer reused by every layer's input.

    Why: a fresh activation-sized result per layer costs page faults on the CPU (in a batch-16
    bundled forward, the allocating division was 13 % of the profile). Safe because the
    rounded input's only readers are this layer's matmul, run at once, and its siblings
    through :func:`_shared_act_quant`'s cache, which is replaced whenever the buffer is rewritten.
    """
    if x.dtype is torch.float32:
        buf = _scratch(x, slot=1)  # None on GPUs, with gradients, when tracing or not contiguous
        if buf is not None and native.round_rows(x, buf, _act_params(fmt)):
            return buf
    return quantize_per_token(x, fmt, out=_scratch(x, slot=1) if x.dtype == torch.float32 else None)


@functools.cache
def _compiled_quants(compiled: Callable[..., torch.Tensor]) -> tuple[Callable[[torch.Tensor, str], torch.Tensor],
                                                                    Callable[[torch.Tensor, str], torch.Tensor]]:
    """The compiled per-token rounding as (layer input into the reused input buffer, own output in place).

    Why: like the eager path, the compiled kernel then allocates no activation-sized tensor per
    layer (Inductor writes a mutated input in place). On the CPU (one thread, bundled model, batch
    16, W4A8) the compiled input and output roundings took 22-23 ms per forward, with or without
    the buffer, against 32 ms eager.
    """
    def into_buffer(x: torch.Tensor, fmt: str) -> torch.Tensor:
        return compiled(x, fmt, False, _scratch(x, slot=1) if x.dtype == torch.float32 else None)

    def owned(y: torch.Tensor, fmt: str) -> torch.Tensor:
        return compiled(y, fmt, True)

    return into_buffer, owned


def _quantize_owned(y: torch.Tensor, fmt: str) -> torch.Tensor:
    """``quantize_per_token(y, fmt)`` for a layer output nobody else holds yet: in place, no new buffer."""
    return quantize_per_token(y, fmt, inplace=True)


def quantized_layers(transformer: nn.Module) -> dict[str, QuantLinear]:
    """All ``QuantLinear`` modules of a (quantized) transformer, by name."""
    return {n: m for n, m in transformer.named_modules() if isinstance(m, QuantLinear)}


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
