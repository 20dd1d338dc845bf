"""The "shapes" world: a tiny text-to-image task whose ground truth can be checked exactly.

It gives the bundled model a quality metric that means something on a CPU: the adherence
checker reads an image and says whether its colour, shape, size and position match the prompt.
The spec (colours, radii, centres, prompt grammar, calibration split) is fixed; other parts of
the project rely on it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ditaccel.errors import DitaccelError

IMAGE_SIZE = 64
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
}
SHAPES: tuple[str, ...] = ("square", "circle", "triangle")
SIZES: dict[str, int] = {"small": 7, "large": 13}
POSITIONS: dict[str, tuple[int, int]] = {
    "top left": (16, 16),
    "top right": (48, 16),
    "bottom left": (16, 48),
    "bottom right": (48, 48),
    "center": (32, 32),
}
ATTRIBUTES: tuple[str, ...] = ("color", "shape", "size", "position")


@dataclass(frozen=True)
class Scene:
    """One prompt's attributes."""

    color: str
    shape: str
    size: str
    position: str

    @property
    def prompt(self) -> str:
        return f"a {self.size} {self.color} {self.shape} in the {self.position}"

    @property
    def index_sum(self) -> int:
        return (
            list(COLORS).index(self.color)
            + SHAPES.index(self.shape)
            + list(SIZES).index(self.size)
            + list(POSITIONS).index(self.position)
        )

    @property
    def is_calibration(self) -> bool:
        return self.index_sum % 5 == 0


SCENES: tuple[Scene, ...] = tuple(
    Scene(c, s, z, p) for c, s, z, p in itertools.product(COLORS, SHAPES, SIZES, POSITIONS)
)
_BY_PROMPT: dict[str, Scene] = {sc.prompt: sc for sc in SCENES}


def all_prompts() -> list[str]:
    """All 180 prompts, in a fixed order."""
    return [sc.prompt for sc in SCENES]


def calibration_prompts() -> list[str]:
    """The 36 prompts the search and quantization calibrate on."""
    return [sc.prompt for sc in SCENES if sc.is_calibration]


def heldout_prompts() -> list[str]:
    """The 144 prompts kept for evaluation."""
    return [sc.prompt for sc in SCENES if not sc.is_calibration]


def parse_prompt(prompt: str) -> Scene:
    """The scene a prompt describes; raises for prompts outside the world."""
    key = " ".join(prompt.strip().lower().split())
    if key not in _BY_PROMPT:
        raise DitaccelError(
            f"prompt {prompt!r} is not in the shapes world; use 'a {{size}} {{color}} {{shape}} in the {{position}}'"
        )
    return _BY_PROMPT[key]


def shape_mask(shape: str, radius: float, cx: float, cy: float, size: int = IMAGE_SIZE) -> np.ndarray:
    """Boolean [size, size] mask of one shape, exactly as the spec defines it."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    if shape == "square":
        return (np.abs(x - cx) <= radius) & (np.abs(y - cy) <= radius)
    if shape == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 <= radius**2
    if shape == "triangle":
        dy = y - (cy - radius)
        return (dy >= 0) & (dy <= 2 * radius) & (np.abs(x - cx) <= dy / 2)
    raise DitaccelError(f"unknown shape {shape!r}; use one of {', '.join(SHAPES)}")


def render(prompt: str | Scene) -> np.ndarray:
    """Ground-truth uint8 [64, 64, 3] image for a prompt."""
    sc = prompt if isinstance(prompt, Scene) else parse_prompt(prompt)
    cx, cy = POSITIONS[sc.position]
    img = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    img[shape_mask(sc.shape, SIZES[sc.size], cx, cy)] = COLORS[sc.color]
    return img


def render_random(rng: np.random.Generator) -> np.ndarray:
    """A shape with random colour, kind, radius and centre: training data for the VAE only."""
    color = list(COLORS.values())[rng.integers(len(COLORS))]
    shape = SHAPES[rng.integers(len(SHAPES))]
    r = int(rng.integers(5, 16))
    cx, cy = rng.uniform(r, IMAGE_SIZE - 1 - r, size=2)
    img = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    img[shape_mask(shape, r, cx, cy)] = color
    return img


# ----------------------------------------------------------------------------- checker

_NONE = {a: None for a in ATTRIBUTES}


def _to_array(image: object) -> np.ndarray:
    """float [H, W, 3] in [0, 1] from a PIL image, uint8 array or float array."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] < 3:
        raise DitaccelError(f"expected an RGB image of shape [H, W, 3], got shape {arr.shape}")
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    return np.clip(arr.astype(np.float64), 0.0, 1.0)


