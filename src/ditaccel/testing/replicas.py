"""Tiny random replicas of every supported DiT family, built through the real diffusers pipelines.

Why: tests, searches, quantization checks and benchmarks need a pipeline of each family that
runs in well under a second on a CPU, with no network and no downloaded weights. Everything
here is built from configs in code: text encoders are one-layer random models, tokenizers are
word-level ``tokenizers`` models wrapped in ``PreTrainedTokenizerFast``, VAEs have two 8-channel
levels (so ``vae_scale_factor == 2``).

Stable API (other modules import it):

- ``FAMILIES``: the family names accepted below (the keys of ``REPLICAS``).
- ``REPLICAS``: one ``Replica`` entry per family; a new family is one entry (see ``Replica``).
- ``build_pipeline(family, seed=0)``: a pipeline of the real class, on CPU, fp32, eval mode.
- ``build_transformer(family, seed=0)``: only the tiny transformer.
- ``call_kwargs(family)``: small, fast keyword arguments for ``pipe(prompt, **kwargs)``
  (height/width, steps, guidance, ``output_type="latent"``, ...). Pass a ``generator`` yourself.
- ``transformer_inputs(family, transformer, batch=2, height=..., width=..., text_len=..., seed=0)``:
  keyword arguments for one direct ``transformer(**inputs)`` call (used by MACs checks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

_WORDS = (
    "a an the of and with on in red green blue yellow black white fox cat dog bird house tree "
    "car boat sky sea mountain city street photo painting drawing of small large old new bright "
    "dark happy sad running sitting flying standing under over near far portrait landscape"
).split()

# Tiny sizes: latents are 8x8 for a 16x16 image (vae_scale_factor 2).
_IMAGE = 16
_STEPS = 4


def _tokenizer(kind: str, max_length: int) -> Any:
    """A word-level fast tokenizer; ``kind`` picks CLIP-, T5- or BERT-like special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if kind == "clip":
        specials = {"pad_token": "<|endoftext|>", "bos_token": "<|startoftext|>",
                    "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
        vocab_specials = ["<|startoftext|>", "<|endoftext|>"]
    elif kind == "bert":
        specials = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]"}
        vocab_specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    else:  # t5
        specials = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
        vocab_specials = ["<pad>", "</s>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(vocab_specials + list(dict.fromkeys(_WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=specials["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if kind == "clip":
        tok.post_processor = processors.TemplateProcessing(
            single="<|startoftext|> $A <|endoftext|>",
            special_tokens=[("<|startoftext|>", vocab["<|startoftext|>"]), ("<|endoftext|>", vocab["<|endoftext|>"])],
        )
    elif kind == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
        )
    else:
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", vocab["</s>"])]
        )
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length, **specials)


def _vocab_size() -> int:
    return len(dict.fromkeys(_WORDS)) + 8


def _t5(d_model: int) -> Any:
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=_vocab_size(), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=1,
                   num_heads=2, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                   decoder_start_token_id=0)
    return T5EncoderModel(cfg)


def _clip(hidden: int, with_projection: bool) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=_vocab_size(), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                         projection_dim=hidden, bos_token_id=0, eos_token_id=1, pad_token_id=1,
                         hidden_act="gelu")
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg)


def _bert(hidden: int) -> Any:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=_vocab_size(), hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=80)
    return BertModel(cfg, add_pooling_layer=False)


def _vae(latent_channels: int, flow: bool = False) -> Any:
    from diffusers import AutoencoderKL

    kwargs: dict[str, Any] = {}
    if flow:
        kwargs = {"shift_factor": 0.0609, "scaling_factor": 1.5035, "use_quant_conv": False,
                  "use_post_quant_conv": False}
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), layers_per_block=1, norm_num_groups=4,
        sample_size=_IMAGE, **kwargs,
    )


# -- per-family entries --------------------------------------------------------------------------
# Each family: a transformer builder (called after torch.manual_seed(seed)), a pipeline builder
# (called with the transformer after torch.manual_seed(seed + 1); it builds its encoders in a fixed
# order, so the random weights depend on the seed only) and an input builder for direct calls.


def _pixart_transformer() -> torch.nn.Module:
    from diffusers import PixArtTransformer2DModel

    return PixArtTransformer2DModel(
        sample_size=_IMAGE // 2, num_layers=3, attention_head_dim=8, num_attention_heads=2,
        in_channels=4, out_channels=8, patch_size=2, cross_attention_dim=16, caption_channels=32,
        norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
        use_additional_conditions=False,
    )


