"""Calibration data: the transformer's own inputs along the sampler's trajectory.

A forward pre-hook on ``pipe.transformer`` records every call's ``(args, kwargs)`` while
the pipeline samples calibration prompts, so the data has exactly the latents, timesteps,
text embeddings (conditional and unconditional) and side inputs the model sees at run
time, for every family and sampler, with no images. The paper's alternative (real images,
VAE-encoded and noised at every timestep) is :func:`calibration_from_images`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from ditaccel.errors import DitaccelError

__all__ = ["CalibrationSet", "collect_calibration", "calibration_from_images", "load_image_folder"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _cpu_clone(obj: Any) -> Any:
    leaves, spec = tree_flatten(obj)
    return tree_unflatten(
        [x.detach().to("cpu", copy=True) if isinstance(x, torch.Tensor) else x for x in leaves], spec
    )


@dataclass
class CalibrationSet:
    """Recorded transformer calls: ``records[i] = (args, kwargs)``, tensors on CPU."""

    records: list[tuple[tuple, dict]] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_samples(self) -> int:
        """Samples (batch rows) over all calls: CFG halves count separately."""
        n = 0
        for args, kwargs in self.records:
            x = args[0] if args else kwargs.get("hidden_states")
            n += int(x.shape[0]) if isinstance(x, torch.Tensor) else 1
        return n

    def to(self, device: torch.device | str) -> CalibrationSet:
        """Move every tensor (e.g. to the transformer's GPU)."""
        leaves, spec = tree_flatten(self.records)
        moved = tree_unflatten([x.to(device) if isinstance(x, torch.Tensor) else x for x in leaves], spec)
        return CalibrationSet(moved, self.prompts, self.seeds, self.steps, self.seconds)

    def subsample(self, every: int) -> CalibrationSet:
        """Keep every ``every``-th call: fewer timesteps, same prompts."""
        return CalibrationSet(self.records[::every], self.prompts, self.seeds, self.steps, self.seconds)

    def __add__(self, other: CalibrationSet) -> CalibrationSet:
        """Both sets' calls (e.g. the sampler's trajectory plus noised real images)."""
        return CalibrationSet(self.records + other.records, self.prompts + other.prompts,
                              sorted(set(self.seeds) | set(other.seeds)), max(self.steps, other.steps),
                              self.seconds + other.seconds)


def collect_calibration(
    pipe: Any,
    prompts: Sequence[str],
    seeds: Sequence[int] | int = 0,
    steps: int | None = None,
    batch_size: int = 8,
    **call_kwargs: Any,
) -> CalibrationSet:
    """Sample ``prompts`` x ``seeds`` with ``pipe`` and record every transformer call.

    ``call_kwargs`` go to ``pipe(...)`` (guidance, size ...); ``output_type`` defaults to
    ``"latent"`` because the VAE is not needed.
    """
    if isinstance(seeds, int):
        seeds = [seeds]
    prompts = list(prompts)
    if not prompts:
        raise DitaccelError("no calibration prompts: pass at least one prompt")
    transformer = getattr(pipe, "transformer", None)
    if transformer is None:
        raise DitaccelError("the pipeline has no .transformer: quantization needs a DiT pipeline")
    pairs = [(p, int(s)) for s in seeds for p in prompts]
    records: list[tuple[tuple, dict]] = []

    def hook(_m: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        records.append(_cpu_clone((args, kwargs)))

    kw = dict(call_kwargs)
    kw.setdefault("output_type", "latent")
    if steps is not None:
        kw["num_inference_steps"] = steps
    t0 = time.perf_counter()
    handle = transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for i in range(0, len(pairs), batch_size):
                chunk = pairs[i:i + batch_size]
                gens = [torch.Generator().manual_seed(s) for _, s in chunk]
                pipe([p for p, _ in chunk], generator=gens, **kw)
    finally:
        handle.remove()
    if not records:
        raise DitaccelError("the pipeline never called its transformer: check num_inference_steps")
    return CalibrationSet(records, prompts, [int(s) for s in seeds], int(kw.get("num_inference_steps", 0) or 0),
                          time.perf_counter() - t0)


def _noisy(scheduler: Any, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x0`` noised to the transformer's timestep ``t`` under ``scheduler``'s forward process."""
    if hasattr(scheduler, "scale_noise"):  # flow matching (FLUX passes t/1000, SD3 passes t)
        sigma = float(t) if float(t) <= 1.0 else float(t) / 1000.0
        return (1.0 - sigma) * x0 + sigma * noise
    return scheduler.add_noise(x0, noise, t.reshape(1).round().long().cpu())


def _image_latent(vae: Any, img: Any) -> torch.Tensor:
    """An image (PIL or ``[H, W, 3]`` uint8) as the scaled, shifted latent the transformer denoises."""
    import numpy as np

    arr = np.asarray(img, dtype=np.float32)[..., :3] / 127.5 - 1.0
    pix = torch.from_numpy(arr).permute(2, 0, 1)[None].to(vae.device, vae.dtype)
    with torch.no_grad():
        lat = vae.encode(pix).latent_dist.mean
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (lat - shift) * vae.config.scaling_factor


def _real_latent_hook(pipe: Any, lat: torch.Tensor, noise: torch.Tensor,
                      records: list[tuple[tuple, dict]]) -> Callable[..., tuple[tuple, dict]]:
    """A transformer pre-hook that swaps its latent input for ``lat`` noised to the call's timestep and records
    the call."""

    def hook(_m: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        kwargs = dict(kwargs)
        args = list(args)
        hs = args[0] if args else kwargs["hidden_states"]
        t = kwargs.get("timestep", args[2] if len(args) > 2 else None)
        xt = _noisy(pipe.scheduler, lat, noise, t.reshape(-1)[0])
        if hs.dim() == 3:  # FLUX packs 2x2 latent patches into tokens
            b, c, h, w = xt.shape
            xt = pipe._pack_latents(xt, b, c, h, w)
        if xt.shape[1:] != hs.shape[1:]:
            raise DitaccelError(
                f"image latents {tuple(xt.shape)} do not fit the model input {tuple(hs.shape)}: "
                "resize the images to the generation height/width"
            )
        xt = xt.expand(hs.shape[0], *xt.shape[1:]).to(hs.dtype)
        if args:
            args[0] = xt
        else:
            kwargs["hidden_states"] = xt
        records.append(_cpu_clone((tuple(args), kwargs)))
        return tuple(args), kwargs

    return hook


def calibration_from_images(
    pipe: Any,
    images: Sequence[Any],
    captions: Sequence[str],
    steps: int | None = None,
    seed: int = 0,
    **call_kwargs: Any,
) -> CalibrationSet:
    """The paper's calibration: real images, VAE-encoded, noised at every sampler timestep.

    The pipeline still runs (so text embeddings, CFG batching and side inputs are exactly
    what the model sees), but at every step the latent input is replaced by the real
    image's latent noised to that step's timestep. Works where the transformer takes
    ``[B, C, H, W]`` latents (PixArt, Hunyuan, SD3) and for FLUX's packed latents.
    ``images`` are PIL images or ``[H, W, 3]`` uint8 arrays at the generation size.
    """
    if len(images) != len(captions):
        raise DitaccelError(f"got {len(images)} images but {len(captions)} captions: pass one caption per image")
    records: list[tuple[tuple, dict]] = []
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    kw = dict(call_kwargs)
    kw.setdefault("output_type", "latent")
    if steps is not None:
        kw["num_inference_steps"] = steps
    for img, cap in zip(images, captions, strict=True):
        lat = _image_latent(pipe.vae, img)
        noise = torch.randn(lat.shape, generator=gen).to(lat)
        handle = pipe.transformer.register_forward_pre_hook(_real_latent_hook(pipe, lat, noise, records),
                                                            with_kwargs=True)
        try:
            with torch.no_grad():
                pipe(cap, generator=torch.Generator().manual_seed(seed), **kw)
        finally:
            handle.remove()
    return CalibrationSet(records, list(captions), [seed], int(kw.get("num_inference_steps", 0) or 0),
                          time.perf_counter() - t0)


def load_image_folder(folder: str | os.PathLike, height: int, width: int) -> tuple[list[Any], list[str]]:
    """Images and their captions from a folder, centre-cropped and resized to ``height`` x ``width``.

    Captions come from ``images.jsonl`` or ``captions.jsonl`` (lines ``{"file": ..., "prompt"|"caption": ...}``,
    the format ``ditaccel generate`` writes), else from a ``NAME.txt`` next to each ``NAME.png``.
    """
    from PIL import Image, ImageOps

    from ditaccel._io import parse_json, read_text_file

    folder = Path(folder)
    if not folder.is_dir():
        raise DitaccelError(f"calibration image folder {folder} does not exist: pass a folder of images + captions")
    pairs: list[tuple[Path, str]] = []
    index = next((folder / n for n in ("images.jsonl", "captions.jsonl") if (folder / n).is_file()), None)
    if index is not None:
        fix = "fix or remove it"
        for i, line in enumerate(read_text_file(index, "image index", fix).splitlines(), 1):
            if not line.strip():
                continue
            row = parse_json(line, f"{index} line {i}", fix)  # verifies the checksum `generate` writes
            name = row.get("file") if isinstance(row, dict) else None
            cap = row.get("prompt", row.get("caption")) if isinstance(row, dict) else None
            if not isinstance(name, str) or not name:
                raise DitaccelError(f"{index} line {i} is not {{\"file\": ..., \"prompt\": ...}}: {fix}")
            if cap is None:
                raise DitaccelError(f"{index} line {i} has no prompt or caption: add one")
            pairs.append((folder / name, str(cap)))
    else:
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                cap = f.with_suffix(".txt")
                if not cap.is_file():
                    raise DitaccelError(f"{f} has no caption: add {cap.name}, or an images.jsonl for the folder")
                pairs.append((f, read_text_file(cap, "caption file", "write the caption as UTF-8 text").strip()))
    if not pairs:
        raise DitaccelError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}): pass a folder of images + captions")
    images, captions = [], []
    for f, cap in pairs:
        try:
            img = Image.open(f).convert("RGB")
        except (OSError, ValueError) as e:
            raise DitaccelError(f"cannot read calibration image {f} ({type(e).__name__}): replace or remove it") from None
        images.append(ImageOps.fit(img, (width, height), Image.Resampling.LANCZOS))
        captions.append(cap)
    return images, captions
