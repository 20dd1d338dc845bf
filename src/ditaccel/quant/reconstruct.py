"""BRECQ-style block reconstruction: capture what a block sees, then fit its rounding.

Inputs to block ``k`` come from the *partly quantized* model (blocks ``< k`` already
quantized), targets from the full-precision model, so each block learns to undo the
error that reaches it. Blocks are found generically (top-level ``nn.ModuleList`` s of the
transformer: ``transformer_blocks``, ``single_transformer_blocks``, Hunyuan's ``blocks``)
and are called exactly the way the model calls them (captured ``args``/``kwargs``), so
family-specific signatures, FLUX's two-stream tuples and Hunyuan's long skips need no
adapter code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from ditaccel.errors import DitaccelError

__all__ = ["find_blocks", "BatchedData", "capture", "block_loss", "block_mse"]


class _Stop(Exception):
    """Raised from a hook to skip the rest of a forward pass we do not need."""


def find_blocks(transformer: nn.Module) -> list[tuple[str, nn.Module]]:
    """The transformer's repeated blocks, in execution order of their lists."""
    out: list[tuple[str, nn.Module]] = []
    for name, child in transformer.named_children():
        if isinstance(child, nn.ModuleList) and any(isinstance(m, nn.Linear) for m in child.modules()):
            out.extend((f"{name}.{i}", blk) for i, blk in enumerate(child))
    return out


def _detach(obj: Any) -> Any:
    leaves, spec = tree_flatten(obj)
    return tree_unflatten([x.detach().clone() if isinstance(x, torch.Tensor) else x for x in leaves], spec)


@dataclass
class BatchedData:
    """Many captured calls stacked along the batch dim, so minibatches are one forward.

    A tensor leaf whose first dim equals the call's batch size (or is 1, broadcast) is
    per-sample and is concatenated; any other leaf (rotary tables, flags, ``None``) is shared and must be
    identical across calls.
    """

    spec: Any
    batched: list[torch.Tensor | None]
    shared: list[Any]
    n: int

    @classmethod
    def from_calls(cls, calls: Sequence[Any], batch_sizes: Sequence[int]) -> BatchedData:
        if not calls:
            raise DitaccelError("no calibration samples reached this block: pass more calibration data")
        flat = [tree_flatten(c) for c in calls]
        spec = flat[0][1]
        n_leaves = len(flat[0][0])
        batched: list[torch.Tensor | None] = []
        shared: list[Any] = []
        for j in range(n_leaves):
            first = flat[0][0][j]
            leaves = [f[0][j] for f in flat]
            fits = all(
                isinstance(x, torch.Tensor) and x.dim() >= 1 and x.shape[0] in (b, 1)
                for x, b in zip(leaves, batch_sizes, strict=True)
            )
            if fits and any(x.shape[0] == b for x, b in zip(leaves, batch_sizes, strict=True)):
                # per-sample; a size-1 batch dim (e.g. one negative prompt for a batch) broadcasts
                batched.append(torch.cat([x.expand(b, *x.shape[1:]) for x, b in zip(leaves, batch_sizes,
                                                                                   strict=True)], 0))
                shared.append(None)
            else:
                for f in flat[1:]:
                    other = f[0][j]
                    same = (
                        torch.equal(first, other)
                        if isinstance(first, torch.Tensor) and isinstance(other, torch.Tensor)
                        else first == other
                    )
                    if not same:
                        raise DitaccelError(
                            "calibration calls differ in a non-batched input (e.g. resolution): "
                            "collect calibration data at one resolution"
                        )
                batched.append(None)
                shared.append(first)
        return cls(spec, batched, shared, int(sum(batch_sizes)))

    def select(self, idx: torch.Tensor | slice) -> Any:
        leaves = [b[idx] if b is not None else s for b, s in zip(self.batched, self.shared, strict=True)]
        return tree_unflatten(leaves, self.spec)

    def batches(self, size: int) -> list[slice]:
        return [slice(i, min(i + size, self.n)) for i in range(0, self.n, size)]


def _batch_size(args: tuple, kwargs: dict) -> int:
    x = args[0] if args else kwargs.get("hidden_states")
    if not isinstance(x, torch.Tensor):
        leaves = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor) and t.dim() >= 1]
        if not leaves:
            raise DitaccelError("cannot find the batch size of a captured call: its inputs hold no tensor")
        x = leaves[0]
    return int(x.shape[0])


