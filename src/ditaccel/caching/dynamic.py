"""Dynamic caches (deciding at run time): the peers' caches on pipelines not written for them.

Each method here (and ``dynamic_teacache.py``, ditaccel's own) is one entry of the methods
registry (``ditaccel.evaluate.methods.REGISTRY``: its knobs, checks, sweep grid and label); the
knob defaults are in ``DEFAULTS`` below, beside the code that reads them.

diffusers' caches (FirstBlockCache, PyramidAttentionBroadcast, FasterCache, TaylorSeer, MagCache)
expect two things from the pipeline that PixArt's does not give:

- a ``cache_context`` around every denoiser call, which sets a ``CacheContext`` on each stateful
  hook's ``StateManager`` (FBC, TaylorSeer, MagCache keep their state per context);
- ``pipe.current_timestep`` for PAB and FasterCache, which skip only inside a timestep range;
- a reset of the stateful hooks between generations (``CacheMixin`` pipelines do it in
  ``maybe_free_model_hooks``).

``_DenoiserContextHook`` supplies all three from the transformer's own calls, through
``diffusers.hooks.HookRegistry`` (no pipeline or model class is changed): it reads the
``timestep`` argument, treats a timestep that does not continue the decreasing sequence as a new
generation (and resets every stateful hook), numbers the steps, and wraps the call in a
``CacheContext``. PixArt runs CFG as one batch of 2, so one context ("cond_uncond") covers it;
pipelines that call the transformer twice per step get one context per call within a step.

``apply_peer_cache(pipe, name, **params)`` installs one of them and returns a ``PeerHandle``
whose ``remove()`` gives back the unmodified transformer.

Per-method glue beyond the context: PAB and FasterCache get ``current_timestep_callback`` from
the hook's tracker; FasterCache gets ``tensor_format="BCHW"`` (PixArt latents) and relies on
PixArt's [uncond, cond] CFG batch; TaylorSeer gets explicit module patterns (diffusers'
defaults, ``^transformer_blocks.*attn`` under ``re.fullmatch``, match no PixArt module);
MagCache's per-model ``mag_ratios`` are measured by its own calibration mode on one prompt.

What runs where (diffusers 0.42.1, cache-dit 1.5.3, tiny replicas of each family, CPU):

============  ======  ======  ======  ===========================================================
method        PixArt  FLUX    SD3     Hunyuan-DiT
============  ======  ======  ======  ===========================================================
fbc           yes     yes     no      no: HunyuanDiTBlock not in diffusers' block registry;
                                      SD3: tail-block residual is None (TypeError at run time)
pab           yes     yes     yes     yes
fastercache   yes     no      no      no: its CFG-batch split / BCHW frequency filter does not
                                      fit packed (FLUX) or joint-attention (SD3, Hunyuan) inputs
taylorseer    yes     yes     yes     yes
magcache      yes     yes     yes     no: HunyuanDiTBlock not registered
cachedit      yes     yes     yes     yes
teacache      yes     no      no      no: ditaccel's own (dynamic_teacache.py), PixArt-style blocks only
============  ======  ======  ======  ===========================================================

A method that cannot run becomes a skipped row whose reason is the first line of the error.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ditaccel.caching.offload import beneath_offload_hook
from ditaccel.caching.runtime import unregister_hook
from ditaccel.caching.steps import StepTracker, timestep_reader
from ditaccel.errors import DitaccelError
from ditaccel.models import get_adapter
from ditaccel.pipeline import pipeline_steps

_CONTEXT_HOOK = "ditaccel_peer_context"

#: name -> (diffusers config class, short description); the knobs' labels, checks and sweep grids
#: are in the methods registry, ``ditaccel.evaluate.methods.REGISTRY``
DIFFUSERS_CACHES: dict[str, tuple[str, str]] = {
    "fbc": ("FirstBlockCacheConfig", "FirstBlockCache: skip all later blocks when block 0's residual "
            "changes less than a threshold"),
    "pab": ("PyramidAttentionBroadcastConfig", "Pyramid Attention Broadcast: reuse self-attention every "
            "N calls and cross-attention every 2N inside timesteps (100, 800)"),
    "fastercache": ("FasterCacheConfig", "FasterCache: skip the unconditional CFG half and approximate it "
                    "by frequency deltas; reuse attention with extrapolation"),
    "taylorseer": ("TaylorSeerCacheConfig", "TaylorSeer: Taylor-extrapolate attn1/attn2/ff outputs between "
                   "full steps"),
    "magcache": ("MagCacheConfig", "MagCache: skip steps while the accumulated residual-magnitude ratio "
                 "error stays under a threshold (ratios calibrated on this model first)"),
}


#: each method's knob defaults, owned here beside the code that reads them (as diffusers' config
#: classes own theirs); the methods registry (``ditaccel.evaluate.methods``) reads them from here
DEFAULTS: dict[str, dict[str, Any]] = {
    "fbc": {"threshold": 0.05},
    "pab": {"skip": 2},
    "fastercache": {"skip": 2},
    "taylorseer": {"interval": 3, "order": 1},
    "magcache": {"threshold": 0.06},
    "cachedit": {"threshold": 0.08, "warmup": 4, "fn": 1, "bn": 0},
    "teacache": {"threshold": 0.1},   # caching/dynamic_teacache.py
}


def knob_defaults(name: str) -> dict[str, Any]:
    """A copy of dynamic method ``name``'s knob defaults."""
    return dict(DEFAULTS[name])


