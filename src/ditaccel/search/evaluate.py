"""Generate a population's images cheaply: each shared schedule prefix is computed once.

Why it works: candidates whose recompute bits agree on steps 0..k-1 feed the transformer the
same latents and hold the same caches up to step k, so their transformer outputs there are
identical. We run the real pipeline (so every family's own loop, scheduler and VAE are used)
once per candidate, in lexicographic order of their bits, with one extra outermost hook on the
transformer:

- while a candidate is still on the path the previous one took, the hook returns the stored
  transformer output of that (step, call context) without running the transformer;
- at the first step where it leaves the path, the hook restores the cache runtime to the
  snapshot taken after the last shared step (``CacheHandle.snapshot/restore``) and the
  transformer runs for real from there, storing outputs for the candidates that follow.

Sorting makes the candidates a depth-first walk of the trie of their prefixes, so each trie
node is computed once, and a snapshot is kept only where a later candidate branches off.
The images are bit-identical to evaluating each candidate alone; ``tests/test_search.py``
checks that. Block-component executions are counted from the runtime's counters: ``live``
(done) and ``alone`` (what separate evaluation would have done).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers.hooks import HookRegistry, ModelHook

from ditaccel.caching import CacheSchedule, apply_schedule
from ditaccel.caching.schedule import effective_bits
from ditaccel.caching.steps import StepTracker, timestep_reader
from ditaccel.errors import DitaccelError
from ditaccel.models import get_adapter, get_transformer
from ditaccel.pipeline import generate_images, pipeline_call_kwargs

_MEMO_HOOK = "ditaccel_search_prefix"


def common_steps(a: np.ndarray, b: np.ndarray) -> int:
    """Number of leading steps on which two [steps, blocks, components] bit arrays agree."""
    differ = np.flatnonzero((a != b).reshape(a.shape[0], -1).any(axis=1))
    return int(differ[0]) if differ.size else int(a.shape[0])


@dataclass
class EvalStats:
    """Work done for one batch of candidates, in block-component executions and transformer calls."""

    candidates: int = 0
    components_live: int = 0
    components_alone: int = 0
    calls_live: int = 0
    calls_alone: int = 0
    per_candidate_live: list[int] = field(default_factory=list)
    per_candidate_alone: list[int] = field(default_factory=list)

    @property
    def saving(self) -> float:
        """Separate-evaluation work over the work done (1.0 = no sharing)."""
        return self.components_alone / self.components_live if self.components_live else 1.0

    def merge(self, other: EvalStats) -> None:
        self.candidates += other.candidates
        self.components_live += other.components_live
        self.components_alone += other.components_alone
        self.calls_live += other.calls_live
        self.calls_alone += other.calls_alone
        self.per_candidate_live += other.per_candidate_live
        self.per_candidate_alone += other.per_candidate_alone

    def to_dict(self) -> dict[str, Any]:
        return {"candidates": self.candidates, "components_live": self.components_live,
                "components_alone": self.components_alone, "calls_live": self.calls_live,
                "calls_alone": self.calls_alone, "saving": round(self.saving, 4)}


@dataclass
class _Node:
    """One computed step of the current trie path: outputs per call context and their cost."""

    outputs: list[Any] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    snapshot: Any = None


def _clone(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, tuple):
        return tuple(_clone(o) for o in out)
    if isinstance(out, list):
        return [_clone(o) for o in out]
    if isinstance(out, dict):
        return type(out)((k, _clone(v)) for k, v in out.items())
    if hasattr(out, "to_tuple"):  # diffusers BaseOutput
        return type(out)(**{k: _clone(v) for k, v in out.items()})
    return out


class _PrefixMemo(ModelHook):
    """Outermost hook on the transformer: replay stored outputs on the shared prefix, else compute."""

    def __init__(self, handle: Any, transformer: torch.nn.Module) -> None:
        super().__init__()
        self.handle = handle
        self._timestep = timestep_reader(transformer)
        self.tracker = StepTracker()
        self.stack: list[_Node] = []
        self.begin(0, set())

    def begin(self, shared: int, snapshot_steps: set[int]) -> None:
        """Before a candidate's pipeline call: it shares ``shared`` steps with the stored path."""
        self.shared = shared
        self.snapshot_steps = snapshot_steps
        self.tracker.reset()
        self.live = False
        self.live_components = self.alone_components = self.live_calls = self.alone_calls = 0

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        t = self._timestep(args, kwargs)
        if t is None:
            raise DitaccelError(f"{type(module).__name__} was called without a timestep; cannot share prefixes")
        self.tracker.advance(t)
        s, c = self.tracker.step, self.tracker.context
        if not self.live and s < self.shared and c < len(self.stack[s].outputs):
            node = self.stack[s]
            self.alone_components += node.counts[c]
            self.alone_calls += 1
            return _clone(node.outputs[c])
        if not self.live:  # leave the stored path: runtime state after step s-1, path cut at s
            self.live = True
            del self.stack[s:]
            if s > 0:
                self.handle.restore(self.stack[s - 1].snapshot)
            else:
                self.handle.reset()
        elif c == 0 and s - 1 in self.snapshot_steps:
            self.stack[s - 1].snapshot = self.handle.snapshot()
        if c == 0:
            self.stack.append(_Node())
        before = int(self.handle.counts.sum())
        out = self.fn_ref.original_forward(*args, **kwargs)
        done = int(self.handle.counts.sum()) - before
        node = self.stack[s]
        node.outputs.append(_clone(out))
        node.counts.append(done)
        self.live_components += done
        self.alone_components += done
        self.live_calls += 1
        self.alone_calls += 1
        return out


