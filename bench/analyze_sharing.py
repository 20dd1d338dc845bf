"""How much prefix sharing a search got, and how much any prefix sharing could have got.

Why: the saving of prefix sharing is set by where each new schedule first leaves every
schedule computed before it. This reads a search folder (``candidates.jsonl`` +
``checkpoint``) and reports, per generation:

- the saving as the search ran it (block-component executions, separately / done; with Ray each
  worker shares prefixes only within its chunk) and the one of the in-process trie over the whole
  generation, computed from the genomes;
- the bound for sharing with *unbounded* memory across generations: each new schedule only
  computes the steps after its longest common step-prefix with any schedule evaluated before
  it (earlier generations, or earlier in its own generation's trie order);
- where new schedules first diverge (median step, and the share diverging in the last quarter).

The counts are exact functions of the genomes: recomputed components per step = the bits set
in that step (step 0 always computes), the same counts the runtime's counters report.

Run:  python bench/analyze_sharing.py DIR [--out FILE.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ditaccel._io import atomic_write_text
from ditaccel.search.evaluate import common_steps, effective_bits
from ditaccel.search.genome import unpack


def analyze(folder: Path) -> tuple[list[dict], dict]:
    ckpt = json.loads((folder / "checkpoint").read_text())
    shape = tuple(ckpt["fingerprint"]["shape"])
    rows = [json.loads(line) for line in (folder / "candidates.jsonl").read_text().splitlines() if line.strip()]
    history = {h["generation"]: h for h in ckpt["history"]}
    seen: list[np.ndarray] = []
    out = []
    steps = shape[0]
    for gen in sorted({r["generation"] for r in rows}):
        new = [effective_bits(unpack(r["genome"], shape)) for r in rows if r["generation"] == gen]
        new.sort(key=lambda b: b.tobytes())  # the trie order the evaluator uses
        alone = ideal = trie = 0
        div = []
        for k, b in enumerate(new):
            per_step = b.reshape(steps, -1).sum(axis=1)
            d = max((common_steps(b, o) for o in seen), default=0)
            div.append(d)
            alone += int(per_step.sum())
            ideal += int(per_step[d:].sum())
            # in sorted order the previous genome shares the longest prefix within the generation
            trie += int(per_step[common_steps(b, new[k - 1]) if k else 0:].sum())
            seen.append(b)
        h = history.get(gen, {})
        out.append({"generation": gen, "new": len(new), "alone": alone, "done": h.get("components_live"),
                    "measured": h.get("saving"), "trie": alone / trie if trie else float("inf"),
                    "ideal": alone / ideal if ideal else float("inf"),
                    "median_div": float(np.median(div)), "late": float(np.mean([d >= 0.75 * steps for d in div])),
                    "seconds": h.get("seconds")})
    return out, {"shape": shape, "population": ckpt["fingerprint"]["population"]}


def render(folder: Path, rows: list[dict], info: dict) -> str:
    steps = info["shape"][0]
    lines = [
        f"Search folder `{folder}`: population {info['population']}, genome {info['shape'][0]} steps x "
        f"{info['shape'][1]} blocks x {info['shape'][2]} components.",
        "",
        "| gen | new schedules | seconds | block-comp. separately | done (as run) | saving as run "
        "| saving of the in-process trie (computed) | bound with unbounded cross-generation memory "
        f"| median first-divergence step | share diverging at step >= {int(0.75 * steps)} |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        done = f"{r['done']:,}" if r["done"] is not None else "n/a"
        meas = f"{r['measured']:.2f}x" if r["measured"] is not None else "n/a"
        secs = f"{r['seconds']:.0f}" if r["seconds"] is not None else "n/a"
        lines.append(f"| {r['generation']} | {r['new']} | {secs} | {r['alone']:,} | {done} | {meas} | {r['trie']:.2f}x "
                     f"| {r['ideal']:.2f}x "
                     f"| {r['median_div']:.1f} | {100 * r['late']:.0f} % |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--out", default=None, help="write the markdown table here (default: print it)")
    args = ap.parse_args()
    if not (args.folder / "checkpoint").is_file():
        sys.exit(f"analyze_sharing: {args.folder} holds no checkpoint; pass a folder written by `ditaccel search`")
    rows, info = analyze(args.folder)
    text = render(args.folder, rows, info)
    if args.out:
        atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