class PeerUnavailable(DitaccelError):
    """A peer method cannot run on this model or machine; the message says why."""


def _make_context_hook(num_steps: int | None) -> Any:
    from diffusers.hooks import ModelHook
    from diffusers.hooks.hooks import CacheContext, _set_cache_context

    class DenoiserContextHook(ModelHook):
        """Outermost hook on the transformer: step tracking, CacheContext, resets between generations."""

        def __init__(self) -> None:
            super().__init__()
            self.tracker = StepTracker()
            self.timestep: float = 1000.0
            self.num_steps = num_steps
            self._read: Callable[[tuple, dict], float | None] = lambda a, k: None

        def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
            self._read = timestep_reader(module)
            return module

        def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
            value = self._read(args, kwargs)
            if value is None:
                raise PeerUnavailable(f"{type(module).__name__} was called without a timestep; "
                                      f"the peer caches need it to know the step")
            if self.tracker.advance(value):  # a new generation: what CacheMixin pipelines do in maybe_free_model_hooks
                module._diffusers_hook.reset_stateful_hooks(recurse=True)
            # FLUX passes t/1000; PAB/FasterCache ranges are on the 0..1000 scale.
            self.timestep = value * 1000.0 if value <= 1.0 else value
            ctx = self.tracker.context
            name = "cond_uncond" if ctx == 0 else f"call{ctx}"
            _set_cache_context(module, CacheContext(name, step_index=self.tracker.step,
                                                    num_inference_steps=self.num_steps, timestep=value))
            return args, kwargs

        def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
            _set_cache_context(module, None)
            return output

    return DenoiserContextHook()


@dataclass
class PeerHandle:
    """An installed peer cache; ``remove()`` restores the transformer exactly."""

    name: str
    description: str
    params: dict[str, Any]
    transformer: torch.nn.Module
    notes: list[str] = field(default_factory=list)
    params_full: dict[str, Any] = field(default_factory=dict)
    state: Any = None               # the method's run-time counters, where it has any (TeaCache's skips)
    _removers: list[Callable[[], None]] = field(default_factory=list)

    def remove(self) -> None:
        for fn in reversed(self._removers):
            fn()
        self._removers = []

    def __enter__(self) -> PeerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def snapshot_hooks(root: torch.nn.Module) -> dict[int, tuple[torch.nn.Module, set[str], bool, bool]]:
    """Which diffusers hooks each module under ``root`` has now (``hooks_remover`` undoes what comes after)."""
    return {
        id(m): (m, set(m._diffusers_hook.hooks) if hasattr(m, "_diffusers_hook") else set(),
                hasattr(m, "_diffusers_hook"), "forward" in m.__dict__)
        for m in root.modules()
    }


def hooks_remover(root: torch.nn.Module, before: dict[int, tuple[torch.nn.Module, set[str], bool, bool]]
             ) -> Callable[[], None]:
    """Undo every diffusers hook registered under ``root`` since ``before`` was taken."""

    def remove() -> None:
        for m in root.modules():
            reg = getattr(m, "_diffusers_hook", None)
            if reg is None:
                continue
            _, had_names, had_reg, had_fwd = before.get(id(m), (m, set(), False, False))
            for name in [n for n in reg._hook_order if n not in had_names]:
                unregister_hook(m, name, had_reg, had_fwd)
        reg = getattr(root, "_diffusers_hook", None)
        if reg is not None:
            reg.invalidate_child_registries_cache()

    return remove


