"""The metric interface every registry entry implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ditaccel.errors import DitaccelError


class Metric:
    """Quality of a list of uint8 HxWx3 images, higher is better.

    ``kind`` is ``"image"`` (a mean of per-image scores, ``per_image`` gives them) or ``"set"``
    (one number for the whole set, e.g. FID). ``needs_reference`` means ``score`` must get the
    uncached images for the same prompts and seeds. ``bounded`` metrics live in [0, 1].
    """

    name: str = ""
    kind: str = "image"
    needs_reference: bool = False
    bounded: bool = False

    def validate_prompts(self, prompts: Sequence[str]) -> None:
        """Raise a one-line error now if the metric cannot score images of these prompts."""

    def per_image(self, images: Sequence[np.ndarray], prompts: Sequence[str],
                  references: Sequence[np.ndarray] | None = None) -> np.ndarray:
        raise NotImplementedError

    def score(self, images: Sequence[np.ndarray], prompts: Sequence[str],
              references: Sequence[np.ndarray] | None = None) -> float:
        """The metric over the set (the mean of ``per_image`` for image metrics)."""
        self._check_inputs(images, prompts, references)
        return float(np.mean(self.per_image(images, prompts, references)))

    def details(self, images: Sequence[np.ndarray], prompts: Sequence[str],
                references: Sequence[np.ndarray] | None = None) -> dict[str, Any]:
        """Extra numbers worth recording next to the score (e.g. per-attribute rates)."""
        return {}

    def _check_inputs(self, images: Sequence[np.ndarray], prompts: Sequence[str],
                      references: Sequence[np.ndarray] | None) -> None:
        if len(images) == 0:
            raise DitaccelError(f"{self.name}: no images to score")
        if len(images) != len(prompts):
            raise DitaccelError(f"{self.name}: got {len(images)} images but {len(prompts)} prompts")
        if self.needs_reference:
            if references is None:
                raise DitaccelError(f"{self.name} compares with the uncached images; pass references=")
            if len(references) != len(images):
                raise DitaccelError(f"{self.name}: got {len(images)} images but {len(references)} references")

    def __repr__(self) -> str:
        return f"<metric {self.name}>"
