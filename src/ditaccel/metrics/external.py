"""Metrics with learned weights (CLIP, ImageReward, HPSv2) and FID.

Weights come from a local path (argument or environment variable), a hub id, or, when nothing
is given, the default weights their packages download. Why the constructors check so much: a
search that fails after an hour of generation is worse than one that refuses at once. Every
constructor checks the optional package and gets the weights now (a download, or the local
cache), and raises one line naming what to provide when it cannot. The models load lazily on the
first ``score``, on ``device`` (``auto``: the device ``load_pipeline`` picks by default), and
score ``batch_size`` images per forward.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ditaccel.errors import DitaccelError, MissingWeightsError
from ditaccel.metrics.base import Metric
from ditaccel.metrics.weights import Hub, Url, env_path, resolve

CLIP_DEFAULT = Hub("openai/clip-vit-large-patch14")  # torchmetrics CLIPScore's default model
IMAGEREWARD_DEFAULT = Hub("THUDM/ImageReward", "ImageReward.pt")  # what ImageReward.load("ImageReward-v1.0") gets
IMAGEREWARD_MED_DEFAULT = Hub("THUDM/ImageReward", "med_config.json")
BERT_DEFAULT = Hub("google-bert/bert-base-uncased", patterns=("vocab.txt", "tokenizer_config.json", "config.json",
                                                              "tokenizer.json"))
HPSV2_DEFAULT = Hub("xswu/HPSv2", "HPS_v2_compressed.pt")  # what the hpsv2 package downloads
OPEN_CLIP_DEFAULT = Hub("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "open_clip_pytorch_model.bin")
INCEPTION_DEFAULT = Url("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                        "weights-inception-2015-12-05-6726825d.pth")  # torchmetrics' FID default


def _package(module: str, pip_name: str, metric: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError:
        raise DitaccelError(f"metric {metric} needs the {pip_name} package; pip install {pip_name}") from None


def _device(device: Any) -> Any:
    from ditaccel.device import resolve_device

    return resolve_device(device)


def _to_tensor(images: Sequence[np.ndarray]) -> Any:
    import torch

    return torch.from_numpy(np.stack([np.asarray(i, dtype=np.uint8) for i in images])).permute(0, 3, 1, 2)


def _pil(images: Sequence[np.ndarray]) -> list[Any]:
    from PIL import Image

    return [Image.fromarray(np.asarray(i, dtype=np.uint8)) for i in images]


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class ClipScore(Metric):
    """CLIP score, ``100 * max(cos(image, text), 0)`` as torchmetrics defines it, batched with transformers."""

    name = "clip"

    def __init__(self, clip_path: str | os.PathLike | None = None, device: Any = "auto", batch_size: int = 32) -> None:
        self.path = resolve(clip_path, "DITACCEL_CLIP", "CLIP model (a transformers folder with config.json)",
                            CLIP_DEFAULT, "folder")
        if not (self.path / "config.json").is_file():
            raise MissingWeightsError(f"CLIP folder {self.path} has no config.json; pass a transformers CLIP folder")
        self.device, self.batch_size = device, int(batch_size)
        self._model: Any = None

    def _load(self) -> tuple[Any, Any, Any]:
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel
        from transformers.utils import logging as tlogging

        dev = _device(self.device)
        bar = tlogging.is_progress_bar_enabled()
        tlogging.disable_progress_bar()
        try:
            model = CLIPModel.from_pretrained(str(self.path)).to(dev).eval()
        finally:
            if bar:
                tlogging.enable_progress_bar()
        return model, AutoTokenizer.from_pretrained(str(self.path)), CLIPImageProcessor.from_pretrained(str(self.path))

    def cosines(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> np.ndarray:
        """Cosine of each image's and its prompt's CLIP embeddings, ``batch_size`` pairs per forward."""
        import torch

        if self._model is None:
            self._model = self._load()
        model, tok, proc = self._model
        dev = next(model.parameters()).device
        max_len = int(model.config.text_config.max_position_embeddings)
        out = []
        with torch.no_grad():
            for sl in _batches(len(images), self.batch_size):
                text = tok(list(prompts[sl]), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
                pix = proc(images=_pil(images[sl]), return_tensors="pt")["pixel_values"]
                o = model(input_ids=text["input_ids"].to(dev), attention_mask=text["attention_mask"].to(dev),
                          pixel_values=pix.to(dev, model.dtype))
                out.append((o.image_embeds * o.text_embeds).sum(-1).float().cpu().numpy())  # both L2-normalised
        return np.concatenate(out)

    def per_image(self, images: Sequence[np.ndarray], prompts: Sequence[str],
                  references: Sequence[np.ndarray] | None = None) -> np.ndarray:
        self._check_inputs(images, prompts, None)
        return 100 * np.maximum(self.cosines(images, prompts), 0)


class ImageRewardMetric(Metric):
    """ImageReward (the ECAD paper's fitness): ImageReward.pt, med_config.json and a BERT tokenizer folder."""

    name = "imagereward"

    def __init__(self, imagereward_path: str | os.PathLike | None = None,
                 med_config: str | os.PathLike | None = None, bert_path: str | os.PathLike | None = None,
                 device: Any = "auto", batch_size: int = 32) -> None:
        def pkg() -> None:
            _package("ImageReward", "image-reward", self.name)

        self.ckpt = resolve(imagereward_path, "DITACCEL_IMAGEREWARD", "ImageReward checkpoint (ImageReward.pt)",
                            IMAGEREWARD_DEFAULT, before_fetch=pkg)
        self.med = resolve(med_config, "DITACCEL_IMAGEREWARD_MED_CONFIG", "ImageReward med_config.json",
                           IMAGEREWARD_MED_DEFAULT, before_fetch=pkg)
        self.bert = resolve(bert_path, "DITACCEL_BERT", "bert-base-uncased tokenizer", BERT_DEFAULT, "folder",
                            before_fetch=pkg)
        pkg()
        self.device, self.batch_size = device, int(batch_size)
        self._model: Any = None

    def _load(self) -> Any:
        import ImageReward as RM
        import ImageReward.models.BLIP.blip_pretrain as bp
        from transformers import BertTokenizer

        bert = str(self.bert)

        def init_tokenizer() -> Any:  # the package hard-codes a download of bert-base-uncased
            tok = BertTokenizer.from_pretrained(bert)
            tok.add_special_tokens({"bos_token": "[DEC]"})
            tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
            tok.enc_token_id = tok.additional_special_tokens_ids[0]
            return tok

        bp.init_tokenizer = init_tokenizer
        return RM.load(str(self.ckpt), device=str(_device(self.device)), med_config=str(self.med))

    def per_image(self, images: Sequence[np.ndarray], prompts: Sequence[str],
                  references: Sequence[np.ndarray] | None = None) -> np.ndarray:
        self._check_inputs(images, prompts, None)
        if self._model is None:
            self._model = self._load()
        return np.concatenate([imagereward_batch(self._model, list(prompts[sl]), _pil(images[sl]))
                               for sl in _batches(len(images), self.batch_size)])


def imagereward_batch(model: Any, prompts: list[str], pil_images: list[Any]) -> np.ndarray:
    """ImageReward's ``score(prompt, image)`` for many (prompt, image) pairs in one forward.

    The same computation as the package's per-image ``score``: BLIP's text encoder reads the
    prompt (padded to 35 tokens) with cross-attention to the image's ViT embeddings; the [CLS]
    feature goes through the reward MLP and is standardised by the model's mean and std.
    """
    import torch

    dev = next(model.parameters()).device
    with torch.no_grad():
        text = model.blip.tokenizer(prompts, padding="max_length", truncation=True, max_length=35,
                                    return_tensors="pt").to(dev)
        pixels = torch.stack([model.preprocess(im) for im in pil_images]).to(dev)
        image_embeds = model.blip.visual_encoder(pixels)
        atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=dev)
        feats = model.blip.text_encoder(text.input_ids, attention_mask=text.attention_mask,
                                        encoder_hidden_states=image_embeds, encoder_attention_mask=atts,
                                        return_dict=True).last_hidden_state[:, 0, :].float()
        rewards = (model.mlp(feats) - model.mean) / model.std
    return rewards.reshape(-1).cpu().numpy()


