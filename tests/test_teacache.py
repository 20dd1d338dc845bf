"""TeaCache-style caching (caching/dynamic_teacache.py): one registry entry and one file, on the bundled model."""

from __future__ import annotations

import numpy as np
import pytest

from ditaccel.pipeline import generate_images

PROMPTS = ["a red circle", "a blue square"]


@pytest.fixture(scope="module")
def bundled() -> tuple[object, dict, list[np.ndarray]]:
    from ditaccel.pipeline import load_pipeline

    pipe = load_pipeline(None)
    kw = {"num_inference_steps": 8}
    return pipe, kw, generate_images(pipe, PROMPTS, [0, 1], batch_size=2, **kw)


def test_threshold_zero_is_bitwise_the_uncached_model(bundled: tuple) -> None:
    from ditaccel.caching.dynamic_teacache import apply_teacache

    pipe, kw, ref = bundled
    with apply_teacache(pipe, call_kwargs=kw, threshold=0.0) as h:
        out = generate_images(pipe, PROMPTS, [0, 1], batch_size=2, **kw)
    assert h.state.skipped_calls == 0 and h.state.calls == 8
    assert all(np.array_equal(a, b) for a, b in zip(out, ref, strict=True))
    assert not hasattr(pipe.transformer, "_diffusers_hook")
    assert all(not hasattr(m, "_diffusers_hook") for m in pipe.transformer.modules())


def test_larger_threshold_skips_steps_and_costs_fewer_macs(bundled: tuple) -> None:
    from ditaccel.caching.dynamic_teacache import apply_teacache
    from ditaccel.evaluate.measure import generation_macs

    pipe, kw, ref = bundled
    base_macs = generation_macs(pipe, lambda: generate_images(pipe, PROMPTS[:1], [0], batch_size=1, **kw))[0]
    skipped = []
    for thr in (0.05, 0.5):
        with apply_teacache(pipe, call_kwargs=kw, threshold=thr) as h:
            out = generate_images(pipe, PROMPTS, [0, 1], batch_size=2, **kw)
            again = generate_images(pipe, PROMPTS, [0, 1], batch_size=2, **kw)  # state reset per generation
            macs = generation_macs(pipe, lambda: generate_images(pipe, PROMPTS[:1], [0], batch_size=1, **kw))[0]
        skipped.append(h.state.skipped_calls)
        assert all(a.shape == r.shape and np.isfinite(a).all() for a, r in zip(out, ref, strict=True))
        assert all(np.array_equal(a, b) for a, b in zip(out, again, strict=True))
        assert macs <= base_macs
    assert skipped[1] > skipped[0] >= 0 and skipped[1] >= 3  # steps 1..6 of 8 are skippable
    assert macs < 0.8 * base_macs
    assert not any(np.array_equal(a, r) for a, r in zip(out, ref, strict=True))


def test_teacache_is_a_registry_entry_with_a_sweep_and_a_label() -> None:
    from ditaccel.evaluate.methods import KNOBS, parse_methods, spec_title

    (spec,) = parse_methods("teacache:0.1")
    assert spec_title(spec) == ("TeaCache-style (ditaccel), threshold 0.1", "TeaCache-style (ditaccel)")
    assert [s.text for s in parse_methods("teacache:sweep")] == [f"teacache:{a}" for a in KNOBS["teacache"].sweep]
    assert "teacache:0.1" in [s.text for s in parse_methods("peers:sweep")]


def test_teacache_refuses_other_families_with_a_reason() -> None:
    from ditaccel.caching.dynamic import PeerUnavailable
    from ditaccel.caching.dynamic_teacache import apply_teacache
    from ditaccel.testing.replicas import build_pipeline

    with pytest.raises(PeerUnavailable, match="flux is not supported"):
        apply_teacache(build_pipeline("flux"))


def test_teacache_row_installs_through_the_registry_and_leaves_no_trace() -> None:
    from ditaccel.evaluate import QuantSettings, installed, prepare, resolve_methods
    from ditaccel.evaluate.methods import parse_methods
    from ditaccel.testing.replicas import build_pipeline

    pipe = build_pipeline("pixart-alpha")
    kw = {"num_inference_steps": 6, "height": 16, "width": 16, "max_sequence_length": 16}
    ref = generate_images(pipe, PROMPTS, [0, 1], batch_size=2, **kw)
    (m,) = resolve_methods(pipe, parse_methods("teacache:0.8"), 6)
    assert (m.kind, m.peer, m.peer_params) == ("peer", "teacache", {"threshold": 0.8})
    prepare(pipe, m, kw, QuantSettings(prompts=PROMPTS), PROMPTS)
    assert m.skipped is None and m.prepared.transformer is pipe.transformer
    with installed(pipe, m, kw, PROMPTS):
        out = generate_images(pipe, PROMPTS, [0, 1], batch_size=2, **kw)
    assert all(a.shape == r.shape for a, r in zip(out, ref, strict=True))
    assert all(not hasattr(mod, "_diffusers_hook") for mod in pipe.transformer.modules())
    assert all(np.array_equal(a, r) for a, r in zip(generate_images(pipe, PROMPTS, [0, 1], batch_size=2, **kw), ref,
                                                   strict=True))
