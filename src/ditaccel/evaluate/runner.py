"""``evaluate``: every method on the same prompts, seeds and machine, in one table.

Order of work, so that a user error never wastes a generation (one function per phase:
``_resolve``, ``_prepare``, ``_generate``, ``_time``, then ``_score``, ``_rows`` and ``_info``):

1. parse ``--methods`` and ``--metrics``, check metric weights and the FID reference folder,
   check the prompts suit the metrics, load the model, resolve schedules and frontiers, and
   check that existing image folders in ``--out`` were made with the same settings;
2. prepare each method (quantize a copy of the transformer, calibrate MagCache, try each peer:
   one that cannot run here becomes a skipped row with its reason);
3. generate every method's images (resumable: images on disk are kept; atomic writes; optional
   Ray workers);
4. time all methods interleaved (warm-up, then ``repeats`` rounds, median), count MACs, peak memory;
5. score the metrics against the baseline images and write results.md/json, grid.png and
   quality_vs_speed.png.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from ditaccel._io import atomic_write, atomic_write_checked_json, read_json
from ditaccel.errors import DitaccelError
from ditaccel.evaluate.measure import (
    PeakMemory,
    generation_macs,
    machine_description,
    median,
    timed,
    transformer_weight_bytes,
)
from ditaccel.evaluate.methods import (
    Method,
    QuantSettings,
    installed,
    parse_methods,
    prepare,
    resolve_methods,
)
from ditaccel.metrics import needs_reference
from ditaccel.pipeline import pipeline_info

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class EvalConfig:
    """What ``evaluate`` runs. ``methods`` uses the ``--methods`` grammar (see ``methods.py``)."""

    methods: str | list[str]
    out: Path
    prompts: str | list[str] = "heldout"
    seeds: list[int] = field(default_factory=lambda: [0])
    metrics: list[str] | None = None          # None: adherence (bundled model), psnr, ssim
    reference: Path | None = None             # FID reference: image folder or .npz stats
    metric_paths: dict[str, Any] = field(default_factory=dict)
    model: str | None = None                  # recorded; Ray workers load it (None = bundled)
    device: str = "auto"                      # auto: the pipeline's device (ditaccel.device when loading)
    steps: int | None = None
    guidance: float | None = None
    batch_size: int = 8
    limit: int | None = None                  # first N prompts only
    timing_images: int = 2                    # images per timed generation
    timing_repeats: int = 3
    grid_columns: int = 6
    quant_calib_prompts: int = 8
    ray_address: str | None = None
    command: str | None = None
    progress: bool = True


@dataclass
class MethodResult:
    """One row of the table (every number measured in this run)."""

    label: str
    kind: str
    status: str = "ok"                        # ok | skipped
    reason: str | None = None
    name: str = ""                            # for readers: "FirstBlockCache (diffusers), threshold 0.15"
    curve: str | None = None                  # rows drawn as one line (a peer's knob grid, an ECAD frontier)
    seconds_per_image: float | None = None
    timings: list[float] = field(default_factory=list)
    speedup: float | None = None
    cpu_seconds_per_image: float | None = None  # this thread's CPU time (1 torch thread on CPU), see Timing
    cpu_timings: list[float] = field(default_factory=list)
    cpu_speedup: float | None = None
    macs_per_image: int | None = None
    macs_source: str | None = None            # schedule_macs | counted
    macs_speedup: float | None = None
    frontier_macs_speedup: float | None = None
    predicted_speedup: float | None = None    # the search's latency model, for ECAD rows it priced
    peak_memory_bytes: int | None = None
    weight_bytes: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    setup_seconds: float = 0.0
    group: str | None = None
    images: str | None = None
    schedule_key: str | None = None           # a schedule row's bits (report.schedule_key): same key, same schedule


@dataclass
class EvalResult:
    """All rows plus the conditions they were measured under."""

    rows: list[MethodResult]
    info: dict[str, Any]
    out: Path

    def row(self, label: str) -> MethodResult:
        for r in self.rows:
            if r.label == label:
                return r
        raise KeyError(label)

    @classmethod
    def from_json(cls, path: Path) -> EvalResult:
        """Read a results.json back (e.g. to redraw plots or reports without rerunning)."""
        d = json.loads(Path(path).read_text())
        known = {f.name for f in fields(MethodResult)}

        def num(x: Any) -> Any:
            return float(x) if x in ("inf", "-inf", "nan") else x

        rows = []
        for m in d.pop("methods"):
            r = MethodResult(**{k: v for k, v in m.items() if k in known})
            r.metrics = {k: num(v) for k, v in r.metrics.items()}
            rows.append(r)
        return cls(rows, {k: v for k, v in d.items() if k not in ("format", "version")}, Path(path).parent)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: infinite PSNR (identical images) is written as the string "inf"."""
        return _json_safe({"format": "ditaccel.eval", "version": 1, **self.info,
                           "methods": [asdict(r) for r in self.rows]})


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.generic):
        return _json_safe(x.item())
    return x


