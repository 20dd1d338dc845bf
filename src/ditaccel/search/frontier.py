"""The search's result: the non-dominated schedules, their files, the plot, and picking one.

``frontier.json`` holds ``{"points": [{"speedup", "quality", "schedule": "schedules/NAME.json",
...}], "baseline": {...}, "presets": [...], ...}``; every schedule is a ``CacheSchedule`` file
ready for ``generate --schedule``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ditaccel._io import atomic_write, atomic_write_checked_json, json_checksum, read_json
from ditaccel.caching import CacheSchedule
from ditaccel.errors import DitaccelError

FORMAT = "ditaccel.frontier"
VERSION = 1
#: What a frontier's speedup means, by the search's cost (``info["cost"]``; older frontiers: macs).
SPEEDUP_LABELS = {"latency-model": "speedup (predicted wall clock, latency model)",
                  "macs": "speedup (transformer MACs)", "latency": "speedup (transformer MACs)"}


def speedup_label(frontier: Frontier) -> str:
    """The x axis / column name of ``frontier``: which cost its speedups come from."""
    return SPEEDUP_LABELS.get(str(frontier.info.get("cost", "macs")), "speedup")


@dataclass
class FrontierPoint:
    """One non-dominated schedule: speedup over all-recompute (by the search's cost) and its quality."""

    name: str
    speedup: float
    quality: float
    schedule: CacheSchedule
    macs: int
    generation: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "speedup": round(self.speedup, 6), "quality": self.quality,
                "macs": self.macs, "generation": self.generation, "schedule": f"schedules/{self.name}.json",
                "schedule_checksum": json_checksum(self.schedule.to_dict()), "details": self.details}


@dataclass
class Frontier:
    """Non-dominated (quality, speedup) points over every evaluated candidate, fastest last."""

    points: list[FrontierPoint]
    family: str
    metric: str
    baseline: dict[str, Any]
    presets: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = None

    def table(self) -> list[dict[str, Any]]:
        """Rows for printing: name, speedup, quality, quality change vs the uncached model."""
        base_q = self.baseline.get("quality")
        return [{"name": p.name, "speedup": p.speedup, "quality": p.quality,
                 "delta": None if base_q is None else p.quality - base_q, "schedule": p.schedule}
                for p in self.points]

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "family": self.family, "metric": self.metric,
                "baseline": self.baseline, "points": [p.to_dict() for p in self.points],
                "presets": self.presets, **self.info}


def non_dominated(items: Sequence[tuple[float, float]], min_gain: float = 0.0, min_cost_gain: float = 0.0,
                  ) -> list[int]:
    """Indices of the (cost, quality) pairs no other pair beats: cheaper-or-equal and strictly better, or vice versa.

    Exact ties keep the first index, so the result is deterministic. ``min_gain`` / ``min_cost_gain``
    (relative) make it epsilon-dominance, so a frontier holds no two points a reader cannot tell
    apart: a costlier point stays only if its quality is better by more than ``min_gain``, and a
    point within ``min_cost_gain`` of the previous one's cost replaces it instead of joining it.
    """
    order = sorted(range(len(items)), key=lambda i: (items[i][0], -items[i][1], i))
    keep: list[int] = []
    best = float("-inf")
    for i in order:
        if items[i][1] > best + min_gain or not keep:
            if keep and items[i][0] <= items[keep[-1]][0] + abs(items[keep[-1]][0]) * min_cost_gain:
                keep[-1] = i
            else:
                keep.append(i)
            best = items[i][1]
    return keep


def write_frontier(frontier: Frontier, folder: str | Path, plot: bool = True) -> None:
    """Write ``frontier.json``, ``schedules/*.json`` (one per point) and ``frontier.png``, atomically."""
    folder = Path(folder)
    sched_dir = folder / "schedules"
    sched_dir.mkdir(parents=True, exist_ok=True)
    wanted = set()
    for p in frontier.points:
        p.path = sched_dir / f"{p.name}.json"
        wanted.add(p.path.name)
        p.schedule.save(p.path)
    for old in sched_dir.glob("*.json"):  # points that left the frontier
        if old.name not in wanted:
            old.unlink()
    atomic_write_checked_json(folder / "frontier.json", frontier.to_dict())
    frontier.folder = folder
    if plot:
        plot_frontier(frontier, folder / "frontier.png")