def read_image(image: object) -> dict[str, object]:
    """What the image shows: colour, shape, size and position names, or None where unreadable.

    The object is the largest bright connected blob after a 3x3 median filter, which makes the
    reading robust to blur and pixel noise. Images with no single compact object (noise, an
    empty canvas, several blobs of similar size) read as None for every attribute.
    """
    arr = _to_array(image)
    if arr.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DitaccelError(f"shapes images are {IMAGE_SIZE}x{IMAGE_SIZE}, got {arr.shape[1]}x{arr.shape[0]}")
    smooth = ndimage.median_filter(arr, size=(3, 3, 1))
    bright = smooth.max(axis=2) > 0.5
    labels, n = ndimage.label(bright)
    if n == 0:
        return dict(_NONE)
    areas = ndimage.sum_labels(bright, labels, index=np.arange(1, n + 1))
    order = np.argsort(areas)[::-1]
    main = labels == (order[0] + 1)
    area = float(areas[order[0]])
    # A second blob of comparable size means no single object.
    if n > 1 and areas[order[1]] > 0.25 * area:
        return dict(_NONE)
    ys, xs = np.nonzero(main)
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    w, h = x1 - x0 + 1, y1 - y0 + 1
    # Objects of this world are between 13 and 29 px across; anything else is not one.
    if not (9 <= w <= 33 and 9 <= h <= 33) or area < 40:
        return dict(_NONE)
    # Outside the object the canvas must be dark: noise images fail here.
    if smooth.max(axis=2)[~ndimage.binary_dilation(main, iterations=2)].mean() > 0.15:
        return dict(_NONE)

    rgb = smooth[main].mean(axis=0) > 0.5
    color = next((name for name, c in COLORS.items() if tuple(np.array(c) > 127) == tuple(rgb)), None)

    extent = (w + h) / 2.0
    size = "small" if extent < 21 else "large"

    # Shape: the best-overlapping template of this world's three kinds, fitted to the blob's box.
    bx, by = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    r_est = (extent - 1.0) / 2.0
    ious = {}
    for kind in SHAPES:
        best_iou = 0.0
        for r in np.arange(r_est - 1.0, r_est + 2.01, 0.5):
            tmpl = shape_mask(kind, r, bx, by)
            best_iou = max(best_iou, (main & tmpl).sum() / float((main | tmpl).sum()))
        ious[kind] = best_iou
    best_shape = max(ious, key=ious.get)
    shape = best_shape if ious[best_shape] >= 0.6 else None

    dists = {name: np.hypot(bx - px, by - py) for name, (px, py) in POSITIONS.items()}
    best = min(dists, key=dists.get)
    position = best if dists[best] <= 8.0 else None
    return {"color": color, "shape": shape, "size": size, "position": position}


def check(image: object, prompt: str) -> dict[str, bool]:
    """Per-attribute and overall ("all") adherence of one image to its prompt."""
    want = parse_prompt(prompt)
    got = read_image(image)
    out = {a: got[a] == getattr(want, a) for a in ATTRIBUTES}
    out["all"] = all(out.values())
    return out


def adherence_rates(images: Iterable[object], prompts: Sequence[str]) -> dict[str, float]:
    """Fraction of images correct per attribute and for all attributes together."""
    rows = [check(img, p) for img, p in zip(images, prompts, strict=True)]
    if not rows:
        raise DitaccelError("no images to check")
    return {k: float(np.mean([r[k] for r in rows])) for k in (*ATTRIBUTES, "all")}
