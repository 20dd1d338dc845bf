"""Apply a ``CacheSchedule`` to an unmodified diffusers transformer through ``diffusers.hooks``.

How it works
------------
- One ``ModelHook`` on the transformer reads the ``timestep`` argument of every call and keeps
  the step tracker: a smaller timestep than the last call is the next step; the same timestep
  again is another call context of the same step (cond / uncond when a pipeline calls the
  transformer once per condition: context k = k-th call of the step); anything else (first
  call, larger timestep) starts a new generation and drops all caches.
- One ``ModelHook`` with a ``new_forward`` on each cacheable sub-module (from the adapter)
  either runs the original forward and stores its raw output, or returns the stored output.
  A lean handle (the default) hooks only the sub-modules whose output some step reads from cache
  (``stack.cache_reads``): the others always compute, so they run bare and ``counts`` adds them
  by the schedule (``_Runtime.count_bare``) at the end of each call; the hooks cost ~4% of a call on
  the bundled model. The search's prefix sharing applies ``lean=False`` (every sub-module hooked) so
  that ``set_schedule`` can swap in any candidate.
  Norms, adaLN modulation, gates and residual adds stay in the block and always run, except:
- Block fast path: where the adapter has a ``cached_block_forward`` (PixArt's
  ``BasicTransformerBlock``), each block's innermost forward (beneath any diffusers or offload
  hook) is a ``_FastBlock``. When some of the block's components are cached at this step it runs
  the adapter's forward, which skips the norm and modulation that feed only cached components
  (bit-identical outputs); components that recompute still go through their hooks (store,
  count). ``apply_schedule(..., fast_path=False)`` keeps the component hooks only.
- Step 0 always computes (the cache is empty). A context's cache is freed right after its call
  at the schedule's last step, and every new generation starts empty.
- Under ``torch.compile`` the decisions stay in Python and the components are what gets compiled
  (``ditaccel.caching.compile``): ``apply_schedule(..., compile=True)`` or ``compile_components``
  compile them. When the user's ``torch.compile(transformer)`` traces a scheduled call, the step
  hook decides outside the graph (a graph break before any compute) whether every component
  computes in this call. If so, the model looks unhooked for the call (``_WholeCall``) and it is
  traced whole, like the user's own graph but also returning the component outputs, which are
  cached after it (a second graph break); that graph guards on nothing a handle owns, so new
  handles and schedules reuse it. If not, the call leaves the graph and the hook compiles the
  components itself. Dynamo guards on that yes/no only: two entries, both made by a first
  generation with full and partial steps (``_begin_user_compiled_call``). Under residual step
  reuse the whole graph also returns the first and last blocks' inputs and outputs (the stack
  residuals, ``_capture_block``): its own entry, compiled by the first residual generation.
  A handle that compiles (those two cases), or one applied with ``compile=None`` while a standalone
  ``compile_components`` (``--compile``) is on (checked once per transformer call), also runs
  fast-path blocks as compiled block variants: one whole-block graph per cache pattern, glue
  included (``BlockVariants``), all made at warm-up. Every pattern, the all-cached one included,
  measured faster compiled than eager (bench/results/compile.md), so none is routed to eager.
  No schedule bit, step or cache reaches compiled code, so schedule changes never recompile.
- ``handle.remove()`` (or leaving the ``with`` block) unregisters the hooks and deletes every
  attribute they added, so the module is exactly as before. No weight is touched.

For the ECAD search (sharing a schedule prefix between candidates)
-------------------------------------------------------------------
- ``handle.counts``: int64 array [blocks, components] of sub-module executions since apply (or
  ``reset_counts()``); multiply by the adapter's per-component MACs for executed MACs.
- ``handle.snapshot()`` returns a ``CacheState`` (step tracker + every context's cached
  outputs, tensors shared not copied: the runtime never writes into them). ``handle.restore(state)``
  puts it back; the same state can be restored many times.
- ``handle.set_schedule(other)`` swaps the bits and keeps the caches, so candidates that agree on
  steps < k can be run once to step k, snapshotted, and each finished from there::

      with apply_schedule(transformer, cand_a) as h:
          for i in range(k): latents = denoise_step(i, latents)      # calls transformer(t_i)
          state, lat_k = h.snapshot(), latents.clone()
          for cand in (cand_a, cand_b):
              h.restore(state); h.set_schedule(cand); latents = lat_k.clone()
              for i in range(k, steps): latents = denoise_step(i, latents)

  The step index keeps following the timestep, so nothing else has to be told the step.
- ``handle.step`` / ``handle.context`` tell where the tracker is; ``handle.reset()`` frees all.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers.hooks import HookRegistry, ModelHook

from ditaccel.caching.compile import (
    BlockVariants,
    CompiledComponents,
    Slot,
    compile_components,
    compiled_options,
    is_compiled_forward,
    plain_component,
)
from ditaccel.caching.offload import beneath_offload_hook
from ditaccel.caching.schedule import CacheSchedule
from ditaccel.caching.stack import HOOK_NAME as STACK_HOOK_NAME
from ditaccel.caching.stack import StackHook, StackState, bare_calls, block_input, block_runs, cache_reads
from ditaccel.caching.steps import StepTracker, timestep_reader
from ditaccel.errors import ScheduleError
from ditaccel.models import Adapter, get_adapter

HOOK_NAME = "ditaccel_cache"
_STEP_HOOK_NAME = "ditaccel_cache_step"


@dataclass
class CacheState:
    """Step tracker and cached outputs at one moment (see ``CacheHandle.snapshot``)."""

    step: int
    context: int
    last_t: float | None
    caches: list[dict[tuple[int, int], Any]] = field(default_factory=list)


class _Runtime:
    """Shared mutable state of one applied schedule."""

    def __init__(self, adapter: Adapter, schedule: CacheSchedule) -> None:
        self.adapter = adapter
        self.bits = schedule.bits
        self.steps = schedule.steps
        self.counts = np.zeros((adapter.num_blocks, len(adapter.component_names)), dtype=np.int64)
        self.tracker = StepTracker()
        self.caches: list[dict[tuple[int, int], Any]] = []
        self.hooked: list[tuple[int, int]] = []  # (block, slot) of every component with a cache hook
        self.in_call = False
        self.whole: _WholeCall | None = None  # set by CacheHandle once its hooks are in
        self.stack: StackState | None = None  # residual step reuse's block hooks, where installed
        self.on_user_compile: Callable[[], None] | None = None
        self.variants: BlockVariants | None = None  # compiled block variants (``CacheHandle.compile_components``)
        #: where the handle compiles nothing itself: follow a standalone ``compile_components`` (``--compile``)
        self.follow_compiled: torch.nn.Module | None = None
        #: [steps, blocks, components] executions per call of the components a lean handle left unhooked
        self.bare = np.zeros((0, *self.counts.shape), dtype=np.int64)

    def count_bare(self, residual: bool) -> None:
        """Count the unhooked components by the schedule (``stack.bare_calls``)."""
        unhooked = self.adapter.slots()
        for b, c in self.hooked:
            unhooked[b, c] = False
        self.bare = bare_calls(block_runs(self.bits, residual), unhooked).astype(np.int64)

    def computed(self, block: int, slot: int, out: Any) -> None:
        """A component ran at this step: keep its output for later steps (unless none follows) and count it."""
        if self.step < self.steps - 1:
            self.caches[self.context][(block, slot)] = out
        self.counts[block, slot] += 1

    @property
    def step(self) -> int:
        return self.tracker.step

    @property
    def context(self) -> int:
        return self.tracker.context

    def reset(self) -> None:
        self.tracker.reset()
        self.caches = []

    def begin_call(self, t: float) -> None:
        if self.whole is not None:
            self.whole.exit()  # (only after a call traced whole raised)
        if self.tracker.advance(t):  # a new generation drops every cache
            self.caches = []
        elif self.step >= self.steps:
            raise ScheduleError(
                f"the schedule has {self.steps} steps but the transformer was called for step "
                f"{self.step + 1}; use schedule.resample(num_inference_steps)"
            )
        while len(self.caches) <= self.context:
            self.caches.append({})
        if self.follow_compiled is not None:
            self._follow_compiled(self.follow_compiled)
        self.in_call = True

    def _follow_compiled(self, module: torch.nn.Module) -> None:
        """Run block variants while ``compile_components`` (installed before or after the schedule) is on:
        per pattern they measured faster than its compiled components with eager glue (bench/results/compile.md)."""
        options = compiled_options(module)
        if options is None:
            self.variants = None
        elif self.variants is None or self.variants.options != options:
            self.variants = BlockVariants(options)

    def end_call(self) -> None:
        self.in_call = False
        if self.step < len(self.bare):
            self.counts += self.bare[self.step]
        if self.step == self.steps - 1 and self.context < len(self.caches):
            self.caches[self.context] = {}  # last step of this context: nothing will read it again

    def computes_everything(self) -> bool:
        """Whether every block runs and every hooked component recomputes in this call (its bit is set or nothing
        is cached yet). A residual skip or tail-skip step never does: its stack hooks must run, even where a lean
        handle hooked no component at all."""
        if self.stack is not None and self.stack.active and (self.stack.skip[self.step] or self.stack.tail[self.step]):
            return False
        cache, bits = self.caches[self.context], self.bits[self.step]
        return all(bits[b, c] or (b, c) not in cache for b, c in self.hooked)


class _StepHook(ModelHook):
    """On the transformer: derives (step, context) from the timestep argument of each call."""

    def __init__(self, rt: _Runtime, module: torch.nn.Module) -> None:
        super().__init__()
        self.rt = rt
        self._timestep = timestep_reader(module)

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():  # traced by the user's torch.compile(transformer)
            if _begin_user_compiled_call(self, module, args, kwargs):  # graph break; dynamo guards on the bool
                out = _whole_forward(module, *args, **kwargs)  # every component computes: one whole graph
                _end_whole_call(module)  # graph break; caches what the graph returned
                return out
            return _escape_user_compile(self, args, kwargs)
        return self.call(module, args, kwargs)

    def begin(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """Advance the step tracker for this call (``module`` names the model in the error)."""
        t = self._timestep(args, kwargs)
        if t is None:
            raise ScheduleError(
                f"{type(module).__name__} was called without a timestep; a cache schedule needs it to "
                f"know the step"
            )
        self.rt.begin_call(t)

    def call(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        self.begin(module, args, kwargs)
        return self.run(args, kwargs)

    def run(self, args: tuple, kwargs: dict) -> Any:
        """The rest of a call whose ``begin`` has run: the forward, then the end of the call."""
        try:
            return self.fn_ref.original_forward(*args, **kwargs)
        finally:
            self.rt.end_call()


class _ComponentHook(ModelHook):
    """On one cacheable sub-module: recompute and store, or return the stored output."""

    def __init__(self, rt: _Runtime, block: int, slot: int) -> None:
        super().__init__()
        self.rt = rt
        self.key = (block, slot)

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():  # inside a user-compiled block: decide outside the graph
            return _decide_outside_graph(self, args, kwargs)
        return self.call(args, kwargs)

    def call(self, args: tuple, kwargs: dict) -> Any:
        rt = self.rt
        if not rt.in_call:  # called outside a transformer forward: behave as the original
            return self.fn_ref.original_forward(*args, **kwargs)
        cache = rt.caches[rt.context]
        b, c = self.key
        if rt.bits[rt.step, b, c] or self.key not in cache:
            out = self.fn_ref.original_forward(*args, **kwargs)
            rt.computed(b, c, out)
            return out
        return cache[self.key]


class _FastBlock:
    """A block's innermost forward under a schedule: the adapter's cached-block forward when some of
    its components are cached at this step, else the block's own forward (see the module docstring)."""

    def __init__(self, rt: _Runtime, index: int, module: torch.nn.Module, fn: Callable[..., Any],
                 prev: Callable[..., Any]) -> None:
        self.rt, self.index, self.module, self.fn, self.prev = rt, index, module, fn, prev
        self.slots = range(len(rt.adapter.component_names))
        self.components = [rt.adapter.component_module(index, c) for c in self.slots]
        self.forwards = tuple(None if m is None else type(m).forward for m in self.components)
        self.hooked = frozenset(c for c in self.slots if (index, c) in rt.hooked)  # the others count as bare
        self.__wrapped__ = prev  # inspect.signature sees the block's own

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        rt = self.rt
        if torch.compiler.is_compiling() or not rt.in_call:  # traced: the block's own forward (no guard on rt)
            return self.prev(*args, **kwargs)
        if not self.hooked and rt.variants is None:  # a lean handle's bare block: nothing cached, nothing compiled
            return self.prev(*args, **kwargs)
        cache, bits, b = rt.caches[rt.context], rt.bits[rt.step, self.index], self.index
        cached = tuple(None if bits[c] else cache.get((b, c)) for c in self.slots)
        if rt.variants is not None and all(plain_component(m, HOOK_NAME) for m in self.components):
            out, outs = rt.variants.run(self.fn, self.module, cached, self.forwards, args, kwargs)
            for c, o in outs.items():
                if c in self.hooked:
                    rt.computed(b, c, o)
            return out
        if all(x is None for x in cached):
            return self.prev(*args, **kwargs)
        return self.fn(self.module, cached, _call_module, *args, **kwargs)


