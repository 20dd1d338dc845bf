"""Quantized checkpoints: packed codes + group scales in safetensors, a JSON config beside them.

The folder holds everything the transformer needs (packed quantized linears *and* the
layers kept in high precision), so loading never needs the full-precision weights: a
pipeline loaded with ``transformer=None`` works, the transformer is then built from the
stored config on the meta device and filled from the folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ditaccel._io import (
    CHECKSUM_KEY,
    atomic_write,
    atomic_write_checked_json,
    file_sha256,
    parse_json,
    read_text_file,
)
from ditaccel.errors import QuantizedCheckpointError
from ditaccel.quant.linear import QuantLinear, group_projections, quantized_layers, weight_bytes

__all__ = ["save_quantized", "load_quantized", "open_quantized", "QuantizedFolder", "checkpoint_stats", "model_fingerprint", "round_kept_", "int8_rows",
           "CONFIG_NAME", "TENSORS_NAME"]

CONFIG_NAME = "quant_config.json"
TENSORS_NAME = "quantized.safetensors"
FORMAT_ID = "ditaccel-fp4dit"
FORMAT_VERSION = 1

_DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64,
                                                     torch.uint8, torch.int8, torch.int32, torch.int64, torch.bool)}


def _config_dict(transformer: nn.Module) -> dict[str, Any]:
    cfg = getattr(transformer, "config", None)
    if cfg is None:
        return {}
    return {k: v for k, v in dict(cfg).items() if not str(k).startswith("_")}


def _config_hash(cfg: Any) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_fingerprint(transformer: nn.Module) -> dict[str, Any]:
    """Class name + a hash of the architecture config: what a checkpoint must match to load."""
    text = json.dumps(_config_dict(transformer), sort_keys=True, default=str)
    return {"class": type(transformer).__name__, "config_hash": _config_hash(json.loads(text)),
            "config": json.loads(text)}


def _owner(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent, _, leaf = name.rpartition(".")
    return (root.get_submodule(parent) if parent else root), leaf


def _kept_tensors(transformer: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer that is not part of a ``QuantLinear``'s packed storage."""
    qnames = set(quantized_layers(transformer))
    out: dict[str, torch.Tensor] = {}
    for n, t in list(transformer.named_parameters()) + list(transformer.named_buffers()):
        owner = n.rpartition(".")[0]
        if owner in qnames:
            continue
        out[n] = t
    return out


_STORAGE_16 = {"float16": torch.float16, "bfloat16": torch.bfloat16, "int8": torch.float16}


def _check_storage(storage: str) -> str:
    storage = str(storage).lower()
    if storage not in ("model", *_STORAGE_16):
        raise QuantizedCheckpointError(f"kept storage {storage!r} is not supported: use model, float16, bfloat16 or int8")
    return storage


def _linear_weights(transformer: nn.Module) -> set[str]:
    return {f"{n}.weight" for n, m in transformer.named_modules()
            if isinstance(m, nn.Linear) and not isinstance(m, QuantLinear)}


