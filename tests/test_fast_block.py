"""The block fast path (``cached_block_forward``): same bits, same counts, less work.

With a schedule applied, a PixArt block whose components are partly or wholly cached skips the
norm and adaLN modulation that only feed the cached ones. The outputs must be bitwise those of
the component-hooks-only path (``fast_path=False``), for every kind of schedule, on the bundled
model (whole pipeline, final latents and decoded images) and on the PixArt replicas.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ditaccel.caching import CacheSchedule, apply_schedule, presets
from ditaccel.caching.runtime import _FastBlock
from ditaccel.models import get_adapter
from ditaccel.pipeline import pipeline_call_kwargs
from ditaccel.testing.replicas import build_pipeline, build_transformer, call_kwargs, transformer_inputs

BUNDLED_STEPS = 6


def _schedules(model, steps: int) -> dict[str, CacheSchedule]:
    """All-compute, FORA(2), a seeded random mixed schedule, and whole blocks cached."""
    none = presets.none(model, steps=steps)
    mixed = np.random.default_rng(7).random(none.bits.shape) < 0.5
    mixed[0] = True
    whole = none.bits.copy()
    whole[1:, 1::2] = False  # every odd block fully cached after step 0
    make = lambda bits: CacheSchedule(bits=bits, components=none.components, family=none.family)  # noqa: E731
    return {"none": none, "fora2": presets.fora(model, 2, steps=steps), "mixed": make(mixed), "whole": make(whole)}


def _norm_calls(transformer) -> tuple[list[int], list]:
    seen = [0]
    hooks = [blk.norm1.register_forward_pre_hook(lambda *a: seen.__setitem__(0, seen[0] + 1))
             for blk in transformer.transformer_blocks]
    return seen, hooks


def _run_pipe(pipe, schedule, fast: bool, **kw):
    t = pipe.transformer
    seen, hooks = _norm_calls(t)
    try:
        with apply_schedule(pipe, schedule, fast_path=fast) as h:
            out = pipe("a red circle above a blue square", generator=torch.Generator().manual_seed(0), **kw)
            counts = h.counts
    finally:
        for hk in hooks:
            hk.remove()
    return out.images, counts, seen[0]


@pytest.mark.parametrize("name", ["none", "fora2", "mixed", "whole"])
def test_bundled_pipeline_bitwise_with_and_without_fast_path(bundled_pipe, name):
    sched = _schedules(bundled_pipe, BUNDLED_STEPS)[name]
    kw = pipeline_call_kwargs(bundled_pipe, num_inference_steps=BUNDLED_STEPS, output_type="latent")
    slow, c_slow, n_slow = _run_pipe(bundled_pipe, sched, False, **kw)
    fast, c_fast, n_fast = _run_pipe(bundled_pipe, sched, True, **kw)
    assert torch.equal(slow, fast)
    assert np.array_equal(c_slow, c_fast)
    # the fast path skips norm1 exactly where attn1 is cached (step 0 and all-compute: never)
    eff = sched.bits.copy()
    eff[0] = True
    assert n_slow == eff.shape[0] * eff.shape[1]
    assert n_fast == int(eff[:, :, 0].sum())
    assert "forward" not in bundled_pipe.transformer.transformer_blocks[0].__dict__  # removed cleanly


def test_bundled_images_bitwise(bundled_pipe):
    sched = _schedules(bundled_pipe, BUNDLED_STEPS)["mixed"]
    kw = pipeline_call_kwargs(bundled_pipe, num_inference_steps=BUNDLED_STEPS, output_type="np")
    slow = _run_pipe(bundled_pipe, sched, False, **kw)[0]
    fast = _run_pipe(bundled_pipe, sched, True, **kw)[0]
    assert np.array_equal(slow, fast)


@pytest.mark.parametrize("family", ["pixart-alpha", "pixart-sigma"])
def test_replica_pipeline_bitwise(family):
    pipe = build_pipeline(family)
    kw = call_kwargs(family)
    for sched in _schedules(pipe, kw["num_inference_steps"]).values():
        slow, c_slow, _ = _run_pipe(pipe, sched, False, **kw)
        fast, c_fast, _ = _run_pipe(pipe, sched, True, **kw)
        assert torch.equal(slow, fast)
        assert np.array_equal(c_slow, c_fast)


def _drive(t, inputs, times) -> list[torch.Tensor]:
    with torch.no_grad():
        return [t(**{**inputs, "timestep": torch.tensor([ts, ts])}).sample for ts in times]


def test_snapshot_restore_set_schedule_bitwise_and_remove_restores():
    t = build_transformer("pixart-alpha")
    inputs = transformer_inputs("pixart-alpha", t)
    times = (900.0, 700.0, 500.0, 300.0)
    scheds = _schedules(t, 4)
    a, b = scheds["mixed"], scheds["whole"]
    b.bits[:2] = a.bits[:2]  # a shared two-step prefix
    want = {}
    for key, s in (("a", a), ("b", b)):
        with apply_schedule(t, s, fast_path=False) as h:
            want[key] = (_drive(t, inputs, times), h.counts)
    before = {n: tuple(sorted(m.__dict__)) for n, m in t.named_modules()}
    with apply_schedule(t, a, lean=False) as h:
        assert all(isinstance(blk.forward, _FastBlock) for blk in t.transformer_blocks)
        first = _drive(t, inputs, times[:2])
        state, prefix_counts = h.snapshot(), h.counts
        for key, s in (("a", a), ("b", b), ("a", a)):
            h.restore(state)
            h.set_schedule(s)
            h.reset_counts()
            out = first + _drive(t, inputs, times[2:])
            assert all(torch.equal(x, y) for x, y in zip(out, want[key][0], strict=True))
            assert np.array_equal(prefix_counts + h.counts, want[key][1])
    assert {n: tuple(sorted(m.__dict__)) for n, m in t.named_modules()} == before
    assert all("forward" not in blk.__dict__ for blk in t.transformer_blocks)


def test_families_without_a_fast_path_and_fast_path_off_install_nothing():
    flux = build_transformer("flux")
    assert all(get_adapter(flux).cached_block_forward(s) is None for s in get_adapter(flux).blocks)
    t = build_transformer("pixart-alpha")
    with apply_schedule(t, presets.fora(t, 2, steps=4), fast_path=False):
        assert all("forward" not in blk.__dict__ for blk in t.transformer_blocks)
    t.transformer_blocks[0]._chunk_size = 4  # a layout the fast forward does not copy: that block keeps hooks
    with apply_schedule(t, presets.fora(t, 2, steps=4)):
        assert "forward" not in t.transformer_blocks[0].__dict__
        assert isinstance(t.transformer_blocks[1].forward, _FastBlock)
