"""The ``--methods`` list: one registry entry per method, parsing, checking and installing rows.

Grammar: comma-separated rows; a row is one or more parts joined by ``+``; a part is
``name[:arg[:arg]]``. At most one caching part and one quantization part per row.
``NAME:sweep`` is every point of NAME's knob grid, ``peers:sweep`` every grid of every method
with one. ``methods_table()`` lists every method from ``REGISTRY`` (the CLI's help reads it).

Adding a method is one ``MethodEntry`` in ``REGISTRY``: its name, arguments (``Knob``: default
and check), sweep grid, label, kind, and how it is built (a schedule) or installed (a dynamic
cache: a function returning a handle with ``remove()``; the caches themselves live in
``ditaccel.caching``, this module only names them).

Quantization rows run AdaRound for ITERS iterations per block (default 100, the paper uses 2500)
on calibration data recorded from the calibration prompts: fast settings, stated in the results.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ditaccel.caching.dynamic import knob_defaults as _dyn
from ditaccel.errors import DitaccelError
from ditaccel.pipeline import pipeline_info

DEFAULT_QUANT_ITERS = 100
_SPEEDUP = re.compile(r"^\d+(\.\d+)?x$", re.IGNORECASE)
SWEEP = "sweep"
ALL_PEERS = "peers"


@dataclass(frozen=True)
class Knob:
    """One positional argument of a method: the key it is passed as, how a reader names it, its default."""

    key: str
    fmt: str                 # e.g. "threshold {}": the value as a reader sees it in rows and legends
    kind: type
    default: int | float
    zero_ok: bool = False    # values must be positive, or >= 0 where zero means something (e.g. "never skip")


@dataclass(frozen=True)
class Part:
    """One ``name[:args]`` piece of a row."""

    name: str
    args: tuple[str, ...] = ()

    @property
    def entry(self) -> MethodEntry:
        return REGISTRY[self.name]

    @property
    def is_quant(self) -> bool:
        return self.entry.kind == "quant"


#: (pipe, part, steps) -> (CacheSchedule, source file or None)
ScheduleFn = Callable[[Any, Part, int], tuple[Any, "str | None"]]
#: (pipe, knob values, call kwargs, calibration prompts) -> handle with remove(), notes, params_full
InstallFn = Callable[[Any, dict[str, Any], dict[str, Any], list[str]], Any]


@dataclass(frozen=True)
class MethodEntry:
    """Everything ditaccel knows about one ``--methods`` name; ``REGISTRY`` holds one per method.

    ``kind``: ``baseline``, ``schedule`` (a ``CacheSchedule``: ``schedule`` builds it),
    ``dynamic`` (a cache deciding at run time: ``install`` puts it on the pipeline and returns a
    handle whose ``remove()`` restores the model) or ``quant`` (``quant`` holds the
    ``FP4DiTConfig`` arguments). ``args`` splits the text after ``name:`` for methods whose
    arguments are not knobs (a file, a folder); ``expand`` resolves a row into several (a frontier).
    """

    name: str
    kind: str
    title: str
    syntax: str
    help: str
    knobs: tuple[Knob, ...] = ()
    sweep: tuple[str, ...] = ()          # argument strings, as written after ``NAME:``
    max_args: int | None = None          # default: one per knob
    args: Callable[[str, str], tuple[str, ...]] | None = None
    schedule: ScheduleFn | None = None
    install: InstallFn | None = None
    quant: dict[str, Any] | None = None
    expand: Callable[..., list[Method]] | None = None

    @property
    def arg_limit(self) -> int:
        return len(self.knobs) if self.max_args is None else self.max_args


# ----------------------------------------------------------------------------- the entries


def _preset(fn_name: str) -> ScheduleFn:
    def build(pipe: Any, part: Part, steps: int) -> tuple[Any, str | None]:
        from ditaccel.caching import presets

        return getattr(presets, fn_name)(pipe, *knob_values(part, part.name).values(), steps=steps), None

    return build


def _schedule_file(pipe: Any, part: Part, steps: int) -> tuple[Any, str | None]:
    from ditaccel.caching import CacheSchedule

    path = Path(part.args[0])
    return CacheSchedule.load(path, pipe), str(path)


def _file_arg(rest: str, text: str) -> tuple[str, ...]:
    if not rest:
        raise DitaccelError(f"method {text!r}: schedule needs a file, e.g. schedule:s.json")
    return (rest,)


def _ecad_args(rest: str, text: str) -> tuple[str, ...]:
    if not rest:
        raise DitaccelError(f"method {text!r}: ecad needs a search folder, e.g. ecad:runs/pixart or "
                            f"ecad:runs/pixart:2.5x")
    folder, _, last = rest.rpartition(":")
    return (folder, last) if folder and _SPEEDUP.match(last) else (rest,)


def _diffusers_cache(name: str) -> InstallFn:
    def install(pipe: Any, params: dict[str, Any], call_kwargs: dict[str, Any], calib: list[str]) -> Any:
        from ditaccel.caching.dynamic import apply_peer_cache

        return apply_peer_cache(pipe, name, call_kwargs=call_kwargs, calib_prompts=calib, **params)

    return install


def _cachedit(pipe: Any, params: dict[str, Any], call_kwargs: dict[str, Any], calib: list[str]) -> Any:
    from ditaccel.caching.dynamic import apply_cachedit

    return apply_cachedit(pipe, call_kwargs=call_kwargs, **params)


def _teacache(pipe: Any, params: dict[str, Any], call_kwargs: dict[str, Any], calib: list[str]) -> Any:
    from ditaccel.caching.dynamic_teacache import apply_teacache

    return apply_teacache(pipe, call_kwargs=call_kwargs, **params)


def _entries() -> list[MethodEntry]:
    """The registry's contents, in the order ``--help``, ``peers:sweep`` and the README list them.

    The sweep grids were chosen on the bundled model (20 steps) to run each curve from nearly
    lossless to as fast as the method goes, aiming at 1.1x-4x measured speed; several saturate
    earlier (MagCache keeps its first steps, PAB/FasterCache/TGATE touch attention only).
    bench/results/peers.md shows what each reached.
    """
    it = Knob("iters", "AdaRound {} it/block", int, DEFAULT_QUANT_ITERS, zero_ok=True)  # 0 = round-to-nearest
    cd = _dyn("cachedit")
    return [
        MethodEntry("baseline", "baseline", "Baseline (no acceleration)", "baseline",
                    "no acceleration (the reference for speedup, PSNR and SSIM)"),
        MethodEntry("fora", "schedule", "FORA", "fora[:N]", "FORA: recompute everything every N steps",
                    (Knob("n", "recompute every {} steps", int, 3),), ("2", "3", "4", "5", "6", "8", "10"),
                    schedule=_preset("fora")),
        MethodEntry("tgate", "schedule", "TGATE", "tgate[:K]", "TGATE: cross-attention frozen after step K",
                    (Knob("k", "cross-attention frozen from step {}", int, 8),), ("2", "4", "8", "12", "16"),
                    schedule=_preset("tgate")),
        MethodEntry("delta-dit", "schedule", "Delta-DiT (stage-wise block cache)", "delta-dit[:N]",
                    "Delta-DiT style stage-wise block caching, every N steps",
                    (Knob("n", "cached half recomputed every {} steps", int, 2),), ("2", "3", "5"),
                    schedule=_preset("delta_dit")),
        MethodEntry("schedule", "schedule", "Schedule", "schedule:FILE", "any CacheSchedule JSON", max_args=1,
                    args=_file_arg, schedule=_schedule_file),
        MethodEntry("ecad", "schedule", "ECAD frontier", "ecad:DIR[:2.5x]",
                    "every point of a search folder's frontier, or the one nearest 2.5x", max_args=2,
                    args=_ecad_args, expand=_ecad_rows),
        MethodEntry("fbc", "dynamic", "FirstBlockCache (diffusers)", "fbc[:T]",
                    "diffusers FirstBlockCache, threshold T",
                    (Knob("threshold", "threshold {}", float, _dyn("fbc")["threshold"]),),
                    ("0.05", "0.1", "0.15", "0.2", "0.3", "0.45", "0.6", "0.8"), install=_diffusers_cache("fbc")),
        MethodEntry("pab", "dynamic", "Pyramid Attention Broadcast (diffusers)", "pab[:N]",
                    "diffusers Pyramid Attention Broadcast, self-attention every N calls",
                    (Knob("skip", "self-attention every {} calls", int, _dyn("pab")["skip"]),), ("2", "3", "4", "6"),
                    install=_diffusers_cache("pab")),
        MethodEntry("fastercache", "dynamic", "FasterCache (diffusers)", "fastercache[:N]",
                    "diffusers FasterCache, N = attention skip range",
                    (Knob("skip", "attention every {} calls", int, _dyn("fastercache")["skip"]),), ("2", "3", "5"),
                    install=_diffusers_cache("fastercache")),
        MethodEntry("taylorseer", "dynamic", "TaylorSeer (diffusers)", "taylorseer[:N[:O]]",
                    "diffusers TaylorSeer, interval N, order O",
                    (Knob("interval", "interval {}", int, _dyn("taylorseer")["interval"]),
                     Knob("order", "order {}", int, _dyn("taylorseer")["order"])),
                    ("2:1", "3:1", "4:1", "6:1", "2:2", "3:2", "4:2", "6:2"), install=_diffusers_cache("taylorseer")),
        MethodEntry("magcache", "dynamic", "MagCache (diffusers)", "magcache[:T]",
                    "diffusers MagCache, threshold T, ratios calibrated here",
                    (Knob("threshold", "threshold {}", float, _dyn("magcache")["threshold"]),), ("0.03", "0.06", "0.12", "0.2", "0.4"),
                    install=_diffusers_cache("magcache")),
        MethodEntry("cachedit", "dynamic", "cache-dit DBCache", "cachedit[:T[:W[:F[:B]]]]",
                    "cache-dit DBCache FnBn: threshold T, warm-up W, F first / B last blocks always computed",
                    (Knob("threshold", "threshold {}", float, cd["threshold"]),
                     Knob("warmup", "warm-up {}", int, cd["warmup"], zero_ok=True),
                     Knob("fn", "F{}", int, cd["fn"]), Knob("bn", "B{}", int, cd["bn"], zero_ok=True)),
                    ("0.08", "0.15", "0.3", "0.5", "0.3:1", "0.5:1", "0.8:1", "0.3:2:4:0", "0.5:2:4:0"),
                    install=_cachedit),
        MethodEntry("teacache", "dynamic", "TeaCache-style (ditaccel)", "teacache[:T]",
                    "TeaCache-style: skip the block stack while the accumulated relative change of block 0's "
                    "modulated input stays under T",
                    (Knob("threshold", "threshold {}", float, _dyn("teacache")["threshold"], zero_ok=True),),
                    ("0.03", "0.05", "0.1", "0.2", "0.3", "0.5", "0.8"), install=_teacache),
        MethodEntry("fp4-w4a8", "quant", "FP4DiT W4A8", "fp4-w4a8[:ITERS]",
                    "FP4DiT: E2M1 weights (E3M0 first FFN) + E3M4 per-token acts", (it,),
                    quant={"weights": "e2m1", "acts": "e3m4", "first_ffn_weights": "e3m0"}),
        MethodEntry("fp4-w4a6", "quant", "FP4DiT W4A6", "fp4-w4a6[:ITERS]", "FP4DiT with E2M3 activations", (it,),
                    quant={"weights": "e2m1", "acts": "e2m3", "first_ffn_weights": "e3m0"}),
        MethodEntry("int-w4a8", "quant", "INT W4A8", "int-w4a8[:ITERS]",
                    "INT4 weights + INT8 per-token activations (the ViDiT-Q/PTQ4DiT baseline)", (it,),
                    quant={"weights": "int4", "acts": "int8", "first_ffn_weights": None}),
    ]


REGISTRY: dict[str, MethodEntry] = {}
METHOD_NAMES: tuple[str, ...] = ()
#: methods with a knob grid (``NAME:sweep``; ``peers:sweep`` runs them all)
KNOBS: dict[str, MethodEntry] = {}
QUANT_PRESETS: dict[str, dict[str, Any]] = {}


def methods_table() -> str:
    """Every method as ``syntax = what it does (defaults)``, read off the registry (for ``--help`` and docs)."""
    def defaults(e: MethodEntry) -> str:
        words = [k.fmt.format(_fmt(k.default)) for k in e.knobs]
        return f" (default: {', '.join(words)})" if words else ""

    return "; ".join(f"{e.syntax} = {e.help}{defaults(e)}" for e in REGISTRY.values())


@dataclass(frozen=True)
class MethodSpec:
    """A parsed row: its text as the user wrote it and its parts."""

    text: str
    parts: tuple[Part, ...]

    @property
    def cache(self) -> Part | None:
        return next((p for p in self.parts if not p.is_quant), None)

    @property
    def quant(self) -> Part | None:
        return next((p for p in self.parts if p.is_quant), None)


def _num(part: Part, i: int, kind: type, default: Any, text: str, zero_ok: bool = False) -> Any:
    if len(part.args) <= i or part.args[i] == "":
        return default
    try:
        v = kind(part.args[i])
    except ValueError:
        raise DitaccelError(f"method {text!r}: {part.name} argument {part.args[i]!r} is not a "
                            f"{'whole number' if kind is int else 'number'}") from None
    if v < 0 or (v == 0 and not zero_ok):
        raise DitaccelError(f"method {text!r}: {part.name} argument must be {'>= 0' if zero_ok else 'positive'}, "
                            f"got {part.args[i]}")
    return v


def knob_values(part: Part, text: str) -> dict[str, Any]:
    """The part's knob values by key, defaults filled in; a bad value raises one line naming ``text``."""
    return {k.key: _num(part, i, k.kind, k.default, text, zero_ok=k.zero_ok)
            for i, k in enumerate(part.entry.knobs)}


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def part_title(part: Part) -> tuple[str, str | None]:
    """(row name a reader knows, curve it belongs to): "FirstBlockCache (diffusers), threshold 0.15".

    A method's curve is its title plus every knob but the first (the one a curve runs along).
    """
    e = part.entry
    if e.kind == "quant":
        return f"{e.title} ({e.knobs[0].fmt.format(knob_values(part, part.name)['iters'])})", None
    if e.knobs:
        vals = knob_values(part, part.name)
        words = [k.fmt.format(_fmt(vals[k.key])) for k in e.knobs]
        return ", ".join([e.title, *words]), ", ".join([e.title, *words[1:]])
    if e.name == "schedule":
        return f"{e.title} {Path(part.args[0]).name}", None
    if e.name == "ecad":
        return f"{e.title} {part.args[0]}" + (f" point nearest {part.args[1]}" if len(part.args) > 1 else ""), None
    return e.title, None


