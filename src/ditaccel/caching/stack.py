"""Residual step reuse: a step that recomputes nothing skips the whole block stack; a step that
recomputes only in block 0 skips the blocks after it.

Why: under plain (component) reuse, a step whose bits are all 0 still runs every block's
gates, modulation and residual adds, on the current timestep, around the cached outputs. On the
bundled model that is ~7% of a computed step, so such a schedule measured slower than
FirstBlockCache or TeaCache, which skip the stack outright. A schedule with
``step_reuse="residual"`` does what they do at its all-0 steps: the stack's output is its input
plus the residual (stack output minus stack input) of the last step that ran the stack. A step
whose bits are set in block 0 only does what FirstBlockCache does when it skips: block 0 runs (as
its bits say), and the blocks after it are replaced by their residual (stack output minus block 1's
input) from the last step that ran them. Other steps run as under component reuse, and refresh
both residuals.

It needs blocks that map hidden states to hidden states (``Adapter.stack_residual``): PixArt,
Sana. Installed by ``apply_schedule`` only for such schedules, as one ``ModelHook`` per block,
outside the component hooks and the block fast path:

- block 0 decides: at a stack skip step (step > 0, no bit set) it returns ``input + residual`` and
  every later block returns its input unchanged; else it remembers the stack input, runs, and at
  a tail skip step (step > 0, bits in block 0 only) returns ``its output + tail residual``, the
  later blocks again passing through; else it remembers its output (block 1's input);
- the last block stores ``output - stack input`` under ``STACK_KEY`` and ``output - block 1's
  input`` under ``TAIL_KEY`` in the context's cache (every step that ran it, but the schedule's
  last), so both are part of ``CacheHandle.snapshot`` and candidates that share a prefix in the
  search see the same residuals as when run alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from diffusers.hooks import ModelHook

if TYPE_CHECKING:
    from ditaccel.caching.runtime import _Runtime

#: Where a context's cache keeps the block-stack residual and the residual of the blocks after block 0
#: (component keys are (block >= 0, slot)).
STACK_KEY, TAIL_KEY = (-1, 0), (-1, 1)
STEP_REUSE = ("components", "residual")
HOOK_NAME = "ditaccel_cache_stack"


def skip_steps(bits: np.ndarray) -> np.ndarray:
    """[steps] bool: the steps a residual-reuse schedule skips whole (step > 0 with no bit set)."""
    bits = np.asarray(bits, dtype=bool)
    skip = ~bits.reshape(bits.shape[0], -1).any(axis=1)
    skip[0] = False
    return skip


def tail_skip_steps(bits: np.ndarray) -> np.ndarray:
    """[steps] bool: the steps where a residual-reuse schedule runs block 0 only (some bit set there, none after)."""
    bits = np.asarray(bits, dtype=bool)
    if bits.shape[1] < 2:
        return np.zeros(bits.shape[0], dtype=bool)
    tail = ~bits[:, 1:].reshape(bits.shape[0], -1).any(axis=1) & bits[:, 0].any(axis=1)
    tail[0] = False
    return tail


def block_runs(bits: np.ndarray, residual: bool) -> np.ndarray:
    """[steps, blocks] bool: whether the block runs at the step (not where residual reuse skips it)."""
    bits = np.asarray(bits, dtype=bool)
    runs = np.ones(bits.shape[:2], dtype=bool)
    if residual:
        runs[skip_steps(bits)] = False
        runs[tail_skip_steps(bits), 1:] = False
    return runs


def cache_reads(bits: np.ndarray, residual: bool, slots: np.ndarray | None = None) -> np.ndarray:
    """[blocks, components] bool: the (block, slot) outputs some step reads from cache, i.e. a step > 0 runs
    the block with the bit unset. Why: a component no step reads needs no cache hook, and on the bundled
    model the hooks of a whole-step schedule cost ~4% of a call (``apply_schedule(..., lean=True)``).
    ``slots`` ([blocks, components] bool, ``Adapter.slots``): the ones the model has (e.g. SD3's last block
    has no ``ff_context``); None: all."""
    return _reads(bits, block_runs(bits, residual), slots)


def _reads(bits: np.ndarray, runs: np.ndarray, slots: np.ndarray | None) -> np.ndarray:
    reads = (~np.asarray(bits, dtype=bool) & runs[:, :, None])[1:].any(axis=0)
    return reads if slots is None else reads & slots


def bare_calls(runs: np.ndarray, bare: np.ndarray) -> np.ndarray:
    """[steps, blocks, components] bool: the calls of ``bare`` ([blocks, components]) slots, which run with no cache
    hook whenever their block runs (``runs``, from ``block_runs``): else some step would read their cache."""
    return runs[:, :, None] & bare[None]


def unhooked_calls(bits: np.ndarray, residual: bool, slots: np.ndarray | None = None) -> int:
    """How many component calls a lean handle runs without a cache hook: those of never-read slots (of the
    ones the model has) in every step that runs their block (the latency model prices the hook each saves)."""
    runs = block_runs(bits, residual)  # once: ``predict`` calls this for every candidate it prices
    bare = ~_reads(bits, runs, None)
    if slots is not None:
        bare &= slots
    return int(bare_calls(runs, bare).sum())


class StackState:
    """What the stack hooks share: the runtime, this schedule's skip steps, the current call's stack input."""

    def __init__(self, rt: _Runtime) -> None:
        self.rt = rt
        self.set_bits(rt.bits, True)
        self.skipping = False
        self.stack_input: torch.Tensor | None = None
        self.tail_input: torch.Tensor | None = None
        self.skipped_calls = 0
        self.tail_skipped_calls = 0

    def skips(self, steps: np.ndarray, key: tuple[int, int], cache: dict) -> bool:
        """Whether this call skips from here (a skip step of this kind, its residual cached); remembered for
        the later blocks."""
        self.skipping = bool(steps[self.rt.step]) and key in cache
        return self.skipping

    def store(self, cache: dict, stack_input: torch.Tensor, tail_input: torch.Tensor | None,
              out: torch.Tensor) -> None:
        """After a call that ran the stack: its residuals, for later skip steps (none after the last step).
        The block hooks call it, and so does a call the user's compile traced whole (``caching.runtime``)."""
        if self.rt.step < self.rt.steps - 1:
            cache[STACK_KEY] = out - stack_input
            if tail_input is not None:
                cache[TAIL_KEY] = out - tail_input
        self.stack_input = self.tail_input = None

    def set_bits(self, bits: np.ndarray, residual: bool) -> None:
        self.skip, self.tail = skip_steps(bits), tail_skip_steps(bits)
        self.active = residual


def block_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """A transformer block call's hidden-state input (positional or ``hidden_states=``)."""
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
            h = st.stack_input = block_input(args, kwargs)
            if st.skips(st.skip, STACK_KEY, cache):
                st.skipped_calls += 1
                return h + cache[STACK_KEY]
        elif st.skipping:
            return block_input(args, kwargs)
        out = self.fn_ref.original_forward(*args, **kwargs)
        if self.first and not self.last:
            st.tail_input = out
            if st.skips(st.tail, TAIL_KEY, cache):
                st.tail_skipped_calls += 1
                return out + cache[TAIL_KEY]
        if self.last:
            st.store(cache, st.stack_input, st.tail_input, out)
        return out


@torch.compiler.disable
def _outside_graph(hook: StackHook, args: tuple, kwargs: dict) -> Any:
    return hook.call(args, kwargs)