# ----------------------------------------------------------------------------- checks


def slug(label: str) -> str:
    """A file-system-safe folder name for a method label."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "method"
    return s if len(s) <= 80 else s[:60] + "_" + hashlib.sha1(label.encode()).hexdigest()[:10]


def check_reference(path: Path | None) -> None:
    """A reference folder must hold images (or be an .npz of stats): checked before generating."""
    if path is None:
        return
    p = Path(path)
    if p.is_file():
        if p.suffix.lower() != ".npz":
            raise DitaccelError(f"--reference {p} is a file but not an .npz of FID stats; pass an image folder or .npz")
        return
    if not p.is_dir():
        raise DitaccelError(f"--reference {p} does not exist; pass a folder of reference images or an .npz")
    if not any(f.suffix.lower() in IMAGE_SUFFIXES for f in p.rglob("*") if f.is_file()):
        raise DitaccelError(f"--reference {p} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                            f"put the reference images there or pass an .npz of FID stats")


def default_metrics(pipe: Any) -> list[str]:
    return (["adherence"] if pipeline_info(pipe).bundled else []) + ["psnr", "ssim"]


def build_metrics(names: Sequence[str], reference: Path | None, paths: dict[str, Any],
                  prompts: Sequence[str], device: str = "auto") -> dict[str, Any]:
    """Metric objects, scoring on ``device``; missing weights raise ``MissingWeightsError`` now."""
    from ditaccel.metrics import get_metric

    check_reference(reference)
    if "fid" in names and reference is None and not paths.get("fid_reference"):
        import os

        if not os.environ.get("DITACCEL_FID_REF"):
            raise DitaccelError("fid needs --reference DIR (reference images) or an .npz of stats")
    out = {}
    for n in names:
        kw = dict(paths)
        if n == "fid" and reference is not None:
            kw["fid_reference"] = str(reference)
        m = get_metric(n, device=device, **kw)
        m.validate_prompts(prompts)
        out[n] = m
    return out


def _parse_metric_list(metrics: Sequence[str] | str | None) -> list[str] | None:
    if metrics is None:
        return None
    items = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    names = [m.strip().lower() for m in items if m.strip()]
    from ditaccel.metrics import available_metrics

    known = available_metrics()
    bad = [n for n in names if n not in known]
    if bad:
        raise DitaccelError(f"unknown metric(s) {', '.join(bad)}; use: {', '.join(known)}")
    return list(dict.fromkeys(names))


# ----------------------------------------------------------------------------- images on disk


class ImageStore:
    """One folder per method under ``out/images``; image i is job i = (prompt, seed)."""

    def __init__(self, out: Path, jobs: list[tuple[str, int]], settings: dict[str, Any]) -> None:
        self.root = out / "images"
        self.jobs = jobs
        key = json.dumps({"jobs": jobs, **settings}, sort_keys=True)
        self.key = hashlib.sha256(key.encode()).hexdigest()[:16]

    def folder(self, label: str) -> Path:
        return self.root / slug(label)

    def check(self, label: str, method: str | None = None) -> None:
        """Refuse to mix images made with other prompts/seeds/settings, or by another method under the
        same label (``ecad:DIR:2x`` after the search in DIR was rerun), into this run."""
        man = self.folder(label) / "manifest.json"
        if man.exists():
            d = read_json(man, "image manifest", f"delete {self.folder(label)} and rerun to regenerate its images")
            if not isinstance(d, dict) or d.get("key") != self.key or d.get("label") != label:
                raise DitaccelError(f"{self.folder(label)} holds images made with other prompts, seeds or settings; "
                                    f"use a new --out or delete that folder")
            if method is not None and d.get("method", method) != method:
                raise DitaccelError(f"{self.folder(label)} holds images of another method labelled {label!r} "
                                    f"(a changed schedule, reuse rule or frontier, or residual-reuse images from a "
                                    f"ditaccel before 2026-11-26?); use a new --out or delete that folder")

    def begin(self, label: str, method: str | None = None) -> None:
        f = self.folder(label)
        f.mkdir(parents=True, exist_ok=True)
        atomic_write_checked_json(f / "manifest.json", {"label": label, "key": self.key, "method": method,
                                                        "count": len(self.jobs),
                                                "jobs": [{"file": f"{i:05d}.png", "prompt": p, "seed": s}
                                                         for i, (p, s) in enumerate(self.jobs)]})

    def path(self, label: str, i: int) -> Path:
        return self.folder(label) / f"{i:05d}.png"

    def missing(self, label: str) -> list[int]:
        return [i for i in range(len(self.jobs)) if not self.path(label, i).is_file()]

    def write(self, label: str, i: int, img: np.ndarray) -> None:
        from PIL import Image

        atomic_write(self.path(label, i), lambda tmp: Image.fromarray(img).save(tmp, format="PNG"))

    def load(self, label: str) -> list[np.ndarray]:
        from PIL import Image

        out = []
        for i in range(len(self.jobs)):
            try:
                out.append(np.asarray(Image.open(self.path(label, i)).convert("RGB")))
            except (OSError, ValueError, Image.DecompressionBombError):
                raise DitaccelError(f"{self.path(label, i)} is damaged; delete it and rerun to regenerate it") from None
        return out


def method_fingerprint(m: Method) -> str:
    """What makes a method's images: its schedule bits, peer and knobs, quantization (not its label)."""
    sched = None if m.schedule is None else hashlib.sha1(np.packbits(m.schedule.bits).tobytes()).hexdigest()[:16]
    what = {"kind": m.kind, "schedule": sched, "peer": m.peer, "quant": m.quant, "iters": m.quant_iters,
            "params": {k: v for k, v in m.peer_params.items() if k != "mag_ratios"}}
    if m.schedule is not None and m.schedule.residual:  # the same bits reused another way are other images;
        what["step_reuse"] = m.schedule.step_reuse    # absent for ECAD's rule: those older image folders still match
    return hashlib.sha1(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _generate_local(pipe: Any, method: Method, store: ImageStore, idx: list[int], cfg: EvalConfig,
                    call_kwargs: dict[str, Any], calib_prompts: list[str], advance: Any) -> None:
    from ditaccel.pipeline import generate_images

    with installed(pipe, method, call_kwargs, calib_prompts):
        for start in range(0, len(idx), cfg.batch_size):
            chunk = idx[start:start + cfg.batch_size]
            imgs = generate_images(pipe, [store.jobs[i][0] for i in chunk], [store.jobs[i][1] for i in chunk],
                                   batch_size=cfg.batch_size, **call_kwargs)
            for i, img in zip(chunk, imgs, strict=True):
                store.write(method.label, i, img)
            advance(len(chunk))


# ----------------------------------------------------------------------------- the run


def _call_kwargs(pipe: Any, cfg: EvalConfig) -> dict[str, Any]:
    from ditaccel.pipeline import pipeline_call_kwargs, pipeline_steps

    kw = pipeline_call_kwargs(pipe, num_inference_steps=cfg.steps, guidance_scale=cfg.guidance)
    kw.pop("output_type", None)
    kw["num_inference_steps"] = pipeline_steps(pipe, kw)
    return kw


def _progress(enabled: bool) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled, transient=False)


