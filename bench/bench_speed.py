"""Wall-clock vs MACs speedup of cache schedules on full-size PixArt-alpha geometry.

Why: ECAD's MACs savings only matter if they show up in wall-clock time. This times ``none``,
``fora(2)``, ``fora(3)``, ``fora(4)`` in one run, for the transformer alone and for the whole
pipeline, and writes bench/results/speed.md.

Model: PixArtTransformer2DModel with PixArt-XL-2-256 geometry (28 blocks, hidden 1152, 16 heads,
patch 2, T5 width 4096 in, 120 text tokens), random weights, fp32 on CPU. 256 px -> 32x32
latent -> 256 image tokens, batch 2 (one prompt with CFG, as PixArt batches it).
Pipeline: PixArtAlphaPipeline with that transformer, a 1-layer random T5 encoder (d_model 4096),
a word-level tokenizer and a 4-level 8-channel random AutoencoderKL (VAE factor 8), decoding
to numpy; DPMSolverMultistepScheduler.

Run:  python bench/bench_speed.py [--steps 8] [--repeats 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from ditaccel._io import atomic_write_text
from ditaccel._machine import machine_description
from ditaccel.caching import apply_schedule, presets, schedule_macs
from ditaccel.models import get_adapter

HERE = Path(__file__).resolve().parent
TEXT_LEN = 120




def build_transformer() -> torch.nn.Module:
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    return PixArtTransformer2DModel(
        sample_size=32, num_layers=28, attention_head_dim=72, num_attention_heads=16, in_channels=4,
        out_channels=8, patch_size=2, cross_attention_dim=1152, caption_channels=4096,
        norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
        use_additional_conditions=False,
    ).eval()


def build_pipeline(transformer: torch.nn.Module):
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtAlphaPipeline
    from transformers import T5Config, T5EncoderModel

    from ditaccel.testing.replicas import _tokenizer, _vocab_size

    torch.manual_seed(1)
    te = T5EncoderModel(T5Config(vocab_size=_vocab_size(), d_model=4096, d_kv=8, d_ff=32, num_layers=1,
                                 num_heads=2, relative_attention_num_buckets=8)).eval()
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, norm_num_groups=4,
                        latent_channels=4, sample_size=256).eval()
    pipe = PixArtAlphaPipeline(tokenizer=_tokenizer("t5", TEXT_LEN), text_encoder=te, vae=vae,
                               transformer=transformer, scheduler=DPMSolverMultistepScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def time_transformer(t: torch.nn.Module, steps: int, handle=None) -> tuple[float, list[float]]:
    """One generation's transformer calls (DPM-Solver timesteps), no scheduler or VAE."""
    from diffusers import DPMSolverMultistepScheduler

    sch = DPMSolverMultistepScheduler()
    sch.set_timesteps(steps)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 32, 32, generator=g)
    enc = torch.randn(2, TEXT_LEN, 4096, generator=g)
    mask = torch.ones(2, TEXT_LEN)
    per_call = []
    start = time.perf_counter()
    with torch.no_grad():
        for ts in sch.timesteps:
            t0 = time.perf_counter()
            out = t(x, encoder_hidden_states=enc, encoder_attention_mask=mask, timestep=ts.expand(2),
                    added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)[0]
            per_call.append(time.perf_counter() - t0)
            x = x - 0.01 * out[:, :4]
    return time.perf_counter() - start, per_call


