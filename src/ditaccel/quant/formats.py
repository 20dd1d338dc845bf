"""Number formats for FP4DiT: general ExMy floating point and INTn baselines.

A weight group (``group_size`` consecutive values along the input dim) is quantized
against its own absolute max. For FP the paper writes this as a real-valued exponent
bias, ``bias = 2^E - log2(max) + log2(2 - 2^-M) - 1``, which is the same thing as
scaling a bias-0 ExMy grid so that its largest value equals the group max. We store the
grid *normalised to [-1, 1]* (largest value exactly 1.0) and the group absmax, so

    dequant(code) = grid[code] * absmax

is bit-exact for the group max itself and identical in calibration, in ``QuantLinear``
and after a save/load round trip. Codes never encode inf/nan: every bit pattern is a
finite value (so our E4M3 reaches 480, not the 448 of hardware e4m3fn).
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass
from functools import cache

import torch

import ditaccel.quant.native as native
from ditaccel.errors import DitaccelError

__all__ = [
    "FPFormat",
    "IntFormat",
    "Format",
    "parse_format",
    "fp_bias",
    "group_absmax",
    "group_minmax",
    "encode",
    "decode",
    "quantize_groups",
    "quantize_per_token",
    "per_token_levels",
    "int8_multiplier",
    "int8_digits",
    "int_multiplier",
    "WEIGHT_FORMATS",
    "ACT_FORMATS",
    "FORMAT_ALIASES",
    "formats_help",
]


@dataclass(frozen=True)
class FPFormat:
    """Sign + ``exp_bits`` exponent + ``man_bits`` mantissa, subnormals, no inf/nan."""

    exp_bits: int
    man_bits: int

    @property
    def name(self) -> str:
        return f"e{self.exp_bits}m{self.man_bits}"

    @property
    def bits(self) -> int:
        return 1 + self.exp_bits + self.man_bits

    @property
    def kind(self) -> str:
        return "fp"

    @property
    def int_max(self) -> float:
        """Largest magnitude of the bias-0 grid: ``2^(2^E - 1) * (2 - 2^-M)``."""
        return float(2 ** (2**self.exp_bits - 1) * (2 - 2.0**-self.man_bits))

    def magnitudes(self) -> torch.Tensor:
        """Bias-0 magnitudes in code order (monotone increasing), float64, exact."""
        return _fp_magnitudes(self.exp_bits, self.man_bits)

    def grid(self) -> torch.Tensor:
        """Decode table indexed by code, normalised so the largest value is exactly 1.0."""
        return _fp_grid(self.exp_bits, self.man_bits)


@dataclass(frozen=True)
class IntFormat:
    """INTn baseline: symmetric absmax (``q in [-(2^(n-1)-1), 2^(n-1)-1]``) or min-max with zero point."""

    int_bits: int
    symmetric: bool = False

    @property
    def name(self) -> str:
        return f"int{self.int_bits}" + ("sym" if self.symmetric else "")

    @property
    def bits(self) -> int:
        return self.int_bits

    @property
    def kind(self) -> str:
        return "int"

    @property
    def qmax(self) -> int:
        return 2 ** (self.int_bits - 1) - 1 if self.symmetric else 2**self.int_bits - 1


Format = FPFormat | IntFormat


@cache
def _fp_magnitudes(e: int, m: int) -> torch.Tensor:
    vals = []
    for ex in range(2**e):
        for mn in range(2**m):
            if ex == 0:  # subnormal: 2^(1-bias) * m/2^M with bias 0
                vals.append(2.0 * mn / 2**m)
            else:
                vals.append(2.0**ex * (1.0 + mn / 2**m))
    return torch.tensor(vals, dtype=torch.float64)


@cache
def _fp_grid(e: int, m: int) -> torch.Tensor:
    mags = _fp_magnitudes(e, m)
    norm = (mags / mags[-1]).to(torch.float32)
    return torch.cat([norm, -norm])  # code = sign << (E+M) | magnitude index


#: Names parsed before (valid ones only), so per-call parsing is one dict lookup.
_PARSED: dict[str, FPFormat | IntFormat] = {}
_FP_RE = re.compile(r"^e(\d)m(\d)$")
_INT_RE = re.compile(r"^int(\d{1,2})(sym)?$")


def parse_format(name: str | FPFormat | IntFormat) -> FPFormat | IntFormat:
    """Parse ``"e2m1"``, ``"e3m4"``, ``"int4"``, ``"int8sym"`` ... into a format object."""
    if isinstance(name, FPFormat | IntFormat):
        return name
    if isinstance(name, str) and name in _PARSED:  # the activation path parses per call: skip the regex
        return _PARSED[name]
    key = str(name).strip().lower()
    if (m := _FP_RE.match(key)) is not None:
        e, mm = int(m.group(1)), int(m.group(2))
        if e < 1 or 1 + e + mm > 8:
            raise DitaccelError(f"format {name!r} is not supported: use ExMy with E >= 1 and 1+E+M <= 8 bits")
        return _PARSED.setdefault(str(name), FPFormat(e, mm))
    if (m := _INT_RE.match(key)) is not None:
        bits = int(m.group(1))
        if not 2 <= bits <= 8:
            raise DitaccelError(f"format {name!r} is not supported: use int2 .. int8")
        return _PARSED.setdefault(str(name), IntFormat(bits, symmetric=m.group(2) is not None))
    raise DitaccelError(f"unknown number format {name!r}: use e.g. e2m1, e1m2, e3m0, e2m3, e3m4, e4m3, int4, int8")


def fp_bias(absmax: torch.Tensor, fmt: FPFormat) -> torch.Tensor:
    """The paper's real-valued exponent bias ``2^E - log2(max) + log2(2 - 2^-M) - 1``.

    Kept for reporting and tests; quantization uses the equivalent normalised grid.
    """
    e, m = fmt.exp_bits, fmt.man_bits
    return 2**e - torch.log2(absmax.double()) + math.log2(2 - 2.0**-m) - 1


def _grouped(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, int]:
    """View ``[rows, cols]`` as ``[rows, n_groups, group_size]``, padding the last group with zeros."""
    rows, cols = w.shape
    n_groups = -(-cols // group_size)
    pad = n_groups * group_size - cols
    if pad:
        w = torch.nn.functional.pad(w, (0, pad))
    return w.reshape(rows, n_groups, group_size), cols


def group_absmax(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """Per-group absolute max, ``[rows, n_groups]`` (min-max scaling, no clipping search)."""
    g, _ = _grouped(w.float(), group_size)
    return g.abs().amax(dim=-1)


def group_minmax(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group (min, max) over the *real* values (padding excluded), ``[rows, n_groups]`` each."""
    rows, cols = w.shape
    n_groups = -(-cols // group_size)
    pad = n_groups * group_size - cols
    wf = w.float()
    lo_src = torch.nn.functional.pad(wf, (0, pad), value=float("inf")) if pad else wf
    hi_src = torch.nn.functional.pad(wf, (0, pad), value=float("-inf")) if pad else wf
    lo = lo_src.reshape(rows, n_groups, group_size).amin(-1).clamp(max=0.0)
    hi = hi_src.reshape(rows, n_groups, group_size).amax(-1).clamp(min=0.0)
    return lo, hi


def int_params(w: torch.Tensor, fmt: IntFormat, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale float32, zero point uint8) per group. Zero is exactly representable."""
    if fmt.symmetric:
        scale = group_absmax(w, group_size) / fmt.qmax
        zero = torch.zeros_like(scale, dtype=torch.uint8)
    else:
        lo, hi = group_minmax(w, group_size)
        scale = (hi - lo) / fmt.qmax
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.round(-lo / safe).clamp(0, fmt.qmax).to(torch.uint8)
    return scale.float(), zero


def _expand(per_group: torch.Tensor, group_size: int, cols: int) -> torch.Tensor:
    return per_group.repeat_interleave(group_size, dim=-1)[..., :cols]


#: Per float dtype: (integer view dtype, exponent-field mask, mantissa bits, exponent bias).
_FLOAT_BITS: dict[torch.dtype, tuple[torch.dtype, int, int, int]] = {
    torch.float32: (torch.int32, 0x7F800000, 23, 127),
    torch.float64: (torch.int64, 0x7FF0000000000000, 52, 1023),
}


def _float_bits(dtype: torch.dtype) -> tuple[torch.dtype, int, int, int]:
    if dtype not in _FLOAT_BITS:
        raise DitaccelError(f"FP grid rounding works on float32 or float64, got {dtype}: convert with .float()")
    return _FLOAT_BITS[dtype]


def _exponent_field(y: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The biased exponent bits of ``y`` (a new tensor, or ``out``), clamped to the grid's lowest normal binade (2^1).

    Reading the exponent from the bits is exact, where ``floor(log2|y|)`` costs three
    transcendental passes and can round up one ulp below a power of two (then its step is twice
    too large; the rounded values agree, as the tests check).
    """
    idt, mask, mbits, bias = _float_bits(y.dtype)
    bits = y.view(idt) & mask if out is None else torch.bitwise_and(y.view(idt), mask, out=out.view(idt))
    return bits.clamp_(min=(bias + 1) << mbits)


def fp_step(y: torch.Tensor, fmt: FPFormat) -> torch.Tensor:
    """Grid step at ``y`` on the bias-0 grid: ``2^(max(floor(log2|y|), 1) - M)``."""
    idt, _, mbits, _ = _float_bits(y.dtype)
    return (_exponent_field(y) - (fmt.man_bits << mbits)).view(y.dtype)


def _fp_round_normalised(y: torch.Tensor, fmt: FPFormat) -> torch.Tensor:
    """Round-to-nearest (ties to even mantissa) on the bias-0 grid, clamped to +-int_max.

    ``(y + C) - C`` with ``C = 1.5 * 2^P * step`` (P the dtype's mantissa bits) rounds ``y``
    to a multiple of its step, ties to even, in the FPU's own rounding: six cheap passes
    instead of log2/floor/exp2/div/round/mul, and bit-identical to ``round(y / s) * s``
    because ``step`` is a power of two and ``|y| < 2^P * step / 2``.
    """
    return _fp_round_normalised_(y.clone(), fmt)


def _fp_round_normalised_(y: torch.Tensor, fmt: FPFormat, clamp: bool = True,
                           scratch: torch.Tensor | None = None) -> torch.Tensor:
    """In-place :func:`_fp_round_normalised` (the activation path owns its buffer).

    ``clamp=False`` when ``|y| <= int_max`` already holds (values scaled by their own absmax):
    rounding is monotone and ``int_max`` is on the grid, so the clamp would change nothing.
    ``scratch``: a buffer of ``y``'s size and element width for the rounding constants.
    """
    _, _, mbits, _ = _float_bits(y.dtype)
    # c = 2^e (the binade, as a float); the constant 1.5 * 2^(P - M) enters through ``alpha``: one pass
    # fewer than adding it to the exponent bits, and the same sums, as alpha * c is exact (a power of two
    # times 1.5) and add/sub round once, fused multiply-add or not
    c = _exponent_field(y, scratch).view(y.dtype)
    k = 1.5 * 2.0 ** (mbits - fmt.man_bits)
    y.add_(c, alpha=k).sub_(c, alpha=k)
    return y.clamp_(-fmt.int_max, fmt.int_max) if clamp else y


def encode(
    w: torch.Tensor,
    fmt: FPFormat | IntFormat,
    group_size: int,
    scale: torch.Tensor | None = None,
    zero: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Quantize a 2-D weight to codes (uint8, one per value) by round-to-nearest.

    Returns ``(codes [rows, cols], scale [rows, n_groups], zero or None)``. ``scale`` is the
    group absmax for FP and the step for INT; pass it (and ``zero``) to re-encode values
    that were already put on a grid (AdaRound's hard rounding) without changing the grid.
    """
    if w.dim() != 2:
        raise DitaccelError(f"encode expects a 2-D weight, got shape {tuple(w.shape)}: reshape to [out, in]")
    rows, cols = w.shape
    wf = w.double()
    if isinstance(fmt, FPFormat):
        if scale is None:
            scale = group_absmax(w, group_size)
        a = _expand(scale.double(), group_size, cols)
        y = torch.where(a > 0, wf / torch.where(a > 0, a, 1.0) * fmt.int_max, torch.zeros_like(wf))
        yq = _fp_round_normalised(y, fmt)
        mags = fmt.magnitudes().to(yq.device)
        idx = torch.searchsorted(mags, yq.abs().contiguous())
        idx = idx.clamp(max=len(mags) - 1)
        sign = (yq < 0).to(torch.int64) << (fmt.exp_bits + fmt.man_bits)
        codes = (idx | sign).to(torch.uint8)
        return codes, scale.float(), None
    if scale is None or (zero is None and not fmt.symmetric):
        scale, zero = int_params(w, fmt, group_size)
    s = _expand(scale.double(), group_size, cols)
    safe = torch.where(s > 0, s, torch.ones_like(s))
    if fmt.symmetric:
        q = torch.round(wf / safe).clamp(-fmt.qmax, fmt.qmax)
        codes = (q.to(torch.int64) & (2**fmt.int_bits - 1)).to(torch.uint8)  # two's complement
        return codes, scale.float(), None
    z = _expand(zero.double(), group_size, cols)
    q = (torch.round(wf / safe) + z).clamp(0, fmt.qmax)
    return q.to(torch.uint8), scale.float(), zero.to(torch.uint8)


def decode(
    codes: torch.Tensor,
    fmt: FPFormat | IntFormat,
    scale: torch.Tensor,
    group_size: int,
    zero: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Codes + group scales back to values: ``grid[code] * absmax`` (FP) or ``(q - z) * step`` (INT)."""
    rows, cols = codes.shape
    sc = _expand(scale.float(), group_size, cols)
    if isinstance(fmt, FPFormat):
        grid = fmt.grid().to(codes.device)
        return (grid[codes.long()] * sc).to(dtype)
    c = codes.to(torch.int32)
    if fmt.symmetric:
        half = 2 ** (fmt.int_bits - 1)
        q = torch.where(c >= half, c - 2**fmt.int_bits, c)
    else:
        q = c - _expand(zero.to(torch.int32), group_size, cols)
    return (q.float() * sc).to(dtype)


def quantize_groups(w: torch.Tensor, fmt: FPFormat | IntFormat | str, group_size: int = 128) -> torch.Tensor:
    """Round-to-nearest fake quantization of a 2-D weight: ``decode(encode(w))`` in ``w``'s dtype."""
    fmt = parse_format(fmt)
    codes, scale, zero = encode(w, fmt, group_size)
    return decode(codes, fmt, scale, group_size, zero, dtype=w.dtype)


def per_token_levels(x: torch.Tensor, fmt: FPFormat | IntFormat, inplace: bool = False,
                     out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rounding as ``(levels, scale)``: the fake-quantized tensor is ``levels * scale``.

    Levels are grid values of the bias-0 FP grid (``|levels| <= int_max``) or the signed
    INT levels, float32 of ``x``'s shape; ``scale`` is float32 ``[..., 1]``, one per token.
    ``inplace=True``: ``x`` (float32, owned by the caller, e.g. a fresh layer output) becomes
    the levels. ``out``: a float32 buffer of ``x``'s shape to receive the levels otherwise.
    Temporaries go to a per-thread scratch buffer (:func:`_scratch`); the values are those of
    plain out-of-place ops. On the CPU the native kernel (:mod:`ditaccel.quant.native`) computes
    the same values in one pass when it is available.
    """
    res = _native_per_token(x, fmt, inplace, out, levels=True)
    if res is not None:
        return res  # type: ignore[return-value]
    xf = x.float()
    own = (inplace or xf is not x) and not xf.requires_grad  # xf is a fresh copy unless x was float32
    dest = xf if own else out if out is not None and not xf.requires_grad else None
    scratch = _scratch(xf)
    amax = (xf.abs() if scratch is None else torch.abs(xf, out=scratch)).amax(dim=-1, keepdim=True)
    safe = amax.masked_fill_(amax == 0, 1.0)
    if isinstance(fmt, FPFormat):
        # |y| <= int_max: x / absmax <= 1 in correctly rounded division
        y = (xf / safe if dest is None else torch.div(xf, safe, out=dest)).mul_(fmt.int_max)
        return _fp_round_normalised_(y, fmt, clamp=False, scratch=scratch), safe / fmt.int_max
    qmax = 2 ** (fmt.int_bits - 1) - 1  # activations: symmetric per token
    step = safe / qmax
    return (xf / step if dest is None else torch.div(xf, step, out=dest)).round_().clamp_(-qmax, qmax), step


class _Scratch(threading.local):
    """Float32 buffers per thread, device and slot, grown to the largest activation seen."""

    bufs: dict[tuple[torch.device, int], torch.Tensor]

    def __init__(self) -> None:
        self.bufs = {}


_SCRATCH = _Scratch()


def _scratch(like: torch.Tensor, slot: int = 0) -> torch.Tensor | None:
    """A float32 CPU tensor shaped like ``like`` whose memory is reused across calls, or ``None``
    (GPU, gradients, tracing, non-contiguous input: plain allocation).

    Why: per-token rounding of a large activation writes two full-size temporaries; fresh
    multi-MiB allocations cost page faults on every call (CPU, one thread: 1024x512 float32
    rounding 1.06-1.33 ms with fresh temporaries, 0.44-0.50 ms with a reused buffer). The
    buffer is activation-sized, never weight-sized. Slot 0 holds temporaries only; slot 1
    holds a result its one reader consumes at once (see ``ditaccel.quant.linear``).
    """
    if not like.is_cpu or like.requires_grad or not like.is_contiguous() or torch.compiler.is_compiling():
        return None  # GPU allocators cache freed blocks: no page faults to avoid there
    n = like.numel()
    buf = _SCRATCH.bufs.get((like.device, slot))
    if buf is None or buf.numel() < n:
        with torch.inference_mode(False):  # a normal tensor: writable inside and outside inference mode
            buf = torch.empty(n, dtype=torch.float32, device=like.device)
        _SCRATCH.bufs[(like.device, slot)] = buf
    return buf.as_strided(like.shape, like.stride())  # one op: slice + view cost four times as much


def int_multiplier(fmt: FPFormat | IntFormat) -> float:
    """The power of two that turns every level of ``fmt`` into an integer.

    FP levels are multiples of the subnormal step ``2^(1-M)``, so ``2^(M-1)`` makes them
    integers (E2M1 weights: [-12, 12], E2M3: [-60, 60], E3M4: [-1984, 1984]); INT levels
    are integers already.
    """
    return 1.0 if isinstance(fmt, IntFormat) else 2.0 ** (fmt.man_bits - 1)


def int8_multiplier(fmt: FPFormat | IntFormat) -> float | None:
    """For a *weight* format: :func:`int_multiplier` when its integer levels fit int8, else ``None``.

    INT levels minus the zero point span ``[-(2^n - 1), 2^n - 1]``.
    """
    top = fmt.int_max * int_multiplier(fmt) if isinstance(fmt, FPFormat) else 2**fmt.int_bits - 1
    return int_multiplier(fmt) if top <= 127 else None


def int8_digits(fmt: FPFormat | IntFormat) -> int | None:
    """For a *per-token activation* format: int8 digits (base 128, low digit in [-64, 64]) its levels take.

    INT activations are symmetric (at most 127). E3M4 (up to 1984) takes two digits, so an
    int8 GEMM still serves it as two GEMMs summed exactly in int32; E4M3 (bias-0 levels up
    to 245760) does not fit.
    """
    if isinstance(fmt, IntFormat):
        return 1 if fmt.int_bits <= 8 else None
    top = fmt.int_max * int_multiplier(fmt)
    return 1 if top <= 127 else 2 if top <= 127 * 128 else None


def quantize_per_token(x: torch.Tensor, fmt: FPFormat | IntFormat | str, inplace: bool = False,
                       out: torch.Tensor | None = None) -> torch.Tensor:
    """Online activation fake-quant: each token (last-dim vector) is scaled by its own absmax.

    Needs no calibration; DiT activation ranges differ strongly between tokens and steps.
    Computes in float32 and returns ``x``'s dtype. ``inplace=True`` may overwrite ``x`` (a
    float32 tensor the caller owns and no longer needs): one full-size allocation fewer;
    ``out`` (float32, ``x``'s shape) receives the result of a float32 ``x`` instead.
    """
    f = parse_format(fmt)
    res = _native_per_token(x, f, inplace, out, levels=False)
    if res is not None:
        return res if x.dtype is torch.float32 else res.to(x.dtype)  # type: ignore[union-attr]
    levels, scale = per_token_levels(x, f, inplace, out)
    return levels.mul_(scale).to(x.dtype)


def _native_per_token(x: torch.Tensor, fmt: FPFormat | IntFormat, inplace: bool, out: torch.Tensor | None,
                      levels: bool) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None:
    """:func:`per_token_levels` (``levels=True``) or the rounded float32 values through the native kernel,
    or ``None``: not applicable (GPU, gradients, tracing, empty) or no kernel here, so run the eager ops.

    Bit-identical to the eager path: the kernel does the same float32 operations in the same order.
    The destination follows the eager rules: ``x`` itself when it is owned, else ``out``, else new.
    """
    if (not x.is_cpu or x.requires_grad or x.dim() == 0 or x.numel() == 0 or torch.compiler.is_compiling()
            or x.dtype not in _NATIVE_DTYPES):
        return None
    if native.library() is None:
        return None
    xf = x if x.dtype is torch.float32 else x.float()
    own = inplace or xf is not x
    if not xf.is_contiguous():
        xf, own = xf.contiguous(), True
    if own:
        dest = xf
    elif out is not None and out.dtype is torch.float32 and out.is_contiguous() and out.shape == xf.shape:
        dest = out
    else:
        dest = torch.empty_like(xf)
    scale = torch.empty(*xf.shape[:-1], 1, dtype=torch.float32) if levels else None
    native.round_rows(xf, dest, _native_params(fmt), scale)
    if dest is x and not x.is_inference():
        torch.autograd.graph.increment_version(x)  # written in place behind autograd's back: say so
    return (dest, scale) if levels else dest  # type: ignore[return-value]


_NATIVE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@cache
def _native_params(fmt: FPFormat | IntFormat) -> tuple[bool, float, float]:
    """The native kernel's arguments for a per-token format (see ``native.round_params``)."""
    if isinstance(fmt, FPFormat):
        return native.round_params(True, fmt.int_max, fmt.man_bits)
    return native.round_params(False, 2 ** (fmt.int_bits - 1) - 1)


# -- the named formats ditaccel offers ---------------------------------------------------------
# One registry: FP4DiTConfig's accepted values, ``weights="auto"``'s candidates and the CLI's
# choices and help all read these. Any ExMy float or INTn integer already rounds through the code
# above, so a new format of those kinds is one name here; another kind also needs its rounding.

#: 4-bit weight formats, in the order ``weights="auto"`` tries them (FP and INT compete per layer).
WEIGHT_FORMATS: tuple[str, ...] = ("e2m1", "e1m2", "e3m0", "int4")
#: Activation formats (quantized online, per token). Any other <= 8-bit ExMy or INTn parses too;
#: these are the ones offered and documented.
ACT_FORMATS: tuple[str, ...] = ("e2m3", "e3m4", "e4m3", "int8", "int6")
#: Shorthands (design.md): fp4 = E2M1 weights, fp8 = E3M4 (the paper's A8), fp6 = E2M3 (A6).
FORMAT_ALIASES: dict[str, str] = {"fp4": "e2m1", "fp8": "e3m4", "fp6": "e2m3"}


def formats_help(names: tuple[str, ...]) -> str:
    """``"e2m1 (= fp4) | e1m2 | ..."``: choices for a help text, with their shorthands."""
    alias = {v: k for k, v in FORMAT_ALIASES.items()}
    return " | ".join(f"{n} (= {alias[n]})" if n in alias else n for n in names)
