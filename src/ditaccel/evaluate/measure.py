"""Measuring a method: wall-clock time, peak memory, executed MACs, weight bytes.

Why executed MACs are counted: schedule rows have exact analytic MACs (``schedule_macs``), but
dynamic peers (FirstBlockCache, MagCache, FasterCache, cache-dit) decide at run time what to
skip. A pre-hook on the first Linear of every cacheable sub-module fires only when that
sub-module really runs (a cached sub-module returns before reaching its Linears), so counting
those calls, weighted by the batch they saw, gives the MACs the method actually spent, priced
by the same adapter costs ``schedule_macs`` uses.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

from ditaccel._machine import machine_description  # noqa: F401  (re-exported)
from ditaccel.models import get_adapter, vae_factor


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _trim_heap() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory of a block: ``torch.cuda.max_memory_allocated`` on GPU; on CPU the peak RSS
    above the RSS at entry (after ``malloc_trim``), sampled every 2 ms: what the call itself
    needed (activations, caches, temporarily dequantized weights)."""

    def __init__(self, device: str | torch.device) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.peak = 0
        self.kind = "cuda_max_allocated" if self.cuda else "cpu_rss_above_start"

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return self
        _trim_heap()  # hand freed heap pages back, so RSS growth below is this call's own memory
        self._start = _rss_bytes()
        self._max = self._start
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                self._max = max(self._max, _rss_bytes())
                self._stop.wait(0.002)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = int(torch.cuda.max_memory_allocated())
            return
        self._stop.set()
        self._thread.join()
        self._max = max(self._max, _rss_bytes())
        self.peak = int(self._max - self._start)


class Timing(NamedTuple):
    """Wall-clock seconds, and the calling thread's CPU seconds (None on CUDA or with several torch threads).

    Why both: users pay the wall clock, but on cores shared with other jobs the wall clock of a
    single-threaded run (``torch.set_num_threads(1)``: all the work is on this thread) swings by
    tens of percent with the neighbours' load, while its thread CPU time counts only its own work.
    """

    wall: float
    cpu: float | None


def timed(fn: Callable[[], Any], device: str | torch.device) -> Timing:
    """Time ``fn``, synchronising CUDA around it."""
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.thread_time()
    fn()
    if cuda:
        torch.cuda.synchronize()
    # with more than one torch thread the work is spread over threads this clock does not see
    own = not cuda and torch.get_num_threads() == 1
    return Timing(time.perf_counter() - t0, time.thread_time() - c0 if own else None)


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def _first_linear(module: torch.nn.Module) -> torch.nn.Module | None:
    for m in module.modules():
        if hasattr(m, "in_features") and hasattr(m, "out_features"):
            return m
    return None


class MacCounter:
    """Executed transformer MACs while active (see module docstring).

    ``reference`` is the full-precision transformer whose adapter prices the components; the
    counted modules are those of ``pipe.transformer`` (a quantized copy has the same layout).
    """

    def __init__(self, pipe: Any, reference: torch.nn.Module | None = None) -> None:
        self.pipe = pipe
        self.ref_adapter = get_adapter(reference if reference is not None else pipe)
        self.adapter = get_adapter(pipe)
        self.vae = vae_factor(pipe)
        self.total = 0
        self.calls = 0
        self._hooks: list[Any] = []
        self._ctx: tuple[int, int] | None = None
        self._costs: dict[tuple[int, int], np.ndarray] = {}

    def _price(self, n_img: int, n_txt: int) -> np.ndarray:
        key = (n_img, n_txt)
        if key not in self._costs:
            self._costs[key] = self.ref_adapter.component_macs(1, n_img, n_txt)
        return self._costs[key]

    def __enter__(self) -> MacCounter:
        t = self.adapter.transformer

        def on_call(_m: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            x = kwargs.get("hidden_states", args[0] if args else None)
            ctx = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
            batch = int(x.shape[0])
            if x.ndim == 4:  # [B, C, H, W] latents
                n_img = self.ref_adapter.image_tokens(x.shape[2] * self.vae, x.shape[3] * self.vae, self.vae)
            else:  # packed tokens (FLUX)
                n_img = int(x.shape[1])
            n_txt = int(ctx.shape[1]) if isinstance(ctx, torch.Tensor) and ctx.ndim == 3 else \
                self.ref_adapter.default_text_len(self.pipe)
            self._ctx = (n_img, n_txt)
            self.calls += 1
            self.total += self.ref_adapter.rest_macs(batch, n_img, n_txt)

        self._hooks.append(t.register_forward_pre_hook(on_call, with_kwargs=True))
        for b, c, _ in self.adapter.component_paths():
            lin = _first_linear(self.adapter.component_module(b, c))
            if lin is None:
                continue

            def on_component(_m: torch.nn.Module, args: tuple, b: int = b, c: int = c) -> None:
                if self._ctx is None or not args or not isinstance(args[0], torch.Tensor):
                    return
                rows = args[0]
                batch = int(rows.shape[0]) if rows.ndim >= 3 else 1
                self.total += int(self._price(*self._ctx)[b, c]) * batch

            self._hooks.append(lin.register_forward_pre_hook(on_component))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


def transformer_weight_bytes(transformer: torch.nn.Module) -> int:
    """Bytes of the transformer's parameters and buffers (packed codes + scales when quantized)."""
    from ditaccel.quant import weight_bytes

    return int(weight_bytes(transformer))


def generation_macs(pipe: Any, run: Callable[[], Any],
                    reference: torch.nn.Module | None = None) -> tuple[int, int, int | None]:
    """(executed transformer MACs, transformer calls, text tokens seen) of ``run()``."""
    with MacCounter(pipe, reference) as mc:
        run()
    return mc.total, mc.calls, (mc._ctx[1] if mc._ctx else None)
