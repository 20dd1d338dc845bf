"""Atomic writes: a crash never leaves a user's file half-written."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ditaccel.errors import DitaccelError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def user_cache_dir(env: str, name: str) -> Path:
    """``$env`` if set, else ``$XDG_CACHE_HOME/ditaccel/name`` (``~/.cache`` by default): where ditaccel
    keeps what it can rebuild (latency profiles, compiled native kernels)."""
    value = os.environ.get(env)
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ditaccel" / name


def atomic_write(path: str | os.PathLike, writer: Callable[[str], None]) -> None:
    """Call ``writer(tmp_path)`` on a temp file in the same folder, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        # mkstemp makes 0600 (and some writers, like safetensors, recreate the file): set the usual mode
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    def _w(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, _w)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


# ----------------------------------------------------------------------------- checksums
#
# Why one field inside the JSON rather than a sidecar file: a copied or renamed artifact keeps its
# checksum. It covers the canonical form of everything else in the object (sorted keys, no spaces),
# so re-indenting a file keeps it valid while any change of content does not. Files a user writes
# by hand may omit it; a checksum that is present must match.

CHECKSUM_KEY = "checksum"


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def json_checksum(obj: dict[str, Any]) -> str:
    """``sha256:<hex>`` of ``obj`` without its own checksum field."""
    body = {k: v for k, v in obj.items() if k != CHECKSUM_KEY}
    return "sha256:" + hashlib.sha256(_canonical(body)).hexdigest()


def with_checksum(obj: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``obj`` carrying its checksum (the form ditaccel writes)."""
    body = {k: v for k, v in obj.items() if k != CHECKSUM_KEY}
    return {**body, CHECKSUM_KEY: json_checksum(body)}


def verify_checksum(obj: Any, source: str, fix: str, error: type[Exception] = DitaccelError) -> Any:
    """Return ``obj`` without its checksum field; raise ``error`` if a checksum is there and wrong."""
    if not isinstance(obj, dict) or CHECKSUM_KEY not in obj:
        return obj
    stored = obj[CHECKSUM_KEY]
    if stored != json_checksum(obj):
        raise error(f"{source} fails its checksum (changed or damaged since ditaccel wrote it); {fix}")
    return {k: v for k, v in obj.items() if k != CHECKSUM_KEY}


def file_sha256(path: str | os.PathLike) -> str:
    """``sha256:<hex>`` of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def atomic_write_checked_json(path: str | os.PathLike, obj: dict[str, Any], indent: int | None = 2) -> None:
    """``atomic_write_json`` of ``obj`` with its checksum added."""
    atomic_write_json(path, with_checksum(obj), indent=indent)


def checked_jsonl_line(row: dict[str, Any]) -> str:
    """One JSON-lines record carrying its own checksum, newline included."""
    return json.dumps(with_checksum(row)) + "\n"


# ----------------------------------------------------------------------------- reading user files


def read_text_file(path: str | os.PathLike, what: str, fix: str, error: type[Exception] = DitaccelError) -> str:
    """A file's UTF-8 text, or one-line ``error`` naming what is wrong with ``path`` and ``fix``."""
    p = Path(path)
    if p.is_dir():
        raise error(f"{what} {p} is a folder, not a file; {fix}")
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise error(f"{what} {p} does not exist; {fix}") from None
    except OSError as e:
        raise error(f"cannot read {what} {p} ({e.strerror or type(e).__name__}); {fix}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{what} {p} is not UTF-8 text (binary?); {fix}") from None


def parse_json(text: str, source: str, fix: str, error: type[Exception] = DitaccelError) -> Any:
    """``json.loads`` with a one-line error; the checksum, when present, is verified and removed."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{source} is not JSON ({e.msg} at line {e.lineno} column {e.colno}); {fix}") from None
    except RecursionError:
        raise error(f"{source} is nested too deeply to be a ditaccel file; {fix}") from None
    return verify_checksum(obj, source, fix, error)


def read_json(path: str | os.PathLike, what: str, fix: str, error: type[Exception] = DitaccelError) -> Any:
    """A JSON file checked for every way it can be unreadable; a present checksum must match."""
    return parse_json(read_text_file(path, what, fix, error), f"{what} {os.fspath(path)}", fix, error)


def read_checked_jsonl(path: str | os.PathLike, what: str, fix: str, limit: int | None = None,
                       error: type[Exception] = DitaccelError) -> list[dict[str, Any]]:
    """The records of a JSON-lines file, each checksum verified; with ``limit``, only the first ``limit``.

    Why ``limit``: ditaccel appends to ``candidates.jsonl`` before its checkpoint vouches for the
    rows, so rows past the checkpoint's count (a kill mid-append leaves half a line) are not read.
    """
    rows: list[dict[str, Any]] = []
    for i, line in enumerate(read_text_file(path, what, fix, error).splitlines(), 1):
        if limit is not None and len(rows) >= limit:
            break
        if not line.strip():
            continue
        row = parse_json(line, f"{what} {os.fspath(path)} line {i}", fix, error)
        if not isinstance(row, dict):
            raise error(f"{what} {os.fspath(path)} line {i} is not a JSON object; {fix}")
        rows.append(row)
    return rows


def check_out_dir(out: str | os.PathLike, flag: str = "--out") -> Path:
    """Refuse an output folder that is a file or sits under one, before any work is done."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DitaccelError(f"{flag} {out} is a file; pass a folder path")
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise DitaccelError(f"{flag} {out} is under {parent}, which is a file; pass a folder path")
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise DitaccelError(f"{flag} {out}: {parent} is not writable; pass a folder you can write to")
    return out


def check_out_file(out: str | os.PathLike, flag: str = "--out") -> Path:
    """Refuse an output file path that is a folder or sits under a file."""
    out = Path(out)
    if out.is_dir():
        raise DitaccelError(f"{flag} {out} is a folder; pass a file path")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise DitaccelError(f"{flag} {out} is under {parent}, which is a file; pass another path")
    return out
