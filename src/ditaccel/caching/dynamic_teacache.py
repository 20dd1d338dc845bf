"""TeaCache-style dynamic caching for DiTs whose blocks map hidden states to hidden states (PixArt).

TeaCache (Liu et al., 2024) skips a whole denoising step's block stack when the timestep-modulated
input has barely changed since the last computed step, reusing that step's residual
(stack output minus stack input). diffusers has no TeaCache, and none for PixArt; this one is
written with ``diffusers.hooks`` like every ditaccel cache, so no model class is changed:

- a hook on the transformer tracks (step, call context) with ``StepTracker``; each context keeps
  its own state, and a new generation starts empty;
- a hook on block 0's first cacheable component (PixArt: ``attn1``, whose input is
  ``norm1(h) * (1 + scale_msa) + shift_msa``: the modulated input) adds the relative L1 change
  ``mean|x - x_prev| / mean|x_prev|`` to an accumulator. Under ``threshold`` the step is skipped:
  the hook stops block 0 before any attention runs, block 0 returns its input plus the stored
  residual and the other blocks return their input. At or over it the stack runs, the residual
  is stored and the accumulator resets;
- step 0 and the last step always compute (as in TeaCache); ``threshold=0`` never skips, so the
  images are bitwise those of the unhooked model.

Unlike TeaCache, the relative change is not rescaled by a per-model polynomial (its coefficients
are fitted per model; the bundled model has none), so thresholds are not TeaCache's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook

from ditaccel.caching.dynamic import (
    PeerHandle,
    PeerUnavailable,
    hooks_remover,
    knob_defaults,
    snapshot_hooks,
)
from ditaccel.caching.offload import beneath_offload_hook
from ditaccel.caching.stack import block_input
from ditaccel.caching.steps import StepTracker, timestep_reader
from ditaccel.models import get_adapter
from ditaccel.pipeline import pipeline_steps

_STEP_HOOK, _PROBE_HOOK, _BLOCK_HOOK = "ditaccel_teacache_step", "ditaccel_teacache_probe", "ditaccel_teacache_block"


class _SkipStack(Exception):
    """Raised by the probe to leave block 0 before its attention runs."""


@dataclass
class _Context:
    """One call context's cache: last modulated input, accumulated change, stack residual."""

    prev: torch.Tensor | None = None
    acc: float = 0.0
    residual: torch.Tensor | None = None
    stack_input: torch.Tensor | None = None
    skip: bool = False


class _State:
    """Shared by the hooks of one install."""

    def __init__(self, threshold: float, num_steps: int | None) -> None:
        self.threshold = threshold
        self.num_steps = num_steps
        self.tracker = StepTracker()
        self.contexts: dict[int, _Context] = {}
        self.now: _Context | None = None
        self.force = True
        self.skipped_calls = 0
        self.calls = 0

    def decide(self, x: torch.Tensor) -> bool:
        """True: compute the stack this call; accumulate the relative change of the modulated input."""
        c = self.now
        assert c is not None
        prev, c.prev = c.prev, x.detach()
        if self.force or prev is None or c.residual is None or prev.shape != x.shape:
            c.acc = 0.0
            return True
        c.acc += float((x - prev).abs().mean() / prev.abs().mean().clamp_min(1e-12))
        if c.acc < self.threshold:
            return False
        c.acc = 0.0
        return True


class _StepHook(ModelHook):
    def __init__(self, state: _State, module: torch.nn.Module) -> None:
        super().__init__()
        self.state = state
        self._read = timestep_reader(module)

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        st = self.state
        t = self._read(args, kwargs)
        if t is None:
            raise PeerUnavailable(f"{type(module).__name__} was called without a timestep; TeaCache needs it")
        if st.tracker.advance(t):
            st.contexts = {}
        st.now = st.contexts.setdefault(st.tracker.context, _Context())
        st.now.skip = False
        last = st.num_steps is not None and st.tracker.step >= st.num_steps - 1
        st.force = st.tracker.step == 0 or last
        st.calls += 1
        return args, kwargs

    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        self.state.now = None
        return output