def precheck(cfg: EvalConfig) -> None:
    """The checks that need no model: method names, metric names and weights, reference folder."""
    from ditaccel.prompts import load_prompts

    parse_methods(cfg.methods)
    names = _parse_metric_list(cfg.metrics)
    check_reference(cfg.reference)
    if names:
        prompts = list(cfg.prompts) if isinstance(cfg.prompts, list) else load_prompts(cfg.prompts)
        build_metrics(names, cfg.reference, cfg.metric_paths, prompts[:cfg.limit] if cfg.limit else prompts)


def plan(pipe: Any, cfg: EvalConfig) -> tuple[list[Method], dict[str, Any], list[str], list[tuple[str, int]]]:
    """Every check that needs no generation: methods, metrics, weights, reference, prompts, folders."""
    from ditaccel.prompts import load_prompts

    specs = parse_methods(cfg.methods)
    metric_names = _parse_metric_list(cfg.metrics)
    prompts = list(cfg.prompts) if isinstance(cfg.prompts, list) else load_prompts(cfg.prompts)
    if cfg.limit:
        prompts = prompts[:cfg.limit]
    if not prompts:
        raise DitaccelError("no prompts to evaluate")
    if not cfg.seeds:
        raise DitaccelError("no seeds; pass --seeds 0 or 0-3")
    if metric_names is None:
        metric_names = default_metrics(pipe)
    metrics = build_metrics(metric_names, cfg.reference, cfg.metric_paths, prompts, device=str(pipe.device))
    call_kwargs = _call_kwargs(pipe, cfg)
    if not any(s.text == "baseline" for s in specs):
        specs = parse_methods(["baseline", *[s.text for s in specs]])
    methods = resolve_methods(pipe, specs, int(call_kwargs["num_inference_steps"]))
    if cfg.ray_address:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise DitaccelError("--ray needs ray: pip install 'ditaccel[ray]'") from None
    jobs = [(p, int(s)) for p in prompts for s in cfg.seeds]
    return methods, metrics, prompts, jobs


