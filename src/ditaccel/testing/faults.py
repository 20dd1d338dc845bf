"""Fault injection for the files ditaccel reads: damage one file, run the CLI in-process, judge what happened.

Why a module rather than test code: ``tests/test_fuzz_formats.py`` lets hypothesis pick the faults,
and ``bench/reliability.py`` draws many seeded ones and counts the outcomes for the README; both
must judge a case the same way.

A case passes when the command either ends in one ``ditaccel: error:`` line with no file changed
anywhere, or succeeds on a file whose content the fault left intact (or, for an unsigned hand
edit, that the reader accepts) without touching any file outside its output folder.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

PROMPTS = ("a large red circle in the top left", "a small blue square in the center")


@dataclass(frozen=True)
class Target:
    """A file ditaccel reads back and the command that reads it ({W}: workspace, {O}: a fresh output folder)."""

    name: str
    file: str  # relative to the workspace; may be a glob (the first match)
    argv: tuple[str, ...]
    writes: str = "{O}"  # the folder the command may change when it succeeds
    signed: bool = True  # written by ditaccel with a checksum; False: a user's text file, any edit may be valid

    def path(self, workspace: Path) -> Path:
        """The file this target damages inside ``workspace``."""
        return next(iter(sorted(workspace.glob(self.file))), workspace / self.file)


_SEARCH = ("search", "--prompts", "{W}/prompts.txt", "--steps", "2", "--population", "4", "--generations", "1",
           "--out", "{W}/search", "--resume")
_GEN_Q = ("generate", "--quantized", "{W}/quant", "--prompt", PROMPTS[0], "--steps", "2", "--out", "{O}")
_FRONTIER = ("frontier", "{W}/search", "--select", "99x", "--out", "{O}/selected.json")
TARGETS = (
    Target("schedule", "schedule.json", ("generate", "--schedule", "{W}/schedule.json", "--prompt", PROMPTS[0],
                                         "--steps", "2", "--out", "{O}")),
    Target("frontier.json", "search/frontier.json", ("frontier", "{W}/search")),
    Target("frontier.json (select)", "search/frontier.json", _FRONTIER),
    Target("frontier schedule", "search/schedules/p00_*.json", _FRONTIER),
    Target("search checkpoint", "search/checkpoint", _SEARCH, writes="{W}/search"),
    Target("candidates.jsonl", "search/candidates.jsonl", _SEARCH, writes="{W}/search"),
    Target("quant_config.json", "quant/quant_config.json", _GEN_Q),
    Target("quantized.safetensors", "quant/quantized.safetensors", _GEN_Q),
    Target("images.jsonl", "gen/images.jsonl", ("generate", "--prompt", PROMPTS[0], "--prompt", PROMPTS[1],
                                                "--steps", "2", "--out", "{W}/gen", "--resume"), writes="{W}/gen"),
    Target("prompts .txt", "prompts.txt", ("generate", "--prompts", "{W}/prompts.txt", "--steps", "2",
                                           "--out", "{O}"), signed=False),
    Target("prompts .json", "prompts.json", ("generate", "--prompts", "{W}/prompts.json", "--steps", "2",
                                             "--out", "{O}"), signed=False),
)
BYTE_FAULTS = ("truncate", "flip", "empty", "binary", "directory", "missing")
JSON_FAULTS = ("wrong_type", "wrong_type_unsigned")


@dataclass(frozen=True)
class Fault:
    """``kind`` with its parameters: a byte ``offset``/``bit``, or a JSON ``field`` path and its new ``value``."""

    kind: str
    offset: int = 0
    bit: int = 0
    field: tuple[Any, ...] = ()
    value: Any = None
    line: int | None = None  # JSON-lines: which record


@dataclass
class Outcome:
    target: str
    fault: Fault
    signed: bool
    rc: int | None
    stderr: str
    crash: str | None
    changed: list[str]
    outside: list[str]
    intact: bool

    def verdict(self) -> str:
        """'clean error', 'intact', 'hand edit accepted', or 'BAD: why'."""
        if self.crash:
            return f"BAD: {self.crash}"
        lines = [x for x in self.stderr.splitlines() if x.strip()]
        if self.rc == 0:
            if self.outside:
                return f"BAD: succeeded but changed {self.outside[0]} outside its output folder"
            if self.intact:
                return "intact"
            if self.fault.kind == "wrong_type_unsigned" or not self.signed:
                return "hand edit accepted"
            return "BAD: exit 0 on damaged content"
        if "Traceback" in self.stderr or len(lines) != 1 or not lines[0].startswith("ditaccel: error: "):
            return f"BAD: exit {self.rc} with stderr {self.stderr.strip()[-300:]!r}"
        if self.changed:
            return f"BAD: error but {self.changed[0]} changed"
        return "clean error"


# ----------------------------------------------------------------------------- the workspace


def build_workspace(root: Path, pipe: Any) -> Path:
    """One pristine file of every format ``TARGETS`` name, made by ditaccel itself on the bundled model."""
    from ditaccel.caching import presets
    from ditaccel.cli import main

    root.mkdir(parents=True, exist_ok=True)
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    (root / "prompts.json").write_text(json.dumps([{"prompt": p} for p in PROMPTS]))
    presets.fora(pipe, 2, steps=2).save(root / "schedule.json")
    with using_pipe(pipe):
        for argv in (("search", "--prompts", str(root / "prompts.txt"), "--steps", "2", "--population", "4",
                      "--generations", "1", "--out", str(root / "search")),
                     ("generate", "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--steps", "2",
                      "--out", str(root / "gen"))):
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                if main(list(argv)) != 0:
                    raise RuntimeError(f"building the fuzz workspace failed: ditaccel {' '.join(argv)}")
    _quantized(pipe, root / "quant")
    return root


def _quantized(pipe: Any, folder: Path) -> None:
    from ditaccel.quant import FP4DiTConfig, quantize_, save_quantized

    t = copy.deepcopy(pipe.transformer)
    config = FP4DiTConfig(adaround=False, acts="none", progress=False)
    quantize_(t, config)
    save_quantized(t, folder, config)


@contextlib.contextmanager
def using_pipe(pipe: Any) -> Iterator[None]:
    """Make the CLI's model loads return a copy of ``pipe`` (0.1 s instead of seconds)."""
    import ditaccel.pipeline

    with mock.patch.object(ditaccel.pipeline, "load_pipeline", lambda *a, **k: copy.deepcopy(pipe)):
        yield