@torch.no_grad()
def capture(
    transformer: nn.Module,
    records: Sequence[tuple[tuple, dict]],
    module: nn.Module,
    want: str = "input",
) -> tuple[BatchedData, list[int]]:
    """Run ``transformer`` on every calibration record and capture ``module``'s inputs or outputs.

    The forward stops as soon as the capture is done, so reaching block ``k`` costs
    ``k`` blocks, not the whole model.
    """
    got: list[Any] = []
    sizes: list[int] = []

    def pre(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        if want == "input":
            got.append(_detach((args, kwargs)))
            sizes.append(_batch_size(args, kwargs))
            raise _Stop

    def post(_m: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        got.append(_detach(output))
        sizes.append(_batch_size(args, kwargs))
        raise _Stop

    h1 = module.register_forward_pre_hook(pre, with_kwargs=True)
    h2 = module.register_forward_hook(post, with_kwargs=True)
    try:
        for args, kwargs in records:
            before = len(got)
            try:
                transformer(*args, **kwargs)
            except _Stop:
                pass
            if len(got) == before:
                raise DitaccelError("a calibration call never reached a quantized module: check the calibration data")
    finally:
        h1.remove()
        h2.remove()
    return BatchedData.from_calls(got, sizes), sizes


def _out_leaves(out: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and t.is_floating_point()]


def block_loss(pred: Any, target: Any) -> torch.Tensor:
    """Reconstruction loss: squared error summed over features, averaged over samples/tokens."""
    total = None
    for p, t in zip(_out_leaves(pred), _out_leaves(target), strict=True):
        term = (p.float() - t.float()).pow(2).sum(-1).mean()
        total = term if total is None else total + term
    if total is None:
        raise DitaccelError("the block returned no floating-point tensor to reconstruct")
    return total


@torch.no_grad()
def block_mse(module: nn.Module, inputs: BatchedData, targets: BatchedData, batch: int = 32) -> float:
    """Plain mean squared error of ``module``'s output against the targets, over all samples."""
    se = 0.0
    count = 0
    for sl in inputs.batches(batch):
        args, kwargs = inputs.select(sl)
        pred = module(*args, **kwargs)
        for p, t in zip(_out_leaves(pred), _out_leaves(targets.select(sl)), strict=True):
            se += float((p.float() - t.float()).pow(2).sum())
            count += p.numel()
    return se / max(count, 1)


@torch.no_grad()
def run_batched(module: nn.Module, inputs: BatchedData, batch: int = 32) -> torch.Tensor | None:
    """``module`` 's outputs over all samples, concatenated; ``None`` if it does not return one tensor."""
    outs = []
    for sl in inputs.batches(batch):
        a, k = inputs.select(sl)
        y = module(*a, **k)
        if not isinstance(y, torch.Tensor):
            return None
        outs.append(y)
    return torch.cat(outs, 0)


def with_leaf(data: BatchedData, index: int, value: torch.Tensor) -> BatchedData:
    """A copy of ``data`` whose per-sample leaf ``index`` is replaced (the next block's hidden states)."""
    batched = list(data.batched)
    batched[index] = value
    return BatchedData(data.spec, batched, list(data.shared), data.n)


@torch.no_grad()
def chain_links(transformer: nn.Module, record: tuple[tuple, dict],
                blocks: Sequence[tuple[str, nn.Module]]) -> dict[str, int]:
    """Blocks fed only by the previous block: ``name -> index of the leaf that carries its output``.

    For such a block (PixArt, SD3 and most DiTs) the next inputs are the previous block's
    outputs with every other argument unchanged, so reconstruction can propagate block by
    block in O(blocks) instead of re-running the model prefix. Blocks with extra inputs
    (Hunyuan's long skips, FLUX's two streams) are left out and captured from full passes.
    """
    calls: dict[str, Any] = {}
    outs: dict[str, Any] = {}
    hooks = []
    for name, blk in blocks:
        def pre(_m: nn.Module, a: tuple, k: dict, _n: str = name) -> None:
            calls[_n] = tree_flatten((a, k))[0]

        def post(_m: nn.Module, a: tuple, k: dict, out: Any, _n: str = name) -> None:
            outs[_n] = out

        hooks.append(blk.register_forward_pre_hook(pre, with_kwargs=True))
        hooks.append(blk.register_forward_hook(post, with_kwargs=True))
    try:
        transformer(*record[0], **record[1])
    finally:
        for h in hooks:
            h.remove()
    links: dict[str, int] = {}
    for (prev, _), (cur, _) in zip(blocks, blocks[1:], strict=False):
        if prev.rsplit(".", 1)[0] != cur.rsplit(".", 1)[0]:
            continue  # first block of another list
        out = outs.get(prev)
        a, b = calls.get(prev), calls.get(cur)
        if not isinstance(out, torch.Tensor) or a is None or b is None or len(a) != len(b):
            continue
        diff = [j for j, (x, y) in enumerate(zip(a, b, strict=True)) if x is not y and not _same(x, y)]
        if len(diff) == 1 and isinstance(b[diff[0]], torch.Tensor) and b[diff[0]] is out:
            links[cur] = diff[0]
    return links


def _same(x: Any, y: Any) -> bool:
    if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
        return x.shape == y.shape and torch.equal(x, y)
    return type(x) is type(y) and x == y