def calibration_prompts(metric_names: Sequence[str], prompts: Sequence[str]) -> list[str]:
    """The prompts quantization rows and MagCache calibrate on, for the driver and every Ray worker alike.

    Why one place: the adherence metric scores the bundled model's shape prompts, so calibrating on
    them matches what is scored; any other run calibrates on its own eval prompts.
    """
    from ditaccel.zoo import shapes

    return shapes.calibration_prompts() if "adherence" in metric_names else list(prompts)


@dataclass
class _Run:
    """What every phase of one ``evaluate`` call reads: fixed by ``_resolve``, except ``live``."""

    cfg: EvalConfig
    pipe: Any
    out: Path
    methods: list[Method]
    metrics: dict[str, Any]
    prompts: list[str]
    jobs: list[tuple[str, int]]
    call_kwargs: dict[str, Any]
    settings: dict[str, Any]                   # the scalar call settings, recorded and in the image-store key
    store: ImageStore
    calib_prompts: list[str]
    quant: QuantSettings
    base_transformer: Any                      # pipe.transformer before any method was prepared
    t_start: float
    live: list[Method] = field(default_factory=list)  # methods left after preparing (not skipped)

    @property
    def base(self) -> Method:
        return next(m for m in self.methods if m.kind == "baseline")


@dataclass
class _Timing:
    """Phase 4's measurements per method label."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]
    peaks: dict[str, int]
    counted: dict[str, tuple[int, int, int | None]]  # generation_macs of the warm-up


def _resolve(cfg: EvalConfig, pipe: Any) -> _Run:
    """Phase 1: every check that needs no generation, and the model if none was given."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise DitaccelError(f"--out {out} is a file; pass a folder")
    if str(cfg.device) == "auto":  # timing and peak memory need the concrete device
        from ditaccel.device import resolve_device

        cfg = replace(cfg, device=str(pipe.device if pipe is not None else resolve_device("auto")))
    if pipe is None:
        from ditaccel.pipeline import load_pipeline

        precheck(cfg)                         # user errors fail before the model loads
        pipe = load_pipeline(cfg.model, device=cfg.device)
    methods, metrics, prompts, jobs = plan(pipe, cfg)
    call_kwargs = _call_kwargs(pipe, cfg)
    settings = {k: v for k, v in call_kwargs.items() if isinstance(v, int | float | str | bool)}
    store = ImageStore(out, jobs, {"model": pipeline_info(pipe).name, **settings})
    for m in methods:
        store.check(m.label, method_fingerprint(m))
    calib = calibration_prompts(list(metrics), prompts)
    quant = QuantSettings(prompts=calib[:cfg.quant_calib_prompts], batch_size=cfg.batch_size)
    return _Run(cfg, pipe, out, methods, metrics, prompts, jobs, call_kwargs, settings, store, calib, quant,
                pipe.transformer, time.perf_counter())


def _prepare(run: _Run, prog: Any) -> None:
    """Phase 2: each method's one-time work; a method that cannot run here is left out of ``run.live``."""
    qcache: dict = {}
    task = prog.add_task("preparing methods", total=len(run.methods))
    for m in run.methods:
        prepare(run.pipe, m, run.call_kwargs, run.quant, run.calib_prompts, qcache, store_dir=run.out / "quantized")
        prog.advance(task)
    run.live = [m for m in run.methods if not m.skipped]