def spec_title(spec: MethodSpec) -> tuple[str, str | None]:
    """Row name and curve of a whole row (cache part first, then quantization)."""
    parts = [p for p in (spec.cache, spec.quant) if p is not None]
    titled = [part_title(p) for p in parts]
    curve = titled[0][1] if len(titled) == 1 else None
    return " + ".join(t for t, _ in titled), curve


def _expand_sweeps(items: list[str]) -> list[str]:
    """``NAME:sweep`` -> one row per grid point; ``peers:sweep`` -> every grid. A point also listed
    explicitly (or by another sweep) appears once."""
    def is_sweep(item: str) -> bool:
        return item.partition(":")[2].strip().lower() == SWEEP

    explicit = {i for i in items if not is_sweep(i)}
    out: list[str] = []
    for item in items:
        if not is_sweep(item):
            out.append(item)
            continue
        name = item.partition(":")[0].strip().lower()
        if name != ALL_PEERS and name not in KNOBS:
            raise DitaccelError(f"method {item!r}: only methods with a knob sweep ({', '.join(KNOBS)}, or "
                                f"{ALL_PEERS}:sweep for all); write {name}:ARG for one point")
        for n in (list(KNOBS) if name == ALL_PEERS else [name]):
            out += [g for g in (f"{n}:{a}" for a in KNOBS[n].sweep) if g not in explicit and g not in out]
    return out


