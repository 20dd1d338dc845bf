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
from collections.abc import Callable, Sequence
from typing import Any

from ditaccel.errors import DitaccelError
from ditaccel.metrics.base import Metric
from ditaccel.metrics.fidelity import PSNR, SSIM, AdherenceMetric, psnr, ssim
from ditaccel.metrics.weights import env_path

# name -> (factory, one-line description, column label)
_REGISTRY: dict[str, tuple[Callable[..., Metric], str, str]] = {}


def register_metric(name: str, factory: Callable[..., Metric], description: str, label: str | None = None) -> None:
    """Add a metric under ``name``: what ``--metric``/``--metrics``, ``get_metric`` and the reports see.

    ``factory`` (a ``Metric`` subclass will do) takes the metric's weight paths as keyword
    arguments named ``*_path``, ``*_config`` or ``*_reference``: those names are the keys
    ``--metric-path KEY=PATH`` accepts for it (a lazy factory names them in a ``path_keys()`` attribute). ``label`` heads the
    metric's column in ``eval`` reports (default: ``name``).
    """
    _REGISTRY[name] = (factory, description, label or name)


def available_metrics() -> dict[str, str]:
    """Every registered metric name with a one-line description (what it needs)."""
    return {name: desc for name, (_, desc, _) in _REGISTRY.items()}


def metric_label(name: str) -> str:
    """The column heading of metric ``name`` in reports (its name when it is not registered)."""
    return _REGISTRY[name][2] if name in _REGISTRY else name


def needs_reference(name: str) -> bool:
    """Whether a registered metric scores against the uncached images (so the baseline has no score of its own)."""
    return bool(getattr(_REGISTRY[name][0], "needs_reference", False)) if name in _REGISTRY else False


def get_metric(name: str, **paths: Any) -> Metric:
    """The metric ``name``, built and checked: missing weights raise ``MissingWeightsError`` now.

    ``paths`` are the metric's weight locations (local paths or hub ids, e.g. ``clip_path=...``);
    ones left out come from the environment variables named in ``available_metrics()``, else the
    package's default weights. Learned metrics also take ``device`` (default ``auto``) and
    ``batch_size``; the others ignore them.
    """
    if name not in _REGISTRY:
        raise DitaccelError(f"unknown metric {name!r}; use one of: {', '.join(_REGISTRY)}")
    factory = _REGISTRY[name][0]
    params = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    # callers (eval) pass every metric's paths: each factory gets the ones it names
    return factory(**{k: v for k, v in paths.items() if v is not None and (takes_any or k in params)})


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


def metric_path_keys(name: str) -> tuple[str, ...]:
    """The weight-path keys metric ``name`` takes (``--metric-path KEY=PATH``); none for unknown metrics."""
    if name not in _REGISTRY:
        return ()
    keys_of = getattr(_REGISTRY[name][0], "path_keys", None)
    return tuple(keys_of()) if keys_of else _path_keys(_REGISTRY[name][0])


def check_metric_paths(names: str | Sequence[str] | None, paths: dict[str, Any], flag: str = "metric_paths") -> None:
    """Refuse a path key that none of the metrics ``names`` (None: any registered one) takes.

    Why: a typo would otherwise be ignored (the metric falls back to its default weights) or crash.
    """
    every = list(dict.fromkeys(k for n in _REGISTRY for k in metric_path_keys(n)))
    if names is None:
        keys, who, takes = every, "any metric", "use one of"
    else:
        names = [names] if isinstance(names, str) else list(names)
        if paths and any(n not in _REGISTRY for n in names):
            get_metric(next(n for n in names if n not in _REGISTRY))  # names the unknown metric
        keys = [k for n in names for k in metric_path_keys(n)]
        who = f"metric {names[0]}" if len(names) == 1 else f"the metrics {', '.join(names)}"
        takes = "it takes" if len(names) == 1 else "they take"
    bad = next((k for k in paths if k not in keys), None)
    if bad is None:
        return
    owners = [n for n in _REGISTRY if bad in metric_path_keys(n)]
    hint = f" ({bad} is for {', '.join(owners)})" if owners else ""
    raise DitaccelError(f"{flag} key {bad!r} is not one {who} uses; {takes} {', '.join(keys) or 'none'}{hint}")


register_metric("adherence", lambda **_: AdherenceMetric(),
                "shapes-world checker: fraction of images whose colour, shape, size and position match (bundled model)")
register_metric("psnr", PSNR, "PSNR (dB) to the uncached images with the same prompts and seeds",
                "PSNR (dB)")
register_metric("ssim", SSIM, "SSIM to the uncached images with the same prompts and seeds", "SSIM")
register_metric("clip", _external("ClipScore"),
                "CLIP score; a transformers CLIP folder or hub id (clip_path= / $DITACCEL_CLIP), default "
                "openai/clip-vit-large-patch14", "CLIP")
register_metric("imagereward", _external("ImageRewardMetric"),
                "ImageReward; ImageReward.pt (imagereward_path= / $DITACCEL_IMAGEREWARD), med_config.json "
                "(med_config= / $DITACCEL_IMAGEREWARD_MED_CONFIG) and a bert-base-uncased tokenizer folder "
                "(bert_path= / $DITACCEL_BERT); defaults: THUDM/ImageReward, google-bert/bert-base-uncased", "ImageReward")
register_metric("hpsv2", _external("HPSv2Metric"),
                "HPSv2; its checkpoint (hpsv2_path= / $DITACCEL_HPSV2) and open_clip ViT-H-14 weights "
                "(open_clip_path= / $DITACCEL_OPEN_CLIP); defaults: xswu/HPSv2, laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
                "HPSv2")
register_metric("fid", _external("FIDMetric"),
                "FID (set metric, torchmetrics); Inception weights (inception_path= / $DITACCEL_INCEPTION, default "
                "torch-fidelity's) and a reference image folder or .npz stats (fid_reference= / $DITACCEL_FID_REF)",
                "-FID")


__all__ = ["PSNR", "SSIM", "AdherenceMetric", "Metric", "available_metrics", "check_metric_paths", "env_path",
           "get_metric", "metric_label", "metric_path_keys", "needs_reference", "psnr", "register_metric", "ssim"]