def _config(name: str, params: dict[str, Any], transformer: torch.nn.Module, steps: int,
            timestep_fn: Callable[[], float]) -> Any:
    import diffusers.hooks as dh

    if name == "fbc":
        return dh.FirstBlockCacheConfig(threshold=float(params["threshold"]))
    if name == "pab":
        n = int(params["skip"])
        return dh.PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=n, cross_attention_block_skip_range=2 * n,
            current_timestep_callback=timestep_fn)
    if name == "fastercache":
        n = int(params["skip"])
        return dh.FasterCacheConfig(
            spatial_attention_block_skip_range=n, spatial_attention_timestep_skip_range=(-1, 681),
            unconditional_batch_skip_range=5, unconditional_batch_timestep_skip_range=(-1, 781),
            attention_weight_callback=lambda _: 0.3, current_timestep_callback=timestep_fn,
            tensor_format="BCHW", is_guidance_distilled=False)
    if name == "taylorseer":
        # TaylorSeer predicts attention and MLP features per layer; diffusers' default patterns
        # ("^transformer_blocks.*attn" with fullmatch) match no PixArt module, so the adapter names
        # the cacheable sub-modules of the first block list.
        return dh.TaylorSeerCacheConfig(
            cache_interval=int(params["interval"]), max_order=int(params["order"]), disable_cache_before_step=2,
            cache_identifiers=[get_adapter(transformer).component_pattern()])
    if name == "magcache":
        return dh.MagCacheConfig(threshold=float(params["threshold"]), num_inference_steps=steps,
                                 mag_ratios=params["mag_ratios"])
    raise PeerUnavailable(f"unknown diffusers cache {name!r}")


def calibrate_magcache(pipe: Any, prompts: list[str], seeds: list[int], call_kwargs: dict[str, Any]) -> list[float]:
    """Run MagCache's calibration mode (no skipping) and return the per-step magnitude ratios.

    diffusers prints the ratios and logs them at INFO; both are captured here so the user never
    has to copy numbers by hand.
    """
    import diffusers.hooks as dh

    from ditaccel.pipeline import generate_images

    t = pipe.transformer
    steps = pipeline_steps(pipe, call_kwargs)
    before = snapshot_hooks(t)
    ctx_hook = _make_context_hook(steps)
    with beneath_offload_hook(t):
        dh.apply_mag_cache(t, dh.MagCacheConfig(calibrate=True, num_inference_steps=steps))
        reg = dh.HookRegistry.check_if_exists_or_initialize(t)
        reg.register_hook(ctx_hook, _CONTEXT_HOOK)
    reg.invalidate_child_registries_cache()
    logger = logging.getLogger("diffusers.hooks.mag_cache")
    records: list[str] = []

    class _Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    h, old_level, old_prop = _Grab(), logger.level, logger.propagate
    logger.addHandler(h)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            generate_images(pipe, prompts[:1], seeds[:1], batch_size=1, **call_kwargs)
    finally:
        logger.removeHandler(h)
        logger.setLevel(old_level)
        logger.propagate = old_prop
        hooks_remover(t, before)()
    for msg in records:
        m = re.search(r"\[([^\]]*)\]", msg)
        if "Calibration" in msg and m:
            return [float(x) for x in m.group(1).split(",") if x.strip()]
    raise PeerUnavailable("MagCache calibration produced no ratios on this pipeline")


