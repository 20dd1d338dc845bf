"""Compare finished search folders: frontier density, hypervolume, cost, and which frontier covers which.

Why: gap filling (``SearchConfig.fill``) is meant to make the default frontier dense across
1.05x-3.2x predicted speedup without losing strength. This reads searches already run (e.g. by
``bench/bench_search.py --fill F --out DIR``) and prints, per folder: evaluations, CPU seconds in
generations, frontier points in the band and the widest step between neighbours, hypervolume
(``bench_hypervolume.objectives``: MACs cost; and the same with the predicted speedup as cost),
and for each pair how many of one frontier's points the other dominates or equals.

Run:  python bench/bench_fill.py DIR [DIR ...]   (prints a markdown table)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_hypervolume import REF, hypervolume, objectives  # noqa: E402

BAND = (1.05, 3.2)


def _rows(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (folder / "candidates.jsonl").read_text(encoding="utf-8").splitlines()]


def hv_predicted(rows: list[dict[str, Any]]) -> float:
    """Hypervolume with 1 / (the frontier's own speedup: predicted wall clock) as the cost."""
    from pymoo.indicators.hv import HV

    pts = np.array([(1.0 / r["speedup"], *objectives(r)[1:]) for r in rows if r["feasible"]], dtype=float)
    return float(HV(ref_point=np.array(REF))(pts)) if len(pts) else 0.0


def density(xs: list[float]) -> tuple[int, float, tuple[float, float]]:
    inside = sorted(x for x in xs if BAND[0] <= x <= BAND[1])
    ends = [max([x for x in xs if x < BAND[0]], default=1.0), *inside,
            min([x for x in xs if x > BAND[1]], default=BAND[1])]
    a, b = max(zip(ends, ends[1:], strict=False), key=lambda ab: ab[1] / ab[0])
    return len(inside), b / a - 1, (a, b)


def covered(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> int:
    """How many of frontier ``a``'s points some point of ``b`` matches or beats: at least as fast, and at
    least as good on the main metric and the tie-break (PSNR)."""
    def ge(p: dict[str, Any], q: dict[str, Any]) -> bool:
        return (p["speedup"] >= q["speedup"] - 1e-9 and p["quality"] >= q["quality"] - 1e-12
                and p["details"].get("psnr", 0.0) >= q["details"].get("psnr", 0.0) - 1e-9)

    return sum(any(ge(p, q) for p in b) for q in a)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="+", type=Path)
    args = ap.parse_args()
    front = {d: json.loads((d / "frontier.json").read_text(encoding="utf-8")) for d in args.dirs}
    print("| search | fill | evaluations | CPU s in generations | frontier points | points in "
          f"{BAND[0]}x-{BAND[1]}x | widest step | HV (MACs) | HV (predicted speed) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for d in args.dirs:
        f, rows = front[d], _rows(d)
        hist = json.loads((d / "checkpoint").read_text(encoding="utf-8"))["history"]
        n, widest, (lo, hi) = density([p["speedup"] for p in f["points"]])
        print(f"| `{d}` | {f.get('fill', 0)} | {len(rows)} | {sum(h.get('cpu_seconds_here', 0) for h in hist):.0f} | "
              f"{len(f['points'])} | {n} | {widest * 100:.0f}% ({lo:.2f}x -> {hi:.2f}x) | {hypervolume(rows):.4f} | "
              f"{hv_predicted(rows):.4f} |")
    print()
    for a in args.dirs:
        for b in args.dirs:
            if a != b:
                pa, pb = front[a]["points"], front[b]["points"]
                print(f"- `{b}` matches or beats {covered(pa, pb)} of the {len(pa)} frontier points of `{a}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
