"""Lean handles (``apply_schedule(..., lean=True)``, the default): only components whose cache some step reads
are hooked; the rest run as the model's own, with the same images and the same counts as a handle hooked
everywhere."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ditaccel.caching import apply_schedule, presets
from ditaccel.caching.runtime import HOOK_NAME
from ditaccel.caching.stack import cache_reads, unhooked_calls
from ditaccel.errors import ScheduleError
from ditaccel.testing.replicas import build_pipeline, call_kwargs

STEPS = 6
PROMPTS = ["a red fox in the city", "a blue car near the sea"]


@pytest.fixture(scope="module", params=["pixart-alpha", "flux"])
def setup(request):
    return request.param, build_pipeline(request.param)


def _images(pipe, family: str) -> np.ndarray:
    kw = {**call_kwargs(family), "num_inference_steps": STEPS, "output_type": "np"}
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    return pipe(PROMPTS, generator=gens, **kw).images


def _hooked(pipe) -> set[str]:
    return {n for n, m in pipe.transformer.named_modules()
            if HOOK_NAME in getattr(getattr(m, "_diffusers_hook", None), "hooks", {})}


def test_cache_reads_and_bare_calls():
    bits = np.ones((4, 3, 2), bool)
    assert not cache_reads(bits, False).any() and unhooked_calls(bits, False) == 4 * 3 * 2
    bits[0] = False  # step 0 computes anyway: nothing reads
    assert not cache_reads(bits, False).any()
    bits[2, 1, 0] = bits[3] = False
    reads = cache_reads(bits, False)
    assert reads.all()  # step 3 reads everything under component reuse
    residual = cache_reads(bits, True)  # ... but skips the whole stack under residual reuse
    assert np.argwhere(residual).tolist() == [[1, 0]]
    assert unhooked_calls(bits, True) == 3 * 3 * 2 - 3  # steps 0-2 run every block; block 1's slot 0 is hooked
    bits[3, 0, 1] = True  # step 3 now runs block 0 only: it reads block 0 slot 0, the others are skipped
    assert np.argwhere(cache_reads(bits, True)).tolist() == [[0, 0], [1, 0]]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("reuse", ["components", "residual"])
def test_lean_equals_hooked_everywhere(setup, seed, reuse):
    family, pipe = setup
    reuse = "components" if family == "flux" else reuse  # FLUX blocks return pairs: no residual reuse
    rng = np.random.default_rng(seed)
    sched = presets.none(pipe, steps=STEPS)
    sched.bits[:] = rng.random(sched.bits.shape) < 0.5
    sched.bits[rng.random(STEPS) < 0.4] = True  # whole steps computed: some slots are never read
    sched.bits[2] = False  # a skip step under residual reuse
    sched = dataclasses.replace(sched, step_reuse=reuse)
    with apply_schedule(pipe, sched, lean=False) as h:
        want, want_counts = _images(pipe, family), h.counts
    with apply_schedule(pipe, sched) as h:
        got, counts = _images(pipe, family), h.counts
        assert len(_hooked(pipe)) == int(cache_reads(sched.bits, reuse == "residual").sum())
    assert np.array_equal(got, want) and np.array_equal(counts, want_counts)
    assert not _hooked(pipe)


def test_a_whole_step_schedule_hooks_no_component_and_refuses_a_wider_swap(setup):
    family, pipe = setup
    reuse = "residual" if family == "pixart-alpha" else "components"
    sched = dataclasses.replace(presets.none(pipe, steps=STEPS), step_reuse=reuse)
    sched.bits[1] = sched.bits[3] = False
    with apply_schedule(pipe, sched, lean=False):
        ref = _images(pipe, family)
    with apply_schedule(pipe, sched) as h:
        assert np.array_equal(_images(pipe, family), ref)
        assert len(_hooked(pipe)) == (0 if reuse == "residual" else len(h.adapter.component_paths()))
        h.set_schedule(presets.none(pipe, steps=STEPS) if reuse == "components" else sched)  # reads no more
        if reuse == "residual":
            with pytest.raises(ScheduleError, match="lean=False") as e:
                h.set_schedule(presets.fora(pipe, 2, steps=STEPS))  # component reuse reads every slot
            assert "\n" not in str(e.value)


def test_models_without_some_slots_count_and_swap_only_the_slots_they_have():
    """SD3's last block has no ff_context: a lean handle neither hooks nor counts it, swaps to the same schedule,
    and the latency model's bare calls are the calls that happen."""
    pipe = build_pipeline("sd3")
    fora = presets.fora(pipe, 2, steps=STEPS)
    with apply_schedule(pipe, fora) as h:
        slots = h.adapter.slots()
        assert not slots.all() and int(slots.sum()) == len(h.adapter.component_paths())
        h.set_schedule(fora)
        _images(pipe, "sd3")
        assert (h.counts[~slots] == 0).all()
    ones = np.ones_like(fora.bits)
    assert unhooked_calls(ones, False, slots) == STEPS * int(slots.sum()) < unhooked_calls(ones, False)
    assert not cache_reads(fora.bits, False, slots)[~slots].any()
