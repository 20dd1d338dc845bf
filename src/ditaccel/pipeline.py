"""Loading pipelines (the bundled default or any diffusers folder / hub id) and calling them.

The bundled model is a plain diffusers ``PixArtAlphaPipeline`` folder; loading it runs exactly
the code path real models run. ``generate_images`` is the one place that turns prompts and seeds
into images, so the CLI, the search and the benchmarks agree on what "the same seed" means.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ditaccel.errors import DitaccelError

BUNDLED_DIR = Path(__file__).resolve().parent / "zoo" / "bundled"
_BINNED_SAMPLE_SIZES = (32, 64, 128, 256)


def bundled_model_path() -> Path:
    if not (BUNDLED_DIR / "model_index.json").is_file():
        raise DitaccelError(
            f"the bundled model is missing from {BUNDLED_DIR}; reinstall ditaccel or pass --model PATH"
        )
    return BUNDLED_DIR


def is_bundled(model: str | os.PathLike | None) -> bool:
    """Whether ``model`` (a ``--model`` value; None is the default) names the bundled model.

    The one test for "bundled": defaults that only fit the bundled model (the adherence metric,
    its calibration prompts, its search budget) ask this, for a model string or a loaded pipe's
    ``pipeline_info(pipe).bundled``.
    """
    if model is None:
        return True
    path = Path(model).expanduser()
    return path.exists() and path.resolve() == BUNDLED_DIR.resolve()


@dataclass(frozen=True)
class PipelineInfo:
    """What ``load_pipeline`` knows about a pipeline beyond diffusers: where it came from, how to call it.

    Why a record on the pipe: the search, ``eval`` and the CLI each need the source (to fingerprint
    runs, to let Ray workers load the same model) and the folder's ``ditaccel.json`` call defaults.
    A pipeline built in memory has the default record: no source, no call defaults.
    """

    #: The folder or hub id it was loaded from (None: built in memory).
    source: str | None = None
    #: ``call_defaults`` of the folder's ``ditaccel.json`` (e.g. the bundled model's steps and size).
    call_defaults: Mapping[str, Any] = field(default_factory=dict)
    #: Whether ``source`` is the bundled model (see ``is_bundled``).
    bundled: bool = False

    @property
    def name(self) -> str:
        """``source``, or ``(in-memory pipeline)``: what results record as the model."""
        return self.source if self.source is not None else "(in-memory pipeline)"


_INFO_ATTR = "_ditaccel_info"


def pipeline_info(pipe: Any) -> PipelineInfo:
    """The record ``load_pipeline`` attached to ``pipe``; the default record for any other pipeline."""
    info = getattr(pipe, _INFO_ATTR, None)
    return info if isinstance(info, PipelineInfo) else PipelineInfo()


def set_pipeline_info(pipe: Any, info: PipelineInfo) -> Any:
    """Attach ``info`` to ``pipe`` (what ``load_pipeline`` does; tests give replicas call defaults this way)."""
    setattr(pipe, _INFO_ATTR, info)
    return pipe


def _dtype_kwarg() -> str:
    """``dtype`` where diffusers has renamed ``torch_dtype`` (0.42+, which warns on the old name)."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return "torch_dtype"
    return "dtype"


def load_pipeline(
    model: str | Path | None = None, device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = "auto", torch_dtype: torch.dtype | None = None,
) -> Any:
    """The bundled model when ``model`` is None, else a local folder or a hub id from the HF cache.

    ``device``/``dtype`` as ``ditaccel.device`` resolves them: ``auto`` is cuda, then mps, then cpu,
    in bf16 on GPUs that support it and fp32 on the CPU. ``torch_dtype`` (diffusers' name) wins
    over ``dtype`` when given.
    """
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as dlogging

    from ditaccel.device import resolve_device, resolve_dtype

    device = resolve_device(device)
    path = bundled_model_path() if model is None else model
    kwargs: dict[str, Any] = {_dtype_kwarg(): torch_dtype if torch_dtype is not None else resolve_dtype(dtype, device)}
    local = Path(path).exists()
    if local and not (Path(path) / "model_index.json").is_file():
        raise DitaccelError(f"{path} is not a diffusers pipeline folder (no model_index.json); pass a pipeline folder")
    from transformers.utils import logging as tlogging

    verbosity = dlogging.get_verbosity()
    dlogging.set_verbosity_error()
    bars = (dlogging.is_progress_bar_enabled(), tlogging.is_progress_bar_enabled())
    dlogging.disable_progress_bar()
    tlogging.disable_progress_bar()
    try:
        pipe = DiffusionPipeline.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DitaccelError(
            f"cannot load model {path!r}: {first}; pass a local pipeline folder or a hub id already in the HF cache"
        ) from None
    finally:
        dlogging.set_verbosity(verbosity)
        if bars[0]:
            dlogging.enable_progress_bar()
        if bars[1]:
            tlogging.enable_progress_bar()
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    defaults_file = Path(str(path)) / "ditaccel.json"
    defaults = _call_defaults(defaults_file) if defaults_file.is_file() else {}
    return set_pipeline_info(pipe, PipelineInfo(source=str(path), call_defaults=defaults, bundled=is_bundled(path)))


