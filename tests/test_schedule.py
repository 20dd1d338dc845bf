"""CacheSchedule JSON, validation errors, resampling and presets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ditaccel.caching import CacheSchedule, presets
from ditaccel.errors import ScheduleError, UnsupportedModelError
from ditaccel.models import get_adapter
from ditaccel.testing.replicas import build_transformer


@pytest.fixture(scope="module")
def pixart():
    return build_transformer("pixart-alpha")


def _one_line_error(fn, match: str) -> str:
    with pytest.raises(ScheduleError, match=match) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


def test_json_round_trip(tmp_path, pixart):
    s = presets.tgate(pixart, 2, steps=5)
    s.resolution = (256, 256)
    s.metrics = {"tmacs": 1.5, "imagereward": 0.9}
    path = tmp_path / "s.json"
    s.save(path)
    back = CacheSchedule.load(path, pixart)
    assert back == s and back.bits.dtype == bool and back.steps == 5
    d = json.loads(path.read_text())
    assert d["version"] == 1 and d["family"] == "pixart" and d["components"] == ["attn1", "attn2", "ff"]
    assert d["schedule"][3][0] == "101"  # step 3, block 0: attn2 frozen after step 2
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp file


def test_malformed_files(tmp_path, pixart):
    good = presets.fora(pixart, 2, steps=4).to_dict()
    cases = {
        "notjson": ("{not json", "not JSON"),
        "notschedule": (json.dumps({"a": 1}), "not a ditaccel cache schedule"),
        "version": (json.dumps({**good, "version": 99}), "version 99"),
        "shape": (json.dumps({**good, "steps": 5}), "wrong shape"),
        "cell": (json.dumps({**good, "schedule": [["11"] * 3] * 4}), "wrong shape"),
    }
    for name, (text, match) in cases.items():
        p = tmp_path / f"{name}.json"
        p.write_text(text)
        _one_line_error(lambda p=p: CacheSchedule.load(p), match)
    _one_line_error(lambda: CacheSchedule.load(tmp_path / "missing.json"), "does not exist")

    p = tmp_path / "unknown.json"
    p.write_text(json.dumps({**good, "components": ["attn1", "attn2", "mlp"]}))
    _one_line_error(lambda: CacheSchedule.load(p, pixart), "unknown component.*mlp")

    p = tmp_path / "family.json"
    p.write_text(json.dumps({**good, "family": "flux"}))
    _one_line_error(lambda: CacheSchedule.load(p, pixart), "family 'flux'")

    other = presets.none(build_transformer("hunyuan"), steps=4)
    _one_line_error(lambda: other.validate_for(pixart), "family 'hunyuan'")

    blocks = CacheSchedule(np.ones((4, 7, 3), bool), ("attn1", "attn2", "ff"), "pixart")
    _one_line_error(lambda: blocks.validate_for(pixart), "7 blocks")


def test_resample_nearest_step(pixart):
    s = presets.fora(pixart, 4, steps=20)
    for n in (30, 50):
        r = s.resample(n)
        assert r.bits.shape == (n, s.blocks, 3)
        idx = np.floor(np.arange(n) * 19 / (n - 1) + 0.5).astype(int)
        assert (r.bits == s.bits[idx]).all()
        assert r.bits[0].all() and (r.bits[-1] == s.bits[-1]).all()
        assert r.meta["resampled_from_steps"] == 20
        # roughly the same share of recomputation
        assert abs(r.recompute_fraction() - s.recompute_fraction()) < 0.06
    assert s.resample(20) == CacheSchedule(s.bits, s.components, s.family, meta={**s.meta,
                                                                                 "resampled_from_steps": 20})
    _one_line_error(lambda: s.resample(0), "positive")


def test_presets_bits(pixart):
    a = get_adapter(pixart)
    assert presets.none(pixart, steps=6).bits.all()
    f = presets.fora(pixart, 3, steps=7)
    assert f.bits[:, 0, 0].tolist() == [True, False, False, True, False, False, True]
    fa = presets.fora_attention(pixart, 2, steps=4)
    assert fa.bits[:, :, 2].all() and fa.bits[:, 0, 0].tolist() == [True, False, True, False]
    tg = presets.tgate(pixart, 2, steps=5)
    assert tg.bits[:2].all() and not tg.bits[2:, :, 1].any() and tg.bits[:, :, [0, 2]].all()
    ev = presets.even(pixart, "ff", 2, 2, steps=6)
    assert (~ev.bits).sum() == 4 and ev.bits[0].all() and ev.bits[:, :, :2].all()
    dd = presets.delta_dit(pixart, 2, steps=6)
    # early steps: rear block(s) cached on odd steps; late steps: front block(s)
    assert not dd.bits[1, -1].any() and dd.bits[1, 0].all()
    assert not dd.bits[5, 0].any() and dd.bits[5, -1].all()
    with pytest.raises(ScheduleError, match="joint attention"):
        presets.tgate(build_transformer("sd3"), 2, steps=4)
    with pytest.raises(ScheduleError, match="unknown component"):
        presets.even(pixart, "mlp", 1, 1, steps=4)
    names = [n for n, _ in presets.all_presets(pixart, steps=20)]
    assert {"none", "fora(2)", "fora(20)", "fora_attention(2)", "tgate(10)", "delta_dit(2)"} <= set(names)
    assert any(n.startswith("even(ff,") for n in names)
    bits = [s.bits.tobytes() for _, s in presets.all_presets(pixart, steps=20)]
    assert len(bits) == len(set(bits))
    assert a.component_names == ("attn1", "attn2", "ff")


def test_flux_component_aliases():
    t = build_transformer("flux")
    s = presets.even(t, "proj_out", 4, 1, steps=3)
    assert s.components == ("attn", "ff|proj_mlp", "ff_context|proj_out")
    assert not s.bits[:, :, 2].all() and s.bits[:, :, :2].all()


def test_unsupported_model_is_one_line():
    with pytest.raises(UnsupportedModelError, match="PixArt") as e:
        presets.none(torch.nn.Linear(2, 2), steps=2)
    assert "\n" not in str(e.value)
