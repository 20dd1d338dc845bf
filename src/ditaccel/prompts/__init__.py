"""Prompt sets: the shapes world's splits, the shipped benchmark sets, and user files.

Shipped sets come with their licenses in ``data/NOTICE.md``.
"""

from __future__ import annotations

import csv
import json
from importlib import resources
from pathlib import Path

from ditaccel.errors import DitaccelError

SHAPES_SETS = ("calibration", "heldout", "all")
SHIPPED_SETS = {
    "parti": "PartiPrompts.tsv",
    "drawbench": "DrawBench200.txt",
    "imagereward": "ImageRewardPrompts.json",
    "coco": "coco_captions_30k.txt",
}


def prompt_set_names() -> list[str]:
    return [*SHAPES_SETS, *SHIPPED_SETS]


def _read_file(path: Path) -> list[str]:
    """Prompts from .txt (a line each), .tsv/.csv (a 'Prompt' column), or .json.

    JSON may be a list of strings, a list of objects with "prompt", or MJHQ-30K's
    ``meta_data.json`` (an object of id -> {"prompt": ...}).
    """
    from ditaccel._io import read_text_file

    fix = "use one prompt a line, a TSV with a 'Prompt' column, or JSON with 'prompt' fields"
    text = read_text_file(path, "prompts file", fix)
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(text)
            if not isinstance(data, dict | list):
                raise TypeError(f"the top level is a {type(data).__name__}")
            items = data.values() if isinstance(data, dict) else data
            prompts = [it if isinstance(it, str) else it["prompt"] for it in items]
        elif suffix in (".tsv", ".csv"):
            rows = csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ",")
            prompts = [row["Prompt"] if "Prompt" in row else row["prompt"] for row in rows]
        else:
            prompts = text.splitlines()
        bad = next((p for p in prompts if p is not None and not isinstance(p, str)), None)
        if bad is not None:
            raise TypeError(f"a prompt is a {type(bad).__name__}, not text")
    except (json.JSONDecodeError, KeyError, TypeError, csv.Error, RecursionError) as e:
        raise DitaccelError(f"cannot read prompts from {path}: {type(e).__name__} {e}; {fix}") from None
    return [p.strip() for p in prompts if p and p.strip()]


def load_prompts(spec: str, limit: int | None = None) -> list[str]:
    """A named set (see ``prompt_set_names()``) or a file path; never empty."""
    if spec in SHAPES_SETS:
        from ditaccel.zoo import shapes

        prompts = {
            "calibration": shapes.calibration_prompts,
            "heldout": shapes.heldout_prompts,
            "all": shapes.all_prompts,
        }[spec]()
    elif spec in SHIPPED_SETS:
        ref = resources.files("ditaccel.prompts") / "data" / SHIPPED_SETS[spec]
        with resources.as_file(ref) as p:
            prompts = _read_file(Path(p))
    else:
        path = Path(spec)
        if path.is_dir():
            raise DitaccelError(f"prompts file {path} is a folder; pass a file with one prompt a line")
        if not path.is_file():
            raise DitaccelError(
                f"unknown prompt set {spec!r}; use one of {', '.join(prompt_set_names())} or a path to a prompts file"
            )
        prompts = _read_file(path)
        if not prompts:
            raise DitaccelError(f"prompts file {path} holds no prompts; put one prompt on each line")
    return prompts[:limit] if limit else prompts


MAX_SEEDS = 1_000_000  # a typo like 0-99999999999 would otherwise allocate until the machine swaps


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' or '0-7' or a mix ('0-3,10') -> list of ints."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
                if len(seeds) + hi - lo + 1 > MAX_SEEDS:
                    raise DitaccelError(f"seeds {text!r} name more than {MAX_SEEDS:,} seeds; pass a shorter range")
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise DitaccelError(f"cannot parse seeds {text!r}; use e.g. 0,1,2 or 0-7") from None
    if not seeds:
        raise DitaccelError(f"cannot parse seeds {text!r}; use e.g. 0,1,2 or 0-7")
    if min(seeds) < 0 or max(seeds) >= 2**63:
        raise DitaccelError(f"seeds {text!r} must lie in 0 .. 2**63-1 (torch's generator range)")
    return seeds