def _parse_part(raw: str, text: str) -> Part:
    raw = raw.strip()
    name, _, rest = raw.partition(":")
    name = name.strip().lower()
    if name not in REGISTRY:
        raise DitaccelError(f"unknown method {name!r} in {text!r}; use one of: {', '.join(METHOD_NAMES)}")
    entry = REGISTRY[name]
    if entry.args is not None:
        args = entry.args(rest, text)
    else:
        args = tuple(a.strip() for a in rest.split(":")) if rest else ()
    if SWEEP in (a.lower() for a in args):
        raise DitaccelError(f"method {text!r}: {name}:{SWEEP} expands to a list of rows, so it stands alone "
                            f"between commas (no '+' combination)")
    if len(args) > entry.arg_limit:
        raise DitaccelError(f"method {text!r}: {name} takes at most {entry.arg_limit} argument(s), got {len(args)}")
    return Part(name, args)


def parse_methods(text: str | list[str]) -> list[MethodSpec]:
    """Parse a ``--methods`` value; unknown names and malformed rows raise one line, nothing runs."""
    items = text if isinstance(text, list) else [t for t in str(text).split(",")]
    items = _expand_sweeps([i.strip() for i in items if i.strip()])
    specs: list[MethodSpec] = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        parts = tuple(_parse_part(p, item) for p in item.split("+"))
        caches = [p for p in parts if not p.is_quant]
        quants = [p for p in parts if p.is_quant]
        if len(caches) > 1 or len(quants) > 1:
            raise DitaccelError(f"method {item!r} combines {len(caches)} caching and {len(quants)} quantization "
                                f"methods; a row takes at most one of each")
        if any(p.name == "baseline" for p in parts) and len(parts) > 1:
            raise DitaccelError(f"method {item!r}: baseline cannot be combined; drop the '+'")
        for p in parts:  # numeric checks now, not halfway through a run
            knob_values(p, item)
        specs.append(MethodSpec(item, parts))
    if not specs:
        raise DitaccelError("--methods is empty; pass e.g. baseline,fora:3,fp4-w4a8")
    labels = [s.text for s in specs]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise DitaccelError(f"method(s) listed twice: {', '.join(dup)}")
    return specs


