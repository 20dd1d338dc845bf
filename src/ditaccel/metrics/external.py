"""Metrics with learned weights (CLIP, ImageReward, HPSv2) and FID, from local files only.

Why the constructors check so much: weights cannot be downloaded on our machines, and a
search that fails after an hour of generation is worse than one that refuses at once. Every
constructor checks that the files exist and the optional package imports, and raises one
line naming what to provide. The models themselves load lazily on the first ``score``.
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


def _need(arg: Any, env: str, what: str, kind: str = "file") -> Path:
    from ditaccel.metrics import env_path

    value = env_path(arg, env)
    if value is None:
        raise MissingWeightsError(f"{what} is not set; pass its {kind} path or set ${env}")
    p = Path(value).expanduser()
    ok = p.is_dir() if kind == "folder" else p.is_file()
    if not ok:
        raise MissingWeightsError(f"{what} {kind} {p} does not exist; provide it (or set ${env})")
    return p


def _package(module: str, pip_name: str, metric: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError:
        raise DitaccelError(f"metric {metric} needs the {pip_name} package; pip install {pip_name}") from None


def _to_tensor(images: Sequence[np.ndarray]) -> Any:
    import torch

    return torch.from_numpy(np.stack([np.asarray(i, dtype=np.uint8) for i in images])).permute(0, 3, 1, 2)


class ClipScore(Metric):
    """CLIP score (torchmetrics ``CLIPScore``) from a local transformers CLIP folder."""

    name = "clip"

    def __init__(self, clip_path: str | os.PathLike | None = None) -> None:
        self.path = _need(clip_path, "DITACCEL_CLIP", "CLIP model (a transformers folder with config.json)",
                          "folder")
        if not (self.path / "config.json").is_file():
            raise MissingWeightsError(f"CLIP folder {self.path} has no config.json; pass a transformers CLIP folder")
        _package("torchmetrics", "torchmetrics", self.name)
        self._model: Any = None

    def per_image(self, images: Sequence[np.ndarray], prompts: Sequence[str],
                  references: Sequence[np.ndarray] | None = None) -> np.ndarray:
        import torch
        from torchmetrics.multimodal.clip_score import CLIPScore

        self._check_inputs(images, prompts, None)
        if self._model is None:
            self._model = CLIPScore(model_name_or_path=str(self.path))
        metric = self._model
        scores = []
        with torch.no_grad():
            for img, p in zip(_to_tensor(images), prompts, strict=True):
                metric.reset()
                metric.update(img[None], [p])
                scores.append(float(metric.compute()))
        return np.array(scores)


class ImageRewardMetric(Metric):
    """ImageReward (the ECAD paper's fitness) from ImageReward.pt, med_config.json and a BERT tokenizer folder."""

    name = "imagereward"

    def __init__(self, imagereward_path: str | os.PathLike | None = None,
                 med_config: str | os.PathLike | None = None, bert_path: str | os.PathLike | None = None,
                 device: str = "cpu") -> None:
        self.ckpt = _need(imagereward_path, "DITACCEL_IMAGEREWARD", "ImageReward checkpoint (ImageReward.pt)")
        self.med = _need(med_config, "DITACCEL_IMAGEREWARD_MED_CONFIG", "ImageReward med_config.json")
        self.bert = _need(bert_path, "DITACCEL_BERT", "bert-base-uncased tokenizer", "folder")
        _package("ImageReward", "image-reward", self.name)
        self.device = device
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
        return RM.load(str(self.ckpt), device=self.device, med_config=str(self.med))

    def per_image(self, images: Sequence[np.ndarray], prompts: Sequence[str],
                  references: Sequence[np.ndarray] | None = None) -> np.ndarray:
        from PIL import Image

        self._check_inputs(images, prompts, None)
        if self._model is None:
            self._model = self._load()
        return np.array([float(self._model.score(p, [Image.fromarray(np.asarray(i, dtype=np.uint8))]))
                         for i, p in zip(images, prompts, strict=True)])


class HPSv2Metric(Metric):
    """HPSv2: an open_clip ViT-H-14 fine-tuned on human preferences; both files local."""

    name = "hpsv2"

    def __init__(self, hpsv2_path: str | os.PathLike | None = None,
                 open_clip_path: str | os.PathLike | None = None, device: str = "cpu") -> None:
        self.ckpt = _need(hpsv2_path, "DITACCEL_HPSV2", "HPSv2 checkpoint (HPS_v2_compressed.pt)")
        self.clip = _need(open_clip_path, "DITACCEL_OPEN_CLIP", "open_clip ViT-H-14 weights (open_clip_pytorch_model.bin)")
        _package("open_clip", "open-clip-torch", self.name)
        self.device = device
        self._model: Any = None

    def _load(self) -> tuple[Any, Any, Any]:
        import open_clip
        import torch

        model, _, preprocess = open_clip.create_model_and_transforms("ViT-H-14", pretrained=str(self.clip),
                                                                     device=self.device)
        state = torch.load(self.ckpt, map_location=self.device, weights_only=True)
        model.load_state_dict(state.get("state_dict", state))
        model.eval()
        return model, preprocess, open_clip.get_tokenizer("ViT-H-14")

    def per_image(self, images: Sequence[np.ndarray], prompts: Sequence[str],
                  references: Sequence[np.ndarray] | None = None) -> np.ndarray:
        import torch
        from PIL import Image

        self._check_inputs(images, prompts, None)
        if self._model is None:
            self._model = self._load()
        model, preprocess, tokenizer = self._model
        out = []
        with torch.no_grad():
            for img, p in zip(images, prompts, strict=True):
                x = preprocess(Image.fromarray(np.asarray(img, dtype=np.uint8))).unsqueeze(0).to(self.device)
                f_img = model.encode_image(x)
                f_txt = model.encode_text(tokenizer([p]).to(self.device))
                f_img = f_img / f_img.norm(dim=-1, keepdim=True)
                f_txt = f_txt / f_txt.norm(dim=-1, keepdim=True)
                out.append(float((f_img * f_txt).sum()))
        return np.array(out)


class FIDMetric(Metric):
    """FID against a reference folder of images or precomputed ``.npz`` stats (``mu``, ``sigma``).

    A set metric: ``score`` returns ``-FID`` so that higher is better like every other metric.
    """

    name, kind = "fid", "set"

    def __init__(self, inception_path: str | os.PathLike | None = None,
                 fid_reference: str | os.PathLike | None = None) -> None:
        self.weights = _need(inception_path, "DITACCEL_INCEPTION",
                             "FID Inception weights (pt_inception-2015-12-05-6726825d.pth)")
        from ditaccel.metrics import env_path

        ref = env_path(fid_reference, "DITACCEL_FID_REF")
        if ref is None:
            raise MissingWeightsError("FID reference is not set; pass a folder of images or an .npz of stats "
                                      "(fid_reference=) or set $DITACCEL_FID_REF")
        self.reference = Path(ref).expanduser()
        if not (self.reference.is_dir() or (self.reference.is_file() and self.reference.suffix == ".npz")):
            raise MissingWeightsError(f"FID reference {self.reference} is neither an image folder nor an .npz file")
        _package("torchmetrics", "torchmetrics", self.name)
        _package("torch_fidelity", "torch-fidelity", self.name)
        self._net: Any = None
        self._ref_stats: tuple[np.ndarray, np.ndarray] | None = None

    def _features(self, images: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        if self._net is None:
            from torchmetrics.image.fid import NoTrainInceptionV3

            self._net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                           feature_extractor_weights_path=str(self.weights)).eval()
        feats = []
        with torch.no_grad():
            for start in range(0, len(images), 64):
                feats.append(self._net(_to_tensor(images[start:start + 64])).double().cpu().numpy())
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
