"""The ``--methods`` list: parse it, check it before anything runs, and install each method.

Grammar: comma-separated rows; a row is one or more parts joined by ``+``; a part is
``name[:arg[:arg]]``. At most one caching part and one quantization part per row.

============================  =================================================================
``baseline``                  no acceleration (the reference for speedup, PSNR and SSIM)
``fora[:N]``                  FORA: recompute everything every N steps (default 3)
``tgate[:K]``                 TGATE: cross-attention frozen after step K (default 8)
``delta-dit[:N]``             Delta-DiT style stage-wise block caching, every N steps (default 2)
``schedule:FILE``             any CacheSchedule JSON
``ecad:DIR[:2.5x]``           every point of a search folder's frontier, or the one nearest 2.5x
``fbc[:T]``                   diffusers FirstBlockCache, threshold T (0.05)
``pab[:N]``                   diffusers Pyramid Attention Broadcast, self-attn every N calls (2)
``fastercache[:N]``           diffusers FasterCache (N = attention skip range, 2)
``taylorseer[:N[:O]]``        diffusers TaylorSeer, interval N (3), order O (1)
``magcache[:T]``              diffusers MagCache, threshold T (0.06), ratios calibrated here
``cachedit[:T[:W[:F[:B]]]]``  cache-dit DBCache FnBn: threshold T (0.08), warm-up W (4), F first (1) / B last (0) blocks
``fp4-w4a8[:ITERS]``          FP4DiT: E2M1 weights (E3M0 first FFN) + E3M4 per-token acts
``fp4-w4a6[:ITERS]``          FP4DiT with E2M3 activations
``int-w4a8[:ITERS]``          INT4 weights + INT8 per-token activations (the ViDiT-Q/PTQ4DiT baseline)
``NAME:sweep``                every point of NAME's knob grid (``KNOBS``), e.g. ``fbc:sweep``
``peers:sweep``               every grid of every method with a knob (FORA ... cache-dit)
============================  =================================================================

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

from ditaccel.errors import DitaccelError
from ditaccel.pipeline import pipeline_info

CACHE_SCHEDULE_NAMES = ("baseline", "fora", "tgate", "delta-dit", "schedule", "ecad")
PEER_NAMES = ("fbc", "pab", "fastercache", "taylorseer", "magcache", "cachedit")
QUANT_PRESETS: dict[str, dict[str, Any]] = {
    "fp4-w4a8": {"weights": "e2m1", "acts": "e3m4", "first_ffn_weights": "e3m0"},
    "fp4-w4a6": {"weights": "e2m1", "acts": "e2m3", "first_ffn_weights": "e3m0"},
    "int-w4a8": {"weights": "int4", "acts": "int8", "first_ffn_weights": None},
}
QUANT_TITLES = {"fp4-w4a8": "FP4DiT W4A8", "fp4-w4a6": "FP4DiT W4A6", "int-w4a8": "INT W4A8"}
METHOD_NAMES = (*CACHE_SCHEDULE_NAMES, *PEER_NAMES, *QUANT_PRESETS)
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
    minimum: float = 0.0     # values must be > minimum (0: positive)


@dataclass(frozen=True)
class Knobs:
    """A method with knobs: its name for readers, its arguments, and the grid ``NAME:sweep`` expands to.

    The grids were chosen on the bundled model (20 steps) to run each curve from nearly lossless to
    as fast as the method goes, aiming at 1.1x-4x measured speed; several saturate earlier (MagCache
    keeps its first steps, PAB/FasterCache/TGATE touch attention only). bench/results/peers.md shows
    what each reached.
    """

    title: str
    knobs: tuple[Knob, ...]
    sweep: tuple[str, ...]   # argument strings, as written after ``NAME:``


KNOBS: dict[str, Knobs] = {
    "fora": Knobs("FORA", (Knob("n", "recompute every {} steps", int, 3),), ("2", "3", "4", "5", "6", "8", "10")),
    "tgate": Knobs("TGATE", (Knob("k", "cross-attention frozen from step {}", int, 8),), ("2", "4", "8", "12", "16")),
    "delta-dit": Knobs("Delta-DiT (stage-wise block cache)",
                       (Knob("n", "cached half recomputed every {} steps", int, 2),), ("2", "3", "5")),
    "fbc": Knobs("FirstBlockCache (diffusers)", (Knob("threshold", "threshold {}", float, 0.05),),
                 ("0.05", "0.1", "0.15", "0.2", "0.3", "0.45", "0.6", "0.8")),
    "pab": Knobs("Pyramid Attention Broadcast (diffusers)", (Knob("skip", "self-attention every {} calls", int, 2),),
                 ("2", "3", "4", "6")),
    "fastercache": Knobs("FasterCache (diffusers)", (Knob("skip", "attention every {} calls", int, 2),),
                         ("2", "3", "5")),
    "taylorseer": Knobs("TaylorSeer (diffusers)", (Knob("interval", "interval {}", int, 3),
                                                   Knob("order", "order {}", int, 1)),
                        ("2:1", "3:1", "4:1", "6:1", "2:2", "3:2", "4:2", "6:2")),
    "magcache": Knobs("MagCache (diffusers)", (Knob("threshold", "threshold {}", float, 0.06),),
                      ("0.03", "0.06", "0.12", "0.2", "0.4")),
    "cachedit": Knobs("cache-dit DBCache", (Knob("threshold", "threshold {}", float, 0.08),
                                           Knob("warmup", "warm-up {}", int, 4, minimum=-0.5),
                                           Knob("fn", "F{}", int, 1), Knob("bn", "B{}", int, 0, minimum=-0.5)),
                      ("0.08", "0.15", "0.3", "0.5", "0.3:1", "0.5:1", "0.8:1", "0.3:2:4:0",
                       "0.5:2:4:0")),
}


@dataclass(frozen=True)
class Part:
    """One ``name[:args]`` piece of a row."""

    name: str
    args: tuple[str, ...] = ()

    @property
    def is_quant(self) -> bool:
        return self.name in QUANT_PRESETS


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


def _num(part: Part, i: int, kind: type, default: Any, text: str, minimum: float = 0.0) -> Any:
    if len(part.args) <= i or part.args[i] == "":
        return default
    try:
        v = kind(part.args[i])
    except ValueError:
        raise DitaccelError(f"method {text!r}: {part.name} argument {part.args[i]!r} is not a "
                            f"{'whole number' if kind is int else 'number'}") from None
    if v < minimum or (minimum == 0.0 and v <= 0):
        raise DitaccelError(f"method {text!r}: {part.name} argument must be positive, got {part.args[i]}")
    return v


_MAX_ARGS = {"baseline": 0, "schedule": 1, "ecad": 2, **{k: len(v.knobs) for k, v in KNOBS.items()},
             **{q: 1 for q in QUANT_PRESETS}}


def knob_values(part: Part, text: str) -> dict[str, Any]:
    """The part's knob values by key, defaults filled in; a bad value raises one line naming ``text``."""
    return {k.key: _num(part, i, k.kind, k.default, text, minimum=k.minimum)
            for i, k in enumerate(KNOBS[part.name].knobs)}


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def part_title(part: Part) -> tuple[str, str | None]:
    """(row name a reader knows, curve it belongs to): "FirstBlockCache (diffusers), threshold 0.15".

    A method's curve is its title plus every knob but the first (the one a curve runs along).
    """
    if part.name in KNOBS:
        kn = KNOBS[part.name]
        vals = knob_values(part, part.name)
        words = [k.fmt.format(_fmt(vals[k.key])) for k in kn.knobs]
        return ", ".join([kn.title, *words]), ", ".join([kn.title, *words[1:]])
    if part.name in QUANT_PRESETS:
        iters = _num(part, 0, int, DEFAULT_QUANT_ITERS, part.name, minimum=-0.5)
        return f"{QUANT_TITLES[part.name]} (AdaRound {iters} it/block)", None
    if part.name == "baseline":
        return "Baseline (no acceleration)", None
    if part.name == "schedule":
        return f"Schedule {Path(part.args[0]).name}", None
    return f"ECAD frontier {part.args[0]}" + (f" point nearest {part.args[1]}" if len(part.args) > 1 else ""), None


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
    if name not in METHOD_NAMES:
        raise DitaccelError(f"unknown method {name!r} in {text!r}; use one of: {', '.join(METHOD_NAMES)}")
    if name == "ecad":
        if not rest:
            raise DitaccelError(f"method {text!r}: ecad needs a search folder, e.g. ecad:runs/pixart or "
                                f"ecad:runs/pixart:2.5x")
        folder, _, last = rest.rpartition(":")
        args = (folder, last) if folder and _SPEEDUP.match(last) else (rest,)
    elif name == "schedule":
        if not rest:
            raise DitaccelError(f"method {text!r}: schedule needs a file, e.g. schedule:s.json")
        args = (rest,)
    else:
        args = tuple(a.strip() for a in rest.split(":")) if rest else ()
    if SWEEP in (a.lower() for a in args):
        raise DitaccelError(f"method {text!r}: {name}:{SWEEP} expands to a list of rows, so it stands alone "
                            f"between commas (no '+' combination)")
    if len(args) > _MAX_ARGS[name]:
        raise DitaccelError(f"method {text!r}: {name} takes at most {_MAX_ARGS[name]} argument(s), got {len(args)}")
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
            if p.name in KNOBS:
                knob_values(p, item)
            elif p.is_quant:
                _num(p, 0, int, 1, item, minimum=-0.5)  # 0 iterations = round-to-nearest
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
class Method:
    """A row resolved against a model: what to install, and what is known before running it."""

    label: str
    spec: MethodSpec
    kind: str                       # baseline | schedule | peer | quant | quant+schedule | quant+peer
    schedule: Any = None            # CacheSchedule for schedule rows
    schedule_source: str | None = None
    peer: str | None = None
    peer_params: dict[str, Any] = field(default_factory=dict)
    quant: str | None = None
    quant_iters: int = DEFAULT_QUANT_ITERS
    group: str | None = None        # rows from one ECAD frontier share a group (drawn as a line)
    title: str = ""                 # the row's name for readers: "FirstBlockCache (diffusers), threshold 0.15"
    curve: str | None = None        # rows of one method with one knob varied share a curve (drawn as a line)
    frontier_speedup: float | None = None
    predicted_speedup: float | None = None   # latency-model speedup of a frontier point (searches priced by it)
    notes: list[str] = field(default_factory=list)
    # filled by prepare()
    transformer: Any = None
    setup_seconds: float = 0.0
    quant_report: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None