# ----------------------------------------------------------------------------- resolution


@dataclass
class Prepared:
    """What ``prepare`` produced for a row: the run's state, not part of what the user asked for."""

    transformer: Any = None         # the transformer to run (a quantized copy for quantization rows)
    setup_seconds: float = 0.0
    quant_report: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None      # why the row cannot run here (a peer unavailable on this model)


class _FromPrepared:
    """A ``Method`` attribute that lives in its ``prepared`` run state (how the runner reads it)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        return self if obj is None else getattr(obj.prepared, self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(obj.prepared, self.name, value)


@dataclass
class Method:
    """A row resolved against a model: what to install, and what is known before running it.

    ``prepared`` holds what ``prepare`` made of it; ``transformer``, ``setup_seconds``,
    ``quant_report`` and ``skipped`` read and write it.
    """

    label: str
    spec: MethodSpec
    kind: str                       # baseline | schedule | peer | quant | quant+schedule | quant+peer
    schedule: Any = None            # CacheSchedule for schedule rows
    schedule_source: str | None = None
    peer: str | None = None         # the dynamic cache's registry name
    peer_params: dict[str, Any] = field(default_factory=dict)
    quant: str | None = None
    quant_iters: int = DEFAULT_QUANT_ITERS
    group: str | None = None        # rows from one ECAD frontier share a group (drawn as a line)
    title: str = ""                 # the row's name for readers: "FirstBlockCache (diffusers), threshold 0.15"
    curve: str | None = None        # rows of one method with one knob varied share a curve (drawn as a line)
    frontier_speedup: float | None = None
    predicted_speedup: float | None = None   # latency-model speedup of a frontier point (searches priced by it)
    notes: list[str] = field(default_factory=list)
    prepared: Prepared = field(default_factory=Prepared)

    transformer = _FromPrepared()
    setup_seconds = _FromPrepared()
    quant_report = _FromPrepared()
    skipped = _FromPrepared()


def _fit_steps(method: Method, steps: int) -> None:
    s = method.schedule
    if s is not None and s.steps != steps:
        method.notes.append(f"schedule resampled from {s.steps} to {steps} steps")
        method.schedule = s.resample(steps)


def _ecad_rows(pipe: Any, spec: MethodSpec, steps: int, qname: str | None, qiters: int) -> list[Method]:
    """``ecad:DIR`` -> one row per frontier point; ``ecad:DIR:2.5x`` -> the point nearest 2.5x."""
    from ditaccel.search import load_frontier, select

    cache = spec.cache
    assert cache is not None
    folder = Path(cache.args[0])
    frontier = load_frontier(folder)
    if len(cache.args) > 1:
        points = [select(frontier, speedup=cache.args[1])]
    else:
        points = list(frontier.points)
        if not points:
            raise DitaccelError(f"the frontier in {folder} is empty; run the search longer")
    out = []
    for p in sorted(points, key=lambda p: p.speedup):
        p.schedule.validate_for(pipe)
        label = spec.text if len(cache.args) > 1 else f"{spec.text}@{p.name}"
        group = f"ECAD frontier ({folder})" + (f" + {REGISTRY[qname].title}" if qname else "")
        m = Method(label, spec, ("quant+" if qname else "") + "schedule", schedule=p.schedule,
                   schedule_source=str(p.path), quant=qname, quant_iters=qiters, group=group,
                   frontier_speedup=p.schedule.metrics.get("speedup_macs", p.speedup), curve=group)
        m.title = (f"ECAD point {p.name.partition('_')[0]} ({m.frontier_speedup:.2f}x MACs in the search)"
                   + (f" + {spec_title(spec)[0].rpartition(' + ')[2]}" if qname else ""))
        pred = p.schedule.metrics.get("speedup_predicted")  # searches priced by the latency model
        m.predicted_speedup = None if qname or pred is None else float(pred)
        m.notes.append(f"frontier point {p.name} (search MACs speedup {m.frontier_speedup:.2f}x"
                       + (f", predicted wall-clock speedup {pred:.2f}x)" if pred else ")"))
        _fit_steps(m, steps)
        out.append(m)
    return out


def _resolve_row(pipe: Any, spec: MethodSpec, steps: int) -> list[Method]:
    from ditaccel.caching import presets

    cache, quant = spec.cache, spec.quant
    qname = quant.name if quant else None
    qiters = knob_values(quant, spec.text)["iters"] if quant else DEFAULT_QUANT_ITERS
    prefix = "quant+" if quant else ""
    entry = cache.entry if cache is not None else None
    if entry is None or entry.kind == "baseline":
        m = Method(spec.text, spec, "quant" if quant else "baseline", quant=qname, quant_iters=qiters)
        if not quant:
            m.schedule = presets.none(pipe, steps=steps)
        return [m]
    if entry.expand is not None:
        return entry.expand(pipe, spec, steps, qname, qiters)
    if entry.kind == "schedule":
        assert entry.schedule is not None
        sched, src = entry.schedule(pipe, cache, steps)
        m = Method(spec.text, spec, prefix + "schedule", schedule=sched, schedule_source=src, quant=qname,
                   quant_iters=qiters)
        _fit_steps(m, steps)
        return [m]
    return [Method(spec.text, spec, prefix + "peer", peer=entry.name, peer_params=knob_values(cache, spec.text),
                   quant=qname, quant_iters=qiters)]


def resolve_methods(pipe: Any, specs: list[MethodSpec], steps: int) -> list[Method]:
    """Turn parsed rows into ``Method`` s for ``pipe``: load schedules and frontiers, validate them.

    Everything that can fail because of the user's input fails here, before any generation.
    ``ecad:DIR`` expands to one row per frontier point.
    """
    out = [m for spec in specs for m in _resolve_row(pipe, spec, steps)]
    for m in out:
        if not m.title:
            m.title, m.curve = spec_title(m.spec)
    return out


# ----------------------------------------------------------------------------- preparing / installing


@dataclass
class QuantSettings:
    """How quantization rows are calibrated (fast defaults; the paper's are far slower)."""

    prompts: list[str]
    seeds: list[int] = field(default_factory=lambda: [0])
    batch_size: int = 4
    subsample: int = 1


def calibration_data(pipe: Any, settings: QuantSettings, call_kwargs: dict[str, Any]) -> Any:
    """The full-precision transformer's inputs along the sampler trajectory of the calibration prompts."""
    from ditaccel.pipeline import pipeline_call_kwargs
    from ditaccel.quant import collect_calibration

    kw = {k: v for k, v in pipeline_call_kwargs(pipe, **call_kwargs).items() if k != "output_type"}
    calib = collect_calibration(pipe, settings.prompts, settings.seeds, batch_size=settings.batch_size, **kw)
    return calib.subsample(settings.subsample) if settings.subsample > 1 else calib


def quantize_copy(pipe: Any, preset: str, iters: int, settings: QuantSettings, call_kwargs: dict[str, Any],
                  progress: bool = False, calib: Any = None) -> tuple[Any, dict[str, Any]]:
    """A quantized deep copy of ``pipe.transformer`` (the original stays untouched) and its report."""
    from ditaccel.quant import FP4DiTConfig, quantize_

    if calib is None:
        calib = calibration_data(pipe, settings, call_kwargs)
    qt = copy.deepcopy(pipe.transformer)
    cfg = FP4DiTConfig(**REGISTRY[preset].quant, iters=iters, adaround=iters > 0, progress=progress)
    report = quantize_(qt, cfg, calib=calib)
    d = report.to_dict()
    info = {"config": {**REGISTRY[preset].quant, "iters": iters}, "calib_prompts": len(settings.prompts),
            "calib_calls": len(calib), "bits_per_weight": d.get("bits_per_weight"),
            "mean_block_mse": report.mean_block_mse, "mean_block_mse_rtn": report.mean_block_mse_rtn,
            "seconds": report.calib_seconds}
    return qt, info


def _saved_dir(pipe: Any, method: Method, quant: QuantSettings, call_kwargs: dict[str, Any], root: Path) -> Path:
    key = json.dumps({"preset": method.quant, "iters": method.quant_iters, "prompts": quant.prompts,
                      "seeds": quant.seeds, "subsample": quant.subsample, "call": call_kwargs,
                      "model": pipeline_info(pipe).name}, sort_keys=True, default=str)
    return root / f"{method.quant}_{method.quant_iters}_{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def _load_saved(pipe: Any, method: Method, quant: QuantSettings, call_kwargs: dict[str, Any],
                root: Path | None) -> tuple[Any, dict[str, Any]] | None:
    """A quantized copy saved by an earlier run with the same settings (reruns skip AdaRound)."""
    if root is None:
        return None
    d = _saved_dir(pipe, method, quant, call_kwargs, root)
    if not (d / "quant_config.json").is_file():
        return None
    from ditaccel.errors import QuantizedCheckpointError
    from ditaccel.quant import load_quantized

    try:
        qt = copy.deepcopy(pipe.transformer)
        load_quantized(d, qt)
        info = dict(json.loads((d / "quant_config.json").read_text())["extra"]["report"])
    except (QuantizedCheckpointError, KeyError, json.JSONDecodeError):
        return None  # stale or damaged: quantize again
    info["loaded_from"] = str(d)
    return qt, info


