"""The latency model: fitting on exact data, pricing schedules, the on-disk cache, and the search's default cost."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ditaccel.caching import CacheSchedule, predicted_seconds, presets
from ditaccel.caching import latency as lat
from ditaccel.cli import main
from ditaccel.errors import DitaccelError, ScheduleError
from ditaccel.search import SearchConfig, load_frontier, search
from ditaccel.search.frontier import speedup_label
from ditaccel.testing.replicas import build_pipeline, call_kwargs

STEPS, B, C = 5, 4, 3
KEY = {"model": "m", "device": "cpu:x", "batch": 1}


def _truth(seed: int = 0) -> tuple[np.ndarray, np.ndarray, float, float]:
    rng = np.random.default_rng(seed)
    return rng.uniform(1e-3, 5e-3, (B, C)), rng.uniform(1e-5, 5e-5, (B, C)), 2e-3, 0.05


def _runs(comp: np.ndarray, hit: np.ndarray, step_s: float, fixed: float, scale: float = 1.0) -> list[dict]:
    """Timed runs an exact device following the model would produce."""
    def total(bits: np.ndarray) -> float:
        eff = bits.copy()
        eff[0] = True
        return fixed + STEPS * step_s + scale * float((eff * comp[None]).sum())

    none, cached = np.ones((STEPS, B, C), bool), np.zeros((STEPS, B, C), bool)
    rand = np.random.default_rng(1).random((STEPS, B, C)) < 0.5
    starts = [0.1 + i * step_s for i in range(STEPS)]
    parts = [{"kind": "none", "bits": none, "total_s": 99.0, "comp": np.broadcast_to(comp + hit, (STEPS, B, C)),
              "starts": starts},
             {"kind": "cached", "bits": cached, "total_s": 99.0, "comp": np.broadcast_to(hit, (STEPS, B, C)),
              "starts": starts}]
    return parts + [{"kind": k, "bits": b, "total_s": total(b)} for k, b in
                    (("none", none), ("cached", cached), ("random", rand))]


def test_fit_recovers_an_exact_device():
    comp, hit, step_s, fixed = _truth()
    prof = lat.fit_profile(_runs(comp, hit, step_s, fixed, scale=1.3), KEY, STEPS)
    assert np.allclose(prof.component_s, comp) and prof.step_s == pytest.approx(step_s)
    assert prof.scale == pytest.approx(1.3) and prof.fixed_s == pytest.approx(fixed)
    # timed-per-part runs (slowed by their hooks: 99 s) never enter the line
    assert [r["kind"] for r in prof.runs] == ["none", "cached", "random"]
    assert all(r["predicted_s"] == pytest.approx(r["measured_s"]) for r in prof.runs)
    other = np.random.default_rng(5).random((STEPS, B, C)) < 0.3
    eff = other.copy()
    eff[0] = True
    assert prof.predict(other) == pytest.approx(fixed + STEPS * step_s + 1.3 * float((eff * comp[None]).sum()))


def test_fit_prices_residual_skip_steps_from_the_skipped_calls():
    """stack_s = (all-cached call - all-skipped call) / (steps - 1); it never enters the line, and a
    residual schedule's skip steps (step > 0, no bit set) each take it off."""
    comp, hit, step_s, fixed = _truth()
    runs = _runs(comp, hit, step_s, fixed)
    cached_total = next(r["total_s"] for r in runs if r["kind"] == "cached" and "comp" not in r)
    runs.append({"kind": "skipped", "bits": np.zeros((STEPS, B, C), bool), "total_s": cached_total - 4 * 3e-4})
    prof = lat.fit_profile(runs, KEY, STEPS)
    assert prof.stack_s == pytest.approx(3e-4) and prof.scale == pytest.approx(1.0)
    assert prof.fixed_s == pytest.approx(fixed)  # the skipped call did not bend the line
    bits = np.ones((STEPS, B, C), bool)
    bits[2] = bits[4] = False
    bits[3, 0, 0] = False  # a partial step is not skipped
    assert prof.predict(bits, residual=True) == pytest.approx(prof.predict(bits) - 2 * 3e-4)
    bits[2, 0, 1] = True  # step 2 now runs block 0 only: the blocks after it are skipped
    assert prof.predict(bits, residual=True) == pytest.approx(prof.predict(bits) - (1 + (B - 1) / B) * 3e-4)
    sched = CacheSchedule(bits, ("attn1", "attn2", "ff"), "pixart", step_reuse="residual")
    assert prof.predict(sched) == prof.predict(bits, residual=True)
    assert [r["kind"] for r in prof.runs][-1] == "skipped" and prof.runs[-1]["predicted_s"] == pytest.approx(
        cached_total - 4 * 3e-4, abs=1e-6)  # runs are rounded to the microsecond