# ----------------------------------------------------------------------------- faults


def json_fields(obj: Any, prefix: tuple[Any, ...] = (), depth: int = 4) -> list[tuple[Any, ...]]:
    """Key paths into ``obj`` (lists: their first and last item), the checksum itself left out."""
    paths: list[tuple[Any, ...]] = []
    if depth == 0:
        return paths
    items: list[tuple[Any, Any]] = []
    if isinstance(obj, dict):
        items = [(k, v) for k, v in obj.items() if k != "checksum"]
    elif isinstance(obj, list) and obj:
        items = sorted({0: obj[0], len(obj) - 1: obj[-1]}.items())
    for k, v in items:
        paths.append((*prefix, k))
        paths.extend(json_fields(v, (*prefix, k), depth - 1))
    return paths


_VALUES: tuple[Any, ...] = ("x", "", 7, -1, 2.5, 1e308, True, [], [1, "a"], {}, {"a": 1})


def wrong_values(v: Any) -> list[Any]:
    """JSON values of another type than ``v`` (bool and int count as different; null is not offered)."""
    def kind(x: Any) -> str:
        return "bool" if isinstance(x, bool) else "num" if isinstance(x, int | float) else type(x).__name__

    return [x for x in _VALUES if kind(x) != kind(v)]


def _set(obj: Any, path: tuple[Any, ...], value: Any) -> None:
    for k in path[:-1]:
        obj = obj[k]
    obj[path[-1]] = value


def _records(text: str) -> list[Any] | None:
    """A JSON file as [object], or a JSON-lines file as its records; None when neither parses."""
    try:
        return [json.loads(text)]
    except ValueError:
        pass
    try:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError:
        return None


