"""Metrics that need no weights: PSNR and SSIM to the uncached images, and shapes adherence."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from ditaccel.errors import DitaccelError
from ditaccel.metrics.base import Metric

PSNR_CAP = 100.0  # dB for identical images, so a mean stays finite


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise DitaccelError(f"image shapes differ: {a.shape} vs {b.shape}; compare images of one resolution")
    return a.astype(np.float64), b.astype(np.float64)


def psnr(image: np.ndarray, reference: np.ndarray, data_range: float = 255.0) -> float:
    """PSNR in dB of one uint8 image against its reference, capped at 100 dB when identical."""
    a, b = _pair(image, reference)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return PSNR_CAP
    return float(min(PSNR_CAP, 10.0 * np.log10(data_range**2 / mse)))


def ssim(image: np.ndarray, reference: np.ndarray, data_range: float = 255.0, sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004: Gaussian window sigma 1.5, K1 0.01, K2 0.03), per channel then averaged."""
    a, b = _pair(image, reference)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for ch in range(a.shape[-1]):
        x, y = a[..., ch], b[..., ch]

        def f(z: np.ndarray) -> np.ndarray:
            return ndimage.gaussian_filter(z, sigma, truncate=3.5, mode="reflect")

        mx, my = f(x), f(y)
        vx, vy, cxy = f(x * x) - mx * mx, f(y * y) - my * my, f(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        vals.append(float(s.mean()))
    return float(np.mean(vals))


class _PairFidelity(Metric):
    """Per-image comparison with the uncached image of the same prompt and seed."""

    needs_reference = True

    @staticmethod
    def compare(image: np.ndarray, reference: np.ndarray) -> float:
        raise NotImplementedError

    def per_image(self, images: Sequence[np.ndarray], prompts: Sequence[str],
                  references: Sequence[np.ndarray] | None = None) -> np.ndarray:
        self._check_inputs(images, prompts, references)
        return np.array([self.compare(i, r) for i, r in zip(images, references, strict=True)])


class PSNR(_PairFidelity):
    """Fidelity to the uncached model: what caching changed, in dB."""

    name = "psnr"
    compare = staticmethod(psnr)


class SSIM(_PairFidelity):
    """Structural fidelity to the uncached model, in [-1, 1] (1 = identical)."""

    name = "ssim"
    compare = staticmethod(ssim)


class AdherenceMetric(Metric):
    """The bundled model's exact checker: share of images right in colour, shape, size and position."""

    name, bounded = "adherence", True

    def validate_prompts(self, prompts: Sequence[str]) -> None:
        from ditaccel.zoo import shapes

        for p in prompts:
            shapes.parse_prompt(p)  # raises one line for prompts outside the shapes world

    def per_image(self, images: Sequence[np.ndarray], prompts: Sequence[str],
                  references: Sequence[np.ndarray] | None = None) -> np.ndarray:
        from ditaccel.zoo import shapes

        self._check_inputs(images, prompts, None)
        return np.array([float(shapes.check(i, p)["all"]) for i, p in zip(images, prompts, strict=True)])

    def details(self, images: Sequence[np.ndarray], prompts: Sequence[str],
                references: Sequence[np.ndarray] | None = None) -> dict[str, Any]:
        from ditaccel.zoo import shapes

        return {k: round(v, 6) for k, v in shapes.adherence_rates(images, prompts).items()}