def test_fit_prices_the_hooks_a_lean_handle_leaves_out():
    """Plain calls are timed lean: a slot no step reads runs bare, saving hook_s per call. hook_s is the
    all-recompute call hooked everywhere minus bare, per component call; the line and stack_s see the calls as
    if hooked everywhere, so the fit recovers the device exactly."""
    comp, hit, step_s, fixed = _truth()
    hook_s = 2e-5
    runs = _runs(comp, hit, step_s, fixed)
    for r in runs:
        if "comp" not in r:
            r["total_s"] -= hook_s * lat.unhooked_calls(r["bits"], False)
    none_hooked = next(r for r in runs if r["kind"] == "none" and "comp" not in r)
    runs.append({"kind": "hooked", "bits": none_hooked["bits"], "total_s": none_hooked["total_s"]
                 + hook_s * STEPS * B * C})
    prof = lat.fit_profile(runs, KEY, STEPS)
    assert prof.hook_s == pytest.approx(hook_s) and prof.fixed_s == pytest.approx(fixed)
    assert prof.scale == pytest.approx(1.0) and np.allclose(prof.component_s, comp)
    assert all(r["predicted_s"] == pytest.approx(r["measured_s"], abs=1e-6) for r in prof.runs)
    bits = np.ones((STEPS, B, C), bool)
    assert prof.predict(bits) == pytest.approx(none_hooked["total_s"])  # all-recompute runs bare
    bits[2, 1, 0] = False  # block 1's attn1 is now read at step 2: hooked, so its calls are no longer bare
    assert prof.predict(bits) == pytest.approx(none_hooked["total_s"] - comp[1, 0] + hook_s * STEPS)


def test_fit_shares_the_fast_paths_skipped_glue_among_slots():
    """A block that skips glue (norms, modulation) when cached: its saving beyond its components goes to
    the slots ``glue`` names, so a schedule that caches only those slots is priced with it."""
    comp, hit, step_s, fixed = _truth()
    glue_s = np.linspace(1e-3, 2e-3, B)  # per block, skipped only when its slots 0 and 2 are cached
    glue = np.tile([0.5, 0.0, 0.5], (B, 1))
    true_comp = comp + glue_s[:, None] * glue
    runs = _runs(true_comp, hit, step_s, fixed)
    gates = 4e-4  # what an all-cached block still runs
    for r in runs[:2]:
        r["comp"] = np.broadcast_to(comp + hit if r["kind"] == "none" else np.zeros((B, C)), (STEPS, B, C))
        per_block = (comp + hit).sum(axis=1) + glue_s + gates if r["kind"] == "none" else np.full(B, gates)
        r["blocks"] = np.broadcast_to(per_block, (STEPS, B))
    prof = lat.fit_profile(runs, KEY, STEPS, glue)
    assert np.allclose(prof.component_s, true_comp + hit)  # a fast-path cache hit is not called at all
    assert prof.scale == pytest.approx(1.0, abs=0.05)
    without = lat.fit_profile(runs, KEY, STEPS)  # no glue weights: the components alone
    assert np.allclose(without.component_s, comp + hit)
    assert lat.glue_weights(lat.get_adapter(build_pipeline("pixart-alpha")))[0].tolist() == [0.5, 0.0, 0.5]
    assert not lat.glue_weights(lat.get_adapter(build_pipeline("flux"))).any()


def test_fit_needs_both_part_timings():
    comp, hit, step_s, fixed = _truth()
    runs = [r for r in _runs(comp, hit, step_s, fixed) if r["kind"] != "cached" or "comp" not in r]
    with pytest.raises(DitaccelError, match="none and cached"):
        lat.fit_profile(runs, KEY, STEPS)


def test_prediction_is_monotone_forces_step_zero_and_checks_shape():
    comp, hit, step_s, fixed = _truth(2)
    prof = lat.fit_profile(_runs(comp, hit, step_s, fixed), KEY, STEPS)
    rng = np.random.default_rng(3)
    bits = rng.random((STEPS, B, C)) < 0.4
    for _ in range(20):  # recomputing one more component never makes a schedule cheaper
        more = bits.copy()
        more[tuple(rng.integers(0, n) for n in (STEPS, B, C))] = True
        assert prof.predict(more) >= prof.predict(bits)
        bits = more
    zero = np.zeros((STEPS, B, C), bool)
    one0 = zero.copy()
    one0[0] = True
    assert prof.predict(zero) == prof.predict(one0)  # the runtime computes step 0 anyway
    assert prof.speedup(np.ones((STEPS, B, C), bool)) == pytest.approx(1.0)
    assert prof.speedup(zero) > prof.speedup(bits) > 1.0
    with pytest.raises(ScheduleError, match="does not fit"):
        prof.predict(np.ones((STEPS, B + 1, C), bool))


