"""``ditaccel search`` and ``ditaccel frontier``: argument parsing over ``ditaccel.search``, output with rich.

``ditaccel.cli`` registers them with ``add_parsers(subparsers)``; shared flags come from ``ditaccel.cli_common``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ditaccel.cli_common import (
    add_compile_arg,
    add_metric_path_arg,
    add_model_args,
    check_out,
    load_model,
    metric_names_help,
    non_negative_int,
    number_type,
    parse_metric_paths,
    positive_int,
)
from ditaccel.errors import DitaccelError, Interrupted

console = Console()


def add_parsers(subparsers: Any) -> None:
    """Register the ``search`` and ``frontier`` subcommands."""
    _add_search_parser(subparsers)
    _add_frontier_parser(subparsers)


def _add_search_parser(subparsers: Any) -> None:
    s = subparsers.add_parser("search", help="learn a Pareto frontier of caching schedules (ECAD, NSGA-II)")
    add_model_args(s)
    add_compile_arg(s)
    s.add_argument("--prompts", default=None,
                   help="prompt set or file (default: 12 of the bundled model's 36 calibration prompts, all 36 with "
                        "--strategy ecad; else parti[:32])")
    s.add_argument("--seeds", default="0", help="seeds per prompt, e.g. 0,1,2 or 0-9 (default 0)")
    s.add_argument("--metric", default=None,
                   help=f"quality metric, one of {metric_names_help()} (default: adherence on the bundled model, "
                        "psnr elsewhere)")
    add_metric_path_arg(s)
    s.add_argument("--population", type=int, default=None,
                   help="NSGA-II population (default 72; 24 on the bundled model)")
    s.add_argument("--generations", type=positive_int, default=None, help="generations (default 12; 6 on the bundled model)")
    s.add_argument("--seed", type=non_negative_int, default=0, help="GA random seed (same seed, same frontier)")
    s.add_argument("--init", default="presets", help="'presets' or a previous search folder to start from")
    s.add_argument("--out", type=Path, default=Path("runs/search"), help="output folder (default runs/search)")
    s.add_argument("--resume", action="store_true",
                   help="continue the search in --out from its checkpoint (a folder without one starts a new search)")
    s.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="evaluate on Ray workers (no ADDRESS: a local Ray with --ray-workers processes)")
    s.add_argument("--ray-workers", type=positive_int, default=None, help="Ray workers (default: GPUs, else 2 locally)")
    s.add_argument("--batch-size", type=positive_int, default=64, help="images per pipeline call (default 64)")
    s.add_argument("--steps", type=positive_int, default=None, help="denoising steps (default: the model's)")
    s.add_argument("--cost", choices=("latency-model", "macs", "latency"), default=None,
                   help="cost objective: latency-model (default; this device's profiled time per schedule, "
                        "cached under $DITACCEL_LATENCY_CACHE or ~/.cache/ditaccel/latency), macs (transformer "
                        "MACs) or latency (each candidate timed); --resume keeps the search's own")
    s.add_argument("--tiebreak", default="auto", metavar="METRIC",
                   help="psnr | ssim | none: orders candidates of equal quality by fidelity to the uncached images "
                        "(default auto: psnr when the metric is adherence)")
    s.add_argument("--strategy", choices=("structured", "ecad"), default=None,
                   help="structured (default for a new search): dynamic-like presets and step/block operators; "
                        "ecad: the paper's presets and operators. A resumed search keeps its own")
    s.add_argument("--fill", type=number_type(float, lambda v: 0.0 <= v <= 1.0, "must be between 0 and 1"),
                   default=None, metavar="SHARE",
                   help="gap fillers per generation, as a share of the population: schedules aimed inside the "
                        "frontier's widest speed gaps, on top of the GA's offspring (default 0.25 under "
                        "structured, 0 under ecad); a resumed search keeps its own")
    s.add_argument("--step-reuse", choices=("components", "residual"), default=None,
                   help="what a step that recomputes nothing reuses: residual (default under structured where the "
                        "model allows: the whole block stack's last residual, as FirstBlockCache/TeaCache skip a "
                        "step) or components (ECAD's rule: each component's output, every block's glue still "
                        "runs); a resumed search keeps its own")
    s.add_argument("--seeding", choices=("signals", "presets"), default=None,
                   help="signals (default under structured): one uncached call measures how much each component "
                        "and the block stack change per step, and the schedules a TeaCache-like threshold on that "
                        "change gives seed the population and the gap filler; presets: the named presets only "
                        "(default under ecad). A resumed search keeps its own")
    s.set_defaults(func=cmd_search)


def _add_frontier_parser(subparsers: Any) -> None:
    f = subparsers.add_parser("frontier", help="print a search's frontier, or write the schedule you pick")
    f.add_argument("dir", type=Path, help="folder written by `ditaccel search`")
    pick = f.add_mutually_exclusive_group()
    pick.add_argument("--select", default=None, metavar="SPEEDUP",
                      help="the point closest to this speedup, e.g. 2.5x (outside the frontier's range: the nearest end, "
                           "said so)")
    pick.add_argument("--min-quality", type=number_type(float, math.isfinite, "must be a finite number"), default=None, help="the fastest point with at least this quality")
    f.add_argument("--out", type=Path, default=None, help="schedule file to write (default DIR/selected.json)")
    f.add_argument("--json", action="store_true", help="print the frontier as JSON")
    f.set_defaults(func=cmd_frontier)


def cmd_search(args: argparse.Namespace) -> int:
    from ditaccel.search import SearchConfig, search

    if args.population is not None and args.population < 4:  # checked again by the library; here before the model loads
        raise DitaccelError(f"--population must be at least 4, got {args.population}")
    if args.ray_workers is not None and args.ray is None:
        raise DitaccelError("--ray-workers needs --ray")
    check_out(args.out, "--resume", args.resume, to=" to continue it", what="already holds a search",
              holds=lambda out: (out / "checkpoint").exists() or (out / "candidates.jsonl").exists())
    call_kwargs = {"num_inference_steps": args.steps} if args.steps else {}
    paths = parse_metric_paths(args.metric_path, args.metric or "adherence")
    cfg = SearchConfig(prompts=args.prompts, seeds=args.seeds, metric=args.metric,
                       metric_paths=paths, population=args.population,
                       generations=args.generations, seed=args.seed, init=args.init,
                       out=args.out, resume=args.resume, batch_size=args.batch_size, call_kwargs=call_kwargs,
                       cost=args.cost, ray_address=args.ray, ray_workers=args.ray_workers, progress=True,
                       tiebreak=args.tiebreak, strategy=args.strategy, fill=args.fill,
                       step_reuse=args.step_reuse, seeding=args.seeding)
    if args.metric:  # fail on an unknown metric or missing weights before loading the model
        from ditaccel.metrics import get_metric

        get_metric(args.metric, **cfg.metric_paths)
    from ditaccel.search.engine import check_resumable, resolve_tiebreak

    resolve_tiebreak(args.tiebreak, args.metric or "adherence")  # an unknown tie-break, before loading the model
    if args.resume and not check_resumable(args.out):  # before the model loads
        console.print(f"--resume: {args.out} holds no search checkpoint; starting a new search there")
    if args.ray is not None:  # each worker loads the same model (and quantized weights) once
        cfg.loader = "ditaccel.search.backend:load_for_worker"
        cfg.loader_args = [args.model, args.device, None if args.quantized is None else str(args.quantized),
                           args.compile, str(args.dtype).removeprefix("torch.")]
    pipe = load_model(args)
    try:
        frontier = search(pipe, cfg)
    except KeyboardInterrupt:
        raise Interrupted(_kept_search(args.out)) from None
    _print_table(frontier)
    info = frontier.info.get("block_component_evaluations", {})
    console.print(f"{frontier.info.get('evaluations', 0)} schedules evaluated; block-component evaluations "
                  f"{info.get('done', 0):,} (separately {info.get('separately', 0):,}, "
                  f"saving {info.get('saving', 1.0):.2f}x). Wrote {args.out}/frontier.json, frontier.png, schedules/")
    return 0


def _kept_search(out: Path) -> str:
    """What an interrupted search left in ``out``: its last checkpoint, read back."""
    from ditaccel._io import read_json

    try:
        state = read_json(out / "checkpoint", "search checkpoint", "")
        gens, cands = int(state["generations_done"]), int(state["candidates"])
    except (DitaccelError, KeyError, TypeError, ValueError):
        return (f"no generation finished, so nothing was kept in {out}; rerun the same command with --resume to "
                "start again there")
    return (f"kept {gens} finished generation(s) and {cands} evaluated candidates in {out} (checkpoint, "
            f"candidates.jsonl, frontier.json); rerun the same command with --resume to continue")


def _print_table(frontier: Any) -> None:
    base = frontier.baseline.get("quality")
    t = Table(title=f"{frontier.family} frontier ({frontier.metric}; no cache: "
                    f"{'?' if base is None else f'{base:.4g}'})")
    second = frontier.info.get("tiebreak")
    from ditaccel.search.frontier import speedup_label

    cols = ["point", speedup_label(frontier).replace("transformer ", ""), frontier.metric, "vs no cache", *([second] if second else []), "schedule"]
    for col in cols:
        t.add_column(col, justify="left" if col in ("point", "schedule") else "right")
    for row, p in zip(frontier.table(), frontier.points, strict=True):
        delta = "" if row["delta"] is None else f"{row['delta']:+.4g}"
        extra = [f"{p.details[second]:.4g}" if second in p.details else ""] if second else []
        t.add_row(row["name"], f"{row['speedup']:.2f}x", f"{row['quality']:.4g}", delta, *extra,
                  f"schedules/{row['name']}.json")
    fora = sorted((p for p in frontier.presets if str(p["name"]).startswith("fora(")), key=lambda p: p["speedup"])
    for p in fora:
        d = "" if base is None else f"{p['quality'] - base:+.4g}"
        t.add_row(f"[dim]{p['name']}[/dim]", f"[dim]{p['speedup']:.2f}x[/dim]", f"[dim]{p['quality']:.4g}[/dim]",
                  f"[dim]{d}[/dim]", *([f"[dim]{p[second]:.4g}[/dim]" if second in p else ""] if second else []),
                  "[dim]preset[/dim]")
    console.print(t)


def cmd_frontier(args: argparse.Namespace) -> int:
    from ditaccel.search import load_frontier, select

    frontier = load_frontier(args.dir)
    if args.select is None and args.min_quality is None:
        if args.out is not None:
            raise DitaccelError("--out needs --select or --min-quality")
        if args.json:
            print(json.dumps(frontier.to_dict(), indent=2))
        else:
            _print_table(frontier)
        return 0
    from ditaccel._io import check_out_file

    out = check_out_file(args.out or args.dir / "selected.json")
    point = select(frontier, speedup=args.select, min_quality=args.min_quality, out=out)
    if args.select is not None and frontier.points:
        from ditaccel.search.frontier import parse_speedup

        target, speeds = parse_speedup(args.select), [p.speedup for p in frontier.points]
        if not min(speeds) <= target <= max(speeds):
            console.print(f"--select {args.select} is outside the frontier's range ({min(speeds):.2f}x to "
                          f"{max(speeds):.2f}x); picked the nearest point, {point.name} at {point.speedup:.2f}x")
    from ditaccel.search.frontier import speedup_label

    console.print(f"selected {point.name}: {point.speedup:.2f}x {speedup_label(frontier)}, {frontier.metric} "
                  f"{point.quality:.4g}; wrote {out}")
    return 0
