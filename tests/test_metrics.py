"""The metric registry: weight-free metrics compute what they claim; weighted ones refuse early."""

from __future__ import annotations

import numpy as np
import pytest

from ditaccel.errors import DitaccelError, MissingWeightsError
from ditaccel.metrics import available_metrics, get_metric, psnr, ssim
from ditaccel.zoo import shapes


def _img(seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_registry_lists_every_metric():
    names = set(available_metrics())
    assert {"adherence", "psnr", "ssim", "clip", "imagereward", "hpsv2", "fid"} <= names
    with pytest.raises(DitaccelError, match="unknown metric 'nope'; use one of: adherence"):
        get_metric("nope")


def test_psnr_values():
    a = _img(0)
    assert psnr(a, a) == 100.0
    b = a.astype(np.int16)
    b[0, 0, 0] = (int(a[0, 0, 0]) + 10) % 256 if a[0, 0, 0] < 246 else a[0, 0, 0] - 10
    mse = 100.0 / a.size
    assert psnr(b.astype(np.uint8), a) == pytest.approx(10 * np.log10(255**2 / mse))
    m = get_metric("psnr")
    assert m.needs_reference and m.score([a, b.astype(np.uint8)], ["x", "y"], [a, a]) == pytest.approx(
        (100.0 + psnr(b.astype(np.uint8), a)) / 2)
    with pytest.raises(DitaccelError, match="references"):
        m.score([a], ["x"])


def test_ssim_properties():
    a, b = _img(0), _img(1)
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, b) < 0.2
    assert ssim(a, b) == pytest.approx(ssim(b, a))
    blur = ((a.astype(int) + np.roll(a, 1, axis=0)) // 2).astype(np.uint8)
    assert ssim(a, b) < ssim(blur, a) < 1.0
    with pytest.raises(DitaccelError, match="shapes differ"):
        ssim(a, _img(2, 16))


def test_adherence_on_exact_renders():
    m = get_metric("adherence")
    prompts = shapes.calibration_prompts()[:6]
    good = [shapes.render(p) for p in prompts]
    assert m.score(good, prompts) == 1.0
    wrong = good[1:] + good[:1]
    assert m.score(wrong, prompts) < 1.0
    assert m.details(good, prompts)["all"] == 1.0
    with pytest.raises(DitaccelError, match="shapes world"):
        m.validate_prompts(["a photo of a cat"])


@pytest.mark.parametrize("name, kwargs, needle", [
    ("clip", {}, "DITACCEL_CLIP"),
    ("imagereward", {}, "ImageReward.pt"),
    ("hpsv2", {}, "DITACCEL_HPSV2"),
    ("fid", {"fid_reference": "REF"}, "DITACCEL_INCEPTION"),
])
def test_weighted_metrics_refuse_without_weights(name, kwargs, needle, monkeypatch, tmp_path):
    """Nothing given: the default weights are fetched up front; offline (conftest), that fails in one line."""
    for env in ("DITACCEL_CLIP", "DITACCEL_IMAGEREWARD", "DITACCEL_HPSV2", "DITACCEL_INCEPTION",
                "DITACCEL_FID_REF", "DITACCEL_OPEN_CLIP", "DITACCEL_BERT", "DITACCEL_IMAGEREWARD_MED_CONFIG"):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setattr("ditaccel.metrics.external._package", lambda *a: None)  # packages optional here
    monkeypatch.setattr("torch.hub.get_dir", lambda: str(tmp_path / "hub"))
    kwargs = {k: str(tmp_path) if v == "REF" else v for k, v in kwargs.items()}
    with pytest.raises(MissingWeightsError, match=needle) as err:
        get_metric(name, **kwargs)
    assert "\n" not in str(err.value) and "cannot download" in str(err.value)


def test_paths_are_checked_and_env_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr("ditaccel.metrics.external._package", lambda *a: None)  # packages optional here
    with pytest.raises(MissingWeightsError, match="does not exist"):
        get_metric("clip", clip_path=tmp_path / "nope")
    (tmp_path / "clipdir").mkdir()
    monkeypatch.setenv("DITACCEL_CLIP", str(tmp_path / "clipdir"))
    with pytest.raises(MissingWeightsError, match="config.json"):
        get_metric("clip")
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"x")
    with pytest.raises(MissingWeightsError, match="FID reference"):
        get_metric("fid", inception_path=weights)
    monkeypatch.setenv("DITACCEL_HPSV2", str(weights))
    with pytest.raises(MissingWeightsError, match="open_clip"):
        get_metric("hpsv2")