def apply_peer_cache(pipe: Any, name: str, call_kwargs: dict[str, Any] | None = None,
                     calib_prompts: list[str] | None = None, **params: Any) -> PeerHandle:
    """Install diffusers' cache ``name`` (fbc, pab, fastercache, taylorseer, magcache) on ``pipe``.

    ``call_kwargs`` are the generation's call arguments (MagCache needs the step count; its
    ratios are calibrated here on ``calib_prompts[0]`` when not given in ``params``).
    """
    import diffusers.hooks as dh

    if name not in DIFFUSERS_CACHES:
        raise PeerUnavailable(f"unknown diffusers cache {name!r}; use one of {', '.join(DIFFUSERS_CACHES)}")
    call_kwargs = dict(call_kwargs or {})
    _, desc = DIFFUSERS_CACHES[name]
    p = {**knob_defaults(name), **{k: v for k, v in params.items() if v is not None}}
    t = pipe.transformer
    steps = pipeline_steps(pipe, call_kwargs)
    if name == "magcache" and "mag_ratios" not in p:
        p["mag_ratios"] = calibrate_magcache(pipe, calib_prompts or ["a photo"], [0], call_kwargs)
    ctx_hook = _make_context_hook(steps)
    cfg = _config(name, p, t, steps, lambda: ctx_hook.timestep)
    before = snapshot_hooks(t)
    handle = PeerHandle(name, desc, {k: v for k, v in p.items() if k != "mag_ratios"}, t, params_full=p)
    handle._removers.append(hooks_remover(t, before))
    try:
        apply = {"fbc": dh.apply_first_block_cache, "pab": dh.apply_pyramid_attention_broadcast,
                 "fastercache": dh.apply_faster_cache, "taylorseer": dh.apply_taylorseer_cache,
                 "magcache": dh.apply_mag_cache}[name]
        from diffusers.utils import logging as dlogging

        verbosity = dlogging.get_verbosity()
        dlogging.set_verbosity_error()  # FasterCache warns "experimental" on every install
        try:
            with beneath_offload_hook(t):  # keeps working under enable_model_cpu_offload (caching/offload.py)
                apply(t, cfg)
        finally:
            dlogging.set_verbosity(verbosity)
        hooked = sum(1 for m in t.modules() if hasattr(m, "_diffusers_hook") and m is not t
                     and set(m._diffusers_hook.hooks) - before.get(id(m), (None, set()))[1])
        if hooked == 0 and name not in ("fastercache",):
            raise PeerUnavailable(f"diffusers' {name} found no module of {type(t).__name__} to hook")
        reg = dh.HookRegistry.check_if_exists_or_initialize(t)
        with beneath_offload_hook(t):
            reg.register_hook(ctx_hook, _CONTEXT_HOOK)  # last = outermost: runs before the caches' hooks
        reg.invalidate_child_registries_cache()
    except PeerUnavailable:
        handle.remove()
        raise
    except Exception as e:  # diffusers raises ValueError/KeyError/AttributeError for unsupported models
        handle.remove()
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PeerUnavailable(f"diffusers' {name} cannot be applied to {type(t).__name__}: {first}") from None
    if name == "magcache":
        handle.notes.append(f"mag_ratios calibrated on this model ({len(p['mag_ratios'])} steps)")
    return handle


# ----------------------------------------------------------------------------- cache-dit


def cachedit_status() -> str | None:
    """None when cache-dit imports, else why it cannot be used."""
    try:
        import cache_dit  # noqa: F401
    except Exception as e:  # ImportError, or its own import-time failures
        return f"cache-dit is not importable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); " \
               f"pip install cache-dit"
    return None


@contextlib.contextmanager
def _quiet_cachedit() -> Any:
    """cache-dit logs a dozen INFO lines per install and removal; the row's notes say what ran."""
    quiet = [lg for n, lg in logging.Logger.manager.loggerDict.items()
             if n.startswith("cache_dit") and isinstance(lg, logging.Logger)]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lv in zip(quiet, levels, strict=True):
            lg.setLevel(lv)


def apply_cachedit(pipe: Any, call_kwargs: dict[str, Any] | None = None, **params: Any) -> PeerHandle:
    """cache-dit's DBCache: the first ``fn`` and last ``bn`` blocks always computed, the middle skipped
    while the first blocks' residual changes less than ``threshold``, after ``warmup`` full steps."""
    why = cachedit_status()
    if why:
        raise PeerUnavailable(why)
    import cache_dit

    p = {**knob_defaults("cachedit"), **{k: v for k, v in params.items() if v is not None}}
    threshold, warmup, fn, bn = float(p["threshold"]), int(p["warmup"]), int(p["fn"]), int(p["bn"])
    try:
        with _quiet_cachedit():
            cfg = cache_dit.DBCacheConfig(Fn_compute_blocks=fn, Bn_compute_blocks=bn, max_warmup_steps=warmup,
                                          residual_diff_threshold=threshold)
            cache_dit.enable_cache(pipe, cache_config=cfg)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        with contextlib.suppress(Exception), _quiet_cachedit():
            cache_dit.disable_cache(pipe)
        raise PeerUnavailable(f"cache-dit cannot cache {type(pipe).__name__}: {first}") from None

    def remove() -> None:
        with _quiet_cachedit():
            cache_dit.disable_cache(pipe)

    handle = PeerHandle("cachedit", f"cache-dit DBCache (F{fn}B{bn}, residual-diff threshold)",
                        {"threshold": threshold, "warmup": warmup, "fn": fn, "bn": bn}, pipe.transformer)
    handle._removers.append(remove)
    return handle
