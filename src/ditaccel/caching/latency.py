"""A latency model of the device: a schedule's whole-pipeline seconds, predicted from a one-time profile.

Why: MACs overstate what caching saves. Every step still runs the embedders, each block's norms,
adaLN modulation, gates and residual adds, the final layer and the scheduler; every call runs the
text encoder and the VAE. On a small model (the bundled one, hidden 128) that always-run work is
as large as the cacheable components, so 5.56x fewer MACs measured 3.09x. The search should rank
schedules by what the user pays: seconds on the device it runs on.

The model::

    seconds(schedule) = fixed_s + steps * step_s + scale * sum(bits[s, b, c] * component_s[b, c])

- ``component_s[b, c]``: seconds one (block, slot) adds when it recomputes instead of reusing its
  cached output (its timed forward in an all-recompute call minus its cache-hit path in an
  all-cached call; medians over steps and calls), plus, where the block has the runtime's fast
  path (``Adapter.cached_block_forward``), its share (``Adapter.fast_block_glue``) of the block
  work that the fast path skips when everything is cached (norms, adaLN modulation): the block's
  timed saving minus its components' savings.
- ``step_s``: one step that recomputes nothing (transformer call with every component cached, the
  scheduler step, the pipeline's loop), timed between step starts of an all-cached call.
- ``fixed_s`` and ``scale``: a least-squares line through the whole calls timed while profiling
  (all-recompute, all-cached and a random schedule, interleaved), so overheads the per-part timings
  miss are absorbed. ``scale`` near 1 says the parts add up.
- ``stack_s``: what a step saves when a ``step_reuse="residual"`` schedule skips the whole block
  stack there (``ditaccel.caching.stack``) instead of running every block's glue around cached
  outputs: the all-cached call minus an all-skipped one, per step, from whole calls timed in the
  same rounds. Such a schedule's skip steps (step > 0, no bit set) each take ``stack_s`` off, and
  its tail skip steps (bits in block 0 only) the blocks-after-0 share of it, ``stack_s * (B-1)/B``.
- ``hook_s``: what one component call's cache hook costs. ``apply_schedule`` hooks only the slots some
  step reads from cache (``lean``), so a schedule's other slots run bare: each of their calls
  (``stack.unhooked_calls``) takes ``hook_s`` off. It is the all-recompute call hooked everywhere
  (``lean=False``) minus the same call bare, per component call. The parts are timed hooked
  everywhere, so ``step_s`` and ``component_s`` include the hooks; the plain calls of the line are
  timed as users run them (lean) and enter the fit with ``hook_s`` added back.

Profiles are cached per (model structure, device, threads, dtype, resolution, batch, call
arguments, steps) under ``$DITACCEL_LATENCY_CACHE`` (default ``~/.cache/ditaccel/latency``),
written atomically with a checksum; a corrupt or foreign file is re-measured, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ditaccel._io import CHECKSUM_KEY, atomic_write_checked_json, user_cache_dir, verify_checksum
from ditaccel.caching.runtime import apply_schedule
from ditaccel.caching.schedule import CacheSchedule, effective_bits
from ditaccel.caching.stack import skip_steps, tail_skip_steps, unhooked_calls
from ditaccel.errors import DitaccelError, ScheduleError
from ditaccel.models import get_adapter, get_transformer, image_size

FORMAT = "ditaccel.latency_profile"
VERSION = 4  # 2: components priced with the block fast path's skipped glue; 3: stack_s (residual step reuse);
# 4: hook_s (lean handles)
CACHE_ENV = "DITACCEL_LATENCY_CACHE"
PROFILE_PROMPT = "a red fox sitting in a green field"


@dataclass
class LatencyProfile:
    """Measured costs of one pipeline on one device; ``predict`` prices any schedule of its model."""

    key: dict[str, Any]
    component_s: np.ndarray
    step_s: float
    fixed_s: float
    scale: float
    steps: int
    runs: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    #: where one call's time goes (for reports; ``predict`` does not use it): text encoders and VAE
    #: decoder per call, transformer per step with everything computed / everything cached, and the
    #: rest of an all-cached step (scheduler, CFG, the pipeline's loop).
    parts: dict[str, float] = field(default_factory=dict)
    stack_s: float = 0.0
    hook_s: float = 0.0
    #: [blocks, slots] bool: the slots the model has (``Adapter.slots``), for counting bare calls; None: all
    slots: np.ndarray | None = None

    def predict(self, schedule: CacheSchedule | np.ndarray, residual: bool = False) -> float:
        """Predicted seconds of one pipeline call (``batch`` images) under ``schedule``.

        Step 0 counts as computed, as the runtime runs it. Any step count works; the profile's
        own is the most accurate. ``residual``: bits follow ``step_reuse="residual"`` (a
        ``CacheSchedule`` says so itself).
        """
        if isinstance(schedule, CacheSchedule):
            residual = schedule.residual
        bits = schedule.bits if isinstance(schedule, CacheSchedule) else np.asarray(schedule, dtype=bool)
        if bits.ndim != 3 or bits.shape[1:] != self.component_s.shape:
            raise ScheduleError(f"schedule of shape {tuple(bits.shape)} does not fit this latency profile "
                                f"(blocks x components {tuple(self.component_s.shape)}); profile the same model")
        work = float((effective_bits(bits) * self.component_s[None]).sum())
        skipped = 0.0
        if residual:
            blocks = bits.shape[1]
            skipped = float(skip_steps(bits).sum()) + float(tail_skip_steps(bits).sum()) * (blocks - 1) / blocks
        bare = unhooked_calls(bits, residual, self.slots) * self.hook_s if self.hook_s else 0.0
        return self.fixed_s + bits.shape[0] * self.step_s - skipped * self.stack_s + self.scale * work - bare

    def speedup(self, schedule: CacheSchedule | np.ndarray, residual: bool = False) -> float:
        """Predicted whole-pipeline speedup over all-recompute at the same step count."""
        bits = schedule.bits if isinstance(schedule, CacheSchedule) else np.asarray(schedule, dtype=bool)
        return self.predict(np.ones_like(bits, dtype=bool)) / self.predict(schedule, residual)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "component_s": self.component_s.tolist(), "step_s": self.step_s,
                "fixed_s": self.fixed_s, "scale": self.scale, "steps": self.steps, "runs": self.runs,
                "seconds": self.seconds, "parts": self.parts, "stack_s": self.stack_s, "hook_s": self.hook_s,
                **({"slots": self.slots.tolist()} if self.slots is not None else {})}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyProfile:
        return cls(dict(d["key"]), np.asarray(d["component_s"], dtype=float), float(d["step_s"]),
                   float(d["fixed_s"]), float(d["scale"]), int(d["steps"]), list(d.get("runs", [])),
                   float(d.get("seconds", 0.0)), dict(d.get("parts", {})), float(d.get("stack_s", 0.0)),
                   float(d.get("hook_s", 0.0)),
                   None if d.get("slots") is None else np.asarray(d["slots"], dtype=bool))


# -- where profiles live ----------------------------------------------------------------------


def cache_dir() -> Path:
    """``$DITACCEL_LATENCY_CACHE``, else ``$XDG_CACHE_HOME/ditaccel/latency`` (``~/.cache`` by default)."""
    return user_cache_dir(CACHE_ENV, "latency")


def save_profile(profile: LatencyProfile, path: str | os.PathLike) -> None:
    """Write ``profile`` atomically, with its format, version and checksum (``ditaccel._io``)."""
    atomic_write_checked_json(path, {"format": FORMAT, "version": VERSION, "profile": profile.to_dict()})


#: Versions a search folder resumes on, so its candidates keep their prices: a version-3 profile lacks only
#: ``hook_s`` (it prices every schedule as hooked everywhere, as that search did); a version-2 one also lacks
#: ``stack_s``, so it prices components-rule schedules only.
OLDER_VERSIONS = {"components": (2, 3), "residual": (3,)}


def load_profile(path: str | os.PathLike, key: dict[str, Any] | None = None, older: tuple[int, ...] = (),
                 ) -> LatencyProfile | None:
    """The profile in ``path``, or None when it is missing, unsigned, corrupt, of another format or another
    ``key``, or of an older version not in ``older`` (``OLDER_VERSIONS``)."""
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(d, dict) or CHECKSUM_KEY not in d:
            return None
        d = verify_checksum(d, os.fspath(path), "it is measured again")
        if d.get("format") != FORMAT or d.get("version") not in (VERSION, *older):
            return None
        profile = LatencyProfile.from_dict(d["profile"])
    except (OSError, ValueError, KeyError, TypeError, DitaccelError):
        return None
    return profile if key is None or profile.key == key else None


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    from ditaccel._machine import cpu_model

    return f"{device.type}:{cpu_model()}:{torch.get_num_threads()} threads"


def profile_key(pipe: Any, call_kwargs: dict[str, Any] | None = None, batch: int = 1) -> dict[str, Any]:
    """What a profile is valid for: model structure, device, dtype, resolution, batch, call arguments, steps."""
    from ditaccel.pipeline import pipeline_call_kwargs, pipeline_steps

    kw = pipeline_call_kwargs(pipe, **(call_kwargs or {}))
    t = get_transformer(pipe)
    param = next(t.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    h = hashlib.sha256()
    for name in ("transformer", "text_encoder", "text_encoder_2", "vae"):
        mod = getattr(pipe, name, None)
        if isinstance(mod, torch.nn.Module):
            h.update(f"{name}:{mod!r}:{sorted(str(p.dtype) for p in mod.parameters())[:1]}".encode())
    if getattr(pipe, "scheduler", None) is not None:
        h.update(type(pipe.scheduler).__name__.encode())
    height, width = image_size(pipe, kw)
    dev = _device_name(device)
    from ditaccel.caching.compile import components_compiled

    return {"model": h.hexdigest()[:24], "family": get_adapter(pipe).family, "device": dev,
            "clock": clock_for(dev)[0], "compiled": components_compiled(pipe),
            "dtype": str(param.dtype if param is not None else torch.float32), "torch": torch.__version__,
            "resolution": [height, width], "batch": int(batch), "steps": pipeline_steps(pipe, kw),
            "call": {k: v for k, v in sorted(kw.items())
                     if k not in ("num_inference_steps", "output_type")
                     and isinstance(v, (int, float, str, bool, type(None)))}}


# -- measuring -------------------------------------------------------------------------------


class _Recorder:
    """Torch forward hooks that time every transformer call and every cacheable component in it.

    They sit outside the cache hooks (diffusers replaces ``forward``; torch's hooks wrap the call),
    so a cached component is timed on its cache-hit path. On CUDA each timestamp synchronises.
    """

    def __init__(self, pipe: Any, handle: Any, sync: bool, clock: Any) -> None:
        self.pipe = pipe
        self.a = get_adapter(pipe)
        self.outer = {"text_encoder_s": 0.0, "vae_decode_s": 0.0}
        self.handle = handle
        self.sync = sync
        self.clock = clock
        self.calls: list[tuple[float, float, int, np.ndarray]] = []
        self._cur = np.zeros((self.a.num_blocks, len(self.a.component_names)))
        self._blk = np.zeros(self.a.num_blocks)
        self.block_calls: list[tuple[int, np.ndarray]] = []
        self._t0 = 0.0
        self._hooks: list[Any] = []

    def _now(self) -> float:
        if self.sync:
            torch.cuda.synchronize()
        return self.clock()

    def __enter__(self) -> _Recorder:
        t = self.a.transformer

        def call_pre(*_: Any) -> None:
            self._cur = np.zeros_like(self._cur)
            self._blk = np.zeros_like(self._blk)
            self._t0 = self._now()

        def call_post(*_: Any) -> None:
            self.calls.append((self._t0, self._now(), self.handle.step, self._cur))
            self.block_calls.append((self.handle.step, self._blk))

        self._hooks += [t.register_forward_pre_hook(call_pre), t.register_forward_hook(call_post)]
        for b, c, _ in self.a.component_paths():
            self._time(self.a.component_module(b, c), lambda dt, b=b, c=c: self._cur.__setitem__(
                (b, c), self._cur[b, c] + dt))
        for b, spec in enumerate(self.a.blocks):
            self._time(spec.module, lambda dt, b=b: self._blk.__setitem__(b, self._blk[b] + dt))
        self._time_outer()
        return self

    def _time(self, mod: torch.nn.Module, add: Any) -> None:
        """Time every forward of ``mod`` (torch hooks, outside every diffusers hook) and ``add(seconds)``."""
        start: list[float] = [0.0]

        def pre(*_: Any) -> None:
            start[0] = self._now()

        def post(*_: Any) -> None:
            add(self._now() - start[0])

        self._hooks += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]

    def _time_outer(self) -> None:
        """Per-call parts outside the transformer, for the report: text encoders and the VAE decoder."""
        vae = getattr(self.pipe, "vae", None)
        mods = [("text_encoder_s", getattr(self.pipe, n, None)) for n in ("text_encoder", "text_encoder_2",
                                                                           "text_encoder_3")]
        mods.append(("vae_decode_s", getattr(vae, "decoder", None)))
        for key, mod in mods:
            if isinstance(mod, torch.nn.Module):
                self._time(mod, lambda dt, key=key: self.outer.__setitem__(key, self.outer[key] + dt))

    def __exit__(self, *exc: object) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def per_step(self, steps: int) -> dict[str, Any]:
        """``comp``: component seconds per step [steps, blocks, slots]; ``blocks``: block seconds per
        step [steps, blocks]; ``starts``: each step's first call start; ``parts``: per-call seconds of
        the text encoders and the VAE decoder, and the median transformer seconds of a step after the first."""
        comp = np.zeros((steps, *self._cur.shape))
        blocks = np.zeros((steps, len(self._blk)))
        for step, blk in self.block_calls:
            if 0 <= step < steps:
                blocks[step] += blk
        starts: list[float] = [float("nan")] * steps
        calls = np.zeros(steps)
        for t0, t1, step, cur in self.calls:
            if 0 <= step < steps:
                comp[step] += cur
                calls[step] += t1 - t0
                starts[step] = t0 if np.isnan(starts[step]) else min(starts[step], t0)
        parts = {**self.outer, "transformer_step_s": float(np.median(calls[1:])) if steps > 1 else float(calls[0])}
        return {"comp": comp, "blocks": blocks, "starts": starts, "parts": parts}


def clock_for(device: str) -> tuple[str, Any]:
    """("cpu", process CPU time) on a CPU running one torch thread, else ("wall", perf_counter).

    Why: with one thread, CPU time is the call's own compute and leaves out the time a shared
    machine gives to other jobs: on the 2 shared cores here its spread was 5-10% where the wall
    clock's was 30-130%.
    """
    if device.startswith("cpu") and torch.get_num_threads() == 1:
        return "cpu", time.process_time
    return "wall", time.perf_counter


def timed_call(pipe: Any, kw: dict[str, Any], batch: int, schedule: CacheSchedule, instrument: bool = False,
               sync: bool = False, clock: Any = time.perf_counter, lean: bool = True) -> dict[str, Any]:
    """One ``generate_images`` call of ``batch`` images under ``schedule`` (applied ``lean`` or hooked
    everywhere): ``total_s`` by ``clock`` (and, with ``instrument``, per-step component seconds ``comp`` and
    step starts ``starts``)."""
    from ditaccel.pipeline import generate_images

    with apply_schedule(pipe, schedule, lean=lean) as h:
        rec = _Recorder(pipe, h, sync, clock) if instrument else None
        if rec is not None:
            rec.__enter__()
        try:
            if sync:
                torch.cuda.synchronize()
            t0 = clock()
            generate_images(pipe, [PROFILE_PROMPT] * batch, list(range(batch)), batch_size=batch, **kw)
            if sync:
                torch.cuda.synchronize()
            total = clock() - t0
        finally:
            if rec is not None:
                rec.__exit__()
    out: dict[str, Any] = {"total_s": total}
    if rec is not None:
        out.update(rec.per_step(schedule.steps))
    return out


def profile_latency(pipe: Any, call_kwargs: dict[str, Any] | None = None, batch: int = 1, rounds: int = 2,
                    seed: int = 0) -> LatencyProfile:
    """Measure ``pipe`` now: a warm-up; one all-recompute and one all-cached (step 0 only) call timed
    per part, hooked everywhere; then ``rounds`` interleaved rounds of those two, a random schedule and
    all-recompute hooked everywhere (``hook_s``), timed whole (plain calls: the per-part hooks cost time of
    their own). Costs about ``2.7 * rounds + 1.4`` all-recompute calls: 4.1 s of CPU on the bundled model (latency.md)."""
    if batch < 1 or rounds < 1:
        raise DitaccelError(f"batch and rounds must be at least 1, got {batch} and {rounds}")
    from ditaccel.pipeline import pipeline_call_kwargs

    kw = pipeline_call_kwargs(pipe, **(call_kwargs or {}))
    kw.pop("output_type", None)
    key = profile_key(pipe, call_kwargs, batch)
    steps = key["steps"]
    a = get_adapter(pipe)
    shape = (steps, a.num_blocks, len(a.component_names))
    cached = effective_bits(np.zeros(shape, dtype=bool))
    rand = np.random.default_rng(seed).random(shape) < 0.5
    plan = [("none", np.ones(shape, dtype=bool)), ("cached", cached), ("random", rand),
            ("hooked", np.ones(shape, dtype=bool))]
    if a.stack_residual:
        plan.append(("skipped", cached))  # the same bits under residual step reuse: prices stack_s
    sync = key["device"].startswith("cuda")
    clock = clock_for(key["device"])[1]
    start = time.perf_counter()

    def schedule(kind: str, bits: np.ndarray) -> CacheSchedule:
        return CacheSchedule.for_model(pipe, bits, step_reuse="residual" if kind == "skipped" else "components")

    timed_call(pipe, kw, batch, schedule("cached", cached), False, sync, clock)  # warm-up
    runs = [{"kind": kind, "bits": bits, **timed_call(pipe, kw, batch, schedule(kind, bits), True, sync, clock,
                                                      lean=False)}
            for kind, bits in plan[:2]]
    for r in range(rounds):
        n = r % len(plan)
        for kind, bits in plan[n:] + plan[:n]:  # rotate the order: drifts hit every kind alike
            runs.append({"kind": kind, "bits": bits, **timed_call(pipe, kw, batch, schedule(kind, bits), False,
                                                                  sync, clock, lean=kind != "hooked")})
    profile = fit_profile(runs, key, steps, glue_weights(a), a.slots())
    profile.seconds = time.perf_counter() - start
    return profile


def glue_weights(adapter: Any) -> np.ndarray:
    """[blocks, slots]: each slot's share of the block work the runtime's fast path skips (0 where none)."""
    w = np.zeros((adapter.num_blocks, len(adapter.component_names)))
    share = np.asarray(adapter.fast_block_glue, dtype=float)
    if share.size and share.sum() > 0:
        for b, spec in enumerate(adapter.blocks):
            if adapter.cached_block_forward(spec) is not None:
                w[b] = share / share.sum()
    return w


def fit_profile(runs: list[dict[str, Any]], key: dict[str, Any], steps: int,
                glue: np.ndarray | None = None, slots: np.ndarray | None = None) -> LatencyProfile:
    """Turn timed runs into a profile (see the module docstring); pure, so it is tested on exact data.

    ``runs``: dicts with ``kind`` (none / cached / skipped / hooked / other), ``bits`` and ``total_s``;
    ``skipped`` runs are ``cached`` bits under residual step reuse and give ``stack_s`` only; ``hooked`` runs
    are all-recompute with every component hooked and give ``hook_s`` only (the other plain runs are lean).
    Runs timed per part also carry ``comp`` [steps, blocks, slots], ``starts`` (each step's start) and
    optionally ``blocks`` [steps, blocks], and give the parts; the other plain runs give the line. ``glue``
    (``glue_weights``) shares each block's skipped glue among its slots; ``slots`` (``Adapter.slots``) says
    which slots the model has, so bare calls are counted only for those.
    """
    def med(kind: str, part: str = "comp") -> np.ndarray:
        stack = [r[part][1:] for r in runs if r["kind"] == kind and part in r]
        if not stack or steps < 2:
            raise DitaccelError("a latency profile needs at least 2 steps and a timed none and cached run")
        return np.median(np.concatenate(stack), axis=0)

    saved = med("none") - med("cached")
    comp = np.clip(saved, 0.0, None)
    if glue is not None and glue.any() and any("blocks" in r for r in runs):
        skipped = np.clip(med("none", "blocks") - med("cached", "blocks") - saved.sum(axis=1), 0.0, None)
        comp = comp + skipped[:, None] * glue
    gaps = [g for r in runs if r["kind"] == "cached" and "starts" in r
            for g in np.diff(np.asarray(r["starts"][1:], dtype=float))]
    step_s = float(statistics.median(gaps)) if gaps else 0.0
    hook_s = _hook_s(runs, slots)
    hooked = [dict(r, total_s=_hooked_total(r, hook_s, slots)) for r in runs]  # as if every component call were hooked
    plain = [r for r in hooked if "comp" not in r and r["kind"] not in ("skipped", "hooked")] or hooked
    work = np.array([float((effective_bits(r["bits"]) * comp[None]).sum()) for r in plain])
    total = np.array([float(r["total_s"]) for r in plain])
    slope, intercept = np.polyfit(work, total, 1) if np.ptp(work) > 0 else (0.0, 0.0)
    if not slope > 0:  # one kind of run only, or noise swamped the components: trust the parts as measured
        slope = 1.0
        intercept = float(np.median(total - work))
    fixed = float(intercept) - steps * step_s
    prof = LatencyProfile(key, comp, step_s, fixed, float(slope), steps, parts=_parts(runs, step_s),
                          stack_s=_stack_s(hooked, steps), hook_s=hook_s, slots=slots)
    prof.runs = [{"kind": r["kind"], "measured_s": round(float(r["total_s"]), 6),
                  "predicted_s": round(prof.predict(r["bits"], r["kind"] == "skipped") + (
                      hook_s * unhooked_calls(r["bits"], False, slots) if r["kind"] == "hooked" else 0.0), 6)}
                 for r in runs if "comp" not in r]
    return prof


def _bare_calls(r: dict[str, Any], slots: np.ndarray | None) -> int:
    """Component calls a plain run made without a cache hook: none when hooked everywhere (``hooked``)."""
    return 0 if r["kind"] == "hooked" else unhooked_calls(r["bits"], r["kind"] == "skipped", slots)


def _plain_median(runs: list[dict[str, Any]], kind: str) -> float | None:
    """Median ``total_s`` of the plain (whole-call, not per-part) runs of ``kind``, or None without one."""
    xs = [float(r["total_s"]) for r in runs if r["kind"] == kind and "comp" not in r]
    return statistics.median(xs) if xs else None


def _hook_s(runs: list[dict[str, Any]], slots: np.ndarray | None) -> float:
    """Seconds of one component call's cache hook: all-recompute hooked everywhere minus bare, per call."""
    hooked, bare = _plain_median(runs, "hooked"), _plain_median(runs, "none")
    calls = next((_bare_calls(r, slots) for r in runs if r["kind"] == "none"), 0)
    if hooked is None or bare is None or calls == 0:
        return 0.0
    return max(0.0, (hooked - bare) / calls)


def _hooked_total(r: dict[str, Any], hook_s: float, slots: np.ndarray | None) -> float:
    return float(r["total_s"]) + (hook_s * _bare_calls(r, slots) if "comp" not in r else 0.0)


def _stack_s(runs: list[dict[str, Any]], steps: int) -> float:
    """Seconds a residual skip step saves over an all-cached step: whole plain calls, cached minus skipped."""
    cached, skipped = _plain_median(runs, "cached"), _plain_median(runs, "skipped")
    if cached is None or skipped is None or steps < 2:
        return 0.0
    return max(0.0, (cached - skipped) / (steps - 1))


def _parts(runs: list[dict[str, Any]], step_s: float) -> dict[str, float]:
    """Medians of the per-part timings (see ``LatencyProfile.parts``)."""
    def med(kind: str, name: str) -> float | None:
        xs = [r["parts"][name] for r in runs if r["kind"] == kind and name in r.get("parts", {})]
        return float(statistics.median(xs)) if xs else None

    cached_step = med("cached", "transformer_step_s")
    out = {"text_encoder_s": med("cached", "text_encoder_s"), "vae_decode_s": med("cached", "vae_decode_s"),
           "transformer_full_step_s": med("none", "transformer_step_s"), "transformer_cached_step_s": cached_step,
           "scheduler_and_loop_step_s": None if cached_step is None else step_s - cached_step}
    return {k: v for k, v in out.items() if v is not None}


def latency_profile(pipe: Any, call_kwargs: dict[str, Any] | None = None, batch: int = 1, refresh: bool = False,
                    rounds: int = 2) -> LatencyProfile:
    """The cached profile for this pipeline, device and call, measured (and cached) if there is none."""
    key = profile_key(pipe, call_kwargs, batch)
    path = cache_dir() / f"{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]}.json"
    if not refresh:
        found = load_profile(path, key)
        if found is not None:
            return found
    profile = profile_latency(pipe, call_kwargs, batch, rounds)
    try:
        save_profile(profile, path)
    except OSError as e:  # a read-only home must not stop a search; it only costs a re-profile next time
        import warnings

        warnings.warn(f"could not cache the latency profile in {path.parent} ({e}); set {CACHE_ENV}", stacklevel=2)
    return profile
