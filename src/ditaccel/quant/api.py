"""``FP4DiTConfig`` + ``quantize_``: FP4DiT post-training quantization in torchao style."""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ditaccel.errors import DitaccelError
from ditaccel.models import first_ffn_pattern as _family_ffn_pattern
from ditaccel.models import qkv_pattern as _family_qkv_pattern
from ditaccel.models import quant_keep_patterns
from ditaccel.quant.adaround import AdaRoundLinear, optimize_rounding
from ditaccel.quant.formats import ACT_FORMATS, WEIGHT_FORMATS, FPFormat, decode, encode, parse_format
from ditaccel.quant.io import round_kept_
from ditaccel.quant.linear import (
    QuantLinear,
    check_act_format,
    group_projections,
    quantized_layers,
    weight_bytes,
)
from ditaccel.quant.reconstruct import (
    BatchedData,
    block_loss,
    block_mse,
    capture,
    chain_links,
    find_blocks,
    run_batched,
    with_leaf,
)

__all__ = [
    "FP4DiTConfig",
    "KEPT_STORAGE_CHOICES",
    "QuantReport",
    "quantize_",
    "DEFAULT_KEEP",
    "quantized_layers",
    "set_activation_quant",
    "target_linears",
]

#: Top-level modules kept in high precision: each model family's patch/pos embeddings, timestep
#: and caption embeddings and final layer, as its adapter lists them (``Adapter.quant_keep``).
#: Anchored at the top level so FLUX's per-block ``proj_out`` is still quantized.
DEFAULT_KEEP: tuple[str, ...] = quant_keep_patterns()

#: ``weights``: a registered 4-bit format (``ditaccel.quant.formats.WEIGHT_FORMATS``) or "auto".
WEIGHT_CHOICES = (*WEIGHT_FORMATS, "auto")
#: How the kept (not 4-bit) tensors are stored: the model's own dtype, 16-bit floats, or
#: 8-bit codes for kept Linear weights (power-of-two scale per output row) + 16-bit for the rest.
KEPT_STORAGE_CHOICES = ("model", "float16", "bfloat16", "int8")
ACT_CHOICES = (*ACT_FORMATS, "none")


@dataclass
class FP4DiTConfig:
    """What to quantize and how. Defaults follow the FP4DiT paper (W4A8, E2M1/E3M0 + E3M4)."""

    weights: str = "e2m1"
    acts: str = "e3m4"
    #: Format of the first FFN linear (before GELU): E3M0 in the paper. ``None`` = ``weights``.
    first_ffn_weights: str | None = "e3m0"
    #: Names of first FFN linears; default: every family's (``Adapter.first_ffn_linears``).
    first_ffn_pattern: str = field(default_factory=_family_ffn_pattern)
    adaround: bool = True
    iters: int = 2500
    lr: float = 1e-4
    batch_size: int = 16
    reg_weight: float = 0.01
    warmup: float = 0.2
    beta_start: float = 20.0
    beta_end: float = 2.0
    group_size: int = 128
    #: Name patterns of modules kept in high precision; default: every family's (``DEFAULT_KEEP``).
    keep: tuple[str, ...] = field(default_factory=quant_keep_patterns)
    #: Linears whose *outputs* are Q, K and V: quantized per token when ``acts`` is set.
    #: Default: every family's (``Adapter.qkv_linears``).
    qkv_pattern: str = field(default_factory=_family_qkv_pattern)
    quantize_qkv: bool = True
    #: ``weights="auto"``: per layer, the candidate with the lowest output error on the calibration
    #: inputs; FP and INT compete, so heavy-tailed layers get FP and light-tailed ones INT.
    auto_candidates: tuple[str, ...] = WEIGHT_FORMATS
    #: Storage of the layers kept out of 4-bit (see ``KEPT_STORAGE_CHOICES``). ``quantize_`` rounds
    #: them in memory to exactly what the file holds, so a reload reproduces outputs bitwise.
    kept_storage: str = "float16"
    #: "portable" (pure PyTorch, any device), "compiled" (torch.compile dequant-matmul, packed 4-bit weights
    #: kept; on an H100 slower than portable, 0.35x against 0.50x of fp16: bench/results/quant_gpu.md) or a
    #: torchao kernel: "torchao-fp8", "torchao-mxfp4", "torchao-nvfp4".
    #: A torchao kernel replaces the packed layers, so save before, or pass ``kernel=`` to ``load_quantized``.
    kernel: str = "portable"
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        self.weights = str(self.weights).lower()
        if self.weights not in WEIGHT_CHOICES:
            raise DitaccelError(f"weights={self.weights!r} is not supported: use one of {', '.join(WEIGHT_CHOICES)}")
        acts = str(self.acts).lower()
        if acts not in ACT_CHOICES:
            check_act_format(acts)  # raises with the reason if not a valid <= 8-bit format
        self.acts = acts
        if self.first_ffn_weights is not None:
            parse_format(self.first_ffn_weights)
        for c in self.auto_candidates:
            f = parse_format(c)
            if f.bits > 4:
                raise DitaccelError(f"auto candidate {c!r} is wider than 4 bits: use 4-bit formats")
        if self.group_size < 1 or self.iters < 0 or self.batch_size < 1:
            raise DitaccelError("group_size and batch_size must be >= 1 and iters >= 0")
        self.kept_storage = str(self.kept_storage).lower()
        if self.kept_storage not in KEPT_STORAGE_CHOICES:
            raise DitaccelError(f"kept_storage={self.kept_storage!r} is not supported: use one of "
                                f"{', '.join(KEPT_STORAGE_CHOICES)}")
        self.keep = tuple(self.keep)
        self.auto_candidates = tuple(self.auto_candidates)
        for p in (*self.keep, self.first_ffn_pattern, self.qkv_pattern):
            try:
                re.compile(p)
            except re.error as e:
                raise DitaccelError(f"bad name pattern {p!r} ({e}): give a Python regular expression") from None

    @property
    def act_format(self) -> str | None:
        return check_act_format(self.acts)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["keep"] = list(self.keep)
        d["auto_candidates"] = list(self.auto_candidates)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FP4DiTConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for k in ("keep", "auto_candidates"):
            if k in known:
                known[k] = tuple(known[k])
        return cls(**known)