def _pixart_pipeline(transformer: torch.nn.Module, cls_name: str) -> Any:
    import diffusers

    return getattr(diffusers, cls_name)(
        tokenizer=_tokenizer("t5", 16), text_encoder=_t5(32), vae=_vae(4), transformer=transformer,
        scheduler=diffusers.DPMSolverMultistepScheduler(),
    )


def _pixart_inputs(transformer: torch.nn.Module, batch: int, height: int, width: int, text_len: int,
                   g: torch.Generator, timestep: float) -> dict[str, Any]:
    cfg = transformer.config
    kw: dict[str, Any] = {
        "hidden_states": torch.randn(batch, cfg.in_channels, height // 2, width // 2, generator=g),
        "encoder_hidden_states": torch.randn(batch, text_len, cfg.caption_channels, generator=g),
        "timestep": torch.full((batch,), timestep),
        "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
    }
    if cfg.use_additional_conditions:
        kw["added_cond_kwargs"] = {"resolution": torch.tensor([[height, width]] * batch, dtype=torch.float32),
                                   "aspect_ratio": torch.tensor([[1.0]] * batch)}
    return kw


def _flux_transformer() -> torch.nn.Module:
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=True,
        axes_dims_rope=(2, 2, 4),
    )


def _flux_pipeline(transformer: torch.nn.Module) -> Any:
    import diffusers

    return diffusers.FluxPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=_vae(4, flow=True),
        text_encoder=_clip(16, False), tokenizer=_tokenizer("clip", 77),
        text_encoder_2=_t5(32), tokenizer_2=_tokenizer("t5", 16), transformer=transformer,
    )


def _flux_inputs(transformer: torch.nn.Module, batch: int, height: int, width: int, text_len: int,
                 g: torch.Generator, timestep: float) -> dict[str, Any]:
    from diffusers import FluxPipeline

    cfg = transformer.config
    lh, lw = height // 2, width // 2
    c = cfg.in_channels // 4
    lat = torch.randn(batch, c, lh, lw, generator=g)
    return {
        "hidden_states": FluxPipeline._pack_latents(lat, batch, c, lh, lw),
        "encoder_hidden_states": torch.randn(batch, text_len, cfg.joint_attention_dim, generator=g),
        "pooled_projections": torch.randn(batch, cfg.pooled_projection_dim, generator=g),
        "timestep": torch.full((batch,), timestep / 1000.0),
        "guidance": torch.full((batch,), 3.5),
        "img_ids": FluxPipeline._prepare_latent_image_ids(batch, lh // 2, lw // 2, "cpu", torch.float32),
        "txt_ids": torch.zeros(text_len, 3),
    }


def _hunyuan_transformer() -> torch.nn.Module:
    from diffusers import HunyuanDiT2DModel

    return HunyuanDiT2DModel(
        sample_size=_IMAGE // 2, patch_size=2, in_channels=4, num_layers=4, attention_head_dim=8,
        num_attention_heads=2, cross_attention_dim=16, cross_attention_dim_t5=32,
        pooled_projection_dim=16, hidden_size=16, text_len=77, text_len_t5=256,
    )


def _hunyuan_pipeline(transformer: torch.nn.Module) -> Any:
    import diffusers

    return diffusers.HunyuanDiTPipeline(
        vae=_vae(4), text_encoder=_bert(16), tokenizer=_tokenizer("bert", 77), transformer=transformer,
        scheduler=diffusers.DDPMScheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False, text_encoder_2=_t5(32), tokenizer_2=_tokenizer("t5", 256),
    )


def _hunyuan_inputs(transformer: torch.nn.Module, batch: int, height: int, width: int, text_len: int,
                    g: torch.Generator, timestep: float) -> dict[str, Any]:
    from diffusers.models.embeddings import get_2d_rotary_pos_embed

    cfg = transformer.config
    lh, lw = height // 2, width // 2
    n77, n256 = cfg.text_len, cfg.text_len_t5  # fixed by the config: text_len is ignored
    head = cfg.hidden_size // cfg.num_attention_heads
    gh, gw = lh // cfg.patch_size, lw // cfg.patch_size
    rope = get_2d_rotary_pos_embed(head, ((0, 0), (gh, gw)), (gh, gw), use_real=True)
    return {
        "hidden_states": torch.randn(batch, cfg.in_channels, lh, lw, generator=g),
        "timestep": torch.full((batch,), timestep),
        "encoder_hidden_states": torch.randn(batch, n77, cfg.cross_attention_dim, generator=g),
        "text_embedding_mask": torch.ones(batch, n77, dtype=torch.long),
        "encoder_hidden_states_t5": torch.randn(batch, n256, cfg.cross_attention_dim_t5, generator=g),
        "text_embedding_mask_t5": torch.ones(batch, n256, dtype=torch.long),
        "image_meta_size": torch.tensor([[height, width, height, width, 0, 0]] * batch, dtype=torch.float32),
        "style": torch.zeros(batch, dtype=torch.long),
        "image_rotary_emb": rope,
    }


def _sd3_transformer() -> torch.nn.Module:
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=_IMAGE // 2, patch_size=2, in_channels=4, num_layers=3, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
        pooled_projection_dim=32, out_channels=4, pos_embed_max_size=16,
    )


