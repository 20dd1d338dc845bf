"""Where a learned metric's weights come from: a local path, a hub id, or the package's default.

Why up front: a search that finds out after an hour of generation that its scorer cannot be
downloaded is worse than one that refuses at once. ``resolve`` fetches (or finds in the local
cache) what the metric will load, in its constructor, and turns any failure into one line that
names the local path argument and environment variable to use instead.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ditaccel.errors import MissingWeightsError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Hub:
    """A Hugging Face hub repo (``filename`` None = the repo's files matching ``patterns``)."""

    repo: str
    filename: str | None = None
    patterns: tuple[str, ...] = ("*.json", "*.txt", "*.safetensors", "*.model")


@dataclass(frozen=True)
class Url:
    """A plain URL, cached under torch's hub folder (``torch.hub.get_dir()/checkpoints``)."""

    url: str


def env_path(arg: str | os.PathLike | None, env: str) -> str | None:
    """``arg`` if given, else the environment variable ``env`` (None when neither is set)."""
    if arg is not None:
        return os.fspath(arg)
    value = os.environ.get(env)
    return value or None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def fetch(source: Hub | Url, what: str, how: str) -> Path:
    """Local path of ``source``, downloading it if needed; ``MissingWeightsError`` (one line) if impossible."""
    try:
        if isinstance(source, Url):
            import torch

            target = Path(torch.hub.get_dir()) / "checkpoints" / source.url.rsplit("/", 1)[-1]
            if not target.is_file():
                from huggingface_hub import constants

                if constants.HF_HUB_OFFLINE:
                    raise OSError("offline mode is on (HF_HUB_OFFLINE)")
                target.parent.mkdir(parents=True, exist_ok=True)
                torch.hub.download_url_to_file(source.url, str(target), progress=False)
            return target
        import huggingface_hub as hh

        if source.filename is not None:
            return Path(hh.hf_hub_download(source.repo, source.filename))
        return Path(hh.snapshot_download(source.repo, allow_patterns=list(source.patterns)))
    except Exception as e:  # network, offline mode, missing repo/file, disk: all mean "cannot get it"
        name = source.url if isinstance(source, Url) else (
            f"{source.repo}/{source.filename}" if source.filename else source.repo)
        raise MissingWeightsError(f"{what}: cannot download {name} ({_first_line(e)}); {how}") from None


def resolve(arg: str | os.PathLike | None, env: str, what: str, default: Hub | Url, kind: str = "file",
            hub: bool = True, before_fetch: Callable[[], None] | None = None) -> Path:
    """``arg`` (else ``$env``) as a local file/folder or, when ``hub``, a hub id; nothing given = ``default``.

    A hub id (``owner/name``) given for a folder metric is fetched like the default; for a file
    metric it names a repo holding a file of the default's name. ``before_fetch`` runs before any
    download (a package check, so nothing is downloaded for a metric that cannot run).
    """
    how = f"pass a local {kind} path or set ${env}"
    value = env_path(arg, env)
    if value is None:
        if before_fetch is not None:
            before_fetch()
        return fetch(default, what, how)
    p = Path(value).expanduser()
    if p.exists():
        if (p.is_dir() if kind == "folder" else p.is_file()):
            return p
        raise MissingWeightsError(f"{what} {p} is not a {kind}; {how}")
    if hub and _HUB_ID.match(value) and not value.startswith((".", "/", "~")):
        src = Hub(value) if kind == "folder" or not isinstance(default, Hub) or default.filename is None \
            else Hub(value, default.filename)
        if before_fetch is not None:
            before_fetch()
        return fetch(src, what, how)
    raise MissingWeightsError(f"{what} {kind} {p} does not exist; provide it (or set ${env})")
