"""Cache schedules under torch.compile: no recompiles after warm-up, bounded graph breaks, same output.

The tests compile with ``backend="aot_eager"`` (dynamo + AOTAutograd, no inductor codegen): it
exercises the same graph capture, guards and recompiles as inductor in a fraction of a second,
where inductor's C++ compile takes tens of seconds per graph on a CPU. Because aot_eager runs the
captured ATen ops as eager does, outputs are compared bitwise (tolerance 0). Inductor itself,
whose fused kernels reorder float math, is measured (speed and max difference) in
bench/bench_compile.py.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

import ditaccel.caching.compile as compile_mod
from ditaccel.caching import CacheSchedule, apply_schedule, compile_components, presets
from ditaccel.caching.compile import count_recompiles
from ditaccel.testing import replicas

AOT = {"backend": "aot_eager"}
TIMESTEPS = (900.0, 700.0, 500.0, 300.0)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    compile_mod._WARM.clear()
    counters.clear()
    yield
    torch._dynamo.reset()
    compile_mod._WARM.clear()


@pytest.fixture()
def setup():
    t = replicas.build_transformer("pixart-alpha")
    return t, replicas.transformer_inputs("pixart-alpha", t)


def _generate(model, inputs) -> list[torch.Tensor]:
    """One 4-step generation's transformer calls (decreasing timesteps, as a sampler makes them)."""
    outs = []
    with torch.no_grad():
        for ts in TIMESTEPS:
            outs.append(model(**{**inputs, "timestep": torch.tensor([ts, ts])}).sample)
    return outs


def _mixed(t) -> CacheSchedule:
    """An ECAD-like schedule: bits differ per step, block and component (seeded)."""
    rng = np.random.default_rng(3)
    bits = rng.random(presets.none(t, steps=4).bits.shape) < 0.5
    bits[0] = True
    return CacheSchedule(bits=bits, components=presets.none(t, steps=4).components, family="pixart")


def _eager(t, inputs, sched) -> tuple[list[torch.Tensor], np.ndarray]:
    with apply_schedule(t, sched) as h:
        return _generate(t, inputs), h.counts


def _graph_breaks() -> int:
    return sum(counters["graph_break"].values())


def _hook_break(reason: str) -> bool:
    """Whether a graph break is one of the step hook's (deciding, storing, or leaving the graph)."""
    return any(f in reason for f in ("_begin_user_compiled_call", "_end_whole_call", "_escape_user_compile"))


def _assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


def _record_whole_or_escape(monkeypatch) -> list[str]:
    """A list that gets "whole" for each call the user's compile ran as its whole graph and "escape" for each
    call that left it (the step hook's two exits, wrapped)."""
    from ditaccel.caching import runtime

    calls: list[str] = []
    real_end, real_escape = runtime._end_whole_call, runtime._escape_user_compile
    monkeypatch.setattr(runtime, "_end_whole_call",
                        torch.compiler.disable(lambda rt: calls.append("whole") or real_end(rt)))
    monkeypatch.setattr(runtime, "_escape_user_compile",
                        torch.compiler.disable(lambda *a: calls.append("escape") or real_escape(*a)))
    return calls


@pytest.mark.parametrize("order", ["compile-then-apply", "apply-then-compile"])
def test_user_compile_no_recompiles_when_schedule_changes(setup, order):
    t, inputs = setup
    schedules = [presets.fora(t, 2, steps=4), presets.fora(t, 3, steps=4), _mixed(t)]
    expected = [_eager(t, inputs, s) for s in schedules]
    if order == "compile-then-apply":
        compiled = torch.compile(t, backend="aot_eager")
        _generate(compiled, inputs)  # the user's compiled model ran before any schedule
        h = apply_schedule(t, schedules[0], compile=AOT, lean=False)
    else:
        h = apply_schedule(t, schedules[0], compile=AOT, lean=False)
        compiled = torch.compile(t, backend="aot_eager")
    _assert_same(_generate(compiled, inputs), expected[0][0])  # warm-up
    graphs, breaks = counters["stats"]["unique_graphs"], _graph_breaks()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for i in (1, 2, 0, 2):  # a new schedule before every generation
            h.set_schedule(schedules[i])
            h.reset_counts()
            _assert_same(_generate(compiled, inputs), expected[i][0])
            assert np.array_equal(h.counts, expected[i][1])
    assert counters["stats"]["unique_graphs"] == graphs
    assert _graph_breaks() == breaks
    # the only graph breaks are the step hook's, at the transformer's entry and exit: none inside a block
    reasons = [r for r in counters["graph_break"] if counters["graph_break"][r]]
    assert reasons and all(_hook_break(r) for r in reasons)
    h.remove()
    assert "forward" not in t.transformer_blocks[0].attn1.__dict__  # the compile went with the handle


