"""ditaccel: faster, smaller diffusion transformers without retraining.

Public names are imported lazily so ``import ditaccel`` (and the CLI's ``--help``) stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from ditaccel.errors import DitaccelError

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "load_pipeline": "ditaccel.pipeline",
    "pipeline_call_kwargs": "ditaccel.pipeline",
    "generate_images": "ditaccel.pipeline",
    "CacheSchedule": "ditaccel.caching",
    "apply_schedule": "ditaccel.caching",
    "schedule_macs": "ditaccel.caching",
    "presets": "ditaccel.caching",
    "CacheHandle": "ditaccel.caching",
    "compile_components": "ditaccel.caching",
    "get_adapter": "ditaccel.models",
    "search": "ditaccel.search",
    "SearchConfig": "ditaccel.search",
    "Frontier": "ditaccel.search",
    "load_frontier": "ditaccel.search",
    "select": "ditaccel.search",
    "get_metric": "ditaccel.metrics",
    "available_metrics": "ditaccel.metrics",
    "FP4DiTConfig": "ditaccel.quant",
    "quantize_": "ditaccel.quant",
    "collect_calibration": "ditaccel.quant",
    "save_quantized": "ditaccel.quant",
    "load_quantized": "ditaccel.quant",
}

__all__ = ["DitaccelError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        # ``ditaccel.search`` is both a package and its main function: the package is callable.
        value = module if module.__name__ == f"{__name__}.{name}" else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ditaccel' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
