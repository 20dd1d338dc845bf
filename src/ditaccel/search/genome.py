"""Genomes: a schedule's bits flattened step-major, packed to hex for files and cache keys."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ditaccel.caching import presets
from ditaccel.caching.schedule import effective_bits
from ditaccel.errors import DitaccelError
from ditaccel.models import get_adapter
from ditaccel.search.frontier import load_frontier


def pack(bits: np.ndarray) -> str:
    """Hex of the flattened bits (the cache key and the compact form in ``candidates.jsonl``)."""
    return np.packbits(np.asarray(bits, dtype=bool).reshape(-1)).tobytes().hex()


def unpack(text: str, shape: tuple[int, int, int]) -> np.ndarray:
    n = int(np.prod(shape))
    raw = np.frombuffer(bytes.fromhex(text), dtype=np.uint8)
    return np.unpackbits(raw)[:n].astype(bool).reshape(shape)


def canonical(bits: np.ndarray) -> np.ndarray:
    """Step 0 always recomputes at run time, so its bits are fixed to True in every genome."""
    return effective_bits(bits)


def preset_population(pipe: Any, steps: int) -> list[tuple[str, np.ndarray]]:
    """The heuristic presets (FORA, attention-only FORA, TGATE, Delta-DiT, even) with all-recompute first."""
    return [(name, canonical(s.bits)) for name, s in presets.all_presets(pipe, steps)]


def structured_population(pipe: Any, steps: int, start: int = 3) -> list[tuple[str, np.ndarray]]:
    """The structured search's named start: all-recompute, then the dynamic peers' typical decisions
    (``presets.dynamic_like_presets``, light to heavy; from ``start`` version 3 with the block-0-last
    variants) alternating with the paper's presets.

    Why: on the bundled model the paper's population is mostly FORA(n), which skips every n-th
    step uniformly; FirstBlockCache's choice (early steps first, never the last) is 5-10 dB better
    at the same MACs, and bit-flip search does not find it in its budget (bench/results/search.md).
    """
    paper = preset_population(pipe, steps)
    ladder = presets.dynamic_like_presets(pipe, steps, last_block0=start >= 3)
    dyn = [(name, canonical(s.bits)) for name, s in ladder]
    mixed = [p for pair in zip(dyn, paper[1:], strict=False) for p in pair]  # both kinds in a small population
    n = min(len(dyn), len(paper) - 1)
    return [paper[0], *mixed, *dyn[n:], *paper[1 + n:]]


def frontier_population(pipe: Any, folder: str | Path, steps: int) -> list[tuple[str, np.ndarray]]:
    """The schedules of a previous search's frontier, resampled to ``steps``; other families are refused."""
    try:
        frontier = load_frontier(folder)
    except DitaccelError as e:
        raise DitaccelError(f"--init: {e} (or pass 'presets')") from None
    a = get_adapter(pipe)
    if frontier.family != a.family:
        raise DitaccelError(f"--init frontier {folder} was searched on family {frontier.family!r} but the model is "
                            f"{a.family!r}; use presets or a {a.family} frontier")
    out = []
    for p in frontier.points:
        s = p.schedule
        s.validate_for(pipe)  # block count and components must match; steps may differ
        if s.steps != steps:
            s = s.resample(steps)
        out.append((f"init:{p.name}", canonical(s.bits)))
    if not out:
        raise DitaccelError(f"--init frontier {folder} holds no points; pass 'presets' or another folder")
    return out


#: Upper edges of the speed bands ``stratify`` keeps a genome of (predicted speedup; the last band is open).
SPEED_BANDS = (1.25, 1.6, 2.0, 2.5, 3.2, 4.0, 5.0, 6.4, 8.0)


def stratify(named: list[tuple[str, np.ndarray]], size: int, speed_of: Callable[[np.ndarray], float],
             keep: int = 1) -> list[tuple[str, np.ndarray]]:
    """``named`` reordered so that a population of ``size`` cut from its front spans every speed band it has.

    Why: the signal seeds fill a small population up to ~4.5x, and the presets beyond it (FORA(10) at
    5.7x, FORA(20)) fell off its end, so no frontier point reached the fastest peers. The first ``keep``
    genomes (all-recompute, an ``--init`` frontier) stay first; then the first genome of each band, in the
    list's own order (its priority); then the rest. A list that fits in ``size`` is returned as it is.
    """
    distinct = {pack(b) for _, b in named}
    if len(distinct) <= size:
        return named
    head, rest = named[:keep], named[keep:]
    picked: dict[int, int] = {}  # band -> index into rest
    for i, (_, bits) in enumerate(rest):
        band = int(np.searchsorted(SPEED_BANDS, speed_of(bits), side="right"))
        picked.setdefault(band, i)
    first = sorted(picked.values())
    chosen = set(first)
    return [*head, *(rest[i] for i in first), *(x for i, x in enumerate(rest) if i not in chosen)]


def initial_population(named: list[tuple[str, np.ndarray]], size: int, rng: np.random.Generator,
                       ) -> tuple[np.ndarray, list[str]]:
    """``size`` distinct genomes: the named ones first (all-recompute included), then mutants of them.

    Mutants flip a few random bits of a random named genome; the caller's seeded ``rng`` makes
    them reproducible.
    """
    seen: set[str] = set()
    genomes, names = [], []
    for name, bits in named:
        key = pack(bits)
        if key not in seen and len(genomes) < size:
            seen.add(key)
            genomes.append(bits)
            names.append(name)
    base = list(genomes)
    tries = 0
    while len(genomes) < size and tries < 100 * size:
        tries += 1
        g = base[int(rng.integers(len(base)))].copy()
        flat = g.reshape(-1)
        per_step = g.shape[1] * g.shape[2]
        for idx in rng.integers(per_step, flat.size, size=int(rng.integers(1, 4))):
            flat[idx] = not flat[idx]
        key = pack(g)
        if key not in seen:
            seen.add(key)
            genomes.append(g)
            names.append("mutant")
    return np.stack([g.reshape(-1) for g in genomes]), names