def test_compile_components_fullgraph_no_breaks_no_recompiles(setup):
    t, inputs = setup
    schedules = [presets.fora(t, 2, steps=4), _mixed(t), presets.fora(t, 3, steps=4)]
    expected = [_eager(t, inputs, s) for s in schedules]
    base = _generate(t, inputs)
    cc = compile_components(t, backend="aot_eager", fullgraph=True)  # a break would raise
    _assert_same(_generate(t, inputs), base)  # warm-up without a schedule: the components' graphs
    assert counters["stats"]["unique_graphs"] == 3  # attn1, attn2 and ff graphs, shared by all blocks
    with apply_schedule(t, schedules[0]) as h:
        _assert_same(_generate(t, inputs), expected[0][0])  # warm-up with a schedule: the block variants
        assert h._rt.variants is not None and h._rt.variants.options == cc.options  # what --compile gets
    graphs = counters["stats"]["unique_graphs"]
    assert graphs == 3 + 2 * 8  # plus one block graph per cache pattern and input layout
    with torch._dynamo.config.patch(error_on_recompile=True):
        for i in (1, 2, 0):  # a new handle per schedule, as the search applies them
            with apply_schedule(t, schedules[i]) as h:
                _assert_same(_generate(t, inputs), expected[i][0])
                assert np.array_equal(h.counts, expected[i][1])
        _assert_same(_generate(t, inputs), base)  # compiled, no schedule
    assert counters["stats"]["unique_graphs"] == graphs
    assert _graph_breaks() == 0
    cc.remove()
    with apply_schedule(t, schedules[1]) as h:  # compile removed: the schedule runs eager again
        _assert_same(_generate(t, inputs), expected[1][0])
        assert h._rt.variants is None
    for b, blk in enumerate(t.transformer_blocks):
        for name in ("attn1", "attn2", "ff"):
            assert "forward" not in getattr(blk, name).__dict__, (b, name)
    assert not hasattr(t, "_diffusers_hook")
    _assert_same(_generate(t, inputs), base)


def test_compile_after_apply_survives_schedule_removal(setup):
    t, inputs = setup
    base = _generate(t, inputs)
    fora = presets.fora(t, 2, steps=4)
    expected, _ = _eager(t, inputs, fora)
    h = apply_schedule(t, fora)
    cc = compile_components(t, **AOT)  # installed beneath the cache hooks
    assert compile_components(t, **AOT).active is False  # already compiled: nothing to do
    assert h._rt.variants is None  # picked up at the next transformer call
    _assert_same(_generate(t, inputs), expected)
    assert h._rt.variants is not None and h._rt.variants.options == AOT  # the block variants ran
    h.remove()
    attn = t.transformer_blocks[0].attn1
    assert compile_mod.is_compiled_forward(attn.forward)
    _assert_same(_generate(t, inputs), base)
    cc.remove()
    assert "forward" not in attn.__dict__
    assert not hasattr(attn, "_diffusers_hook")


def test_deepcopy_of_compiled_transformer_runs_its_own_weights(setup):
    t, inputs = setup
    cc = compile_components(t, **AOT)
    twin = copy.deepcopy(t)
    with torch.no_grad():
        for p in twin.transformer_blocks[0].ff.parameters():
            p.mul_(2.0)
    assert twin.transformer_blocks[0].ff.forward.args[0] is twin.transformer_blocks[0].ff
    a, b = _generate(t, inputs), _generate(twin, inputs)
    assert not torch.equal(a[0], b[0])
    cc.remove()
    _assert_same(_generate(t, inputs), a)


