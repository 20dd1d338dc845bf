"""``CacheSchedule``: which (step, block, component) recomputes, as a versioned JSON file.

Why a plain boolean array: it is exactly ECAD's genome, so the search, the presets, the cost
model and the runtime all share one representation. True = recompute, False = reuse the
output cached at the last step that computed it.

JSON format (version 1)::

    {"format": "ditaccel.cache_schedule", "version": 1, "family": "pixart",
     "steps": 20, "blocks": 28, "components": ["attn1", "attn2", "ff"],
     "resolution": [256, 256], "metrics": {...}, "meta": {...},
     "schedule": [["111", "101", ...], ...]}   # [step][block] -> one char per component
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ditaccel._io import atomic_write_json
from ditaccel.errors import ScheduleError

FORMAT = "ditaccel.cache_schedule"
VERSION = 1


@dataclass
class CacheSchedule:
    """Recompute bits ``[steps, blocks, components]`` plus what they were made for."""

    bits: np.ndarray
    components: tuple[str, ...]
    family: str
    resolution: tuple[int, int] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

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

    # -- shape -------------------------------------------------------------------------------
    @property
    def steps(self) -> int:
        return int(self.bits.shape[0])

    @property
    def blocks(self) -> int:
        return int(self.bits.shape[1])

    def recompute_fraction(self) -> float:
        """Share of (step, block, component) slots recomputed (step 0 counts as computed)."""
        eff = self.bits.copy()
        eff[0] = True
        return float(eff.mean())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CacheSchedule):
            return NotImplemented
        return (self.family == other.family and self.components == other.components
                and self.bits.shape == other.bits.shape and bool((self.bits == other.bits).all())
                and self.resolution == other.resolution and self.metrics == other.metrics
                and self.meta == other.meta)

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
        return CacheSchedule(self.bits[idx], self.components, self.family, self.resolution, {}, meta)

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

    # -- JSON --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        rows = [["".join("1" if b else "0" for b in blk) for blk in step] for step in self.bits]
        return {
            "format": FORMAT, "version": VERSION, "family": self.family, "steps": self.steps,
            "blocks": self.blocks, "components": list(self.components),
            "resolution": list(self.resolution) if self.resolution else None,
            "metrics": self.metrics, "meta": self.meta, "schedule": rows,
        }

    @classmethod
    def from_dict(cls, d: Any, source: str = "schedule") -> CacheSchedule:
        """Parse a dict made by ``to_dict`` or an ECAD file's (auto-detected); mismatches raise ``ScheduleError``."""
        from ditaccel.caching.ecad_format import from_ecad_dict, is_ecad

        if is_ecad(d):
            return from_ecad_dict(d, source)
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ScheduleError(f"{source} is not a ditaccel cache schedule (missing format {FORMAT!r})")
        if d.get("version") != VERSION:
            raise ScheduleError(
                f"{source} has schedule version {d.get('version')!r}; this ditaccel reads version {VERSION}"
            )
        try:
            comps = [str(c) for c in d["components"]]
            steps, blocks, family = int(d["steps"]), int(d["blocks"]), str(d["family"])
            rows = d["schedule"]
        except (KeyError, TypeError, ValueError) as e:
            raise ScheduleError(f"{source} lacks a valid field {e}; re-save it with CacheSchedule.save") from None
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
        return cls(bits, tuple(comps), family, tuple(res) if res else None,
                   dict(d.get("metrics") or {}), dict(d.get("meta") or {}))

    def save(self, path: str | os.PathLike) -> None:
        """Write the versioned JSON atomically (a crash never leaves half a file)."""
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike, pipe_or_transformer: Any = None) -> CacheSchedule:
        """Read a schedule file, ditaccel's or ECAD's; with a model, also check it fits (``validate_for``)."""
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except FileNotFoundError:
            raise ScheduleError(f"schedule file {os.fspath(path)} does not exist; check the path") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ScheduleError(f"{os.fspath(path)} is not JSON ({e}); pass a file written by CacheSchedule.save") \
                from None
        s = cls.from_dict(d, source=os.fspath(path))
        if pipe_or_transformer is not None:
            s.validate_for(pipe_or_transformer)
        return s

    @classmethod
    def from_ecad(cls, path: str | os.PathLike) -> CacheSchedule:
        """Read one of ECAD's schedule files (github.com/AniAggarwal/ecad, ``schedules/``)."""
        from ditaccel.caching.ecad_format import load_ecad

        return load_ecad(path)

    def to_ecad(self, path: str | os.PathLike, pipe_or_transformer: Any = None) -> None:
        """Write ECAD's JSON (PixArt/FLUX); a FLUX schedule not from FLUX.1 or ECAD needs the model."""
        from ditaccel.caching.ecad_format import save_ecad

        save_ecad(self, path, pipe_or_transformer)

    @classmethod
    def for_model(cls, pipe_or_transformer: Any, bits: np.ndarray, **kw: Any) -> CacheSchedule:
        """A schedule with the family and component names of ``pipe_or_transformer``'s adapter."""
        from ditaccel.models import get_adapter

        a = get_adapter(pipe_or_transformer)
        s = cls(bits, a.component_names, a.family, **kw)
        s.validate_for(a.transformer)
        return s
