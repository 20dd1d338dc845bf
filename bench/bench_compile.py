"""Cache schedules under torch.compile (CPU, inductor): does the schedule's speedup survive compile?

Why: the issue (#14) measured compiled + FORA(2) no faster than eager + FORA(2): the hooks broke
the graph at every component and hit dynamo's recompile limit. ditaccel now keeps the per-step
decision in Python and compiles the cacheable components (``ditaccel.caching.compile``). This
times, in one run with interleaved repeats:

- eager: no compile, each schedule vs the eager baseline;
- regional: ``compile_components(t)`` (what ``--compile`` does), each schedule vs the regional
  baseline;
- user whole: the user's ``torch.compile(transformer)`` of the whole model as the baseline; with a
  schedule applied, calls where every component computes still run that whole graph (which also
  returns the component outputs, to cache), and calls that skip components leave it at its entry and
  run ditaccel's block variants (what a user who compiles the transformer themselves gets).

Schedules: none, FORA(2), FORA(3) and a seeded ECAD-style mixed schedule (bits differ per step,
block and component). Target (#14): compiled speedup >= 0.9x the eager speedup of the same
schedule. Dynamo's graph-break, recompile and graph counters are read after warm-up and after the
timed runs.

Models: the bundled model (a 4-image pipeline call, its default 20 steps, CFG batch 8) and
full-size PixArt-alpha 256 geometry with random weights (bench_speed.py's transformer, 28 blocks,
hidden 1152; transformer calls only, batch 2, --steps DPM-Solver steps).

Run:  python bench/bench_compile.py [--steps 6] [--repeats 3] [--models bundled,full]
(each model's numbers also go to compile.json, so the models can be run by separate commands)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ditaccel._io import atomic_write_text
from ditaccel._machine import machine_description
from ditaccel.caching import CacheSchedule, apply_schedule, compile_components, presets, schedule_macs
from ditaccel.caching.compile import count_recompiles
from ditaccel.models import get_adapter

HERE = Path(__file__).resolve().parent
MODES = ("eager", "regional", "user whole")


def mixed_schedule(t: torch.nn.Module, steps: int) -> CacheSchedule:
    """ECAD-style: per (step, block, component) bits, attention reused more than feed-forwards (seed 0)."""
    base = presets.none(t, steps=steps)
    rng = np.random.default_rng(0)
    keep = np.array([0.45, 0.3, 0.6])[: base.bits.shape[2]]  # attn1, attn2, ff recompute rates
    bits = rng.random(base.bits.shape) < keep
    bits[0] = True
    return CacheSchedule(bits=bits, components=base.components, family=base.family, meta={"name": "mixed"})


def bundled_target() -> tuple[torch.nn.Module, Callable[[Any], Any], dict[str, Any]]:
    from ditaccel.pipeline import generate_images, load_pipeline, pipeline_info

    pipe = load_pipeline()
    prompts = ["a red circle", "a blue square", "a green triangle", "a yellow star"]

    def run(transformer: Any) -> Any:
        pipe.transformer = transformer
        imgs = generate_images(pipe, prompts, [0, 1, 2, 3], batch_size=4)
        return torch.from_numpy(np.stack(imgs).astype(np.float32))

    steps = int(pipeline_info(pipe).call_defaults.get("num_inference_steps", 20))
    from ditaccel.models import image_size

    height, width = image_size(pipe)
    return pipe.transformer, run, {"steps": steps, "height": height, "width": width, "batch": 8, "pipe": pipe,
                                   "what": f"4-image pipeline call, {steps} steps, CFG (transformer batch 8), "
                                           "uint8 images compared"}


def full_target(steps: int) -> tuple[torch.nn.Module, Callable[[Any], Any], dict[str, Any]]:
    sys.path.insert(0, str(HERE))
    from bench_speed import TEXT_LEN, build_transformer  # noqa: I001
    from diffusers import DPMSolverMultistepScheduler

    t = build_transformer()
    sch = DPMSolverMultistepScheduler()
    sch.set_timesteps(steps)
    g = torch.Generator().manual_seed(0)
    x0, enc = torch.randn(2, 4, 32, 32, generator=g), torch.randn(2, TEXT_LEN, 4096, generator=g)
    mask = torch.ones(2, TEXT_LEN)

    def run(transformer: Any) -> Any:
        """One generation's transformer calls (bench_speed.py's loop); returns the final latents."""
        x = x0
        for ts in sch.timesteps:
            out = transformer(x, encoder_hidden_states=enc, encoder_attention_mask=mask, timestep=ts.expand(2),
                              added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)[0]
            x = x - 0.01 * out[:, :4]
        return x

    return t, run, {"steps": steps, "height": 256, "width": 256, "batch": 2, "text_len": TEXT_LEN, "pipe": t,
                    "what": f"transformer calls only, {steps} DPM-Solver steps, batch 2 (CFG), final latents "
                            "compared"}


def _counters() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {"graph_breaks": sum(counters["graph_break"].values()),
            "unique_graphs": int(counters["stats"]["unique_graphs"]),
            "recompiles": sum(counters["recompiles"].values()) if "recompiles" in counters else 0,
            "recompiled": dict(counters["recompiles"]) if "recompiles" in counters else {}}


def bench_model(name: str, t: torch.nn.Module, run: Callable[[Any], Any], info: dict[str, Any],
                repeats: int, save: Callable[[dict[str, Any]], None], clock: Callable[[], float]) -> None:
    """Warm up each mode, then time every (mode, schedule) interleaved; ``save`` gets the numbers
    after every repeat (a long run on a busy machine keeps what it measured)."""
    steps = info["steps"]
    scheds = {"none": presets.none(t, steps=steps), "fora(2)": presets.fora(t, 2, steps=steps),
              "fora(3)": presets.fora(t, 3, steps=steps), "mixed": mixed_schedule(t, steps)}
    if get_adapter(t).stack_residual:  # residual step reuse (the search's default here): whole-step skips
        for n in (2, 3):
            base = scheds[f"fora({n})"]
            scheds[f"fora({n}) residual"] = CacheSchedule(base.bits, base.components, base.family,
                                                          step_reuse="residual")
    macs = {k: schedule_macs(info["pipe"], s, info["height"], info["width"], batch=info["batch"],
                             text_len=info.get("text_len")) for k, s in scheds.items()}
    whole = torch.compile(t)
    regional = compile_components(t)
    regional.remove()  # made once so the compiled functions exist; re-installed per timed call

    def call(mode: str, sched: str) -> tuple[float, Any]:
        cc = compile_components(t) if mode == "regional" else None
        # eager runs `none` through the hooks too (bit-identical to no hooks); compiled baselines run bare.
        # compile=None: under the user's whole-model compile the schedule compiles the components itself.
        h = None if sched == "none" and mode != "eager" else apply_schedule(t, scheds[sched])
        try:
            t0 = clock()
            out = run(whole if mode == "user whole" else t)
            return clock() - t0, out
        finally:
            if h is not None:
                h.remove()
            if cc is not None:
                cc.remove()

    # Warm-up: compiles happen on a mode's first call; the user's whole-model graph is traced again
    # once a schedule's hooks are on it (FORA(2)'s first generation makes both the whole-graph and the
    # escape entries). Schedules need no warm-up of their own: the counters after the timed runs show
    # whether any schedule compiled anything.
    warm = {}
    # A residual-reuse schedule's whole-step graph also returns the first and last blocks' inputs and outputs:
    # its own whole graph, compiled by its first call, so it is warmed up too.
    extra = [("user whole", "fora(2) residual")] if "fora(2) residual" in scheds else []
    for mode, sched in [(m, "none") for m in MODES] + [("user whole", "fora(2)")] + extra:
        warm[f"{mode}/{sched}"] = call(mode, sched)[0]
        print(f"{name} warm-up {mode:10s} {sched:8s} {warm[f'{mode}/{sched}']:.1f}s", flush=True)
    after_warm = _counters()
    times: dict[str, list[float]] = {f"{m}/{s}": [] for m in MODES for s in scheds}
    outs: dict[str, Any] = {}
    for r in range(repeats):
        for mode in MODES:
            for sched in scheds:
                dt, outs[f"{mode}/{sched}"] = call(mode, sched)
                times[f"{mode}/{sched}"].append(dt)
        print(f"{name} repeat {r + 1}/{repeats} done", flush=True)
        diffs = {k: float((v.float() - outs["eager/" + k.split("/")[1]].float()).abs().max())
                 for k, v in outs.items() if not k.startswith("eager/")}
        save({"name": name, "info": {k: v for k, v in info.items() if k != "pipe"}, "macs": macs, "times": times,
              "warm": warm, "after_warm": after_warm, "after": _counters(), "diffs": diffs, "repeats": r + 1,
              "command": " ".join(["python bench/bench_compile.py", *sys.argv[1:]]),
              "machine": machine_description(), "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})


def bench_patterns(t: torch.nn.Module, run: Callable[[Any], Any], repeats: int, inner: int = 50) -> dict[str, Any]:
    """Per cache pattern, one block: the eager fast path against its compiled variant (``BlockVariants``).

    Why: decides whether some patterns (e.g. everything cached, where little work is left) should
    run eager, since entering a compiled graph has a fixed cost. The inputs are those the pipeline
    gives blocks 0 and 1 (two layouts: block 0 gets the patch embedding's transposed view); cached
    outputs are the block's own. Eager runs the adapter's cached-block forward with the components'
    class forwards called directly (no hooks), as the compiled variant does. Thread CPU time per
    block call, ``inner`` calls per sample, (pattern, eager/compiled) interleaved ``repeats`` times.
    """
    from ditaccel.caching.compile import BlockVariants
    from ditaccel.models import get_adapter

    adapter = get_adapter(t)
    seen: dict[int, tuple] = {}
    handles = [spec.module.register_forward_pre_hook(
        lambda m, a, kw, b=b: seen.setdefault(b, (a, kw)), with_kwargs=True) for b, spec in enumerate(adapter.blocks[:2])]
    try:
        run(t)
    finally:
        for h in handles:
            h.remove()
    variants, out = BlockVariants({}), {}
    for b, (args, kwargs) in seen.items():
        spec, n = adapter.blocks[b], len(adapter.component_names)
        fn = adapter.cached_block_forward(spec)
        comps = [adapter.component_module(b, c) for c in range(n)]
        fwds = tuple(type(m).forward for m in comps)
        full: dict[int, Any] = {}

        def call(slot: int, m: torch.nn.Module, *a: Any, fwds: tuple = fwds, full: dict = full, **kw: Any) -> Any:
            full[slot] = fwds[slot](m, *a, **kw)
            return full[slot]

        fn(spec.module, (None,) * n, call, *args, **kwargs)
        cached = {mask: tuple(full[i] if mask >> i & 1 else None for i in range(n)) for mask in range(1 << n)}
        fns = {("eager", mask): functools.partial(fn, spec.module, cached[mask], call, *args, **kwargs)
               for mask in cached}
        fns.update({("compiled", mask): functools.partial(variants.run, fn, spec.module, cached[mask], fwds, args,
                                                          kwargs) for mask in cached})
        for f in fns.values():
            f()  # warm-up (compiles every pattern on first use)
        times: dict[tuple, list[float]] = {k: [] for k in fns}
        for _ in range(repeats):
            for k, f in fns.items():
                t0 = time.thread_time()
                for _ in range(inner):
                    f()
                times[k].append((time.thread_time() - t0) / inner * 1e6)
        out[f"block {b}"] = {f"{k[0]}/{k[1]}": v for k, v in times.items()}
    return {"components": list(adapter.component_names), "times_us": out, "repeats": repeats, "inner": inner,
            "load": os.getloadavg()[0], "machine": machine_description(),
            "command": " ".join(["python bench/bench_compile.py", *sys.argv[1:]]),
            "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _pattern_rows(pat: dict[str, Any]) -> list[str]:
    names, rows = pat["components"], []
    for block, times in pat["times_us"].items():
        for mask in range(1 << len(names)):
            e, c = times[f"eager/{mask}"], times[f"compiled/{mask}"]
            what = ", ".join(n for i, n in enumerate(names) if mask >> i & 1) or "(none)"
            ratio = statistics.median(c) / statistics.median(e)
            rows.append(f"| {block.removeprefix('block ')} | {what} | {_fmt_us(e)} | {_fmt_us(c)} | {ratio:.2f} |")
    return rows


def _fmt_us(ts: list[float]) -> str:
    return f"{statistics.median(ts):.0f} ({min(ts):.0f}-{max(ts):.0f})"


def _fmt(ts: list[float]) -> str:
    return f"{statistics.median(ts):.2f} ({min(ts):.2f}-{max(ts):.2f})"


def _ratio_rows(res: dict[str, Any]) -> list[str]:
    med = {k: statistics.median(v) for k, v in res["times"].items()}
    rows = []
    for mode in MODES:
        for sched in res["macs"]:
            ms = res["macs"]["none"] / res["macs"][sched]
            sp = med[f"{mode}/none"] / med[f"{mode}/{sched}"]
            eager_sp = med["eager/none"] / med[f"eager/{sched}"]
            vs = "" if sched == "none" else f"{sp / eager_sp:.2f}"
            diff = "" if mode == "eager" else f"{res['diffs'][f'{mode}/{sched}']:.3g}"
            rows.append(f"| {mode} | {sched} | {ms:.2f}x | {_fmt(res['times'][f'{mode}/{sched}'])} | {sp:.2f}x | "
                        f"{vs} | {diff} |")
    return rows


def report(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "# Cache schedules under torch.compile (CPU, inductor)",
        "",
        "Made by `bench/bench_compile.py` (one section per model, each with its command and machine line). "
        "The 2 cores were shared with other helpers' jobs while this ran (see the load averages): single "
        "timings vary by tens of percent, hence interleaved repeats, with min-max shown.",
        "",
        "- Modes: **eager** (no compile); **regional** = `compile_components(t)` / `--compile` (inductor, "
        "each cacheable component compiled once per class; with a schedule applied beside it, fast-path blocks "
        "run as block variants, below); **user whole** = the user's `torch.compile(transformer)` (inductor, "
        "whole model) as baseline; with a schedule applied, a call where every component computes (always step "
        "0; FORA(n)'s every n-th step) runs as one whole-model graph (the user's model traced whole, also "
        "returning the component outputs to cache), and a call that skips components leaves the graph at its "
        "entry and runs ditaccel's own graphs (block variants; the embedders and final layer eager). Block variants: where blocks have the fast path (PixArt), "
        "one whole-block graph per cache pattern (norms, adaLN modulation, gates and residual adds included; "
        "`BlockVariants` in `ditaccel.caching.compile`), every pattern made at warm-up, the choice of pattern "
        "in Python; elsewhere the compiled components with eager glue.",
        "- Both model sections were measured with full steps traced whole under the user's compile (the "
        "per-pattern section, timing single blocks, does not depend on it).",
        "- Times: seconds per generation, median (min-max) of the interleaved repeats (every mode and schedule "
        "once per repeat), after warm-up calls; each speedup is against the same mode's `none` row.",
        "- Target (#14): compiled speedup >= 0.9x the eager speedup of the same schedule (column `vs eager`, "
        "from medians).",
        "- Max abs diff: the compiled mode's output (uint8 images, or final latents) against eager with the "
        "same schedule; inductor's fused kernels reorder float math.",
        "- Schedules: `none`, FORA(2), FORA(3) and `mixed`, a seeded ECAD-style schedule whose bits differ per "
        "step, block and component (recompute rates attn1 0.45, attn2 0.3, ff 0.6; step 0 computed).",
        "",
    ]
    for res in (v for k, v in results.items() if k != "patterns"):
        info, aw, af = res["info"], res["after_warm"], res["after"]
        clock = {"cpu": "thread CPU time (`time.thread_time()`)", "wall": "wall clock"}[info.get("clock", "wall")]
        lines += [f"## {res['name']}: {info['what']}", "",
                  f"- Command: `{res['command']}` ({res['repeats']} repeats done, {res['at']}); times are {clock}",
                  f"- Machine: {res['machine']}", "",
                  "| mode | schedule | MACs speedup | s / generation | speedup | vs eager speedup | "
                  "max abs diff to eager |", "|---|---|---|---|---|---|---|", *_ratio_rows(res), "",
                  f"Dynamo counters: after warm-up {aw['unique_graphs']} graphs, {aw['graph_breaks']} graph breaks, "
                  f"{aw['recompiles']} recompiles; during the timed repeats (schedules and modes switched before "
                  f"every call) {af['unique_graphs'] - aw['unique_graphs']} new graphs, "
                  f"{af['graph_breaks'] - aw['graph_breaks']} new graph breaks, "
                  f"{af['recompiles'] - aw['recompiles']} recompiles."
                  + (" Recompiles at warm-up, by code: " + ", ".join(f"{k} {v}" for k, v in aw["recompiled"].items())
                     + " (see How to read it)."
                     if aw.get("recompiled") else ""),
                  "Warm-up calls (the first of each mode includes its compile), s: "
                  + ", ".join(f"{k} {v:.1f}" for k, v in res["warm"].items()) + "."
                  + (" In CPU time of the calling thread: compile work in other threads or processes is not in it, "
                     "and with `--patterns` the block variants were compiled before these calls."
                     if info.get("clock") == "cpu" else ""), ""]
        spread = max(max(v) / min(v) for v in res["times"].values())
        lines += [f"Largest max/min spread of one configuration over its repeats: {spread:.2f}x. Where that exceeds "
                  "the gap between two ratios, this run does not resolve it.", ""]
        if res["macs"]["fora(2)"] == res["macs"]["fora(3)"]:
            lines += [f"At {info['steps']} steps FORA(2) (steps 0, 2) and FORA(3) (steps 0, 3) compute the same "
                      "number of steps, hence the same MACs.", ""]
    if "patterns" in results:
        pat = results["patterns"]
        lines += ["## Per cache pattern: one block, eager fast path vs compiled variant (bundled model)", "",
                  f"- Command: `{pat['command']}` ({pat['repeats']} interleaved repeats of {pat['inner']} block "
                  f"calls each, {pat['at']}, load average {pat['load']:.1f})",
                  f"- Machine: {pat['machine']}",
                  "- Inputs: what the 4-image pipeline call (transformer batch 8) gives block 0 (the patch "
                  "embedding's transposed view) and block 1 (contiguous); cached outputs are the block's own. "
                  "Eager = the adapter's cached-block forward calling the components' forwards directly (no "
                  "hooks); compiled = `BlockVariants.run` (inductor), guards and dispatch included. Thread CPU "
                  "time per block call, median (min-max).", "",
                  "| block | cached | eager, us | compiled, us | compiled / eager |", "|---|---|---|---|---|",
                  *_pattern_rows(pat), ""]
    lines += [
        "## How to read it",
        "",
        "- Per pattern (the section above, measured before full steps were traced whole; it times single "
        "blocks, which that change does not touch): on the bundled model's block at the bench's batch, every "
        "cache pattern's compiled variant took less CPU time than the eager fast path, 0.69-0.94 of it, the "
        "all-cached pattern included (58 vs 83 us in block 0, 55 vs 64 us in block 1). So no pattern is routed "
        "to eager: every fast-path block call under compile runs its variant.",
        "- Under the user's whole-model compile, a call where every component computes now stays in a "
        "whole-model graph (`_begin_user_compiled_call` in `ditaccel.caching.runtime`): FORA(n)'s computed "
        "steps get the fusion across blocks, embedders and final layer that the baseline has. Before, every "
        "scheduled call left the graph and ran one graph per block, and the bundled shares were 0.92, 0.89, "
        "0.91 (FORA(2), FORA(3), mixed; 06:03 UTC) and 0.89, 0.90, 0.89 (06:14 UTC, load 4.1). With it, three "
        "runs of `--models bundled --repeats 5` gave 0.97, 0.95, 0.92 (07:24 UTC, load 2.8), 0.94, 0.92, 0.88 "
        "(07:45 UTC, load 3.8, a test suite running beside it) and 0.94, 0.95, 0.94 (07:51 UTC); "
        "`--compile` 1.07, 1.07, 1.06 / 1.04, 0.99, 0.99 / 1.02, 1.03, 1.03. The bundled table above (08:46 "
        "UTC, load 0.8, with the residual rows: residual schedules' all-compute steps run whole too) gave 0.95, "
        "0.95, 0.92 and 0.95, 0.96 for residual FORA(2), FORA(3); `--compile` 1.04-1.06. Full-size: 0.98, 0.98, "
        "0.98 (`--compile` 1.00, 0.97, 1.00) at 07:40 UTC; 0.99-1.01 in both modes, residual rows included, in "
        "the table above (09:12 UTC).",
        "- The mixed schedule computes everything only at step 0; its other 19 steps each skip some components "
        "and still run one graph per block, so it gains least: 0.92, 0.88, 0.94, 0.92 over the four bundled "
        "runs, at the 0.9 bar within run-to-run noise (0.98-0.99 full-size). A graph per step pattern would recompile for every new pattern. Compiling the "
        "embedders and final layer for partial steps was not built: an earlier probe (thread CPU time, one "
        "all-cached call at the bench's batch) measured 3.5 ms through the escape and 3.3 ms with them "
        "compiled, about 4 ms over a 20-step generation of 0.72 s.",
        "- Cost of keeping the component outputs: a whole-model graph that also returns them (to cache) is "
        "not free. With the `none` schedule applied (every call whole, every output kept) a bundled generation "
        "under the user's compile took 1.359 s against 1.300 s bare (thread CPU time, medians of 5 interleaved "
        "repeats, spread 1.346-1.381 and 1.292-1.316, load 3.4; a probe script, not kept); ditaccel's own "
        "begin/end work per whole call (deciding, setting the hooks aside and back) measured 0.26 ms of that "
        "(about 5 ms per generation).",
        "- Recompiles (counted by `ditaccel.caching.compile.count_recompiles`, which wraps dynamo's "
        "recompile-reason function: this torch has no recompile counter, so the '0 recompiles' in versions "
        "of this file before 07:24 UTC were not measured): all at warm-up, none during the timed repeats, in which every call "
        "switched schedule or mode and applied a new handle. At warm-up: each block variant once (the first "
        "block's transposed input layout), the hook's second branch (whole or escape) once, the residual "
        "whole graph once where residual rows are timed (it also returns the first and last blocks' inputs and "
        "outputs), and one frame named `forward` once (a compiled forward whose guards failed once at warm-up; "
        "the counter gives only the code name).",
        "- Graph breaks after warm-up: all the step hook's (deciding before any compute, counted at the "
        "compiled root frame and at the hook; storing after a whole call, once more for the residual whole "
        "graph; leaving the graph for a partial call); none inside a block or inside the whole-model graph.",
        "",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=6, help="DPM-Solver steps for the full-size model")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default="bundled,full")
    ap.add_argument("--report-only", action="store_true", help="rewrite the markdown from the .json twin")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="cpu: the thread's CPU time (steadier on a shared machine); wall: perf_counter")
    ap.add_argument("--patterns", action="store_true",
                    help="also time each cache pattern's compiled block variant against the eager fast path")
    ap.add_argument("--out", default=str(HERE / "results" / "compile.md"),
                    help="markdown report; its .json twin keeps every model's numbers, so models can be run apart")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    raw = out.with_suffix(".json")
    results = json.loads(raw.read_text()) if raw.is_file() else {}
    for name in [] if args.report_only else args.models.split(","):
        torch._dynamo.reset()
        from torch._dynamo.utils import counters

        counters.clear()
        t, run, info = bundled_target() if name == "bundled" else full_target(args.steps)

        def save(res: dict[str, Any], name: str = name) -> None:
            results[name] = res
            atomic_write_text(raw, json.dumps(results, indent=1))
            atomic_write_text(out, report(results))

        info["clock"] = args.clock
        with torch.no_grad(), count_recompiles():
            if args.patterns and name == "bundled":
                results["patterns"] = bench_patterns(t, run, args.repeats)
            bench_model(name, t, run, info, args.repeats, save,
                        time.thread_time if args.clock == "cpu" else time.perf_counter)
    atomic_write_text(out, report(results))
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