def time_pipeline(pipe, steps: int) -> float:
    start = time.perf_counter()
    pipe("a red fox in the city", num_inference_steps=steps, guidance_scale=4.5, height=256, width=256,
         output_type="np", use_resolution_binning=False, max_sequence_length=TEXT_LEN,
         generator=torch.Generator().manual_seed(0))
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1, help="best of N for each timing")
    ap.add_argument("--out", default=str(HERE / "results" / "speed.md"))
    args = ap.parse_args(argv)

    t = build_transformer()
    pipe = build_pipeline(t)
    a = get_adapter(t)
    n_img = a.image_tokens(256, 256)
    full_macs = int(a.component_macs(2, n_img, TEXT_LEN).sum() + a.rest_macs(2, n_img, TEXT_LEN))
    rest_share = a.rest_macs(2, n_img, TEXT_LEN) / full_macs
    print(f"one forward: {full_macs / 1e9:.1f} GMACs (always-run rest {rest_share:.2%})", flush=True)
    time_transformer(t, 1)  # warm-up

    # `none` runs first and again last: the machine is shared, so the two show the drift, and
    # their mean is the baseline.
    names = ["none", "fora(2)", "fora(3)", "fora(4)", "none (again)"]
    scheds = ([presets.none(t, steps=args.steps)] + [presets.fora(t, n, steps=args.steps) for n in (2, 3, 4)]
              + [presets.none(t, steps=args.steps)])
    rows = []
    cached_call = None
    full_call = None
    for name, s in zip(names, scheds, strict=True):
        macs = schedule_macs(t, s, 256, 256, batch=2, text_len=TEXT_LEN)
        with apply_schedule(t, s) as h:
            tt, calls = min((time_transformer(t, args.steps, h) for _ in range(args.repeats)), key=lambda r: r[0])
            tp = min(time_pipeline(pipe, args.steps) for _ in range(args.repeats))
        if name == "none":
            full_call = sorted(calls)[len(calls) // 2]
        if name == "fora(4)":
            cached_call = sorted(calls[i] for i in range(len(calls)) if not s.bits[i].any())[0]
        rows.append((name, macs, tt, tp))
        print(f"{name:8s} TMACs {macs / 1e12:.3f}  transformer {tt:.1f}s  pipeline {tp:.1f}s", flush=True)

    base = (rows[0][0], rows[0][1], (rows[0][2] + rows[-1][2]) / 2, (rows[0][3] + rows[-1][3]) / 2)
    lines = [
        "# Cache schedule speed: MACs speedup vs measured wall-clock speedup",
        "",
        f"- Machine: {machine_description()}.",
        f"- Command: `python bench/bench_speed.py --steps {args.steps} --repeats {args.repeats}`",
        f"- Model: PixArt-alpha 256 geometry (28 blocks, hidden 1152, 16 heads, patch 2), random weights, "
        f"fp32 on CPU. 256 px -> {n_img} image tokens, {TEXT_LEN} text tokens, batch 2 (CFG in one batch). "
        f"{args.steps} DPM-Solver steps (fewer than the paper's 20 so the run fits in minutes on CPU); "
        f"best of {args.repeats}.",
        "- Transformer: the 28-block transformer called once per step with the scheduler's timesteps, "
        "no text encoder, no VAE.",
        "- Pipeline: PixArtAlphaPipeline with that transformer, a 1-layer random T5 encoder (d_model 4096, "
        "d_ff 32), an in-code word-level tokenizer and a 4-level 8-channel random AutoencoderKL "
        "(VAE factor 8), decoding to numpy. The tiny encoder and VAE cost far less than real ones.",
        f"- One full forward: {full_macs / 1e9:.1f} GMACs, of which {rest_share:.2%} always runs "
        "(patch embed, timestep/caption embedders, final layer).",
        "",
        "Speedups are against the mean of the two `none` runs (first and last).",
        "",
        "| schedule | TMACs | MACs speedup | transformer s | transformer speedup | ratio to MACs | "
        "pipeline s | pipeline speedup |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, macs, tt, tp in rows:
        ms, ts, ps = base[1] / macs, base[2] / tt, base[3] / tp
        lines.append(f"| {name} | {macs / 1e12:.3f} | {ms:.2f}x | {tt:.1f} | {ts:.2f}x | {ts / ms:.2f} | "
                     f"{tp:.1f} | {ps:.2f}x |")
    if full_call and cached_call:
        cached_macs = a.rest_macs(2, n_img, TEXT_LEN)
        lines += [
            "",
            f"Where the time goes: a fully computed step took {full_call:.2f} s (median of the `none` run) and "
            f"a fully cached step {cached_call:.3f} s ({cached_call / full_call:.1%} of a full step, "
            f"while its MACs are {cached_macs / full_macs:.2%}). The cached step still runs the patch and "
            "caption embedders, every block's norms, adaLN modulation, gates and residual adds, and the "
            "final layer; those memory-bound ops are what separates wall-clock from MACs speedup.",
        ]
    text = "\n".join(lines) + "\n"
    atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