def plot_frontier(frontier: Frontier, path: str | Path) -> None:
    """Quality against speedup (by the search's cost): the frontier as a step line, the presets as labelled crosses.

    With a tie-break metric a second panel shows it on the same x axis, since the frontier's
    equal-quality points differ only there.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    second = frontier.info.get("tiebreak")
    if second:
        fig, (ax, ax2) = plt.subplots(2, 1, figsize=(6.4, 6.4), dpi=120, sharex=True, height_ratios=(3, 2))
    else:
        fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    xs = [p.speedup for p in frontier.points]
    ys = [p.quality for p in frontier.points]
    ax.step(xs, ys, where="pre", color="tab:blue", alpha=0.5)
    ax.scatter(xs, ys, color="tab:blue", zorder=3, label="ECAD frontier")
    if frontier.presets:
        px = [p["speedup"] for p in frontier.presets]
        py = [p["quality"] for p in frontier.presets]
        ax.scatter(px, py, marker="x", color="tab:orange", zorder=2, label="presets")
        for p in frontier.presets:
            if str(p["name"]).startswith("fora("):
                ax.annotate(p["name"], (p["speedup"], p["quality"]), fontsize=6, alpha=0.7,
                            xytext=(3, 3), textcoords="offset points")
    if frontier.baseline.get("quality") is not None:
        ax.axhline(frontier.baseline["quality"], color="grey", ls="--", lw=0.8, label="no cache")
    ax.set_ylabel(frontier.metric)
    ax.set_title(f"{frontier.family}: quality vs speedup")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if second:
        pts = [p for p in frontier.points if second in p.details]
        ax2.plot([p.speedup for p in pts], [p.details[second] for p in pts], "o-", color="tab:blue", ms=4,
                 alpha=0.8, label="ECAD frontier")
        pre = [p for p in frontier.presets if second in p]
        ax2.scatter([p["speedup"] for p in pre], [p[second] for p in pre], marker="x", color="tab:orange",
                    label="presets")
        ax2.set_ylabel(f"{second} vs no cache (tie-break)")
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=8)
        ax2.set_xlabel(f"{speedup_label(frontier)}, x")
    else:
        ax.set_xlabel(f"{speedup_label(frontier)}, x")
    fig.tight_layout()

    def _w(tmp: str) -> None:
        fig.savefig(tmp, format="png")

    try:
        atomic_write(path, _w)
    finally:
        plt.close(fig)


_FRONTIER_FIX = "rerun `ditaccel search --resume` on the folder, or search again"


def load_frontier(folder: str | Path) -> Frontier:
    """Read a search folder's ``frontier.json`` and its schedule files; one-line errors otherwise."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DitaccelError(f"{folder} is a file; pass the folder holding frontier.json written by `ditaccel search`")
    path = folder / "frontier.json"
    if not path.exists():
        raise DitaccelError(f"{folder} holds no frontier.json; pass a folder written by `ditaccel search`")
    d = read_json(path, "frontier", _FRONTIER_FIX)
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        got = d.get("format") if isinstance(d, dict) else type(d).__name__
        raise DitaccelError(f"{path} is not a ditaccel frontier (format {got!r})")
    if d.get("version", VERSION) != VERSION:
        raise DitaccelError(f"{path} has frontier version {d.get('version')!r}; this ditaccel reads {VERSION}")
    bad = next((k for k, t in (("family", str), ("metric", str), ("baseline", dict), ("points", list),
                               ("presets", list)) if k in d and not isinstance(d[k], t)), None)
    if bad is not None or "family" not in d or "points" not in d:
        raise DitaccelError(f"{path} has a malformed {bad or 'header'!r} field; {_FRONTIER_FIX}")
    second = d.get("tiebreak")
    if second is not None and not isinstance(second, str):
        raise DitaccelError(f"{path} has a malformed 'tiebreak' field; {_FRONTIER_FIX}")
    base = d.get("baseline", {}).get("quality")
    if base is not None and not _number(base):
        raise DitaccelError(f"{path} has a malformed baseline quality; {_FRONTIER_FIX}")
    for i, p in enumerate(d.get("presets", [])):
        if not (isinstance(p, dict) and isinstance(p.get("name"), str) and _number(p.get("speedup"))
                and _number(p.get("quality")) and (second not in p or _number(p[second]))):
            raise DitaccelError(f"{path} preset {i} is malformed; {_FRONTIER_FIX}")
    points = [_load_point(folder, path, i, p) for i, p in enumerate(d["points"])]
    if second is not None and not all(_number(p.details.get(second, 0.0)) for p in points):
        raise DitaccelError(f"{path} has a malformed {second} value in a point's details; {_FRONTIER_FIX}")
    known = {"format", "version", "family", "metric", "baseline", "points", "presets"}
    return Frontier(points, d["family"], d.get("metric", "?"), d.get("baseline", {}), d.get("presets", []),
                    {k: v for k, v in d.items() if k not in known}, folder)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _load_point(folder: Path, path: Path, i: int, p: Any) -> FrontierPoint:
    """One ``points`` entry of ``frontier.json`` with its schedule file, every field type-checked."""
    def bad(what: str) -> DitaccelError:
        return DitaccelError(f"{path} point {i} has a malformed {what}; {_FRONTIER_FIX}")

    if not isinstance(p, dict):
        raise bad("entry")
    for key, kinds in (("name", str), ("speedup", (int, float)), ("quality", (int, float)), ("macs", int),
                       ("generation", int), ("schedule", str), ("details", dict)):
        if (key in p or key not in ("generation", "details")) and (
                not isinstance(p.get(key), kinds) or isinstance(p.get(key), bool)):
            raise bad(repr(key))
    if not math.isfinite(p["speedup"]) or p["speedup"] <= 0 or not p["name"]:
        raise bad("'speedup' or 'name'")
    rel = Path(p["schedule"])
    if rel.is_absolute() or ".." in rel.parts:
        raise bad("'schedule' path (it must stay inside the search folder)")
    sp = folder / rel
    sched = CacheSchedule.load(sp)
    want = p.get("schedule_checksum")
    if want is not None and want != json_checksum(sched.to_dict()):
        raise DitaccelError(f"{sp} is not the schedule {path} recorded for {p['name']}; {_FRONTIER_FIX}")
    return FrontierPoint(p["name"], float(p["speedup"]), float(p["quality"]), sched, p["macs"],
                         p.get("generation", 0), dict(p.get("details", {})), sp)