def _generate(run: _Run, prog: Any) -> None:
    """Phase 3: the images each live method still lacks on disk, here or on Ray workers."""
    cfg, store = run.cfg, run.store
    todo = {m.label: store.missing(m.label) for m in run.live}
    task = prog.add_task("generating images", total=sum(len(v) for v in todo.values()))
    for m in run.live:
        store.begin(m.label, method_fingerprint(m))
        if not todo[m.label]:
            continue
        if cfg.ray_address:
            from ditaccel.evaluate.distributed import generate_with_ray

            generate_with_ray(cfg, m, store, todo[m.label], run.call_kwargs,
                              lambda n: prog.advance(task, n), quant=run.quant, calib_prompts=run.calib_prompts)
        else:
            _generate_local(run.pipe, m, store, todo[m.label], cfg, run.call_kwargs, run.calib_prompts,
                            lambda n: prog.advance(task, n))


def _time(run: _Run, prog: Any) -> _Timing:
    """Phase 4: MACs on the warm-up, then wall/CPU time and peak memory, methods interleaved per repeat.

    Why interleaved: background load drifts then hit every method alike.
    """
    from ditaccel.pipeline import generate_images

    cfg, pipe, live = run.cfg, run.pipe, run.live
    tp = [run.jobs[i % len(run.jobs)][0] for i in range(cfg.timing_images)]
    ts = [run.jobs[i % len(run.jobs)][1] for i in range(cfg.timing_images)]

    def gen() -> Any:
        return generate_images(pipe, tp, ts, batch_size=cfg.timing_images, **run.call_kwargs)

    t = _Timing({m.label: [] for m in live}, {m.label: [] for m in live}, {m.label: 0 for m in live}, {})
    task = prog.add_task("timing", total=len(live) * (cfg.timing_repeats + 1))
    for m in live:  # warm-up doubles as the MACs count
        with installed(pipe, m, run.call_kwargs, run.calib_prompts):
            t.counted[m.label] = generation_macs(pipe, gen, reference=run.base_transformer)
        prog.advance(task)
    for _ in range(cfg.timing_repeats):
        for m in live:
            with installed(pipe, m, run.call_kwargs, run.calib_prompts):
                with PeakMemory(cfg.device) as pm:
                    one = timed(gen, cfg.device)
                t.wall[m.label].append(one.wall / cfg.timing_images)
                if one.cpu is not None:
                    t.cpu[m.label].append(one.cpu / cfg.timing_images)
                t.peaks[m.label] = max(t.peaks[m.label], pm.peak)
            prog.advance(task)
    return t


def _score(run: _Run, prog: Any) -> tuple[dict[str, tuple[dict[str, float], dict[str, Any]]], list[np.ndarray]]:
    """Phase 5a: every metric on every live method's images, against the baseline's; returns them and those."""
    task = prog.add_task("scoring", total=len(run.live))
    base = run.base
    ref_images = run.store.load(base.label)
    img_prompts = [p for p, _ in run.jobs]
    scored: dict[str, tuple[dict[str, float], dict[str, Any]]] = {}
    for m in run.live:
        imgs = ref_images if m is base else run.store.load(m.label)
        vals: dict[str, float] = {}
        det: dict[str, Any] = {}
        for name, metric in run.metrics.items():
            if m is base and metric.needs_reference:
                continue
            vals[name] = float(metric.score(imgs, img_prompts, references=ref_images))
            d = metric.details(imgs, img_prompts, references=ref_images)
            if d:
                det[name] = d
        scored[m.label] = (vals, det)
        prog.advance(task)
    return scored, ref_images


