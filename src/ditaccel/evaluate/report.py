"""The evaluation's files: results.md, results.json, grid.png, quality_vs_speed.png."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ditaccel._io import atomic_write, atomic_write_json, atomic_write_text
from ditaccel.caching.schedule import effective_bits
from ditaccel.metrics import metric_label, needs_reference


def _f(x: Any, fmt: str = "{:.2f}", dash: str = "–") -> str:
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return dash
    return fmt.format(x)


def _mib(x: int | None) -> str:
    return _f(None if x is None else x / 2**20, "{:.1f}")


def markdown(result: Any) -> str:
    """The table plus the conditions it was measured under."""
    info = result.info
    metrics = info["metrics"]
    cpu = any(r.cpu_speedup for r in result.rows)
    pred = any(r.predicted_speedup for r in result.rows)
    head = ["method", "`--methods`", "speedup (wall)"] + (["speedup (CPU time)"] if cpu else [])
    head += ["predicted speedup"] if pred else []
    head += ["MACs speedup", "s/image", "peak mem MiB", "weights MiB"]
    head += [metric_label(m) for m in metrics] + ["notes"]
    lines = [
        "# ditaccel eval",
        "",
        f"- machine: {info['machine']}",
        f"- command: `{info['command']}`",
        f"- date: {info['date']}; wall time {info['wall_seconds']} s",
        f"- model: {info['model']} ({info['pipeline']}, {info['device']})",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items()),
        f"- prompts: {info['prompts']} ({info['num_prompts']} prompts) x seeds {info['seeds']} = "
        f"{info['num_images']} images per method; call {info['call']}",
        f"- speedup: whole-pipeline wall clock vs baseline in this run, {info['timing']['images_per_run']} "
        f"images per run, 1 warm-up, median of {info['timing']['repeats']} interleaved repeats",
    ]
    if cpu:
        lines.append("- speedup (CPU time): the same runs timed by the generating thread's CPU time (one torch "
                     "thread), which other jobs on shared cores do not inflate the way they do the wall clock")
    if pred:
        lines.append("- predicted speedup: the search's latency model (`ditaccel.caching.latency`) for ECAD "
                     "frontier points, profiled at one image per call; " + prediction_error(result.rows))
    lines += [
        "- MACs speedup: transformer MACs; `schedule_macs` for schedule rows, executed MACs counted by "
        "hooks for dynamic peers",
        f"- peak mem: {info['memory_kind']}; weights: transformer parameters + buffers",
        "- PSNR/SSIM: against the baseline image with the same prompt and seed",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for r in result.rows:
        name = r.name or r.label
        if r.status != "ok":
            lines.append("| " + " | ".join([name, f"`{r.label}`"] + ["–"] * (len(head) - 3)
                                           + [f"skipped: {r.reason}"]) + " |")
            continue
        vals = [_metric_cell(r, m) for m in metrics]
        speeds = [_f(r.speedup, "{:.2f}x")] + ([_f(r.cpu_speedup, "{:.2f}x")] if cpu else [])
        speeds += [_f(r.predicted_speedup, "{:.2f}x")] if pred else []
        lines.append("| " + " | ".join([
            name, f"`{r.label}`", *speeds, _f(r.macs_speedup, "{:.2f}x"), _f(r.seconds_per_image, "{:.3f}"),
            _mib(r.peak_memory_bytes), _mib(r.weight_bytes), *vals, "; ".join(r.notes)]) + " |")
    lines.append("")
    return "\n".join(lines)


def prediction_error(rows: list[Any]) -> str:
    """How far the latency model's speedups are from the measured ones (CPU time where there is one)."""
    pairs = [(r.predicted_speedup, r.cpu_speedup or r.speedup) for r in rows
             if r.status == "ok" and r.predicted_speedup and (r.cpu_speedup or r.speedup)]
    if not pairs:
        return "no row with both"
    import statistics

    errs = [abs(p / m - 1) for p, m in pairs]
    return (f"over {len(errs)} rows its speedup is a median {100 * statistics.median(errs):.1f}% "
            f"(max {100 * max(errs):.1f}%) from the measured one")


def _metric_cell(r: Any, m: str) -> str:
    v = r.metrics.get(m)
    if v is None and r.kind == "baseline" and needs_reference(m):
        return "ref"
    if m == "psnr" and v is not None and math.isinf(v):
        return "inf (identical)"
    return _f(v, "{:.3f}" if m != "psnr" else "{:.2f}")


def _label_fig(n_rows: int, n_cols: int) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(n_rows, n_cols + 1, figsize=(1.4 * (n_cols + 1) + 1.6, 1.4 * n_rows + 0.3),
                             gridspec_kw={"width_ratios": [2.2] + [1] * n_cols}, squeeze=False)
    return fig, axes