def _call_module(slot: int, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
    """How the eager fast path runs a component: as a module, so its cache hook stores and counts."""
    return module(*args, **kwargs)


def _install_fast_blocks(rt: _Runtime) -> list[tuple[torch.nn.Module, Callable[..., Any]]]:
    """Put a ``_FastBlock`` beneath the hooks of every block whose adapter has a cached-block forward (also on a
    lean handle's bare blocks: compiled, they run as whole-block variants too)."""
    installed = []
    for b, spec in enumerate(rt.adapter.blocks):
        fn = rt.adapter.cached_block_forward(spec)
        if fn is None:
            continue
        slot = Slot(spec.module)
        prev = slot.get()
        slot.set(_FastBlock(rt, b, spec.module, fn, prev))
        installed.append((spec.module, prev))
    return installed


def _remove_fast_blocks(installed: list[tuple[torch.nn.Module, Callable[..., Any]]]) -> None:
    for module, prev in reversed(installed):
        slot = Slot(module)
        if isinstance(slot.get(), _FastBlock):
            slot.set(prev)


@torch.compiler.disable
def _begin_user_compiled_call(hook: _StepHook, module: torch.nn.Module, args: tuple, kwargs: dict) -> bool:
    """Decide, outside the user's graph, whether this call computes every component.

    Either way the tracker has advanced. True: the model now looks unhooked (``_WholeCall``) and the
    caller runs its class forward, which dynamo traces whole (fused as the user's graph is, the
    component outputs returned beside the output; one more whole-model compile at warm-up), guarding
    on nothing a handle owns, so a new handle or schedule reuses it; ``_end_whole_call`` caches them and puts the hooks back. False: the caller
    leaves the graph (``_escape_user_compile``). Dynamo guards on the returned bool, so the code
    after this call has two cache entries, made by the first call of each kind: a first generation
    with full and partial steps (e.g. FORA(n): step 0 always computes) makes both; after one with
    full steps only (e.g. ``none``), the first partial call compiles the escape's (no graph, one recompile).
    """
    rt = hook.rt
    if rt.on_user_compile is not None:  # block variants for the partial calls
        rt.on_user_compile()
    hook.begin(module, args, kwargs)
    whole = rt.whole is not None and rt.whole.eligible(hook) and rt.computes_everything()
    if whole:
        rt.in_call = False
        rt.whole.enter()
    return whole


def _whole_forward(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The transformer's class forward (``_WholeCall.eligible``: what the step hook wraps), traced whole."""
    return type(module).forward(module, *args, **kwargs)


#: the component outputs of the call traced whole, as (module, output) in call order: appended inside the
#: graph (a side effect dynamo replays), read by ``_end_whole_call``. Module-level, so no guard names a handle
#: (one traced-whole call at a time per process, as the step tracker assumes of each model anyway).
_WHOLE_OUTS: list[tuple[torch.nn.Module, Any]] = []


_CAPTURES: dict[type, Callable[..., Any]] = {}


def _capture_forward(cls: type) -> Callable[..., Any]:
    """The forward of ``cls``'s components during a call traced whole: the class forward, the output kept for
    the cache. One function per class, made once (dynamo cannot call ``type(self).forward`` of every class)."""
    if cls not in _CAPTURES:
        forward = cls.forward

        def capture(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
            out = forward(self, *args, **kwargs)
            _WHOLE_OUTS.append((self, out))
            return out

        _CAPTURES[cls] = capture
    return _CAPTURES[cls]


#: residual step reuse in a call traced whole: (block, its hidden-state input, its output) of the first and the
#: last block, kept like ``_WHOLE_OUTS`` so ``_end_whole_call`` can store the stack residuals.
_WHOLE_STACK: list[tuple[torch.nn.Module, Any, Any]] = []
_BLOCK_CAPTURES: dict[type, Callable[..., Any]] = {}


def _capture_block(cls: type) -> Callable[..., Any]:
    """The forward of the first and last block during a call traced whole under residual step reuse: the class
    forward, its input and output kept for the stack residuals (``ditaccel.caching.stack``)."""
    if cls not in _BLOCK_CAPTURES:
        forward = cls.forward

        def capture_block(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
            out = forward(self, *args, **kwargs)
            _WHOLE_STACK.append((self, block_input(args, kwargs), out))
            return out

        _BLOCK_CAPTURES[cls] = capture_block
    return _BLOCK_CAPTURES[cls]


@torch.compiler.disable
def _end_whole_call(module: torch.nn.Module) -> None:
    """After a call traced whole: cache (and count) the component outputs and any stack residuals, put the
    hooks back."""
    rt = module._diffusers_hook.get_hook(_STEP_HOOK_NAME).rt
    whole = rt.whole
    for m, out in _WHOLE_OUTS:
        if id(m) in whole.keys:  # a hooked one (a lean handle's others are counted bare)
            rt.computed(*whole.keys[id(m)], out)
    if rt.stack is not None and _WHOLE_STACK:
        first, last = whole.stack_blocks[0], whole.stack_blocks[-1]
        seen = {id(b): (h, out) for b, h, out in _WHOLE_STACK}
        tail_input = seen[id(first)][1] if first is not last else None
        rt.stack.store(rt.caches[rt.context], seen[id(first)][0], tail_input, seen[id(last)][1])
    whole.exit()
    rt.end_call()


class _WholeCall:
    """Makes a scheduled model look unhooked for one call that the user's compile traces whole.

    Why: a graph traced through the hooks guards on the hook objects, so every new handle (the
    search applies one per candidate) would recompile the whole model. For the call, each component's
    forward, hooked or not (a lean handle leaves some bare: the graph must not depend on which), becomes
    ``_capture_forward`` (one function per class, bound per call) and each fast-path block gets its previous
    forward back; ``exit`` restores both (idempotent).
    """

    def __init__(self, rt: _Runtime, fast_blocks: list[tuple[torch.nn.Module, Callable[..., Any]]]) -> None:
        self.rt = rt
        self.components = [(rt.adapter.component_module(b, c), (b, c)) for b, c, _ in rt.adapter.component_paths()]
        hooked = set(rt.hooked)
        self.keys = {id(m): key for m, key in self.components if key in hooked}
        self.fast_blocks = fast_blocks
        self.stack_blocks = [spec.module for spec in rt.adapter.blocks]
        self.saved: list[tuple[torch.nn.Module, Any]] = []
        self.saved_blocks: list[tuple[torch.nn.Module, Any]] = []
        self.saved_stack: list[tuple[torch.nn.Module, Any]] = []

    def eligible(self, hook: _StepHook) -> bool:
        """Whether bypassing the hooks skips nothing but ditaccel's: the transformer's hook wraps its class
        forward, each component runs its class forward (or ``compile_components``') beneath the cache hook,
        and under residual step reuse each block holds the stack hook only."""
        if hook.rt.stack is not None and not all(_plain_block(b) for b in self.stack_blocks):
            return False
        return _class_forward(hook.fn_ref.original_forward, hook.rt.adapter.transformer) and all(
            plain_component(m, HOOK_NAME) and (_class_forward(fn := Slot(m).get(), m) or is_compiled_forward(fn))
            for m, _ in self.components)

    def enter(self) -> None:
        _WHOLE_OUTS.clear()
        _WHOLE_STACK.clear()
        self.saved = [(m, m.__dict__.get("forward")) for m, _ in self.components]  # the cache hooks' forwards
        self.saved_blocks = [(block, Slot(block).get()) for block, _ in self.fast_blocks]
        for m, _ in self.components:
            m.forward = types.MethodType(_capture_forward(type(m)), m)
        for block, prev in self.fast_blocks:
            Slot(block).set(prev)
        if self.rt.stack is not None:  # the stack hooks' forwards: the ends capture, the others run their own
            blocks = self.stack_blocks
            self.saved_stack = [(b, b.__dict__.pop("forward")) for b in blocks]
            for b in {id(blocks[0]): blocks[0], id(blocks[-1]): blocks[-1]}.values():
                b.forward = types.MethodType(_capture_block(type(b)), b)

    def exit(self) -> None:
        for m, fn in self.saved:
            if fn is None:
                m.__dict__.pop("forward", None)  # bare: back to its class forward
            else:
                m.forward = fn
        for block, fast in self.saved_blocks:
            Slot(block).set(fast)
        for block, fn in self.saved_stack:
            block.forward = fn
        self.saved, self.saved_blocks, self.saved_stack = [], [], []
        _WHOLE_OUTS.clear()
        _WHOLE_STACK.clear()


def _plain_block(block: torch.nn.Module) -> bool:
    """A block whose only wrapper is the stack hook, over its class forward (no offload hook, no fast block)."""
    reg = getattr(block, "_diffusers_hook", None)
    return (reg is not None and list(reg.hooks) == [STACK_HOOK_NAME] and not hasattr(block, "_hf_hook")
            and "forward" in block.__dict__)


def _class_forward(fn: Any, module: torch.nn.Module) -> bool:
    return getattr(fn, "__self__", None) is module and getattr(fn, "__func__", None) is type(module).forward


@torch.compiler.disable
def _escape_user_compile(hook: _StepHook, args: tuple, kwargs: dict) -> Any:
    """Run a scheduled transformer call that skips some components while the user's ``torch.compile``
    is tracing it: the call leaves the graph here (before any compute) and runs with the block
    variants or components compiled by ditaccel (``ditaccel.caching.compile``), the decisions in Python.
    A whole-transformer graph could only skip components with a graph break or a recompile per pattern.
    """
    return hook.run(args, kwargs)


@torch.compiler.disable
def _decide_outside_graph(hook: _ComponentHook, args: tuple, kwargs: dict) -> Any:
    """One component inside a user-compiled region (e.g. ``compile_repeated_blocks``): a graph break
    here, but no guard on the step, so no recompiles."""
    if hook.rt.on_user_compile is not None:
        hook.rt.on_user_compile()
    return hook.call(args, kwargs)


def _register(module: torch.nn.Module, hook: ModelHook, name: str) -> tuple[torch.nn.Module, bool, bool]:
    had_registry = hasattr(module, "_diffusers_hook")
    had_forward = "forward" in module.__dict__
    registry = HookRegistry.check_if_exists_or_initialize(module)
    if registry.get_hook(name) is not None:
        raise ScheduleError(
            f"a ditaccel cache schedule is already applied to {type(module).__name__}; "
            f"call handle.remove() first"
        )
    with beneath_offload_hook(module):  # under enable_model_cpu_offload, accelerate's hook stays outermost
        registry.register_hook(hook, name)
    return module, had_registry, had_forward


def unregister_hook(module: torch.nn.Module, name: str, had_registry: bool, had_forward: bool) -> None:
    """Remove one diffusers hook and, once none is left, what registering hooks added to ``module``."""
    registry = getattr(module, "_diffusers_hook", None)
    if registry is None:
        return
    with beneath_offload_hook(module):
        registry.remove_hook(name, recurse=False)
        if not registry.hooks:
            if not had_forward and "forward" in module.__dict__ and not is_compiled_forward(module.forward):
                del module.__dict__["forward"]  # a forward compiled by compile_components stays
            if not had_registry:
                del module._diffusers_hook


class CacheHandle:
    """What ``apply_schedule`` returns: remove it (or leave its ``with`` block) to restore the model."""

    def __init__(self, adapter: Adapter, schedule: CacheSchedule, compile: bool | dict[str, Any] | None = None,
                 fast_path: bool = True, lean: bool = True) -> None:
        self.adapter = adapter
        self.schedule = schedule
        self.lean = lean
        self._rt = _Runtime(adapter, schedule)
        self._installed: list[tuple[torch.nn.Module, str, bool, bool]] = []
        self._fast_blocks: list[tuple[torch.nn.Module, Callable[..., Any]]] = []
        self._compiled: CompiledComponents | None = None
        self._compile_options = compile if isinstance(compile, dict) else {}
        if compile is None:
            self._rt.on_user_compile = self.compile_components
        t = adapter.transformer
        try:
            m, reg, fwd = _register(t, _StepHook(self._rt, t), _STEP_HOOK_NAME)
            self._installed.append((m, _STEP_HOOK_NAME, reg, fwd))
            reads = self._reads(schedule) if lean else None
            for b, c, _path in adapter.component_paths():
                if reads is not None and not reads[b, c]:
                    continue  # no step reads its cache: it runs as the model's own
                mod = adapter.component_module(b, c)
                m, reg, fwd = _register(mod, _ComponentHook(self._rt, b, c), HOOK_NAME)
                self._installed.append((m, HOOK_NAME, reg, fwd))
                self._rt.hooked.append((b, c))
            if fast_path:
                self._fast_blocks = _install_fast_blocks(self._rt)
                if compile is None and self._fast_blocks:
                    fast = Slot(self._fast_blocks[0][0]).get()  # a _FastBlock: its components are plain modules
                    self._rt.follow_compiled = next((m for m in fast.components if m is not None), None)
            self._rt.whole = _WholeCall(self._rt, self._fast_blocks)
            if schedule.residual:
                self._install_stack()
            self._rt.count_bare(schedule.residual)
            self._invalidate()
            if compile is not None and compile is not False:
                self.compile_components()
        except BaseException:
            self.remove()
            raise

    def _reads(self, schedule: CacheSchedule) -> np.ndarray:
        """[blocks, components] the slots of this model that ``schedule`` reads from cache (a lean handle's hooks)."""
        return cache_reads(schedule.bits, schedule.residual, self.adapter.slots())

    def _install_stack(self) -> None:
        """Residual step reuse (``ditaccel.caching.stack``): one hook per block, outside the component hooks."""
        stack = self._rt.stack = StackState(self._rt)
        blocks = [spec.module for spec in self.adapter.blocks]
        for i, blk in enumerate(blocks):
            m, reg, fwd = _register(blk, StackHook(stack, i == 0, i == len(blocks) - 1), STACK_HOOK_NAME)
            self._installed.append((m, STACK_HOOK_NAME, reg, fwd))

    def _remove_stack(self) -> None:
        """Unregister the residual-reuse block hooks. Why before the fast blocks go: the hooks were registered
        over a ``_FastBlock`` forward, so unregistering them puts that back, and ``_remove_fast_blocks`` then
        leaves the block without a ``forward`` attribute, as it found it (else a stale bound method stays)."""
        if self._rt.stack is None:
            return
        stack = [e for e in self._installed if e[1] == STACK_HOOK_NAME]
        for module, name, had_registry, had_forward in reversed(stack):
            unregister_hook(module, name, had_registry, had_forward)
        self._installed = [e for e in self._installed if e[1] != STACK_HOOK_NAME]
        self._rt.stack = None
        self._invalidate()

    def compile_components(self) -> None:
        """Compile the cacheable components (``ditaccel.caching.compile``) and, where blocks have the
        fast path, one whole-block graph per cache pattern (``BlockVariants``), until ``remove()``; idempotent."""
        if self._compiled is None:
            self._rt.follow_compiled = None  # this handle's own compile decides from now on
            self._compiled = compile_components(self.adapter.transformer, **self._compile_options)
            if self._fast_blocks:
                self._rt.variants = BlockVariants(self._compile_options)

    # -- lifecycle ---------------------------------------------------------------------------
    def remove(self) -> None:
        """Unregister every hook and delete what registration added; frees the caches."""
        if self._compiled is not None:
            self._compiled.remove()
            self._compiled = None
        self._rt.variants = None
        self._rt.follow_compiled = None
        if self._rt.whole is not None:
            self._rt.whole.exit()
        self._remove_stack()  # before the fast blocks: its hooks wrap them (see _remove_stack)
        _remove_fast_blocks(self._fast_blocks)
        self._fast_blocks = []
        for module, name, had_registry, had_forward in reversed(self._installed):
            unregister_hook(module, name, had_registry, had_forward)
        self._installed = []
        self._rt.reset()
        self._invalidate()

    def _invalidate(self) -> None:
        # diffusers caches the list of child registries on the parent registry; ours came and went.
        reg = getattr(self.adapter.transformer, "_diffusers_hook", None)
        if reg is not None:
            reg.invalidate_child_registries_cache()

    @property
    def active(self) -> bool:
        return bool(self._installed)

    def __enter__(self) -> CacheHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # -- state for the search ----------------------------------------------------------------
    @property
    def counts(self) -> np.ndarray:
        """Executions per (block, component) since apply or ``reset_counts`` (a copy)."""
        return self._rt.counts.copy()

    def reset_counts(self) -> None:
        self._rt.counts[:] = 0

    @property
    def step(self) -> int:
        """Step index of the latest transformer call (-1 before the first)."""
        return self._rt.step

    @property
    def context(self) -> int:
        """Call context of the latest call within its step (0 = first call, e.g. cond)."""
        return self._rt.context

    def reset(self) -> None:
        """Forget the step tracker and free every cached output."""
        self._rt.reset()

    def snapshot(self) -> CacheState:
        """The step tracker and cached outputs now (tensors shared, dicts copied)."""
        rt = self._rt
        return CacheState(rt.step, rt.context, rt.tracker.last_t, [dict(c) for c in rt.caches])

    def restore(self, state: CacheState) -> None:
        """Return to a ``snapshot``; the state stays reusable."""
        rt = self._rt
        rt.tracker.restore((state.step, state.context, state.last_t))
        rt.caches = [dict(c) for c in state.caches]

    def set_schedule(self, schedule: CacheSchedule) -> None:
        """Swap the bits (same model, same step count), keeping the caches and the tracker."""
        schedule.validate_for(self.adapter.transformer)
        if schedule.steps != self.schedule.steps:
            raise ScheduleError(
                f"new schedule has {schedule.steps} steps, the applied one {self.schedule.steps}; "
                f"resample it first"
            )
        if self.lean:
            reads = self._reads(schedule)
            missing = set(zip(*np.nonzero(reads), strict=True)) - set(self._rt.hooked)
            if missing:
                b, c = min(missing)
                raise ScheduleError(
                    f"this handle hooks only the components its schedule reads from cache, and the new one also "
                    f"reads block {b} {self.adapter.component_names[c]}; apply with lean=False to swap schedules"
                )
        self.schedule = schedule
        self._rt.bits = schedule.bits
        self._rt.count_bare(schedule.residual)
        if self._rt.stack is None and schedule.residual:
            self._install_stack()
            self._invalidate()
        elif self._rt.stack is not None and not schedule.residual:
            self._remove_stack()  # its block hooks would keep whole steps out of the user's compiled graph
        elif self._rt.stack is not None:
            self._rt.stack.set_bits(schedule.bits, True)


def apply_schedule(
    pipe_or_transformer: Any, schedule: CacheSchedule, compile: bool | dict[str, Any] | None = None,
    fast_path: bool = True, lean: bool = True,
) -> CacheHandle:
    """Install ``schedule`` on a pipeline's transformer (or a bare one) and return the handle.

    The model's weights and classes are untouched; ``handle.remove()`` restores it exactly.
    ``compile``: True (or a dict of ``torch.compile`` options) compiles the cacheable components
    now (``ditaccel.caching.compile``); None (default) does so when the user's
    ``torch.compile(transformer)`` first traces a scheduled call; False never does.
    ``fast_path``: use the adapter's cached-block forward where it has one (same outputs, less
    work); False hooks the components only.
    ``lean``: hook only the components whose cached output some step reads (``stack.cache_reads``);
    the others run as the model's own (same outputs) and ``counts`` adds them by the schedule. False hooks
    every component, as the search's prefix sharing needs (``set_schedule`` to any candidate).
    """
    if not isinstance(schedule, CacheSchedule):
        raise ScheduleError(
            f"apply_schedule needs a CacheSchedule, got {type(schedule).__name__}; "
            f"use CacheSchedule.load(path) or ditaccel.presets"
        )
    schedule.validate_for(pipe_or_transformer)
    return CacheHandle(get_adapter(pipe_or_transformer), schedule, compile, fast_path, lean)
