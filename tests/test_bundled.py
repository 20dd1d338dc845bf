"""The bundled model: loads offline through the stock diffusers class and draws the prompts."""

import numpy as np

from ditaccel.pipeline import BUNDLED_DIR, generate_images, pipeline_call_kwargs
from ditaccel.zoo import shapes


def test_loads_offline_as_stock_pixart(bundled_pipe):
    from diffusers import PixArtAlphaPipeline, PixArtTransformer2DModel

    assert isinstance(bundled_pipe, PixArtAlphaPipeline)
    assert isinstance(bundled_pipe.transformer, PixArtTransformer2DModel)
    assert len(bundled_pipe.transformer.transformer_blocks) >= 12
    kw = pipeline_call_kwargs(bundled_pipe)
    assert kw["num_inference_steps"] == 20 and kw["use_resolution_binning"] is False


def test_ships_small():
    size = sum(p.stat().st_size for p in BUNDLED_DIR.rglob("*") if p.is_file())
    assert size <= 25 * 2**20


def test_transformer_dominates_parameters(bundled_pipe):
    n = {k: sum(p.numel() for p in getattr(bundled_pipe, k).parameters()) for k in ("transformer", "vae", "text_encoder")}
    assert n["transformer"] > n["vae"] + n["text_encoder"]


def test_same_seed_same_image(bundled_pipe):
    p = shapes.heldout_prompts()[:2]
    a = generate_images(bundled_pipe, p, [3, 4])
    b = generate_images(bundled_pipe, p, [3, 4])
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    c = generate_images(bundled_pipe, p, [5, 6])
    assert not np.array_equal(a[0], c[0])


def test_sample_adherence_lower_bound(bundled_pipe):
    prompts = shapes.heldout_prompts()[::12]  # 12 prompts spread over the held-out set
    images = generate_images(bundled_pipe, prompts, [1000 + i for i in range(len(prompts))], batch_size=12)
    assert images[0].shape == (64, 64, 3)
    rates = shapes.adherence_rates(images, prompts)
    assert rates["all"] >= 0.75, rates
