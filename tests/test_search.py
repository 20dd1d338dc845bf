"""ECAD search on the PixArt-alpha replica: operators, prefix sharing, frontier, resume, Ray, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ditaccel.caching import CacheSchedule, presets
from ditaccel.cli import main
from ditaccel.errors import DitaccelError, MissingWeightsError
from ditaccel.search import PrefixEvaluator, SearchConfig, load_frontier, non_dominated, search, select
from ditaccel.search.engine import build_algorithm
from ditaccel.search.genome import canonical, initial_population, pack, preset_population, unpack
from ditaccel.testing.replicas import build_pipeline, call_kwargs

STEPS = 6
PROMPTS = ["a red fox in the city", "a blue car near the sea"]


def _kw() -> dict:
    kw = dict(call_kwargs("pixart-alpha"))
    kw.pop("output_type")
    kw["num_inference_steps"] = STEPS
    return kw


def _cfg(out: Path | None = None, **over) -> SearchConfig:
    base = dict(prompts=PROMPTS, seeds=[0], metric="psnr", population=6, generations=3, seed=1,
                call_kwargs=_kw(), out=out, batch_size=8, cost="macs")  # GA tests: a cost that needs no clock
    base.update(over)
    return SearchConfig(**base)


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("pixart-alpha")


@pytest.fixture(scope="module")
def shape(pipe):
    t = pipe.transformer
    return (STEPS, len(t.transformer_blocks), 3)


class _Calls:
    """Counts transformer forward calls (to prove refusals happen before any work)."""

    def __init__(self, pipe):
        self.n = 0
        self.h = pipe.transformer.register_forward_pre_hook(lambda *_: setattr(self, "n", self.n + 1))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.h.remove()


@pytest.fixture(scope="module")
def full_run(pipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("search") / "full"
    frontier = search(pipe, _cfg(out))
    return out, frontier


# -- operators -----------------------------------------------------------------------------------


def test_operators_yield_valid_genomes(pipe, shape):
    named = preset_population(pipe, STEPS)
    x0, names = initial_population(named, 12, np.random.default_rng(0))
    assert names[0] == "none" and len({pack(x) for x in x0}) == 12
    problem, algo = build_algorithm(shape, 12, x0, 5, seed=3)
    per_step = shape[1] * shape[2]
    rng = np.random.default_rng(0)
    from pymoo.core.evaluator import Evaluator
    from pymoo.problems.static import StaticProblem

    for gen in range(4):
        pop = algo.ask()
        X = np.asarray(pop.get("X"))
        assert X.dtype == bool and X.shape[1] == int(np.prod(shape))
        assert X[:, :per_step].all(), "step 0 must always recompute"
        assert len({pack(x) for x in X}) == len(X), "duplicates must be eliminated"
        if gen > 0:  # children: each differs from the closest parent in few places
            parents = np.asarray(algo.pop.get("X"))
            for x in X:
                assert (x != parents).sum(axis=1).min() < x.size
        F = np.column_stack([rng.random(len(X)), X.sum(axis=1) / X.shape[1]])
        G = (0.5 - (~X).sum(axis=1))[:, None].astype(float)
        Evaluator().eval(StaticProblem(problem, F=F, G=G), pop)
        algo.tell(infills=pop)


def test_mutation_flips_about_one_bit(shape):
    from pymoo.core.population import Population
    from pymoo.operators.mutation.bitflip import BitflipMutation

    n = int(np.prod(shape))
    problem, _ = build_algorithm(shape, 4, np.ones((4, n), dtype=bool), 1, seed=0)
    X = np.ones((2000, n), dtype=bool)
    off = BitflipMutation(prob=1.0, prob_var=1.0 / n).do(problem, Population.new(X=X),
                                                         random_state=np.random.default_rng(0))
    flips = (np.asarray(off.get("X")) != X).sum(axis=1)
    assert 0.8 < flips.mean() < 1.2


def test_four_point_crossover_mixes_parents(shape):
    from pymoo.core.population import Population
    from pymoo.operators.crossover.pntx import PointCrossover

    n = int(np.prod(shape))
    problem, _ = build_algorithm(shape, 4, np.ones((4, n), dtype=bool), 1, seed=0)
    a, b = np.zeros(n, dtype=bool), np.ones(n, dtype=bool)
    pop = Population.new(X=np.stack([a, b]))
    off = PointCrossover(n_points=4, prob=1.0).do(problem, pop, parents=[[0, 1]],
                                                  random_state=np.random.default_rng(0))
    for child in np.asarray(off.get("X")):
        switches = int((child[1:] != child[:-1]).sum())
        assert 1 <= switches <= 4


def test_genome_roundtrip_and_canonical(shape):
    bits = np.random.default_rng(0).random(shape) < 0.5
    assert np.array_equal(unpack(pack(bits), shape), bits)
    assert canonical(bits)[0].all() and np.array_equal(canonical(bits)[1:], bits[1:])


# -- prefix sharing ------------------------------------------------------------------------------


def test_prefix_sharing_is_bit_identical_and_cheaper(pipe, shape):
    rng = np.random.default_rng(0)
    scheds = [s for _, s in presets.all_presets(pipe, STEPS)][:10]
    base = scheds[2].bits
    for _ in range(6):  # children of one parent: shared prefixes of varying length
        b = base.copy()
        k = int(rng.integers(1, STEPS))
        b[k:] = rng.random(b[k:].shape) < 0.5
        scheds.append(CacheSchedule.for_model(pipe, b))
    ev = PrefixEvaluator(pipe, PROMPTS, [0, 1], batch_size=8, call_kwargs=_kw())
    shared, s_stats = ev.images(scheds, share=True)
    alone, a_stats = ev.images(scheds, share=False)
    for xs, ys in zip(shared, alone, strict=True):
        for x, y in zip(xs, ys, strict=True):
            assert x.dtype == np.uint8 and np.array_equal(x, y)
    assert s_stats.per_candidate_alone == a_stats.per_candidate_live  # exact accounting
    assert s_stats.components_alone == a_stats.components_live
    assert s_stats.components_live < a_stats.components_live
    assert s_stats.calls_live < a_stats.calls_live
    assert s_stats.saving > 1.2


def test_all_recompute_equals_plain_pipeline(pipe):
    ev = PrefixEvaluator(pipe, PROMPTS, [0, 0], batch_size=8, call_kwargs=_kw())
    imgs, _ = ev.images([presets.none(pipe, steps=STEPS)], share=True)
    gens = [torch.Generator().manual_seed(0) for _ in PROMPTS]
    plain = pipe(PROMPTS, generator=gens, output_type="np", **_kw()).images
    assert np.array_equal(imgs[0], list((np.clip(plain, 0, 1) * 255).round().astype(np.uint8)))


# -- the search ------------------------------------------------------------------------------------


def test_search_writes_a_non_dominated_frontier(full_run, shape):
    out, frontier = full_run
    for name in ("candidates.jsonl", "frontier.json", "frontier.png", "checkpoint"):
        assert (out / name).is_file()
    rows = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    assert len({r["genome"] for r in rows}) == len(rows), "a genome was evaluated twice"
    feasible = [r for r in rows if r["feasible"]]
    pts = frontier.points
    assert pts and all(p.speedup > 1 for p in pts)
    for p in pts:  # nothing evaluated beats a frontier point on both objectives
        assert not any(r["macs"] <= p.macs and r["quality"] >= p.quality
                       and (r["macs"] < p.macs or r["quality"] > p.quality) for r in feasible)
    for i, p in enumerate(pts):
        for q in pts[i + 1:]:
            assert q.speedup > p.speedup and q.quality < p.quality
    data = json.loads((out / "frontier.json").read_text())
    assert data["family"] == "pixart" and len(data["points"]) == len(pts)
    for d in data["points"]:
        s = CacheSchedule.load(out / d["schedule"])
        assert s.bits.shape == shape
    assert any(d["name"].startswith("fora(") for d in data["presets"])
    bce = data["block_component_evaluations"]
    assert bce["done"] < bce["separately"] and bce["saving"] > 1
    assert rows[0]["cost"]["components"] >= 0 and "generation" in rows[0]


def test_non_dominated_helper():
    items = [(1.0, 0.5), (2.0, 0.9), (2.0, 0.4), (3.0, 0.9), (0.5, 0.1)]
    assert sorted(non_dominated(items)) == [0, 1, 4]


def test_resume_equals_uninterrupted(pipe, full_run, tmp_path):
    out_full, full = full_run
    out = tmp_path / "resumed"
    search(pipe, _cfg(out, generations=2))  # generation 1 already holds gap fillers, which the resume replays
    with open(out / "candidates.jsonl", "a") as fh:  # killed while appending the next generation
        fh.write('{"genome": "ab')
    resumed = search(pipe, _cfg(out, generations=3, resume=True))
    assert [(p.speedup, p.quality, pack(p.schedule.bits)) for p in resumed.points] == \
           [(p.speedup, p.quality, pack(p.schedule.bits)) for p in full.points]
    a = [json.loads(x)["genome"] for x in (out / "candidates.jsonl").read_text().splitlines()]
    b = [json.loads(x)["genome"] for x in (out_full / "candidates.jsonl").read_text().splitlines()]
    assert a == b
    assert len(set(a)) == len(a)  # nothing evaluated or written twice
    ckpt = json.loads((out / "checkpoint").read_text())
    assert ckpt["generations_done"] == 3
    assert ckpt["candidates"] == len(a)


def test_select_writes_a_schedule(full_run, tmp_path):
    out, frontier = full_run
    f = load_frontier(out)
    target = f.points[len(f.points) // 2].speedup
    p = select(f, speedup=f"{target}x", out=tmp_path / "s.json")
    assert p.speedup == target
    s = CacheSchedule.load(tmp_path / "s.json")
    assert np.array_equal(s.bits, p.schedule.bits)
    q = select(out, min_quality=min(x.quality for x in f.points))
    assert q.speedup == max(x.speedup for x in f.points)
    with pytest.raises(DitaccelError, match="no frontier point"):
        select(f, min_quality=1e9)


def test_init_from_frontier_resamples_steps(pipe, full_run, tmp_path):
    out, _ = full_run
    kw = _kw()
    kw["num_inference_steps"] = STEPS + 2
    fr = search(pipe, _cfg(tmp_path / "init", init=out, generations=1, population=4, call_kwargs=kw))
    rows = [json.loads(x) for x in (tmp_path / "init" / "candidates.jsonl").read_text().splitlines()]
    assert any(r["name"].startswith("init:") for r in rows)
    assert all(p.schedule.steps == STEPS + 2 for p in fr.points)


# -- bad input: one line, before any work ---------------------------------------------------------


def test_bad_inputs_refused_before_work(pipe, full_run, tmp_path):
    out, _ = full_run
    other = tmp_path / "other_family"
    other.mkdir()
    (other / "frontier.json").write_text(json.dumps({"format": "ditaccel.frontier", "family": "flux", "points": []}))
    cases = [
        (dict(metric="nope"), DitaccelError, "unknown metric"),
        (dict(metric="clip"), MissingWeightsError, "DITACCEL_CLIP"),
        (dict(metric="imagereward", metric_paths={"imagereward_path": str(tmp_path / "missing.pt")}),
         MissingWeightsError, "missing.pt"),
        (dict(population=3), DitaccelError, "population"),
        (dict(init=other), DitaccelError, "family"),
        (dict(out=out), DitaccelError, "already holds a search"),
        (dict(out=out, resume=True, seed=99), DitaccelError, "another search"),
        (dict(metric="adherence"), DitaccelError, "shapes world"),
    ]
    for over, exc, msg in cases:
        with _Calls(pipe) as calls, pytest.raises(exc, match=msg) as err:
            search(pipe, _cfg(**over))
        assert "\n" not in str(err.value)
        assert calls.n == 0, f"work started before refusing {over}"


def test_cli_frontier_and_search_refusals(full_run, tmp_path, capsys):
    out, _ = full_run
    assert main(["frontier", str(out)]) == 0
    assert main(["frontier", str(out), "--select", "2x", "--out", str(tmp_path / "sel.json")]) == 0
    assert (tmp_path / "sel.json").is_file()
    assert main(["search", "--metric", "hpsv2", "--out", str(tmp_path / "x")]) == 2
    assert main(["search", "--population", "2", "--out", str(tmp_path / "x")]) == 2
    assert main(["search", "--tiebreak", "clip", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "hpsv2" in err.lower() and "population" in err and "tie-break" in err
    assert not (tmp_path / "x").exists()


# -- the bundled model ----------------------------------------------------------------------------


def test_bundled_model_defaults_to_adherence_and_leaves_no_trace(bundled_pipe, tmp_path):
    from ditaccel.zoo import shapes

    t = bundled_pipe.transformer
    before = {n: sorted(m.__dict__) for n, m in t.named_modules()}
    fr = search(bundled_pipe, SearchConfig(prompts=shapes.calibration_prompts()[:3], population=4, generations=1,
                                           call_kwargs={"num_inference_steps": 4}, out=tmp_path / "b"))
    assert fr.metric == "adherence" and 0.0 <= fr.baseline["quality"] <= 1.0
    assert all(0.0 <= p.quality <= 1.0 and p.speedup > 1.0 for p in fr.points)
    assert "encode_prompt" not in bundled_pipe.__dict__
    assert {n: sorted(m.__dict__) for n, m in t.named_modules()} == before
    ckpt = json.loads((tmp_path / "b" / "checkpoint").read_text())
    assert ckpt["fingerprint"]["population"] == 4 and ckpt["fingerprint"]["metric"] == "adherence"


def test_cli_search_end_to_end_on_bundled(tmp_path, capsys):
    from ditaccel.zoo import shapes

    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(shapes.calibration_prompts()[:2]) + "\n")
    out = tmp_path / "run"
    argv = ["search", "--prompts", str(prompts), "--steps", "3", "--population", "4", "--generations", "1",
            "--out", str(out)]
    assert main(argv) == 0
    assert (out / "frontier.json").is_file() and (out / "frontier.png").is_file()
    assert main(argv) == 2  # the folder now holds a search
    assert "already holds a search" in capsys.readouterr().err
    assert main([*argv[:-4], "--generations", "2", "--out", str(out), "--resume"]) == 0
    assert json.loads((out / "checkpoint").read_text())["generations_done"] == 2


def test_latency_cost_is_measured(pipe, tmp_path):
    fr = search(pipe, _cfg(tmp_path / "lat", cost="latency", population=4, generations=1))
    rows = [json.loads(x) for x in (tmp_path / "lat" / "candidates.jsonl").read_text().splitlines()]
    assert all(r["latency_s"] > 0 and r["objectives"][1] == r["latency_s"] for r in rows)
    assert fr.points


def test_tiebreak_fills_the_equal_quality_end_and_never_outweighs_quality(bundled_pipe, tmp_path):
    from ditaccel.search.engine import resolve_tiebreak, tiebreak_unit, tiebreak_weight
    from ditaccel.zoo import shapes

    prompts = shapes.calibration_prompts()[:3]
    fr = search(bundled_pipe, SearchConfig(prompts=prompts, population=6, generations=2,
                                           call_kwargs={"num_inference_steps": 4}, out=tmp_path / "t"))
    assert fr.metric == "adherence" and fr.info["tiebreak"] == "psnr"  # auto: psnr under adherence
    rows = [json.loads(x) for x in (tmp_path / "t" / "candidates.jsonl").read_text().splitlines()]
    w = tiebreak_weight(len(prompts))
    assert w < 1 / len(prompts)  # less than one image's worth of adherence
    for r in rows:
        expect = 1 - r["quality"] + w * (1 - tiebreak_unit("psnr", r["tiebreak"]))
        assert r["objectives"][0] == pytest.approx(expect)
    # every (cost, adherence) frontier point is still on the tie-broken frontier ...
    feasible = [r for r in rows if r["feasible"]]
    plain = {(feasible[i]["macs"], feasible[i]["quality"])
             for i in non_dominated([(r["macs"], r["quality"]) for r in feasible])}
    assert plain <= {(p.macs, p.quality) for p in fr.points}
    # ... and among equal adherence, a faster point has lower fidelity to the uncached images
    for p in fr.points:
        assert "psnr" in p.details
        for q in fr.points:
            if q.quality == p.quality and q.speedup > p.speedup:
                assert q.details["psnr"] < p.details["psnr"]
    assert resolve_tiebreak("none", "adherence") is None and resolve_tiebreak("auto", "psnr") is None
    with pytest.raises(DitaccelError, match="not supported"):
        resolve_tiebreak("clip", "adherence")
    with pytest.raises(DitaccelError, match="equals the main metric"):
        resolve_tiebreak("psnr", "psnr")


# -- structured strategy (issue 10): dynamic-like presets, step/block operators, no duplicates ----


def test_early_skip_presets_skip_early_steps_and_never_the_last(pipe):
    s = presets.early_skip(pipe, 2, 0, steps=STEPS)
    computed = s.bits.all(axis=(1, 2))
    assert computed.tolist() == [True, False, False, True, True, True]
    s = presets.early_skip(pipe, 1, 2, steps=STEPS)
    assert s.bits.all(axis=(1, 2)).tolist() == [True, False, True, False, True, True]
    assert not s.bits[1].any() and s.bits[-1].all()
    b0 = presets.early_skip(pipe, 2, 0, steps=STEPS, first_block=True)
    assert b0.bits[1:3, 0].all() and not b0.bits[1:3, 1:].any()
    last = presets.early_skip(pipe, 2, 0, steps=STEPS, first_block="last")
    assert not last.bits[1].any() and last.bits[2, 0].all() and not last.bits[2, 1:].any() and last.bits[3:].all()
    assert last.meta["preset"] == "early_skip(2,0,b0last)"
    with pytest.raises(DitaccelError, match="first_block False, True or 'last'"):
        presets.early_skip(pipe, 2, 0, steps=STEPS, first_block="first")
    with pytest.raises(DitaccelError, match="with k >= 1"):
        presets.early_skip(pipe, 0, 2, steps=STEPS, first_block="last")
    for truthy in (1, np.True_):
        assert np.array_equal(presets.early_skip(pipe, 2, 0, steps=STEPS, first_block=truthy).bits, b0.bits)
    with pytest.raises(DitaccelError, match="skipped steps"):
        presets.skip_steps(pipe, [0, 2], steps=STEPS)
    with pytest.raises(DitaccelError, match="early_skip needs"):
        presets.early_skip(pipe, 2, 1, steps=STEPS)
    ladder = presets.dynamic_like_presets(pipe, steps=20)
    keys = {s.bits.tobytes() for _, s in ladder}
    assert len(keys) == len(ladder) >= 10
    reused = [(~s.bits).sum() for _, s in ladder]
    assert min(reused) > 0 and all(s.bits[-1].all() and s.bits[0].all() for _, s in ladder)
    v3 = [name for name, _ in presets.dynamic_like_presets(pipe, steps=20, last_block0=True)]
    assert v3[:4] == ["early_skip(1,0)", "early_skip(1,2)", "early_skip(2,0,b0last)", "early_skip(2,0)"]
    assert [n for n in v3 if "b0last" not in n] == [name for name, _ in ladder]  # version 2's ladder, in order


def test_structured_population_starts_with_none_then_dynamic_like(pipe):
    from ditaccel.search.genome import structured_population

    named = structured_population(pipe, STEPS)
    assert named[0][0] == "none" and named[1][0].startswith("early_skip(") and named[2][0] == "fora(2)"
    paper = {pack(b) for _, b in preset_population(pipe, STEPS)}
    assert paper <= {pack(b) for _, b in named}


def test_stratify_keeps_the_first_of_every_speed_band_in_a_small_population():
    from ditaccel.search.genome import SPEED_BANDS, stratify

    speeds = [1.0, 1.1, 1.3, 1.3, 1.5, 2.2, 2.2, 3.0, 4.5, 5.7, 5.7, 7.7]  # the named list's order
    named = [(f"g{i}", np.array([(i >> k) & 1 for k in range(4)], dtype=bool).reshape(4, 1, 1))
             for i in range(len(speeds))]
    speed = {pack(b): v for (_, b), v in zip(named, speeds, strict=True)}
    order = [n for n, _ in stratify(named, 6, lambda b: speed[pack(b)], keep=1)]
    assert order[0] == "g0"  # all-recompute stays first
    bands = {int(np.searchsorted(SPEED_BANDS, v, side="right")) for v in speeds[1:]}
    assert order[1:1 + len(bands)] == ["g1", "g2", "g5", "g7", "g8", "g9", "g11"]  # each band's first, in order
    assert sorted(order) == sorted(n for n, _ in named)  # nothing lost: the rest follow
    assert stratify(named, len(named), lambda b: speed[pack(b)]) is named  # it all fits: unchanged


def test_step_crossover_takes_whole_steps_from_a_parent(shape):
    from pymoo.core.population import Population

    from ditaccel.search.operators import StepCrossover

    n = int(np.prod(shape))
    problem, _ = build_algorithm(shape, 4, np.ones((4, n), dtype=bool), 1, seed=0, strategy="structured")
    rng = np.random.default_rng(0)
    a, b = rng.random(n) < 0.5, rng.random(n) < 0.5
    off = StepCrossover(shape, prob=1.0, bit_share=0.0).do(problem, Population.new(X=np.stack([a, b])),
                                                           parents=[[0, 1]] * 20, random_state=rng)
    A, B = a.reshape(shape[0], -1), b.reshape(shape[0], -1)
    mixed = 0
    for child in np.asarray(off.get("X")):
        rows = child.reshape(shape[0], -1)
        from_a = (rows == A).all(axis=1)
        assert (from_a | (rows == B).all(axis=1)).all(), "every step row comes whole from one parent"
        mixed += 0 < from_a.sum() < shape[0]
    assert mixed > 0


def test_structured_moves_act_on_whole_steps_and_blocks(shape):
    from ditaccel.search.operators import MOVES, StructuredMutation, apply_move

    rng = np.random.default_rng(0)
    g = np.ones(shape, dtype=bool)
    apply_move("step_set", g, rng)
    changed = np.flatnonzero(~g.all(axis=(1, 2)))
    assert len(changed) == 1 and changed[0] > 0 and not g[changed[0]].any()
    h = g.copy()
    for _ in range(20):
        apply_move("step_shift", h, rng)
        assert (~h).sum() == (~g).sum() and h[0].all()  # a shift moves, never adds or removes
    k = np.ones(shape, dtype=bool)
    apply_move("block_step", k, rng)
    s, b = np.argwhere(~k.all(axis=2))[0]
    assert (~k).sum() == shape[2] and not k[s, b].any()
    with pytest.raises(ValueError, match="unknown move"):
        apply_move("teleport", k, rng)
    n = int(np.prod(shape))
    problem, _ = build_algorithm(shape, 4, np.ones((4, n), dtype=bool), 1, seed=0, strategy="structured")
    X = np.ones((400, n), dtype=bool)
    out = StructuredMutation(shape)._do(problem, X, random_state=np.random.default_rng(1))
    diff = (out != X).sum(axis=1)
    assert (diff > 0).mean() > 0.8
    assert diff.max() >= shape[1] * shape[2] - 1, "some children move a whole step"
    assert set(MOVES) >= {"bitflip", "step_set"}


def test_non_dominated_drops_points_a_reader_cannot_tell_apart():
    items = [(1.0, 0.50), (1.002, 0.5000001), (2.0, 0.70), (2.004, 0.90), (3.0, 0.9000001)]
    assert non_dominated(items) == [0, 1, 2, 3, 4]
    assert non_dominated(items, min_gain=1e-3, min_cost_gain=0.005) == [0, 3]


def test_structured_search_frontier_has_no_duplicates_and_resumes(pipe, full_run, tmp_path):
    from ditaccel.search.engine import FRONTIER_COST_RESOLUTION, quality_resolution

    out, frontier = full_run
    assert json.loads((out / "checkpoint").read_text())["fingerprint"]["strategy"] == "structured"
    eps = quality_resolution("psnr", None, len(PROMPTS))
    pts = frontier.points
    for p, q in zip(pts, pts[1:], strict=False):
        assert q.speedup > p.speedup * (1 + FRONTIER_COST_RESOLUTION) - 1e-9
        assert p.quality > q.quality + eps
    # the paper's strategy: no strategy key, and its folder resumes as ecad without naming it
    old = tmp_path / "ecad"
    a = search(pipe, _cfg(old, generations=1, strategy="ecad"))
    assert "strategy" not in json.loads((old / "checkpoint").read_text())["fingerprint"]
    b = search(pipe, _cfg(old, generations=2, resume=True))
    assert len(b.info["history"]) == 2 and a.info["evaluations"] < b.info["evaluations"]
    with pytest.raises(DitaccelError, match="unknown search strategy"):
        search(pipe, _cfg(tmp_path / "bad", strategy="random"))


def test_resume_of_a_folder_written_before_the_candidate_dataclass(pipe, tmp_path):
    """tests/data/search_v0 was written by the engine of commit b9174c4 (candidates as dicts, no gap
    filling): 1 of 2 generations of ``_cfg``. Resumed now, it must finish as that engine did."""
    import shutil

    data = Path(__file__).parent / "data"
    out = tmp_path / "v0"
    shutil.copytree(data / "search_v0", out)
    expected = json.loads((data / "search_v0_expected.json").read_text())
    assert "fill" not in json.loads((out / "checkpoint").read_text())["fingerprint"]
    resumed = search(pipe, _cfg(out, generations=expected["generations"], resume=True))
    assert resumed.info["fill"] == 0.0
    assert [[p.speedup, p.quality, pack(p.schedule.bits)] for p in resumed.points] == expected["points"]
    assert [json.loads(x)["genome"] for x in (out / "candidates.jsonl").read_text().splitlines()] == \
           expected["genomes"]


def test_gap_fill_aims_inside_the_widest_gaps(shape):
    from ditaccel.search.operators import gap_fill

    def speed(bits):  # a stand-in price: 1 / share of computed bits
        return bits.size / max(1, int(bits.sum()))

    full = np.ones(shape, dtype=bool)
    half = full.copy()
    half[1::2] = False  # FORA(2)-like
    light = full.copy()
    light[1, 0, 0] = False
    points = [(speed(full), full), (speed(light), light), (speed(half), half)]
    known = {pack(b) for _, b in points}
    small = speed(light) / speed(full) + 1e-6  # the narrow gap counts as none
    assert speed(half) / speed(light) > 1.5 * small
    kids = gap_fill(points, 5, speed, known, np.random.default_rng(0), max_gap=small)
    assert 1 <= len(kids) <= 5
    assert len({pack(k) for k in kids}) == len(kids) and not {pack(k) for k in kids} & known
    lo, hi = speed(light), speed(half)
    assert all(lo < speed(k) < hi for k in kids)  # all in the wide gap, none in the narrow one
    assert all(k[0].all() for k in kids)  # step 0 stays computed
    xs = sorted([lo, *map(speed, kids), hi])
    assert max(b / a for a, b in zip(xs, xs[1:], strict=False)) < hi / lo  # the widest gap shrank
    assert gap_fill(points[:2], 5, speed, known, np.random.default_rng(0), max_gap=small) == []


def test_search_spends_its_fill_share_on_gap_fillers_and_the_paper_strategy_none(full_run, pipe, tmp_path):
    out, frontier = full_run
    assert frontier.info["fill"] == 0.25
    fills = [h.get("gap_fill", 0) for h in frontier.info["history"]]
    assert fills[0] == 0 and all(0 < f <= 2 for f in fills[1:])  # round(0.25 * 6) of each later generation
    names = [json.loads(x)["name"] for x in (out / "candidates.jsonl").read_text().splitlines()]
    assert names.count("gapfill") >= 1
    ecad = search(pipe, _cfg(tmp_path / "ecad", generations=2, strategy="ecad"))
    assert ecad.info["fill"] == 0.0 and not any("gap_fill" in h for h in ecad.info["history"])
    with pytest.raises(DitaccelError, match="fill must be"):
        search(pipe, _cfg(tmp_path / "bad", fill=1.5))
