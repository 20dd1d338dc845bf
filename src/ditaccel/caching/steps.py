"""Which denoising step and call context a transformer call belongs to, from its timestep alone.

Why from the timestep: PixArt runs CFG as one batch of 2, other pipelines call the transformer
once per condition, and a user may call it by hand; a call count would be wrong for some of them.
One tracker serves the caching runtime, the search's prefix sharing and the dynamic caches.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


def timestep_value(t: Any) -> float:
    """A call's timestep as a float (the first element of a tensor: one timestep per batch)."""
    return float(t.reshape(-1)[0]) if isinstance(t, torch.Tensor) else float(t)


def timestep_reader(module: torch.nn.Module) -> Callable[[tuple, dict], float | None]:
    """A function reading the ``timestep`` argument of ``module``'s forward (keyword or positional)."""
    params = list(inspect.signature(type(module).forward).parameters)[1:]  # without self
    pos = params.index("timestep") if "timestep" in params else None

    def read(args: tuple, kwargs: dict) -> float | None:
        t = kwargs.get("timestep")
        if t is None and pos is not None and len(args) > pos:
            t = args[pos]
        return None if t is None else timestep_value(t)

    return read


@dataclass
class StepTracker:
    """Timestep -> (step, call context).

    A smaller timestep than the last call is the next step (context 0); the same timestep again
    is another call context of the same step (context k = k-th call of the step, e.g. cond then
    uncond); anything else (first call, a larger timestep) starts a new generation at step 0.
    """

    step: int = -1
    context: int = 0
    last_t: float | None = None

    def reset(self) -> None:
        """Forget everything: the next call starts a new generation."""
        self.step, self.context, self.last_t = -1, 0, None

    def advance(self, t: float) -> bool:
        """Account for a call at timestep ``t``; True when it starts a new generation."""
        last = self.last_t
        new = False
        if last is not None and t == last and self.step >= 0:
            self.context += 1
        elif last is not None and t < last and self.step >= 0:
            self.step, self.context = self.step + 1, 0
        else:
            self.step, self.context, new = 0, 0, True
        self.last_t = t
        return new

    def state(self) -> tuple[int, int, float | None]:
        """(step, context, last timestep): what ``restore`` takes back."""
        return self.step, self.context, self.last_t

    def restore(self, state: tuple[int, int, float | None]) -> None:
        self.step, self.context, self.last_t = state