def prepare(pipe: Any, method: Method, call_kwargs: dict[str, Any], quant: QuantSettings,
            calib_prompts: list[str], cache: dict[tuple[str, int], Any] | None = None,
            store_dir: Path | None = None) -> None:
    """Do a method's one-time work (quantize, calibrate MagCache) and check its peer can be installed.

    A peer that cannot run here (missing package, unsupported model) marks the row ``skipped``
    with the reason instead of failing the whole evaluation. ``cache`` shares a quantized
    transformer between rows that use the same preset.
    """
    from ditaccel.caching.dynamic import PeerUnavailable

    t0 = time.perf_counter()
    method.transformer = pipe.transformer
    if method.quant:
        key = (method.quant, method.quant_iters)
        if cache is not None and key in cache:
            method.transformer, method.quant_report = cache[key]
        else:
            loaded = _load_saved(pipe, method, quant, call_kwargs, store_dir)
            if loaded is not None:
                method.transformer, method.quant_report = loaded
            else:
                calib = cache.get(("calib", 0)) if cache is not None else None
                if calib is None:
                    calib = calibration_data(pipe, quant, call_kwargs)  # shared by every quantized row
                    if cache is not None:
                        cache[("calib", 0)] = calib
                method.transformer, method.quant_report = quantize_copy(
                    pipe, method.quant, method.quant_iters, quant, call_kwargs, calib=calib)
                if store_dir is not None:
                    from ditaccel.quant import save_quantized

                    save_quantized(method.transformer, _saved_dir(pipe, method, quant, call_kwargs, store_dir),
                                   config=REGISTRY[method.quant].quant, extra={"report": method.quant_report})
            if cache is not None:
                cache[key] = (method.transformer, method.quant_report)
            method.setup_seconds += method.quant_report.get("seconds", 0.0)
        method.notes.append(f"{method.quant}: AdaRound {method.quant_iters} it/block, "
                            f"{len(quant.prompts)} calibration prompts")
    if method.peer:
        from ditaccel.pipeline import generate_images

        try:
            with installed(pipe, method, call_kwargs, calib_prompts):
                # one image: some peers install fine and fail only when the model runs
                generate_images(pipe, calib_prompts[:1], [0], batch_size=1, **call_kwargs)
        except PeerUnavailable as e:
            method.skipped = str(e)
        except Exception as e:  # a peer's own failure on this model: a row with its reason, not a crash
            first = (str(e).strip().splitlines() or [""])[0][:200]
            method.skipped = (f"{method.peer} installs but fails when {type(pipe.transformer).__name__} runs: "
                              f"{type(e).__name__}: {first}")
    method.setup_seconds = time.perf_counter() - t0


