"""Predicted vs measured whole-pipeline time of cache schedules: does the latency model agree with the clock?

Why: the search ranks schedules by ``LatencyProfile.predict`` (``--cost latency-model``). This
profiles a pipeline once, then times >= 10 schedules spread over the speed range (presets, random
and mixed schedules) in interleaved rounds, and compares each median with the prediction, next to
what the MACs ratio would have claimed.

Models: ``bundled`` (the shipped 12-block, hidden-128 PixArt, 128 px, 20 steps) and ``pixart``
(full-size PixArt-alpha 256 geometry with random weights, the pipeline of bench_speed.py).

Run:  python bench/bench_latency.py --model bundled --repeats 5
      python bench/bench_latency.py --model pixart --steps 8 --repeats 2 --profile-rounds 1 --quick
Each run replaces its model's section of bench/results/latency.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ditaccel._io import atomic_write_text
from ditaccel._machine import machine_description
from ditaccel.caching import CacheSchedule, apply_schedule, presets, schedule_macs
from ditaccel.caching.latency import PROFILE_PROMPT, profile_latency
from ditaccel.models import get_adapter, image_size
from ditaccel.pipeline import generate_images, pipeline_call_kwargs

HERE = Path(__file__).resolve().parent


def load(model: str, steps: int | None) -> tuple[object, dict]:
    if model == "bundled":
        from ditaccel.pipeline import load_pipeline

        pipe = load_pipeline()
        kw = pipeline_call_kwargs(pipe, num_inference_steps=steps)
    else:
        sys.path.insert(0, str(HERE))
        from bench_speed import TEXT_LEN, build_pipeline, build_transformer

        pipe = build_pipeline(build_transformer())
        kw = pipeline_call_kwargs(pipe, num_inference_steps=steps or 5, guidance_scale=4.5, height=256, width=256,
                                  use_resolution_binning=False, max_sequence_length=TEXT_LEN)
    kw.pop("output_type", None)
    return pipe, kw


def schedules(pipe: object, steps: int) -> list[tuple[str, CacheSchedule]]:
    """Presets and random / mixed schedules spread from ~1.1x to the fastest the model allows."""
    a = get_adapter(pipe)
    shape = (steps, a.num_blocks, len(a.component_names))
    out = [("none", presets.none(pipe, steps=steps)), ("fora(2)", presets.fora(pipe, 2, steps=steps)),
           ("fora(3)", presets.fora(pipe, 3, steps=steps)), ("fora(5)", presets.fora(pipe, 5, steps=steps)),
           ("fora_attention(2)", presets.fora_attention(pipe, 2, steps=steps)),
           ("tgate(2)", presets.tgate(pipe, max(1, steps // 4), steps=steps)),
           ("delta_dit(2)", presets.delta_dit(pipe, 2, steps=steps))]
    rng = np.random.default_rng(7)
    for p in (0.85, 0.6, 0.35, 0.15, 0.05):
        out.append((f"random p={p}", CacheSchedule.for_model(pipe, rng.random(shape) < p)))
    out.append(mixed_schedule(pipe, steps, rng))
    cached = np.zeros(shape, dtype=bool)
    out.append(("all cached after step 0", CacheSchedule.for_model(pipe, cached)))
    if a.stack_residual:  # residual step reuse: whole-stack skips and FirstBlockCache-like tail skips
        early = presets.early_skip(pipe, max(1, steps // 10), 2, steps=steps)
        tail = presets.early_skip(pipe, max(1, steps // 10), 2, steps=steps, first_block=True)
        for name, base in (("fora(2)", out[1][1]), ("fora(3)", out[2][1]), ("early_skip", early),
                           ("early_skip block 0 kept", tail)):
            out.append((f"{name} residual", CacheSchedule.for_model(pipe, base.bits, step_reuse="residual")))
    return out


def frontier_schedules(folder: str, count: int, steps: int) -> list[tuple[str, CacheSchedule]]:
    """``count`` points spread over a search folder's frontier (slowest to fastest), resampled to ``steps``.

    ``folder`` may be a .tar.gz of a search folder (e.g. bench/results/search_long72.tar.gz).
    """
    from ditaccel.search import load_frontier

    if folder.endswith(".tar.gz"):
        import tarfile
        import tempfile

        tmp = tempfile.mkdtemp(prefix="bench_latency_")
        with tarfile.open(folder) as tar:
            tar.extractall(tmp, filter="data")
        folder = str(next(Path(tmp).rglob("frontier.json")).parent)
    pts = load_frontier(folder).points
    picks = sorted({round(i * (len(pts) - 1) / max(1, count - 1)) for i in range(count)}) if pts else []
    return [(f"frontier {pts[i].name}", pts[i].schedule.resample(steps)) for i in picks]


def time_once(pipe: object, kw: dict, batch: int, s: CacheSchedule) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    with apply_schedule(pipe, s):
        t0, c0 = time.perf_counter(), time.process_time()
        generate_images(pipe, [PROFILE_PROMPT] * batch, list(range(batch)), batch_size=batch, **kw)
        return time.perf_counter() - t0, time.process_time() - c0



def mixed_schedule(pipe: Any, steps: int, rng: np.random.Generator) -> tuple[str, CacheSchedule]:
    """Attention every 3rd step, feed-forwards at random in half the steps: an ECAD-like mixed schedule."""
    a = get_adapter(pipe)
    mixed = np.ones((steps, a.num_blocks, len(a.component_names)), dtype=bool)
    for c, name in enumerate(a.component_names):
        if name in a.attention_components:
            mixed[:, :, c] = (np.arange(steps) % 3 == 0)[:, None]
        else:
            mixed[:, :, c] = rng.random((steps, a.num_blocks)) < 0.5
    return "mixed (attn every 3, ff random 1/2)", CacheSchedule.for_model(pipe, mixed)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=("bundled", "pixart"), default="bundled")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: 20 bundled, 5 pixart)")
    ap.add_argument("--batch", type=int, default=1, help="images per call (CFG doubles the transformer batch)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds per schedule")
    ap.add_argument("--profile-rounds", type=int, default=2)
    ap.add_argument("--frontier", default=None, metavar="DIR",
                    help="also time points of this search's frontier (a folder or its .tar.gz)")
    ap.add_argument("--frontier-points", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="11 schedules instead of 14 (for full-size geometry on CPU)")
    ap.add_argument("--out", default=None, help="markdown file whose MODEL section to (re)write "
                                               "(default bench/results/latency.md)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    pipe, kw = load(args.model, args.steps)
    steps = int(kw["num_inference_steps"])
    c0 = time.process_time()
    prof = profile_latency(pipe, kw, batch=args.batch, rounds=args.profile_rounds)
    prof_cpu = time.process_time() - c0
    print(f"profiled in {prof.seconds:.1f} s: step {prof.step_s * 1e3:.2f} ms, fixed {prof.fixed_s:.3f} s, "
          f"scale {prof.scale:.2f}", flush=True)
    h, w = image_size(pipe, kw)
    text_len = kw.get("max_sequence_length")
    scheds = schedules(pipe, steps)
    if args.frontier:
        scheds += frontier_schedules(args.frontier, args.frontier_points, steps)
    if args.quick:  # the slowest mid-range presets go; the range 1.1x..fastest stays covered
        scheds = [(n, s) for n, s in scheds if n not in ("tgate(2)", "fora_attention(2)", "random p=0.6",
                                                          "fora(3) residual")]
    times: dict[str, list[tuple[float, float]]] = {n: [] for n, _ in scheds}
    time_once(pipe, kw, args.batch, scheds[-1][1])  # warm-up: a cheap schedule that still runs every module
    for r in range(args.repeats):
        k = r % len(scheds)
        for name, s in scheds[k:] + scheds[:k]:  # rotated each round: load drifts hit every schedule alike
            times[name].append(time_once(pipe, kw, args.batch, s))
        print(f"round {r + 1}/{args.repeats} done", flush=True)
        # written after every round, so an interrupted run still leaves what it measured
        text = report(args, pipe, prof, prof_cpu, scheds, times, (h, w), text_len, steps, r + 1)
        out = Path(args.out) if args.out else HERE / "results" / "latency.md"
        atomic_write_text(out, merge_section(out, args.model, text))
    print(text)
    return 0


TITLE = ("# Latency model: predicted vs measured whole-pipeline time\n\n"
         "`ditaccel search` prices schedules with `ditaccel.caching.latency` (`--cost latency-model`, the default). "
         "Each section: one profile, then >= 10 schedules from ~1.1x to the fastest the model allows, timed in "
         "interleaved rounds by `bench/bench_latency.py`, which rewrites its model's section.\n\n")


def merge_section(path: Path, model: str, section: str) -> str:
    """``path``'s text with this model's ``## model:`` section replaced (or added), the others kept."""
    old = path.read_text(encoding="utf-8") if path.is_file() else TITLE
    head, *parts = old.split("\n## ")
    kept = [p for p in parts if not p.startswith(f"{model}:")]
    body = [section.removeprefix("## ").rstrip("\n")] + [p.rstrip("\n") for p in kept]
    body.sort(key=lambda p: p.split(":")[0])
    return head.rstrip("\n") + "\n\n" + "\n\n".join("## " + p for p in body) + "\n"


