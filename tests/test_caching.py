"""The caching runtime on every family's tiny replica, through the real pipelines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ditaccel.caching import apply_schedule, presets
from ditaccel.errors import ScheduleError
from ditaccel.testing.replicas import (
    FAMILIES,
    build_pipeline,
    build_transformer,
    call_kwargs,
    transformer_inputs,
)

STEPS = call_kwargs("pixart-alpha")["num_inference_steps"]


@pytest.fixture(scope="module", params=FAMILIES)
def pipe(request):
    return request.param, build_pipeline(request.param)


def _run(p, family, **extra):
    kw = {**call_kwargs(family), **extra}
    return p("a red fox in the city", generator=torch.Generator().manual_seed(0), **kw).images


def _module_state(model: torch.nn.Module) -> dict[str, tuple]:
    return {n: (tuple(sorted(m.__dict__)), tuple(sorted(m._forward_hooks)), tuple(sorted(m._forward_pre_hooks)))
            for n, m in model.named_modules()}


def _calls_per_step(p, family) -> int:
    seen = []
    h = p.transformer.register_forward_pre_hook(lambda *a: seen.append(1))
    try:
        _run(p, family)
    finally:
        h.remove()
    assert len(seen) % STEPS == 0
    return len(seen) // STEPS


def test_none_then_fora_then_remove_is_exact(pipe):
    family, p = pipe
    ref = _run(p, family)
    state_before = _module_state(p.transformer)
    params_before = {k: v.clone() for k, v in p.transformer.state_dict().items()}
    per_step = _calls_per_step(p, family)

    with apply_schedule(p, presets.none(p, steps=STEPS)) as h:
        assert torch.equal(_run(p, family), ref)
        comp_exists = np.array([[h.adapter.component_module(b, c) is not None
                                 for c in range(len(h.adapter.component_names))]
                                for b in range(h.adapter.num_blocks)])
        assert (h.counts == STEPS * per_step * comp_exists).all()

    handle = apply_schedule(p, presets.fora(p, 2, steps=STEPS))
    out = _run(p, family)
    # fora(2) recomputes at steps 0 and 2 of 4, once per call context
    assert (handle.counts == 2 * per_step * comp_exists).all()
    assert not torch.equal(out, ref)
    # caches are freed after the last step
    assert all(not c for c in handle.snapshot().caches)
    # a second, back-to-back call behaves the same
    assert torch.equal(_run(p, family), out)
    assert (handle.counts == 4 * per_step * comp_exists).all()
    handle.remove()

    assert torch.equal(_run(p, family), ref)
    assert _module_state(p.transformer) == state_before
    for k, v in p.transformer.state_dict().items():
        assert torch.equal(v, params_before[k])


def test_batch_and_images_per_prompt():
    p = build_pipeline("pixart-alpha")
    kw = {"num_images_per_prompt": 2}
    ref = p(["a red fox", "a blue car"], generator=torch.Generator().manual_seed(0),
            **call_kwargs("pixart-alpha"), **kw).images
    assert ref.shape[0] == 4
    with apply_schedule(p, presets.none(p, steps=STEPS)):
        same = p(["a red fox", "a blue car"], generator=torch.Generator().manual_seed(0),
                 **call_kwargs("pixart-alpha"), **kw).images
    assert torch.equal(same, ref)
    with apply_schedule(p, presets.fora(p, 2, steps=STEPS)) as h:
        out = p(["a red fox", "a blue car"], generator=torch.Generator().manual_seed(0),
                **call_kwargs("pixart-alpha"), **kw).images
        assert out.shape == ref.shape and torch.isfinite(out).all()
        assert (h.counts == 2).all()


def _drive(t, handle, inputs_per_step, timesteps):
    outs = []
    for ts, inputs in zip(timesteps, inputs_per_step, strict=True):
        for inp in inputs:
            kw = dict(inp)
            kw["timestep"] = torch.full_like(kw["timestep"], ts)
            with torch.no_grad():
                outs.append(t(**kw, return_dict=False)[0])
    return outs


def test_separate_cond_uncond_calls_keep_separate_caches():
    t = build_transformer("sd3")
    times = [1000.0, 750.0, 500.0, 250.0]
    cond = [transformer_inputs("sd3", t, batch=1, seed=10 + i) for i in range(4)]
    unc = [transformer_inputs("sd3", t, batch=1, seed=20 + i) for i in range(4)]
    s = presets.fora(t, 2, steps=4)
    with apply_schedule(t, s) as h:
        inter = _drive(t, h, [[c, u] for c, u in zip(cond, unc, strict=True)], times)
        assert h.context == 1 and h.step == 3
        alone_c = _drive(t, h, [[c] for c in cond], times)
        alone_u = _drive(t, h, [[u] for u in unc], times)
    assert all(torch.equal(a, b) for a, b in zip(inter[0::2], alone_c, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(inter[1::2], alone_u, strict=True))


def test_timestep_restart_starts_new_generation_and_overrun_errors():
    t = build_transformer("pixart-alpha")
    inp = transformer_inputs("pixart-alpha", t)
    with apply_schedule(t, presets.fora(t, 3, steps=3)) as h:
        _drive(t, h, [[inp]] * 2, [900.0, 600.0])
        assert h.step == 1
        _drive(t, h, [[inp]], [950.0])  # larger timestep: a new generation
        assert h.step == 0
        _drive(t, h, [[inp]] * 2, [600.0, 300.0])
        with pytest.raises(ScheduleError, match="resample"):
            _drive(t, h, [[inp]], [100.0])


def test_snapshot_restore_and_schedule_swap_share_a_prefix():
    t = build_transformer("flux")
    times = [1000.0, 750.0, 500.0, 250.0]
    inputs = [[transformer_inputs("flux", t, seed=i)] for i in range(4)]
    a, b = presets.fora(t, 2, steps=4), presets.none(t, steps=4)
    with apply_schedule(t, a) as h:
        full_a = _drive(t, h, inputs, times)
    with apply_schedule(t, b) as h:
        full_b = _drive(t, h, inputs, times)
    # bits of a and b agree on step 0 (both compute), so the search can share it
    with apply_schedule(t, a, lean=False) as h:
        _drive(t, h, inputs[:1], times[:1])
        state = h.snapshot()
        h.reset_counts()
        rest_a = _drive(t, h, inputs[1:], times[1:])
        counts_a = h.counts
        h.restore(state)
        h.set_schedule(b)
        rest_b = _drive(t, h, inputs[1:], times[1:])
        h.restore(state)
        h.set_schedule(a)
        rest_a2 = _drive(t, h, inputs[1:], times[1:])
    assert all(torch.equal(x, y) for x, y in zip(rest_a, full_a[1:], strict=True))
    assert all(torch.equal(x, y) for x, y in zip(rest_a2, full_a[1:], strict=True))
    assert all(torch.equal(x, y) for x, y in zip(rest_b, full_b[1:], strict=True))
    assert (counts_a == 1).all()  # only step 2 recomputes after the shared step 0


def test_applying_twice_or_wrong_object_fails_cleanly():
    t = build_transformer("pixart-sigma")
    with apply_schedule(t, presets.none(t, steps=2)):
        with pytest.raises(ScheduleError, match="already applied"):
            apply_schedule(t, presets.none(t, steps=2))
    with pytest.raises(ScheduleError, match="CacheSchedule"):
        apply_schedule(t, "fora")  # type: ignore[arg-type]
    with pytest.raises(ScheduleError, match="family"):
        apply_schedule(t, presets.none(build_transformer("sd3"), steps=2))
    assert not any(hasattr(m, "_diffusers_hook") for m in t.modules())