@dataclass
class QuantReport:
    """What ``quantize_`` did: formats per layer, block MSEs, timing and sizes."""

    layer_formats: dict[str, str] = field(default_factory=dict)
    block_mse_rtn: dict[str, float] = field(default_factory=dict)
    block_mse: dict[str, float] = field(default_factory=dict)
    calib_seconds: float = 0.0
    bits_per_weight: float = 0.0
    fp16_bytes: int = 0
    weight_bytes: int = 0

    @property
    def weight_memory_ratio(self) -> float:
        """Weight memory of the quantized transformer over its fp16 weight memory."""
        return self.weight_bytes / self.fp16_bytes if self.fp16_bytes else float("nan")

    @property
    def mean_block_mse(self) -> float:
        return sum(self.block_mse.values()) / len(self.block_mse) if self.block_mse else float("nan")

    @property
    def mean_block_mse_rtn(self) -> float:
        return sum(self.block_mse_rtn.values()) / len(self.block_mse_rtn) if self.block_mse_rtn else float("nan")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["weight_memory_ratio"] = self.weight_memory_ratio
        return d


def _get(root: nn.Module, name: str) -> nn.Module:
    return root.get_submodule(name)


def _set(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def target_linears(transformer: nn.Module, config: FP4DiTConfig) -> list[str]:
    """Names of the ``nn.Linear`` layers that will be quantized (everything not kept)."""
    keep = [re.compile(p) for p in config.keep]
    return [
        n for n, m in transformer.named_modules()
        if isinstance(m, nn.Linear) and not any(k.search(n) for k in keep)
    ]


def set_activation_quant(transformer: nn.Module, acts: str | None, config: FP4DiTConfig | None = None) -> None:
    """Switch online activation quantization of a quantized transformer (weights untouched).

    Every ``QuantLinear`` input is quantized per token; Q/K/V projection outputs too when
    ``config.quantize_qkv``. ``acts=None``/``"none"`` turns it off. Weights are calibrated
    with activation quantization off, so one calibration serves every activation format.
    """
    config = config or FP4DiTConfig(adaround=False)
    act = check_act_format(acts)
    qkv = re.compile(config.qkv_pattern)
    for n, m in quantized_layers(transformer).items():
        m.act_format = act
        m.out_act_format = act if (config.quantize_qkv and qkv.search(n)) else None
    group_projections(transformer)  # Q/K/V reading one input: one GEMM and one rounding (same formats only)


def _fixed_format(name: str, config: FP4DiTConfig) -> str | None:
    if config.weights == "auto":
        return None
    if config.weights == "int4":
        return "int4"
    if config.first_ffn_weights and re.search(config.first_ffn_pattern, name):
        return config.first_ffn_weights
    return config.weights


def _records(calib: Any) -> list[tuple[tuple, dict]]:
    """Accept a ``CalibrationSet``, a list of ``(args, kwargs)`` or a list of kwargs dicts."""
    recs = getattr(calib, "records", calib)
    out: list[tuple[tuple, dict]] = []
    for r in recs:
        if isinstance(r, dict):
            out.append(((), r))
        elif isinstance(r, tuple | list) and len(r) == 2 and isinstance(r[1], dict):
            out.append((tuple(r[0]), dict(r[1])))
        else:
            raise DitaccelError("calibration records must be (args, kwargs) pairs or kwargs dicts: use collect_calibration()")
    if not out:
        raise DitaccelError("calibration data is empty: pass prompts/seeds/steps to collect_calibration()")
    return out


@torch.no_grad()
def _auto_errors(lin: nn.Linear, x: torch.Tensor, config: FP4DiTConfig) -> dict[str, float]:
    """Output error ``||x (W - Q(W))^T||^2`` of every ``auto`` candidate format, by format name."""
    w = lin.weight.detach().float()
    errs = {}
    for c in config.auto_candidates:
        fmt = parse_format(c)
        codes, sc, z = encode(w, fmt, config.group_size)
        errs[fmt.name] = float((x.float() @ (w - decode(codes, fmt, sc, config.group_size, z)).T).pow(2).sum())
    return errs


def _auto_assignments(errors: dict[str, dict[str, float]]) -> list[dict[str, str]]:
    """Format assignments ``auto`` weighs for one block, best per layer first.

    Per layer over all candidates, per layer within FP and within INT, and each single
    format everywhere: the block keeps whichever gives the lowest block MSE, so ``auto`` is
    never worse on the calibration data than all-FP or all-INT (round-to-nearest, given
    the block's inputs).
    """
    fmts = list(next(iter(errors.values())))
    families = [fmts, [f for f in fmts if is_fp(f)], [f for f in fmts if not is_fp(f)]]
    out = [{n: min(fam, key=e.__getitem__) for n, e in errors.items()} for fam in families if fam]
    out += [dict.fromkeys(errors, f) for f in fmts]
    unique: list[dict[str, str]] = []
    for a in out:
        if a not in unique:
            unique.append(a)
    return unique


@torch.no_grad()
def _linear_inputs(module: nn.Module, names: list[str], inputs: Any, n_batches: int, batch: int,
                   max_rows: int = 4096) -> dict[str, torch.Tensor]:
    """Token rows that reach each named linear when ``module`` runs on captured inputs."""
    rows: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    hooks = []
    for n in names:
        def hook(_m: nn.Module, args: tuple, _n: str = n) -> None:
            rows[_n].append(args[0].detach().reshape(-1, args[0].shape[-1]))
        hooks.append(_get(module, n).register_forward_pre_hook(hook))
    try:
        for sl in inputs.batches(batch)[:n_batches]:
            a, k = inputs.select(sl)
            module(*a, **k)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for n, r in rows.items():
        x = torch.cat(r, 0)
        if x.shape[0] > max_rows:
            x = x[torch.linspace(0, x.shape[0] - 1, max_rows).long()]
        out[n] = x
    return out


def _rtn(lin: nn.Linear, fmt: str, config: FP4DiTConfig) -> QuantLinear:
    return QuantLinear.from_linear(lin, fmt, config.group_size)


@torch.no_grad()
def _rtn_block_mse(unit: nn.Module, formats: dict[str, str], inputs: Any, targets: Any,
                   config: FP4DiTConfig) -> float:
    """Block MSE with the named linears rounded to ``formats`` (RTN); the unit is left as it was."""
    originals = {n: _get(unit, n) for n in formats}
    try:
        for n, f in formats.items():
            _set(unit, n, _rtn(originals[n], f, config))
        return block_mse(unit, inputs, targets)
    finally:
        for n, m in originals.items():
            _set(unit, n, m)


def _reconstruct(
    unit: nn.Module,
    unit_name: str,
    names: list[str],
    formats: dict[str, str],
    inputs: Any,
    targets: Any,
    config: FP4DiTConfig,
    report: QuantReport,
    gen: torch.Generator,
) -> None:
    """Quantize the linears ``names`` (relative to ``unit``) by RTN, then AdaRound if asked."""
    originals = {n: _get(unit, n) for n in names}
    rtn = {n: _rtn(originals[n], formats[n], config) for n in names}
    for n, m in rtn.items():
        _set(unit, n, m)
    report.block_mse_rtn[unit_name] = block_mse(unit, inputs, targets)
    if not config.adaround or config.iters == 0:
        report.block_mse[unit_name] = report.block_mse_rtn[unit_name]
        return
    ada = {n: AdaRoundLinear(originals[n], formats[n], config.group_size) for n in names}
    for n, m in ada.items():
        _set(unit, n, m)

    def loss_fn() -> torch.Tensor:
        idx = torch.randint(0, inputs.n, (min(config.batch_size, inputs.n),), generator=gen)
        a, k = inputs.select(idx)
        with torch.enable_grad():
            return block_loss(unit(*a, **k), targets.select(idx))

    bar = tqdm(range(config.iters), desc=f"AdaRound {unit_name}", leave=False, disable=not config.progress,
               mininterval=1.0)
    with torch.enable_grad():
        optimize_rounding(list(ada.values()), loss_fn, config.iters, lr=config.lr, reg_weight=config.reg_weight,
                          warmup=config.warmup, beta_start=config.beta_start, beta_end=config.beta_end,
                          progress=bar)
    bar.close()
    final = {n: m.to_quant_linear() for n, m in ada.items()}
    for n, m in final.items():
        _set(unit, n, m)
    report.block_mse[unit_name] = block_mse(unit, inputs, targets)


def quantize_(transformer: nn.Module, config: FP4DiTConfig | None = None, calib: Any = None) -> QuantReport:
    """Quantize ``transformer`` in place: its linears become packed ``QuantLinear`` s.

    ``calib`` (from :func:`collect_calibration`) is needed for AdaRound and ``weights="auto"``;
    with ``adaround=False`` and fixed formats, plain round-to-nearest needs no data (but
    block MSEs are only reported when ``calib`` is given).
    """
    config = config or FP4DiTConfig()
    if config.kernel != "portable":
        from ditaccel.quant.kernels import check_kernel

        check_kernel(config.kernel)
    needs_data = config.adaround or config.weights == "auto"
    if needs_data and calib is None:
        raise DitaccelError(
            "AdaRound and weights='auto' need calibration data: pass calib=collect_calibration(pipe, ...) "
            "or use adaround=False with a fixed weight format"
        )
    if quantized_layers(transformer):
        raise DitaccelError("this transformer is already quantized: load the full-precision model again first")
    t0 = time.perf_counter()
    report = QuantReport()
    report.fp16_bytes = sum(p.numel() * 2 for p in transformer.parameters()) + sum(
        b.numel() * 2 for b in transformer.buffers() if b.is_floating_point())
    names = target_linears(transformer, config)
    if not names:
        raise DitaccelError("no nn.Linear left to quantize after the keep patterns: loosen FP4DiTConfig.keep")
    flags = {n: p.requires_grad for n, p in transformer.named_parameters()}
    was_training = transformer.training
    transformer.eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(config.seed)
    try:
        if calib is None:
            for n in names:
                fmt = _fixed_format(n, config)
                report.layer_formats[n] = parse_format(fmt).name
                _set(transformer, n, _rtn(_get(transformer, n), fmt, config))
        else:
            _calibrated(transformer, names, _records(calib), config, report, gen)
    finally:
        for n, p in transformer.named_parameters():
            if n in flags:
                p.requires_grad_(flags[n])
        transformer.train(was_training)
    round_kept_(transformer, config.kept_storage)
    set_activation_quant(transformer, config.acts, config)
    if config.kernel != "portable":
        from ditaccel.quant.kernels import apply_kernel

        apply_kernel(transformer, config.kernel)
    report.calib_seconds = time.perf_counter() - t0
    q = quantized_layers(transformer)
    bits = sum(m.bits_per_weight() * m.in_features * m.out_features for m in q.values())
    report.bits_per_weight = bits / max(1, sum(m.in_features * m.out_features for m in q.values()))
    report.weight_bytes = weight_bytes(transformer)
    return report


def _calibrated(
    transformer: nn.Module,
    names: list[str],
    records: Sequence[tuple[tuple, dict]],
    config: FP4DiTConfig,
    report: QuantReport,
    gen: torch.Generator,
) -> None:
    fp = copy.deepcopy(transformer)
    blocks = find_blocks(transformer)
    done: set[str] = set()
    units: list[tuple[str, list[str]]] = []
    for bname, _ in blocks:
        inner = [n for n in names if n.startswith(bname + ".")]
        if inner:
            units.append((bname, inner))
            done.update(inner)
    units.extend((n, [n]) for n in names if n not in done)  # stand-alone linears: layer reconstruction
    links = chain_links(fp, records[0], find_blocks(fp))
    prev: tuple[str, Any, Any, Any] | None = None  # (name, quant-path inputs, fp inputs, fp targets)
    for uname, inner in units:
        unit = _get(transformer, uname)
        fp_unit = _get(fp, uname)
        link = links.get(uname)
        chained = link is not None and prev is not None and _previous(units, uname) == prev[0]
        if chained:  # O(blocks): next inputs = previous block's outputs, quantized path and fp path
            pname, p_in, p_fp_in, p_tgt = prev
            q_out = run_batched(_get(transformer, pname), p_in)
            inputs = with_leaf(p_in, link, q_out)
            fp_inputs = with_leaf(p_fp_in, link, p_tgt.batched[0])
        else:
            inputs, _ = capture(transformer, records, unit, "input")
            fp_inputs, _ = capture(fp, records, fp_unit, "input")
        targets = _outputs(fp_unit, fp_inputs)
        prev = (uname, inputs, fp_inputs, targets)
        rel = {n: n[len(uname) + 1:] for n in inner}
        formats: dict[str, str] = {}
        fixed = {n: _fixed_format(n, config) for n in inner}
        if any(f is None for f in fixed.values()):
            if uname in inner:
                xs = {uname: torch.cat([_first_arg(inputs.select(sl)).reshape(-1, unit.in_features)
                                        for sl in inputs.batches(64)[:4]], 0)}
            else:
                xs = {n: x for n, x in zip(inner, _linear_inputs(
                    unit, [rel[n] for n in inner], inputs, 4, 16).values(), strict=True)}
            errors = {n: _auto_errors(_get(transformer, n), xs[n], config) for n in inner if fixed[n] is None}
            choices = _auto_assignments(errors)
            if uname not in inner and len(choices) > 1:
                choices.sort(key=lambda a: _rtn_block_mse(unit, {rel[n]: a.get(n) or fixed[n] for n in inner},
                                                          inputs, targets, config))
            formats = {n: choices[0].get(n) or fixed[n] for n in inner}
        else:
            formats = {n: parse_format(f).name for n, f in fixed.items()}
        report.layer_formats.update({n: parse_format(f).name for n, f in formats.items()})
        if uname in inner:
            _reconstruct_single(transformer, uname, formats[uname], inputs, targets, config, report, gen)
        else:
            _reconstruct(unit, uname, [rel[n] for n in inner], {rel[n]: formats[n] for n in inner},
                         inputs, targets, config, report, gen)
    del fp


@torch.no_grad()
def _outputs(module: nn.Module, inputs: BatchedData, batch: int = 32) -> BatchedData:
    """Run ``module`` over all captured inputs and stack its outputs the same way."""
    slices = inputs.batches(batch)
    outs = []
    for sl in slices:
        a, k = inputs.select(sl)
        outs.append(module(*a, **k))
    return BatchedData.from_calls(outs, [sl.stop - sl.start for sl in slices])


def _previous(units: list[tuple[str, list[str]]], name: str) -> str | None:
    names = [u for u, _ in units]
    i = names.index(name)
    return names[i - 1] if i > 0 else None


def _first_arg(call: tuple[tuple, dict]) -> torch.Tensor:
    args, kwargs = call
    return args[0] if args else next(iter(kwargs.values()))


class _Holder(nn.Module):
    def __init__(self, lin: nn.Module) -> None:
        super().__init__()
        self.lin = lin

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.lin(*args, **kwargs)


def _reconstruct_single(transformer: nn.Module, name: str, fmt: str, inputs: Any, targets: Any,
                        config: FP4DiTConfig, report: QuantReport, gen: torch.Generator) -> None:
    holder = _Holder(_get(transformer, name))
    _reconstruct(holder, name, ["lin"], {"lin": fmt}, inputs, targets, config, report, gen)
    _set(transformer, name, holder.lin)


def format_summary(report: QuantReport) -> dict[str, int]:
    """How many layers got each format (useful for ``auto``)."""
    out: dict[str, int] = {}
    for f in report.layer_formats.values():
        out[f] = out.get(f, 0) + 1
    return out


def is_fp(fmt: str) -> bool:
    return isinstance(parse_format(fmt), FPFormat)