def write_grid(result: Any, store: Any, jobs: list[tuple[str, int]], columns: int, path: Any) -> None:
    """One row per method, one column per (prompt, seed): the same images across rows."""
    rows = [r for r in result.rows if r.status == "ok"]
    if not rows:
        return
    n = min(columns, len(jobs))
    cols = [int(round(i)) for i in np.linspace(0, len(jobs) - 1, n)] if n > 1 else [0]
    fig, axes = _label_fig(len(rows), len(cols))
    from PIL import Image

    for i, r in enumerate(rows):
        axes[i][0].axis("off")
        axes[i][0].text(0.98, 0.5, r.label + (f"\n{r.speedup:.2f}x" if r.speedup else ""), ha="right",
                        va="center", fontsize=7, transform=axes[i][0].transAxes)
        for j, k in enumerate(cols):
            ax = axes[i][j + 1]
            ax.imshow(np.asarray(Image.open(store.path(r.label, k)).convert("RGB")), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                p, s = jobs[k]
                ax.set_title(f"{p[:28]}\nseed {s}", fontsize=5)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    import matplotlib.pyplot as plt

    plt.close(fig)


SPEED_AXES = {"speedup": "measured wall-clock speedup vs baseline (same run)",
              "cpu_speedup": "measured speedup in CPU time of the generating thread (same run)"}


def _is_ecad(r: Any) -> bool:
    return bool(r.group) and str(r.group).startswith("ECAD")


def write_plot(result: Any, path: Any, speed: str = "speedup") -> list[str]:
    """Quality vs measured speedup: each curve (an ECAD frontier, a peer's knob grid) a line, other rows points.

    A second panel shows PSNR to the baseline when the main quality metric is another one, since
    a coarse metric (e.g. adherence on a few dozen images) ties many methods. Returns the legend
    entries of the first panel (drawn curves first).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q = result.info["quality_metric"]
    panels = [q] + (["psnr"] if q != "psnr" and "psnr" in result.info["metrics"] else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(8.5 * len(panels), 6.2), squeeze=False)
    cmap = plt.get_cmap("tab10")
    curves = list(dict.fromkeys(r.curve or r.group for r in result.rows if (r.curve or r.group)))
    legend: list[str] = []
    for ax, metric in zip(axes[0], panels, strict=True):
        rows = [r for r in result.rows if r.status == "ok" and getattr(r, speed, None) and metric in r.metrics
                and math.isfinite(r.metrics[metric])]
        drawn: list[str] = []
        for i, c in enumerate(curves):
            rs = sorted((r for r in rows if (r.curve or r.group) == c), key=lambda r: getattr(r, speed))
            if not rs:
                continue
            ecad = _is_ecad(rs[0])
            style = "-o" if ecad else ("-" if i < 10 else "--") + "^sDvP<>"[i % 7]
            ax.plot([getattr(r, speed) for r in rs], [r.metrics[metric] for r in rs], style,
                    ms=6 if ecad else 4, lw=2.6 if ecad else 1.3, color="black" if ecad else cmap(i % 10),
                    zorder=4 if ecad else 2, label=c)
            drawn.append(c)
        for r in rows:
            if r.curve or r.group:
                continue
            star = r.kind == "baseline"
            ax.scatter([getattr(r, speed)], [r.metrics[metric]], marker="*" if star else "x", s=110 if star else 40,
                       color="gold" if star else "grey", edgecolor="black" if star else None, zorder=5,
                       label=r.name or r.label)
            drawn.append(r.name or r.label)
        legend = legend or drawn
        ax.legend(fontsize=6.5, loc="best", ncol=1 + len(drawn) // 14)
        ax.axvline(1.0, color="grey", lw=0.5, ls=":")
        ax.set_xlabel(SPEED_AXES.get(speed, speed))
        ax.set_ylabel(metric_label(metric) + (" to baseline" if needs_reference(metric) else "")
                      + " (higher is better)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{result.info['model'].rstrip('/').split('/')[-1]}: quality vs speed "
                 f"({result.info['num_images']} images per method; each line one method with its knob varied, "
                 f"black: ECAD frontier)", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return legend


# ----------------------------------------------------------------------------- dominance

QUALITY_COLUMNS = ("adherence", "psnr")


def schedule_key(bits: Any, step_reuse: str = "components") -> str:
    """Reuse rule, shape and packed bits of a schedule, step 0 as computed (the runtime always computes it).

    Two rows with the same key run the same schedule, so their speed difference is noise. The same bits
    under residual step reuse are another schedule (it skips the block stack where the other runs it).
    """
    b = np.asarray(bits, dtype=bool)
    if b.ndim and len(b):
        b = effective_bits(b)
    key = "x".join(map(str, b.shape)) + ":" + np.packbits(b.reshape(-1)).tobytes().hex()
    return key if step_reuse == "components" else f"{step_reuse}:{key}"


@dataclass
class Dominance:
    """One peer point against an ECAD frontier, on measured speed and every quality column.

    ``matched``: an ECAD point with the very same schedule bits (a schedule peer such as FORA can
    coincide with a frontier point); such a peer is neither dominated nor not dominated, since any
    speed difference between the two is measurement noise. ``by``: the fastest ECAD point at least as fast and at least as good on every column (None if
    there is none). Otherwise the gaps: ``speed_ratio`` = speed of the fastest ECAD point that is at
    least as good on every column / the peer's speed (< 1: ECAD needs to be slower to match it), and
    ``quality_gap`` = per column, the best ECAD value among points at least as fast minus the peer's
    (PSNR in dB; < 0: ECAD is worse at that speed). None where no ECAD point qualifies.
    """

    peer: Any
    by: Any = None
    speed_ratio: float | None = None
    quality_gap: dict[str, float | None] = field(default_factory=dict)
    matched: Any = None

    @property
    def dominated(self) -> bool:
        return self.by is not None


def dominance(rows: list[Any], speed: str = "speedup", columns: tuple[str, ...] = QUALITY_COLUMNS,
              frontier: str | None = None) -> list[Dominance]:
    """For every peer row, the ECAD point that dominates it, or how far the frontier falls short.

    ``frontier`` picks the ECAD group (default: the first full-precision one); peers are every other
    measured row except the baseline and quantized rows.
    """
    ok = [r for r in rows if r.status == "ok" and getattr(r, speed, None)]
    groups = [r.group for r in ok if _is_ecad(r) and "quant" not in r.kind]
    if frontier is None and groups:
        frontier = groups[0]
    ecad = [r for r in ok if r.group == frontier and frontier is not None]
    peers = [r for r in ok if not _is_ecad(r) and r.kind != "baseline" and "quant" not in r.kind]
    cols = [c for c in columns if all(c in r.metrics for r in ecad + peers)]

    def good(e: Any, p: Any) -> bool:
        return all(e.metrics[c] >= p.metrics[c] for c in cols)

    same = {e.schedule_key: e for e in ecad if getattr(e, "schedule_key", None)}
    out = []
    for p in sorted(peers, key=lambda r: (r.curve or r.name or r.label, getattr(r, speed))):
        key = getattr(p, "schedule_key", None)
        if key and key in same:
            out.append(Dominance(p, matched=same[key]))
            continue
        sp = getattr(p, speed)
        fast = [e for e in ecad if getattr(e, speed) >= sp]
        winners = [e for e in fast if good(e, p)]
        d = Dominance(p, by=max(winners, key=lambda e: getattr(e, speed)) if winners else None)
        if not winners:
            as_good = [e for e in ecad if good(e, p)]
            d.speed_ratio = max(getattr(e, speed) for e in as_good) / sp if as_good else None
            d.quality_gap = {c: (max(e.metrics[c] for e in fast) - p.metrics[c]) if fast else None for c in cols}
        out.append(d)
    return out


def _q(r: Any, cols: list[str]) -> str:
    return ", ".join(("inf dB" if math.isinf(r.metrics[c]) else f"{r.metrics[c]:.2f} dB") if c == "psnr"
                     else f"{c} {r.metrics[c]:.3f}" for c in cols)


def dominance_markdown(doms: list[Dominance], speed: str = "speedup",
                       columns: tuple[str, ...] = QUALITY_COLUMNS) -> str:
    """The dominance report as a table: one row per peer point."""
    if not doms:
        return "No peer rows and ECAD points to compare.\n"
    cols = [c for c in columns if c in doms[0].peer.metrics]
    lines = ["| peer point | speedup | quality | verdict |", "|---|---|---|---|"]
    for d in doms:
        p = d.peer
        if d.matched is not None:
            verdict = f"**matched**: the frontier holds this same schedule ({d.matched.name or d.matched.label})"
        elif d.dominated:
            e = d.by
            verdict = (f"dominated by **{e.name or e.label}**: {getattr(e, speed):.2f}x, {_q(e, cols)}")
        else:
            gaps = []
            if d.speed_ratio is not None:
                gaps.append(f"the fastest ECAD point as good on {' and '.join(cols)} runs at "
                            f"{d.speed_ratio:.2f}x the peer's speed")
            else:
                gaps.append("no ECAD point is as good on " + " and ".join(cols))
            if all(v is None for v in d.quality_gap.values()):
                gaps.append("no ECAD point is this fast")
            else:
                gaps.append("best ECAD point at least as fast: " + ", ".join(
                    f"{v:+.2f} dB" if c == "psnr" else f"{c} {v:+.3f}" for c, v in d.quality_gap.items()
                    if v is not None and not math.isnan(v)))
            verdict = "**not dominated**: " + "; ".join(gaps)
        lines.append(f"| {p.name or p.label} | {getattr(p, speed):.2f}x | {_q(p, cols)} | {verdict} |")
    n, same = sum(d.dominated for d in doms), sum(d.matched is not None for d in doms)
    lines += ["", f"{n} of {len(doms)} peer points dominated" + (
        f"; {same} matched (the frontier holds the same schedule, so only noise separates their speeds)"
        if same else "") + "."]
    return "\n".join(lines) + "\n"


def write_outputs(result: Any, store: Any, jobs: list[tuple[str, int]], columns: int) -> None:
    out = result.out
    atomic_write_json(out / "results.json", result.to_dict())
    atomic_write_text(out / "results.md", markdown(result))
    write_grid(result, store, jobs, columns, out / "grid.png")
    write_plot(result, out / "quality_vs_speed.png")
