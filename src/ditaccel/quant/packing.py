"""Two 4-bit codes per byte: the storage that makes FP4 weights actually 4 bits."""

from __future__ import annotations

import torch

from ditaccel.errors import DitaccelError

__all__ = ["pack_nibbles", "unpack_nibbles", "packed_cols"]


def packed_cols(cols: int) -> int:
    """Bytes per row for ``cols`` 4-bit codes (an odd count pads one zero nibble)."""
    return (cols + 1) // 2


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Pack ``[..., cols]`` uint8 codes in ``[0, 16)`` to ``[..., ceil(cols/2)]`` bytes, low nibble first."""
    if codes.dtype != torch.uint8:
        raise DitaccelError(f"pack_nibbles expects uint8 codes, got {codes.dtype}: encode to codes first")
    if codes.numel() and int(codes.max()) > 15:
        raise DitaccelError("pack_nibbles got codes >= 16: only 4-bit formats can be packed two per byte")
    if codes.shape[-1] % 2:
        codes = torch.nn.functional.pad(codes, (0, 1))
    lo = codes[..., 0::2]
    hi = codes[..., 1::2]
    return (lo | (hi << 4)).contiguous()


def unpack_nibbles(packed: torch.Tensor, cols: int) -> torch.Tensor:
    """Inverse of :func:`pack_nibbles`: ``[..., ceil(cols/2)]`` bytes back to ``[..., cols]`` codes."""
    if packed.dtype != torch.uint8:
        raise DitaccelError(f"unpack_nibbles expects uint8 bytes, got {packed.dtype}")
    if packed.shape[-1] != packed_cols(cols):
        raise DitaccelError(
            f"packed row has {packed.shape[-1]} bytes but {cols} codes need {packed_cols(cols)}: the tensor is truncated"
        )
    lo = packed & 0x0F
    hi = packed >> 4
    out = torch.stack([lo, hi], dim=-1).reshape(*packed.shape[:-1], -1)
    return out[..., :cols]