def parse_speedup(text: str | float) -> float:
    """'2.5x' or '2.5' -> 2.5."""
    try:
        value = float(str(text).strip().lower().rstrip("x"))
    except ValueError:
        raise DitaccelError(f"cannot read speedup {text!r}; write it like 2.5x") from None
    if not (math.isfinite(value) and value > 0):
        raise DitaccelError(f"speedup must be a positive number, got {text!r}; write it like 2.5x")
    return value


def select(frontier: Frontier | str | Path, speedup: float | str | None = None, min_quality: float | None = None,
           out: str | os.PathLike | None = None) -> FrontierPoint:
    """Pick a frontier point and (with ``out``) write its schedule file.

    ``speedup``: the point closest to it (ties go to the better quality). ``min_quality``: the
    fastest point whose quality is at least that. Exactly one of the two.
    """
    if not isinstance(frontier, Frontier):
        frontier = load_frontier(frontier)
    if (speedup is None) == (min_quality is None):
        raise DitaccelError("pass exactly one of speedup (e.g. 2.5x) or min_quality")
    if not frontier.points:
        raise DitaccelError("the frontier is empty; run more generations")
    if speedup is not None:
        target = parse_speedup(speedup)
        point = min(frontier.points, key=lambda p: (abs(p.speedup - target), -p.quality))
    else:
        ok = [p for p in frontier.points if p.quality >= float(min_quality)]
        if not ok:
            best = max(p.quality for p in frontier.points)
            raise DitaccelError(f"no frontier point reaches quality {min_quality}; the best is {best:.4g}")
        point = max(ok, key=lambda p: (p.speedup, p.quality))
    if out is not None:
        sched = CacheSchedule(point.schedule.bits, point.schedule.components, point.schedule.family,
                              point.schedule.resolution, dict(point.schedule.metrics),
                              {**point.schedule.meta, "selected_from": str(frontier.folder or ""),
                               "frontier_point": point.name}, point.schedule.step_reuse)
        sched.save(out)
    return point
