"""Who evaluates a generation: this process, or Ray workers that each load the pipeline once.

Both take the same list of new schedules and return, per schedule, its quality and the
block-component executions it cost. Images never leave the evaluating process. Because prefix
sharing is bit-identical to separate evaluation, splitting a generation across workers cannot
change any image, so the Ray path gives the in-process frontier exactly.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ditaccel.caching import CacheSchedule, apply_schedule, presets
from ditaccel.errors import DitaccelError
from ditaccel.metrics import get_metric
from ditaccel.search.evaluate import EvalStats, PrefixEvaluator, effective_bits


class LocalBackend:
    """Evaluates schedules in this process with prefix sharing."""

    def __init__(self, pipe: Any, prompts: Sequence[str], seeds: Sequence[int], batch_size: int,
                 call_kwargs: dict[str, Any], metric: str, metric_paths: dict[str, Any], steps: int,
                 cost: str = "macs", share: bool = True, tiebreak: str | None = None,
                 step_reuse: str = "components") -> None:
        self.pipe = pipe
        self.step_reuse = step_reuse
        self.prompts = list(prompts)
        self.metric = get_metric(metric, device=str(pipe.device), **metric_paths)  # learned scorers beside the model
        self.tiebreak = get_metric(tiebreak) if tiebreak else None
        self.ev = PrefixEvaluator(pipe, prompts, seeds, batch_size, call_kwargs)
        self.steps = steps
        self.cost = cost
        self.share = share
        self._refs: list[np.ndarray] | None = None

    def references(self) -> list[np.ndarray]:
        """The uncached images (all-recompute is bit-identical to no hooks), computed once."""
        if self._refs is None:
            imgs, _ = self.ev.images([presets.none(self.pipe, steps=self.steps)], share=False)
            self._refs = imgs[0]
        return self._refs

    def _score(self, images: list[np.ndarray]) -> tuple[float, dict[str, Any], float | None]:
        refs = self.references() if self.metric.needs_reference or self.tiebreak is not None else None
        second = None if self.tiebreak is None else float(self.tiebreak.score(images, self.prompts, refs))
        return (float(self.metric.score(images, self.prompts, refs)),
                self.metric.details(images, self.prompts, refs), second)

    def latency(self, schedule: CacheSchedule, repeats: int = 2) -> float:
        """Best-of-``repeats`` seconds of one pipeline call on the first prompt under ``schedule``."""
        best = float("inf")
        with apply_schedule(self.pipe, schedule):
            for _ in range(repeats):
                t0 = time.perf_counter()
                self.ev._call(self.prompts[:1], self.ev.seeds[:1])
                best = min(best, time.perf_counter() - t0)
        return best

    def evaluate(self, bits: Sequence[np.ndarray], on_done: Callable[[int], None] | None = None,
                 ) -> tuple[list[dict[str, Any]], EvalStats]:
        scheds = [CacheSchedule.for_model(self.pipe, effective_bits(b), step_reuse=self.step_reuse) for b in bits]
        images, stats = self.ev.images(scheds, share=self.share, on_done=on_done)
        results = []
        for k, imgs in enumerate(images):
            q, details, second = self._score(imgs)
            r = {"quality": q, "details": details, "components": stats.per_candidate_live[k],
                 "components_alone": stats.per_candidate_alone[k]}
            if second is not None:
                r["tiebreak"] = second
            if self.cost == "latency":
                r["latency_s"] = self.latency(scheds[k])
            results.append(r)
        return results, stats

    def close(self) -> None:
        pass


def load_by_spec(loader: str, args: Sequence[Any]) -> Any:
    """Call ``"package.module:function"`` with ``args``: how a worker builds its own pipeline."""
    mod, _, fn = loader.partition(":")
    try:
        func = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError):
        raise DitaccelError(f"cannot import pipeline loader {loader!r}; use 'package.module:function'") from None
    return func(*args)


def load_for_worker(model: str | None, device: str = "cpu", quantized: str | None = None,
                    compile: bool = False, dtype: Any = "auto") -> Any:
    """What ``ditaccel search --model M --device D --dtype T --quantized Q [--compile]`` loads, rebuilt in a Ray worker."""
    from ditaccel.cli_common import build_model

    return build_model(model, device, dtype, quantized, compile)


class _Worker:
    """A Ray actor: loads the pipeline once, then evaluates chunks of generations."""

    def __init__(self, loader: str, loader_args: list[Any], kwargs: dict[str, Any], niceness: int | None = None) -> None:
        import os

        import torch

        if niceness is not None:  # Ray starts workers at niceness 15; here they do the work the driver would do
            try:
                os.setpriority(os.PRIO_PROCESS, 0, niceness)
            except (OSError, AttributeError):
                pass
        torch.set_num_threads(1)
        pipe = load_by_spec(loader, loader_args)
        self.backend = LocalBackend(pipe, **kwargs)

    def evaluate(self, bits: list[np.ndarray]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        results, stats = self.backend.evaluate(bits)
        return results, {"live": stats.components_live, "alone": stats.components_alone,
                         "calls_live": stats.calls_live, "calls_alone": stats.calls_alone}


def _balanced_chunks(costs: Sequence[int], order: Sequence[int], n: int) -> list[np.ndarray]:
    """Split ``order`` into at most ``n`` contiguous runs of about equal total cost (recomputed components).

    Contiguous in genome order keeps shared prefixes inside one worker; balancing by cost keeps
    one worker from finishing long before the other.
    """
    total = float(sum(costs)) or 1.0
    cum = np.cumsum(costs)
    cuts = [int(np.searchsorted(cum, total * k / n)) + 1 for k in range(1, n)]
    bounds = [0, *sorted({min(max(c, 1), len(order)) for c in cuts}), len(order)]
    out = [np.array(order[a:b], dtype=int) for a, b in zip(bounds, bounds[1:], strict=False)]
    return [c for c in out if len(c)]


def _own_niceness() -> int | None:
    import os

    try:
        return os.getpriority(os.PRIO_PROCESS, 0)
    except (OSError, AttributeError):
        return None


class RayBackend:
    """Spreads each generation over Ray actors, contiguous in genome order so prefixes stay shared."""

    def __init__(self, address: str, workers: int | None, loader: str, loader_args: list[Any],
                 kwargs: dict[str, Any]) -> None:
        try:
            import ray
        except ImportError:
            raise DitaccelError("--ray needs Ray; pip install 'ray[default]>=2.9'") from None
        self.ray = ray
        self._owns = False
        if not ray.is_initialized():
            if address in ("local", ""):
                ray.init(num_cpus=workers or 2, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            else:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
            self._owns = True
        res = ray.cluster_resources()
        gpus = int(res.get("GPU", 0))
        n = workers or gpus or int(res.get("CPU", 1))
        opts: dict[str, Any] = {"num_cpus": 1}
        if gpus:
            opts["num_gpus"] = 1
        actor = ray.remote(**opts)(_Worker)
        nice = _own_niceness() if address in ("local", "") else None
        self.workers = [actor.remote(loader, loader_args, kwargs, nice) for _ in range(max(1, n))]

    def evaluate(self, bits: Sequence[np.ndarray], on_done: Callable[[int], None] | None = None,
                 ) -> tuple[list[dict[str, Any]], EvalStats]:
        order = sorted(range(len(bits)), key=lambda i: effective_bits(bits[i]).tobytes())
        chunks = _balanced_chunks([int(effective_bits(bits[i]).sum()) for i in order], order, len(self.workers))
        refs = [w.evaluate.remote([bits[i] for i in c]) for w, c in zip(self.workers, chunks, strict=False)]
        results: list[dict[str, Any] | None] = [None] * len(bits)
        stats = EvalStats(candidates=len(bits))
        pending = dict(zip(refs, chunks, strict=True))
        while pending:
            done, _ = self.ray.wait(list(pending), num_returns=1)
            chunk = pending.pop(done[0])
            res, st = self.ray.get(done[0])
            for i, r in zip(chunk, res, strict=True):
                results[int(i)] = r
            stats.components_live += st["live"]
            stats.components_alone += st["alone"]
            stats.calls_live += st["calls_live"]
            stats.calls_alone += st["calls_alone"]
            if on_done:
                on_done(len(chunk))
        stats.per_candidate_live = [r["components"] for r in results]  # type: ignore[index]
        stats.per_candidate_alone = [r["components_alone"] for r in results]  # type: ignore[index]
        return results, stats  # type: ignore[return-value]

    def close(self) -> None:
        for w in self.workers:
            self.ray.kill(w)
        self.workers = []
        if self._owns:
            self.ray.shutdown()
