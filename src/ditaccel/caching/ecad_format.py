"""ECAD's schedule JSON (github.com/AniAggarwal/ecad, ``schedules/``) to and from ``CacheSchedule``.

Why a converter rather than a second runtime: ECAD's file is the same boolean genome under other
names, so importing it lets the paper's published schedules run on ditaccel's hooks unchanged.

ECAD's layout (what its ``CacheSchedule.to_json`` writes, ``json.dump(..., indent=4)``)::

    {"cache_schedule": {"num_blocks": 28, "num_inference_steps": 20, "name": "...",
                        "attributes": {...},
                        "schedule": {"000": {"0": {"attn1": true, "attn2": false, "ff": true}, ...}, ...},
                        "num_single_blocks": 38},            # FLUX only
     "config": {"height": 256, "width": 256, ...},           # may be {}
     "metrics": {"by_inference_step": {"000": {"macs": ..., "flops": ...}}, "total_macs": ...}}

``true`` = recompute, as in ditaccel. PixArt blocks are keyed "0".."27"; FLUX double blocks
"0".."18" with ``full_attn``/``full_ff``/``full_ff_context`` and single blocks "single_0".. with
``single_attn``/``single_proj_mlp``/``single_proj_out``, the sub-modules ditaccel's FLUX slots
cache. ECAD's fields without a ditaccel counterpart (name, attributes, config, its metrics) are
kept in ``meta["ecad"]`` so that writing the schedule back gives the same file, byte for byte.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from ditaccel._io import atomic_write_text
from ditaccel.errors import ScheduleError
from ditaccel.models.families import FluxAdapter, PixArtAdapter

if TYPE_CHECKING:  # schedule.py imports this module to read ECAD files: no import back at run time
    from ditaccel.caching.schedule import CacheSchedule

PIXART = ("attn1", "attn2", "ff")
FLUX_DOUBLE = ("full_attn", "full_ff", "full_ff_context")
FLUX_SINGLE = ("single_attn", "single_proj_mlp", "single_proj_out")
# ditaccel's slot names, in ECAD's component order: the adapters own them
COMPONENTS = {a.family: a.component_names for a in (PixArtAdapter, FluxAdapter)}
FLUX1_DOUBLE_BLOCKS = 19  # FLUX.1 [dev]/[schnell]: 19 double + 38 single blocks
_ECAD_KEYS = ("num_blocks", "num_inference_steps", "name", "attributes", "schedule", "num_single_blocks")
_META_KEYS = ("key_order", "config", "metrics", "top_key_order")  # ours, inside meta["ecad"]


def is_ecad(d: Any) -> bool:
    """True for a parsed ECAD schedule file (its one marker: a ``cache_schedule`` object)."""
    return isinstance(d, dict) and isinstance(d.get("cache_schedule"), dict) and "format" not in d


def _block_keys(family: str, n_double: int, n_single: int) -> list[tuple[str, tuple[str, ...]]]:
    if family == "pixart":
        return [(str(b), PIXART) for b in range(n_double)]
    return [(str(b), FLUX_DOUBLE) for b in range(n_double)] + [
        (f"single_{b}", FLUX_SINGLE) for b in range(n_single)]


def _int_field(cs: dict[str, Any], key: str, source: str) -> int:
    v = cs.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ScheduleError(f"{source}: ECAD field cache_schedule.{key} is {v!r}; it must be a positive integer")
    return v


def _step_bits(cells: Any, keys: list[tuple[str, tuple[str, ...]]], where: str) -> np.ndarray:
    if not isinstance(cells, dict) or set(cells) != {k for k, _ in keys}:
        got = sorted(cells)[:4] if isinstance(cells, dict) else type(cells).__name__
        raise ScheduleError(f"{where} names blocks {got}...; expected exactly {keys[0][0]}..{keys[-1][0]}")
    out = np.zeros((len(keys), 3), dtype=bool)
    for b, (key, comps) in enumerate(keys):
        cell = cells[key]
        if not isinstance(cell, dict):
            raise ScheduleError(f"{where} block {key} is {cell!r}, not an object of booleans")
        extra = sorted(set(cell) - set(comps))
        if extra:
            raise ScheduleError(
                f"{where} block {key} has {', '.join(extra)}: ECAD custom compute (e.g. T-GATE averaging) that "
                f"ditaccel does not run; import plain recompute schedules only (ditaccel.presets has tgate)")
        for c, comp in enumerate(comps):
            v = cell.get(comp)
            if not isinstance(v, bool):
                raise ScheduleError(f"{where} block {key} component {comp} is {v!r}; it must be true or false")
            out[b, c] = v
    return out


def ecad_schedule_fields(d: Any, source: str = "schedule") -> dict[str, Any]:
    """``CacheSchedule``'s constructor fields from a parsed ECAD file; a mismatch is a one-line ``ScheduleError``."""
    if not is_ecad(d):
        raise ScheduleError(f"{source} is not an ECAD schedule (no cache_schedule object)")
    cs = d["cache_schedule"]
    steps, n_double = _int_field(cs, "num_inference_steps", source), _int_field(cs, "num_blocks", source)
    rows = cs.get("schedule")
    if not isinstance(rows, dict):
        raise ScheduleError(f"{source}: ECAD cache_schedule.schedule must be an object keyed by step")
    flux = "num_single_blocks" in cs
    n_single = _int_field(cs, "num_single_blocks", source) if flux else 0
    family = "flux" if flux else "pixart"
    try:
        by_step = {int(k): v for k, v in rows.items()}
    except ValueError:
        raise ScheduleError(f"{source}: ECAD step keys must be numbers like '000', got {sorted(rows)[:3]}") from None
    if sorted(by_step) != list(range(steps)):
        raise ScheduleError(f"{source}: ECAD schedule holds steps {sorted(by_step)[:3]}...; "
                            f"num_inference_steps says 0..{steps - 1}")
    keys = _block_keys(family, n_double, n_single)
    bits = np.stack([_step_bits(by_step[s], keys, f"{source} step {s}") for s in range(steps)])
    config = d.get("config") or {}
    res = (config.get("height"), config.get("width")) if isinstance(config, dict) else (None, None)
    resolution = (int(res[0]), int(res[1])) if all(isinstance(x, int) for x in res) else None
    ecad = {k: cs[k] for k in cs if k != "schedule"}
    ecad.update(key_order=[k for k in cs], config=config, metrics=d.get("metrics") or {},
                top_key_order=list(d))
    ours = d.get("ditaccel")  # written by to_ecad_dict for a schedule that did not come from ECAD
    fields = {"bits": bits, "components": COMPONENTS[family], "family": family, "resolution": resolution}
    if isinstance(ours, dict):
        return fields | {"metrics": dict(ours.get("metrics") or {}), "meta": dict(ours.get("meta") or {})}
    return fields | {"metrics": {}, "meta": {"ecad": ecad}}


