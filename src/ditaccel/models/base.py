"""What every model adapter provides: blocks, cacheable components, and analytic MACs.

Why one small class per family: the caching runtime, the schedule cost model and the search
must agree on which sub-modules are cached and what they cost. The adapter is the one source
of truth for both; nothing else in ditaccel knows a diffusers class layout.

MACs are counted from module shapes and token counts (multiply-accumulates of every Linear,
Conv2d and attention matmul), so they follow any config of the family. They exclude
elementwise work (norms, activations, gates), as FLOP counters do.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class BlockSpec:
    """One transformer block: its path in the transformer and the sub-module path of each slot.

    ``components[i]`` is the attribute path (inside the block) of the sub-module cached for
    schedule slot ``i``, or ``None`` where this block has no such sub-module (e.g. the last SD3
    block has no ``ff_context``).
    """

    name: str
    module: nn.Module
    kind: str
    components: tuple[str | None, ...]


def is_linear(m: nn.Module) -> bool:
    """An ``nn.Linear`` or a drop-in replacement for one (e.g. ``ditaccel.quant.QuantLinear``)."""
    return isinstance(m, nn.Linear) or (
        hasattr(m, "in_features") and hasattr(m, "out_features") and next(m.children(), None) is None
    )


def linear_macs(layer: nn.Module, rows: int) -> int:
    """MACs of one Linear (``rows`` input rows) or one patchifying Conv2d (``rows`` output positions)."""
    if is_linear(layer):
        return rows * layer.in_features * layer.out_features
    if isinstance(layer, nn.Conv2d):
        kh, kw = layer.kernel_size
        return rows * layer.in_channels * layer.out_channels * kh * kw // layer.groups
    raise TypeError(f"no MACs rule for {type(layer).__name__}")


def _out_linear(attn: nn.Module, name: str) -> nn.Linear | None:
    mod = getattr(attn, name, None)
    if mod is None:
        return None
    if isinstance(mod, nn.ModuleList):
        return mod[0] if len(mod) else None
    return mod


def attention_macs(attn: nn.Module, batch: int, n_q: int, n_kv: int | None = None, n_ctx: int = 0) -> int:
    """MACs of a diffusers attention module.

    ``n_q`` query tokens; ``n_kv`` key/value tokens of ``encoder_hidden_states`` for cross-attention
    (None = self-attention); ``n_ctx`` text tokens for joint (MMDiT) attention, which go through the
    ``add_*_proj`` layers and join the image tokens in one attention.
    """
    q, k, v = attn.to_q, attn.to_k, attn.to_v
    n_k = n_q if n_kv is None else n_kv
    macs = linear_macs(q, n_q) + linear_macs(k, n_k) + linear_macs(v, n_k)
    out = _out_linear(attn, "to_out")
    if out is not None:
        macs += linear_macs(out, n_q)
    n_all_q, n_all_k = n_q, n_k
    if n_ctx:
        for name in ("add_q_proj", "add_k_proj", "add_v_proj"):
            macs += linear_macs(getattr(attn, name), n_ctx)
        add_out = _out_linear(attn, "to_add_out")
        if add_out is not None:
            macs += linear_macs(add_out, n_ctx)
        n_all_q, n_all_k = n_q + n_ctx, n_k + n_ctx
    macs += n_all_q * n_all_k * (q.out_features + v.out_features)  # QK^T and AV
    return batch * macs


def module_linear_macs(module: nn.Module, batch: int, rows: int) -> int:
    """MACs of every Linear inside ``module`` when each sees ``rows`` tokens (feed-forwards, MLPs)."""
    return batch * sum(linear_macs(m, rows) for m in module.modules() if is_linear(m))


def module_conv_macs(module: nn.Module, batch: int, positions: int) -> int:
    """MACs of every Linear and stride-1 "same" Conv2d inside ``module`` on ``positions`` tokens
    (convolutional feed-forwards such as Sana's GLUMBConv, which keep the token grid)."""
    return batch * sum(linear_macs(m, positions) for m in module.modules()
                       if is_linear(m) or isinstance(m, nn.Conv2d))


def linear_attention_macs(attn: nn.Module, batch: int, n: int) -> int:
    """MACs of a ReLU linear self-attention (diffusers' ``SanaLinearAttnProcessor2_0``) on ``n`` tokens.

    Per head, V (padded with a row of ones, for the normaliser) times K^T gives a
    (d_v + 1) x d_k matrix, which then multiplies Q: 2 * n * d_k * (d_v + 1) MACs per head.
    """
    q, v = attn.to_q, attn.to_v
    heads = int(attn.heads)
    d_k = q.out_features // heads
    macs = linear_macs(q, n) + linear_macs(attn.to_k, n) + linear_macs(v, n)
    out = _out_linear(attn, "to_out")
    if out is not None:
        macs += linear_macs(out, n)
    return batch * (macs + 2 * n * d_k * (v.out_features + heads))


class Adapter:
    """Base adapter. Subclasses set ``family``, ``transformer_classes``, ``label``,
    ``block_list_names``, ``component_names``, ``attention_components``,
    ``cross_attention_component``, implement ``_component_macs`` and ``default_text_len``, set
    ``_rest_rules`` where embeddings see more than one row, and override ``_blocks`` only where
    a slot is not simply the block attribute of that name.

    The name attributes below are what other parts of ditaccel need to know about a diffusers
    class layout; they read them here instead of keeping their own per-family lists.
    """

    family: str = ""
    #: diffusers transformer class names this adapter handles (matched along the MRO).
    transformer_classes: tuple[str, ...] = ()
    #: Human name of the family, for error messages that list what is supported.
    label: str = ""
    #: Attributes of the transformer that hold its block lists (``nn.ModuleList``), in execution order.
    block_list_names: tuple[str, ...] = ()
    component_names: tuple[str, ...] = ()
    attention_components: tuple[str, ...] = ()
    cross_attention_component: str | None = None
    vae_factor_default: int = 8
    #: Top-level sub-modules that quantization keeps in high precision (embeddings, final layer).
    #: These are the names diffusers DiTs share; a family adds its own to this tuple.
    quant_keep: tuple[str, ...] = (
        "pos_embed", "patch_embed", "x_embedder", "context_embedder", "time_embed", "time_proj",
        "timestep_embedder", "norm_out", "proj_out", "final_layer", "norm_final",
    )
    #: Linear names (last path parts) of the first FFN layer, before its activation: FP4DiT gives
    #: it its own format (E3M0), as its outputs feed GELU/SiLU.
    first_ffn_linears: tuple[str, ...] = ()
    #: Blocks map hidden states to hidden states (one tensor in, one out), so a step can skip the whole
    #: stack by adding its last residual (``step_reuse="residual"``, ``ditaccel.caching.stack``).
    stack_residual: bool = False
    #: Linear names (last path parts) whose outputs are attention Q, K and V.
    qkv_linears: tuple[str, ...] = ("to_q", "to_k", "to_v")

    def __init__(self, transformer: nn.Module) -> None:
        self.transformer = transformer
        self.blocks: list[BlockSpec] = self._blocks()
        self._paths = {
            id(m): n for n, m in transformer.named_modules()
        }

    #: ``BlockSpec.kind`` of the blocks the default ``_blocks`` lists.
    block_kind: str = "block"

    # -- structure ---------------------------------------------------------------------------
    def _blocks(self) -> list[BlockSpec]:
        """Every block of every list in ``block_list_names``, in order; slot ``i`` is the block's
        attribute ``component_names[i]``, or None where the block lacks it (or holds None).
        Families whose slots are other sub-modules, or differ per list, override this."""
        return [
            BlockSpec(f"{lst}.{i}", blk, self.block_kind,
                      tuple(c if getattr(blk, c, None) is not None else None for c in self.component_names))
            for lst in self.block_list_names
            for i, blk in enumerate(getattr(self.transformer, lst))
        ]

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def component_module(self, block: int, slot: int) -> nn.Module | None:
        """The sub-module cached for (block, slot), or None where the block has none."""
        spec = self.blocks[block]
        path = spec.components[slot]
        return None if path is None else spec.module.get_submodule(path)

    def component_pattern(self, block_list: str | None = None) -> str:
        """Regex (for ``re.fullmatch``) of the cacheable sub-module paths in one block list.

        ``block_list`` defaults to the first of ``block_list_names``. Peers that take module
        patterns (TaylorSeer) use it instead of naming a family's attributes themselves.
        """
        lst = block_list or self.block_list_names[0]
        names = dict.fromkeys(path for spec in self.blocks if spec.name.rsplit(".", 1)[0] == lst
                              for path in spec.components if path is not None)
        return rf"^{re.escape(lst)}\.\d+\.({'|'.join(re.escape(n) for n in names)})$"

    def slots(self) -> np.ndarray:
        """[blocks, components] bool: the (block, slot) pairs this model has a cacheable sub-module for."""
        out = np.zeros((self.num_blocks, len(self.component_names)), dtype=bool)
        for b, c, _path in self.component_paths():
            out[b, c] = True
        return out

    def component_paths(self) -> list[tuple[int, int, str]]:
        """(block, slot, full path in the transformer) of every cacheable sub-module."""
        out = []
        for b, spec in enumerate(self.blocks):
            for c, path in enumerate(spec.components):
                if path is not None:
                    out.append((b, c, f"{spec.name}.{path}"))
        return out

    def slot_index(self, name: str) -> int:
        """Slot index of a component name; accepts a slot label or one of its '|' aliases."""
        for i, label in enumerate(self.component_names):
            if name == label or name in label.split("|"):
                return i
        from ditaccel.errors import ScheduleError

        raise ScheduleError(
            f"unknown component {name!r} for {self.family}; use one of: {', '.join(self.component_names)}"
        )

    # -- fast path for cached work -----------------------------------------------------------
    #: Per slot, the share of a block's skippable glue (norms, adaLN modulation) that only feeds that
    #: slot, for the latency model; empty where the family has no ``cached_block_forward``.
    fast_block_glue: tuple[float, ...] = ()

    def cached_block_forward(self, spec: BlockSpec) -> Callable[..., Any] | None:
        """A forward for block ``spec`` that takes some components' outputs from the cache, or None.

        Why: hooking a component skips only the component; the block still computes the norm and
        modulation that feed it. The returned ``fn(block, cached, call, *args, **kwargs)``
        (``cached[slot]`` is a tensor to use instead of running that slot, or None to run it as
        ``call(slot, module, *a, **kw)``) skips that work too and must give bit-identical outputs.
        None (the default): the runtime uses component hooks only.
        """
        return None

    # -- geometry ----------------------------------------------------------------------------
    def image_tokens(self, height: int, width: int, vae_factor: int | None = None) -> int:
        """Image tokens the transformer sees for a ``height`` x ``width`` pixel image."""
        f = vae_factor or self.vae_factor_default
        p = self._token_patch()
        return (height // f // p) * (width // f // p)

    def _token_patch(self) -> int:
        return int(self.transformer.config.patch_size)

    def default_text_len(self, pipe: Any = None) -> int:
        """Text tokens the family's pipeline feeds the transformer by default."""
        raise NotImplementedError

    # -- cost --------------------------------------------------------------------------------
    def component_macs(self, batch: int, image_tokens: int, text_len: int) -> np.ndarray:
        """int64 array [blocks, components]: MACs of one execution of each cacheable component."""
        out = np.zeros((self.num_blocks, len(self.component_names)), dtype=np.int64)
        for b, spec in enumerate(self.blocks):
            for c, path in enumerate(spec.components):
                if path is not None:
                    mod = spec.module.get_submodule(path)
                    out[b, c] = self._component_macs(spec, c, mod, batch, image_tokens, text_len)
        return out

    def _component_macs(self, spec: BlockSpec, slot: int, mod: nn.Module, batch: int, n_img: int,
                        n_txt: int) -> int:
        raise NotImplementedError

    def rest_macs(self, batch: int, image_tokens: int, text_len: int) -> int:
        """MACs of everything that always runs: embedders, adaLN linears, final layer, skips."""
        inside = set()
        for b, c, _ in self.component_paths():
            for m in self.component_module(b, c).modules():
                inside.add(id(m))
        total = 0
        for name, m in self.transformer.named_modules():
            if id(m) in inside or not (is_linear(m) or isinstance(m, nn.Conv2d)):
                continue
            rows = self._rest_rows(name, image_tokens, text_len)
            total += batch * linear_macs(m, rows)
        return total + self._rest_extra(batch, image_tokens, text_len)

    _rest_rules: tuple[tuple[str, str], ...] = ()

    def _rest_rows(self, name: str, n_img: int, n_txt: int) -> int:
        for pattern, kind in self._rest_rules:
            if re.search(pattern, name):
                rows = {"img": n_img, "txt": n_txt, "sample": 1}
                return rows[kind] if kind in rows else self._custom_rows(kind, n_img, n_txt)
        return 1  # per-sample embedding MLPs and adaLN modulation linears

    def _custom_rows(self, kind: str, n_img: int, n_txt: int) -> int:
        raise ValueError(kind)

    def _rest_extra(self, batch: int, n_img: int, n_txt: int) -> int:
        return 0


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module under a ``torch.compile`` wrapper, if any."""
    return getattr(module, "_orig_mod", module)
