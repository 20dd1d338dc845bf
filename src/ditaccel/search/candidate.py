"""One evaluated schedule of the search (``Candidate``) and the ``candidates.jsonl`` file that holds them.

Why a dataclass: the engine, the frontier, the checkpoint replay and the benches all read the
same ~15 fields; one typed record with one JSON form keeps them in step. The JSON form is the
one ``candidates.jsonl`` has always had (same keys, same order, optional keys absent when
unused), so folders written before this class still resume.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ditaccel._io import checked_jsonl_line, read_checked_jsonl
from ditaccel.errors import DitaccelError

#: names of candidates that are not a named preset or an ``--init`` point
UNNAMED = ("none", "mutant", "offspring", "gapfill")


@dataclass
class Candidate:
    """A genome, what it scored and what it costs.

    ``objectives`` is the GA's [loss, cost] (loss = 1 - quality, plus the weighted tie-break);
    ``constraint`` <= 0 means feasible (it reuses something); ``speedup`` is over all-recompute by
    the search's cost (predicted wall clock under the latency model, else MACs); ``cost`` counts
    block-component evaluations (``components`` done with prefix sharing, ``components_alone``
    if generated separately).
    """

    genome: str
    generation: int
    name: str
    quality: float
    macs: int
    speedup: float
    objectives: list[float]
    constraint: float
    feasible: bool
    cost: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)
    predicted_s: float | None = None
    speedup_macs: float | None = None
    tiebreak: float | None = None
    latency_s: float | None = None

    @property
    def loss(self) -> float:
        return float(self.objectives[0])

    @property
    def price(self) -> float:
        """The GA's cost objective (seconds predicted, GMACs or seconds measured)."""
        return float(self.objectives[1])

    def to_json(self) -> dict[str, Any]:
        """The ``candidates.jsonl`` row, keys in the order the file has always used."""
        row: dict[str, Any] = {"genome": self.genome, "generation": self.generation, "name": self.name,
                               "quality": self.quality, "macs": self.macs, "speedup": self.speedup}
        if self.predicted_s is not None:
            row.update(predicted_s=self.predicted_s, speedup_macs=self.speedup_macs)
        if self.tiebreak is not None:
            row["tiebreak"] = self.tiebreak
        row.update(objectives=list(self.objectives), constraint=self.constraint, feasible=self.feasible,
                   cost=self.cost, details=self.details)
        if self.latency_s is not None:
            row["latency_s"] = self.latency_s
        return row

    @classmethod
    def from_json(cls, r: dict[str, Any]) -> Candidate:
        """A row checked by ``valid_row``."""
        opt = {k: r[k] for k in ("predicted_s", "speedup_macs", "tiebreak", "latency_s") if k in r}
        return cls(r["genome"], r["generation"], r["name"], r["quality"], r["macs"], r["speedup"],
                   list(r["objectives"]), r["constraint"], r["feasible"], r["cost"], dict(r.get("details", {})),
                   **opt)


_NUM = (int, float)
_FIELDS = {"genome": str, "generation": int, "name": str, "quality": _NUM, "macs": int, "speedup": _NUM,
           "constraint": _NUM, "feasible": bool, "cost": dict}


def _num(v: Any) -> bool:
    return isinstance(v, _NUM) and not isinstance(v, bool)


def valid_row(r: dict[str, Any]) -> bool:
    """The fields a resumed search reads, with their types (rows written before checksums have no other guard)."""
    return (all(isinstance(r.get(k), t) and (t is bool or not isinstance(r.get(k), bool)) for k, t in _FIELDS.items())
            and isinstance(r.get("objectives"), list) and len(r["objectives"]) == 2 and all(map(_num, r["objectives"]))
            and all(_num(r["cost"].get(k)) for k in ("components", "components_alone"))
            and isinstance(r.get("details", {}), dict) and _num(r.get("tiebreak", 0.0)) and r["macs"] > 0
            and all(_num(r.get(k, 0.0)) for k in ("predicted_s", "speedup_macs", "latency_s")))


def read_candidates(out: Path, n: int, shape: tuple[int, int, int]) -> list[Candidate]:
    """The first ``n`` candidates of ``out/candidates.jsonl`` (a torn last line after them is ignored)."""
    path = out / "candidates.jsonl"
    fix = f"remove {out} (or pick another --out) and start again"
    rows = read_checked_jsonl(path, "candidates file", fix, limit=n) if path.exists() else []
    if len(rows) < n:
        raise DitaccelError(f"{path} has {len(rows)} candidates but the checkpoint counts {n}; {fix}")
    hex_len = 2 * -(-int(np.prod(shape)) // 8)
    bad = next((i for i, r in enumerate(rows) if not valid_row(r) or len(r["genome"]) != hex_len
                or set(r["genome"]) - set("0123456789abcdef")), None)
    if bad is not None:
        raise DitaccelError(f"{path} candidate {bad + 1} is malformed; {fix}")
    return [Candidate.from_json(r) for r in rows]


def jsonl(rows: list[Candidate]) -> str:
    """``rows`` as checksummed ``candidates.jsonl`` lines."""
    return "".join(checked_jsonl_line(c.to_json()) for c in rows)


def append_candidates(path: Path, rows: list[Candidate]) -> None:
    """Append ``rows`` durably (each line carries its checksum, so a torn last line is detected on resume)."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(jsonl(rows))
        fh.flush()
        os.fsync(fh.fileno())
