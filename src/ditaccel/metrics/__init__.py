"""Quality metrics behind one registry, so the search, ``eval`` and the benchmarks agree.

Why a registry: the search needs a quality number per candidate, and which metric fits
depends on what the user has. The bundled model has an exact checker (``adherence``); any
model can be scored for fidelity to its own uncached images (``psnr``, ``ssim``); learned
metrics (``clip``, ``imagereward``, ``hpsv2``) and ``fid`` take local paths or hub ids
(arguments or environment variables) or download their packages' default weights, all before
any image is generated; when that is impossible they refuse with one line naming what to
provide. ``get_metric(name, device=..., batch_size=...)`` sets where and how they score.

Every metric answers ``score(images, prompts, references=None) -> float``, higher is better
(``fid`` reports ``-FID`` there; ``fid_value`` gives the plain number).
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable
from typing import Any

from ditaccel.errors import DitaccelError
from ditaccel.metrics.base import Metric
from ditaccel.metrics.fidelity import PSNR, SSIM, AdherenceMetric, psnr, ssim

# name -> (factory, one-line description)
_REGISTRY: dict[str, tuple[Callable[..., Metric], str]] = {}


def register_metric(name: str, factory: Callable[..., Metric], description: str) -> None:
    """Add a metric under ``name`` (a factory taking the metric's path keyword arguments)."""
    _REGISTRY[name] = (factory, description)


def available_metrics() -> dict[str, str]:
    """Every registered metric name with a one-line description (what it needs)."""
    return {name: desc for name, (_, desc) in _REGISTRY.items()}


def get_metric(name: str, **paths: Any) -> Metric:
    """The metric ``name``, built and checked: missing weights raise ``MissingWeightsError`` now.

    ``paths`` are the metric's weight locations (local paths or hub ids, e.g. ``clip_path=...``);
    ones left out come from the environment variables named in ``available_metrics()``, else the
    package's default weights. Learned metrics also take ``device`` (default ``auto``) and
    ``batch_size``; the others ignore them.
    """
    if name not in _REGISTRY:
        raise DitaccelError(f"unknown metric {name!r}; use one of: {', '.join(_REGISTRY)}")
    factory, _ = _REGISTRY[name]
    return factory(**{k: v for k, v in paths.items() if v is not None})


def _external(kind: str) -> Callable[..., Metric]:
    def make(**paths: Any) -> Metric:
        from ditaccel.metrics import external

        cls = getattr(external, kind)
        keys = (*_path_keys(cls), "device", "batch_size")  # callers (eval) may pass every metric's paths
        return cls(**{k: v for k, v in paths.items() if k in keys})

    make.path_keys = lambda: _path_keys(getattr(importlib.import_module("ditaccel.metrics.external"), kind))  # type: ignore[attr-defined]
    return make


def _path_keys(cls: Any) -> tuple[str, ...]:
    return tuple(n for n in inspect.signature(cls).parameters if n.endswith(("_path", "_config", "_reference")))


def check_metric_paths(name: str, paths: dict[str, Any], flag: str = "metric_paths") -> None:
    """Refuse a path key that metric ``name`` does not take (a typo would otherwise be ignored or crash)."""
    if name not in _REGISTRY:
        return  # get_metric names the unknown metric
    keys_of = getattr(_REGISTRY[name][0], "path_keys", None)
    keys = keys_of() if keys_of else ()
    unknown = [k for k in paths if k not in keys]
    if unknown:
        takes = f"it takes {', '.join(keys)}" if keys else "it takes none"
        raise DitaccelError(f"{flag} key {unknown[0]!r} is not one metric {name} uses; {takes}")


register_metric("adherence", lambda **_: AdherenceMetric(),
                "shapes-world checker: fraction of images whose colour, shape, size and position match (bundled model)")
register_metric("psnr", lambda **_: PSNR(), "PSNR (dB) to the uncached images with the same prompts and seeds")
register_metric("ssim", lambda **_: SSIM(), "SSIM to the uncached images with the same prompts and seeds")
register_metric("clip", _external("ClipScore"),
                "CLIP score; a transformers CLIP folder or hub id (clip_path= / $DITACCEL_CLIP), default "
                "openai/clip-vit-large-patch14")
register_metric("imagereward", _external("ImageRewardMetric"),
                "ImageReward; ImageReward.pt (imagereward_path= / $DITACCEL_IMAGEREWARD), med_config.json "
                "(med_config= / $DITACCEL_IMAGEREWARD_MED_CONFIG) and a bert-base-uncased tokenizer folder "
                "(bert_path= / $DITACCEL_BERT); defaults: THUDM/ImageReward, google-bert/bert-base-uncased")
register_metric("hpsv2", _external("HPSv2Metric"),
                "HPSv2; its checkpoint (hpsv2_path= / $DITACCEL_HPSV2) and open_clip ViT-H-14 weights "
                "(open_clip_path= / $DITACCEL_OPEN_CLIP); defaults: xswu/HPSv2, laion/CLIP-ViT-H-14-laion2B-s32B-b79K")
register_metric("fid", _external("FIDMetric"),
                "FID (set metric, torchmetrics); Inception weights (inception_path= / $DITACCEL_INCEPTION, default "
                "torch-fidelity's) and a reference image folder or .npz stats (fid_reference= / $DITACCEL_FID_REF)")


def env_path(arg: str | os.PathLike | None, env: str) -> str | None:
    """``arg`` if given, else the environment variable ``env`` (None when neither is set)."""
    if arg is not None:
        return os.fspath(arg)
    value = os.environ.get(env)
    return value or None


__all__ = ["PSNR", "SSIM", "AdherenceMetric", "Metric", "available_metrics", "check_metric_paths", "env_path",
           "get_metric", "psnr",
           "register_metric", "ssim"]
