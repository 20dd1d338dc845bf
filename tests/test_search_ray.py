"""The Ray path of the search gives exactly the in-process frontier (local Ray, 2 workers).

Separate from test_search.py because starting Ray and two workers that import torch takes
30-150 s on a busy 2-core machine. Skipped only when Ray is not installed.
"""

from __future__ import annotations

import pytest

from ditaccel.search import SearchConfig, search
from ditaccel.search.genome import pack
from ditaccel.testing.replicas import build_pipeline, call_kwargs

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow


def _cfg(out, **over) -> SearchConfig:
    kw = dict(call_kwargs("pixart-alpha"))
    kw.pop("output_type")
    kw["num_inference_steps"] = 6
    return SearchConfig(prompts=["a red fox in the city", "a blue car near the sea"], seeds=[0], metric="psnr",
                        population=6, generations=2, seed=1, call_kwargs=kw, out=out, batch_size=8, **over)


def test_ray_path_equals_local(tmp_path):
    pipe = build_pipeline("pixart-alpha")
    local = search(pipe, _cfg(tmp_path / "local"))
    try:
        remote = search(pipe, _cfg(tmp_path / "ray", ray_address="local", ray_workers=2,
                                   loader="ditaccel.testing.replicas:build_pipeline", loader_args=["pixart-alpha"]))
    finally:
        if ray.is_initialized():
            ray.shutdown()
    key = [(p.speedup, p.quality, pack(p.schedule.bits)) for p in local.points]
    assert key and key == [(p.speedup, p.quality, pack(p.schedule.bits)) for p in remote.points]
    assert remote.info["evaluations"] == local.info["evaluations"]
