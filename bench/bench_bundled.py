"""Quality and speed of the bundled model; writes bench/results/bundled.md.

Quality: all 180 prompts x seeds 0-3 (the training script's checks used other seeds), default
call settings, judged by the shapes adherence checker. Speed: one 20-step call for 8 images.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from ditaccel._io import atomic_write_text
from ditaccel._machine import machine_description
from ditaccel.pipeline import generate_images, load_pipeline, pipeline_call_kwargs
from ditaccel.zoo import shapes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench/results/bundled.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline()
    kw = pipeline_call_kwargs(pipe)

    prompts = [p for p in shapes.all_prompts() for _ in range(args.seeds)]
    seeds = [s for _ in shapes.all_prompts() for s in range(args.seeds)]
    t0 = time.perf_counter()
    images = generate_images(pipe, prompts, seeds, batch_size=24)
    gen_s = time.perf_counter() - t0
    rates = shapes.adherence_rates(images, prompts)
    held = [i for i, p in enumerate(prompts) if p in set(shapes.heldout_prompts())]
    rates_held = shapes.adherence_rates([images[i] for i in held], [prompts[i] for i in held])

    eight = shapes.heldout_prompts()[:8]
    generate_images(pipe, eight, list(range(8)), batch_size=8)  # warm-up
    times = []
    for _ in range(3):
        t = time.perf_counter()
        generate_images(pipe, eight, list(range(8)), batch_size=8)
        times.append(time.perf_counter() - t)
    n_params = {k: sum(p.numel() for p in getattr(pipe, k).parameters()) for k in ("transformer", "vae", "text_encoder")}

    def row(name: str, r: dict[str, float]) -> str:
        return f"| {name} | " + " | ".join(f"{100 * r[k]:.1f}%" for k in (*shapes.ATTRIBUTES, "all")) + " |"

    md = f"""# The bundled model: quality and speed

- Machine: {machine_description()}
- Command: `python bench/bench_bundled.py --seeds {args.seeds} --threads {args.threads}`
- Call settings: {kw}
- Parameters: transformer {n_params['transformer']:,}, VAE {n_params['vae']:,}, text encoder {n_params['text_encoder']:,}

## Adherence (shapes checker), {len(prompts)} images = 180 prompts x seeds 0-{args.seeds - 1}

| prompts | color | shape | size | position | all |
|---|---|---|---|---|---|
{row("all 180", rates)}
{row("held-out 144", rates_held)}

Generating those {len(prompts)} images took {gen_s:.0f} s (batches of 24).

## Speed

One 20-step pipeline call for 8 images (CFG batch of 16), median of 3 after a warm-up:
**{statistics.median(times):.2f} s** (runs: {", ".join(f"{t:.2f}" for t in times)}).
"""
    atomic_write_text(args.out, md)
    print(md)


if __name__ == "__main__":
    main()