class _ProbeHook(ModelHook):
    """On block 0's first component: the skip decision, before that component runs."""

    def __init__(self, state: _State) -> None:
        super().__init__()
        self.state = state

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        st = self.state
        if st.now is not None and st.now.stack_input is not None and not st.decide(block_input(args, kwargs)):
            st.now.skip = True
            raise _SkipStack
        return self.fn_ref.original_forward(*args, **kwargs)


class _BlockHook(ModelHook):
    """On each block: block 0 starts (or skips) the stack, the last block stores its residual."""

    def __init__(self, state: _State, first: bool, last: bool) -> None:
        super().__init__()
        self.state, self.first, self.last = state, first, last

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        c = self.state.now
        if c is None:  # called outside a transformer forward: behave as the original
            return self.fn_ref.original_forward(*args, **kwargs)
        h = block_input(args, kwargs)
        if self.first:
            c.stack_input = h
            try:
                out = self.fn_ref.original_forward(*args, **kwargs)
            except _SkipStack:
                self.state.skipped_calls += 1
                out = h + c.residual
        elif c.skip:
            out = h
        else:
            out = self.fn_ref.original_forward(*args, **kwargs)
        if self.last and not c.skip:
            c.residual = out - c.stack_input
        if self.last:
            c.stack_input = None
        return out


def _check_family(pipe: Any) -> Any:
    try:
        a = get_adapter(pipe)
    except Exception as e:
        raise PeerUnavailable(f"TeaCache-style caching needs a known DiT family: {e}") from None
    if a.family != "pixart":
        raise PeerUnavailable(f"TeaCache-style caching runs on PixArt-style blocks (hidden states in and out); "
                              f"{a.family} is not supported")
    return a


def apply_teacache(pipe: Any, call_kwargs: dict[str, Any] | None = None, threshold: float | None = None
                   ) -> PeerHandle:
    """Install TeaCache-style step skipping on ``pipe``'s transformer; ``remove()`` restores it exactly.

    ``threshold``: the accumulated relative change of block 0's modulated input under which a step
    reuses the last computed step's block-stack residual (0 never skips).
    """
    p = {**knob_defaults("teacache"), **({} if threshold is None else {"threshold": threshold})}
    if p["threshold"] < 0:
        raise PeerUnavailable(f"TeaCache threshold must be >= 0, got {p['threshold']}")
    a = _check_family(pipe)
    t = a.transformer
    state = _State(float(p["threshold"]), pipeline_steps(pipe, dict(call_kwargs or {})) if pipe is not t else None)
    before = snapshot_hooks(t)
    handle = PeerHandle("teacache", "TeaCache-style (ditaccel): skip the block stack while block 0's modulated "
                        "input changes less than a threshold", dict(p), t, params_full=dict(p))
    handle._removers.append(hooks_remover(t, before))
    blocks = [spec.module for spec in a.blocks]
    try:
        with beneath_offload_hook(t):
            HookRegistry.check_if_exists_or_initialize(a.component_module(0, 0)).register_hook(
                _ProbeHook(state), _PROBE_HOOK)
            for i, blk in enumerate(blocks):
                HookRegistry.check_if_exists_or_initialize(blk).register_hook(
                    _BlockHook(state, i == 0, i == len(blocks) - 1), _BLOCK_HOOK)
            HookRegistry.check_if_exists_or_initialize(t).register_hook(_StepHook(state, t), _STEP_HOOK)
        t._diffusers_hook.invalidate_child_registries_cache()
    except BaseException:
        handle.remove()
        raise
    handle.notes.append("TeaCache-style: step 0 and the last step always compute; no per-model rescaling")
    handle.state = state  # skip counts, for tests and benchmarks
    return handle
