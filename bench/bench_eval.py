"""Side-by-side comparison on the bundled model: ECAD, heuristics, diffusers' caches, cache-dit, FP4DiT.

Why: one table a user can choose from; same prompts, seeds and machine for every method. Runs
``ditaccel.evaluate.evaluate`` on held-out prompts and copies its outputs to bench/results/:

- ``eval.md`` / ``eval.json``: the table and every number behind it (machine and command named);
- ``eval_grid.png``: one row per method, the same prompts and seeds;
- ``eval_quality_vs_speed.png``: adherence against measured speedup, ECAD frontier as a line;
- ``README.md``: links every file in bench/results and says what it shows.

ECAD rows need a search folder (``--search DIR``, default: the first of runs/search-bundled,
runs/search, bench/results/search that holds frontier.json). Without one the ECAD rows are left
out and eval.md says so. Images go to ``--work`` (resumable: rerunning skips images on disk).

Run:  python bench/bench_eval.py [--search runs/search] [--every 3] [--seeds 0,1] [--repeats 3]

``--sweep`` (issue 10): baseline, every peer swept over its knob grid (``peers:sweep``, or
``--methods fbc:sweep,...``) and ``--ecad-points`` of the frontier in ``--search DIR`` (any search
folder, so a new search can be compared by rerunning with its folder) -> ``peers.md`` (curves and
the dominance report), ``peers.json``, ``peers.png``. Images go to runs/bench_peers (resumable).

Run:  python bench/bench_eval.py --sweep --search runs/bench-search --every 6 --seeds 1,2 --timing-images 2
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

from ditaccel._io import atomic_write_text

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
SEARCH_CANDIDATES = ("runs/bench-search", "runs/search-bundled", "runs/search", "bench/results/search")

PEERS = ["fora:2", "fora:3", "fora:5", "tgate:8", "delta-dit", "fbc", "fbc:0.15", "pab", "fastercache", "taylorseer",
         "magcache", "cachedit"]
QUANT = ["fp4-w4a8", "fp4-w4a6", "int-w4a8"]


def find_search(arg: str | None) -> Path | None:
    if arg:
        p = Path(arg)
        if not (p / "frontier.json").is_file():
            sys.exit(f"bench_eval: {p} holds no frontier.json; pass a folder written by `ditaccel search`")
        return p
    for c in SEARCH_CANDIDATES:
        if (ROOT / c / "frontier.json").is_file():
            return ROOT / c
    return None


def ecad_methods(search: Path, points: int, combo_target: float) -> list[str]:
    """``points`` frontier points spread over the speedup range, the fastest one within 1 point of the uncached
    quality, and FP4 + the one nearest ``combo_target``."""
    from ditaccel.search import load_frontier

    fr = load_frontier(search)
    pts = sorted(fr.points, key=lambda p: p.speedup)
    if not pts:
        return []
    if len(pts) > points:
        idx = {round(i * (len(pts) - 1) / (points - 1)) for i in range(points)}
        base = fr.baseline.get("quality")
        if base is not None:  # and the fastest point that keeps calibration quality within 1 point
            keep = [i for i, p in enumerate(pts) if p.quality >= base - 0.01]
            idx |= set(keep[-1:])
        pts = [pts[i] for i in sorted(idx)]
    rel = search.relative_to(ROOT) if search.is_relative_to(ROOT) else search
    out = [f"ecad:{rel}:{p.speedup:.3f}x" for p in pts]
    best = min(fr.points, key=lambda p: abs(p.speedup - combo_target))
    out.append(f"fp4-w4a8+ecad:{rel}:{best.speedup:.3f}x")
    return out


def summarize(data: dict) -> list[str]:
    """Plain statements read off the measured rows: who is fastest at near-baseline quality, where peers win."""
    rows = [r for r in data["methods"] if r["status"] == "ok"]
    q = data.get("quality_metric", "adherence")
    base = next(r for r in rows if r["kind"] == "baseline")
    bq = base["metrics"].get(q)
    lines = []
    if bq is None:
        return lines

    def qv(r: dict) -> float:
        return float(r["metrics"].get(q, float("nan")))

    tol = 0.02 if q == "adherence" else 0.0
    near = [r for r in rows if r is not base and qv(r) >= bq - tol]
    if near:
        best = max(near, key=lambda r: r["speedup"])
        lines.append(f"- Fastest row within {tol:.2f} {q} of the baseline ({bq:.3f}): **{best['label']}** at "
                     f"{best['speedup']:.2f}x measured ({best['macs_speedup']:.2f}x MACs), {q} {qv(best):.3f}.")
    ecad = [r for r in rows if r.get("group") and "fp4" not in (r["label"] or "")]
    others = [r for r in rows if not r.get("group") and r is not base and "quant" not in r["kind"]]
    if ecad:
        lo = min(e["speedup"] for e in ecad)
        for e in sorted(ecad, key=lambda r: r["speedup"]):
            beats = [o["label"] for o in others if e["speedup"] >= o["speedup"] and qv(e) > qv(o)]
            if beats:
                lines.append(f"- ECAD **{e['label']}** ({e['speedup']:.2f}x, {q} {qv(e):.3f}) is faster and better "
                             f"than: {', '.join(beats)}.")
        for o in sorted(others, key=lambda r: -r["speedup"]):
            if o["speedup"] < lo:
                continue
            if not [e for e in ecad if e["speedup"] >= o["speedup"] and qv(e) >= qv(o)]:
                lines.append(f"- Peer wins: **{o['label']}** ({o['speedup']:.2f}x, {q} {qv(o):.3f}) is not "
                             f"dominated by any ECAD point measured here.")
        below = [o for o in others if o["speedup"] < lo and qv(o) >= bq - tol]
        if below:
            lines.append(f"- Below {lo:.2f}x the ECAD frontier has no point (the search's slowest non-dominated "
                         f"schedule already keeps calibration {q}), so there the peers are uncontested: "
                         + ", ".join(f"{o['label']} {o['speedup']:.2f}x" for o in sorted(below, key=lambda r: -r['speedup']))
                         + f" all keep {q} within {tol:.2f} of the baseline.")
    cached = [r for r in rows if r["macs_speedup"] and r["macs_speedup"] > 1.01]
    if cached:
        top = max(cached, key=lambda r: r["macs_speedup"])
        lines.append(f"- MACs overstate wall-clock gains: **{top['label']}** saves {top['macs_speedup']:.2f}x "
                     f"transformer MACs but measures {top['speedup']:.2f}x end to end (text encoder, VAE, "
                     f"scheduler and per-module Python overhead are not cached; the model is tiny).")
    quant = [r for r in rows if r["kind"] == "quant"]
    if len(quant) > 1:
        best = max(quant, key=lambda r: r["metrics"].get("psnr", 0))
        lines.append(f"- Among quantized rows **{best['label']}** is closest to the baseline images "
                     f"(PSNR {best['metrics'].get('psnr', float('nan')):.2f} dB)"
                     + (" — here the INT baseline beats FP4DiT's FP formats" if best["label"].startswith("int")
                        else "") + ".")
    for r in quant:
        lines.append(f"- **{r['label']}**: weights {r['weight_bytes'] / base['weight_bytes']:.2f}x of fp32, "
                     f"{r['speedup']:.2f}x speed on this CPU (portable kernels dequantize; no FP4 hardware), "
                     f"{q} {qv(r):.3f}, PSNR {r['metrics'].get('psnr', float('nan')):.2f} dB.")
    skipped = [r for r in data["methods"] if r["status"] != "ok"]
    for r in skipped:
        lines.append(f"- **{r['label']}** did not run: {r['reason']}")
    return lines


KNOWN = {
    "gpu.md": "GPU check on one H100: caching and FP4 on full-size PixArt-alpha 1024 and FLUX.1 geometries, "
              "eager and compiled (device_check.py)",
    "quant_gpu.md": "weight-only FP4 on an H100: compiled kernel vs portable vs fp16, PixArt-alpha 256 geometry "
                    "(bench_quant_gpu.py)",
    "low_end_fbc.md": "the low end: FirstBlockCache 0.05 against static schedules at its MACs, 11 interleaved "
                      "repeats (bench_eval.py --methods)",
    "speed.md": "wall-clock vs MACs speedup of FORA schedules on full-size PixArt-alpha geometry (bench_speed.py)",
    "bundled_train.log": "training log of the bundled model (loss, calibration adherence during training)",
    "search_frontier.png": "the ECAD frontier found by bench_search.py (quality vs MACs speedup, presets as crosses)",
    "eval.md": "the side-by-side table: every method on the bundled model, same prompts/seeds/machine (bench_eval.py)",
    "eval.json": "every number behind eval.md, per method (timings, MACs, memory, metrics, notes)",
    "eval_grid.png": "one row per method, same prompts and seeds: what each method does to the images",
    "eval_quality_vs_speed.png": "adherence against measured speedup; ECAD frontier as a line, peers as points",
    "peers.md": "peers as curves: every peer's knob grid and the ECAD frontier, with the dominance report "
                "(bench_eval.py --sweep)",
    "peers.json": "every number behind peers.md, per point (timings wall and CPU, MACs, metrics)",
    "peers.png": "adherence and PSNR against measured speedup: each peer a line, the ECAD frontier the black line",
    "search_long72.tar.gz": "the population-72, 80-generation search behind search_long.md (resumable with --resume)",
}


def write_readme(data: dict | None, results: Path = RESULTS) -> None:
    lines = ["# Benchmark results", "", "Files in this folder, what they show, and how they were made.", ""]
    for f in sorted(results.iterdir()):
        if f.name == "README.md" or f.name.startswith(".") or f.is_dir():
            continue
        desc = KNOWN.get(f.name)
        if desc is None and f.suffix == ".md":
            head = next((ln.lstrip("# ").strip() for ln in f.read_text().splitlines() if ln.startswith("#")), "")
            desc = head or "results file"
        lines.append(f"- [{f.name}]({f.name}): {desc or 'results file'}")
    if data is not None:
        lines += ["", "## What eval.md shows", "",
                  f"Measured on {data['machine']} with `{data['command']}` ({data['date']}).", ""]
        lines += summarize(data)
        lines += ["", "Wall-clock ratios are medians of interleaved repeats on cores shared with other jobs "
                  "(load average is in the machine line): expect run-to-run spread of tens of percent. The "
                  "MACs, weight and quality columns are deterministic: a rerun reproduces them exactly, and "
                  "reuses the images already in the work folder."]
    lines.append("")
    atomic_write_text(results / "README.md", "\n".join(lines))


# ----------------------------------------------------------------------------- peers as curves (issue 10)


def _spread(r: dict, base: dict, key: str) -> str:
    """Speedup of each repeat against the baseline's median, as min-max (how much the repeats disagree)."""
    ts, bt = r.get(key) or [], base.get(key) or []
    if not ts or not bt:
        return "–"
    b = sorted(bt)[len(bt) // 2]
    return f"{b / max(ts):.2f}-{b / min(ts):.2f}"


def _quality(r: dict) -> str:
    m = r["metrics"]
    psnr = m.get("psnr")
    p = "ref" if psnr is None else ("inf" if psnr == "inf" else f"{float(psnr):.2f}")
    return f"{m.get('adherence', float('nan')):.3f} | {p}"


def curves_markdown(data: dict) -> list[str]:
    """One table per curve (a peer's knob grid, the ECAD frontier), points in order of measured speed."""
    rows = [r for r in data["methods"] if r["status"] == "ok"]
    base = next(r for r in rows if r["kind"] == "baseline")
    curves = list(dict.fromkeys(r["curve"] or r["group"] for r in rows if r["curve"] or r["group"]))
    out = ["| curve | point | `--methods` | speedup CPU time (repeats min-max) | speedup wall (repeats min-max) | "
           "MACs speedup | adherence | PSNR dB |", "|---|---|---|---|---|---|---|---|"]
    for c in curves:
        pts = sorted((r for r in rows if (r["curve"] or r["group"]) == c), key=lambda r: r["cpu_speedup"] or 0)
        for r in pts:
            shared = set(c.split(", "))  # the curve's name; what is left of the row's name is the point
            point = ", ".join(w for w in r["name"].split(", ") if w not in shared)
            out.append(f"| {c} | {point or r['name']} | `{r['label']}` | {r['cpu_speedup'] or 0:.2f}x "
                       f"({_spread(r, base, 'cpu_timings')}) | {r['speedup']:.2f}x ({_spread(r, base, 'timings')}) | "
                       f"{r['macs_speedup']:.2f}x | {_quality(r)} |")
    skipped = [r for r in data["methods"] if r["status"] != "ok"]
    out += [""] + [f"- {r['name']} (`{r['label']}`) did not run: {r['reason']}" for r in skipped]
    return out


def curve_summary(doms: list, speed: str) -> list[str]:
    """Per peer curve: how many of its points the frontier dominates, and the speed range it covered."""
    by: dict[str, list] = {}
    for d in doms:
        by.setdefault(d.peer.curve or d.peer.name, []).append(d)
    out = ["| peer curve | points dominated | measured speed range |", "|---|---|---|"]
    for c, ds in by.items():
        sp = [getattr(d.peer, speed) for d in ds]
        same = sum(d.matched is not None for d in ds)
        out.append(f"| {c} | {sum(d.dominated for d in ds)} of {len(ds)}{f' ({same} matched)' if same else ''} | "
                   f"{min(sp):.2f}x-{max(sp):.2f}x |")
    return out


def write_peers(result: object, res: Path, search: Path, args: argparse.Namespace, command: str) -> None:
    """peers.md (curves, dominance on CPU-time and on wall-clock speed), peers.json, peers.png."""
    from ditaccel.evaluate.report import dominance, dominance_markdown, prediction_error, write_plot

    data = json.loads((args.work / "results.json").read_text())
    command = data["command"] or command
    info = json.loads((search / "frontier.json").read_text())
    speed = "cpu_speedup" if all(r.cpu_speedup for r in result.rows if r.status == "ok") else "speedup"
    doms = {s: dominance(result.rows, speed=s) for s in dict.fromkeys((speed, "speedup"))}
    bt = next(r for r in result.rows if r.kind == "baseline")
    lines = [
        "# Peers as curves: every peer's knob grid against the ECAD frontier (issue 10, part 1)", "",
        f"- command: `{command}`",
        f"- machine: {data['machine']}; wall-clock ratios on shared cores are noisy (see the load average), so "
        f"the dominance report uses the generating thread's CPU time (one torch thread), and repeats it on the "
        f"wall clock below",
        f"- date: {data['date']}; wall time of the evaluation {data['wall_seconds']} s",
        f"- model: {data['model']}; versions: " + ", ".join(f"{k} {v}" for k, v in data["versions"].items()),
        f"- images: {data['num_prompts']} held-out prompts (every {args.every}th of the held-out set, never seen "
        f"by the search) x seeds {data['seeds']} (the search used seed 0) = {data['num_images']} per point; "
        f"call {data['call']}",
        f"- timing: {data['timing']['images_per_run']} images per timed run, 1 warm-up, median of "
        f"{data['timing']['repeats']} repeats interleaved over all {len(result.rows)} rows; baseline "
        f"{bt.seconds_per_image:.3f} s/image wall, {bt.cpu_seconds_per_image or float('nan'):.3f} s/image CPU",
        f"- ECAD frontier: `{search}` (metric {info.get('metric')}, population {info.get('population')}, "
        f"generations {info.get('generations')}, cost {info.get('cost', 'macs')}, {len(info.get('points', []))} "
        f"points; {args.ecad_points} spread over its MACs range evaluated here)",
        "- quality: adherence (the bundled model's shape/colour/position checker) and PSNR against the "
        "uncached image with the same prompt and seed",
        f"- latency model check (ECAD rows priced by it): {prediction_error(result.rows)}", "",
        "![peer curves](peers.png)", "", "## Curves", "", *curves_markdown(data), "",
        f"## Dominance ({'CPU-time' if speed == 'cpu_speedup' else 'wall-clock'} speedup)", "",
        "For each peer point: the fastest ECAD point that is at least as fast and at least as good on adherence "
        "and PSNR, or **not dominated** with the gaps.", "", *curve_summary(doms[speed], speed), "",
        dominance_markdown(doms[speed], speed)]
    if speed != "speedup":
        lines += ["## Dominance on the wall-clock speedup (noisier on shared cores)", "",
                  dominance_markdown(doms["speedup"], "speedup")]
    atomic_write_text(res / "peers.md", "\n".join(lines))
    shutil.copyfile(args.work / "results.json", res / "peers.json")
    write_plot(result, res / "peers.png", speed=speed)


def run_sweep(args: argparse.Namespace, command: str) -> int:
    """``--sweep``: baseline, every peer's knob grid and the frontier in ``--search``, on held-out prompts."""
    from ditaccel.evaluate import EvalConfig, evaluate
    from ditaccel.prompts import parse_seeds
    from ditaccel.zoo import shapes

    search = find_search(args.search)
    if search is None:
        sys.exit("bench_eval: --sweep needs a search folder: run `ditaccel search --out runs/search` and pass "
                 "--search runs/search")
    from ditaccel.search import load_frontier

    pts = sorted(load_frontier(search).points, key=lambda p: p.speedup)
    if args.ecad_points < 2:
        pts = []  # 0: peers only (e.g. to fill the image folders while the search still runs)
    elif len(pts) > args.ecad_points:
        pts = [pts[i] for i in sorted({round(i * (len(pts) - 1) / (args.ecad_points - 1))
                                       for i in range(args.ecad_points)})]
    rel = search.relative_to(ROOT) if search.is_relative_to(ROOT) else search
    # a frontier can hold two points with one speedup; the row for it is listed once
    methods = ["baseline", *(args.methods or "peers:sweep").split(","),
               *dict.fromkeys(f"ecad:{rel}:{p.speedup:.3f}x" for p in pts)]
    cfg = EvalConfig(methods=methods, out=args.work, prompts=shapes.heldout_prompts()[::args.every],
                     seeds=parse_seeds(args.seeds), metrics=["adherence", "psnr", "ssim"], model=args.model,
                     batch_size=args.batch_size, timing_images=args.timing_images, timing_repeats=args.repeats,
                     command=command)
    if args.readme_only:  # redraw peers.md/png from the run's results.json, no generation or timing
        from ditaccel.evaluate import EvalResult

        result = EvalResult.from_json(args.work / "results.json")
    else:
        result = evaluate(cfg)
    args.results.mkdir(parents=True, exist_ok=True)
    write_peers(result, args.results, rel, args, command)
    print(f"bench_eval: {len(result.rows)} rows -> {args.results / 'peers.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--search", default=None, help="search folder for the ECAD rows")
    ap.add_argument("--ecad-points", type=int, default=None,
                    help="frontier points to evaluate (default 4; 12 with --sweep, 0: none)")
    ap.add_argument("--every", type=int, default=3, help="use every N-th held-out prompt")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timing-images", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--quant-iters", type=int, default=100, help="AdaRound iterations per block")
    ap.add_argument("--methods", default=None, help="override the method list")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_eval")
    ap.add_argument("--model", default=None)
    ap.add_argument("--results", type=Path, default=RESULTS, help="where eval.md etc. go")
    ap.add_argument("--readme-only", action="store_true", help="rewrite README.md from the existing eval.json "
                    "(with --sweep: peers.md and peers.png from the --work folder's results.json)")
    ap.add_argument("--sweep", action="store_true", help="peers as curves: every peer's knob grid (or --methods) "
                    "and --ecad-points of the --search frontier -> peers.md, peers.json, peers.png")
    args = ap.parse_args(argv)
    if args.ecad_points is None:
        args.ecad_points = 12 if args.sweep else 4
    if args.sweep:
        import torch

        torch.set_num_threads(1)  # CPU-time speedups need every op on the timing thread
        if args.work == ROOT / "runs" / "bench_eval":
            args.work = ROOT / "runs" / "bench_peers"
        return run_sweep(args, "python bench/bench_eval.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])))
    if args.readme_only:
        write_readme(json.loads((args.results / "eval.json").read_text()), args.results)
        return 0

    from ditaccel.evaluate import EvalConfig, evaluate
    from ditaccel.prompts import parse_seeds
    from ditaccel.zoo import shapes

    search = find_search(args.search)
    missing_note = None
    if args.methods:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    else:
        methods = ["baseline", *PEERS, *[f"{q}:{args.quant_iters}" for q in QUANT]]
        if search is not None:
            methods += [m.replace("fp4-w4a8+", f"fp4-w4a8:{args.quant_iters}+")
                        for m in ecad_methods(search, args.ecad_points, 2.0)]
        else:
            missing_note = ("ECAD rows left out: no search folder (looked for "
                            + ", ".join(SEARCH_CANDIDATES) + "); run `ditaccel search` and pass --search DIR")
            print(f"bench_eval: {missing_note}", file=sys.stderr)
    prompts = shapes.heldout_prompts()[::args.every]
    command = "python bench/bench_eval.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    cfg = EvalConfig(methods=methods, out=args.work, prompts=prompts, seeds=parse_seeds(args.seeds),
                     metrics=["adherence", "psnr", "ssim"], model=args.model, batch_size=args.batch_size,
                     timing_images=args.timing_images, timing_repeats=args.repeats, command=command)
    t0 = time.time()
    result = evaluate(cfg)
    res: Path = args.results
    res.mkdir(parents=True, exist_ok=True)
    md = (args.work / "results.md").read_text()
    md = md.replace("- prompts: ", f"- prompts: held-out shapes prompts, every {args.every}th: ", 1)
    if missing_note:
        md += f"\n{missing_note}\n"
    elif search is not None and not args.methods:
        info = json.loads((search / "frontier.json").read_text())
        gens = info.get("generations", info.get("config", {}).get("generations", "?")) if isinstance(info, dict) else "?"
        md += (f"\nECAD rows: up to {args.ecad_points} points of the frontier in `{search.relative_to(ROOT) if search.is_relative_to(ROOT) else search}` "
               f"(written by `ditaccel search` / bench/bench_search.py, metric {info.get('metric')}, "
               f"{len(info.get('points', []))} points, generations {gens}), spread over its MACs-speedup range; "
               f"`fp4-w4a8+ecad` combines FP4DiT with the point nearest 2.0x. Quantized rows: AdaRound "
               f"{args.quant_iters} iterations per block (paper: 2500) on 8 calibration prompts.\n")
    atomic_write_text(res / "eval.md", md)
    shutil.copyfile(args.work / "results.json", res / "eval.json")
    for src, dst in (("grid.png", "eval_grid.png"), ("quality_vs_speed.png", "eval_quality_vs_speed.png")):
        if (args.work / src).is_file():
            shutil.copyfile(args.work / src, res / dst)
    write_readme(json.loads((res / "eval.json").read_text()), res)
    print(f"bench_eval: {len(result.rows)} rows in {time.time() - t0:.0f}s -> {res / 'eval.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