def test_prefix_sharing_under_compile(setup):
    """snapshot / restore / set_schedule (the search's prefix sharing) with compiled components."""
    t, inputs = setup
    a, b = presets.fora(t, 2, steps=4), _mixed(t)
    b.bits[:2] = a.bits[:2]  # same first two steps
    want_a, want_b = _eager(t, inputs, a)[0], _eager(t, inputs, b)[0]
    with compile_components(t, **AOT), apply_schedule(t, a, lean=False) as h, torch.no_grad():
        first = [t(**{**inputs, "timestep": torch.tensor([ts, ts])}).sample for ts in TIMESTEPS[:2]]
        state = h.snapshot()
        for sched, want in ((a, want_a), (b, want_b)):
            h.restore(state)
            h.set_schedule(sched)
            rest = [t(**{**inputs, "timestep": torch.tensor([ts, ts])}).sample for ts in TIMESTEPS[2:]]
            _assert_same(first + rest, want)


def test_user_compile_default_compiles_the_components(setup, monkeypatch):
    """apply_schedule's default (compile=None) compiles the components when the user's compile traces."""
    t, inputs = setup
    made = []

    def fake(fn, options):
        made.append(options)
        return compile_mod._COMPILED.setdefault((fn, "test"), torch.compile(fn, backend="aot_eager"))

    monkeypatch.setattr(compile_mod, "compiled_function", fake)
    fora = presets.fora(t, 2, steps=4)
    expected, _ = _eager(t, inputs, fora)
    assert not made  # eager use compiles nothing
    with apply_schedule(t, fora):
        _assert_same(_generate(torch.compile(t, backend="aot_eager"), inputs), expected)
        assert made and made[0] == {}  # torch.compile's defaults (inductor) outside this test
        assert compile_mod.is_compiled_forward(compile_mod.Slot(t.transformer_blocks[0].ff).get())
    assert "forward" not in t.transformer_blocks[0].ff.__dict__


def test_cli_generate_compile_matches_eager(tmp_path, monkeypatch):
    """``generate --compile --schedule`` writes the same images as without --compile (aot_eager here)."""
    from PIL import Image

    from ditaccel.cli import main

    real = compile_mod.compiled_function
    monkeypatch.setattr(compile_mod, "compiled_function", lambda fn, options: real(fn, {**options, **AOT}))
    sched = tmp_path / "s.json"
    from ditaccel.pipeline import load_pipeline

    presets.fora(load_pipeline(), 2, steps=4).save(sched)
    common = ["generate", "--prompt", "a red circle", "--seeds", "0,1", "--steps", "4", "--schedule", str(sched)]
    assert main([*common, "--out", str(tmp_path / "eager")]) == 0
    assert main([*common, "--compile", "--out", str(tmp_path / "compiled")]) == 0
    assert counters["stats"]["unique_graphs"] >= 3
    for name in ("00000.png", "00001.png"):
        a = np.asarray(Image.open(tmp_path / "eager" / name))
        b = np.asarray(Image.open(tmp_path / "compiled" / name))
        assert np.array_equal(a, b)


def test_compiled_blocks_no_recompiles(setup):
    """Blocks compiled one by one (what diffusers' ``compile_repeated_blocks`` does): the decisions leave
    the block graph (one break per component), and schedule changes do not recompile."""
    t, inputs = setup
    schedules = [presets.fora(t, 2, steps=4), _mixed(t)]
    expected = [_eager(t, inputs, s) for s in schedules]
    h = apply_schedule(t, schedules[0], compile=AOT, lean=False)
    for block in t.transformer_blocks:
        block.compile(backend="aot_eager")
    _assert_same(_generate(t, inputs), expected[0][0])  # warm-up
    graphs = counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(error_on_recompile=True):
        for i in (1, 0):
            h.set_schedule(schedules[i])
            _assert_same(_generate(t, inputs), expected[i][0])
    assert counters["stats"]["unique_graphs"] == graphs
    reasons = [r for r in counters["graph_break"] if counters["graph_break"][r]]
    assert reasons and all("_decide_outside_graph" in r for r in reasons)
    h.remove()