class HPSv2Metric(Metric):
    """HPSv2: an open_clip ViT-H-14 fine-tuned on human preferences (cosine of image and prompt features)."""

    name = "hpsv2"

    def __init__(self, hpsv2_path: str | os.PathLike | None = None,
                 open_clip_path: str | os.PathLike | None = None, device: Any = "auto", batch_size: int = 32) -> None:
        def pkg() -> None:
            _package("open_clip", "open-clip-torch", self.name)

        self.ckpt = resolve(hpsv2_path, "DITACCEL_HPSV2", "HPSv2 checkpoint (HPS_v2_compressed.pt)",
                            HPSV2_DEFAULT, before_fetch=pkg)
        self.clip = resolve(open_clip_path, "DITACCEL_OPEN_CLIP",
                            "open_clip ViT-H-14 weights (open_clip_pytorch_model.bin)", OPEN_CLIP_DEFAULT,
                            before_fetch=pkg)
        pkg()
        self.device, self.batch_size = device, int(batch_size)
        self._model: Any = None

    def _load(self) -> tuple[Any, Any, Any]:
        import open_clip
        import torch

        dev = _device(self.device)
        model, _, preprocess = open_clip.create_model_and_transforms("ViT-H-14", pretrained=str(self.clip),
                                                                     device=dev)
        state = torch.load(self.ckpt, map_location=dev, weights_only=True)
        model.load_state_dict(state.get("state_dict", state))
        model.eval()
        return model, preprocess, open_clip.get_tokenizer("ViT-H-14")

    def per_image(self, images: Sequence[np.ndarray], prompts: Sequence[str],
                  references: Sequence[np.ndarray] | None = None) -> np.ndarray:
        import torch

        self._check_inputs(images, prompts, None)
        if self._model is None:
            self._model = self._load()
        model, preprocess, tokenizer = self._model
        dev = next(model.parameters()).device
        out = []
        with torch.no_grad():
            for sl in _batches(len(images), self.batch_size):
                x = torch.stack([preprocess(im) for im in _pil(images[sl])]).to(dev)
                f_img = model.encode_image(x)
                f_txt = model.encode_text(tokenizer(list(prompts[sl])).to(dev))
                f_img = f_img / f_img.norm(dim=-1, keepdim=True)
                f_txt = f_txt / f_txt.norm(dim=-1, keepdim=True)
                out.append((f_img * f_txt).sum(-1).float().cpu().numpy())
        return np.concatenate(out)


