"""Model adapters: which sub-modules of a diffusers DiT are cacheable, and what they cost.

``get_adapter(pipe_or_transformer)`` picks the adapter from the transformer's class. See
``ditaccel.models.base`` for what an adapter provides.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ditaccel.errors import UnsupportedModelError
from ditaccel.models.base import Adapter, BlockSpec, attention_macs, linear_macs, unwrap
from ditaccel.models.families import FluxAdapter, HunyuanAdapter, PixArtAdapter, SD3Adapter

# transformer class name -> adapter class
ADAPTERS: dict[str, type[Adapter]] = {
    "PixArtTransformer2DModel": PixArtAdapter,
    "FluxTransformer2DModel": FluxAdapter,
    "HunyuanDiT2DModel": HunyuanAdapter,
    "SD3Transformer2DModel": SD3Adapter,
}

SUPPORTED = "PixArt-alpha/Sigma (PixArtTransformer2DModel), FLUX.1 (FluxTransformer2DModel), " \
            "Hunyuan-DiT (HunyuanDiT2DModel), SD3 (SD3Transformer2DModel)"


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
    """Pixels per latent cell: the pipeline's ``vae_scale_factor``; 8 for a bare transformer."""
    f = getattr(pipe_or_transformer, "vae_scale_factor", None)
    return int(f) if f else 8


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
    "ADAPTERS", "Adapter", "BlockSpec", "FluxAdapter", "HunyuanAdapter", "PixArtAdapter", "SD3Adapter",
    "SUPPORTED", "attention_macs", "get_adapter", "get_transformer", "image_size", "linear_macs",
    "vae_factor",
]