def _schedule_for(pipe: Any, part: Part, steps: int, text: str) -> tuple[Any, str | None]:
    from ditaccel.caching import CacheSchedule, presets

    preset = {"fora": presets.fora, "tgate": presets.tgate, "delta-dit": presets.delta_dit}.get(part.name)
    if preset is not None:
        return preset(pipe, *knob_values(part, text).values(), steps=steps), None
    if part.name == "schedule":
        path = Path(part.args[0])
        return CacheSchedule.load(path, pipe), str(path)
    raise AssertionError(part.name)


def _fit_steps(method: Method, steps: int) -> None:
    s = method.schedule
    if s is not None and s.steps != steps:
        method.notes.append(f"schedule resampled from {s.steps} to {steps} steps")
        method.schedule = s.resample(steps)


def resolve_methods(pipe: Any, specs: list[MethodSpec], steps: int) -> list[Method]:
    """Turn parsed rows into ``Method`` s for ``pipe``: load schedules and frontiers, validate them.

    Everything that can fail because of the user's input fails here, before any generation.
    ``ecad:DIR`` expands to one row per frontier point.
    """
    from ditaccel.caching import presets

    out: list[Method] = []
    for spec in specs:
        cache, quant = spec.cache, spec.quant
        qname = quant.name if quant else None
        qiters = _num(quant, 0, int, DEFAULT_QUANT_ITERS, spec.text, minimum=-0.5) if quant else DEFAULT_QUANT_ITERS
        prefix = "quant+" if quant else ""
        if cache is None or cache.name == "baseline":
            kind = "quant" if quant else "baseline"
            m = Method(spec.text, spec, kind, quant=qname, quant_iters=qiters)
            if not quant:
                m.schedule = presets.none(pipe, steps=steps)
            out.append(m)
        elif cache.name == "ecad":
            from ditaccel.search import load_frontier, select

            folder = Path(cache.args[0])
            frontier = load_frontier(folder)
            if len(cache.args) > 1:
                points = [select(frontier, speedup=cache.args[1])]
            else:
                points = list(frontier.points)
                if not points:
                    raise DitaccelError(f"the frontier in {folder} is empty; run the search longer")
            for p in sorted(points, key=lambda p: p.speedup):
                p.schedule.validate_for(pipe)
                label = spec.text if len(cache.args) > 1 else f"{spec.text}@{p.name}"
                group = f"ECAD frontier ({folder})" + (f" + {QUANT_TITLES[qname]}" if qname else "")
                m = Method(label, spec, prefix + "schedule", schedule=p.schedule, schedule_source=str(p.path),
                           quant=qname, quant_iters=qiters, group=group,
                           frontier_speedup=p.schedule.metrics.get("speedup_macs", p.speedup), curve=group)
                m.title = (f"ECAD point {p.name.partition('_')[0]} ({m.frontier_speedup:.2f}x MACs in the search)"
                           + (f" + {spec_title(spec)[0].rpartition(' + ')[2]}" if qname else ""))
                pred = p.schedule.metrics.get("speedup_predicted")  # searches priced by the latency model
                m.predicted_speedup = None if qname or pred is None else float(pred)
                m.notes.append(f"frontier point {p.name} (search MACs speedup {m.frontier_speedup:.2f}x"
                               + (f", predicted wall-clock speedup {pred:.2f}x)" if pred else ")"))
                _fit_steps(m, steps)
                out.append(m)
        elif cache.name in ("fora", "tgate", "delta-dit", "schedule"):
            sched, src = _schedule_for(pipe, cache, steps, spec.text)
            m = Method(spec.text, spec, prefix + "schedule", schedule=sched, schedule_source=src, quant=qname,
                       quant_iters=qiters)
            _fit_steps(m, steps)
            out.append(m)
        else:
            out.append(Method(spec.text, spec, prefix + "peer", peer=cache.name,
                              peer_params=knob_values(cache, spec.text), quant=qname, quant_iters=qiters))
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
    cfg = FP4DiTConfig(**QUANT_PRESETS[preset], iters=iters, adaround=iters > 0, progress=progress)
    report = quantize_(qt, cfg, calib=calib)
    d = report.to_dict()
    info = {"config": {**QUANT_PRESETS[preset], "iters": iters}, "calib_prompts": len(settings.prompts),
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
    from ditaccel.evaluate.peers import PeerUnavailable

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
                                   config=QUANT_PRESETS[method.quant], extra={"report": method.quant_report})
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
            elif m.peer == "cachedit":
                from ditaccel.evaluate.peers import apply_cachedit

                h = apply_cachedit(pipe, call_kwargs=self.kw, **m.peer_params)
                self._undo.append(h.remove)
            elif m.peer:
                from ditaccel.evaluate.peers import apply_peer_cache

                h = apply_peer_cache(pipe, m.peer, call_kwargs=self.kw, calib_prompts=self.calib, **m.peer_params)
                if "mag_ratios" in h.params_full:
                    m.peer_params["mag_ratios"] = h.params_full["mag_ratios"]  # calibrate once per row
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
