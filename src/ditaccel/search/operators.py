"""Structured variation for the search: moves that act on whole steps and whole blocks.

Why: the paper's operators (4-point crossover, ~1 random bit flip per child) move one
(step, block, component) bit at a time. The schedules that win at low speedups skip whole
*steps* (mostly early ones, as FirstBlockCache does; see ``presets.early_skip``), and reaching
one of those from a FORA preset needs a dozen coordinated flips that one-bit mutation almost
never makes. These operators make such moves in one go, on the same bit genome, so every
schedule they produce is an ordinary ECAD bit schedule:

- ``StepCrossover``: each step's row (all blocks and components) comes from one parent, so a
  parent's good decision for a step is inherited whole; with probability ``bit_share`` it falls
  back to the paper's 4-point crossover on the flat bits.
- ``StructuredMutation``: one move per child, drawn from: the paper's bit flip; set a whole step
  to compute or to reuse; shift a reused step to its neighbour; copy a step's row to another
  step; set one block's row at one step; set one component over a run of steps in a block.
- ``gap_fill``: children aimed inside the widest speed gaps of the current frontier, interpolated
  between the two points around each gap (the engine spends ``SearchConfig.fill`` of each
  generation on them).

Genomes are step-major flattened bits ``[steps, blocks, components]`` (``genome.pack``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from pymoo.core.crossover import Crossover
from pymoo.core.mutation import Mutation
from pymoo.operators.crossover.pntx import PointCrossover
from pymoo.operators.mutation.bitflip import BitflipMutation

#: move name -> its probability in ``StructuredMutation`` (the paper's bit flip keeps a share)
MOVES = {"bitflip": 0.3, "step_set": 0.25, "step_shift": 0.15, "step_copy": 0.1, "block_step": 0.1,
         "component_run": 0.1}


class StepCrossover(Crossover):
    """Two children from two parents; each step row is taken whole from one parent."""

    def __init__(self, shape: tuple[int, int, int], prob: float = 0.9, bit_share: float = 0.3) -> None:
        super().__init__(2, 2, prob=prob)
        self.shape = shape
        self.bit_share = bit_share
        self._points = PointCrossover(n_points=4)

    def _do(self, problem: Any, X: np.ndarray, random_state: Any = None, **kwargs: Any) -> np.ndarray:
        rng = random_state if random_state is not None else np.random.default_rng()
        _, n_matings, n_var = X.shape
        steps = self.shape[0]
        per_step = n_var // steps
        out = np.array(X, copy=True)
        flat = rng.random(n_matings) < self.bit_share
        if flat.any():
            out[:, flat] = self._points._do(problem, X[:, flat], random_state=rng, **kwargs)
        for m in np.flatnonzero(~flat):
            take = np.repeat(rng.random(steps) < 0.5, per_step)
            a, b = X[0, m], X[1, m]
            out[0, m] = np.where(take, a, b)
            out[1, m] = np.where(take, b, a)
        return out


class StructuredMutation(Mutation):
    """One structured move (or the paper's bit flip) per child; see the module docstring."""

    def __init__(self, shape: tuple[int, int, int], moves: dict[str, float] | None = None) -> None:
        super().__init__(prob=1.0)
        self.shape = shape
        moves = dict(MOVES if moves is None else moves)
        self.names = list(moves)
        p = np.array([moves[k] for k in self.names], dtype=float)
        self.p = p / p.sum()
        self._flip = BitflipMutation(prob=1.0, prob_var=1.0 / int(np.prod(shape)))

    def _do(self, problem: Any, X: np.ndarray, random_state: Any = None, **kwargs: Any) -> np.ndarray:
        rng = random_state if random_state is not None else np.random.default_rng()
        X = np.asarray(X, dtype=bool)
        out = np.array(X, copy=True)
        picks = rng.choice(len(self.names), size=len(X), p=self.p)
        flips = picks == self.names.index("bitflip") if "bitflip" in self.names else np.zeros(len(X), bool)
        if flips.any():
            out[flips] = self._flip._do(problem, X[flips], random_state=rng, **kwargs)
        for i in np.flatnonzero(~flips):
            g = out[i].reshape(self.shape)
            before = g.copy()
            apply_move(self.names[picks[i]], g, rng)
            if np.array_equal(g, before):  # e.g. a shift between equal rows: make a move that changes something
                apply_move("step_set", g, rng)
            out[i] = g.reshape(-1)
        return out


def apply_move(name: str, g: np.ndarray, rng: np.random.Generator) -> None:
    """Apply one structured move in place to a ``[steps, blocks, components]`` bit array (step 0 untouched)."""
    steps, blocks, comps = g.shape
    if steps < 2:
        return
    s = int(rng.integers(1, steps))
    if name == "step_set":  # a whole step to compute or to reuse: flip its majority
        g[s] = not g[s].mean() >= 0.5
    elif name == "step_shift":  # move one step's row to a neighbour (the neighbour's row moves back)
        t = s + (1 if rng.random() < 0.5 else -1)
        if 1 <= t < steps:
            g[[s, t]] = g[[t, s]]
    elif name == "step_copy":
        t = int(rng.integers(1, steps))
        g[t] = g[s]
    elif name == "block_step":
        b = int(rng.integers(blocks))
        g[s, b] = not g[s, b].mean() >= 0.5
    elif name == "component_run":
        b, c = int(rng.integers(blocks)), int(rng.integers(comps))
        end = int(rng.integers(s, steps)) + 1
        g[s:end, b, c] = not g[s:end, b, c].mean() >= 0.5
    else:
        raise ValueError(f"unknown move {name!r}")


#: adjacent frontier points closer in speedup than this ratio count as no gap
FILL_MAX_GAP = 1.04
#: gap filling aims no higher than this predicted speedup: past it the bundled model's schedules
#: have lost adherence (bench/results/search.md), and points there are not worth a filler each
FILL_MAX_SPEEDUP = 4.0


def gap_fill(points: Sequence[tuple[float, np.ndarray]], n: int, speedup_of: Callable[[np.ndarray], float],
             known: set[str], rng: np.random.Generator, max_gap: float = FILL_MAX_GAP,
             max_speedup: float = FILL_MAX_SPEEDUP, samples: int = 48, pool: Sequence[np.ndarray] = (),
             ) -> list[np.ndarray]:
    """Up to ``n`` new genomes aimed inside the widest speed gaps between adjacent frontier ``points``.

    Why: NSGA-II's crowding keeps a spread, but in a budget of a few generations the frontier still
    has holes (e.g. 1.63x -> 1.90x), and a peer that lands in one is not dominated. ``points`` are
    (speedup, bits ``[steps, blocks, components]``). Targets split each gap evenly in log-speed,
    the widest remaining sub-gap first, until no sub-gap exceeds ``max_gap``. For each target the
    child is the interpolant of the gap's two ends (``interpolants``) whose predicted speedup
    (``speedup_of``, cheap: latency model or MACs) is nearest the target and whose packed genome is
    not in ``known``; ``pool`` (e.g. the change signals' ladder, ``search.signals``) competes with the
    interpolants for every target. Every child is an ordinary bit schedule.
    """
    pts = sorted(points, key=lambda p: p[0])
    gaps = [(a, b) for a, b in zip(pts, pts[1:], strict=False) if a[0] < max_speedup and b[0] > a[0] * max_gap]
    fills = [0] * len(gaps)
    for _ in range(max(n, 0) if gaps else 0):
        widths = [math.log(b[0] / a[0]) / (k + 1) for (a, b), k in zip(gaps, fills, strict=True)]
        i = int(np.argmax(widths))
        if widths[i] <= math.log(max_gap):
            break
        fills[i] += 1
    out: list[np.ndarray] = []
    seen = set(known)
    for (a, b), k in zip(gaps, fills, strict=True):
        for j in range(1, k + 1):
            target = math.log(a[0]) + math.log(b[0] / a[0]) * j / (k + 1)
            best, best_d = None, math.inf
            for child in [*interpolants(a[1], b[1], rng, samples), *pool]:
                key = np.packbits(child.reshape(-1)).tobytes().hex()
                d = abs(math.log(speedup_of(child)) - target)
                if key not in seen and d < best_d:
                    best, best_d = child, d
            if best is not None:
                seen.add(np.packbits(best.reshape(-1)).tobytes().hex())
                out.append(best)
    return out


def interpolants(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, samples: int = 48) -> list[np.ndarray]:
    """Schedules between ``a`` and ``b`` (bit arrays ``[steps, blocks, components]``): ``a`` up to a
    cut step then ``b`` (and the reverse), whole step rows of ``b`` put into ``a`` at random, and a
    random share of the bits where they differ; step 0 is left as the parents have it."""
    steps = a.shape[0]
    out = []
    for c in range(1, steps):
        for first, second in ((a, b), (b, a)):
            child = first.copy()
            child[c:] = second[c:]
            out.append(child)
    diff = a != b
    for f in rng.random(samples):
        rows = (rng.random(steps) < f)[:, None, None]
        out.append(np.where(rows, b, a))
        out.append(np.where(diff & (rng.random(a.shape) < f), b, a))
    return out
