"""Model adapters: which sub-modules of a diffusers DiT are cacheable, and what they cost.

``get_adapter(pipe_or_transformer)`` picks the adapter from the transformer's class. See
``ditaccel.models.base`` for what an adapter provides. Everything ditaccel knows about a
diffusers class layout lives in the adapters (``families.py``): block lists, cacheable
sub-modules, MACs, and the names quantization keeps or treats specially (read here by
``quant_keep_patterns``, ``first_ffn_pattern`` and ``qkv_pattern``).
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from ditaccel.errors import UnsupportedModelError
from ditaccel.models.base import Adapter, BlockSpec, attention_macs, linear_macs, unwrap
from ditaccel.models.families import (
    FAMILY_ADAPTERS,
    FluxAdapter,
    HunyuanAdapter,
    PixArtAdapter,
    SanaAdapter,
    SD3Adapter,
)

# transformer class name -> adapter class
ADAPTERS: dict[str, type[Adapter]] = {name: cls for cls in FAMILY_ADAPTERS for name in cls.transformer_classes}

SUPPORTED = ", ".join(f"{cls.label} ({'/'.join(cls.transformer_classes)})" for cls in FAMILY_ADAPTERS)


def _names(attr: str) -> list[str]:
    """The union, in first-seen order, of one name attribute over the base and every adapter."""
    return list(dict.fromkeys(n for cls in (Adapter, *ADAPTERS.values()) for n in getattr(cls, attr)))


def _alternation(names: list[str]) -> str:
    return "|".join(re.escape(n) for n in names)


def quant_keep_patterns() -> tuple[str, ...]:
    """Default ``FP4DiTConfig.keep``: every family's top-level embeddings and final layer.

    One pattern, anchored at the top level (so FLUX's per-block ``proj_out`` is still quantized).
    Built from the adapters' ``quant_keep`` when called, so a family added to ``ADAPTERS`` counts.
    """
    return (rf"^({_alternation(_names('quant_keep'))})(\.|$)",)


def first_ffn_pattern() -> str:
    """Default ``FP4DiTConfig.first_ffn_pattern``: every family's first FFN linear (``first_ffn_linears``)."""
    return rf"(^|\.)({_alternation(_names('first_ffn_linears'))})$"


def qkv_pattern() -> str:
    """Default ``FP4DiTConfig.qkv_pattern``: every family's Q/K/V projections (``qkv_linears``)."""
    return rf"(^|\.)({_alternation(_names('qkv_linears'))})$"


def get_transformer(pipe_or_transformer: Any) -> nn.Module:
    """The diffusion transformer of a pipeline (its ``.transformer``), or the module itself."""
    t = getattr(pipe_or_transformer, "transformer", None)
    if isinstance(t, nn.Module):
        return unwrap(t)
    if isinstance(pipe_or_transformer, nn.Module):
        return unwrap(pipe_or_transformer)
    raise UnsupportedModelError(
        f"{type(pipe_or_transformer).__name__} is neither a pipeline with a .transformer nor a torch module; "
        f"pass a diffusers pipeline or transformer of: {SUPPORTED}"
    )


def get_adapter(pipe_or_transformer: Any) -> Adapter:
    """The adapter for a pipeline's (or a bare) transformer; unsupported classes raise one line."""
    t = get_transformer(pipe_or_transformer)
    for cls in type(t).__mro__:
        if cls.__name__ in ADAPTERS:
            return ADAPTERS[cls.__name__](t)
    raise UnsupportedModelError(
        f"no ditaccel adapter for {type(t).__name__}; supported families: {SUPPORTED}"
    )


def vae_factor(pipe_or_transformer: Any) -> int:
    """Pixels per latent cell: the pipeline's ``vae_scale_factor``; for a bare transformer, its
    family's usual autoencoder factor (8, Sana's 32), or 8 for a transformer no adapter knows."""
    f = getattr(pipe_or_transformer, "vae_scale_factor", None)
    if f:
        return int(f)
    try:
        return get_adapter(pipe_or_transformer).vae_factor_default
    except UnsupportedModelError:
        return 8


def image_size(pipe: Any, call_kwargs: dict[str, Any] | None = None) -> tuple[int, int]:
    """(height, width) in pixels a pipeline call generates: the call's own, else the model's default."""
    kw = call_kwargs or {}
    t = get_transformer(pipe)
    base = getattr(t.config, "sample_size", None) or getattr(pipe, "default_sample_size", None)
    if base is None and not (kw.get("height") and kw.get("width")):
        raise UnsupportedModelError(f"cannot tell the image size of {type(t).__name__}: pass height and width")
    f = vae_factor(pipe)
    return int(kw.get("height") or base * f), int(kw.get("width") or base * f)


__all__ = [
    "ADAPTERS", "Adapter", "BlockSpec", "FAMILY_ADAPTERS", "FluxAdapter", "HunyuanAdapter", "PixArtAdapter",
    "SD3Adapter", "SUPPORTED", "SanaAdapter", "attention_macs", "first_ffn_pattern", "get_adapter",
    "get_transformer", "image_size", "linear_macs", "qkv_pattern", "quant_keep_patterns", "vae_factor",
]
