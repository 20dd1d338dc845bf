"""ditaccel's MACs of ECAD's published schedules next to the figures in ECAD's own files.

Why: an imported schedule carries ECAD's ``metrics.by_inference_step[step].macs``; ditaccel
counts MACs analytically. This shows where and why they differ, on the geometry ECAD measured
(PixArt-XL-2 256 px: batch 2, 120 text tokens; FLUX.1 256 px: batch 2, 512 text tokens).

The models are built on the ``meta`` device: MACs need only module shapes, no weights.

Run:  git clone https://github.com/AniAggarwal/ecad /tmp/ecad
      python bench/ecad_macs.py --ecad-dir /tmp/ecad
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from ditaccel._io import atomic_write_text
from ditaccel._machine import machine_description
from ditaccel.caching import CacheSchedule, presets, schedule_macs
from ditaccel.models import get_adapter

HERE = Path(__file__).resolve().parent
FILES = {
    "pixart": ["pixart_alpha_256/ours_fast", "pixart_alpha_256/ours_faster", "pixart_alpha_256/ours_fastest"],
    "flux": ["flux_256/ours_fast", "flux_256/ours_faster"],
}
TEXT = {"pixart": 120, "flux": 512}


def build(family: str) -> torch.nn.Module:
    """PixArt-XL-2 256 or FLUX.1 [dev] transformer geometry, shapes only (meta device)."""
    from diffusers import FluxTransformer2DModel, PixArtTransformer2DModel

    with torch.device("meta"):
        if family == "pixart":
            return PixArtTransformer2DModel(
                sample_size=32, num_layers=28, attention_head_dim=72, num_attention_heads=16, in_channels=4,
                out_channels=8, patch_size=2, cross_attention_dim=1152, caption_channels=4096,
                norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
                use_additional_conditions=False)
        return FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
            axes_dims_rope=(16, 56, 56))


def attention_matmuls(t: torch.nn.Module, family: str, n_img: int, n_txt: int, bits: np.ndarray) -> np.ndarray:
    """Per-step MACs of the QK^T and AV matmuls alone, of the attention components each step recomputes."""
    a = get_adapter(t)
    eff = bits.copy()
    eff[0] = True
    per = np.zeros(a.num_blocks, dtype=np.int64)
    for b in range(a.num_blocks):
        attn = a.component_module(b, 0)
        width = attn.to_q.out_features + attn.to_v.out_features
        if family == "pixart":
            per[b] = 2 * n_img * n_img * width
        else:
            per[b] = 2 * (n_img + n_txt) ** 2 * width
    cross = np.zeros(a.num_blocks, dtype=np.int64)
    if family == "pixart":
        for b in range(a.num_blocks):
            attn2 = a.component_module(b, 1)
            cross[b] = 2 * n_img * n_txt * (attn2.to_q.out_features + attn2.to_v.out_features)
    return (eff[:, :, 0] * per[None]).sum(axis=1) + (eff[:, :, 1] * cross[None]).sum(axis=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ecad-dir", type=Path, required=True, help="a clone of github.com/AniAggarwal/ecad")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "ecad_macs.md")
    args = ap.parse_args(argv)
    root = args.ecad_dir / "schedules" / "schedules_in_paper"
    rows = []
    for family, files in FILES.items():
        t = build(family)
        a = get_adapter(t)
        n_img, n_txt = a.image_tokens(256, 256), TEXT[family]
        base = schedule_macs(t, presets.none(t, steps=20), 256, 256, batch=2, text_len=n_txt)
        for name in files:
            path = root / f"{name}.json"
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
            s = CacheSchedule.load(path, t)
            ours = schedule_macs(t, s, 256, 256, batch=2, text_len=n_txt)
            theirs = [int(v["macs"]) for v in raw["metrics"]["by_inference_step"].values()]
            sdpa = attention_matmuls(t, family, n_img, n_txt, s.bits)
            gap = ours - sum(theirs)
            rows.append((family, name, ours, base, sum(theirs), 20 * theirs[0], gap, int(sdpa.sum()),
                         max(abs(int(x)) for x in np.asarray(theirs) + sdpa - _per_step(t, s, n_img, n_txt))))
            print(rows[-1], flush=True)
    atomic_write_text(args.out, _report(rows, args))
    print(f"wrote {args.out}")
    return 0


def _per_step(t: torch.nn.Module, s: CacheSchedule, n_img: int, n_txt: int) -> np.ndarray:
    a = get_adapter(t)
    eff = s.bits.copy()
    eff[0] = True
    return (eff * a.component_macs(2, n_img, n_txt)[None]).sum(axis=(1, 2)) + a.rest_macs(2, n_img, n_txt)


def _report(rows: list[tuple], args: argparse.Namespace) -> str:
    lines = [
        "# ECAD's published schedules: ditaccel's MACs vs the figures in ECAD's files",
        "",
        f"- Machine: {machine_description()} (MACs are analytic: the machine does not change them).",
        f"- Command: `python bench/ecad_macs.py --ecad-dir {args.ecad_dir}` on a clone of "
        "github.com/AniAggarwal/ecad (commit a2f0534), files `schedules/schedules_in_paper/*/ours_*.json`.",
        "- Geometry as ECAD measured it (ecad/benchmark/compute_macs.py): PixArt-XL-2 at 256 px "
        "(256 image tokens, 120 text tokens), FLUX.1 [dev] at 256 px (256 image tokens, 512 text tokens), "
        "batch 2, 20 steps. ditaccel counts step 0 as fully computed, as both runtimes run it.",
        "",
        "| schedule | ditaccel TMACs | ditaccel speedup | ECAD file TMACs | ECAD file speedup "
        "| ditaccel - ECAD (TMACs) | attention QK^T+AV MACs (T) | max per-step residual |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _family, name, ours, base, theirs, theirs_full, gap, sdpa, resid in rows:
        lines.append(f"| {name} | {ours / 1e12:.4f} | {base / ours:.3f}x | {theirs / 1e12:.4f} | "
                     f"{theirs_full / theirs:.3f}x | {gap / 1e12:.4f} | {sdpa / 1e12:.4f} | {resid} |")
    lines += [
        "",
        "**Why they differ.** ECAD's figures come from calflops run on the transformer's forward "
        "(ecad/benchmark/compute_macs.py). That count leaves out the QK^T and AV matmuls inside "
        "`F.scaled_dot_product_attention`, which diffusers' attention processors call; ditaccel's "
        "adapter counts them. The last two columns show that this is the whole difference: ECAD's "
        "per-step MACs plus the attention matmuls of the components that step recomputes equal "
        "ditaccel's per-step MACs exactly (the residual is the largest per-step difference, in MACs). "
        "At 256 px the attention matmuls are about 4% of a full step, and cached steps skip them in "
        "the same proportion, so the speedups agree to within 0.3%. At higher resolutions they grow "
        "with the square of the token count, so the two counts (and speedups) can differ more there.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
