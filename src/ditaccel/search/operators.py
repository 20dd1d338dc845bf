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

Genomes are step-major flattened bits ``[steps, blocks, components]`` (``genome.pack``).
"""

from __future__ import annotations

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
