"""Hand-made schedules: the heuristics ECAD seeds its population with and is compared against.

Every preset is ``preset(pipe_or_transformer, *params, steps=N) -> CacheSchedule`` and takes
the family, block count and component names from the model's adapter.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ditaccel.caching.schedule import CacheSchedule, effective_bits
from ditaccel.errors import ScheduleError
from ditaccel.models import Adapter, get_adapter


def _check_steps(steps: int) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ScheduleError(f"steps must be a positive integer, got {steps!r}")


def _positive(name: str, value: int) -> None:
    if not isinstance(value, (int, np.integer)) or value < 1:
        raise ScheduleError(f"{name} must be a positive integer, got {value!r}")


def _make(a: Adapter, bits: np.ndarray, name: str) -> CacheSchedule:
    bits = effective_bits(bits)  # step 0 always computes; say so in the bits too
    return CacheSchedule(bits, a.component_names, a.family, meta={"preset": name})


def _ones(a: Adapter, steps: int) -> np.ndarray:
    _check_steps(steps)
    return np.ones((steps, a.num_blocks, len(a.component_names)), dtype=bool)


def _every(n: int, steps: int) -> np.ndarray:
    return (np.arange(steps) % n) == 0


def none(pipe_or_transformer: Any, steps: int = 20) -> CacheSchedule:
    """Recompute everything (the baseline; output bit-identical to no hooks)."""
    a = get_adapter(pipe_or_transformer)
    return _make(a, _ones(a, steps), "none")


def fora(pipe_or_transformer: Any, n: int, steps: int = 20) -> CacheSchedule:
    """FORA: recompute every component every ``n`` steps, reuse in between."""
    _positive("n", n)
    a = get_adapter(pipe_or_transformer)
    bits = _ones(a, steps)
    bits[:] = _every(n, steps)[:, None, None]
    return _make(a, bits, f"fora({n})")


def fora_attention(pipe_or_transformer: Any, n: int, steps: int = 20) -> CacheSchedule:
    """FORA on attention only: attention every ``n`` steps, feed-forwards every step."""
    _positive("n", n)
    a = get_adapter(pipe_or_transformer)
    bits = _ones(a, steps)
    for comp in a.attention_components:
        bits[:, :, a.slot_index(comp)] = _every(n, steps)[:, None]
    return _make(a, bits, f"fora_attention({n})")


def tgate(pipe_or_transformer: Any, k: int, steps: int = 20) -> CacheSchedule:
    """TGATE: cross-attention computed for steps < ``k``, then frozen (reused) to the end."""
    _positive("k", k)
    a = get_adapter(pipe_or_transformer)
    if a.cross_attention_component is None:
        raise ScheduleError(
            f"tgate needs a separate cross-attention; {a.family} has joint attention only, use fora or even"
        )
    bits = _ones(a, steps)
    bits[k:, :, a.slot_index(a.cross_attention_component)] = False
    return _make(a, bits, f"tgate({k})")


def delta_dit(pipe_or_transformer: Any, n: int = 2, k_blocks: int | None = None, boundary: int | None = None,
              steps: int = 20) -> CacheSchedule:
    """Delta-DiT style: early steps (outline) cache the rear blocks, late steps (detail) the front.

    Blocks in the cached region recompute only every ``n`` steps. ``k_blocks`` (default half the
    blocks) sets the region size and ``boundary`` (default steps // 2) the step where it moves.
    """
    _positive("n", n)
    a = get_adapter(pipe_or_transformer)
    k = a.num_blocks // 2 if k_blocks is None else k_blocks
    b = steps // 2 if boundary is None else boundary
    if not 0 <= k <= a.num_blocks:
        raise ScheduleError(f"k_blocks must be in 0..{a.num_blocks}, got {k}")
    bits = _ones(a, steps)
    every = _every(n, steps)
    for s in range(steps):
        region = slice(a.num_blocks - k, a.num_blocks) if s < b else slice(0, k)
        bits[s, region, :] = every[s]
    return _make(a, bits, f"delta_dit({n},{k},{b})")


def _spread(count: int, total: int, start: int = 0) -> np.ndarray:
    """``count`` evenly spaced indices in [start, total)."""
    count = max(0, min(count, total - start))
    if count == 0:
        return np.zeros(0, dtype=int)
    return np.unique(np.floor(np.linspace(start, total - 1, count) + 0.5).astype(int))


def even(pipe_or_transformer: Any, component: str, k_blocks: int, s_steps: int, steps: int = 20) -> CacheSchedule:
    """Reuse ``component`` in ``k_blocks`` evenly spaced blocks at ``s_steps`` evenly spaced steps (> 0)."""
    a = get_adapter(pipe_or_transformer)
    c = a.slot_index(component)
    bits = _ones(a, steps)
    blocks, sts = _spread(k_blocks, a.num_blocks), _spread(s_steps, steps, start=1)
    bits[np.ix_(sts, blocks, [c])] = False
    return _make(a, bits, f"even({a.component_names[c]},{k_blocks},{s_steps})")


def skip_steps(pipe_or_transformer: Any, skipped: Any, steps: int = 20, first_block: bool = False) -> CacheSchedule:
    """Reuse every component at the ``skipped`` steps (a whole-step skip, as a dynamic cache decides).

    ``first_block=True`` keeps block 0 computed there, the way FirstBlockCache does.
    """
    a = get_adapter(pipe_or_transformer)
    bits = _ones(a, steps)
    idx = sorted({int(s) for s in skipped})
    if any(not 0 < s < steps for s in idx):
        raise ScheduleError(f"skipped steps must be in 1..{steps - 1}, got {idx}")
    bits[idx] = False
    if first_block:
        bits[idx, 0] = True
    tag = ",".join(map(str, idx))
    return _make(a, bits, f"skip_steps({tag}{';b0' if first_block else ''})")


def early_skip(pipe_or_transformer: Any, k: int, n: int = 0, steps: int = 20, first_block: bool | str = False,
               ) -> CacheSchedule:
    """The decisions FirstBlockCache / MagCache typically make, as a static schedule.

    Skip steps 1..``k`` (the early steps, where the output changes least), then with ``n`` >= 2
    skip ``n-1`` of every ``n`` later steps; the last step always computes (``n`` = 0: none later).
    Measured on the bundled model (bench/results/search.md), FirstBlockCache at thresholds
    0.1-0.3 skips exactly this pattern, and the static copy comes within ~1-3 dB of its PSNR.
    ``first_block="last"`` keeps block 0 at the last early skipped step (``min(k, steps - 2)``) only: at
    FirstBlockCache 0.05's MACs it measured 90.03 dB on held-out prompts against 89.43 for FirstBlockCache
    (bench/results/low_end_fbc.md).
    """
    _check_steps(steps)
    if not isinstance(first_block, str):
        first_block = bool(first_block)  # 1, np.True_: as before, any true value keeps block 0
    if not isinstance(k, (int, np.integer)) or k < 0 or (n and n < 2) or first_block not in (False, True, "last") \
            or (first_block == "last" and k < 1):
        raise ScheduleError(f"early_skip needs k >= 0, n = 0 or >= 2 and first_block False, True or 'last' (with "
                            f"k >= 1); got k={k!r}, n={n!r}, first_block={first_block!r}")
    last = min(k, steps - 2)
    skipped = set(range(1, last + 1))
    if n:
        skipped |= {s for s in range(k + 1, steps - 1) if (s - k - 1) % n != 0}
    s = skip_steps(pipe_or_transformer, sorted(skipped), steps, first_block is True)
    tag = {False: "", True: ",b0", "last": ",b0last"}[first_block]
    name = f"early_skip({k},{n}{tag})"
    if first_block == "last":
        bits = s.bits.copy()
        bits[last, 0] = True
        return _make(get_adapter(pipe_or_transformer), bits, name)
    s.meta["preset"] = name
    return s


def dynamic_like_presets(pipe_or_transformer: Any, steps: int = 20, last_block0: bool = False,
                         ) -> list[tuple[str, CacheSchedule]]:
    """A ladder of ``early_skip`` schedules from light to heavy: the dynamic peers' typical decisions.

    ``last_block0`` (the structured search from start version 3) puts ``early_skip(k, 0, b0last)`` just
    before each ``early_skip(k, 0)`` with k >= 2 (for k = 1 it is ``early_skip(1, 0, b0)``, FirstBlockCache's
    own skip): the variant that beat FirstBlockCache 0.05 on held-out prompts.
    """
    ks = sorted({max(1, steps * f // 20) for f in (1, 2, 3, 4, 6, 8)})
    first: list[tuple[int, int, bool | str]] = []
    for k in ks:
        first += [(k, 0, "last")] if last_block0 and k >= 2 else []
        first += [(k, 0, False), (k, 2, False)]
    variants = first + [(k, 2, True) for k in ks]
    out, seen = [], set()
    for k, n, b0 in variants:  # skipping 2 of every 3 later steps measured 5-10 dB worse: not in the ladder
        s = early_skip(pipe_or_transformer, k, n, steps=steps, first_block=b0)
        if s.bits.tobytes() not in seen:
            seen.add(s.bits.tobytes())
            out.append((s.meta["preset"], s))
    return out


def all_presets(pipe_or_transformer: Any, steps: int = 20) -> list[tuple[str, CacheSchedule]]:
    """Every preset variant ECAD seeds its search with, without duplicate bit patterns."""
    a = get_adapter(pipe_or_transformer)
    out: list[tuple[str, CacheSchedule]] = [("none", none(a.transformer, steps=steps))]
    for n in range(2, 21):
        out.append((f"fora({n})", fora(a.transformer, n, steps=steps)))
    for n in range(2, 11):
        out.append((f"fora_attention({n})", fora_attention(a.transformer, n, steps=steps)))
    if a.cross_attention_component is not None:
        for k in sorted({max(1, steps * f // 8) for f in (2, 3, 4, 5, 6)}):
            out.append((f"tgate({k})", tgate(a.transformer, k, steps=steps)))
    for n in (2, 3):
        out.append((f"delta_dit({n})", delta_dit(a.transformer, n, steps=steps)))
    for comp in a.component_names:
        for kb in sorted({max(1, a.num_blocks // 4), max(1, a.num_blocks // 2), a.num_blocks}):
            for ss in sorted({max(1, steps // 4), max(1, steps // 2)}):
                s = even(a.transformer, comp, kb, ss, steps=steps)
                out.append((s.meta["preset"], s))
    seen: set[bytes] = set()
    unique = []
    for name, s in out:
        key = np.packbits(s.bits).tobytes()
        if key not in seen:
            seen.add(key)
            unique.append((name, s))
    return unique


__all__ = ["all_presets", "delta_dit", "dynamic_like_presets", "early_skip", "even", "fora", "fora_attention", "none",
           "skip_steps", "tgate"]
