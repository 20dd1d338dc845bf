"""Two 4-bit codes per byte: the storage that makes FP4 weights actually 4 bits."""

from __future__ import annotations

import torch

from ditaccel.errors import DitaccelError
from ditaccel.quant.formats import FPFormat, IntFormat, int8_multiplier

__all__ = ["pack_nibbles", "unpack_nibbles", "packed_cols", "pair_table"]


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


_TABLES: dict[tuple[str, str], torch.Tensor] = {}


def pair_table(fmt: FPFormat | IntFormat, device: torch.device, int8: bool = False) -> torch.Tensor:
    """For each byte, the values of its low and high nibble side by side: ``[256]`` int64 words of two float32.

    A value is the grid value (FP), the signed level (symmetric INT) or the raw level (INT
    with zero point). Gathering 8-byte words is one ``index_select`` of contiguous rows,
    where a ``[256, 2]`` float table costs an embedding lookup of 2-wide rows. ``int8=True``:
    ``[256]`` int16 words of two int8 integer levels (FP grid x ``int_max`` x ``2^(M-1)``).
    """
    key = (fmt.name + (":int8" if int8 else ""), str(device))
    if key not in _TABLES:
        codes = torch.arange(16)
        if isinstance(fmt, FPFormat):
            per_code = fmt.grid()[:16]
            if int8:
                per_code = (fmt.grid()[:16].double() * fmt.int_max * int8_multiplier(fmt)).round()
        elif fmt.symmetric:
            per_code = torch.where(codes >= 8, codes - 16, codes).float()
        else:
            per_code = codes.float()
        b = torch.arange(256)
        pairs = torch.stack([per_code[b & 15], per_code[b >> 4]], dim=-1)
        pairs = pairs.to(torch.int8).contiguous().view(torch.int16) if int8 else pairs.float().contiguous().view(torch.int64)
        _TABLES[key] = pairs.reshape(256).to(device)
    return _TABLES[key]