def test_block_variants_compile_the_glue_without_breaks_or_recompiles(setup):
    """A handle that compiles (apply_schedule(compile=...)) runs each PixArt block as one compiled graph per
    cache pattern (norms, modulation, gates and residuals included): all patterns made at warm-up, none after,
    whatever patterns later schedules use; outputs and counts bitwise those of eager."""
    t, inputs = setup
    whole = presets.none(t, steps=4)
    whole.bits[1:, ::2] = False
    schedules = [presets.fora(t, 2, steps=4), _mixed(t), presets.fora(t, 3, steps=4), whole]
    expected = [_eager(t, inputs, s) for s in schedules]
    made = []
    real = compile_mod.BlockVariants.run
    with apply_schedule(t, schedules[0], compile={**AOT, "fullgraph": True}, lean=False) as h:  # a break would raise
        assert h._rt.variants is not None
        compile_mod.BlockVariants.run = lambda self, *a: made.append(1) or real(self, *a)
        try:
            _assert_same(_generate(t, inputs), expected[0][0])  # warm-up: only two patterns used
        finally:
            compile_mod.BlockVariants.run = real
        assert made  # the variants ran
        graphs = counters["stats"]["unique_graphs"]
        # one whole-block graph per cache pattern, shared by every block, for each of the two input
        # layouts (the first block gets the patch embedding's transposed view, the others contiguous tensors)
        assert graphs == 2 * 8
        with torch._dynamo.config.patch(error_on_recompile=True):
            for i in (1, 3, 2, 0):
                h.set_schedule(schedules[i])
                h.reset_counts()
                _assert_same(_generate(t, inputs), expected[i][0])
                assert np.array_equal(h.counts, expected[i][1])
        assert counters["stats"]["unique_graphs"] == graphs
        assert _graph_breaks() == 0
    assert h._rt.variants is None
    assert all("forward" not in blk.__dict__ for blk in t.transformer_blocks)


@pytest.mark.parametrize("first", ["fora(2)", "none"])
def test_user_compile_runs_full_steps_as_its_whole_graph(setup, monkeypatch, first):
    """Under the user's torch.compile(transformer), a call where every component computes stays in the user's
    whole graph (its component outputs come back from that graph and are cached); only calls that skip
    components leave it. Same outputs and counts as eager, bitwise (aot_eager). Both branches exist after a
    generation with full and partial steps; a schedule with full steps only (``none``) makes the partial
    branch on the first partial call after it, once (documented in ``_begin_user_compiled_call``)."""
    from ditaccel.caching import runtime

    t, inputs = setup
    fora = presets.fora(t, 2, steps=4)
    expected, counts = _eager(t, inputs, fora)
    plain = _generate(t, inputs)
    calls = _record_whole_or_escape(monkeypatch)
    compiled = torch.compile(t, backend="aot_eager")
    with apply_schedule(t, presets.none(t, steps=4) if first == "none" else fora, compile=AOT, lean=False) as h:
        out = _generate(compiled, inputs)
        _assert_same(out, plain if first == "none" else expected)
        assert calls == (["whole"] * 4 if first == "none" else ["whole", "escape", "whole", "escape"])
        h.set_schedule(fora)
        h.reset_counts()
        calls.clear()
        with count_recompiles() as recompiles:
            _assert_same(_generate(compiled, inputs), expected)
        # after `none`, the first partial call makes the escape's entry of the hook's resumed frame (and the
        # block variants warm up); after fora(2), both existed already
        resumed = sum(n for code, n in recompiles.items() if code.startswith("torch_dynamo_resume_in_new_forward"))
        assert resumed == (1 if first == "none" else 0)
        assert (not recompiles) == (first != "none")
        if first == "none":  # from then on nothing recompiles
            calls.clear()
            with torch._dynamo.config.patch(error_on_recompile=True):
                _assert_same(_generate(compiled, inputs), expected)
        assert calls == ["whole", "escape", "whole", "escape"]
        assert np.array_equal(h.counts, counts * (2 if first == "none" else 1))
        assert not runtime._WHOLE_OUTS and not h._rt.whole.saved  # the hooks are back after each whole call
        assert t.transformer_blocks[0].ff.forward.func.__name__ != "capture"
    _assert_same(_generate(compiled, inputs), plain)  # the handle removed: the user's graph as before
    mixed = _mixed(t)
    want, want_counts = _eager(t, inputs, mixed)
    with torch._dynamo.config.patch(error_on_recompile=True):  # a new handle (as the search makes) reuses it all
        with apply_schedule(t, mixed, compile=AOT) as h:
            _assert_same(_generate(compiled, inputs), want)
            assert np.array_equal(h.counts, want_counts)