class FIDMetric(Metric):
    """FID against a reference folder of images or precomputed ``.npz`` stats (``mu``, ``sigma``).

    A set metric: ``score`` returns ``-FID`` so that higher is better like every other metric.
    """

    name, kind = "fid", "set"

    def __init__(self, inception_path: str | os.PathLike | None = None,
                 fid_reference: str | os.PathLike | None = None, device: Any = "auto", batch_size: int = 64) -> None:
        def pkg() -> None:
            _package("torchmetrics", "torchmetrics", self.name)
            _package("torch_fidelity", "torch-fidelity", self.name)

        ref = env_path(fid_reference, "DITACCEL_FID_REF")  # cheap checks before any download
        if ref is None:
            raise MissingWeightsError("FID reference is not set; pass a folder of images or an .npz of stats "
                                      "(fid_reference=) or set $DITACCEL_FID_REF")
        self.reference = Path(ref).expanduser()
        if not (self.reference.is_dir() or (self.reference.is_file() and self.reference.suffix == ".npz")):
            raise MissingWeightsError(f"FID reference {self.reference} is neither an image folder nor an .npz file")
        self.weights = resolve(inception_path, "DITACCEL_INCEPTION",
                               "FID Inception weights (torch-fidelity's weights-inception-2015-12-05-6726825d.pth)",
                               INCEPTION_DEFAULT, hub=False, before_fetch=pkg)
        pkg()
        self.device, self.batch_size = device, int(batch_size)
        self._net: Any = None
        self._ref_stats: tuple[np.ndarray, np.ndarray] | None = None

    def _features(self, images: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        if self._net is None:
            from torchmetrics.image.fid import NoTrainInceptionV3

            self._net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                           feature_extractor_weights_path=str(self.weights)).eval()
            self._net.to(_device(self.device))
        dev = next(self._net.parameters()).device
        feats = []
        with torch.no_grad():
            for sl in _batches(len(images), self.batch_size):
                feats.append(self._net(_to_tensor(images[sl]).to(dev)).double().cpu().numpy())
        return np.concatenate(feats)

    @staticmethod
    def _stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return feats.mean(axis=0), np.cov(feats, rowvar=False)

    def reference_stats(self) -> tuple[np.ndarray, np.ndarray]:
        if self._ref_stats is None:
            if self.reference.is_file():
                with np.load(self.reference) as z:
                    self._ref_stats = (z["mu"], z["sigma"])
            else:
                from PIL import Image

                files = sorted(p for p in self.reference.iterdir()
                               if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
                if len(files) < 2:
                    raise DitaccelError(f"FID reference folder {self.reference} holds fewer than 2 images")
                imgs = [np.asarray(Image.open(f).convert("RGB")) for f in files]
                self._ref_stats = self._stats(self._features(imgs))
        return self._ref_stats

    def fid_value(self, images: Sequence[np.ndarray]) -> float:
        """Plain FID of ``images`` against the reference (lower is better)."""
        from scipy import linalg

        if len(images) < 2:
            raise DitaccelError("FID needs at least 2 images")
        mu1, s1 = self._stats(self._features(images))
        mu2, s2 = self.reference_stats()
        covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
        covmean = np.real(covmean)
        return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))

    def score(self, images: Sequence[np.ndarray], prompts: Sequence[str],
              references: Sequence[np.ndarray] | None = None) -> float:
        self._check_inputs(images, prompts, None)
        return -self.fid_value(images)