def _sd3_pipeline(transformer: torch.nn.Module) -> Any:
    import diffusers

    return diffusers.StableDiffusion3Pipeline(
        transformer=transformer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
        vae=_vae(4, flow=True), text_encoder=_clip(16, True), tokenizer=_tokenizer("clip", 77),
        text_encoder_2=_clip(16, True), tokenizer_2=_tokenizer("clip", 77),
        text_encoder_3=_t5(32), tokenizer_3=_tokenizer("t5", 16),
    )


def _sd3_inputs(transformer: torch.nn.Module, batch: int, height: int, width: int, text_len: int,
                g: torch.Generator, timestep: float) -> dict[str, Any]:
    cfg = transformer.config
    return {
        "hidden_states": torch.randn(batch, cfg.in_channels, height // 2, width // 2, generator=g),
        "encoder_hidden_states": torch.randn(batch, text_len, cfg.joint_attention_dim, generator=g),
        "pooled_projections": torch.randn(batch, cfg.pooled_projection_dim, generator=g),
        "timestep": torch.full((batch,), timestep),
    }


# Sana's pipeline wants height and width divisible by 32: its replica runs at 32x32 px.
_SANA_IMAGE = 32


def _sana_transformer() -> torch.nn.Module:
    from diffusers import SanaTransformer2DModel

    return SanaTransformer2DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=3,
        num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=32,
        mlp_ratio=2.0, sample_size=_SANA_IMAGE // 2, patch_size=2,
    )


def _gemma2(hidden: int) -> Any:
    from transformers import Gemma2Config, Gemma2Model

    cfg = Gemma2Config(vocab_size=_vocab_size(), hidden_size=hidden, intermediate_size=2 * hidden,
                       num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=hidden // 2,
                       max_position_embeddings=64, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    return Gemma2Model(cfg)


def _dc_ae(latent_channels: int) -> Any:
    """A two-level deep-compression autoencoder (Sana's VAE class), so ``vae_scale_factor == 2``."""
    from diffusers import AutoencoderDC

    return AutoencoderDC(
        in_channels=3, latent_channels=latent_channels, attention_head_dim=2,
        encoder_block_types=("ResBlock", "EfficientViTBlock"), decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
        encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1), upsample_block_type="interpolate",
        downsample_block_type="stride_conv", decoder_norm_types="rms_norm", decoder_act_fns="silu",
        scaling_factor=0.41407,
    )


def _sana_pipeline(transformer: torch.nn.Module) -> Any:
    import diffusers

    scheduler = diffusers.DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                      flow_shift=3.0)
    return diffusers.SanaPipeline(tokenizer=_tokenizer("t5", 16), text_encoder=_gemma2(32), vae=_dc_ae(4),
                                  transformer=transformer, scheduler=scheduler)