def test_user_compile_whole_call_that_raises_leaves_the_hooks_working(setup):
    """A call traced whole that fails inside the model (bad input) leaves the components in their capture state
    only until the next call or ``remove()``: the next call runs the schedule exactly as eager does."""
    t, inputs = setup
    fora = presets.fora(t, 2, steps=4)
    expected, counts = _eager(t, inputs, fora)
    compiled = torch.compile(t, backend="aot_eager")
    bad = {**inputs, "encoder_hidden_states": inputs["encoder_hidden_states"][..., :-1], "timestep": torch.tensor([9.0, 9.0])}
    with apply_schedule(t, fora, compile=AOT) as h:
        with pytest.raises(Exception), torch.no_grad():  # noqa: B017 (whatever dynamo wraps the shape error in)
            compiled(**bad)
        assert h._rt.whole.saved  # entered, not yet restored
        h.reset_counts()
        _assert_same(_generate(compiled, inputs), expected)
        assert np.array_equal(h.counts, counts)
        with pytest.raises(Exception), torch.no_grad():  # noqa: B017
            compiled(**bad)
    assert all("forward" not in getattr(blk, n).__dict__ for blk in t.transformer_blocks for n in ("attn1", "ff"))
    assert not hasattr(t.transformer_blocks[0].ff, "_diffusers_hook")


@pytest.mark.parametrize("family", ["flux", "sana"])
def test_user_compile_whole_steps_other_families(family):
    """The whole-graph path is not PixArt-specific: on other replicas, under the user's compile, a schedule gives
    eager's outputs and counts bitwise (aot_eager), and a second handle recompiles nothing."""
    t = replicas.build_transformer(family)
    inputs = replicas.transformer_inputs(family, t)

    def generate(model) -> list[torch.Tensor]:
        with torch.no_grad():
            return [model(**{**inputs, "timestep": torch.full_like(inputs["timestep"], ts)}, return_dict=False)[0]
                    for ts in TIMESTEPS]

    fora = presets.fora(t, 2, steps=4)
    with apply_schedule(t, fora) as h:
        expected, counts = generate(t), h.counts
    compiled = torch.compile(t, backend="aot_eager")
    with apply_schedule(t, fora, compile=AOT) as h:
        _assert_same(generate(compiled), expected)  # warm-up: step 0 whole, step 1 leaves the graph
        assert h._rt.whole.eligible(t._diffusers_hook.get_hook("ditaccel_cache_step"))
    with torch._dynamo.config.patch(error_on_recompile=True), apply_schedule(t, fora, compile=AOT) as h:
        _assert_same(generate(compiled), expected)
        assert np.array_equal(h.counts, counts)


@pytest.mark.parametrize("lean", [False, True])
def test_user_compile_with_residual_step_reuse_matches_eager(setup, monkeypatch, lean):
    """Under residual step reuse, steps that compute everything also stay in the user's whole graph, which
    returns the first and last blocks' inputs and outputs for the stack residuals; skip steps leave it. Same
    outputs as eager, bitwise; switching schedules then recompiles nothing. A lean handle hooks no component
    for these schedules (they read no component cache), and its skip steps still leave the graph."""
    calls = _record_whole_or_escape(monkeypatch)
    t, inputs = setup
    fora = presets.fora(t, 2, steps=4)
    bits = fora.bits.copy()
    bits[3, 0] = True  # step 3 runs block 0 only: a tail skip; step 1 a whole skip
    scheds = [CacheSchedule(b, fora.components, "pixart", step_reuse="residual") for b in (fora.bits, bits)]
    expected = [_eager(t, inputs, s)[0] for s in scheds]
    assert not all(torch.equal(a, b) for a, b in zip(expected[0], _eager(t, inputs, fora)[0], strict=True))
    compiled = torch.compile(t, backend="aot_eager")
    with apply_schedule(t, scheds[0], compile=AOT, lean=lean) as h:
        assert bool(h._rt.hooked) != lean
        _assert_same(_generate(compiled, inputs), expected[0])
        assert calls == ["whole", "escape", "whole", "escape"]  # fora(2): steps 0 and 2 compute everything
        with torch._dynamo.config.patch(error_on_recompile=True):
            for i in (1, 0):
                h.set_schedule(scheds[i])
                _assert_same(_generate(compiled, inputs), expected[i])
    assert not any("forward" in b.__dict__ for b in t.transformer_blocks)
    _assert_same(_generate(compiled, inputs), _generate(t, inputs))  # removed: the user's graph as before