def _snapshot_plan(lcp: Sequence[int]) -> list[set[int]]:
    """For each candidate in order, the steps after which it must snapshot the runtime.

    ``lcp[i]`` = steps shared by candidates i and i+1. Candidate j+1 restores the state after
    step lcp[j]-1 on the path it shares with j; the first candidate to compute that node live is
    the earliest i whose running minimum of lcp[i..j] equals lcp[j].
    """
    n = len(lcp) + 1
    plan: list[set[int]] = [set() for _ in range(n)]
    for i in range(n - 1):
        run = None
        for j in range(i, n - 1):
            run = lcp[j] if run is None else min(run, lcp[j])
            if run == 0:
                break
            if lcp[j] == run:
                plan[i].add(run - 1)
    return plan


class PrefixEvaluator:
    """Images of many schedules for fixed prompts x seeds, sharing common schedule prefixes.

    ``share=False`` evaluates each candidate alone (plain ``apply_schedule`` + pipeline call),
    the reference the shared path must match bit for bit.
    """

    def __init__(self, pipe: Any, prompts: Sequence[str], seeds: Sequence[int], batch_size: int = 64,
                 call_kwargs: dict[str, Any] | None = None) -> None:
        if len(prompts) != len(seeds):
            raise DitaccelError(f"got {len(prompts)} prompts but {len(seeds)} seeds; pass one seed per prompt")
        if batch_size < 1:
            raise DitaccelError(f"batch size must be >= 1, got {batch_size}")
        self.pipe = pipe
        self.prompts, self.seeds = list(prompts), [int(s) for s in seeds]
        self.batch_size = batch_size
        self.kwargs = pipeline_call_kwargs(pipe, **(call_kwargs or {}))
        self.adapter = get_adapter(pipe)

    # -- public ------------------------------------------------------------------------------
    def images(self, schedules: Sequence[CacheSchedule], share: bool = True,
               on_done: Callable[[int], None] | None = None) -> tuple[list[list[np.ndarray]], EvalStats]:
        """uint8 images per schedule (in the given order) and the work it took."""
        if not schedules:
            return [], EvalStats()
        for s in schedules:
            s.validate_for(self.pipe)
        if share and len({s.step_reuse for s in schedules}) > 1:  # equal bits, other reuse: other images
            raise DitaccelError("schedules that share prefixes must have one step_reuse; evaluate the "
                                "components and residual ones in separate calls")
        out: list[list[np.ndarray]] = [[] for _ in schedules]
        stats = EvalStats(candidates=len(schedules))
        live = np.zeros(len(schedules), dtype=np.int64)
        alone = np.zeros(len(schedules), dtype=np.int64)
        run = self._shared if share else self._alone
        for start in range(0, len(self.prompts), self.batch_size):
            ps = self.prompts[start:start + self.batch_size]
            ss = self.seeds[start:start + self.batch_size]
            run(schedules, ps, ss, out, stats, live, alone, on_done if start + self.batch_size >= len(self.prompts)
                else None)
        stats.per_candidate_live = [int(x) for x in live]
        stats.per_candidate_alone = [int(x) for x in alone]
        return out, stats

    # -- internals ---------------------------------------------------------------------------
    def _call(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[np.ndarray]:
        return generate_images(self.pipe, prompts, seeds, batch_size=len(prompts), **self.kwargs)

    def _alone(self, schedules: Sequence[CacheSchedule], ps: Sequence[str], ss: Sequence[int],
               out: list[list[np.ndarray]], stats: EvalStats, live: np.ndarray, alone: np.ndarray,
               on_done: Callable[[int], None] | None) -> None:
        for i, sched in enumerate(schedules):
            with apply_schedule(self.pipe, sched) as h:
                calls = _CallCounter(get_transformer(self.pipe))
                try:
                    out[i].extend(self._call(ps, ss))
                finally:
                    calls.remove()
                n = int(h.counts.sum())
            live[i] += n
            alone[i] += n
            stats.components_live += n
            stats.components_alone += n
            stats.calls_live += calls.n
            stats.calls_alone += calls.n
            if on_done:
                on_done(1)

    def _shared(self, schedules: Sequence[CacheSchedule], ps: Sequence[str], ss: Sequence[int],
                out: list[list[np.ndarray]], stats: EvalStats, live: np.ndarray, alone: np.ndarray,
                on_done: Callable[[int], None] | None) -> None:
        eff = [effective_bits(s.bits) for s in schedules]
        order = sorted(range(len(schedules)), key=lambda i: eff[i].tobytes())
        lcp = [common_steps(eff[a], eff[b]) for a, b in zip(order, order[1:], strict=False)]
        plan = _snapshot_plan(lcp)
        transformer = get_transformer(self.pipe)
        handle = apply_schedule(self.pipe, schedules[order[0]], lean=False)  # set_schedule to any candidate
        memo = _PrefixMemo(handle, transformer)
        registry = HookRegistry.check_if_exists_or_initialize(transformer)
        registry.register_hook(memo, _MEMO_HOOK)
        encode = _memoize_encode(self.pipe)
        try:
            for k, i in enumerate(order):
                handle.set_schedule(schedules[i])
                memo.begin(lcp[k - 1] if k > 0 else 0, plan[k])
                out[i].extend(self._call(ps, ss))
                live[i] += memo.live_components
                alone[i] += memo.alone_components
                stats.components_live += memo.live_components
                stats.components_alone += memo.alone_components
                stats.calls_live += memo.live_calls
                stats.calls_alone += memo.alone_calls
                if on_done:
                    on_done(1)
        finally:
            encode()
            registry.remove_hook(_MEMO_HOOK, recurse=False)
            memo.stack.clear()
            handle.remove()


class _CallCounter:
    """Counts transformer calls through a plain forward pre-hook."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.n = 0

        def hook(*_: Any) -> None:
            self.n += 1

        self._h = module.register_forward_pre_hook(hook)

    def remove(self) -> None:
        self._h.remove()


def _memoize_encode(pipe: Any) -> Callable[[], None]:
    """Encode each batch's prompts once for all candidates (text encoding does not depend on the schedule).

    Returns the function that undoes it. Pipelines without ``encode_prompt`` are left alone.
    """
    original = getattr(pipe, "encode_prompt", None)
    if original is None or "encode_prompt" in pipe.__dict__:
        return lambda: None
    memo: dict[str, Any] = {}

    def encode_prompt(*args: Any, **kwargs: Any) -> Any:
        if any(isinstance(v, torch.Tensor) for v in (*args, *kwargs.values())):
            return original(*args, **kwargs)
        key = repr((args, sorted(kwargs.items())))
        if key not in memo:
            memo[key] = original(*args, **kwargs)
        return _clone(memo[key])

    pipe.encode_prompt = encode_prompt

    def undo() -> None:
        pipe.__dict__.pop("encode_prompt", None)

    return undo
