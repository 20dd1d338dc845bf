"""Reliability counts for the README: seeded faults in every file format, and interruptions.

    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/reliability.py [--per-kind 40] [--json-faults 60]

Part 1 damages one file per case (``ditaccel.testing.faults``: truncation and bit flips at seeded
offsets, empty, binary, folder instead of file, missing, wrong JSON types per field with and
without the checksum) and runs the command that reads it, in-process on the bundled model.
Part 2 interrupts ``generate`` and ``search`` (Ctrl-C, as KeyboardInterrupt at the k-th batch or
generation), checks the message and the folder, resumes, and compares with an uninterrupted run.
Writes bench/results/reliability.md.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

from ditaccel._machine import machine_description
from ditaccel.testing import faults as F

RESULTS = Path(__file__).resolve().parent / "results" / "reliability.md"


def fault_cases(ws: Path, per_kind: int, n_json: int, rng: random.Random) -> list[tuple[F.Target, F.Fault]]:
    cases = []
    for t in F.TARGETS:
        size = t.path(ws).stat().st_size
        offsets = sorted({int(i * size / per_kind) for i in range(per_kind)})  # evenly spread truncations
        cases += [(t, F.Fault("truncate", offset=o)) for o in offsets]
        cases += [(t, F.Fault("flip", offset=rng.randrange(size), bit=rng.randrange(8))) for _ in range(per_kind)]
        cases += [(t, F.Fault(k, offset=rng.randrange(1 << 30))) for k in ("empty", "binary", "directory", "missing")]
        if t.signed and not t.file.endswith(".safetensors"):
            js = F.json_faults(t.path(ws))
            cases += [(t, f) for f in rng.sample(js, min(n_json, len(js)))]
    return cases


def run_faults(pipe, ws: Path, cases, tmp: Path) -> tuple[dict, list[str]]:
    table: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    bad = []
    for i, (t, f) in enumerate(cases):
        v = F.run_case(ws, t, f, tmp / f"c{i}", pipe).verdict()
        table[t.name][v.split(":")[0]] += 1
        if v.startswith("BAD"):
            bad.append(f"{t.name} {f}: {v}")
    return table, bad


def _quiet_main(argv: list[str]) -> tuple[int, str]:
    from ditaccel.cli import main

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, err.getvalue()


@contextlib.contextmanager
def _interrupt_at(obj, name: str, k: int):
    """Raise KeyboardInterrupt at the k-th call of obj.name (1-based), as Ctrl-C would there."""
    real, calls = getattr(obj, name), [0]

    def wrapped(*a, **kw):
        calls[0] += 1
        if calls[0] == k:
            raise KeyboardInterrupt
        return real(*a, **kw)

    setattr(obj, name, wrapped)
    try:
        yield
    finally:
        setattr(obj, name, real)


def run_interrupts(pipe, tmp: Path) -> list[tuple[str, bool, str]]:
    """(case, passed, note) for generate interrupted at batch k and search at generation k."""
    import ditaccel.pipeline as pl
    from ditaccel.search.backend import LocalBackend

    rows = []
    gen = ["generate", "--prompt", F.PROMPTS[0], "--seeds", "0-3", "--batch-size", "1", "--steps", "2"]
    with F.using_pipe(pipe):
        assert _quiet_main([*gen, "--out", str(tmp / "g-ref")])[0] == 0
        ref = {p.name: p.read_bytes() for p in (tmp / "g-ref").glob("*.png")}
        for k in range(1, 5):
            out = tmp / f"g{k}"
            with _interrupt_at(pl, "generate_images", k):
                rc, err = _quiet_main([*gen, "--out", str(out)])
            said = f"kept {k - 1} new images" in err and "--resume" in err
            rc2, _ = _quiet_main([*gen, "--out", str(out), "--resume"])
            same = {p.name: p.read_bytes() for p in out.glob("*.png")} == ref
            rows.append((f"generate, Ctrl-C at batch {k} of 4", rc == 130 and said and rc2 == 0 and same,
                         err.strip().splitlines()[-1][:120]))
        (tmp / "p.txt").write_text("\n".join(F.PROMPTS) + "\n")
        search = ["search", "--prompts", str(tmp / "p.txt"), "--steps", "2", "--population", "4",
                  "--generations", "3"]
        assert _quiet_main([*search, "--out", str(tmp / "s-ref")])[0] == 0
        ref_f = _points(tmp / "s-ref")
        for k in range(1, 4):
            out = tmp / f"s{k}"
            with _interrupt_at(LocalBackend, "evaluate", k):
                rc, err = _quiet_main([*search, "--out", str(out)])
            said = ("kept" in err or "no generation finished" in err) and "rerun" in err
            rc2, _ = _quiet_main([*search, "--out", str(out), "--resume"])
            rows.append((f"search, Ctrl-C in generation {k} of 3", rc == 130 and said and rc2 == 0
                         and _points(out) == ref_f, err.strip().splitlines()[-1][:120]))
    return rows


def _points(folder: Path) -> list:
    return [(p["name"], p["speedup"], p["quality"]) for p in json.loads((folder / "frontier.json").read_text())["points"]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-kind", type=int, default=40, help="truncations and bit flips per file")
    ap.add_argument("--json-faults", type=int, default=60, help="wrong-type field edits per JSON file")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from ditaccel.pipeline import load_pipeline

    pipe = load_pipeline()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ws = F.build_workspace(tmp / "pristine", pipe)
        cases = fault_cases(ws, args.per_kind, args.json_faults, random.Random(args.seed))
        table, bad = run_faults(pipe, ws, cases, tmp)
        inter = run_interrupts(pipe, tmp / "int")
    write_report(table, bad, inter, len(cases), time.perf_counter() - t0, args)
    print(RESULTS.read_text())
    return 1 if bad or not all(ok for _, ok, _ in inter) else 0


def write_report(table, bad, inter, n_cases, seconds, args) -> None:
    kinds = ["clean error", "intact", "hand edit accepted", "BAD"]
    total = collections.Counter()
    for c in table.values():
        total.update(c)
    lines = [
        "# Reliability: faults injected into every file ditaccel reads, and interruptions",
        "",
        f"Command: `PYTHONPATH=src OMP_NUM_THREADS=1 python bench/reliability.py --per-kind {args.per_kind} "
        f"--json-faults {args.json_faults} --seed {args.seed}` ({seconds:.0f} s).",
        f"Machine: {machine_description()} (the 2 cores were shared with other jobs; times are not the point here).",
        "",
        "Each case copies a pristine workspace made by ditaccel on the bundled model, damages one file and runs the "
        "command that reads it, in-process (`ditaccel.testing.faults.run_case`). **clean error**: exit 2, exactly one "
        "`ditaccel: error:` line, no traceback, no file changed anywhere. **intact**: the fault left the content as "
        "the reader sees it (e.g. a flip of whitespace) and the command succeeded. **hand edit accepted**: an edit "
        "without checksum (a user's file or a dropped checksum) that the reader's own checks allow, with nothing "
        "outside the output folder changed. **BAD**: anything else (traceback, exit 0 on damage, files changed on "
        "error).",
        "",
        "| file (command) | cases | " + " | ".join(kinds) + " |",
        "|---|---:|" + "---:|" * len(kinds),
    ]
    for name, c in table.items():
        lines.append(f"| {name} | {sum(c.values())} | " + " | ".join(str(c.get(k, 0)) for k in kinds) + " |")
    lines.append(f"| **all** | **{n_cases}** | " + " | ".join(f"**{total.get(k, 0)}**" for k in kinds) + " |")
    lines += ["", "Interruptions (Ctrl-C delivered as KeyboardInterrupt at the k-th batch or generation; then the "
              "same command with `--resume`, compared with an uninterrupted run):", "",
              "| case | message, folder, resume equal to uninterrupted | what it said |", "|---|---|---|"]
    lines += [f"| {c} | {'yes' if ok else 'NO'} | {note} |" for c, ok, note in inter]
    if bad:
        lines += ["", "BAD cases:", *[f"- {b}" for b in bad]]
    RESULTS.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