def pipeline_steps(pipe: Any, call_kwargs: dict[str, Any]) -> int:
    """Denoising steps of a call with ``call_kwargs`` (the pipeline's default when not given)."""
    steps = call_kwargs.get("num_inference_steps")
    if steps is None:
        steps = inspect.signature(pipe.__call__).parameters["num_inference_steps"].default
    return int(steps)


def pipeline_call_kwargs(pipe: Any, **overrides: Any) -> dict[str, Any]:
    """Call arguments that make ``pipe`` run as intended, merged with ``overrides``.

    PixArt pipelines refuse transformer sample sizes outside their resolution bins unless
    ``use_resolution_binning=False``; small replicas and the bundled model need it.
    """
    params = inspect.signature(pipe.__call__).parameters
    kw: dict[str, Any] = {}
    transformer = getattr(pipe, "transformer", None)
    sample_size = getattr(getattr(transformer, "config", None), "sample_size", None)
    if "use_resolution_binning" in params and sample_size not in _BINNED_SAMPLE_SIZES:
        kw["use_resolution_binning"] = False
    if "clean_caption" in params:
        from diffusers.utils import is_bs4_available, is_ftfy_available

        if not (is_bs4_available() and is_ftfy_available()):
            kw["clean_caption"] = False  # what the pipeline falls back to anyway, minus its warnings
    kw.update(pipeline_info(pipe).call_defaults)
    kw.update({k: v for k, v in overrides.items() if v is not None})
    steps = kw.get("num_inference_steps")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise DitaccelError(f"num_inference_steps must be a whole number >= 1, got {steps!r}")
    if steps == 1 and type(pipe).__name__ in _ONE_STEP_NEEDS_DMD:
        raise DitaccelError(f"{type(pipe).__name__} reads a 1-step run as DMD distillation, which this scheduler "
                            "is not; pass --steps 2 or more")
    return {k: v for k, v in kw.items() if k in params}


# Pipelines whose __call__ treats num_inference_steps == 1 as a one-step (DMD) scheduler's output
_ONE_STEP_NEEDS_DMD = frozenset({"PixArtAlphaPipeline"})


def generate_images(
    pipe: Any,
    prompts: Sequence[str],
    seeds: Sequence[int],
    batch_size: int = 8,
    on_batch: Callable[[int], None] | None = None,
    **call_kwargs: Any,
) -> list[np.ndarray]:
    """uint8 [H, W, 3] images, one per (prompt, seed) pair, in order.

    Each image gets its own generator seeded by its seed, so an image depends only on its
    prompt, its seed and the batch size it was generated in.
    """
    if len(prompts) != len(seeds):
        raise DitaccelError(f"got {len(prompts)} prompts but {len(seeds)} seeds; pass one seed per prompt")
    kw = pipeline_call_kwargs(pipe, **call_kwargs)
    out: list[np.ndarray] = []
    for start in range(0, len(prompts), batch_size):
        ps = list(prompts[start : start + batch_size])
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds[start : start + batch_size]]
        images = pipe(ps, generator=gens, output_type="np", **kw).images
        out.extend((np.clip(images, 0, 1) * 255).round().astype(np.uint8))
        if on_batch is not None:
            on_batch(len(ps))
    return out


def _call_defaults(path: Path) -> dict[str, Any]:
    """The ``call_defaults`` of a model folder's ``ditaccel.json`` (checked, since it is a file we read)."""
    from ditaccel._io import read_json

    d = read_json(path, "model defaults", "fix or remove it")
    defaults = d.get("call_defaults", {}) if isinstance(d, dict) else None
    if not isinstance(defaults, dict):
        raise DitaccelError(f"{path} must be a JSON object with a 'call_defaults' object; fix or remove it")
    return defaults
