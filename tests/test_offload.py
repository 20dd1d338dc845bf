"""Schedules and the dynamic peers under enable_model_cpu_offload() and diffusers group offload.

On the CPU, offload moves weights from the CPU to the CPU, so it changes no arithmetic: every
comparison here is bitwise (torch.equal) against the same method without offload, over two
generations in a row (model offload re-installs its hooks after every pipeline call).
"""

from __future__ import annotations

import pytest
import torch

from ditaccel.caching import CacheSchedule, apply_schedule, presets
from ditaccel.caching.dynamic import apply_peer_cache
from ditaccel.pipeline import pipeline_call_kwargs
from ditaccel.testing.replicas import build_pipeline, call_kwargs

pytest.importorskip("accelerate")  # enable_model_cpu_offload needs it (a dev dependency)
CPU = torch.device("cpu")


def _model(pipe):
    pipe.enable_model_cpu_offload(device="cpu")  # the accelerator is the CPU here


def _group_block(pipe):
    pipe.transformer.enable_group_offload(onload_device=CPU, offload_device=CPU, offload_type="block_level",
                                          num_blocks_per_group=1)


def _group_leaf(pipe):
    pipe.enable_group_offload(onload_device=CPU, offload_device=CPU, offload_type="leaf_level")


OFFLOAD = {"model": _model, "group-block": _group_block, "group-leaf": _group_leaf}


def _apply(pipe, method: str, kw: dict):
    if method == "fora":
        return apply_schedule(pipe, presets.fora(pipe.transformer, 2, steps=kw["num_inference_steps"]))
    if method == "fora-residual":  # whole-stack and block-0-only skips (residual step reuse)
        bits = presets.fora(pipe.transformer, 2, steps=kw["num_inference_steps"]).bits
        bits[1::4, 0] = True
        return apply_schedule(pipe, CacheSchedule.for_model(pipe, bits, step_reuse="residual"))
    return apply_peer_cache(pipe, method, {k: v for k, v in kw.items() if k != "output_type"})


def _two_generations(family: str, offload: str | None, method: str | None, order: str = "offload-first"):
    pipe = build_pipeline(family)
    kw = pipeline_call_kwargs(pipe, **call_kwargs(family))
    if offload and order == "offload-first":
        OFFLOAD[offload](pipe)
    handle = _apply(pipe, method, kw) if method else None
    if offload and order == "method-first":
        OFFLOAD[offload](pipe)
    outs = [pipe(["a dog", "a cat"], generator=[torch.Generator().manual_seed(s) for s in (0, 1)], **kw).images
            for _ in range(2)]
    if handle is not None:
        handle.remove()
        outs.append(pipe(["a dog", "a cat"], generator=[torch.Generator().manual_seed(s) for s in (0, 1)],
                         **kw).images)
    return outs


@pytest.mark.parametrize("family", ["pixart-alpha", "flux"])
@pytest.mark.parametrize("offload", list(OFFLOAD))
def test_schedule_under_offload_is_bitwise_the_same(family, offload):
    ref = _two_generations(family, None, "fora")
    got = _two_generations(family, offload, "fora")
    assert all(torch.equal(a, b) for a, b in zip(ref, got, strict=True))
    assert not torch.equal(ref[0], ref[2])  # the schedule did change the output; removal restored it


@pytest.mark.parametrize("method", ["fbc", "taylorseer", "magcache"])
@pytest.mark.parametrize("offload", ["model", "group-block"])
def test_dynamic_peers_under_offload_are_bitwise_the_same(method, offload):
    ref = _two_generations("pixart-alpha", None, method)
    got = _two_generations("pixart-alpha", offload, method)
    assert all(torch.equal(a, b) for a, b in zip(ref, got, strict=True))


@pytest.mark.parametrize("offload", list(OFFLOAD))
def test_residual_reuse_under_offload_is_bitwise_the_same(offload):
    ref = _two_generations("pixart-alpha", None, "fora-residual")
    got = _two_generations("pixart-alpha", offload, "fora-residual")
    assert all(torch.equal(a, b) for a, b in zip(ref, got, strict=True))
    assert not torch.equal(ref[0], ref[2])


def test_schedule_applied_before_model_offload():
    ref = _two_generations("pixart-alpha", None, "fora")
    got = _two_generations("pixart-alpha", "model", "fora", order="method-first")
    assert all(torch.equal(a, b) for a, b in zip(ref, got, strict=True))
