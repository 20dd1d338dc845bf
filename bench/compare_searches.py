"""Compare search folders on one axis: the best calibration PSNR at or above each predicted speedup.

Why: each search prices its candidates with its own latency profile (measured at its start, under its load),
so their frontiers' speedups are not comparable. This re-prices every candidate that keeps calibration
adherence 1.0 with one profile (each folder's own step reuse rule) and prints a markdown table, as in
bench/results/search.md.

Run:  python bench/compare_searches.py --profile runs/bench-search/latency_profile.json "new default=runs/bench-search" ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ditaccel.caching.latency import OLDER_VERSIONS, load_profile
from ditaccel.search.genome import unpack

TARGETS = (1.1, 1.3, 1.5, 1.7, 1.85, 2.0, 2.5, 3.0)


def row(name: str, folder: Path, profile: object) -> str:
    ck = json.loads((folder / "checkpoint").read_text())
    shape = tuple(ck["fingerprint"]["shape"])
    residual = ck["fingerprint"].get("step_reuse") == "residual"
    rows = [json.loads(line) for line in (folder / "candidates.jsonl").read_text().splitlines() if line]
    full = profile.predict(np.ones(shape, bool))
    pts = [(full / profile.predict(unpack(r["genome"], shape), residual=residual), r.get("tiebreak") or 0.0)
           for r in rows if r["quality"] >= 1.0]
    cpu = sum(h.get("cpu_seconds_here", 0.0) for h in ck["history"])
    cells = [max((p for s, p in pts if s >= t), default=None) for t in TARGETS]
    return (f"| {name} | {len(rows)} | {cpu:.0f} | "
            + " | ".join("-" if c is None else f"{c:.1f}" for c in cells) + " |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", type=Path, required=True, help="latency_profile.json that prices every folder")
    ap.add_argument("searches", nargs="+", metavar="NAME=FOLDER")
    args = ap.parse_args()
    profile = load_profile(args.profile, older=OLDER_VERSIONS["components"])
    if profile is None:
        raise SystemExit(f"compare_searches: {args.profile} is not a readable latency profile")
    print("| search | evaluations | CPU s | " + " | ".join(f">= {t}x" for t in TARGETS) + " |")
    print("|---|---|---|" + "---|" * len(TARGETS))
    for spec in args.searches:
        name, _, folder = spec.rpartition("=")
        print(row(name or folder, Path(folder), profile))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