class installed:
    """Context manager: ``method`` active on ``pipe`` inside the block, the original model after."""

    def __init__(self, pipe: Any, method: Method, call_kwargs: dict[str, Any], calib_prompts: list[str]) -> None:
        self.pipe, self.method, self.kw, self.calib = pipe, method, call_kwargs, calib_prompts
        self._undo: list[Callable[[], None]] = []

    def __enter__(self) -> Any:
        pipe, m = self.pipe, self.method
        try:
            if m.transformer is not None and m.transformer is not pipe.transformer:
                original = pipe.transformer
                pipe.transformer = m.transformer
                self._undo.append(lambda: setattr(pipe, "transformer", original))
            if m.schedule is not None and m.kind != "baseline":
                from ditaccel.caching import apply_schedule

                h = apply_schedule(pipe, m.schedule)
                self._undo.append(h.remove)
            elif m.peer:
                install = REGISTRY[m.peer].install
                assert install is not None
                h = install(pipe, m.peer_params, self.kw, self.calib)
                # what the install measured (MagCache's ratios) is kept: calibrate once per row
                m.peer_params.update({k: v for k, v in getattr(h, "params_full", {}).items() if k not in m.peer_params})
                for n in h.notes:
                    if n not in m.notes:
                        m.notes.append(n)
                self._undo.append(h.remove)
        except BaseException:
            self.__exit__()
            raise
        return pipe

    def __exit__(self, *exc: object) -> None:
        for fn in reversed(self._undo):
            fn()
        self._undo = []


REGISTRY.update((e.name, e) for e in _entries())
METHOD_NAMES = tuple(REGISTRY)
KNOBS.update((n, e) for n, e in REGISTRY.items() if e.sweep)
QUANT_PRESETS.update((n, e.quant) for n, e in REGISTRY.items() if e.quant is not None)