def _errors(prof: object, scheds: list, med: dict, macs: dict) -> tuple[list[float], list[float], list[float]]:
    """|predicted/measured - 1| of time and speedup, and of the MACs speedup, per schedule."""
    t_err, s_err, m_err = [], [], []
    for name, s in scheds:
        t_err.append(abs(prof.predict(s) / med[name] - 1))
        if name != "none":
            sp = med["none"] / med[name]
            s_err.append(abs(prof.speedup(s) / sp - 1))
            m_err.append(abs(macs["none"] / macs[name] / sp - 1))
    return t_err, s_err, m_err


def report(args: argparse.Namespace, pipe: object, prof: object, prof_cpu: float, scheds: list, times: dict, hw: tuple,
           text_len: int | None, steps: int, rounds: int) -> str:
    macs = {n: schedule_macs(pipe, s, hw[0], hw[1], batch=2 * args.batch, text_len=text_len) for n, s in scheds}
    clocks = {"cpu": 1, "wall": 0}
    med = {c: {n: statistics.median(x[i] for x in v) for n, v in times.items()} for c, i in clocks.items()}
    rows = []
    for name, s in scheds:
        cells = []
        for c, i in clocks.items():
            xs = [x[i] for x in times[name]]
            m = med[c][name]
            spread = f" ({(max(xs) - min(xs)) / m:.0%})" if len(xs) > 1 else ""
            cells.append(f"{med[c]['none'] / m:.2f}x | {m:.3f}{spread} | "
                         f"{prof.predict(s) / m - 1:+.1%}")
        rows.append(f"| {name} | {macs['none'] / macs[name]:.2f}x | {prof.speedup(s):.2f}x | {prof.predict(s):.3f} | "
                    + " | ".join(cells) + " |")
    summary = []
    for c in clocks:
        t_err, s_err, m_err = _errors(prof, scheds, med[c], macs)
        summary.append(f"- Against {c} time: median |error| of the predicted time {statistics.median(t_err):.1%} "
                       f"(max {max(t_err):.1%}), of the predicted speedup {statistics.median(s_err):.1%} "
                       f"(max {max(s_err):.1%}); the MACs speedup as a predictor: {statistics.median(m_err):.1%} "
                       f"(max {max(m_err):.1%}).")
    cmd = (f"python bench/bench_latency.py --model {args.model}" + (f" --steps {args.steps}" if args.steps else "")
           + f" --batch {args.batch} --repeats {args.repeats} --profile-rounds {args.profile_rounds}"
           + (" --quick" if args.quick else "")
           + (f" --frontier {args.frontier} --frontier-points {args.frontier_points}" if args.frontier else ""))
    what = (f"the bundled model (12 blocks, hidden 128, {hw[0]} px)" if args.model == "bundled" else
            "PixArt-alpha 256 geometry (28 blocks, hidden 1152, 256 image + 120 text tokens), random weights, "
            "with bench_speed.py's 1-layer T5 and 4-level random VAE")
    return "\n".join([
        f"## {args.model}: predicted vs measured whole-pipeline time",
        "",
        f"- Machine: {machine_description()}. The 2 cores were shared with other jobs during the run.",
        f"- Command: `{cmd}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).",
        f"- Model: {what}; {steps} steps, {args.batch} image(s) per call with CFG, fp32, 1 thread.",
        f"- Profile (`profile_latency`, {args.profile_rounds} rounds, clock: {prof.key['clock']}): "
        f"{prof_cpu:.1f} s CPU ({prof.seconds:.1f} s wall on the shared machine). Always-run step {prof.step_s * 1e3:.2f} ms, per-call fixed {prof.fixed_s:.3f} s, "
        f"component sum {prof.component_s.sum() * 1e3:.2f} ms per step, fitted scale {prof.scale:.2f}.",
        "- Where the time goes (profile, ms): " + ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} "
                                                            f"{v * 1e3:.2f}" for k, v in prof.parts.items()) + ".",
        f"- Measured: each schedule {rounds} times in interleaved rounds (order rotated each round"
        + (f"; stopped after {rounds} of {args.repeats} rounds" if rounds < args.repeats else "") + "), "
        "median; in brackets the spread (max - min) / median. Speedups are against the median `none`. "
        "cpu = process CPU time: with one torch thread, the call's own compute, without the time the OS gave "
        "to other jobs (the profile's clock here); wall = wall clock on the shared machine, which under this load "
        "mostly measures the other jobs.",
        "",
        "| schedule | MACs speedup | predicted speedup | predicted s | cpu: speedup | cpu s | cpu: time error "
        "| wall: speedup | wall s | wall: time error |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        *summary,
        "",
    ])


if __name__ == "__main__":
    sys.exit(main())
