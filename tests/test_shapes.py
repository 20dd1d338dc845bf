"""The shapes world and its adherence checker: the quality metric of the bundled model."""

import numpy as np
import pytest
from scipy import ndimage

from ditaccel.errors import DitaccelError
from ditaccel.zoo import shapes


def test_world_sizes_and_split():
    assert len(shapes.all_prompts()) == 180
    assert len(set(shapes.all_prompts())) == 180
    assert len(shapes.calibration_prompts()) == 36
    assert len(shapes.heldout_prompts()) == 144
    assert not set(shapes.calibration_prompts()) & set(shapes.heldout_prompts())
    assert shapes.all_prompts()[0] == "a small red square in the top left"


def test_render_follows_spec():
    img = shapes.render("a large red circle in the top left")
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert tuple(img[16, 16]) == (255, 0, 0)
    assert tuple(img[16, 29]) == (255, 0, 0) and tuple(img[16, 30]) == (0, 0, 0)
    tri = shapes.render("a small blue triangle in the center")
    assert tuple(tri[25, 32]) == (0, 0, 255)  # apex at cy - r
    assert tuple(tri[24, 32]) == (0, 0, 0)
    assert tri[39].any(axis=-1).sum() == 15  # base is 2r + 1 wide


def test_checker_is_exact_on_ground_truth():
    for p in shapes.all_prompts():
        assert shapes.check(shapes.render(p), p)["all"], p


def test_checker_rejects_wrong_prompts():
    prompts = shapes.all_prompts()
    wrong = [shapes.check(shapes.render(prompts[i]), prompts[(i * 7 + 3) % 180])["all"] for i in range(180)]
    assert sum(wrong) == 0


def test_checker_robust_to_blur_and_noise():
    rng = np.random.default_rng(0)
    ok = []
    for p in shapes.all_prompts():
        img = shapes.render(p).astype(np.float64) / 255
        img = ndimage.gaussian_filter(img, (1.0, 1.0, 0))
        img = np.clip(img + rng.normal(0, 0.1, img.shape), 0, 1)
        ok.append(shapes.check(img, p)["all"])
    assert np.mean(ok) >= 0.98


def test_checker_at_or_below_chance_on_noise():
    rng = np.random.default_rng(1)
    prompts = shapes.all_prompts()
    rates = shapes.adherence_rates([rng.random((64, 64, 3)) for _ in prompts], prompts)
    assert rates["all"] <= 1 / 180
    assert rates["color"] <= 1 / 6 and rates["shape"] <= 1 / 3 and rates["position"] <= 1 / 5


def test_bad_inputs():
    with pytest.raises(DitaccelError, match="not in the shapes world"):
        shapes.check(np.zeros((64, 64, 3)), "a dog")
    with pytest.raises(DitaccelError, match="64x64"):
        shapes.check(np.zeros((32, 32, 3)), shapes.all_prompts()[0])
