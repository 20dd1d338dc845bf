"""Residual step reuse (``step_reuse="residual"``): whole-stack skips at steps with no bit set."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from ditaccel.caching import CacheSchedule, apply_schedule, presets
from ditaccel.caching.dynamic_teacache import apply_teacache
from ditaccel.caching.stack import skip_steps, tail_skip_steps
from ditaccel.errors import ScheduleError
from ditaccel.search import PrefixEvaluator
from ditaccel.testing.replicas import build_pipeline, call_kwargs

STEPS = 6
PROMPTS = ["a red fox in the city", "a blue car near the sea"]


def _kw(family: str = "pixart-alpha") -> dict:
    kw = dict(call_kwargs(family))
    kw.pop("output_type", None)
    kw["num_inference_steps"] = STEPS
    return kw


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("pixart-alpha")


def _images(pipe, family: str = "pixart-alpha") -> np.ndarray:
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    return pipe(PROMPTS, generator=gens, output_type="np", **_kw(family)).images


def _residual(s: CacheSchedule) -> CacheSchedule:
    return dataclasses.replace(s, step_reuse="residual")


def test_skip_steps_are_the_all_zero_steps_after_step_zero():
    bits = np.ones((5, 2, 3), bool)
    bits[0] = bits[2] = bits[4] = False
    bits[3, 1, 2] = False
    assert skip_steps(bits).tolist() == [False, False, True, False, True]
    bits[3, 1] = bits[4, 0, 0] = True  # step 3: block 0 and block 1 compute; step 4: block 0 only
    assert tail_skip_steps(bits).tolist() == [False, False, False, False, True]


def test_skipping_every_middle_step_equals_teacache_skipping_them(pipe):
    """TeaCache with a huge threshold skips every step but the first and the last, reusing the stack
    residual: a residual schedule with the same steps skipped gives the same images, bitwise."""
    h = apply_teacache(pipe, _kw(), threshold=1e9)
    try:
        ref = _images(pipe)
        assert h.state.skipped_calls == STEPS - 2
    finally:
        h.remove()
    s = presets.none(pipe, steps=STEPS)
    s.bits[1:-1] = False
    with apply_schedule(pipe, _residual(s)) as handle:
        got = _images(pipe)
        assert handle.counts.sum() == 2 * s.blocks * 3  # only steps 0 and 5 ran components
    assert np.array_equal(got, ref)
    with apply_schedule(pipe, s):
        components = _images(pipe)
    assert not np.array_equal(components, ref)  # ECAD's rule reuses components, not the stack


def test_block_zero_only_steps_equal_first_block_cache_skipping_them(pipe):
    """diffusers' FirstBlockCache with a huge threshold runs block 0 at every step after the first and
    adds the cached residual of the blocks after it: a residual schedule with bits in block 0 only
    at those steps gives the same images, bitwise."""
    from ditaccel.caching.dynamic import apply_peer_cache

    h = apply_peer_cache(pipe, "fbc", _kw(), threshold=1e9)
    try:
        ref = _images(pipe)
    finally:
        h.remove()
    s = presets.none(pipe, steps=STEPS)
    s.bits[1:, 1:] = False
    assert tail_skip_steps(s.bits).tolist() == [False] + [True] * (STEPS - 1)
    with apply_schedule(pipe, _residual(s)) as handle:
        got = _images(pipe)
        assert handle._rt.stack.tail_skipped_calls == STEPS - 1 and handle._rt.stack.skipped_calls == 0
    assert np.array_equal(got, ref)


def test_no_skip_step_means_no_difference_and_remove_restores(pipe):
    base = _images(pipe)
    mixed = presets.fora_attention(pipe, 2, steps=STEPS)  # every step computes its ff: no skip step
    with apply_schedule(pipe, mixed):
        comp = _images(pipe)
    with apply_schedule(pipe, _residual(mixed)):
        res = _images(pipe)
    assert np.array_equal(comp, res)
    assert np.array_equal(_images(pipe), base)
    blocks = pipe.transformer.transformer_blocks
    assert not any(hasattr(b, "_diffusers_hook") or "forward" in b.__dict__ for b in blocks)
    with apply_schedule(pipe, presets.fora(pipe, 2, steps=STEPS), lean=False) as h:  # residual in, then out again
        h.set_schedule(_residual(presets.fora(pipe, 2, steps=STEPS)))
        assert h._rt.stack is not None
        h.set_schedule(presets.fora(pipe, 2, steps=STEPS))
        assert h._rt.stack is None and not any(hasattr(b, "_diffusers_hook") for b in blocks)
    assert not any(hasattr(b, "_diffusers_hook") or "forward" in b.__dict__ for b in blocks)


def test_prefix_sharing_stays_bit_identical_with_residual_reuse(pipe):
    rng = np.random.default_rng(3)
    scheds = [_residual(presets.fora(pipe, n, steps=STEPS)) for n in (2, 3)]
    for _ in range(4):
        b = scheds[0].bits.copy()
        k = int(rng.integers(1, STEPS))
        b[k:] = rng.random(b[k:].shape) < 0.4
        b[k + 1:] &= rng.random(STEPS - k - 1)[:, None, None] < 0.5  # some whole skip steps after the split
        scheds.append(CacheSchedule.for_model(pipe, b, step_reuse="residual"))
    fbc_like = presets.none(pipe, steps=STEPS).bits
    fbc_like[1:4, 1:] = False  # block 0 only at steps 1-3 (tail skips), then a whole skip at step 4
    fbc_like[4] = False
    for k in (2, 3, 5):
        b = fbc_like.copy()
        b[k:, 0] = k % 2 == 1  # children that turn tail skips into whole skips (or back) after step k
        scheds.append(CacheSchedule.for_model(pipe, b, step_reuse="residual"))
    assert any(tail_skip_steps(x.bits).any() for x in scheds) and any(skip_steps(x.bits).any() for x in scheds)
    ev = PrefixEvaluator(pipe, PROMPTS, [0, 1], batch_size=8, call_kwargs=_kw())
    shared, _ = ev.images(scheds, share=True)
    alone, _ = ev.images(scheds, share=False)
    for xs, ys in zip(shared, alone, strict=True):
        assert all(np.array_equal(x, y) for x, y in zip(xs, ys, strict=True))
    from ditaccel.errors import DitaccelError

    with pytest.raises(DitaccelError, match="one step_reuse"):  # same bits, other reuse: never shared
        ev.images([presets.fora(pipe, 2, steps=STEPS), _residual(presets.fora(pipe, 2, steps=STEPS))])


def test_set_schedule_switches_the_reuse_mode(pipe):
    fora = presets.fora(pipe, 2, steps=STEPS)
    with apply_schedule(pipe, fora):
        comp = _images(pipe)
    with apply_schedule(pipe, _residual(fora)):
        res = _images(pipe)
    assert not np.array_equal(comp, res)
    with apply_schedule(pipe, fora, lean=False) as h:
        h.set_schedule(_residual(fora))
        assert np.array_equal(_images(pipe), res)
        h.set_schedule(fora)
        assert np.array_equal(_images(pipe), comp)


def test_file_format_versions_and_refusals(pipe, tmp_path):
    fora = presets.fora(pipe, 2, steps=STEPS)
    d = fora.to_dict()
    assert d["version"] == 1 and "step_reuse" not in d  # plain schedules: the file is as before
    res = _residual(fora)
    path = tmp_path / "r.json"
    res.save(path)
    raw = json.loads(path.read_text())
    assert raw["version"] == 2 and raw["step_reuse"] == "residual"
    loaded = CacheSchedule.load(path, pipe)
    assert loaded == res and loaded != fora and loaded.resample(STEPS * 2).step_reuse == "residual"
    bad = dict(res.to_dict(), version=1)
    with pytest.raises(ScheduleError, match="step_reuse 'residual' in a version-1 file"):
        CacheSchedule.from_dict(bad)
    with pytest.raises(ScheduleError, match="step_reuse must be one of"):
        CacheSchedule(fora.bits, fora.components, fora.family, step_reuse="blocks")
    with pytest.raises(ScheduleError, match="ECAD's format has no step_reuse"):
        res.to_ecad(tmp_path / "e.json")
    assert not (tmp_path / "e.json").exists()


def test_families_whose_blocks_return_pairs_refuse_residual_reuse():
    flux = build_pipeline("flux")
    s = presets.fora(flux, 2, steps=STEPS)
    with pytest.raises(ScheduleError, match="needs blocks that map hidden states to hidden states"):
        apply_schedule(flux, _residual(s))


def test_sana_skips_the_stack_too():
    sana = build_pipeline("sana")
    base = _images(sana, "sana")
    s = presets.fora(sana, 2, steps=STEPS)
    with apply_schedule(sana, _residual(s)) as h:
        res = _images(sana, "sana")
        assert h._rt.stack.skipped_calls == int(skip_steps(s.bits).sum())
    with apply_schedule(sana, s):
        comp = _images(sana, "sana")
    assert res.shape == base.shape and np.isfinite(res).all()
    assert not np.array_equal(res, comp)
    assert np.array_equal(_images(sana, "sana"), base)


def test_search_defaults_and_refusals_for_the_reuse_mode(tmp_path):
    from ditaccel.errors import DitaccelError
    from ditaccel.search import SearchConfig, search

    flux = build_pipeline("flux")
    kw = dict(call_kwargs("flux"))
    kw.pop("output_type", None)
    kw["num_inference_steps"] = 3
    cfg = dict(prompts=["a red fox", "a blue car"], seeds=[0], metric="psnr", population=4, generations=1,
               call_kwargs=kw, cost="macs", seeding="presets")
    with pytest.raises(DitaccelError, match="step reuse 'residual' needs blocks"):
        search(flux, SearchConfig(step_reuse="residual", **cfg))
    fr = search(flux, SearchConfig(**cfg))  # structured on FLUX: ECAD's rule, since its blocks return pairs
    assert fr.info["step_reuse"] == "components" and all(p.schedule.step_reuse == "components" for p in fr.points)