def apply_fault(path: Path, fault: Fault) -> None:
    """Damage ``path`` in place as ``fault`` says."""
    data = path.read_bytes()
    if fault.kind == "truncate":
        path.write_bytes(data[: fault.offset % max(1, len(data))])
    elif fault.kind == "flip":
        buf = bytearray(data)
        buf[fault.offset % len(buf)] ^= 1 << (fault.bit % 8)
        path.write_bytes(bytes(buf))
    elif fault.kind == "empty":
        path.write_bytes(b"")
    elif fault.kind == "binary":
        path.write_bytes(random.Random(fault.offset).randbytes(max(16, len(data))))
    elif fault.kind == "directory":
        path.unlink()
        path.mkdir()
    elif fault.kind == "missing":
        path.unlink()
    elif fault.kind in JSON_FAULTS:
        recs = _records(data.decode())
        assert recs is not None, f"{path} is not JSON"
        i = fault.line if fault.line is not None and len(recs) > 1 else 0
        _set(recs[i], fault.field, fault.value)
        if fault.kind == "wrong_type_unsigned":
            recs[i].pop("checksum", None)  # a hand edit that dropped the checksum: the reader's own checks
        text = json.dumps(recs[0], indent=2) if len(recs) == 1 and path.suffix != ".jsonl" else \
            "".join(json.dumps(r) + "\n" for r in recs)
        path.write_text(text)
    else:
        raise ValueError(f"unknown fault {fault.kind}")


def json_faults(path: Path) -> list[Fault]:
    """Every (field, wrong value) pair of a JSON or JSON-lines file, signed and unsigned."""
    recs = _records(path.read_text())
    if not recs:
        return []
    out = []
    for line in sorted({0, len(recs) - 1}):
        for field in json_fields(recs[line]):
            v: Any = recs[line]
            for k in field:
                v = v[k]
            out += [Fault(kind, field=field, value=w, line=line) for w in wrong_values(v) for kind in JSON_FAULTS]
    return out


# ----------------------------------------------------------------------------- running a case


def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_case(pristine: Path, target: Target, fault: Fault, tmp: Path, pipe: Any) -> Outcome:
    """Copy the workspace, damage ``target.file``, run its command in-process and record what happened."""
    from ditaccel.cli import main

    ws = tmp / "ws"
    shutil.copytree(pristine, ws)
    path = target.path(ws)
    before_text = path.read_bytes()
    apply_fault(path, fault)
    after = path.read_bytes() if path.is_file() else None
    intact = after is not None and _same_content(before_text, after)
    subst = {"{W}": str(ws), "{O}": str(tmp / "out")}
    argv = [_fill(a, subst) for a in target.argv]
    writes = Path(_fill(target.writes, subst))
    before = _snapshot(ws)
    err, crash, rc = io.StringIO(), None, None
    with using_pipe(pipe), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException as e:  # noqa: BLE001 - the point is to see every escape
            crash = f"{type(e).__name__}: {e}"[:300]
    now = _snapshot(ws)
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    outside = [k for k in changed if not (ws / k).resolve().is_relative_to(writes.resolve())]
    return Outcome(target.name, fault, target.signed, rc, err.getvalue(), crash, changed, outside, intact)


def _fill(text: str, subst: dict[str, str]) -> str:
    for k, v in subst.items():
        text = text.replace(k, v)
    return text


def _same_content(a: bytes, b: bytes) -> bool:
    """Whether a fault left the content as the reader sees it: equal bytes, or equal parsed JSON."""
    if a == b:
        return True
    try:
        ra, rb = _records(a.decode()), _records(b.decode())
    except UnicodeDecodeError:
        return False
    if ra is None or rb is None or len(ra) != len(rb):
        return False
    return all(_unsign(x, y) == y for x, y in zip(ra, rb, strict=True))


def _unsign(orig: Any, damaged: Any) -> Any:
    """``orig`` as the reader sees ``damaged`` when the fault only renamed the checksum key.

    Why: a file whose checksum key was damaged reads as an unsigned hand-written file with one unknown
    key, which readers accept by design; its content is still the original.
    """
    if not (isinstance(orig, dict) and isinstance(damaged, dict)) or "checksum" not in orig or "checksum" in damaged:
        return orig
    extra = {k: v for k, v in damaged.items() if k not in orig}
    return {**{k: v for k, v in orig.items() if k != "checksum"}, **extra} if list(extra.values()) == [
        orig["checksum"]] else orig
