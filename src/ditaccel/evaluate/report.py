"""The evaluation's files: results.md, results.json, grid.png, quality_vs_speed.png."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ditaccel._io import atomic_write, atomic_write_json, atomic_write_text

_HIGHER_NAMES = {"adherence": "adherence", "psnr": "PSNR (dB)", "ssim": "SSIM", "clip": "CLIP",
                 "imagereward": "ImageReward", "hpsv2": "HPSv2", "fid": "-FID"}


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
    head = ["method", "speedup (wall)", "MACs speedup", "s/image", "peak mem MiB", "weights MiB"]
    head += [_HIGHER_NAMES.get(m, m) for m in metrics] + ["notes"]
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
        "- MACs speedup: transformer MACs; `schedule_macs` for schedule rows, executed MACs counted by "
        "hooks for dynamic peers",
        f"- peak mem: {info['memory_kind']}; weights: transformer parameters + buffers",
        "- PSNR/SSIM: against the baseline image with the same prompt and seed",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for r in result.rows:
        if r.status != "ok":
            lines.append("| " + " | ".join([r.label] + ["–"] * (len(head) - 2) + [f"skipped: {r.reason}"]) + " |")
            continue
        vals = []
        for m in metrics:
            v = r.metrics.get(m)
            if v is None and r.kind == "baseline" and m in ("psnr", "ssim"):
                vals.append("ref")
            elif m == "psnr" and v is not None and math.isinf(v):
                vals.append("inf (identical)")
            else:
                vals.append(_f(v, "{:.3f}" if m != "psnr" else "{:.2f}"))
        notes = "; ".join(r.notes)
        lines.append("| " + " | ".join([
            r.label, _f(r.speedup, "{:.2f}x"), _f(r.macs_speedup, "{:.2f}x"), _f(r.seconds_per_image, "{:.3f}"),
            _mib(r.peak_memory_bytes), _mib(r.weight_bytes), *vals, notes]) + " |")
    lines.append("")
    return "\n".join(lines)


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


def write_plot(result: Any, path: Any) -> None:
    """Quality vs measured speedup: every method a point, each ECAD frontier a line.

    A second panel shows PSNR to the baseline when the main quality metric is another one, since
    a coarse metric (e.g. adherence on a few dozen images) ties many methods.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q = result.info["quality_metric"]
    panels = [q] + (["psnr"] if q != "psnr" and "psnr" in result.info["metrics"] else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 5.2), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes[0], panels, strict=True):
        rows = [r for r in result.rows if r.status == "ok" and r.speedup and metric in r.metrics
                and math.isfinite(r.metrics[metric])]
        groups: dict[str, list[Any]] = {}
        k = 0
        for r in rows:
            if r.group:
                groups.setdefault(r.group, []).append(r)
                continue
            marker = "*" if r.kind == "baseline" else ("s" if "quant" in r.kind else ("^" if "peer" in r.kind else "o"))
            ax.scatter([r.speedup], [r.metrics[metric]], marker=marker, s=90 if marker == "*" else 40, zorder=3,
                       color=colors[k % len(colors)])
            k += 1
            ax.annotate(r.label, (r.speedup, r.metrics[metric]), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")
        for g, rs in groups.items():
            rs = sorted(rs, key=lambda r: r.speedup)
            ax.plot([r.speedup for r in rs], [r.metrics[metric] for r in rs], "-o", ms=4, label=g, zorder=2)
        if groups:
            ax.legend(fontsize=7, loc="best")
        ax.axvline(1.0, color="grey", lw=0.5, ls=":")
        ax.set_xlabel("measured wall-clock speedup vs baseline (same run)")
        ax.set_ylabel(_HIGHER_NAMES.get(metric, metric) + (" to baseline" if metric in ("psnr", "ssim") else "")
                      + " (higher is better)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{result.info['model'].rstrip('/').split('/')[-1]}: quality vs speed "
                 f"({result.info['num_images']} images per method; o schedule, ^ peer cache, s quantized, "
                 f"* baseline)", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def write_outputs(result: Any, store: Any, jobs: list[tuple[str, int]], columns: int) -> None:
    out = result.out
    atomic_write_json(out / "results.json", result.to_dict())
    atomic_write_text(out / "results.md", markdown(result))
    write_grid(result, store, jobs, columns, out / "grid.png")
    write_plot(result, out / "quality_vs_speed.png")
