"""Device and dtype choice, in one place for the library and every CLI command.

Why: a GPU user should get the GPU in bf16 without flags, and a device this torch build lacks
should be a one-line error, not a CUDA traceback from deep inside ``pipe.to``.
"""

from __future__ import annotations

from typing import Any

import torch

from ditaccel.errors import DitaccelError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None): cuda, then mps, then cpu. Else the named device, checked against this torch build."""
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise DitaccelError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "built without CUDA" if torch.version.cuda is None else "sees no CUDA GPU"
            raise DitaccelError(f"device {device!r} is not available: torch {torch.__version__} {build}; "
                                f"use --device cpu (or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DitaccelError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA GPU(s) "
                                f"visible; use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif dev.type == "mps" and not _mps_available():
        raise DitaccelError(f"device {device!r} is not available in this torch build; use --device cpu (or auto)")
    elif dev.type not in ("cpu", "cuda", "mps"):
        if not hasattr(torch, dev.type) or not getattr(torch, dev.type).is_available():
            raise DitaccelError(f"device {device!r} is not available in this torch build; use --device cpu (or auto)")
    return dev


def _bf16_ok(dev: torch.device) -> bool:
    if dev.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if dev.type == "mps":
        newer = getattr(torch.backends.mps, "is_macos_or_newer", None)
        return bool(newer is not None and newer(14, 0))
    return False


def resolve_dtype(dtype: str | torch.dtype | None = "auto", device: str | torch.device | None = "auto") -> torch.dtype:
    """``auto``: bf16 where ``device`` computes in it natively (fp16 on GPUs without bf16), fp32 on the CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype.strip().lower() == "auto":
        dev = resolve_device(device)
        if dev.type == "cpu":
            return torch.float32
        return torch.bfloat16 if _bf16_ok(dev) else torch.float16
    key = dtype.strip().lower().removeprefix("torch.")
    if key not in DTYPES:
        raise DitaccelError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return DTYPES[key]


def add_device_args(p: Any) -> None:
    """``--device`` and ``--dtype`` on an argparse parser (resolved by ``resolve_args``)."""
    p.add_argument("--device", default="auto",
                   help="auto (default: cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="auto",
                   help="auto (default: bfloat16 on GPUs that support it, float32 on the CPU), float32, "
                        "bfloat16 or float16")


def resolve_args(args: Any) -> None:
    """Replace ``args.device``/``args.dtype`` by what they resolve to (``'cuda'``, ``torch.bfloat16``)."""
    if hasattr(args, "device"):
        args.device = str(resolve_device(args.device))
        if hasattr(args, "dtype"):
            args.dtype = resolve_dtype(args.dtype, args.device)
