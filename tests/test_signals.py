"""Change signals (``search.signals``): the threshold rule, the ladder, the probe, and the search's seeding."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ditaccel.search import SearchConfig, search
from ditaccel.search import signals as sig
from ditaccel.search.operators import gap_fill
from ditaccel.testing.replicas import build_pipeline, call_kwargs

STEPS = 6


def _signals(stack, comp=None) -> sig.ChangeSignals:
    stack = np.asarray(stack, float)
    comp = np.zeros((len(stack), 2, 3)) if comp is None else np.asarray(comp, float)
    return sig.ChangeSignals(comp, stack)


def test_step_threshold_accumulates_change_since_the_last_computed_step():
    s = _signals([0, 0.1, 0.1, 0.1, 0.5, 0.1, 0.1])
    skipped = lambda tau: [t for t in range(7) if not sig.threshold_bits(s, tau, "step")[t].any()]  # noqa: E731
    assert skipped(0.05) == []
    assert skipped(0.15) == [1, 3, 5]  # 0.1 < 0.15; 0.2 at 2 computes; 0.1 at 3; 0.6 at 4 computes; 0.1 at 5
    assert skipped(0.25) == [1, 2, 5]  # the last step (6) always computes, as in TeaCache
    assert skipped(10.0) == [1, 2, 3, 4, 5]
    tail = sig.threshold_bits(s, 0.25, "tail")  # the same steps, block 0 kept
    assert tail[:, 0].all() and [t for t in range(7) if not tail[t, 1:].any()] == [1, 2, 5]


def test_late_weighting_moves_the_skips_early():
    """Step s's change counts (1 + late * (s / (steps - 1))^2) times: a flat signal skips evenly unweighted,
    and with the weighting skips early steps and computes the late ones, at a threshold that skips as many."""
    s = _signals([0] + [0.1] * 10)
    assert sig.weighted_stack(s, 8.0)[[0, 5, 10]] == pytest.approx([0.0, 0.1 * 3.0, 0.1 * 9.0])
    skipped = lambda tau, late: [t for t in range(11) if not sig.threshold_bits(s, tau, "step", late)[t].any()]  # noqa: E731
    assert skipped(0.25, 0.0) == [1, 2, 4, 5, 7, 8]
    weighted = skipped(0.45, 8.0)
    assert weighted == [1, 2, 3, 5] and max(weighted) < max(skipped(0.25, 0.0))
    tail = sig.threshold_bits(s, 0.45, "tail", 8.0)
    assert [t for t in range(11) if not tail[t, 1:].any()] == weighted
    assert len(sig.ladder(s, "step", late=8.0)) > 3


def test_component_threshold_decides_each_block_component_alone():
    comp = np.zeros((4, 1, 2))
    comp[1:, 0, 0] = 0.1  # slow: reused until the change adds up
    comp[1:, 0, 1] = 0.5  # fast: always recomputed
    bits = sig.threshold_bits(_signals(np.zeros(4), comp), 0.15, "component")
    assert bits[:, 0, 0].tolist() == [True, False, True, False]
    assert bits[:, 0, 1].all()


def test_ladder_runs_from_nearly_all_computed_to_nearly_none_without_duplicates():
    rng = np.random.default_rng(0)
    s = sig.ChangeSignals(rng.uniform(0.01, 0.2, (8, 3, 3)), np.r_[0, rng.uniform(0.01, 0.2, 7)])
    for level in ("step", "tail", "component"):
        rungs = sig.ladder(s, level)
        fracs = [b.mean() for b in rungs]
        assert len({b.tobytes() for b in rungs}) == len(rungs) > 3
        assert fracs[0] > 0.9 and fracs[-1] <= (0.5 if level == "tail" else 0.4) and all(b[0].all() for b in rungs)


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("pixart-alpha")


def _kw() -> dict:
    kw = dict(call_kwargs("pixart-alpha"))
    kw.pop("output_type")
    kw["num_inference_steps"] = STEPS
    return kw


def test_probe_measures_every_component_and_the_stack(pipe):
    s = sig.measure_signals(pipe, ["a red fox", "a blue car"], [0, 1], STEPS, _kw())
    assert s.component.shape == (STEPS, len(pipe.transformer.transformer_blocks), 3) and s.stack.shape == (STEPS,)
    assert (s.component[0] == 0).all() and s.stack[0] == 0
    assert (s.component[1:] > 0).all() and (s.stack[1:] > 0).all()
    assert sig.ChangeSignals.from_dict(json.loads(json.dumps(s.to_dict()))).stack == pytest.approx(s.stack)


def test_seeded_search_starts_from_the_signals_and_resume_reuses_them(pipe, tmp_path, monkeypatch):
    cfg = dict(prompts=["a red fox", "a blue car"], seeds=[0], metric="psnr", population=8, seed=1,
               call_kwargs=_kw(), batch_size=8, cost="macs")
    fr = search(pipe, SearchConfig(generations=1, out=tmp_path / "s", **cfg))
    assert fr.info["seeding"] == "signals" and (tmp_path / "s" / "signals.json").is_file()
    rows = [json.loads(x) for x in (tmp_path / "s" / "candidates.jsonl").read_text().splitlines()]
    assert rows[0]["name"] == "none" and any(r["name"].startswith("signal:") for r in rows)
    from ditaccel.search import engine

    monkeypatch.setattr(engine, "measure_signals", lambda *a, **k: pytest.fail("signals measured again on resume"))
    search(pipe, SearchConfig(generations=2, out=tmp_path / "s", resume=True, **cfg))
    from ditaccel._io import atomic_write_checked_json
    from ditaccel.errors import DitaccelError

    atomic_write_checked_json(tmp_path / "s" / "signals.json", {"stack": [0.0]})  # damaged by hand
    with pytest.raises(DitaccelError, match="not a ditaccel change-signals file"):
        search(pipe, SearchConfig(generations=3, out=tmp_path / "s", resume=True, **cfg))
    paper = search(pipe, SearchConfig(generations=1, strategy="ecad", **cfg))  # the paper's start: no signals
    assert paper.info["seeding"] == "presets"


def test_a_search_begun_before_start_version_3_resumes_with_its_own_start(pipe, tmp_path, monkeypatch):
    """A new structured search records version 3 (the block-0-last ladder); a version-2 checkpoint resumes with the
    version-2 ladder, and one without ``start`` (version 1: unweighted seeds, the list's order) as version 1."""
    from ditaccel._io import CHECKSUM_KEY, atomic_write_checked_json
    from ditaccel.search import engine

    cfg = dict(prompts=["a red fox", "a blue car"], seeds=[0], metric="psnr", population=8, seed=1,
               call_kwargs=_kw(), batch_size=8, cost="macs", out=tmp_path / "s")
    starts = []
    real_pop = engine.structured_population
    monkeypatch.setattr(engine, "structured_population",
                        lambda pipe, steps, start=2: starts.append(start) or real_pop(pipe, steps, start))
    search(pipe, SearchConfig(generations=1, **cfg))
    ckpt = tmp_path / "s" / "checkpoint"

    def restart_as(version: int | None) -> None:
        state = json.loads(ckpt.read_text())
        state.pop(CHECKSUM_KEY)
        if version is None:
            del state["fingerprint"]["start"]
        else:
            state["fingerprint"]["start"] = version
        atomic_write_checked_json(ckpt, state)

    assert json.loads(ckpt.read_text())["fingerprint"]["start"] == 3 and starts == [3]
    restart_as(2)
    search(pipe, SearchConfig(generations=2, resume=True, **cfg))
    assert starts[-1] == 2 and json.loads(ckpt.read_text())["fingerprint"]["start"] == 2
    restart_as(None)
    lates = []
    real = engine.ladders
    monkeypatch.setattr(engine, "ladders", lambda sig, late=0.0: lates.append(late) or real(sig, late))
    search(pipe, SearchConfig(generations=3, resume=True, **cfg))
    assert lates == [0.0] and "start" not in json.loads(ckpt.read_text())["fingerprint"]


def test_gap_fill_takes_a_pool_schedule_nearest_the_target():
    shape = (4, 1, 1)
    lo, hi = np.ones(shape, bool), np.ones(shape, bool)
    hi[1:] = False
    pool_bits = np.ones(shape, bool)
    pool_bits[2, 0, 0] = False
    speed = {lo.tobytes(): 1.0, hi.tobytes(): 4.0, pool_bits.tobytes(): 2.0}

    def speedup_of(b):
        return speed.get(b.tobytes(), 1.0 + 3.0 * float((~b[1:]).mean()) * 0.3)  # interpolants: far from 2x

    kids = gap_fill([(1.0, lo), (4.0, hi)], 1, speedup_of, set(), np.random.default_rng(0), pool=[pool_bits])
    assert len(kids) == 1 and np.array_equal(kids[0], pool_bits)
