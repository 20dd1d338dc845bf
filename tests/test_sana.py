"""Sana, the family added as one adapter class plus one replica entry: schedules, quantization,
and the family knowledge other modules now read from the adapters.

MACs against FlopCounterMode and the none/FORA/remove round trip run for Sana in
tests/test_models.py and tests/test_caching.py (they are parametrized over every replica).
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from ditaccel.caching import CacheSchedule, apply_schedule, presets
from ditaccel.models import ADAPTERS, SanaAdapter, get_adapter, vae_factor
from ditaccel.quant import FP4DiTConfig, QuantLinear, collect_calibration, quantize_, quantized_layers
from ditaccel.quant.api import target_linears
from ditaccel.testing.replicas import FAMILIES, build_pipeline, build_transformer, call_kwargs


def _latents(pipe, prompt: str = "a red fox in the city") -> torch.Tensor:
    return pipe(prompt, generator=torch.Generator().manual_seed(0), **call_kwargs("sana"))[0]


@pytest.fixture(scope="module")
def sana():
    return build_pipeline("sana")


def test_adapter_structure(sana):
    a = get_adapter(sana)
    assert isinstance(a, SanaAdapter) and a.family == "sana"
    assert a.num_blocks == 3 and a.component_names == ("attn1", "attn2", "ff")
    assert type(sana.transformer.transformer_blocks[0].ff).__name__ == "GLUMBConv"
    assert a.image_tokens(32, 32, sana.vae_scale_factor) == 64  # 16x16 latents, 2x2 patches
    assert vae_factor(sana.transformer) == 32  # a bare Sana transformer: the DC-AE f32 factor
    assert a.default_text_len() == 300


def test_schedule_round_trip_through_a_file(sana, tmp_path):
    ref = _latents(sana)
    state = {k: v.clone() for k, v in sana.transformer.state_dict().items()}
    steps = call_kwargs("sana")["num_inference_steps"]
    sched = presets.fora(sana, 2, steps=steps)
    path = tmp_path / "sana_fora2.json"
    sched.save(path)
    loaded = CacheSchedule.load(path, sana)
    assert loaded == sched and loaded.family == "sana"
    with apply_schedule(sana, loaded) as h:
        cached = _latents(sana)
        assert (h.counts == 2).all()  # FORA(2) at 4 steps: steps 0 and 2, one CFG-batched call each
    assert torch.isfinite(cached).all() and not torch.equal(cached, ref)
    assert torch.equal(_latents(sana), ref)  # removed: the model is the unmodified one
    assert all(torch.equal(v, state[k]) for k, v in sana.transformer.state_dict().items())


def test_tgate_caches_sana_cross_attention_only(sana):
    steps = call_kwargs("sana")["num_inference_steps"]
    sched = presets.tgate(sana, 2, steps=steps)
    a = get_adapter(sana)
    with apply_schedule(sana, sched) as h:
        _latents(sana)
    cross = a.component_names.index("attn2")
    assert (h.counts[:, cross] < steps).all()
    assert (h.counts[:, [0, 2]] == steps).all()


def test_quantize_sana_through_the_adapter_names(sana):
    pipe = build_pipeline("sana")
    ref = _latents(pipe)
    cfg = FP4DiTConfig(iters=2, progress=False)
    calib = collect_calibration(pipe, ["a red fox", "a blue boat"], seeds=[0], **call_kwargs("sana"))
    quantize_(pipe.transformer, cfg, calib=calib)
    layers = quantized_layers(pipe.transformer)
    # Every Linear inside the blocks is quantized; embeddings and the final layer are kept.
    assert set(layers) == {n for n, m in build_transformer("sana").named_modules()
                           if isinstance(m, nn.Linear) and n.startswith("transformer_blocks.")}
    assert not any(n.startswith(SanaAdapter.quant_keep) for n in layers)
    qkv = {n for n, m in layers.items() if m.out_act_format is not None}
    assert qkv and all(re.search(r"\.to_[qkv]$", n) for n in qkv)
    out = _latents(pipe)
    assert torch.isfinite(out).all() and not torch.equal(out, ref)
    assert (out - ref).abs().mean() < ref.abs().mean()


@pytest.mark.parametrize("family", FAMILIES)
def test_default_keep_is_exactly_outside_the_block_lists(family):
    """The adapters' quant_keep names cover every top-level Linear of their family, and no more."""
    t = build_transformer(family)
    a = get_adapter(t)
    inside = tuple(f"{name}." for name in a.block_list_names)
    linears = [n for n, m in t.named_modules() if isinstance(m, nn.Linear)]
    assert target_linears(t, FP4DiTConfig(adaround=False)) == [n for n in linears if n.startswith(inside)]


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_names_match_the_model(family):
    t = build_transformer(family)
    a = get_adapter(t)
    for name in a.block_list_names:
        assert isinstance(getattr(t, name), nn.ModuleList)
    assert sum(len(getattr(t, name)) for name in a.block_list_names) == a.num_blocks
    names = {n.rsplit(".", 1)[-1] for n, m in t.named_modules() if isinstance(m, nn.Linear)}
    assert set(a.qkv_linears) <= names
    assert all(any(n.endswith(f) for n, _ in t.named_modules()) for f in a.first_ffn_linears)
    pattern = re.compile(a.component_pattern())
    first = a.block_list_names[0]
    matched = {n for n, _ in t.named_modules() if pattern.fullmatch(n)}
    assert matched == {p for _, _, p in a.component_paths() if p.startswith(f"{first}.")}


def test_every_adapter_is_registered_by_its_classes():
    for cls in set(ADAPTERS.values()):
        assert cls.transformer_classes and cls.label and cls.block_list_names
        assert all(ADAPTERS[name] is cls for name in cls.transformer_classes)


def test_quantized_sana_still_counts_the_same_macs():
    t = build_transformer("sana")
    a = get_adapter(t)
    before = a.component_macs(2, 64, 16), a.rest_macs(2, 64, 16)
    quantize_(t, FP4DiTConfig(adaround=False, acts="none", progress=False))
    assert isinstance(t.transformer_blocks[0].attn1.to_q, QuantLinear)
    after = a.component_macs(2, 64, 16), a.rest_macs(2, 64, 16)
    assert (before[0] == after[0]).all() and before[1] == after[1]
