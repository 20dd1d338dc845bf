"""Transformer MACs of a schedule, from the adapter's analytic per-component costs."""

from __future__ import annotations

from typing import Any

import numpy as np

from ditaccel.caching.schedule import CacheSchedule
from ditaccel.errors import ScheduleError
from ditaccel.models import get_adapter, vae_factor


def schedule_macs(pipe_or_transformer: Any, schedule: CacheSchedule, height: int, width: int, batch: int = 2,
                  text_len: int | None = None) -> int:
    """Total transformer MACs of one generation under ``schedule``.

    ``height``/``width`` are in pixels (a pipeline's ``vae_scale_factor``, 8 for a bare
    transformer); ``batch`` counts every sample the transformer sees per step (2 for one prompt
    with CFG, however the pipeline splits it into calls). ``text_len`` defaults to what the
    family's pipeline feeds by default. Step 0 counts as fully computed, as the runtime runs it.
    """
    schedule.validate_for(pipe_or_transformer)
    if height <= 0 or width <= 0 or batch <= 0:
        raise ScheduleError(f"height, width and batch must be positive, got {height}, {width}, {batch}")
    a = get_adapter(pipe_or_transformer)
    n_img = a.image_tokens(height, width, vae_factor(pipe_or_transformer))
    n_txt = a.default_text_len(pipe_or_transformer) if text_len is None else int(text_len)
    comp = a.component_macs(batch, n_img, n_txt)
    eff = schedule.effective_bits()
    per_step = (eff * comp[None]).sum(axis=(1, 2), dtype=np.int64)
    return int(per_step.sum() + schedule.steps * a.rest_macs(batch, n_img, n_txt))


def predicted_seconds(pipe: Any, schedule: CacheSchedule, call_kwargs: dict[str, Any] | None = None,
                      batch: int = 1) -> tuple[float, float]:
    """(seconds, speedup over all-recompute) of one ``pipe`` call under ``schedule``, by this device's
    latency profile (``ditaccel.caching.latency``; measured on first use, then read from the cache).

    Unlike ``schedule_macs`` this counts what always runs (norms, adaLN, embedders, scheduler, text
    encoder, VAE), so it is the speedup a user of this device sees.
    """
    from ditaccel.caching.latency import latency_profile

    schedule.validate_for(pipe)
    kw = dict(call_kwargs or {})
    kw.setdefault("num_inference_steps", schedule.steps)
    profile = latency_profile(pipe, kw, batch)
    return profile.predict(schedule), profile.speedup(schedule)