def _sana_inputs(transformer: torch.nn.Module, batch: int, height: int, width: int, text_len: int,
                 g: torch.Generator, timestep: float) -> dict[str, Any]:
    cfg = transformer.config
    return {
        "hidden_states": torch.randn(batch, cfg.in_channels, height // 2, width // 2, generator=g),
        "encoder_hidden_states": torch.randn(batch, text_len, cfg.caption_channels, generator=g),
        "encoder_attention_mask": torch.ones(batch, text_len),
        "timestep": torch.full((batch,), timestep),
    }


# -- the registry ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Replica:
    """One family's tiny replica. Adding a family to the tests is one entry in ``REPLICAS``.

    ``transformer()`` builds the tiny transformer; ``pipeline(transformer)`` wraps it in the real
    pipeline class with tiny encoders; ``inputs(transformer, batch, height, width, text_len,
    generator, timestep)`` makes one direct call's arguments; ``call_kwargs`` are the family's
    own pipeline arguments (besides size, steps and latent output); ``image`` is the pixel side.
    """

    transformer: Callable[[], torch.nn.Module]
    pipeline: Callable[[torch.nn.Module], Any]
    inputs: Callable[..., dict[str, Any]]
    call_kwargs: dict[str, Any] = field(default_factory=dict)
    image: int = _IMAGE


REPLICAS: dict[str, Replica] = {
    "pixart-alpha": Replica(_pixart_transformer, partial(_pixart_pipeline, cls_name="PixArtAlphaPipeline"),
                            _pixart_inputs,
                            {"guidance_scale": 4.5, "use_resolution_binning": False, "max_sequence_length": 16}),
    "pixart-sigma": Replica(_pixart_transformer, partial(_pixart_pipeline, cls_name="PixArtSigmaPipeline"),
                            _pixart_inputs,
                            {"guidance_scale": 4.5, "use_resolution_binning": False, "max_sequence_length": 16}),
    # FLUX-dev style guidance embedding plus true CFG (two transformer calls per step).
    "flux": Replica(_flux_transformer, _flux_pipeline, _flux_inputs,
                    {"guidance_scale": 3.5, "true_cfg_scale": 2.0, "negative_prompt": "dark",
                     "max_sequence_length": 16}),
    "hunyuan": Replica(_hunyuan_transformer, _hunyuan_pipeline, _hunyuan_inputs,
                       {"guidance_scale": 5.0, "use_resolution_binning": False}),
    "sd3": Replica(_sd3_transformer, _sd3_pipeline, _sd3_inputs,
                   {"guidance_scale": 5.0, "max_sequence_length": 16}),
    # No instruction prefix ([] rather than None, which call-argument merging drops): the prompt
    # alone, padded to 16 tokens, like the other replicas.
    "sana": Replica(_sana_transformer, _sana_pipeline, _sana_inputs,
                    {"guidance_scale": 4.5, "use_resolution_binning": False, "max_sequence_length": 16,
                     "complex_human_instruction": []},
                    image=_SANA_IMAGE),
}

FAMILIES: tuple[str, ...] = tuple(REPLICAS)


def _replica(family: str) -> Replica:
    from ditaccel.errors import UnsupportedModelError

    if family not in REPLICAS:
        raise UnsupportedModelError(
            f"unknown replica family {family!r}; use one of: {', '.join(FAMILIES)}"
        )
    return REPLICAS[family]


def build_transformer(family: str, seed: int = 0) -> torch.nn.Module:
    """The tiny transformer of ``family`` with deterministic random weights (``seed``)."""
    rep = _replica(family)
    torch.manual_seed(seed)
    return rep.transformer().eval()


def build_pipeline(family: str, seed: int = 0) -> Any:
    """A tiny ``family`` pipeline of the real diffusers class, with in-code tokenizers and encoders."""
    rep = _replica(family)
    transformer = build_transformer(family, seed)
    torch.manual_seed(seed + 1)
    pipe = rep.pipeline(transformer)
    for name in ("text_encoder", "text_encoder_2", "text_encoder_3", "vae"):
        comp = getattr(pipe, name, None)
        if comp is not None:
            comp.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call_kwargs(family: str) -> dict[str, Any]:
    """Small, fast call arguments: 16x16 px (Sana 32x32), 4 steps, CFG on, latents out (no VAE decode)."""
    rep = _replica(family)
    return {"height": rep.image, "width": rep.image, "num_inference_steps": _STEPS, "output_type": "latent",
            **rep.call_kwargs}


def transformer_inputs(family: str, transformer: torch.nn.Module, batch: int = 2, height: int = _IMAGE,
                       width: int = _IMAGE, text_len: int = 16, seed: int = 0,
                       timestep: float = 500.0) -> dict[str, Any]:
    """Random inputs for one direct ``transformer(**inputs)`` call at ``height`` x ``width`` pixels.

    Latents are ``height // 2`` x ``width // 2`` (the replicas' VAE factor). For Hunyuan the text
    length is fixed by its config (77 CLIP + 256 T5 tokens) and ``text_len`` is ignored.
    """
    rep = _replica(family)
    g = torch.Generator().manual_seed(seed)
    return rep.inputs(transformer, batch, height, width, text_len, g, timestep)
