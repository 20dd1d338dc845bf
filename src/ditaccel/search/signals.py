"""Change signals: how much each component's output (and the block stack's residual) moves from one
step to the next in an uncached run, and the static schedules they suggest.

Why: the dynamic caches (TeaCache, FirstBlockCache, MagCache) reuse where the model's outputs change
least, and on the bundled model they beat every learned point near 1.1x and 1.85x (bench/results/
peers.md). Static copies of their step choices measured as good as they are (64.0 dB vs TeaCache's
63.3 dB at the same 9 skipped steps), and the GA did not find such schedules in its budget. One
uncached call on a few calibration prompts measures the same signal they threshold at run time; the
schedules it suggests seed the population and the gap filler, and the GA refines them per component.

- ``component[s, b, c]``: mean |o_s - o_{s-1}| / mean |o_{s-1}| of component (b, c)'s output;
- ``stack[s]``: the same for the stack residual (last block's output minus block 0's input), or,
  where blocks return pairs (no ``Adapter.stack_residual``), the mean of the component signals.

``threshold_bits`` turns a signal into a schedule as the dynamic caches decide: walking the steps,
accumulate the change since the last computed step; reuse while it stays under ``tau``, else
compute and start again. Step-level (whole steps; the last step always computes, as in TeaCache),
tail-level (the same steps, block 0 still computed there: FirstBlockCache's skip, which a
``step_reuse="residual"`` schedule runs as block 0 plus the cached residual of the blocks after it)
or per component.

Late weighting (``late``): step-level thresholds (and tail ones, built from them) weigh step s's change by
``1 + late * (s / (steps - 1)) ** 2``. Why: the steps computed after a reused one correct part of its
error, and a late step has few left to correct it, so the same change costs more PSNR late than early.
On the bundled model (12 calibration prompts, ``LATE_WEIGHT``) the weighted threshold's schedule at 1.85x
predicted had 62.6 dB against 50.1 dB unweighted, 58.7 against 48.1 dB at 2.03x and 73.1 against 72.1 dB at
1.30x; at 1.1x they were equal. Its schedules have the shape of the GA's best at 1.7-1.86x in two runs before
it: early steps skipped densely, the last ones computed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ditaccel.caching.steps import StepTracker, timestep_reader
from ditaccel.models import get_adapter, get_transformer
from ditaccel.pipeline import generate_images, pipeline_call_kwargs

#: ``late`` of the structured search's seeds (a search started before the weighting keeps 0; engine).
LATE_WEIGHT = 10.0
#: Predicted speedups the seeds aim at, per level: whole-step skips (coarse, 1/steps apart) and the same
#: steps with block 0 kept (FirstBlockCache's skip). Per-component seeds ("component") measured 20-30 dB
#: worse than whole-step ones at equal predicted speed on the bundled model (58 dB at 1.16x against 87 dB
#: at 1.10x), so the search does not spend population slots on them; ``threshold_bits`` still makes them.
TARGETS = {"step": (1.1, 1.3, 1.45, 1.6, 1.8, 2.0, 2.25, 2.5, 2.8, 3.2, 4.0, 5.0), "tail": (1.1, 1.6, 2.2)}
#: The targets of searches begun before the late weighting (start version 1), which resume with them. Why
#: denser now: the late-weighted seeds were 1-12 dB better than the unweighted ones at 1.3-3.2x in the probe,
#: so more of the 24 slots go to them (presets faster than every seed keep a slot through ``genome.stratify``).
TARGETS_V1 = {"step": (1.1, 1.3, 1.6, 2.0, 2.5, 3.2, 4.0, 5.0), "tail": (1.1, 1.6, 2.2)}
#: Images in the probe call: enough to average out one prompt's quirks, one batch.
PROBE_IMAGES = 8


@dataclass
class ChangeSignals:
    component: np.ndarray  # [steps, blocks, components]; step 0 is 0
    stack: np.ndarray  # [steps]; step 0 is 0

    def to_dict(self) -> dict[str, Any]:
        return {"component": np.round(self.component, 8).tolist(), "stack": np.round(self.stack, 8).tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChangeSignals:
        return cls(np.asarray(d["component"], dtype=float), np.asarray(d["stack"], dtype=float))


def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


class _Recorder:
    """Torch forward hooks that keep, per call context, each output's previous-step value and the relative changes."""

    def __init__(self, pipe: Any, steps: int) -> None:
        self.a = get_adapter(pipe)
        self.t = get_transformer(pipe)
        self.tracker = StepTracker()
        self.read = timestep_reader(self.t)
        n = (steps, self.a.num_blocks, len(self.a.component_names))
        self.sums, self.counts = np.zeros(n), np.zeros(n)
        self.stack_sums, self.stack_counts = np.zeros(steps), np.zeros(steps)
        self.prev: dict[tuple[int, Any], torch.Tensor] = {}
        self.stack_in: torch.Tensor | None = None
        self.hooks: list[Any] = []

    def _change(self, key: Any, x: torch.Tensor) -> float | None:
        ctx_key = (self.tracker.context, key)
        prev = self.prev.get(ctx_key)
        self.prev[ctx_key] = x.detach().float()
        if prev is None or prev.shape != x.shape:
            return None
        return float((x.float() - prev).abs().mean() / prev.abs().mean().clamp_min(1e-12))

    def _on_component(self, b: int, c: int, out: Any) -> None:
        x = _first_tensor(out)
        d = None if x is None else self._change((b, c), x)
        if d is not None and 0 <= self.tracker.step < self.sums.shape[0]:
            self.sums[self.tracker.step, b, c] += d
            self.counts[self.tracker.step, b, c] += 1

    def _on_stack_out(self, out: Any) -> None:
        x = _first_tensor(out)
        if x is None or self.stack_in is None or x.shape != self.stack_in.shape:
            return
        d = self._change("stack", x - self.stack_in)
        if d is not None and 0 <= self.tracker.step < self.stack_sums.shape[0]:
            self.stack_sums[self.tracker.step] += d
            self.stack_counts[self.tracker.step] += 1

    def __enter__(self) -> _Recorder:
        def on_call(_m: Any, args: tuple, kwargs: dict) -> None:
            t = self.read(args, kwargs)
            if t is not None:
                self.tracker.advance(t)

        self.hooks.append(self.t.register_forward_pre_hook(on_call, with_kwargs=True))
        for b, c, _ in self.a.component_paths():
            self.hooks.append(self.a.component_module(b, c).register_forward_hook(
                lambda _m, _i, out, b=b, c=c: self._on_component(b, c, out)))
        if self.a.stack_residual:
            first, last = self.a.blocks[0].module, self.a.blocks[-1].module

            def on_stack_in(_m: Any, args: tuple, kwargs: dict) -> None:
                self.stack_in = _first_tensor(args[0] if args else kwargs.get("hidden_states"))

            self.hooks.append(first.register_forward_pre_hook(on_stack_in, with_kwargs=True))
            self.hooks.append(last.register_forward_hook(lambda _m, _i, out: self._on_stack_out(out)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.hooks:
            h.remove()
        self.prev.clear()

    def signals(self) -> ChangeSignals:
        comp = np.divide(self.sums, self.counts, out=np.zeros_like(self.sums), where=self.counts > 0)
        if self.a.stack_residual and self.stack_counts[1:].all():
            stack = np.divide(self.stack_sums, self.stack_counts, out=np.zeros_like(self.stack_sums),
                              where=self.stack_counts > 0)
        else:
            stack = comp.reshape(comp.shape[0], -1).mean(axis=1)
        return ChangeSignals(comp, stack)


def measure_signals(pipe: Any, prompts: Sequence[str], seeds: Sequence[int], steps: int,
                    call_kwargs: dict[str, Any] | None = None) -> ChangeSignals:
    """One uncached pipeline call on the first ``PROBE_IMAGES`` (prompt, seed) pairs, recorded."""
    kw = pipeline_call_kwargs(pipe, **(call_kwargs or {}))
    n = min(PROBE_IMAGES, len(prompts))
    with _Recorder(pipe, steps) as rec:
        generate_images(pipe, list(prompts[:n]), list(seeds[:n]), batch_size=n, **kw)
    return rec.signals()


def weighted_stack(signals: ChangeSignals, late: float = 0.0) -> np.ndarray:
    """[steps] the stack signal with step s weighed by ``1 + late * (s / (steps - 1)) ** 2`` (module docstring)."""
    steps = signals.stack.shape[0]
    pos = np.arange(steps) / max(steps - 1, 1)
    return signals.stack * (1.0 + late * pos ** 2)


def threshold_bits(signals: ChangeSignals, tau: float, level: str, late: float = 0.0) -> np.ndarray:
    """Recompute bits [steps, blocks, components] by the accumulate-and-threshold rule (module docstring).

    ``level``: ``"step"`` (whole steps, by ``stack``), ``"tail"`` (those steps but block 0) or
    ``"component"`` (each (block, component) alone). ``late``: late weighting of the step signal.
    """
    comp = signals.component
    steps = comp.shape[0]
    if level == "tail":
        bits = threshold_bits(signals, tau, "step", late)
        bits[:, 0] = True
        return bits
    if level == "step":
        stack = weighted_stack(signals, late)
        bits = np.ones(comp.shape, dtype=bool)
        acc = 0.0
        for s in range(1, steps - 1):
            acc += float(stack[s])
            if acc < tau:
                bits[s] = False
            else:
                acc = 0.0
        return bits
    bits = np.ones(comp.shape, dtype=bool)
    acc = np.zeros(comp.shape[1:])
    for s in range(1, steps):
        acc += comp[s]
        reuse = acc < tau
        bits[s] = ~reuse
        acc[~reuse] = 0.0
    return bits


def ladder(signals: ChangeSignals, level: str, points: int = 64, late: float = 0.0) -> list[np.ndarray]:
    """Distinct schedules over a geometric grid of thresholds, from nearly everything computed to nearly nothing."""
    values = signals.component[1:].reshape(-1) if level == "component" else weighted_stack(signals, late)[1:]
    pos = values[values > 0]
    if pos.size == 0:
        return []
    lo, hi = float(pos.min()) / 2, float(values.sum())
    out, seen = [], set()
    for tau in np.geomspace(lo, max(hi, lo * 2), points):
        bits = threshold_bits(signals, float(tau), level, late)
        key = np.packbits(bits).tobytes()
        if key not in seen:
            seen.add(key)
            out.append(bits)
    return out


def ladders(signals: ChangeSignals, late: float = 0.0) -> dict[str, list[np.ndarray]]:
    """The ``ladder`` of every level the search seeds from (``TARGETS``)."""
    return {level: ladder(signals, level, late=late) for level in TARGETS}


def signal_seeds(rungs_by_level: dict[str, list[np.ndarray]], speedup_of: Callable[[np.ndarray], float],
                 targets_by_level: dict[str, tuple[float, ...]] = TARGETS) -> list[tuple[str, np.ndarray]]:
    """Named seeds: for each target speedup, the ladder schedule (``ladders``) whose predicted speedup is
    nearest (log scale)."""
    out: list[tuple[str, np.ndarray]] = []
    seen: set[bytes] = set()
    for level, targets in targets_by_level.items():
        rungs = [(math.log(speedup_of(b)), b) for b in rungs_by_level.get(level, [])]
        for target in targets:
            if not rungs:
                break
            goal = math.log(target)
            sp, bits = min(rungs, key=lambda r, goal=goal: abs(r[0] - goal))
            key = np.packbits(bits).tobytes()
            if key not in seen and not bits[1:].all():  # all-recompute is the population's first genome already
                seen.add(key)
                out.append((f"signal:{level}:{math.exp(sp):.2f}x", bits))
    return out