def _rows(run: _Run, t: _Timing, scored: dict[str, tuple[dict[str, float], dict[str, Any]]],
          ref_images: list[np.ndarray]) -> list[MethodResult]:
    """Phase 5b: one row per requested method, speedups relative to the baseline's."""
    from ditaccel.caching import schedule_macs

    cfg, pipe, base = run.cfg, run.pipe, run.base
    cfg_batch = 2 if float(run.call_kwargs.get("guidance_scale", 1.0) or 1.0) > 1.0 else 1
    base_time = median(t.wall[base.label])
    base_counted = t.counted[base.label][0] / cfg.timing_images
    text_len = t.counted[base.label][2]
    h, w = int(ref_images[0].shape[0]), int(ref_images[0].shape[1])
    base_macs = schedule_macs(pipe, base.schedule, h, w, batch=cfg_batch, text_len=text_len)
    rows = []
    for m in run.methods:
        r = MethodResult(label=m.label, kind=m.kind, notes=list(m.notes), setup_seconds=round(m.setup_seconds, 3),
                         group=m.group, frontier_macs_speedup=m.frontier_speedup, name=m.title or m.label,
                         curve=m.curve, predicted_speedup=m.predicted_speedup)
        rows.append(r)
        if m.skipped:
            r.status, r.reason = "skipped", m.skipped
            continue
        r.images = str(run.store.folder(m.label).relative_to(run.out))
        r.timings = [round(x, 5) for x in t.wall[m.label]]
        r.seconds_per_image = median(t.wall[m.label])
        r.speedup = base_time / r.seconds_per_image if r.seconds_per_image else None
        if t.cpu[m.label] and t.cpu[base.label]:
            r.cpu_timings = [round(x, 5) for x in t.cpu[m.label]]
            r.cpu_seconds_per_image = median(t.cpu[m.label])
            r.cpu_speedup = median(t.cpu[base.label]) / r.cpu_seconds_per_image
        c = t.counted[m.label][0] / cfg.timing_images
        if m.schedule is not None:
            from ditaccel.evaluate.report import schedule_key

            r.schedule_key = schedule_key(m.schedule.bits, m.schedule.step_reuse)
            r.macs_per_image, r.macs_source = schedule_macs(pipe, m.schedule, h, w, batch=cfg_batch,
                                                            text_len=text_len), "schedule_macs"
            r.details["counted_macs_per_image"] = int(c)
            r.macs_speedup = base_macs / r.macs_per_image
        else:
            r.macs_per_image, r.macs_source = int(c), "counted"
            r.macs_speedup = base_counted / c if c else None
        r.peak_memory_bytes = t.peaks[m.label]
        r.weight_bytes = transformer_weight_bytes(m.transformer if m.transformer is not None
                                                   else run.base_transformer)
        r.metrics, r.details = scored[m.label][0], {**r.details, **scored[m.label][1]}
        if m.quant_report:
            r.details["quantization"] = m.quant_report
    return rows


def _info(run: _Run) -> dict[str, Any]:
    """Phase 5c: the conditions every row was measured under, for results.json and the report."""
    cfg = run.cfg
    return {
        "machine": machine_description(), "command": cfg.command or " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": pipeline_info(run.pipe).name,
        "pipeline": type(run.pipe).__name__, "device": cfg.device,
        "prompts": cfg.prompts if isinstance(cfg.prompts, str) else f"{len(run.prompts)} given",
        "num_prompts": len(run.prompts), "seeds": list(cfg.seeds), "num_images": len(run.jobs),
        "call": run.settings, "timing": {"images_per_run": cfg.timing_images, "repeats": cfg.timing_repeats,
                                         "warmup": 1, "interleaved": True},
        "memory_kind": PeakMemory(cfg.device).kind, "metrics": list(run.metrics),
        "quality_metric": quality_metric(list(run.metrics)),
        "quant_calibration": {"prompts": len(run.quant.prompts), "seeds": run.quant.seeds},
        "wall_seconds": round(time.perf_counter() - run.t_start, 1),
        "versions": _versions(),
    }


def evaluate(cfg: EvalConfig, pipe: Any = None) -> EvalResult:
    """Run the comparison and write its files into ``cfg.out``; returns the rows (phases: module docstring)."""
    run = _resolve(cfg, pipe)
    with _progress(run.cfg.progress) as prog:
        _prepare(run, prog)
        _generate(run, prog)
        timing = _time(run, prog)
        scored, ref_images = _score(run, prog)
    result = EvalResult(_rows(run, timing, scored, ref_images), _info(run), run.out)
    from ditaccel.evaluate.report import write_outputs

    write_outputs(result, run.store, run.jobs, run.cfg.grid_columns)
    return result


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("ditaccel", "torch", "diffusers", "transformers", "cache-dit"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def quality_metric(names: list[str]) -> str:
    """The metric the quality-vs-speed plot uses: the first that is not a fidelity-to-baseline one."""
    for n in names:
        if not needs_reference(n):
            return n
    return names[0] if names else "psnr"


def finite(x: float | None) -> bool:
    return x is not None and not (isinstance(x, float) and (math.isnan(x) or math.isinf(x)))
