"""Why the learned frontier lost to FirstBlockCache at low speedups: which steps FBC skips, and
whether a static schedule that reuses exactly those steps matches it.

Why: issue 10 measured FirstBlockCache 0.1 at 1.50x / 59.3 dB while the ECAD frontier's slowest
point was 1.43x / 45.1 dB. Before changing the search, find out whether the gap is the static
per-component semantics (then a new gene kind is needed) or the schedules the search tried
(then presets and operators fix it). This records, per calibration batch, which steps FBC ran
block 1 at, builds the static copy (every component reused at the steps FBC skipped in most
batches; optionally block 0 computed, as FBC does), and scores both against the uncached images.
It then scores the ``presets.early_skip`` ladder next to FORA(2)/FORA(3).

Run:  python bench/why_low_end.py [--prompts 12] [--thresholds 0.1,0.15,0.3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ditaccel._io import atomic_write_text
from ditaccel._machine import machine_description
from ditaccel.caching import CacheSchedule, apply_schedule, presets, schedule_macs
from ditaccel.caching.dynamic import apply_peer_cache
from ditaccel.metrics import get_metric
from ditaccel.metrics.fidelity import psnr
from ditaccel.models import get_adapter, image_size
from ditaccel.pipeline import generate_images, load_pipeline, pipeline_call_kwargs
from ditaccel.prompts import load_prompts

HERE = Path(__file__).resolve().parent
BATCH = 8  # images per pipeline call, as `ditaccel eval` generates them (FBC decides per batch)


class StepRecorder:
    """Per pipeline call and step: did block 1's feed-forward run (FBC skips blocks 1.. as a whole)."""

    def __init__(self, pipe: Any) -> None:
        self.calls: list[list[int]] = []
        self._t: float | None = None
        t = pipe.transformer
        self._hooks = [t.register_forward_pre_hook(self._step, with_kwargs=True),
                       t.transformer_blocks[1].ff.register_forward_pre_hook(self._ran)]

    def _step(self, _m: Any, _a: Any, kwargs: dict[str, Any]) -> None:
        t = float(kwargs["timestep"].reshape(-1)[0])
        if self._t is None or t > self._t:
            self.calls.append([])
        self._t = t
        self.calls[-1].append(0)

    def _ran(self, *_: Any) -> None:
        self.calls[-1][-1] = 1

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()


def score(images: list[np.ndarray], refs: list[np.ndarray], prompts: list[str]) -> tuple[float, float]:
    adh = get_metric("adherence").score(images, prompts, None)
    return float(np.mean([psnr(i, r) for i, r in zip(images, refs, strict=True)])), float(adh)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=12, help="every 3rd calibration prompt, this many")
    ap.add_argument("--thresholds", default="0.1,0.15,0.3")
    ap.add_argument("--results", type=Path, default=HERE / "results" / "search_why.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    pipe = load_pipeline()
    kw = pipeline_call_kwargs(pipe)
    a = get_adapter(pipe)
    steps = int(kw.get("num_inference_steps") or 20)
    prompts = load_prompts("calibration")[::3][: args.prompts]
    seeds = [0] * len(prompts)
    h, w = image_size(pipe, kw)
    full = schedule_macs(pipe, presets.none(pipe, steps), h, w)

    def gen() -> list[np.ndarray]:
        return generate_images(pipe, prompts, seeds, batch_size=BATCH, **kw)

    def run(s: CacheSchedule) -> tuple[float, float, float]:
        with apply_schedule(pipe, s):
            p, adh = score(gen(), refs, prompts)
        return full / schedule_macs(pipe, s, h, w), p, adh

    refs = gen()
    rows = ["| method | steps reused (share of batches) | MACs speedup | PSNR (dB) | adherence |", "|---|---|---|---|---|"]
    rec = StepRecorder(pipe)
    try:
        for thr in [float(x) for x in args.thresholds.split(",")]:
            rec.calls.clear()
            with apply_peer_cache(pipe, "fbc", threshold=thr):
                p, adh = score(gen(), refs, prompts)
            ran = np.array(rec.calls, dtype=float)
            skipped = 1.0 - ran.mean(axis=0)
            shown = " ".join(f"{s}:{v:.1f}" for s, v in enumerate(skipped) if v > 0)
            frac = ran.mean() * (a.num_blocks - 1) / a.num_blocks + 1 / a.num_blocks
            rows.append(f"| FirstBlockCache {thr} | {shown} | {1 / frac:.2f} (blocks run) | {p:.2f} | {adh:.3f} |")
            most = [s for s in range(1, steps) if skipped[s] >= 0.5]
            for b0 in (False, True):
                s = presets.skip_steps(pipe, most, steps, first_block=b0)
                x, p2, adh2 = run(s)
                rows.append(f"| static copy{' + block 0' if b0 else ''} | {','.join(map(str, most))} | {x:.2f} | "
                            f"{p2:.2f} | {adh2:.3f} |")
    finally:
        rec.remove()
    rows += ["", "| preset | MACs speedup | PSNR (dB) | adherence |", "|---|---|---|---|"]
    for name, s in [*presets.dynamic_like_presets(pipe, steps), ("fora(2)", presets.fora(pipe, 2, steps)),
                    ("fora(3)", presets.fora(pipe, 3, steps))]:
        x, p, adh = run(s)
        rows.append(f"| {name} | {x:.2f} | {p:.2f} | {adh:.3f} |")
    head = ["# Why the frontier lost at low speedups (issue 10): FirstBlockCache's step choice, copied statically",
            "", f"- Machine: {machine_description()}; shared with other jobs.",
            f"- Command: `python bench/why_low_end.py --prompts {args.prompts} --thresholds {args.thresholds}` "
            f"({time.perf_counter() - t0:.0f} s wall).",
            f"- Images: {len(prompts)} calibration prompts (every 3rd) x seed 0, {steps} steps, {BATCH} per call; "
            "PSNR against the uncached images; 'share of batches': how many pipeline calls FBC skipped the step in.", ""]
    atomic_write_text(args.results, "\n".join(head + rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
