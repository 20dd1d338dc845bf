"""Where a search's time goes with a model-based metric: generating images vs scoring them.

Why: with a learned scorer (CLIP, ImageReward) a search should spend its time generating, not
scoring; scoring one image at a time on the CPU would invert that. This runs a short ECAD search
on the bundled model with ``--metric clip`` and a replica-sized CLIP (ditaccel.testing.scorers:
2+2 layers, width 32, 32 px input), times every scoring call, and separately times scoring the
same images in batches of 32 against one at a time (interleaved repeats).

Run:  python bench/bench_metric_split.py [--population 8] [--generations 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from ditaccel._io import atomic_write_text
from ditaccel._machine import machine_description

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--generations", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "metric_split.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from ditaccel.metrics.external import ClipScore
    from ditaccel.pipeline import generate_images, load_pipeline
    from ditaccel.prompts import load_prompts
    from ditaccel.search import SearchConfig, search
    from ditaccel.testing.scorers import save_tiny_clip

    work = Path(tempfile.mkdtemp(prefix="ditaccel-split-"))
    clip = save_tiny_clip(work / "clip")
    pipe = load_pipeline(device="cpu")
    spent = {"score": 0.0, "calls": 0, "images": 0}
    original = ClipScore.per_image

    def timed(self, images, prompts, references=None):
        t0 = time.perf_counter()
        try:
            return original(self, images, prompts, references)
        finally:
            spent["score"] += time.perf_counter() - t0
            spent["calls"] += 1
            spent["images"] += len(images)

    ClipScore.per_image = timed
    t0 = time.perf_counter()
    try:
        front = search(pipe, SearchConfig(metric="clip", metric_paths={"clip_path": str(clip)},
                                          population=args.population, generations=args.generations,
                                          out=work / "search"))
    finally:
        ClipScore.per_image = original
    total = time.perf_counter() - t0
    print(f"search {total:.1f}s, scoring {spent['score']:.1f}s in {spent['calls']} calls", flush=True)

    prompts = load_prompts("parti", limit=32)
    images = generate_images(pipe, prompts, [0] * len(prompts), batch_size=64)
    scorers = {bs: ClipScore(clip, device="cpu", batch_size=bs) for bs in (32, 1)}
    for m in scorers.values():
        m.per_image(images[:2], prompts[:2])  # load the model before timing
    times: dict[int, list[float]] = {32: [], 1: []}
    for _ in range(args.repeats):
        for bs, m in scorers.items():
            t = time.perf_counter()
            m.per_image(images, prompts)
            times[bs].append(time.perf_counter() - t)
    atomic_write_text(args.out, _report(args, total, spent, len(front.points), len(images), times))
    print(f"wrote {args.out}")
    return 0


def _report(args: argparse.Namespace, total: float, spent: dict, points: int, n: int,
            times: dict[int, list[float]]) -> str:
    gen = total - spent["score"]
    med = {bs: statistics.median(v) for bs, v in times.items()}
    spread = {bs: (min(v), max(v)) for bs, v in times.items()}
    return "\n".join([
        "# Generate vs score: where a search's time goes with a model-based metric",
        "",
        f"- Machine: {machine_description()}. The 2-core machine was shared with other jobs while this ran.",
        f"- Command: `python bench/bench_metric_split.py --population {args.population} "
        f"--generations {args.generations} --repeats {args.repeats}`",
        "- Search: `ditaccel.search` on the bundled model (its default prompts for a metric other than "
        "adherence: the first 32 PartiPrompts x seed 0; 20 steps), "
        f"population {args.population}, {args.generations} generations, `metric='clip'` with a replica-sized "
        "CLIP (ditaccel.testing.scorers.save_tiny_clip: 2 text + 2 vision layers, width 32, 32 px input), "
        "scored in batches of 32 on the CPU.",
        "",
        "| | seconds | share |",
        "|---|---|---|",
        f"| whole search | {total:.1f} | 100% |",
        f"| scoring (every `per_image` call: preprocessing + CLIP forward), {spent['calls']} calls, "
        f"{spent['images']} images | {spent['score']:.1f} | {spent['score'] / total:.1%} |",
        f"| everything else (image generation with the schedules, the GA) | {gen:.1f} | {gen / total:.1%} |",
        "",
        f"Scoring the same {n} images (64 px) with that CLIP, median of {args.repeats} interleaved repeats "
        "(min-max in brackets):",
        "",
        "| batch | seconds | per image (ms) |",
        "|---|---|---|",
        f"| 32 | {med[32]:.3f} [{spread[32][0]:.3f}-{spread[32][1]:.3f}] | {1000 * med[32] / n:.2f} |",
        f"| 1 (one image per forward, as before) | {med[1]:.3f} [{spread[1][0]:.3f}-{spread[1][1]:.3f}] | "
        f"{1000 * med[1] / n:.2f} |",
        "",
        f"Batching makes scoring {med[1] / med[32]:.1f}x faster here. (The random scorer's frontier has "
        f"{points} point(s); its quality values mean nothing, only the timings do.) "
        "A real scorer (CLIP ViT-L/14, ImageReward's BLIP ViT-L) costs far more per image than this tiny "
        "one, and the bundled generator is tiny too, so the shares on a GPU with real models differ; "
        "what this shows is that ditaccel's scoring path adds little per image on top of the model's own "
        "forward once it runs in batches on the pipeline's device.",
        "",
    ])


if __name__ == "__main__":
    sys.exit(main())