def int8_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """INT8 codes with a power-of-two scale per output row.

    Why a power of two: decoding (codes * scale) is exact in float32 and re-encoding the decoded
    weight gives the same codes and scale, so a kept layer rounded in memory by ``quantize_``
    and the one rebuilt from the file are bitwise equal.
    """
    w32 = w.detach().float()
    amax = w32.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
    scale = torch.exp2(torch.ceil(torch.log2(amax / 127.0)))
    codes = torch.round(w32 / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return codes, scale


def _int8_decode(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return codes.float() * scale.float()[:, None]


def _file_form(t: torch.Tensor, storage: str) -> torch.Tensor:
    """A kept tensor as the file holds it (int8-stored Linear weights aside): wide floats become 16-bit."""
    if storage != "model" and t.is_floating_point() and t.element_size() > 2:
        return t.to(_STORAGE_16[storage])
    return t


def _stored(t: torch.Tensor, storage: str, as_int8: bool) -> torch.Tensor:
    """The value the file will hold for a kept tensor, in the tensor's own dtype."""
    if as_int8 and storage == "int8" and t.is_floating_point():
        return _int8_decode(*int8_rows(t)).to(t.dtype)
    return _file_form(t, storage).to(t.dtype)


@torch.no_grad()
def round_kept_(transformer: nn.Module, storage: str) -> None:
    """Round the tensors kept out of 4-bit (and the quantized layers' biases) to what the file stores.

    Called by ``quantize_`` so that the in-memory model *is* the saved one: the reload is bitwise.
    """
    storage = _check_storage(storage)
    lin = _linear_weights(transformer)
    for n, t in _kept_tensors(transformer).items():
        t.data = _stored(t.data, storage, n in lin)
    for m in transformer.modules():
        if isinstance(m, QuantLinear) and m.bias is not None:
            m.bias.data = _stored(m.bias.data, storage, False)


def _quantized_entries(qlayers: dict[str, QuantLinear], storage: str,
                       tensors: dict[str, torch.Tensor]) -> tuple[dict[str, Any], int, float, int]:
    """Each ``QuantLinear``'s packed tensors into ``tensors``; returns (layer specs, fp16 bytes, bits, weights)."""
    layers: dict[str, Any] = {}
    fp16_bytes, q_bits, q_weights = 0, 0.0, 0
    for n, m in qlayers.items():
        tensors[f"{n}.qweight"] = m.qweight
        tensors[f"{n}.scales"] = m.scales
        if m.zeros.numel():
            tensors[f"{n}.zeros"] = m.zeros
        if m.bias is not None:
            tensors[f"{n}.bias"] = _file_form(m.bias.detach(), storage)
        layers[n] = m.checkpoint_spec()
        fp16_bytes += 2 * (m.in_features * m.out_features + (m.out_features if m.bias is not None else 0))
        q_bits += m.bits_per_weight() * m.in_features * m.out_features
        q_weights += m.in_features * m.out_features
    return layers, fp16_bytes, q_bits, q_weights


def _kept_entries(transformer: nn.Module, storage: str,
                  tensors: dict[str, torch.Tensor]) -> tuple[dict[str, Any], int]:
    """Every tensor kept out of 4-bit into ``tensors`` in its file form; returns (their specs, fp16 bytes)."""
    lin = _linear_weights(transformer)
    kept: dict[str, Any] = {}
    fp16_bytes = 0
    persistent = set(transformer.state_dict().keys())
    for n, t in _kept_tensors(transformer).items():
        store = t.detach()
        spec = {"kind": "parameter" if isinstance(t, nn.Parameter) else "buffer",
                "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), "persistent": n in persistent}
        if storage == "int8" and n in lin and store.is_floating_point():
            tensors[f"{n}.int8"], tensors[f"{n}.int8_scale"] = int8_rows(store)
            spec["storage"] = "int8"
        else:
            tensors[n] = _file_form(store, storage)
        kept[n] = spec
        if t.is_floating_point():
            fp16_bytes += 2 * t.numel()
    return kept, fp16_bytes


def save_quantized(
    transformer: nn.Module,
    directory: str | os.PathLike,
    config: Any = None,
    kept_storage: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``directory/quantized.safetensors`` + ``quant_config.json`` atomically.

    ``kept_storage`` ("model", "float16", "bfloat16" or "int8"; default: ``config.kept_storage``,
    else "model") is how the layers kept out of 4-bit are stored. ``quantize_`` has already
    rounded them to it, so the file is exact; a model that was not rounded loses that precision
    here. Returns the size statistics also written to the JSON.
    """
    directory = Path(directory)
    storage = _check_storage(kept_storage if kept_storage is not None else getattr(config, "kept_storage", "model"))
    qlayers = quantized_layers(transformer)
    if not qlayers:
        raise QuantizedCheckpointError("the transformer has no quantized layers: run quantize_() before save_quantized()")
    tensors: dict[str, torch.Tensor] = {}
    layers, q_fp16, q_bits, q_weights = _quantized_entries(qlayers, storage, tensors)
    kept, kept_fp16 = _kept_entries(transformer, storage, tensors)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    tpath = directory / TENSORS_NAME
    atomic_write(tpath, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT_ID}))
    tbytes = tpath.stat().st_size
    fp16_bytes = q_fp16 + kept_fp16
    stats = {
        "kept_storage": storage,
        "bits_per_weight": q_bits / max(1, q_weights),
        "quantized_weights": q_weights,
        "file_bytes": tbytes,
        "fp16_bytes": fp16_bytes,
        "file_ratio_vs_fp16": tbytes / max(1, fp16_bytes),
    }
    meta = {
        "format": FORMAT_ID, "version": FORMAT_VERSION, "model": model_fingerprint(transformer),
        "config": config.to_dict() if hasattr(config, "to_dict") else config,
        "tensors_file": TENSORS_NAME, "tensors_bytes": tbytes, "tensors_sha256": file_sha256(tpath),
        "layers": layers, "kept": kept, "stats": stats, "extra": extra or {},
    }
    atomic_write_checked_json(directory / CONFIG_NAME, meta)
    return stats


def _fail(msg: str) -> QuantizedCheckpointError:
    return QuantizedCheckpointError(msg)


_REQUOTE = "re-run `ditaccel quantize`"


@dataclass(frozen=True)
class QuantizedFolder:
    """A quantized folder whose config and tensor file passed every check (``open_quantized``).

    Why: the CLI checks ``--quantized`` before loading the model and loads it after; handing this
    to ``load_quantized`` hashes the tensor file once, unless its size, mtime or inode changed since.
    """

    directory: Path
    meta: dict[str, Any]
    tensors: Path
    signature: tuple[int, int, int]  # (size, mtime_ns, inode) of the tensor file when its sha256 matched

    def unchanged(self) -> bool:
        """Whether the tensor file is still the one whose checksum matched."""
        try:
            return _signature(self.tensors) == self.signature
        except OSError:
            return False


def _signature(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino


def _read_config(cpath: Path) -> dict[str, Any]:
    """The config's JSON, its own checksum required and verified, its version readable here."""
    fix = f"copy the folder again or {_REQUOTE}"
    text = read_text_file(cpath, "quantized config", fix, QuantizedCheckpointError)
    meta = parse_json(text, f"quantized config {cpath}", fix, QuantizedCheckpointError)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_ID:
        raise _fail(f"{cpath} is not a ditaccel quantized config: {_REQUOTE}")
    version = meta.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise _fail(f"{cpath} has a malformed version {version!r}: {_REQUOTE}")
    if version > FORMAT_VERSION:
        raise _fail(f"{cpath} has format version {meta.get('version')}, newer than this ditaccel: upgrade ditaccel")
    signed = CHECKSUM_KEY in json.loads(text)  # parse_json drops the field once verified
    if not signed or "tensors_sha256" not in meta:
        missing = "'tensors_sha256'" if signed else f"its '{CHECKSUM_KEY}'"
        raise _fail(f"{cpath} lacks {missing}, so its content cannot be trusted (edited by hand, or written "
                    f"before checksums were added): {_REQUOTE}")
    for key in ("model", "layers", "kept", "tensors_bytes"):
        if key not in meta:
            raise _fail(f"{cpath} lacks '{key}': the folder is damaged; {_REQUOTE}")
    problem = _meta_problem(meta)
    if problem:
        raise _fail(f"{cpath} has a malformed {problem}: the folder is damaged; {_REQUOTE}")
    if _config_hash(meta["model"]["config"]) != meta["model"]["config_hash"]:
        raise _fail(f"{cpath} has a model config that does not match its hash: the folder is damaged; {_REQUOTE}")
    return meta


def open_quantized(directory: str | os.PathLike) -> QuantizedFolder:
    """Check a quantized folder without a model: its config and the size and sha256 of its tensor file."""
    directory = Path(directory)
    if not directory.is_dir():
        raise _fail(f"quantized folder {directory} does not exist or is not a folder: pass the --out folder of "
                    "`ditaccel quantize`")
    cpath = directory / CONFIG_NAME
    if not cpath.exists():
        raise _fail(f"{cpath} is missing: this is not a quantized folder; re-run `ditaccel quantize --out {directory}`")
    meta = _read_config(cpath)
    tpath = directory / meta.get("tensors_file", TENSORS_NAME)
    if not tpath.is_file():
        raise _fail(f"{tpath} is missing: copy the whole quantized folder or {_REQUOTE}")
    signature = _signature(tpath)
    if signature[0] != meta["tensors_bytes"]:
        raise _fail(f"{tpath} is truncated or altered ({signature[0]} bytes, expected {meta['tensors_bytes']}): "
                    f"copy it again or {_REQUOTE}")
    if file_sha256(tpath) != meta["tensors_sha256"]:
        raise _fail(f"{tpath} fails its checksum (damaged or changed since it was written): copy it again or "
                    f"{_REQUOTE}")
    return QuantizedFolder(directory, meta, tpath, signature)


def _is(v: Any, kind: Any) -> bool:
    return isinstance(v, kind) and (kind is bool or not isinstance(v, bool))


_LAYER_FIELDS = {"format": str, "in_features": int, "out_features": int, "group_size": int, "bias": bool}
_OPTIONAL_STR = ("act_format", "out_act_format", "compute_dtype")


def _known_format(name: Any) -> bool:
    """A number format this ditaccel can decode (None: not quantized), checked at load, not mid-generation."""
    from ditaccel.errors import DitaccelError
    from ditaccel.quant.formats import parse_format

    if name is None:
        return True
    try:
        parse_format(name)
    except DitaccelError:
        return False
    return True


def _meta_problem(meta: dict[str, Any]) -> str | None:
    """The first field of a quantized config with the wrong JSON type or an impossible value, else None."""
    model = meta["model"]
    if not (isinstance(model, dict) and _is(model.get("class"), str) and _is(model.get("config_hash"), str)
            and _is(model.get("config"), dict)):
        return "'model' entry"
    if not _is(meta["tensors_bytes"], int) or not _is(meta.get("tensors_file", TENSORS_NAME), str) \
            or Path(meta.get("tensors_file", TENSORS_NAME)).name != meta.get("tensors_file", TENSORS_NAME):
        return "'tensors_bytes' or 'tensors_file'"
    if not _is(meta["layers"], dict) or not _is(meta["kept"], dict) or not _is(meta.get("stats", {}), dict):
        return "'layers', 'kept' or 'stats' entry"
    for name, spec in meta["layers"].items():
        if not (isinstance(spec, dict) and all(_is(spec.get(k), t) for k, t in _LAYER_FIELDS.items())
                and all(spec.get(k) is None or _is(spec[k], str) for k in _OPTIONAL_STR)
                and min(spec["in_features"], spec["out_features"], spec["group_size"]) >= 1
                and all(_known_format(spec.get(k)) for k in ("format", "act_format", "out_act_format"))):
            return f"layer {name!r}"
    for name, spec in meta["kept"].items():
        if not (isinstance(spec, dict) and spec.get("kind") in ("parameter", "buffer") and _is(spec.get("dtype"), str)
                and _is(spec.get("shape"), list) and all(_is(v, int) and v >= 0 for v in spec["shape"])
                and _is(spec.get("persistent", True), bool) and spec.get("storage") in (None, "int8")):
            return f"kept tensor {name!r}"
    return None


def _build_empty(meta: dict[str, Any]) -> nn.Module:
    import diffusers

    cls = getattr(diffusers, meta["model"]["class"], None)
    if cls is None:
        raise _fail(f"diffusers has no class {meta['model']['class']}: upgrade diffusers")
    try:
        with torch.device("meta"):
            return cls.from_config(meta["model"]["config"])
    except Exception as e:  # diffusers raises many kinds on a config it cannot build
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise _fail(f"cannot build a {meta['model']['class']} from the stored config ({first}): {_REQUOTE}") from None


def _target(pipe: Any, meta: dict[str, Any], directory: Path) -> nn.Module:
    """The transformer to fill (built empty from the stored config when there is none), checked to match."""
    is_module = isinstance(pipe, nn.Module)
    transformer = pipe if is_module else getattr(pipe, "transformer", None)
    if transformer is None:
        transformer = _build_empty(meta)
        if not is_module and pipe is not None:
            pipe.transformer = transformer
    want = meta["model"]
    have = model_fingerprint(transformer)
    if have["class"] != want["class"]:
        raise _fail(f"{directory} was quantized from a {want['class']}, not a {have['class']}: "
                    "load it into the pipeline it was made from")
    if have["config_hash"] != want["config_hash"]:
        raise _fail(f"{directory} was quantized from another {want['class']} (config {want['config_hash']} "
                    f"!= {have['config_hash']}): load it into the model it was made from")
    return transformer


class _Tensors:
    """The tensor file's contents; a missing name is a one-line damaged-folder error."""

    def __init__(self, tpath: Path) -> None:
        self.path = tpath
        try:
            with safe_open(str(tpath), framework="pt") as f:
                self.data = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for damaged headers
            first = (str(e).splitlines() or [type(e).__name__])[0]
            raise _fail(f"{tpath} cannot be read ({first}): the file is damaged; {_REQUOTE}") from None

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def missing(self, key: str) -> QuantizedCheckpointError:
        return _fail(f"{self.path} lacks tensor {key}: the folder is damaged; {_REQUOTE}")

    def need(self, key: str) -> torch.Tensor:
        if key not in self.data:
            raise self.missing(key)
        return self.data[key]


def _load_layers(transformer: nn.Module, layers: dict[str, Any], data: _Tensors, directory: Path) -> None:
    """Put a ``QuantLinear`` (built by ``QuantLinear.from_checkpoint``) in place of each quantized linear."""
    for n, spec in layers.items():
        try:
            old = transformer.get_submodule(n)
        except AttributeError:
            raise _fail(f"{directory} quantizes layer {n}, which this {type(transformer).__name__} lacks: "
                        "load it into the model it was made from") from None
        if not (isinstance(old, nn.Linear | QuantLinear)
                and (old.in_features, old.out_features) == (spec["in_features"], spec["out_features"])):
            raise _fail(f"layer {n} does not match {directory} (expected Linear {spec['in_features']}->"
                        f"{spec['out_features']}): load it into the model it was made from")
        dtype = _module_dtype(old) or _DTYPES.get(spec.get("compute_dtype", "float32"), torch.float32)
        names = ("qweight", "scales", "zeros", "bias")
        try:
            q = QuantLinear.from_checkpoint(spec, {b: data.data[f"{n}.{b}"] for b in names if f"{n}.{b}" in data},
                                            dtype)
        except KeyError as e:
            raise data.missing(f"{n}.{e.args[0]}") from None
        except ValueError as e:
            raise _fail(f"tensor {n}.{e} in {data.path}: the file is damaged; {_REQUOTE}") from None
        device = _module_device(old)
        if device is not None and device.type != "meta":
            q = q.to(device)
        parent, leaf = _owner(transformer, n)
        setattr(parent, leaf, q)


def _kept_value(n: str, spec: dict[str, Any], data: _Tensors) -> torch.Tensor:
    """A kept tensor as the file stores it (int8 rows decoded), its shape checked against the spec."""
    if spec.get("storage") == "int8":
        codes, scale = data.need(f"{n}.int8"), data.need(f"{n}.int8_scale")
        if codes.dtype != torch.int8 or codes.dim() != 2 or scale.shape != (codes.shape[0],):
            raise _fail(f"tensor {n}.int8 in {data.path} has shape {tuple(codes.shape)}/{codes.dtype}: the file is "
                        f"damaged; {_REQUOTE}")
        t = _int8_decode(codes, scale)
    else:
        t = data.need(n)
    if list(t.shape) != spec["shape"]:
        raise _fail(f"tensor {n} in {data.path} has shape {tuple(t.shape)}, expected {tuple(spec['shape'])}: "
                    f"the file is damaged; {_REQUOTE}")
    return t


def _load_kept(transformer: nn.Module, kept: dict[str, Any], data: _Tensors, directory: Path) -> None:
    """Set every tensor kept out of 4-bit, through ``nn.Module``'s own ``setattr``/``register_buffer``."""
    where = "load it into the model it was made from"
    for n, spec in kept.items():
        t = _kept_value(n, spec, data)
        try:
            owner, leaf = _owner(transformer, n)
        except AttributeError:
            raise _fail(f"{directory} holds {n}, which this {type(transformer).__name__} lacks: {where}") from None
        params, buffers = dict(owner.named_parameters(recurse=False)), dict(owner.named_buffers(recurse=False))
        if (leaf in params and spec["kind"] != "parameter") or (leaf in buffers and spec["kind"] != "buffer") \
                or (leaf not in params and leaf not in buffers and hasattr(owner, leaf)):
            raise _fail(f"{directory} holds {n} as a {spec['kind']}, which this {type(transformer).__name__} "
                        f"does not: {where}")
        cur = params.get(leaf, buffers.get(leaf))
        if cur is not None and cur.device.type != "meta":
            if tuple(cur.shape) != tuple(t.shape):
                raise _fail(f"tensor {n} has shape {tuple(cur.shape)} here but {tuple(t.shape)} in {directory}: "
                            f"{where}")
            val = t.to(device=cur.device, dtype=cur.dtype)
            req = cur.requires_grad if isinstance(cur, nn.Parameter) else False
        else:
            val, req = t.to(_DTYPES.get(spec["dtype"], t.dtype)), False
        if spec["kind"] == "parameter":
            setattr(owner, leaf, nn.Parameter(val, requires_grad=req))
        else:
            owner.register_buffer(leaf, val, persistent=spec.get("persistent", True))


def load_quantized(directory: str | os.PathLike | QuantizedFolder, pipe: Any, kernel: str = "portable") -> nn.Module:
    """Replace ``pipe.transformer`` 's linears with ``QuantLinear`` s read from ``directory``.

    ``pipe`` may also be a bare transformer. If ``pipe.transformer`` is ``None`` (pipeline
    loaded with ``transformer=None``) the transformer is built from the stored config
    with no weights at all. ``directory`` may be an ``open_quantized`` result: its tensor file is
    then not hashed again unless it changed. ``kernel``: ``"compiled"`` compiles the portable layers in
    place (4-bit buffers kept); a torchao kernel (e.g. ``"torchao-fp8"``) swaps them for torchao's.
    Returns the quantized transformer.
    """
    if kernel != "portable":
        from ditaccel.quant.kernels import check_kernel

        check_kernel(kernel)  # fail before any work
    folder = directory if isinstance(directory, QuantizedFolder) and directory.unchanged() else \
        open_quantized(directory.directory if isinstance(directory, QuantizedFolder) else directory)
    transformer = _target(pipe, folder.meta, folder.directory)
    data = _Tensors(folder.tensors)
    _load_layers(transformer, folder.meta["layers"], data, folder.directory)
    _load_kept(transformer, folder.meta["kept"], data, folder.directory)
    left = [n for n, t in list(transformer.named_parameters()) + list(transformer.named_buffers())
            if t.device.type == "meta"]
    if left:
        raise _fail(f"{folder.directory} does not provide {left[0]} (and {len(left) - 1} more): "
                    "load it into the model it was made from")
    transformer.eval()
    group_projections(transformer)
    if kernel != "portable":
        from ditaccel.quant.kernels import apply_kernel

        apply_kernel(transformer, kernel)
    return transformer


def _module_device(m: nn.Module) -> torch.device | None:
    for t in list(m.parameters()) + list(m.buffers()):
        return t.device
    return None


def _module_dtype(m: nn.Module) -> torch.dtype | None:
    if isinstance(m, QuantLinear):
        return m.compute_dtype
    for t in m.parameters():
        if t.is_floating_point() and t.device.type != "meta":
            return t.dtype
    return None


def checkpoint_stats(directory: str | os.PathLike | QuantizedFolder) -> dict[str, Any]:
    """The size statistics stored with a quantized folder (bits/weight, file size vs fp16)."""
    folder = directory if isinstance(directory, QuantizedFolder) else open_quantized(directory)
    return dict(folder.meta.get("stats", {}))


def loaded_weight_bytes(transformer: nn.Module) -> int:
    """Weight memory of a (loaded) transformer: parameters + buffers, in bytes."""
    return weight_bytes(transformer)