def _flux_split(s: CacheSchedule, pipe_or_transformer: Any) -> int:
    """Number of FLUX double blocks: the model's, else the imported file's, else FLUX.1's 19 of 57."""
    if pipe_or_transformer is not None:
        from ditaccel.models import get_adapter

        s.validate_for(pipe_or_transformer)
        return sum(1 for spec in get_adapter(pipe_or_transformer).blocks if spec.kind == "double")
    known = s.meta.get("ecad", {}).get("num_blocks")
    if isinstance(known, int):
        return known
    if s.blocks == 3 * FLUX1_DOUBLE_BLOCKS:
        return FLUX1_DOUBLE_BLOCKS
    raise ScheduleError(f"this FLUX schedule has {s.blocks} blocks, not FLUX.1's 57; pass the model "
                        f"(to_ecad(path, pipe)) so the double/single split is known")


def to_ecad_dict(s: CacheSchedule, pipe_or_transformer: Any = None) -> dict[str, Any]:
    """ECAD's layout of ``s`` (PixArt or FLUX); fields imported from ECAD are written back as they were."""
    if s.family not in COMPONENTS or s.components != COMPONENTS[s.family]:
        raise ScheduleError(f"ECAD's format covers PixArt and FLUX schedules; this one is {s.family!r} "
                            f"({', '.join(s.components)}); keep it in ditaccel's format")
    if s.step_reuse != "components":
        raise ScheduleError(f"ECAD's format has no step_reuse {s.step_reuse!r} (whole-stack reuse at its all-0 steps); "
                            f"keep it in ditaccel's format")
    n_double = _flux_split(s, pipe_or_transformer) if s.family == "flux" else s.blocks
    if pipe_or_transformer is not None and s.family == "pixart":
        s.validate_for(pipe_or_transformer)
    keys = _block_keys(s.family, n_double, s.blocks - n_double)
    if len(keys) != s.blocks:
        raise ScheduleError(f"FLUX split {n_double} double blocks does not fit {s.blocks} blocks")
    rows = {f"{t:03}": {k: {c: bool(v) for c, v in zip(comps, s.bits[t, b], strict=True)}
                        for b, (k, comps) in enumerate(keys)} for t in range(s.steps)}
    old = s.meta.get("ecad")
    old = old if isinstance(old, dict) else {}
    cs = {"num_blocks": n_double, "num_inference_steps": s.steps,
          "name": old.get("name", s.meta.get("preset", s.meta.get("name", "ditaccel"))),
          "attributes": old.get("attributes", {}), "schedule": rows}
    if s.family == "flux":
        cs["num_single_blocks"] = s.blocks - n_double
    cs.update({k: v for k, v in old.items() if k not in _ECAD_KEYS and k not in _META_KEYS})
    order = old.get("key_order") or list(cs)
    cs = {k: cs[k] for k in order if k in cs} | {k: v for k, v in cs.items() if k not in order}
    config = old.get("config")
    if config is None:
        config = {"height": s.resolution[0], "width": s.resolution[1]} if s.resolution else {}
    metrics = old.get("metrics", {})
    per_step = metrics.get("by_inference_step") if isinstance(metrics, dict) else None
    if isinstance(per_step, dict) and len(per_step) != s.steps:
        metrics = {}  # the file's figures were for another step count (the schedule was resampled)
    out: dict[str, Any] = {"cache_schedule": cs, "config": config, "metrics": metrics}
    if not old:
        out["ditaccel"] = {"family": s.family, "metrics": s.metrics, "meta": s.meta}
    top = old.get("top_key_order") or list(out)
    return {k: out[k] for k in top if k in out} | {k: v for k, v in out.items() if k not in top}


def save_ecad(s: CacheSchedule, path: str | os.PathLike, pipe_or_transformer: Any = None) -> None:
    """Write ECAD's JSON atomically, formatted as ECAD writes it (indent 4, no final newline)."""
    atomic_write_text(path, json.dumps(to_ecad_dict(s, pipe_or_transformer), indent=4))

