"""Residual step reuse: a step that recomputes nothing skips the whole block stack.

Why: under plain (component) reuse, a step whose bits are all 0 still runs every block's
gates, modulation and residual adds, on the current timestep, around the cached outputs. On the
bundled model that is ~7% of a computed step, so such a schedule measured slower than
FirstBlockCache or TeaCache, which skip the stack outright. A schedule with
``step_reuse="residual"`` does what they do at its all-0 steps: the stack's output is its input
plus the residual (stack output minus stack input) of the last step that ran the stack. Steps
with any bit set run as under component reuse, and refresh the residual.

It needs blocks that map hidden states to hidden states (``Adapter.stack_residual``): PixArt,
Sana. Installed by ``apply_schedule`` only for such schedules, as one ``ModelHook`` per block,
outside the component hooks and the block fast path:

- block 0 decides: at a skip step (step > 0, no bit set) it returns ``input + residual`` and
  every later block returns its input unchanged; else it remembers the stack input;
- the last block stores ``output - input`` in the context's cache under ``STACK_KEY`` (every
  computed step but the schedule's last), so the residual is part of ``CacheHandle.snapshot``
  and candidates that share a prefix in the search see the same residual as when run alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from diffusers.hooks import ModelHook

if TYPE_CHECKING:
    from ditaccel.caching.runtime import _Runtime

#: Where a context's cache keeps the block-stack residual (component keys are (block >= 0, slot)).
STACK_KEY = (-1, 0)
STEP_REUSE = ("components", "residual")
HOOK_NAME = "ditaccel_cache_stack"


def skip_steps(bits: np.ndarray) -> np.ndarray:
    """[steps] bool: the steps a residual-reuse schedule skips (step > 0 with no bit set)."""
    bits = np.asarray(bits, dtype=bool)
    skip = ~bits.reshape(bits.shape[0], -1).any(axis=1)
    skip[0] = False
    return skip


class StackState:
    """What the stack hooks share: the runtime, this schedule's skip steps, the current call's stack input."""

    def __init__(self, rt: _Runtime) -> None:
        self.rt = rt
        self.skip = skip_steps(rt.bits)
        self.active = True
        self.skipping = False
        self.stack_input: torch.Tensor | None = None
        self.skipped_calls = 0

    def set_bits(self, bits: np.ndarray, residual: bool) -> None:
        self.skip = skip_steps(bits)
        self.active = residual


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


class StackHook(ModelHook):
    """On one block: block 0 starts or skips the stack, later blocks pass through when skipping,
    the last block stores the stack residual."""

    def __init__(self, state: StackState, first: bool, last: bool) -> None:
        super().__init__()
        self.state, self.first, self.last = state, first, last

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():  # inside a user-compiled block: decide outside the graph
            return _outside_graph(self, args, kwargs)
        return self.call(args, kwargs)

    def call(self, args: tuple, kwargs: dict) -> Any:
        st, rt = self.state, self.state.rt
        if not (st.active and rt.in_call):
            return self.fn_ref.original_forward(*args, **kwargs)
        cache = rt.caches[rt.context]
        if self.first:
            h = _hidden(args, kwargs)
            st.skipping = bool(st.skip[rt.step]) and STACK_KEY in cache
            if st.skipping:
                st.skipped_calls += 1
                return h + cache[STACK_KEY]
            st.stack_input = h
        elif st.skipping:
            return _hidden(args, kwargs)
        out = self.fn_ref.original_forward(*args, **kwargs)
        if self.last:
            if rt.step < rt.steps - 1:
                cache[STACK_KEY] = out - st.stack_input
            st.stack_input = None
        return out


@torch.compiler.disable
def _outside_graph(hook: StackHook, args: tuple, kwargs: dict) -> Any:
    return hook.call(args, kwargs)
