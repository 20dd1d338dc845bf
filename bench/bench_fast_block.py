"""The block fast path on and off: the same schedules, timed in one run with interleaved repeats.

Why: with component hooks only, a cached component's block still runs the norm and adaLN
modulation that feed it; the fast path (``apply_schedule(..., fast_path=True)``, the default)
skips them. This measures what that buys on the bundled model: FORA(2..4), seeded random and
mixed schedules and points of a searched (ECAD) frontier, each timed with the fast path off and
on, alternately, and checks that both give the same images.

Run:  python bench/bench_fast_block.py --batch 16 --steps 20 --repeats 5
Writes bench/results/fast_block.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ditaccel._io import atomic_write_text
from ditaccel._machine import machine_description
from ditaccel.caching import CacheSchedule, apply_schedule, presets, schedule_macs
from ditaccel.caching.latency import PROFILE_PROMPT
from ditaccel.models import get_adapter, image_size
from ditaccel.pipeline import generate_images

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_latency import frontier_schedules, load, mixed_schedule  # noqa: E402

FRONTIER = HERE / "results" / "search_long72.tar.gz"


def schedules(pipe: object, steps: int, frontier_points: int) -> list[tuple[str, CacheSchedule]]:
    """FORA(2..4), a seeded random and a mixed schedule, and points spread over a searched frontier."""
    a = get_adapter(pipe)
    shape = (steps, a.num_blocks, len(a.component_names))
    out = [("none", presets.none(pipe, steps=steps))]
    out += [(f"fora({n})", presets.fora(pipe, n, steps=steps)) for n in (2, 3, 4)]
    rng = np.random.default_rng(7)
    out.append(("random p=0.35", CacheSchedule.for_model(pipe, rng.random(shape) < 0.35)))
    out.append(mixed_schedule(pipe, steps, rng))
    if frontier_points and FRONTIER.is_file():
        out += frontier_schedules(str(FRONTIER), frontier_points, steps)
    return out


def time_once(pipe: object, kw: dict, batch: int, s: CacheSchedule, fast: bool) -> tuple[float, float, list]:
    """(thread CPU seconds, wall seconds, images) of one call."""
    with apply_schedule(pipe, s, fast_path=fast):
        t0, c0 = time.perf_counter(), time.thread_time()
        imgs = generate_images(pipe, [PROFILE_PROMPT] * batch, list(range(batch)), batch_size=batch, **kw)
        return time.thread_time() - c0, time.perf_counter() - t0, imgs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16, help="images per call (CFG doubles the transformer batch)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds (each: every schedule, off and on)")
    ap.add_argument("--frontier-points", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "fast_block.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    pipe, kw = load("bundled", args.steps)
    scheds = schedules(pipe, args.steps, args.frontier_points)
    times: dict[tuple[str, bool], list[tuple[float, float]]] = {(n, f): [] for n, _ in scheds for f in (False, True)}
    same: dict[str, bool] = {}
    loads: list[float] = []
    time_once(pipe, kw, args.batch, scheds[1][1], True)  # warm-up
    for r in range(args.repeats):
        k = r % len(scheds)
        for name, s in scheds[k:] + scheds[:k]:  # rotated each round; off/on order alternates per round
            imgs = {}
            for fast in ((False, True) if r % 2 == 0 else (True, False)):
                cpu, wall, imgs[fast] = time_once(pipe, kw, args.batch, s, fast)
                times[(name, fast)].append((cpu, wall))
            same[name] = same.get(name, True) and all(np.array_equal(a, b) for a, b in
                                                      zip(imgs[False], imgs[True], strict=True))
        loads.append(os.getloadavg()[0])
        print(f"round {r + 1}/{args.repeats} done (load {loads[-1]:.1f})", flush=True)
        text = report(args, pipe, kw, scheds, times, same, loads, r + 1)
        atomic_write_text(Path(args.out), text)  # after every round: an interrupted run keeps what it measured
    print(text)
    return 0


def _spread(xs: list[float]) -> float:
    return (max(xs) - min(xs)) / statistics.median(xs)


def report(args: argparse.Namespace, pipe: object, kw: dict, scheds: list, times: dict, same: dict,
           loads: list[float], rounds: int) -> str:
    h, w = image_size(pipe, kw)
    macs = {n: schedule_macs(pipe, s, h, w, batch=2 * args.batch) for n, s in scheds}
    med = {key: statistics.median(x[0] for x in v) for key, v in times.items()}
    rows = []
    for name, _ in scheds:
        off, on = med[(name, False)], med[(name, True)]
        ratios = [a[0] / b[0] for a, b in zip(times[(name, True)], times[(name, False)], strict=True)]
        spread = {f: _spread([x[0] for x in times[(name, f)]]) for f in (False, True)}
        rows.append(f"| {name} | {macs['none'] / macs[name]:.2f}x | {off:.3f} ({spread[False]:.0%}) | "
                    f"{on:.3f} ({spread[True]:.0%}) | {med[('none', False)] / off:.2f}x | "
                    f"{med[('none', False)] / on:.2f}x | {statistics.median(ratios):.3f} "
                    f"[{min(ratios):.3f}, {max(ratios):.3f}] | {'yes' if same[name] else 'NO'} |")
    cmd = (f"python bench/bench_fast_block.py --batch {args.batch} --steps {args.steps} --repeats {args.repeats} "
           f"--frontier-points {args.frontier_points}")
    return "\n".join([
        "# Block fast path: cached work skipped at block level, on and off",
        "",
        "With a schedule applied, a PixArt block whose components are cached at a step skips the norm and "
        "adaLN modulation that feed only those components (`cached_block_forward` of the adapter; "
        "`apply_schedule(..., fast_path=False)` is the previous, component-hooks-only path). Same bits, same "
        "images: the last column checks them (every round, uint8 images equal).",
        "",
        f"- Machine: {machine_description()}. The 2 cores were shared with six other jobs during the run: "
        f"load average (1 min) per round {', '.join(f'{x:.1f}' for x in loads)}.",
        f"- Command: `{cmd}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).",
        f"- Model: the bundled model (12 blocks, hidden 128, {h} px), {args.steps} steps, {args.batch} images per "
        "call with CFG (transformer batch "
        f"{2 * args.batch}), whole pipeline (text encoder, denoising, VAE decode), fp32, 1 thread.",
        f"- Each schedule {rounds} times off and {rounds} times on, interleaved (schedule order rotated each round, "
        "off/on order alternated); thread CPU time (`time.thread_time()`), median, spread (max - min) / median in "
        "brackets. Speedups are against the median `none` with the fast path off. on/off: the median of the "
        "per-round ratios of the thread CPU time, [min, max].",
        "",
        "| schedule | MACs speedup | off s | on s | off: speedup | on: speedup | on/off | same images |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ])


if __name__ == "__main__":
    sys.exit(main())
