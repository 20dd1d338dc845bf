"""Learned metrics: local path, hub id or default weights (fetched up front), batched scoring."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ditaccel.errors import MissingWeightsError
from ditaccel.metrics import get_metric
from ditaccel.metrics.external import CLIP_DEFAULT, imagereward_batch
from ditaccel.testing.scorers import save_tiny_clip


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (48, 40, 3), dtype=np.uint8) for _ in range(n)]


def test_clip_scores_in_batches_like_one_at_a_time(tiny_clip):
    imgs, prompts = _images(5), ["a red fox", "a dog", "the sea at night", "a cat", "a house"]
    batched = get_metric("clip", clip_path=tiny_clip, device="cpu", batch_size=4).cosines(imgs, prompts)
    single = get_metric("clip", clip_path=tiny_clip, device="cpu", batch_size=1).cosines(imgs, prompts)
    assert batched.shape == (5,) and (np.abs(batched) <= 1 + 1e-6).all() and batched.std() > 0
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-6)
    m = get_metric("clip", clip_path=tiny_clip)  # device auto: the CPU here
    assert m.score(imgs, prompts) == pytest.approx(float((100 * np.maximum(batched, 0)).mean()), abs=1e-4)


def test_clip_takes_a_hub_id_or_downloads_its_default(tiny_clip, monkeypatch):
    asked = []

    def fake_snapshot(repo, allow_patterns=None):
        asked.append(repo)
        return str(tiny_clip)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot)
    monkeypatch.delenv("DITACCEL_CLIP", raising=False)
    assert get_metric("clip", clip_path="someone/tiny-clip").path == tiny_clip
    assert get_metric("clip").path == tiny_clip
    assert asked == ["someone/tiny-clip", CLIP_DEFAULT.repo]


def test_impossible_download_is_one_line(monkeypatch):
    def offline(repo, allow_patterns=None):
        raise OSError("We couldn't connect to 'https://huggingface.co'.\nCheck your connection.")

    monkeypatch.setattr("huggingface_hub.snapshot_download", offline)
    with pytest.raises(MissingWeightsError, match="cannot download someone/clip .*set \\$DITACCEL_CLIP") as e:
        get_metric("clip", clip_path="someone/clip")
    assert "\n" not in str(e.value)
    with pytest.raises(MissingWeightsError, match="does not exist"):
        get_metric("clip", clip_path="./not/here")  # a relative path, not a hub id


class _FakeBlip(torch.nn.Module):
    """ImageReward's interface (tokenizer, ViT, cross-attending text encoder) in miniature."""

    def __init__(self) -> None:
        super().__init__()
        from ditaccel.testing.replicas import _tokenizer

        self.tokenizer = _tokenizer("bert", 35)
        self.vis = torch.nn.Linear(3 * 8 * 8, 4 * 6)
        self.emb = torch.nn.Embedding(100, 6)

    def visual_encoder(self, x):
        return self.vis(x.flatten(1)).reshape(len(x), 4, 6)

    def text_encoder(self, ids, attention_mask, encoder_hidden_states, encoder_attention_mask, return_dict):
        h = self.emb(ids) * attention_mask[..., None] + encoder_hidden_states.mean(1, keepdim=True)
        return SimpleNamespace(last_hidden_state=h)


def test_imagereward_batch_matches_pair_by_pair():
    from PIL import Image

    model = torch.nn.Module()
    model.blip, model.mlp = _FakeBlip(), torch.nn.Linear(6, 1)
    model.mean, model.std = 0.2, 1.5
    model.preprocess = lambda im: torch.from_numpy(np.asarray(im.resize((8, 8)), dtype=np.float32)).permute(2, 0, 1)
    imgs = [Image.fromarray(i) for i in _images(3)]
    prompts = ["a red fox", "a dog", "a cat"]
    batched = imagereward_batch(model, prompts, imgs)
    single = np.concatenate([imagereward_batch(model, [p], [i]) for p, i in zip(prompts, imgs, strict=True)])
    assert batched.shape == (3,) and batched.std() > 0
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-6)
