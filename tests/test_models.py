"""Adapters: analytic MACs against torch's FLOP counter, and schedule_macs against executions."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ditaccel.caching import apply_schedule, presets, schedule_macs
from ditaccel.models import get_adapter
from ditaccel.testing.replicas import (
    FAMILIES,
    build_pipeline,
    build_transformer,
    call_kwargs,
    transformer_inputs,
)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("height", "width", "text_len"), [(16, 16, 16), (32, 16, 7)])
def test_macs_match_flop_counter(family, height, width, text_len):
    t = build_transformer(family)
    a = get_adapter(t)
    inp = transformer_inputs(family, t, batch=2, height=height, width=width, text_len=text_len)
    # the math backend decomposes attention into counted matmuls (the fused CPU kernel is not counted)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc, torch.no_grad():
        t(**inp)
    n_txt = a.default_text_len() if family == "hunyuan" else text_len
    n_img = a.image_tokens(height, width, vae_factor=2)
    comp = a.component_macs(2, n_img, n_txt)
    total = comp.sum() + a.rest_macs(2, n_img, n_txt)
    measured = fc.get_total_flops() / 2
    assert abs(total - measured) <= 0.02 * measured
    per_module = fc.get_flop_counts()
    for b, c, path in a.component_paths():
        key = next(k for k in per_module if k.endswith("." + path))
        got = sum(per_module[key].values()) / 2
        assert abs(comp[b, c] - got) <= 0.02 * got, path


@pytest.mark.parametrize("family", ["pixart-alpha", "flux"])
def test_schedule_macs_match_executed_components(family):
    p = build_pipeline(family)
    kw = call_kwargs(family)
    s = presets.fora(p, 2, steps=kw["num_inference_steps"])
    a = get_adapter(p)
    text_len = kw["max_sequence_length"]
    with apply_schedule(p, s) as h:
        p("a red fox", generator=torch.Generator().manual_seed(0), **kw)
        counts = h.counts
    calls = counts.max() // 2  # calls per step (fora(2) at 4 steps computes twice)
    n_img = a.image_tokens(kw["height"], kw["width"], p.vae_scale_factor)
    comp = a.component_macs(1, n_img, text_len)  # per sample per call
    per_call_batch = 2 // calls  # PixArt: one CFG batch of 2; FLUX: two calls of 1
    executed = int((counts * comp).sum()) * per_call_batch
    rest = a.rest_macs(2, n_img, text_len) * s.steps
    assert schedule_macs(p, s, kw["height"], kw["width"], 2, text_len=text_len) == executed + rest
    full = schedule_macs(p, presets.none(p, steps=s.steps), kw["height"], kw["width"], 2, text_len=text_len)
    assert full > executed + rest


def test_geometry_and_defaults():
    t = build_transformer("flux")
    a = get_adapter(t)
    assert a.family == "flux" and a.num_blocks == 4
    assert [b.kind for b in a.blocks] == ["double", "double", "single", "single"]
    assert a.image_tokens(256, 256) == 16 * 16  # bare transformer: VAE factor 8, 2x2 packing
    sd3 = get_adapter(build_transformer("sd3"))
    assert sd3.blocks[-1].components[2] is None  # last joint block has no ff_context
    assert get_adapter(build_pipeline("pixart-sigma")).default_text_len(build_pipeline("pixart-sigma")) == 300
