"""The supported DiT families, following the installed diffusers (0.42) block code.

A new family is one ``Adapter`` subclass here, listed in ``FAMILY_ADAPTERS`` (and a replica
entry in ``ditaccel.testing.replicas`` for its tests).

ECAD semantics everywhere: the hooked sub-module's raw output is cached; norms, adaLN
shift/scale/gates and residual adds stay in the block and always run at the current step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ditaccel.models.base import (
    Adapter,
    BlockSpec,
    attention_macs,
    linear_attention_macs,
    module_conv_macs,
    module_linear_macs,
)


class PixArtAdapter(Adapter):
    """PixArt-alpha / PixArt-Sigma: ``BasicTransformerBlock`` with attn1 (self), attn2 (cross), ff."""

    family = "pixart"
    transformer_classes = ("PixArtTransformer2DModel",)
    label = "PixArt-alpha/Sigma"
    block_list_names = ("transformer_blocks",)
    quant_keep = (*Adapter.quant_keep, "adaln_single", "caption_projection")
    first_ffn_linears = ("net.0.proj",)
    component_names = ("attn1", "attn2", "ff")
    attention_components = ("attn1", "attn2")
    cross_attention_component = "attn2"
    stack_residual = True
    _rest_rules = (
        (r"^pos_embed\.", "img"),
        (r"^proj_out$", "img"),
        (r"^caption_projection\.", "txt"),
    )

    def _blocks(self) -> list[BlockSpec]:
        return [
            BlockSpec(f"transformer_blocks.{i}", blk, "block",
                      ("attn1", "attn2" if blk.attn2 is not None else None, "ff"))
            for i, blk in enumerate(self.transformer.transformer_blocks)
        ]

    def _component_macs(self, spec: BlockSpec, slot: int, mod: nn.Module, batch: int, n_img: int,
                        n_txt: int) -> int:
        if slot == 0:
            return attention_macs(mod, batch, n_img)
        if slot == 1:
            return attention_macs(mod, batch, n_img, n_kv=n_txt)
        return module_linear_macs(mod, batch, n_img)

    fast_block_glue = (1.0, 0.0, 1.0)  # norm1 + modulation feed attn1 only, norm2 + modulation ff only

    def cached_block_forward(self, spec: BlockSpec) -> Callable[..., Any] | None:
        blk = spec.module
        if (getattr(blk, "norm_type", None) != "ada_norm_single" or blk.pos_embed is not None
                or blk._chunk_size is not None or blk.only_cross_attention or blk.attn2 is None):
            return None  # a layout _pixart_block_with_cache does not copy: component hooks only
        return _pixart_block_with_cache

    def default_text_len(self, pipe: Any = None) -> int:
        # PixArt-alpha pipelines pad T5 to 120 tokens, PixArt-Sigma to 300.
        return 300 if pipe is not None and type(pipe).__name__.startswith("PixArtSigma") else 120


def _pixart_block_with_cache(
    block: nn.Module, cached: tuple[torch.Tensor | None, ...], call: Callable[..., Any], hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None, encoder_hidden_states: torch.Tensor | None = None,
    encoder_attention_mask: torch.Tensor | None = None, timestep: torch.Tensor | None = None,
    cross_attention_kwargs: dict[str, Any] | None = None, class_labels: Any = None,
    added_cond_kwargs: Any = None,
) -> torch.Tensor:
    """``BasicTransformerBlock.forward`` (diffusers 0.42, ``ada_norm_single``, no pos_embed, no chunking)
    with ``cached[slot]`` used in place of attn1 / attn2 / ff where given; the others run as
    ``call(slot, module, *args, **kwargs)``.

    Skips norm1 + modulation when attn1 is cached and norm2 + modulation when ff is cached; every
    other op is the block's own, in its order, so the output is bit-identical to the hooked block.
    """
    if cross_attention_kwargs is not None and cross_attention_kwargs.get("scale", None) is not None:
        from diffusers.utils import logging

        logging.get_logger("diffusers.models.attention").warning(
            "Passing `scale` to `cross_attention_kwargs` is deprecated. `scale` will be ignored.")
    a1, a2, ff = cached
    batch_size = hidden_states.shape[0]
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
        block.scale_shift_table[None] + timestep.reshape(batch_size, 6, -1)
    ).chunk(6, dim=1)
    cross_attention_kwargs = cross_attention_kwargs.copy() if cross_attention_kwargs is not None else {}
    gligen_kwargs = cross_attention_kwargs.pop("gligen", None)
    if a1 is None:
        norm_hidden_states = block.norm1(hidden_states)
        norm_hidden_states = norm_hidden_states * (1 + scale_msa) + shift_msa
        a1 = call(0, block.attn1, norm_hidden_states, encoder_hidden_states=None, attention_mask=attention_mask,
                  **cross_attention_kwargs)
    hidden_states = gate_msa * a1 + hidden_states
    if hidden_states.ndim == 4:
        hidden_states = hidden_states.squeeze(1)
    if gligen_kwargs is not None:
        hidden_states = block.fuser(hidden_states, gligen_kwargs["objs"])
    if a2 is None:
        a2 = call(1, block.attn2, hidden_states, encoder_hidden_states=encoder_hidden_states,
                  attention_mask=encoder_attention_mask, **cross_attention_kwargs)
    hidden_states = a2 + hidden_states
    if ff is None:
        norm_hidden_states = block.norm2(hidden_states)
        norm_hidden_states = norm_hidden_states * (1 + scale_mlp) + shift_mlp
        ff = call(2, block.ff, norm_hidden_states)
    hidden_states = gate_mlp * ff + hidden_states
    if hidden_states.ndim == 4:
        hidden_states = hidden_states.squeeze(1)
    return hidden_states


class FluxAdapter(Adapter):
    """FLUX.1: double-stream blocks then single-stream blocks.

    Slots (a label names the double-block and the single-block sub-module it maps to):
    ``attn`` (double: joint image+text attention; single: attention),
    ``ff|proj_mlp`` (double: image FF; single: MLP input projection, before its GELU),
    ``ff_context|proj_out`` (double: text FF; single: output projection, before the gate).
    """

    family = "flux"
    transformer_classes = ("FluxTransformer2DModel",)
    label = "FLUX.1"
    block_list_names = ("transformer_blocks", "single_transformer_blocks")
    quant_keep = (*Adapter.quant_keep, "time_text_embed")
    first_ffn_linears = ("net.0.proj", "proj_mlp")
    qkv_linears = (*Adapter.qkv_linears, "add_q_proj", "add_k_proj", "add_v_proj")
    component_names = ("attn", "ff|proj_mlp", "ff_context|proj_out")
    attention_components = ("attn",)
    cross_attention_component = None
    _rest_rules = (
        (r"^x_embedder$", "img"),
        (r"^proj_out$", "img"),
        (r"^context_embedder$", "txt"),
    )

    def _blocks(self) -> list[BlockSpec]:
        t = self.transformer
        double = [BlockSpec(f"transformer_blocks.{i}", b, "double", ("attn", "ff", "ff_context"))
                  for i, b in enumerate(t.transformer_blocks)]
        single = [BlockSpec(f"single_transformer_blocks.{i}", b, "single", ("attn", "proj_mlp", "proj_out"))
                  for i, b in enumerate(t.single_transformer_blocks)]
        return double + single

    def _token_patch(self) -> int:
        # FLUX packs 2x2 latent patches into one token (config.patch_size stays 1).
        return 2 * int(self.transformer.config.patch_size)

    def _component_macs(self, spec: BlockSpec, slot: int, mod: nn.Module, batch: int, n_img: int,
                        n_txt: int) -> int:
        if spec.kind == "double":
            if slot == 0:
                return attention_macs(mod, batch, n_img, n_ctx=n_txt)
            return module_linear_macs(mod, batch, n_img if slot == 1 else n_txt)
        if slot == 0:  # single-stream attention over text + image tokens, no output projection
            return attention_macs(mod, batch, n_img + n_txt)
        return module_linear_macs(mod, batch, n_img + n_txt)

    def default_text_len(self, pipe: Any = None) -> int:
        return 512  # FluxPipeline's default max_sequence_length


class HunyuanAdapter(Adapter):
    """Hunyuan-DiT: attn1 (self), attn2 (cross), ff. Long skips (skip_linear) always run."""

    family = "hunyuan"
    transformer_classes = ("HunyuanDiT2DModel",)
    label = "Hunyuan-DiT"
    block_list_names = ("blocks",)
    quant_keep = (*Adapter.quant_keep, "text_embedder", "time_extra_emb")
    first_ffn_linears = ("net.0.proj",)
    component_names = ("attn1", "attn2", "ff")
    attention_components = ("attn1", "attn2")
    cross_attention_component = "attn2"
    _rest_rules = (
        (r"^pos_embed\.", "img"),
        (r"^proj_out$", "img"),
        (r"\.skip_linear$", "img"),
        (r"^text_embedder\.", "t5"),
        (r"^time_extra_emb\.pooler\.(k_proj|v_proj)$", "t5+1"),
    )

    def _component_macs(self, spec: BlockSpec, slot: int, mod: nn.Module, batch: int, n_img: int,
                        n_txt: int) -> int:
        if slot == 0:
            return attention_macs(mod, batch, n_img)
        if slot == 1:
            return attention_macs(mod, batch, n_img, n_kv=n_txt)
        return module_linear_macs(mod, batch, n_img)

    def _custom_rows(self, kind: str, n_img: int, n_txt: int) -> int:
        t5 = int(self.transformer.config.text_len_t5)
        return t5 if kind == "t5" else t5 + 1

    def _rest_extra(self, batch: int, n_img: int, n_txt: int) -> int:
        # The T5 attention pool: one query token over text_len_t5 + 1 keys (QK^T and AV).
        pool = self.transformer.time_extra_emb.pooler
        t5 = int(self.transformer.config.text_len_t5)
        return batch * 2 * (t5 + 1) * pool.q_proj.out_features

    def default_text_len(self, pipe: Any = None) -> int:
        cfg = self.transformer.config
        return int(cfg.text_len) + int(cfg.text_len_t5)  # CLIP-side 77 + T5 256 tokens, concatenated


class SD3Adapter(Adapter):
    """SD3 / SD3.5 joint blocks: attn (joint), ff (image), ff_context (text; absent in the last block).

    SD3.5's extra self-attention ``attn2`` (dual-attention blocks) is not cacheable here; it is
    counted with the always-running rest.
    """

    family = "sd3"
    transformer_classes = ("SD3Transformer2DModel",)
    label = "SD3"
    block_list_names = ("transformer_blocks",)
    block_kind = "joint"
    quant_keep = (*Adapter.quant_keep, "time_text_embed")
    first_ffn_linears = ("net.0.proj",)
    qkv_linears = (*Adapter.qkv_linears, "add_q_proj", "add_k_proj", "add_v_proj")
    component_names = ("attn", "ff", "ff_context")
    attention_components = ("attn",)
    cross_attention_component = None
    _rest_rules = (
        (r"^pos_embed\.", "img"),
        (r"^proj_out$", "img"),
        (r"^context_embedder$", "txt"),
        (r"\.attn2\.", "img"),
    )

    def _component_macs(self, spec: BlockSpec, slot: int, mod: nn.Module, batch: int, n_img: int,
                        n_txt: int) -> int:
        if slot == 0:
            return attention_macs(mod, batch, n_img, n_ctx=n_txt)
        return module_linear_macs(mod, batch, n_img if slot == 1 else n_txt)

    def _rest_extra(self, batch: int, n_img: int, n_txt: int) -> int:
        # attention matmuls of SD3.5 dual-attention blocks (their projections are counted as rows)
        total = 0
        for b in self.transformer.transformer_blocks:
            if getattr(b, "attn2", None) is not None:
                total += batch * n_img * n_img * (b.attn2.to_q.out_features + b.attn2.to_v.out_features)
        return total

    def default_text_len(self, pipe: Any = None) -> int:
        return 77 + 256  # CLIP tokens + T5 tokens (max_sequence_length default), concatenated


class SanaAdapter(Adapter):
    """Sana: ``SanaTransformerBlock`` with attn1 (linear self-attention), attn2 (cross), ff (GLUMBConv).

    attn1 is ReLU linear attention (cost linear in the image tokens); ff is a convolutional
    gated FFN (1x1, depthwise 3x3, 1x1) run on the token grid. attn2 adds to the residual
    without a norm or gate, so its cached output is reused as is, like every other slot.
    """

    family = "sana"
    transformer_classes = ("SanaTransformer2DModel",)
    label = "Sana"
    block_list_names = ("transformer_blocks",)
    component_names = ("attn1", "attn2", "ff")
    attention_components = ("attn1", "attn2")
    cross_attention_component = "attn2"
    vae_factor_default = 32  # Sana's deep-compression autoencoder (DC-AE f32)
    stack_residual = True
    quant_keep = (*Adapter.quant_keep, "caption_projection")
    first_ffn_linears = ()  # its FFN is convolutional: no Linear before the activation
    _rest_rules = (
        (r"^patch_embed\.", "img"),
        (r"^proj_out$", "img"),
        (r"^caption_projection\.", "txt"),
    )

    def _component_macs(self, spec: BlockSpec, slot: int, mod: nn.Module, batch: int, n_img: int,
                        n_txt: int) -> int:
        if slot == 0:
            return linear_attention_macs(mod, batch, n_img)
        if slot == 1:
            return attention_macs(mod, batch, n_img, n_kv=n_txt)
        return module_conv_macs(mod, batch, n_img)

    def default_text_len(self, pipe: Any = None) -> int:
        return 300  # SanaPipeline's default max_sequence_length (the instruction prefix is cut off)


#: Every supported family, in the order error messages list them.
FAMILY_ADAPTERS: tuple[type[Adapter], ...] = (PixArtAdapter, FluxAdapter, HunyuanAdapter, SD3Adapter, SanaAdapter)
