"""``CacheSchedule``: which (step, block, component) recomputes, as a versioned JSON file.

Why a plain boolean array: it is exactly ECAD's genome, so the search, the presets, the cost
model and the runtime all share one representation. True = recompute, False = reuse the
output cached at the last step that computed it.

JSON format (version 1)::

    {"format": "ditaccel.cache_schedule", "version": 1, "family": "pixart",
     "steps": 20, "blocks": 28, "components": ["attn1", "attn2", "ff"],
     "resolution": [256, 256], "metrics": {...}, "meta": {...},
     "schedule": [["111", "101", ...], ...],   # [step][block] -> one char per component
     "checksum": "sha256:..."}                 # written by ditaccel; optional in hand-written files

Version 2 is version 1 plus ``"step_reuse": "residual"`` (``ditaccel.caching.stack``): steps with
no bit set skip the whole block stack. Plain (component) schedules are still written as version 1,
so files made before it stay byte-identical; a reader that knows only version 1 refuses version 2
instead of running it with the wrong reuse.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ditaccel._io import atomic_write_checked_json, read_json, verify_checksum
from ditaccel.caching.ecad_format import ecad_schedule_fields, is_ecad, save_ecad
from ditaccel.caching.stack import STEP_REUSE
from ditaccel.errors import ScheduleError

FORMAT = "ditaccel.cache_schedule"
VERSION = 1
RESIDUAL_VERSION = 2  # version 1 + step_reuse "residual"


def effective_bits(bits: np.ndarray) -> np.ndarray:
    """A bool copy of ``[steps, blocks, components]`` bits with step 0 set: step 0 always computes
    (nothing is cached before it), whatever its bits say. The one place this rule is written."""
    eff = np.array(bits, dtype=bool, copy=True)
    eff[0] = True
    return eff


@dataclass
class CacheSchedule:
    """Recompute bits ``[steps, blocks, components]`` plus what they were made for."""

    bits: np.ndarray
    components: tuple[str, ...]
    family: str
    resolution: tuple[int, int] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    #: What a step with no bit set reuses: each component's output ("components", ECAD's rule) or the
    #: whole block stack's residual ("residual", ``ditaccel.caching.stack``).
    step_reuse: str = "components"

    def __post_init__(self) -> None:
        bits = np.asarray(self.bits)
        if bits.ndim != 3:
            raise ScheduleError(f"schedule bits must be 3-D [steps, blocks, components], got shape {bits.shape}")
        self.bits = bits.astype(bool, copy=True)
        self.components = tuple(self.components)
        if self.bits.shape[2] != len(self.components):
            raise ScheduleError(
                f"schedule has {self.bits.shape[2]} components per block but names {len(self.components)}: "
                f"{', '.join(self.components)}"
            )
        if self.bits.shape[0] < 1:
            raise ScheduleError("schedule has 0 steps; it needs at least 1")
        if self.resolution is not None:
            self.resolution = (int(self.resolution[0]), int(self.resolution[1]))
        if self.step_reuse not in STEP_REUSE:
            raise ScheduleError(f"step_reuse must be one of {', '.join(STEP_REUSE)}, got {self.step_reuse!r}")

    # -- shape -------------------------------------------------------------------------------
    @property
    def steps(self) -> int:
        return int(self.bits.shape[0])

    @property
    def blocks(self) -> int:
        return int(self.bits.shape[1])

    @property
    def residual(self) -> bool:
        """Whether steps with no bit set skip the block stack (``step_reuse="residual"``)."""
        return self.step_reuse == "residual"

    def effective_bits(self) -> np.ndarray:
        """The bits the runtime actually follows (a copy): step 0 always computes (see ``effective_bits``)."""
        return effective_bits(self.bits)

    def recompute_fraction(self) -> float:
        """Share of (step, block, component) slots recomputed (step 0 counts as computed)."""
        return float(self.effective_bits().mean())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CacheSchedule):
            return NotImplemented
        return (self.family == other.family and self.components == other.components
                and self.bits.shape == other.bits.shape and bool((self.bits == other.bits).all())
                and self.resolution == other.resolution and self.metrics == other.metrics
                and self.meta == other.meta and self.step_reuse == other.step_reuse)

    # -- transfer ----------------------------------------------------------------------------
    def resample(self, steps: int) -> CacheSchedule:
        """The same schedule for ``steps`` denoising steps, by nearest-step mapping.

        New step j takes the bits of old step round(j * (S_old - 1) / (S_new - 1)), so the first
        and last steps map onto each other and the pattern keeps its place in the trajectory.
        """
        if not isinstance(steps, int) or steps < 1:
            raise ScheduleError(f"cannot resample to {steps!r} steps; pass a positive integer")
        old = self.steps
        if steps == 1 or old == 1:
            idx = np.zeros(steps, dtype=int)
        else:
            idx = np.floor(np.arange(steps) * (old - 1) / (steps - 1) + 0.5).astype(int)
        meta = dict(self.meta)
        meta["resampled_from_steps"] = meta.get("resampled_from_steps", old)
        return CacheSchedule(self.bits[idx], self.components, self.family, self.resolution, {}, meta, self.step_reuse)

    # -- validation --------------------------------------------------------------------------
    def validate_for(self, pipe_or_transformer: Any) -> None:
        """Raise ``ScheduleError`` (one line) unless this schedule fits the model's family and blocks."""
        from ditaccel.models import get_adapter

        a = get_adapter(pipe_or_transformer)
        if self.family != a.family:
            raise ScheduleError(
                f"schedule was made for family {self.family!r} but the model is {a.family!r}; "
                f"use a {a.family} schedule or a preset from ditaccel.presets"
            )
        unknown = [c for c in self.components if c not in a.component_names]
        if unknown:
            raise ScheduleError(
                f"unknown component(s) {', '.join(unknown)} for {a.family}; expected "
                f"{', '.join(a.component_names)}"
            )
        if self.components != a.component_names:
            raise ScheduleError(
                f"component order {', '.join(self.components)} does not match {a.family}'s "
                f"{', '.join(a.component_names)}; rebuild the schedule"
            )
        if self.blocks != a.num_blocks:
            raise ScheduleError(
                f"schedule has {self.blocks} blocks but the {a.family} transformer has {a.num_blocks}; "
                f"use a schedule made for this model size"
            )
        if self.residual and not a.stack_residual:
            raise ScheduleError(
                f"step_reuse 'residual' needs blocks that map hidden states to hidden states; {a.family}'s do "
                f"not; use step_reuse 'components'"
            )

    # -- JSON --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        rows = [["".join("1" if b else "0" for b in blk) for blk in step] for step in self.bits]
        residual = self.residual
        d = {
            "format": FORMAT, "version": RESIDUAL_VERSION if residual else VERSION, "family": self.family,
            "steps": self.steps, "blocks": self.blocks, "components": list(self.components),
            "resolution": list(self.resolution) if self.resolution else None,
            "metrics": self.metrics, "meta": self.meta, "schedule": rows,
        }
        if residual:
            d["step_reuse"] = self.step_reuse
        return d

    @classmethod
    def from_dict(cls, d: Any, source: str = "schedule") -> CacheSchedule:
        """Parse a dict made by ``to_dict`` or an ECAD file's (auto-detected); mismatches raise ``ScheduleError``."""
        if is_ecad(d):
            return cls(**ecad_schedule_fields(d, source))
        fix = "re-save it with CacheSchedule.save or pick it again with `ditaccel frontier --select`"
        d = verify_checksum(d, source, fix, ScheduleError)
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ScheduleError(f"{source} is not a ditaccel cache schedule (missing format {FORMAT!r})")
        if d.get("version") not in (VERSION, RESIDUAL_VERSION):
            raise ScheduleError(
                f"{source} has schedule version {d.get('version')!r}; this ditaccel reads versions "
                f"{VERSION} and {RESIDUAL_VERSION}"
            )
        reuse = d.get("step_reuse", "components")
        if reuse not in STEP_REUSE or (reuse == "residual") != (d["version"] == RESIDUAL_VERSION):
            raise ScheduleError(f"{source} has step_reuse {reuse!r} in a version-{d['version']} file; version "
                                f"{RESIDUAL_VERSION} has step_reuse 'residual', version {VERSION} none; {fix}")
        comps, steps, blocks, family = (d.get(k) for k in ("components", "steps", "blocks", "family"))
        for key, ok in (("components", isinstance(comps, list) and bool(comps)
                         and all(isinstance(c, str) and c for c in comps) and len(set(comps)) == len(comps)),
                        ("steps", _count(steps)), ("blocks", _count(blocks)),
                        ("family", isinstance(family, str) and bool(family))):
            if not ok:
                raise ScheduleError(f"{source} lacks a valid field {key!r} (got {d.get(key)!r}); {fix}")
        rows = d.get("schedule")
        if not isinstance(rows, list) or len(rows) != steps or any(
            not isinstance(r, list) or len(r) != blocks for r in rows
        ):
            got = (len(rows), len(rows[0]) if rows and isinstance(rows[0], list) else 0) \
                if isinstance(rows, list) else "?"
            raise ScheduleError(
                f"{source} has the wrong shape: header says {steps} steps x {blocks} blocks, "
                f"schedule holds {got}"
            )
        bits = np.zeros((steps, blocks, len(comps)), dtype=bool)
        for s, r in enumerate(rows):
            for b, cell in enumerate(r):
                if not isinstance(cell, str) or len(cell) != len(comps) or set(cell) - {"0", "1"}:
                    raise ScheduleError(
                        f"{source} has the wrong shape at step {s} block {b}: {cell!r} is not "
                        f"{len(comps)} characters of 0/1 ({', '.join(comps)})"
                    )
                bits[s, b] = [ch == "1" for ch in cell]
        res = d.get("resolution")
        if res is not None and not (isinstance(res, list) and len(res) == 2 and all(_count(v) for v in res)):
            raise ScheduleError(f"{source} has resolution {res!r}; write [height, width] in pixels or null")
        for key in ("metrics", "meta"):
            if d.get(key) is not None and not isinstance(d[key], dict):
                raise ScheduleError(f"{source} has {key} {d[key]!r}; write a JSON object or leave it out")
        return cls(bits, tuple(comps), family, tuple(res) if res else None,
                   dict(d.get("metrics") or {}), dict(d.get("meta") or {}), reuse)

    def save(self, path: str | os.PathLike) -> None:
        """Write the versioned JSON atomically (a crash never leaves half a file), with its checksum."""
        atomic_write_checked_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike, pipe_or_transformer: Any = None) -> CacheSchedule:
        """Read a schedule file, ditaccel's or ECAD's; with a model, also check it fits (``validate_for``)."""
        d = read_json(path, "schedule file", "pass a file written by CacheSchedule.save or `ditaccel frontier`",
                      ScheduleError)
        s = cls.from_dict(d, source=os.fspath(path))
        if pipe_or_transformer is not None:
            s.validate_for(pipe_or_transformer)
        return s

    @classmethod
    def from_ecad(cls, path: str | os.PathLike) -> CacheSchedule:
        """Read one of ECAD's schedule files (github.com/AniAggarwal/ecad, ``schedules/``)."""
        d = read_json(path, "schedule file", "pass an ECAD schedule file", ScheduleError)
        return cls(**ecad_schedule_fields(d, os.fspath(path)))

    def to_ecad(self, path: str | os.PathLike, pipe_or_transformer: Any = None) -> None:
        """Write ECAD's JSON (PixArt/FLUX); a FLUX schedule not from FLUX.1 or ECAD needs the model."""
        save_ecad(self, path, pipe_or_transformer)

    @classmethod
    def for_model(cls, pipe_or_transformer: Any, bits: np.ndarray, **kw: Any) -> CacheSchedule:
        """A schedule with the family and component names of ``pipe_or_transformer``'s adapter."""
        from ditaccel.models import get_adapter

        a = get_adapter(pipe_or_transformer)
        s = cls(bits, a.component_names, a.family, **kw)
        s.validate_for(a.transformer)
        return s


def _count(v: Any) -> bool:
    """A positive JSON integer (``true`` is not one)."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1