def test_profile_file_round_trips_and_rejects_corruption(tmp_path):
    comp, hit, step_s, fixed = _truth()
    prof = lat.fit_profile(_runs(comp, hit, step_s, fixed), KEY, STEPS)
    path = tmp_path / "p.json"
    lat.save_profile(prof, path)
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]  # the temp file was renamed away
    back = lat.load_profile(path, KEY)
    assert back is not None and np.array_equal(back.component_s, prof.component_s) and back.scale == prof.scale
    assert lat.load_profile(path, {**KEY, "batch": 2}) is None  # made for another batch
    d = json.loads(path.read_text())
    d["profile"]["scale"] = 0.1  # edited by hand: the checksum no longer matches
    path.write_text(json.dumps(d))
    assert lat.load_profile(path, KEY) is None
    path.write_text("{not json")
    assert lat.load_profile(path, KEY) is None
    assert lat.load_profile(tmp_path / "missing.json") is None


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv(lat.CACHE_ENV, str(tmp_path / "c"))
    assert lat.cache_dir() == tmp_path / "c"
    monkeypatch.delenv(lat.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert lat.cache_dir() == tmp_path / "x" / "ditaccel" / "latency"


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("pixart-alpha")


def _kw(steps: int = 4) -> dict:
    kw = dict(call_kwargs("pixart-alpha"))
    kw["num_inference_steps"] = steps
    return kw


def test_real_profile_is_cached_per_key(pipe, monkeypatch, tmp_path):
    monkeypatch.setenv(lat.CACHE_ENV, str(tmp_path))
    calls = []
    real = lat.profile_latency
    monkeypatch.setattr(lat, "profile_latency", lambda *a, **k: calls.append(1) or real(*a, **k))
    prof = lat.latency_profile(pipe, _kw(), batch=1)
    assert calls == [1] and prof.component_s.shape == (len(pipe.transformer.transformer_blocks), 3)
    assert (prof.component_s >= 0).all() and prof.component_s.sum() > 0 and prof.scale > 0
    assert prof.key["steps"] == 4 and prof.key["resolution"] == [16, 16] and prof.key["clock"] in ("cpu", "wall")
    # two rotated rounds of the plain calls; "hooked" prices hook_s, "skipped" (residual step reuse, PixArt) stack_s
    assert [r["kind"] for r in prof.runs] == ["none", "cached", "random", "hooked", "skipped",
                                              "cached", "random", "hooked", "skipped", "none"]
    assert prof.stack_s >= 0 and prof.hook_s >= 0  # timed on a replica: may clip to 0; exact-data tests check
    fora2 = presets.fora(pipe, 2, steps=4)
    skip = CacheSchedule(fora2.bits, fora2.components, fora2.family, step_reuse="residual")
    bare = 2 * fora2.blocks * 3  # skipping whole steps, it reads no cache: steps 0 and 2 run bare
    assert prof.predict(skip) == pytest.approx(prof.predict(fora2) - 2 * prof.stack_s - bare * prof.hook_s)
    parts = prof.parts  # where the time goes, as the profile saw it
    assert parts["transformer_full_step_s"] > parts["transformer_cached_step_s"] > 0
    assert parts["text_encoder_s"] > 0 and parts["vae_decode_s"] > 0
    again = lat.latency_profile(pipe, _kw(), batch=1)  # from disk, not measured again
    assert calls == [1] and np.array_equal(again.component_s, prof.component_s)
    lat.latency_profile(pipe, _kw(), batch=2)  # another batch is another profile
    lat.latency_profile(pipe, _kw(), batch=1, refresh=True)
    assert calls == [1, 1, 1] and len(list(tmp_path.glob("*.json"))) == 2
    s = presets.fora(pipe, 2, steps=4)
    assert prof.predict(presets.none(pipe, steps=4)) > prof.predict(s) > prof.predict(
        CacheSchedule.for_model(pipe, np.zeros_like(s.bits)))
    kw = {k: v for k, v in _kw().items() if k != "num_inference_steps"}  # the steps come from the schedule
    seconds, speedup = predicted_seconds(pipe, s, kw)  # the cached (refreshed) profile: nothing measured
    assert calls == [1, 1, 1] and speedup > 1.0
    assert seconds == pytest.approx(lat.latency_profile(pipe, _kw()).predict(s))


def test_search_defaults_to_the_latency_model_and_resume_keeps_its_profile(pipe, tmp_path, monkeypatch, capsys):
    kw = _kw(4)
    kw.pop("output_type")
    cfg = dict(prompts=["a red fox"], seeds=[0], metric="psnr", population=4, seed=1, call_kwargs=kw,
               batch_size=8)
    fr = search(pipe, SearchConfig(generations=1, out=tmp_path / "s", **cfg))
    assert fr.info["cost"] == "latency-model" and "latency model" in speedup_label(fr)
    prof = lat.load_profile(tmp_path / "s" / "latency_profile.json")
    assert prof is not None
    rows = [json.loads(x) for x in (tmp_path / "s" / "candidates.jsonl").read_text().splitlines()]
    full = prof.predict(np.ones(rows and (4, len(pipe.transformer.transformer_blocks), 3), bool))
    for r in rows:
        assert r["objectives"][1] == r["predicted_s"] and r["speedup"] == pytest.approx(full / r["predicted_s"])
        assert r["speedup_macs"] > 0
    assert load_frontier(tmp_path / "s").info["cost"] == "latency-model"
    assert main(["frontier", str(tmp_path / "s"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cost"] == "latency-model"
    # resuming prices new candidates with the folder's profile, whatever the device cache holds now
    monkeypatch.setattr(lat, "profile_latency", lambda *a, **k: pytest.fail("re-profiled on resume"))
    monkeypatch.setenv(lat.CACHE_ENV, str(tmp_path / "empty"))
    search(pipe, SearchConfig(generations=2, out=tmp_path / "s", resume=True, **cfg))
    rows = [json.loads(x) for x in (tmp_path / "s" / "candidates.jsonl").read_text().splitlines()]
    assert fr.info["step_reuse"] == "residual"  # structured on PixArt: skip steps are priced as stack skips
    assert all(r["speedup"] == pytest.approx(full / prof.predict(np.asarray(_bits(r, pipe)), residual=True))
               for r in rows)


def _bits(row: dict, pipe) -> np.ndarray:
    from ditaccel.search.genome import unpack

    return unpack(row["genome"], (4, len(pipe.transformer.transformer_blocks), 3))


def test_macs_cost_and_old_searches_keep_macs(pipe, tmp_path, monkeypatch):
    kw = _kw(3)
    kw.pop("output_type")
    cfg = dict(prompts=["a red fox"], seeds=[0], metric="psnr", population=4, seed=1, call_kwargs=kw)
    monkeypatch.setattr(lat, "profile_latency", lambda *a, **k: pytest.fail("profiled for a macs search"))
    fr = search(pipe, SearchConfig(generations=1, out=tmp_path / "m", cost="macs", **cfg))
    assert fr.info["cost"] == "macs" and speedup_label(fr) == "speedup (transformer MACs)"
    assert not (tmp_path / "m" / "latency_profile.json").exists()
    fr = search(pipe, SearchConfig(generations=2, out=tmp_path / "m", resume=True, **cfg))  # cost=None: the saved one
    assert fr.info["cost"] == "macs"
    with pytest.raises(DitaccelError, match="unknown cost 'flops'"):
        search(pipe, SearchConfig(generations=1, cost="flops", **cfg))


def test_cli_cost_choices(capsys):
    assert main(["search", "--cost", "flops"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ditaccel: error:") and "latency-model" in err[0]


def test_a_search_folder_with_a_version_2_profile_resumes_on_it(pipe, tmp_path, monkeypatch):
    """Profiles before residual reuse (version 2) price components-rule schedules as version 3 does: a search
    of that kind resumes on its own profile, not a new one."""
    from ditaccel._io import CHECKSUM_KEY, atomic_write_checked_json

    kw = _kw(4)
    kw.pop("output_type")
    cfg = dict(prompts=["a red fox"], seeds=[0], metric="psnr", population=4, seed=1, call_kwargs=kw,
               batch_size=8, step_reuse="components", seeding="presets", out=tmp_path / "s")
    search(pipe, SearchConfig(generations=1, **cfg))
    path = tmp_path / "s" / "latency_profile.json"
    d = json.loads(path.read_text())
    d.pop(CHECKSUM_KEY)
    d["version"] = 2
    d["profile"]["step_s"] = 123.0  # a marker: prices from this file, not from a new profile
    del d["profile"]["stack_s"]
    atomic_write_checked_json(path, d)
    monkeypatch.setattr(lat, "profile_latency", lambda *a, **k: pytest.fail("re-profiled on resume"))
    search(pipe, SearchConfig(generations=2, resume=True, **cfg))
    assert json.loads(path.read_text())["profile"]["step_s"] == 123.0
    assert lat.load_profile(path) is None and lat.load_profile(path, older=(2,)).stack_s == 0.0
