"""``ditaccel eval``: every method row is measured, the table lists every request, bad input fails early."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest

from ditaccel.errors import DitaccelError
from ditaccel.evaluate import EvalConfig, evaluate, parse_methods
from ditaccel.testing.replicas import build_pipeline

PROMPTS = ["a red fox", "a blue car", "a green tree"]


def _replica() -> object:
    pipe = build_pipeline("pixart-alpha")
    # what load_pipeline() reads from ditaccel.json: small, fast calls on the replica
    from ditaccel.pipeline import PipelineInfo, set_pipeline_info

    defaults = {"height": 16, "width": 16, "max_sequence_length": 16, "guidance_scale": 4.5}
    return set_pipeline_info(pipe, PipelineInfo(call_defaults=defaults))


def _frontier(pipe: object, folder: Path) -> None:
    """A search folder as `ditaccel search` writes it, with preset schedules standing in for searched ones."""
    from ditaccel.caching import presets, schedule_macs
    from ditaccel.search.frontier import Frontier, FrontierPoint, write_frontier

    base = schedule_macs(pipe, presets.none(pipe, steps=6), 16, 16, text_len=16)
    points = []
    for i, s in enumerate([presets.tgate(pipe, 3, steps=6), presets.fora(pipe, 2, steps=6),
                           presets.fora(pipe, 3, steps=6)]):
        m = schedule_macs(pipe, s, 16, 16, text_len=16)
        points.append(FrontierPoint(f"p{i}", base / m, 1.0 - 0.1 * i, s, m))
    write_frontier(Frontier(points, "pixart", "psnr", {"quality": 1.0}), folder, plot=False)


def _no_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: object, **k: object) -> None:
        raise AssertionError("generation started before the input was checked")

    monkeypatch.setattr("ditaccel.pipeline.generate_images", boom)
    monkeypatch.setattr("ditaccel.evaluate.runner._generate_local", boom)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], object, Path]:
    tmp = tmp_path_factory.mktemp("eval")
    pipe = _replica()
    _frontier(pipe, tmp / "search")
    from ditaccel.caching import presets

    presets.fora(pipe, 3, steps=6).save(tmp / "s.json")
    methods = ["baseline", "fora:2", "tgate:3", "delta-dit", f"schedule:{tmp / 's.json'}", f"ecad:{tmp / 'search'}",
               f"ecad:{tmp / 'search'}:1.8x", "fbc:0.2", "pab", "fastercache", "taylorseer", "magcache", "cachedit",
               "fp4-w4a8:2", "fp4-w4a6:0", "int-w4a8:0", f"fp4-w4a8:2+ecad:{tmp / 'search'}:1.8x", "fp4-w4a8:2+pab"]
    cfg = EvalConfig(methods=",".join(methods), out=tmp / "out", prompts=PROMPTS, seeds=[0, 1], steps=6, batch_size=4,
                     timing_repeats=1, quant_calib_prompts=2, progress=False, command="pytest")
    result = evaluate(cfg, pipe=pipe)
    return methods, result, tmp


def test_every_method_row_has_its_numbers(full_run: tuple) -> None:
    methods, result, tmp = full_run
    ok = [r for r in result.rows if r.status == "ok"]
    for r in ok:
        assert r.seconds_per_image > 0 and r.speedup > 0, r.label
        assert r.macs_per_image > 0 and r.macs_speedup > 0, r.label
        assert r.weight_bytes > 0 and r.peak_memory_bytes >= 0, r.label
        assert len(r.timings) == 1
        if r.kind != "baseline":
            assert {"psnr", "ssim"} <= set(r.metrics), r.label
            assert 0.0 < r.metrics["ssim"] <= 1.0
        assert len(list((tmp / "out" / r.images).glob("*.png"))) == len(PROMPTS) * 2
    rows = {r.label: r for r in result.rows}
    base = rows["baseline"]
    assert base.macs_speedup == pytest.approx(1.0)
    # the hook counter prices executed work exactly like schedule_macs
    for r in ok:
        if r.macs_source == "schedule_macs":
            assert r.details["counted_macs_per_image"] == r.macs_per_image, r.label
    assert rows["fora:2"].macs_speedup > 1.5
    assert rows["fora:2"].metrics["psnr"] < math.inf  # caching changed the images
    # quantized rows: packed weights are smaller; MACs unchanged unless a schedule is combined
    for q in ("fp4-w4a8:2", "fp4-w4a6:0", "int-w4a8:0"):
        assert rows[q].weight_bytes < 0.7 * base.weight_bytes
        assert rows[q].macs_speedup == pytest.approx(1.0)
        assert rows[q].details["quantization"]["bits_per_weight"] < 8  # 4-bit codes + group scales
    combo = rows[f"fp4-w4a8:2+ecad:{tmp / 'search'}:1.8x"]
    assert combo.macs_speedup == pytest.approx(rows[f"ecad:{tmp / 'search'}:1.8x"].macs_speedup)
    assert combo.weight_bytes == rows["fp4-w4a8:2"].weight_bytes
    # dynamic peers skip real work on the replica
    for peer in ("pab", "taylorseer", "magcache"):
        assert rows[peer].macs_source == "counted" and rows[peer].macs_speedup > 1.05, peer
    # peers that could not run are rows with a reason, never silently dropped
    for r in result.rows:
        assert r.status == "ok" or r.reason


def test_table_lists_every_requested_method(full_run: tuple) -> None:
    methods, result, tmp = full_run
    md = (tmp / "out" / "results.md").read_text()
    data = json.loads((tmp / "out" / "results.json").read_text())
    labels = [m["label"] for m in data["methods"]]
    for m in methods:
        if m == f"ecad:{tmp / 'search'}":  # the whole frontier: one row per point
            pts = [lab for lab in labels if lab.startswith(m + "@")]
            assert len(pts) == 3 and all(f"| `{p}` |" in md for p in pts)
            continue
        assert m in labels and f"| `{m}` |" in md, m
    assert data["machine"] and data["command"] == "pytest"
    assert (tmp / "out" / "grid.png").stat().st_size > 1000
    assert (tmp / "out" / "quality_vs_speed.png").stat().st_size > 1000
    ecad = [m for m in data["methods"] if m["group"]]
    assert len({m["group"] for m in ecad}) == 2  # the frontier line, and fp4 + its point


def test_peers_leave_the_model_exactly_as_before() -> None:
    from ditaccel.caching.dynamic import cachedit_status
    from ditaccel.evaluate import apply_cachedit, apply_peer_cache
    from ditaccel.pipeline import generate_images

    pipe = _replica()
    kw = {"num_inference_steps": 6}
    ref = generate_images(pipe, PROMPTS[:2], [0, 1], batch_size=2, **kw)
    names = ["fbc", "pab", "fastercache", "taylorseer", "magcache"] + (["cachedit"] if cachedit_status() is None else [])
    for name in names:
        h = apply_cachedit(pipe, call_kwargs=kw) if name == "cachedit" else \
            apply_peer_cache(pipe, name, call_kwargs=kw, calib_prompts=PROMPTS)
        a = generate_images(pipe, PROMPTS[:2], [0, 1], batch_size=2, **kw)
        b = generate_images(pipe, PROMPTS[:2], [0, 1], batch_size=2, **kw)
        h.remove()
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True)), f"{name}: state leaked between runs"
        assert not hasattr(pipe.transformer, "_diffusers_hook"), name
        assert all(np.array_equal(x, y) for x, y in zip(
            generate_images(pipe, PROMPTS[:2], [0, 1], batch_size=2, **kw), ref, strict=True)), name


def test_unavailable_peer_is_a_skipped_row_with_its_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ditaccel.caching.dynamic.cachedit_status", lambda: "cache-dit is not importable (test)")
    cfg = EvalConfig(methods="cachedit,fora:2", out=tmp_path, prompts=PROMPTS[:1], seeds=[0], steps=4,
                     timing_repeats=1, progress=False)
    result = evaluate(cfg, pipe=_replica())
    row = result.row("cachedit")
    assert row.status == "skipped" and "not importable" in row.reason
    assert "| cache-dit DBCache, threshold 0.08, warm-up 4, F1, B0 | `cachedit` |" in \
        (tmp_path / "results.md").read_text()
    assert result.row("fora:2").status == "ok"


@pytest.mark.parametrize("methods, message", [
    ("baseline,warp:3", "unknown method 'warp'"),
    ("fora:x", "not a whole number"),
    ("fora:2+tgate:3", "at most one of each"),
    ("ecad:/nonexistent/run", "frontier.json"),
    ("schedule:/nonexistent.json", "does not exist"),
])
def test_bad_method_refused_before_generation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, methods: str,
                                              message: str) -> None:
    _no_generation(monkeypatch)
    with pytest.raises(DitaccelError) as e:
        evaluate(EvalConfig(methods=methods, out=tmp_path / "o", prompts=PROMPTS, progress=False), pipe=_replica())
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "o" / "images").exists()


def test_missing_weights_refused_before_generation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_generation(monkeypatch)
    for var in ("DITACCEL_CLIP", "DITACCEL_IMAGEREWARD", "DITACCEL_HPSV2"):
        monkeypatch.delenv(var, raising=False)
    for metric in ("clip", "imagereward", "hpsv2"):
        with pytest.raises(DitaccelError) as e:  # missing weights, or the metric's package (not installed here)
            evaluate(EvalConfig(methods="fora:2", metrics=[metric], out=tmp_path / "o", prompts=PROMPTS,
                                progress=False), pipe=_replica())
        assert "\n" not in str(e.value)
    with pytest.raises(DitaccelError, match="unknown metric"):
        evaluate(EvalConfig(methods="fora:2", metrics="psnr,lpipz", out=tmp_path / "o", prompts=PROMPTS,
                            progress=False), pipe=_replica())


def test_empty_reference_folder_refused_before_generation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_generation(monkeypatch)
    empty = tmp_path / "ref"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(DitaccelError) as e:
        evaluate(EvalConfig(methods="fora:2", metrics=["fid"], reference=empty, out=tmp_path / "o", prompts=PROMPTS,
                            progress=False), pipe=_replica())
    assert "holds no images" in str(e.value) and "\n" not in str(e.value)


def test_cli_refuses_in_one_line_before_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ditaccel.evaluate.cli import add_parsers

    monkeypatch.setattr("ditaccel.pipeline.load_pipeline", lambda *a, **k: pytest.fail("model loaded"))
    monkeypatch.delenv("DITACCEL_CLIP", raising=False)
    ap = argparse.ArgumentParser()
    add_parsers(ap.add_subparsers(dest="command"))
    (tmp_path / "ref").mkdir()
    for argv, msg in ((["--methods", "baseline,nope"], "unknown method"),
                      (["--methods", "fora:2", "--metrics", "fid", "--reference", str(tmp_path / "ref")],
                       "holds no images"),
                      (["--methods", "fora:2", "--metrics", "psnr,clip"], "CLIP model")):
        args = ap.parse_args(["eval", *argv, "--out", str(tmp_path / "o")])
        with pytest.raises(DitaccelError, match=msg):
            args.func(args)


def test_generation_resumes_and_refuses_other_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ditaccel.pipeline as P

    calls: list[int] = []
    real = P.generate_images

    def counting(pipe: object, prompts: list[str], *a: object, **k: object) -> list[np.ndarray]:
        calls.append(len(prompts))
        return real(pipe, prompts, *a, **k)

    monkeypatch.setattr(P, "generate_images", counting)
    pipe = _replica()
    cfg = EvalConfig(methods="fora:2", out=tmp_path, prompts=PROMPTS, seeds=[0, 1], steps=4, batch_size=6,
                     timing_repeats=1, progress=False)
    evaluate(cfg, pipe=pipe)
    first = (tmp_path / "images" / "fora_2" / "00003.png").read_bytes()
    kept = (tmp_path / "images" / "fora_2" / "00002.png").stat().st_mtime_ns
    (tmp_path / "images" / "fora_2" / "00003.png").unlink()
    calls.clear()
    evaluate(cfg, pipe=pipe)
    # one image regenerated (plus the timing runs: 2 methods x (warm-up + 1 repeat), 2 images each)
    assert sorted(calls) == [1, 2, 2, 2, 2]
    assert (tmp_path / "images" / "fora_2" / "00003.png").read_bytes() == first  # same seed, same image
    assert (tmp_path / "images" / "fora_2" / "00002.png").stat().st_mtime_ns == kept  # not rewritten
    cfg.steps = 5
    with pytest.raises(DitaccelError, match="other prompts, seeds or settings"):
        evaluate(cfg, pipe=pipe)


def test_method_grammar() -> None:
    specs = parse_methods("baseline, fora:3 ,ecad:runs/x:2.5x,ecad:runs/x,fp4-w4a8+ecad:runs/x:2.5x,int-w4a8:0")
    assert [s.text for s in specs] == ["baseline", "fora:3", "ecad:runs/x:2.5x", "ecad:runs/x",
                                       "fp4-w4a8+ecad:runs/x:2.5x", "int-w4a8:0"]
    assert specs[2].cache.args == ("runs/x", "2.5x") and specs[3].cache.args == ("runs/x",)
    assert specs[4].quant.name == "fp4-w4a8" and specs[4].cache.name == "ecad"
    with pytest.raises(DitaccelError, match="listed twice"):
        parse_methods("fora:2,fora:2")


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").environ.get("DITACCEL_TEST_RAY"),
                    reason="starts a local Ray cluster (minutes on a busy 2-core machine); set DITACCEL_TEST_RAY=1")
def test_ray_workers_write_the_same_images_as_local(tmp_path: Path) -> None:
    from ditaccel.zoo import train

    tok = train.build_tokenizer()
    pipe = train.assemble_pipeline(train.build_transformer().eval(), train.build_vae().eval(),
                                   train.build_text_encoder(len(tok)).eval(), tok)
    pipe.save_pretrained(tmp_path / "model", safe_serialization=True)
    common = dict(methods="fora:2", model=str(tmp_path / "model"), prompts=["a red circle", "a blue square"],
                  seeds=[0, 1], steps=4, batch_size=2, timing_repeats=1, progress=False)
    evaluate(EvalConfig(out=tmp_path / "ray", ray_address="local", **common))
    evaluate(EvalConfig(out=tmp_path / "local", **common))
    for f in sorted((tmp_path / "local" / "images" / "fora_2").glob("*.png")):
        assert f.read_bytes() == (tmp_path / "ray" / "images" / "fora_2" / f.name).read_bytes()


def test_quantized_rows_are_saved_and_reloaded_bit_exactly(tmp_path: Path) -> None:
    from ditaccel.evaluate import QuantSettings, installed, prepare, resolve_methods
    from ditaccel.pipeline import generate_images

    pipe = _replica()
    kw = {"num_inference_steps": 4}
    qs = QuantSettings(prompts=PROMPTS[:2])
    images = []
    for _ in range(2):
        (m,) = resolve_methods(pipe, parse_methods("fp4-w4a8:2"), 4)
        prepare(pipe, m, kw, qs, PROMPTS, store_dir=tmp_path)
        with installed(pipe, m, kw, PROMPTS):
            images.append(generate_images(pipe, PROMPTS, [0, 0, 0], batch_size=3, **kw))
    assert "loaded_from" in m.quant_report and len(list(tmp_path.iterdir())) == 1
    assert all(np.array_equal(a, b) for a, b in zip(*images, strict=True))


# ----------------------------------------------------------------------------- peers as curves (issue 10)


def test_sweep_expands_each_grid_once_with_reader_names() -> None:
    from ditaccel.evaluate.methods import KNOBS, knob_values, spec_title

    fbc = parse_methods("fbc:sweep")
    assert [s.text for s in fbc] == [f"fbc:{a}" for a in KNOBS["fbc"].sweep] and len(fbc) >= 5
    titles = [spec_title(s) for s in fbc]
    assert titles[2] == ("FirstBlockCache (diffusers), threshold 0.15", "FirstBlockCache (diffusers)")
    every = parse_methods("baseline,fbc:0.15,peers:sweep,fbc:sweep")
    texts = [s.text for s in every]
    assert len(texts) == len(set(texts)) == 1 + sum(len(k.sweep) for k in KNOBS.values())
    assert {s.cache.name for s in every[1:]} == set(KNOBS)
    assert texts[:2] == ["baseline", "fbc:0.15"]  # explicit rows keep their place; the sweep skips them
    # a second knob names the curve: TaylorSeer order 1 and order 2 are two lines
    curves = {spec_title(s)[1] for s in parse_methods("taylorseer:sweep")}
    assert curves == {"TaylorSeer (diffusers), order 1", "TaylorSeer (diffusers), order 2"}
    assert spec_title(parse_methods("cachedit:0.3:2:4:1")[0])[0] == \
        "cache-dit DBCache, threshold 0.3, warm-up 2, F4, B1"
    assert knob_values(parse_methods("teacache:0")[0].cache, "teacache:0") == {"threshold": 0.0}  # 0: never skips
    for bad, msg in (("ecad:sweep", "only methods with a knob sweep"), ("fbc:sweep+fp4-w4a8", "stands alone"),
                     ("cachedit:0.1:1:0", "must be positive"), ("teacache:-0.1", "must be >= 0")):
        with pytest.raises(DitaccelError, match=msg):
            parse_methods(bad)


def _row(label: str, speed: float, adherence: float, psnr: float, group: str | None = None) -> object:
    from ditaccel.evaluate import MethodResult

    return MethodResult(label=label, kind="schedule" if group else "peer", name=label, speedup=speed,
                        group=group, metrics={"adherence": adherence, "psnr": psnr})


def test_dominance_names_the_fastest_dominating_point_or_the_gaps() -> None:
    from ditaccel.evaluate.report import dominance, dominance_markdown

    g = "ECAD frontier (runs/x)"
    ecad = [_row("e1", 1.4, 1.0, 50.0, g), _row("e2", 2.0, 1.0, 45.0, g), _row("e3", 3.0, 0.9, 30.0, g)]
    peers = [_row("p_slow", 1.3, 1.0, 44.0), _row("p_fast_good", 2.5, 1.0, 40.0), _row("p_beyond", 3.5, 0.8, 20.0),
             _row("p_tie", 2.0, 1.0, 45.0)]
    base = MethodResult_baseline()
    doms = {d.peer.label: d for d in dominance([base, *ecad, *peers])}
    assert set(doms) == {p.label for p in peers}  # the baseline and ECAD points are not peers
    assert doms["p_slow"].by.label == "e2"        # e1 and e2 both dominate; the faster one is named
    assert doms["p_tie"].by.label == "e2"         # equal speed and quality counts as dominated
    d = doms["p_fast_good"]
    assert not d.dominated
    assert d.speed_ratio == pytest.approx(2.0 / 2.5)      # e2 is the fastest point as good on both columns
    assert d.quality_gap == pytest.approx({"adherence": -0.1, "psnr": -10.0})  # e3: the only one as fast
    d = doms["p_beyond"]
    assert not d.dominated and d.quality_gap == {"adherence": None, "psnr": None}
    assert d.speed_ratio == pytest.approx(3.0 / 3.5)
    md = dominance_markdown(list(doms.values()))
    assert "dominated by **e2**" in md and "no ECAD point is this fast" in md and "2 of 4 peer points" in md


def MethodResult_baseline() -> object:  # noqa: N802 (reads like the row it builds)
    from ditaccel.evaluate import MethodResult

    return MethodResult(label="baseline", kind="baseline", name="Baseline", speedup=1.0,
                        metrics={"adherence": 1.0})


def test_sweep_run_measures_cpu_time_and_draws_each_curve_as_a_line(tmp_path: Path) -> None:
    import torch

    from ditaccel.evaluate.methods import KNOBS
    from ditaccel.evaluate.report import dominance, write_plot

    pipe = _replica()
    _frontier(pipe, tmp_path / "search")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = EvalConfig(methods=f"fora:sweep,tgate:2,tgate:4,ecad:{tmp_path / 'search'}", out=tmp_path / "out",
                         prompts=PROMPTS[:1], seeds=[0], steps=6, batch_size=2, timing_images=1, timing_repeats=2,
                         progress=False)
        result = evaluate(cfg, pipe=pipe)
    finally:
        torch.set_num_threads(threads)
    ok = [r for r in result.rows if r.status == "ok"]
    assert all(r.cpu_seconds_per_image > 0 and len(r.cpu_timings) == 2 and r.cpu_speedup > 0 for r in ok)
    fora = [r for r in ok if r.curve == "FORA"]
    assert len(fora) == len(KNOBS["fora"].sweep)
    assert result.row("fora:2").name == "FORA, recompute every 2 steps"
    assert max(r.macs_speedup for r in fora) > 2 * min(r.macs_speedup for r in fora)  # the grid spans a range
    legend = write_plot(result, tmp_path / "p.png", speed="cpu_speedup")
    assert legend[:3] == ["FORA", "TGATE", f"ECAD frontier ({tmp_path / 'search'})"]
    assert len(legend) == 3  # the only panel is PSNR, which the baseline has not (it is the reference)
    assert (tmp_path / "p.png").stat().st_size > 5000
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| FORA, recompute every 2 steps | `fora:2` |" in md and "speedup (CPU time)" in md
    doms = dominance(result.rows, speed="cpu_speedup")
    assert len(doms) == len(fora) + 2 and all(d.peer.curve in ("FORA", "TGATE") for d in doms)
    from ditaccel.evaluate import EvalResult

    again = EvalResult.from_json(tmp_path / "out" / "results.json")  # reports redrawn without rerunning
    assert [(r.name, r.curve, r.cpu_speedup, r.metrics) for r in again.rows] == \
        [(r.name, r.curve, r.cpu_speedup, r.metrics) for r in result.rows]


def test_same_label_with_a_changed_schedule_is_refused_not_reused(tmp_path: Path) -> None:
    from ditaccel.caching import presets

    pipe = _replica()
    presets.fora(pipe, 2, steps=4).save(tmp_path / "s.json")
    cfg = EvalConfig(methods=f"schedule:{tmp_path / 's.json'}", out=tmp_path / "o", prompts=PROMPTS[:1], seeds=[0],
                     steps=4, timing_images=1, timing_repeats=1, progress=False)
    evaluate(cfg, pipe=pipe)
    evaluate(cfg, pipe=pipe)  # same schedule: its images are reused
    presets.fora(pipe, 3, steps=4).save(tmp_path / "s.json")  # e.g. a rerun search rewrote the frontier
    with pytest.raises(DitaccelError, match="another method"):
        evaluate(cfg, pipe=pipe)


def test_prediction_error_compares_predicted_with_cpu_time_else_wall() -> None:
    from ditaccel.evaluate.report import prediction_error
    from ditaccel.evaluate.runner import MethodResult

    rows = [MethodResult(label="a", kind="schedule", predicted_speedup=2.0, cpu_speedup=2.0, speedup=9.0),
            MethodResult(label="b", kind="schedule", predicted_speedup=1.1, speedup=1.0),
            MethodResult(label="c", kind="schedule", predicted_speedup=3.0, cpu_speedup=2.5),
            MethodResult(label="d", kind="peer", speedup=1.5)]
    # errors 0%, 10%, 20%: median 10%, max 20%; the peer row has no prediction
    assert prediction_error(rows) == "over 3 rows its speedup is a median 10.0% (max 20.0%) from the measured one"
    assert prediction_error(rows[3:]) == "no row with both"


def test_image_folders_tell_reuse_rules_apart(tmp_path):
    """A rerun search can keep a point's bits and change its reuse rule: its cached images must not be reused."""
    import dataclasses
    import hashlib

    from ditaccel.caching import CacheSchedule
    from ditaccel.evaluate.methods import Method
    from ditaccel.evaluate.runner import method_fingerprint

    bits = np.ones((4, 2, 3), dtype=bool)
    bits[1:3] = False
    plain = CacheSchedule(bits, ("attn1", "attn2", "ff"), "pixart")
    residual = dataclasses.replace(plain, step_reuse="residual")
    fp = {s.step_reuse: method_fingerprint(Method("ecad:d:2x", None, "schedule", schedule=s)) for s in (plain, residual)}
    assert fp["components"] != fp["residual"]
    sched = hashlib.sha1(np.packbits(bits).tobytes()).hexdigest()[:16]  # the fingerprint before reuse rules counted
    old = {"kind": "schedule", "schedule": sched, "peer": None, "quant": None, "iters": Method("x", None, "x").quant_iters,
           "params": {}}
    assert fp["components"] == hashlib.sha1(json.dumps(old, sort_keys=True, default=str).encode()).hexdigest()[:16]
    from ditaccel.evaluate.runner import ImageStore

    store = ImageStore(tmp_path, [("a red fox", 0)], {"steps": 4})
    store.begin("ecad:d:2x", fp["components"])
    store.check("ecad:d:2x", fp["components"])  # the same method resumes
    with pytest.raises(DitaccelError, match="another method labelled 'ecad:d:2x'"):
        store.check("ecad:d:2x", fp["residual"])
