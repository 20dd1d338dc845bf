"""``search(pipe, SearchConfig(...)) -> Frontier``: ECAD's NSGA-II over cache schedules.

The GA is pymoo's NSGA-II with the paper's operators (4-point crossover p=0.9, bit-flip
mutation of about one bit per child, binary tournament, rank-and-crowding survival, duplicate
elimination) and the constraint "differs from all-recompute"; the default ``strategy="structured"``
adds the dynamic peers' typical step choices to the initial population and varies whole steps and
blocks (``operators.py``), ``strategy="ecad"`` keeps the paper's. What we add is cost control:

- every genome is evaluated at most once (a cache keyed by its packed bits);
- a generation's new genomes share their common schedule prefixes (``evaluate.py``);
- under ``"structured"``, each generation also evaluates gap fillers (``SearchConfig.fill`` x the
  population): interpolants of adjacent frontier points aimed inside the frontier's widest speed
  gaps (``operators.gap_fill``), so the frontier is dense, not only spread;
- the frontier is taken over every candidate ever evaluated (the archive), not the last population;
- ``checkpoint`` is written atomically after every generation. ``resume`` replays the GA from
  the seed with the cached evaluations, which reproduces the uninterrupted run exactly and
  costs only milliseconds per replayed generation, with no pickle of pymoo's internals.

Phases: ``_resolve`` checks every input and makes a ``_Plan``; ``_SearchRun`` restores or starts
the archive of ``Candidate`` rows (``candidate.py``), then runs ``_generation`` after generation
(ask, ``_fill``, ``_evaluate``, tell, ``_checkpoint``); ``_Pricer`` turns a genome into MACs and
its price on the frontier's axis.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ditaccel._io import atomic_write_checked_json, atomic_write_text, read_json
from ditaccel.caching import CacheSchedule, schedule_macs
from ditaccel.caching.stack import STEP_REUSE
from ditaccel.errors import DitaccelError
from ditaccel.metrics.fidelity import PSNR_CAP
from ditaccel.models import get_adapter, get_transformer, image_size
from ditaccel.pipeline import pipeline_call_kwargs, pipeline_info, pipeline_steps
from ditaccel.search.candidate import UNNAMED, Candidate, append_candidates, jsonl, read_candidates
from ditaccel.search.frontier import Frontier, FrontierPoint, non_dominated, write_frontier
from ditaccel.search.genome import (
    canonical,
    frontier_population,
    initial_population,
    pack,
    preset_population,
    stratify,
    structured_population,
    unpack,
)
from ditaccel.search.signals import (
    LATE_WEIGHT,
    TARGETS,
    TARGETS_V1,
    ChangeSignals,
    ladders,
    measure_signals,
    signal_seeds,
)

CHECKPOINT_FORMAT = "ditaccel.search_checkpoint"
LATENCY_MODEL = "latency-model"
COSTS = (LATENCY_MODEL, "macs", "latency")
DEFAULT_POPULATION, DEFAULT_GENERATIONS = 72, 12  # the paper's population; generations are user-sized
# The bundled model on 2 CPU cores: ~3.7 CPU-s per candidate, so a 10-minute budget holds ~150 candidates.
BUNDLED_POPULATION, BUNDLED_GENERATIONS = 24, 6
# The structured strategy's candidates skip whole early steps, so they share no prefix past step 1 and
# cost ~2-3x a FORA-like candidate; its bundled default calibrates on every 3rd prompt (12 of 36)
# to stay in the same budget.
STRUCTURED_PROMPT_STRIDE = 3


@dataclass
class SearchConfig:
    """What to search and how. Every field has a default that fits the bundled model.

    ``prompts``: a list, a prompt set name or a file (default: the bundled model's 36
    calibration prompts, every 3rd of them under the structured strategy; else the first 32 PartiPrompts). ``seeds``: a list or '0-2' (default
    [0]); every prompt is generated with every seed. ``metric``: a ``ditaccel.metrics`` name
    (default ``adherence`` on the bundled model, ``psnr`` elsewhere). ``init``: ``"presets"`` or
    a previous search folder. ``cost``: ``"latency-model"`` (default: seconds predicted by this
    device's latency profile, ``ditaccel.caching.latency``; a resumed search keeps its own cost),
    ``"macs"`` (analytic) or ``"latency"`` (measured, one prompt per candidate). ``ray_address``:
    None (in-process), ``"local"`` (start Ray here with ``ray_workers``) or a cluster address;
    workers build the pipeline with ``loader`` (``"module:function"``, default
    ``ditaccel.pipeline:load_pipeline``) and ``loader_args`` (default: the model the pipe was
    loaded from).
    """

    prompts: Sequence[str] | str | None = None
    seeds: Sequence[int] | str | None = None
    metric: str | None = None
    metric_paths: dict[str, Any] = field(default_factory=dict)
    population: int | None = None
    generations: int | None = None
    seed: int = 0
    init: str | os.PathLike = "presets"
    out: str | os.PathLike | None = None
    resume: bool = False
    batch_size: int = 64
    call_kwargs: dict[str, Any] = field(default_factory=dict)
    cost: str | None = None
    ray_address: str | None = None
    ray_workers: int | None = None
    loader: str | None = None
    loader_args: list[Any] | None = None
    share_prefixes: bool = True
    progress: bool = False
    #: A second metric that only orders candidates of equal ``metric`` (psnr or ssim against the
    #: uncached images). ``"auto"``: psnr when ``metric`` is adherence, whose 1/N steps saturate at
    #: 1.0 and would leave the nearly-lossless end of the frontier empty; ``None``: off.
    tiebreak: str | None = "auto"
    #: ``"structured"`` (new searches): the initial population adds the dynamic peers' typical
    #: decisions (``presets.early_skip``) and variation moves whole steps and blocks
    #: (``search.operators``). ``"ecad"``: the paper's presets and operators, unchanged.
    #: None: a resumed search keeps its own, a new one gets ``"structured"``.
    strategy: str | None = None
    #: Gap fillers per generation after the first, as a share of the population: schedules interpolated
    #: between adjacent frontier points inside its widest speed gaps (``operators.gap_fill``), evaluated
    #: on top of the GA's offspring, so the frontier has a point every few percent of speedup. None: a resumed search keeps its own, a new one gets
    #: ``DEFAULT_FILL`` under ``"structured"`` and 0 (the paper's GA, unchanged) under ``"ecad"``.
    fill: float | None = None
    #: What a step with no bit set reuses (``CacheSchedule.step_reuse``): ``"residual"`` skips the whole
    #: block stack there, as FirstBlockCache and TeaCache do (``ditaccel.caching.stack``); ``"components"``
    #: is ECAD's rule. None: a resumed search keeps its own; a new one gets ``"residual"`` under
    #: ``"structured"`` where the model's blocks allow it, else ``"components"``.
    step_reuse: str | None = None
    #: ``"signals"``: the initial population and the gap filler also get the schedules that one uncached
    #: call's change signals suggest (``search.signals``: what TeaCache/FirstBlockCache would skip, as
    #: static bits); ``"presets"``: the named presets only. None: a resumed search keeps its own; a new
    #: one gets ``"signals"`` under ``"structured"``, ``"presets"`` under ``"ecad"``.
    seeding: str | None = None


SEEDINGS = ("signals", "presets")


@dataclass
class _Plan:
    """Everything resolved and checked before any work starts."""

    prompts: list[str]
    seeds: list[int]
    metric: str
    steps: int
    height: int
    width: int
    call_kwargs: dict[str, Any]
    named: list[tuple[str, np.ndarray]]
    shape: tuple[int, int, int]
    fingerprint: dict[str, Any]
    out: Path | None
    resume_state: dict[str, Any] | None
    needs_reference: bool = False
    tiebreak: str | None = None
    strategy: str = "ecad"
    fill: float = 0.0
    step_reuse: str = "components"
    seeding: str = "presets"
    #: how the initial population is built (``START_VERSIONS``)
    start: int = 1

    @property
    def residual(self) -> bool:
        return self.step_reuse == "residual"


STRATEGIES = ("structured", "ecad")
#: How a search builds its initial population. 1: cut from the front of the named list, signal seeds
#: unweighted (the paper's strategy, and structured searches from before version 2, which resume as they
#: began); 2: each speed band's first genome kept ahead of the rest (``genome.stratify``) and late-weighted
#: signal seeds (``signals.LATE_WEIGHT``) at denser targets (``signals.TARGETS``); 3: as 2, with the dynamic-like
#: ladder's block-0-last variants (``presets.dynamic_like_presets``): new structured searches.
START_VERSIONS = (1, 2, 3)
#: gap fillers per generation (after the first) under the structured strategy, as a share of the
#: population (``operators.gap_fill``); the paper's strategy has none
DEFAULT_FILL = 0.25


def _saved(cfg: SearchConfig, key: str, before: str) -> str | None:
    """A fingerprint field of the search being resumed (``before``: its value in checkpoints older than the field)."""
    ckpt = Path(cfg.out) / "checkpoint" if cfg.out is not None and cfg.resume else None
    if ckpt is None or not ckpt.is_file():
        return None
    try:
        fingerprint = read_json(ckpt, "search checkpoint", "").get("fingerprint", {})
        return str(fingerprint.get(key, before))
    except (DitaccelError, AttributeError):
        return None  # _check_out reports the corrupt checkpoint


def _apply_defaults(cfg: SearchConfig, bundled: bool) -> None:
    """Fill ``cfg``'s unset sizes, strategy, fill share and cost (a resumed search keeps its own) and check them."""
    if cfg.population is None:
        cfg.population = BUNDLED_POPULATION if bundled else DEFAULT_POPULATION
    if cfg.generations is None:
        cfg.generations = BUNDLED_GENERATIONS if bundled else DEFAULT_GENERATIONS
    if not isinstance(cfg.population, int) or cfg.population < 4:
        raise DitaccelError(f"population must be at least 4 (NSGA-II needs pairs to mate), got {cfg.population}")
    if not isinstance(cfg.generations, int) or cfg.generations < 1:
        raise DitaccelError(f"generations must be at least 1, got {cfg.generations}")
    if cfg.batch_size < 1:
        raise DitaccelError(f"batch size must be at least 1, got {cfg.batch_size}")
    if cfg.strategy is None:
        cfg.strategy = _saved(cfg, "strategy", "ecad") or "structured"
    if cfg.strategy not in STRATEGIES:
        raise DitaccelError(f"unknown search strategy {cfg.strategy!r}; use {' or '.join(STRATEGIES)}")
    if cfg.fill is None:
        saved = _saved(cfg, "fill", "0")
        cfg.fill = float(saved) if saved is not None else (DEFAULT_FILL if cfg.strategy == "structured" else 0.0)
    if not isinstance(cfg.fill, int | float) or not 0.0 <= cfg.fill <= 1.0:
        raise DitaccelError(f"fill must be a share of the population between 0 and 1, got {cfg.fill}")
    if cfg.cost is None:
        cfg.cost = _saved(cfg, "cost", "macs") or LATENCY_MODEL
    if cfg.cost not in COSTS:
        raise DitaccelError(f"unknown cost {cfg.cost!r}; use {', '.join(COSTS)}")
    if cfg.ray_address is not None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise DitaccelError("--ray needs Ray; pip install 'ray[default]>=2.9'") from None


def _calibration_prompts(cfg: SearchConfig, metric: str, bundled: bool) -> list[str]:
    """The prompts to score candidates on (the defaults depend on the model, metric and strategy)."""
    from ditaccel.prompts import load_prompts

    if cfg.prompts is None and bundled and metric == "adherence" and cfg.strategy == "structured":
        prompts = load_prompts("calibration")[::STRUCTURED_PROMPT_STRIDE]
    elif cfg.prompts is None:
        prompts = load_prompts("calibration") if metric == "adherence" else load_prompts("parti", limit=32)
    elif isinstance(cfg.prompts, str):
        prompts = load_prompts(cfg.prompts)
    else:
        prompts = [str(p) for p in cfg.prompts]
    if not prompts:
        raise DitaccelError("no prompts to calibrate on; pass prompts")
    return prompts


def _named_start(pipe: Any, cfg: SearchConfig, steps: int, start: int) -> tuple[list[tuple[str, np.ndarray]], str]:
    """The named genomes of the initial population and their id in the fingerprint."""
    base = preset_population(pipe, steps) if cfg.strategy == "ecad" else structured_population(pipe, steps, start)
    if str(cfg.init) == "presets":
        return base, "presets"
    named = frontier_population(pipe, cfg.init, steps)
    named = [base[0], *named, *base[1:]]
    return named, "frontier:" + hashlib.sha256("".join(pack(b) for _, b in named).encode()).hexdigest()[:16]


def _resolve(pipe: Any, cfg: SearchConfig) -> _Plan:
    """Check every input and derive the plan (prompts x seeds, steps, named start, fingerprint, resume state)."""
    from ditaccel.metrics import get_metric
    from ditaccel.prompts import parse_seeds

    bundled = pipeline_info(pipe).bundled
    _apply_defaults(cfg, bundled)
    a = get_adapter(pipe)
    metric = cfg.metric or ("adherence" if bundled else "psnr")
    m = get_metric(metric, **cfg.metric_paths)  # unknown metric / missing weights: one line, now
    prompts = _calibration_prompts(cfg, metric, bundled)
    seeds = parse_seeds(cfg.seeds) if isinstance(cfg.seeds, str) else [int(s) for s in (cfg.seeds or [0])]
    pairs_p = [p for p in prompts for _ in seeds]
    pairs_s = [s for _ in prompts for s in seeds]
    m.validate_prompts(pairs_p)
    tiebreak = resolve_tiebreak(cfg.tiebreak, metric)
    if m.kind == "set" and len(pairs_p) < 2:
        raise DitaccelError(f"metric {metric} is a set metric; give it at least 2 images")
    kw = pipeline_call_kwargs(pipe, **cfg.call_kwargs)
    steps = pipeline_steps(pipe, kw)
    t = get_transformer(pipe)
    height, width = image_size(pipe, kw)
    step_reuse = _step_reuse(cfg, a)
    seeding = cfg.seeding or _saved(cfg, "seeding", "presets") or (
        "signals" if cfg.strategy == "structured" else "presets")
    if seeding not in SEEDINGS:
        raise DitaccelError(f"unknown seeding {seeding!r}; use {' or '.join(SEEDINGS)}")
    saved = _saved(cfg, "start", "1")
    start = int(saved) if saved is not None and saved.isdigit() else (START_VERSIONS[-1] if cfg.strategy == "structured" else 1)
    if saved is not None and str(start) != saved or start not in START_VERSIONS:
        raise DitaccelError(f"the search in {cfg.out} starts its population by version {saved}, which this ditaccel "
                            "does not know; resume it with a newer ditaccel or choose another --out")
    named, init_id = _named_start(pipe, cfg, steps, start)
    shape = (steps, a.num_blocks, len(a.component_names))
    json_kw = {k: v for k, v in kw.items() if isinstance(v, (int, float, str, bool, type(None)))}
    fingerprint = {
        "family": a.family, "shape": list(shape), "components": list(a.component_names),
        "model": str(pipeline_info(pipe).source or type(t).__name__),  # as fingerprinted before PipelineInfo
        "prompts": hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16], "n_prompts": len(prompts),
        "seeds": seeds, "metric": metric, "population": cfg.population, "seed": cfg.seed, "init": init_id,
        "batch_size": cfg.batch_size, "call_kwargs": json_kw, "cost": cfg.cost, "resolution": [height, width],
    }
    if tiebreak is not None:  # absent when off, so searches from before the option resume unchanged
        fingerprint["tiebreak"] = tiebreak
    if cfg.strategy != "ecad":  # likewise: absent for the paper's strategy
        fingerprint["strategy"] = cfg.strategy
    if cfg.fill:  # likewise: absent when off (and in searches from before gap filling)
        fingerprint["fill"] = float(cfg.fill)
    if step_reuse != "components":  # likewise: absent for ECAD's rule (and in searches from before it)
        fingerprint["step_reuse"] = step_reuse
    if seeding != "presets":  # likewise: absent for the named presets alone (and in searches from before it)
        fingerprint["seeding"] = seeding
    if start != 1:  # likewise: absent for version 1 (and in searches from before it)
        fingerprint["start"] = start
    out = Path(cfg.out) if cfg.out is not None else None
    resume_state = _check_out(out, fingerprint, cfg.resume)
    return _Plan(pairs_p, pairs_s, metric, steps, height, width, kw, named, shape, fingerprint, out, resume_state,
                 m.needs_reference, tiebreak, cfg.strategy, float(cfg.fill), step_reuse, seeding, start)


def _step_reuse(cfg: SearchConfig, a: Any) -> str:
    """``cfg.step_reuse``, or the resumed search's own, or the default for this strategy and model; checked."""
    reuse = cfg.step_reuse or _saved(cfg, "step_reuse", "components") or (
        "residual" if cfg.strategy == "structured" and a.stack_residual else "components")
    if reuse not in STEP_REUSE:
        raise DitaccelError(f"unknown step reuse {reuse!r}; use {' or '.join(STEP_REUSE)}")
    if reuse == "residual" and not a.stack_residual:
        raise DitaccelError(f"step reuse 'residual' needs blocks that map hidden states to hidden states; "
                            f"{a.family}'s do not; use --step-reuse components")
    return reuse


TIEBREAK_METRICS = {"psnr": PSNR_CAP, "ssim": 1.0}  # metric -> its value for identical images


def resolve_tiebreak(tiebreak: str | None, metric: str) -> str | None:
    """The tie-break metric to use, or None; one-line errors for unsupported names."""
    if tiebreak is None or str(tiebreak).lower() in ("none", "off", ""):
        return None
    name = str(tiebreak).lower()
    if name == "auto":
        return "psnr" if metric == "adherence" else None
    if name not in TIEBREAK_METRICS:
        raise DitaccelError(f"tie-break metric {tiebreak!r} is not supported; use psnr, ssim or none")
    if name == metric:
        raise DitaccelError(f"the tie-break metric equals the main metric ({metric}); pick another or none")
    return name


def tiebreak_weight(n_images: int) -> float:
    """Weight of the [0, 1] tie-break term in the quality objective.

    Half of one image's share of a per-image metric, so the tie-break orders candidates of equal
    quality but can never outweigh a single image judged differently.
    """
    return 0.5 / max(1, n_images)


def tiebreak_unit(name: str, value: float) -> float:
    """Map a tie-break value to [0, 1], 1 = identical to the uncached images."""
    top = TIEBREAK_METRICS[name]
    return float(min(max(value, 0.0), top) / top) if np.isfinite(value) else 1.0


#: relative cost difference below which two frontier points count as the same speed
FRONTIER_COST_RESOLUTION = 0.005
#: metric -> the smallest difference of its mean that a frontier shows as a difference
METRIC_RESOLUTION = {"psnr": 0.05, "ssim": 1e-4}


def quality_resolution(metric: str, tiebreak: str | None, n_images: int) -> float:
    """Smallest loss difference the frontier treats as real (in the GA's loss units).

    Per-image metrics such as adherence move in steps of 1/n_images, so only continuous metrics
    (and a continuous tie-break, scaled by its weight) need a floor; it removes the near-duplicate
    points that differ in the fourth digit of a tie-break only.
    """
    if tiebreak is not None:
        return tiebreak_weight(n_images) * METRIC_RESOLUTION[tiebreak] / TIEBREAK_METRICS[tiebreak]
    return METRIC_RESOLUTION.get(metric, 0.0)


def _latency_model(pipe: Any, plan: _Plan) -> Any:
    """The search's latency profile: its folder's own when resuming (so candidates keep their prices),
    else this device's cached profile for one image per call, measured now if there is none."""
    from ditaccel.caching.latency import OLDER_VERSIONS, latency_profile, load_profile, save_profile

    path = plan.out / "latency_profile.json" if plan.out is not None else None
    if path is not None and plan.resume_state is not None:
        found = load_profile(path, older=OLDER_VERSIONS["residual" if plan.residual else "components"])
        if found is not None:
            return found
    profile = latency_profile(pipe, plan.call_kwargs, batch=1)
    if path is not None:
        save_profile(profile, path)
    return profile


def check_resumable(out: Path) -> bool:
    """Whether ``out`` holds a search checkpoint to resume; refuses a search whose checkpoint is gone,
    since starting over there would empty its candidates."""
    if (out / "checkpoint").exists():
        return True
    left = [n for n in ("candidates.jsonl", "frontier.json") if (out / n).exists()
            and not ((out / n).is_file() and (out / n).stat().st_size == 0)]
    if left:
        raise DitaccelError(f"--out {out} holds {left[0]} but no checkpoint, so it cannot be resumed; "
                            "restore the checkpoint or choose another --out")
    return False


def _check_out(out: Path | None, fingerprint: dict[str, Any], resume: bool) -> dict[str, Any] | None:
    """Refuse a folder holding another search; on resume, return its checkpoint."""
    if out is None:
        if resume:
            raise DitaccelError("resume needs the search folder; pass --out DIR")
        return None
    if out.exists() and not out.is_dir():
        raise DitaccelError(f"--out {out} is a file; pass a folder")
    ckpt = out / "checkpoint"
    holds = ckpt.exists() or (out / "candidates.jsonl").exists()
    if holds and not resume:
        raise DitaccelError(f"--out {out} already holds a search; pass --resume to continue it or choose another --out")
    if not resume or not check_resumable(out):
        return None
    state = read_json(ckpt, "search checkpoint", f"remove {out} (or pick another --out) and start again")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise DitaccelError(f"{ckpt} is not a ditaccel search checkpoint; pick another --out")
    counts = [state.get(k) for k in ("generations_done", "candidates")]
    history = state.get("history", [])
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts) or not isinstance(
            history, list) or not isinstance(state.get("fingerprint"), dict) or not all(
            isinstance(h, dict) and all(isinstance(h.get(k, 0), int | float) and not isinstance(h.get(k), bool)
                                        for k in ("components_live", "components_alone")) for h in history):
        raise DitaccelError(f"{ckpt} is malformed; remove {out} (or pick another --out) and start again")
    if state.get("fingerprint") != fingerprint:
        old = state.get("fingerprint", {})
        diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
        raise DitaccelError(f"--out {out} holds another search (differs in {', '.join(diff)}); "
                            f"use the same settings to resume or choose another --out")
    return state


class _Progress:
    """A rich progress bar per generation whose label shows the current best points."""

    def __init__(self, enabled: bool, generations: int) -> None:
        self.enabled = enabled
        self.generations = generations
        self._p: Any = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._p = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                               TimeElapsedColumn(), TextColumn("{task.fields[best]}"),
                               console=Console(stderr=True))
            self._p.start()

    def start(self, gen: int, total: int, best: str) -> Any:
        if not self.enabled:
            return None
        return self._p.add_task(f"gen {gen + 1}/{self.generations}", total=max(total, 1), best=best)

    def advance(self, task: Any, n: int) -> None:
        if self.enabled and task is not None:
            self._p.advance(task, n)

    def finish(self, task: Any, total: int, best: str) -> None:
        if self.enabled and task is not None:
            self._p.update(task, completed=max(total, 1), total=max(total, 1), best=best)

    def stop(self) -> None:
        if self.enabled:
            self._p.stop()


def build_algorithm(shape: tuple[int, int, int], population: int, x0: np.ndarray, generations: int,
                    seed: int, strategy: str = "ecad") -> tuple[Any, Any]:
    """pymoo problem and NSGA-II with ECAD's operators (or the structured ones), for ``generations`` with ``seed``.

    Genomes are the step-major flattened bits; a repair fixes step 0 to "recompute" (the runtime
    always computes it), so genomes differing only there count as duplicates.
    """
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.problem import Problem
    from pymoo.core.repair import Repair
    from pymoo.operators.crossover.pntx import PointCrossover
    from pymoo.operators.mutation.bitflip import BitflipMutation

    n_var = int(np.prod(shape))
    per_step = shape[1] * shape[2]

    class _StepZero(Repair):
        def _do(self, problem: Any, X: np.ndarray, **kwargs: Any) -> np.ndarray:
            X = np.asarray(X).astype(bool)
            X[:, :per_step] = True
            return X

    problem = Problem(n_var=n_var, n_obj=2, n_ieq_constr=1, xl=0, xu=1, vtype=bool)
    if strategy == "structured":
        from ditaccel.search.operators import StepCrossover, StructuredMutation

        crossover, mutation = StepCrossover(shape, prob=0.9), StructuredMutation(shape)
    else:
        crossover = PointCrossover(n_points=4, prob=0.9)
        mutation = BitflipMutation(prob=1.0, prob_var=1.0 / n_var)
    algorithm = NSGA2(pop_size=population, sampling=x0, crossover=crossover, mutation=mutation,
                      repair=_StepZero(), eliminate_duplicates=True)
    algorithm.setup(problem, termination=("n_gen", generations), seed=seed, verbose=False)
    return problem, algorithm


class _Pricer:
    """A schedule's MACs and its price on the search's cost axis (latency model or MACs)."""

    def __init__(self, pipe: Any, plan: _Plan, cost: str) -> None:
        self.pipe, self.plan, self.cost = pipe, plan, cost
        self.adapter = get_adapter(pipe)
        full = np.ones(plan.shape, dtype=bool)
        self.full_macs = self.macs(full)
        self.latency = _latency_model(pipe, plan) if cost == LATENCY_MODEL else None
        self.full_s = self.latency.predict(full) if self.latency is not None else None

    def macs(self, bits: np.ndarray) -> int:
        a = self.adapter
        return schedule_macs(self.pipe, CacheSchedule(bits, a.component_names, a.family), self.plan.height,
                             self.plan.width, batch=2)

    def speedup(self, bits: np.ndarray) -> float:
        """Speedup over all-recompute on the frontier's x axis (predicted wall clock, else MACs)."""
        if self.latency is not None:
            return float(self.full_s / self.latency.predict(bits, self.plan.residual))
        return self.full_macs / self.macs(bits)

    def candidate(self, key: str, bits: np.ndarray, res: dict[str, Any], gen: int, name: str) -> Candidate:
        """The record of one evaluated genome: quality and tie-break from ``res``, its prices, the GA's objectives."""
        plan = self.plan
        macs = self.macs(bits)
        speedup, predicted_s, speedup_macs = self.full_macs / macs, None, None
        if self.latency is not None:  # the frontier's x axis becomes the predicted wall-clock speedup
            cost = predicted_s = self.latency.predict(bits, plan.residual)
            speedup, speedup_macs = self.full_s / cost, self.full_macs / macs
        else:
            cost = res["latency_s"] if self.cost == "latency" else macs / 1e9
        reuse = int((~canonical(bits)).sum())
        loss = 1.0 - res["quality"]
        if plan.tiebreak is not None:
            loss += tiebreak_weight(len(plan.prompts)) * (1.0 - tiebreak_unit(plan.tiebreak, res["tiebreak"]))
        return Candidate(key, gen, name, res["quality"], macs, speedup, [loss, cost], 0.5 - reuse, reuse > 0,
                         {"components": res["components"], "components_alone": res["components_alone"]},
                         res.get("details", {}), predicted_s, speedup_macs,
                         res["tiebreak"] if plan.tiebreak is not None else None, res.get("latency_s"))


def _make_backend(pipe: Any, cfg: SearchConfig, plan: _Plan) -> Any:
    """In-process evaluation, or Ray workers that load the pipeline themselves."""
    kwargs = dict(prompts=plan.prompts, seeds=plan.seeds, batch_size=cfg.batch_size,
                  call_kwargs=dict(cfg.call_kwargs), metric=plan.metric, metric_paths=dict(cfg.metric_paths),
                  steps=plan.steps, cost=cfg.cost, share=cfg.share_prefixes, tiebreak=plan.tiebreak,
                  step_reuse=plan.step_reuse)
    if cfg.ray_address is None:
        from ditaccel.search.backend import LocalBackend

        return LocalBackend(pipe, **kwargs)
    from ditaccel.search.backend import RayBackend

    loader = cfg.loader or "ditaccel.pipeline:load_pipeline"
    args = cfg.loader_args
    if args is None:
        src = pipeline_info(pipe).source
        if src is None:
            raise DitaccelError("Ray workers must load the pipeline themselves; pass loader= and "
                                "loader_args= (or load the pipe with ditaccel.load_pipeline)")
        args = [src]
    return RayBackend(cfg.ray_address, cfg.ray_workers, loader, list(args), kwargs)


class _SearchRun:
    """One search: the archive of evaluated candidates (restored on resume), the GA, and the files.

    Phases: ``__init__`` restores or starts the archive; ``run`` does one ``_generation`` after
    another (propose, fill gaps, evaluate what is new, tell the GA), each followed by
    ``_checkpoint``; the frontier is always taken over the whole archive.
    """

    def __init__(self, pipe: Any, cfg: SearchConfig, plan: _Plan) -> None:
        self.pipe, self.cfg, self.plan = pipe, cfg, plan
        self.adapter = get_adapter(pipe)
        self.pricer = _Pricer(pipe, plan, str(cfg.cost))
        self.archive: dict[str, Candidate] = {}
        self.history: list[dict[str, Any]] = []
        self.done_gens = 0
        self.backend: Any = None
        self.names = {pack(b): n for n, b in plan.named}
        self._signal_cache: ChangeSignals | None = None
        self._ladder: list[np.ndarray] = []  # the signals' schedules, offered to the gap filler too
        if plan.resume_state is not None:
            rows = read_candidates(plan.out, int(plan.resume_state["candidates"]), plan.shape)  # type: ignore[arg-type]
            self.archive = {c.genome: c for c in rows}
            self.history = list(plan.resume_state.get("history", []))
            self.done_gens = int(plan.resume_state["generations_done"])
            atomic_write_text(plan.out / "candidates.jsonl", jsonl(rows))  # type: ignore[operator]  # drop a torn tail
        elif plan.out is not None:
            plan.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(plan.out / "candidates.jsonl", "")

    def run(self) -> Frontier:
        cfg = self.cfg
        named = self._named()
        x0, _ = initial_population(named, int(cfg.population), np.random.default_rng(cfg.seed))
        problem, algorithm = build_algorithm(self.plan.shape, int(cfg.population), x0, int(cfg.generations),
                                             cfg.seed, self.plan.strategy)
        bar = _Progress(cfg.progress, int(cfg.generations))
        try:
            for gen in range(int(cfg.generations)):
                self._generation(gen, problem, algorithm, bar)
        finally:
            bar.stop()
            if self.backend is not None:
                self.backend.close()
        frontier = self.frontier()
        frontier.info.update(self._summary())
        if self.plan.out is not None:
            write_frontier(frontier, self.plan.out, plot=True)
        return frontier

    def _generation(self, gen: int, problem: Any, algorithm: Any, bar: _Progress) -> None:
        """Ask the GA, add the gap fillers, evaluate the new genomes, tell the GA its offspring's scores."""
        from pymoo.core.evaluator import Evaluator
        from pymoo.problems.static import StaticProblem

        pop = algorithm.ask()
        X = np.asarray(pop.get("X"), dtype=bool)
        keys = [pack(x) for x in X]
        new: dict[str, np.ndarray] = {}
        for k, x in zip(keys, X, strict=True):
            if k not in self.archive and k not in new:
                new[k] = x.reshape(self.plan.shape)
        filled = {k: v for k, v in self._fill(gen, set(keys)).items() if k not in self.archive}  # a resume replays them
        new.update(filled)
        t0, c0 = time.perf_counter(), time.process_time()
        task = bar.start(gen, len(new), _best_label(self.archive))
        fresh, stats = self._evaluate(new, gen, set(filled), bar, task)
        F = np.array([self.archive[k].objectives for k in keys], dtype=float)
        G = np.array([[self.archive[k].constraint] for k in keys], dtype=float)
        Evaluator().eval(StaticProblem(problem, F=F, G=G), pop)
        algorithm.tell(infills=pop)
        bar.finish(task, len(new), _best_label(self.archive))
        if self.plan.out is not None and fresh:
            append_candidates(self.plan.out / "candidates.jsonl", fresh)
        if gen < self.done_gens:
            return  # replayed from the checkpoint: its history entry is already there
        self.history.append(self._entry(gen, keys, new, set(filled), stats, time.perf_counter() - t0,
                                        time.process_time() - c0))
        self._checkpoint(gen)

    def _named(self) -> list[tuple[str, np.ndarray]]:
        """The initial population's named genomes: all-recompute, any ``--init`` frontier, then the signal
        seeds (``seeding`` "signals"), then the strategy's presets; from start version 2 (structured searches
        begun since), the first of each speed band ahead of the rest (``stratify``)."""
        named = self.plan.named
        at = 1 + sum(1 for n, _ in named[1:] if n.startswith("init:"))  # a --init frontier stays first
        if self.plan.seeding == "signals":
            v2 = self.plan.start >= 2
            rungs = ladders(self._signals(), late=LATE_WEIGHT if v2 else 0.0)
            seeds = signal_seeds(rungs, self.pricer.speedup, TARGETS if v2 else TARGETS_V1)
            named = [*named[:at], *seeds, *named[at:]]
            for n, b in seeds:
                self.names.setdefault(pack(b), n)  # a seed equal to a preset keeps the preset's name
            self._ladder = [b for level_rungs in rungs.values() for b in level_rungs]
        if self.plan.start >= 2:
            named = stratify(named, int(self.cfg.population), self.pricer.speedup, keep=at)
        return named

    def _signals(self) -> ChangeSignals:
        """This search's change signals: its folder's own when resuming (the seeds must be the same), else measured."""
        if self._signal_cache is not None:
            return self._signal_cache
        plan = self.plan
        path = plan.out / "signals.json" if plan.out is not None else None
        if path is not None and plan.resume_state is not None and path.is_file():
            fix = f"remove {path} to measure them again"
            d = read_json(path, "search change signals", fix)
            try:
                self._signal_cache = ChangeSignals.from_dict(d)
            except (KeyError, TypeError, ValueError):
                raise DitaccelError(f"{path} is not a ditaccel change-signals file; {fix}") from None
            if self._signal_cache.component.shape != plan.shape or self._signal_cache.stack.shape != plan.shape[:1]:
                raise DitaccelError(f"{path} holds signals of shape {self._signal_cache.component.shape}, not "
                                    f"this search's {plan.shape}; {fix}")
        else:
            self._signal_cache = measure_signals(self.pipe, plan.prompts, plan.seeds, plan.steps, plan.call_kwargs)
            if path is not None:
                atomic_write_checked_json(path, self._signal_cache.to_dict())
        return self._signal_cache

    def _fill(self, gen: int, proposed: set[str]) -> dict[str, np.ndarray]:
        """Gap fillers (``fill`` x population of them) aimed at the frontier of the candidates evaluated
        before ``gen`` (so a resumed search replays the same choice).

        They join the archive, and so the frontier, but the GA is not told of them: its trajectory is
        the one without filling, so the filled frontier dominates-or-equals the unfilled one, at the
        price of the extra evaluations.
        """
        from ditaccel.search.operators import gap_fill

        n = int(round(self.plan.fill * int(self.cfg.population))) if gen > 0 else 0
        if n == 0:
            return {}
        before = [c for c in self.archive.values() if c.generation < gen]
        points = [(c.speedup, unpack(c.genome, self.plan.shape)) for c in self._front(before)]
        known = {c.genome for c in before} | proposed
        kids = gap_fill(points, n, self.pricer.speedup, known, np.random.default_rng([self.cfg.seed, gen]),
                        pool=self._ladder)
        return {pack(k): k for k in kids}

    def _evaluate(self, new: dict[str, np.ndarray], gen: int, filled: set[str], bar: _Progress, task: Any,
                  ) -> tuple[list[Candidate], Any]:
        """Score the genomes not in the archive (one backend call, prefixes shared) and archive them."""
        if not new:
            return [], None
        if self.backend is None:
            self.backend = _make_backend(self.pipe, self.cfg, self.plan)
        results, stats = self.backend.evaluate(list(new.values()), on_done=lambda n, t=task: bar.advance(t, n))
        fresh = []
        for (k, bits), res in zip(new.items(), results, strict=True):
            name = self.names.get(k, "gapfill" if k in filled else "offspring" if gen else "mutant")
            self.archive[k] = self.pricer.candidate(k, bits, res, gen, name)
            fresh.append(self.archive[k])
        return fresh, stats

    def _entry(self, gen: int, keys: list[str], new: dict[str, np.ndarray], filled: set[str], stats: Any,
               seconds: float, cpu: float) -> dict[str, Any]:
        """The generation's line in the checkpoint's history (its cost, and what prefix sharing saved)."""
        entry: dict[str, Any] = {"generation": gen, "offspring": len(keys), "new": len(new),
                                 "seconds": round(seconds, 3), "cpu_seconds_here": round(cpu, 3)}
        if filled:
            entry["gap_fill"] = len(filled)
        if stats is not None:
            entry.update({"components_live": stats.components_live, "components_alone": stats.components_alone,
                          "saving": round(stats.saving, 4)})
        # the whole generation (re-proposed genomes included) evaluated separately, vs what was done
        everything = sum(self.archive[k].cost["components_alone"] for k in set(keys))
        done = stats.components_live if stats is not None else 0
        entry["components_generation_alone"] = everything
        entry["saving_generation"] = round(everything / done, 4) if done else None
        return entry

    def _checkpoint(self, gen: int) -> None:
        """The frontier so far and the checkpoint, each written atomically, after every generation."""
        plan = self.plan
        if plan.out is None:
            return
        frontier = self.frontier()
        frontier.info.update(self._summary())
        write_frontier(frontier, plan.out, plot=False)
        atomic_write_checked_json(plan.out / "checkpoint", {
            "format": CHECKPOINT_FORMAT, "version": 1, "fingerprint": plan.fingerprint,
            "generations_done": gen + 1, "candidates": len(self.archive), "history": self.history,
            "config": {k: v for k, v in asdict(self.cfg).items() if _jsonable(v)}})

    def _front(self, rows: list[Candidate]) -> list[Candidate]:
        """The feasible non-dominated ``rows``, slowest first.

        With a tie-break, equal-quality points trade fidelity for speed; points a reader cannot tell
        apart (same speedup to 0.5 %, same quality to its resolution) are kept once.
        """
        plan = self.plan
        feasible = [r for r in rows if r.feasible]
        keep = non_dominated([(r.price, -r.loss) for r in feasible],
                             min_gain=quality_resolution(plan.metric, plan.tiebreak, len(plan.prompts)),
                             min_cost_gain=FRONTIER_COST_RESOLUTION)
        return sorted((feasible[i] for i in keep), key=lambda r: (r.speedup, r.quality))

    def frontier(self) -> Frontier:
        """The frontier over every candidate evaluated so far, with the baseline and the named presets."""
        plan, a = self.plan, self.adapter
        rows = list(self.archive.values())
        points = []
        # a schedule priced at 1.0x or slower (its cached components cost less than their hooks on this profile)
        # is no speedup at all: the frontier leaves it out whatever its quality (gap filling still sees it)
        for i, r in enumerate(r for r in self._front(rows) if r.speedup > 1.0):
            sched = CacheSchedule(unpack(r.genome, plan.shape), a.component_names, a.family, (plan.height, plan.width),
                                  metrics={plan.metric: r.quality, "macs": r.macs,
                                           "speedup_macs": r.speedup_macs if r.speedup_macs is not None else r.speedup,
                                           **({"speedup_predicted": r.speedup, "predicted_s": r.predicted_s}
                                              if r.predicted_s is not None else {})},
                                  meta={"searched_by": "ditaccel.search", "generation": r.generation,
                                        "model": plan.fingerprint["model"],
                                        "call_kwargs": plan.fingerprint["call_kwargs"]},
                                  step_reuse=plan.step_reuse)
            details = dict(r.details)
            if r.tiebreak is not None:
                details[plan.tiebreak] = r.tiebreak
            points.append(FrontierPoint(f"p{i:02d}_{r.speedup:.2f}x", r.speedup, r.quality, sched, r.macs,
                                        r.generation, details))
        base = next((r for r in rows if r.name == "none"), None)
        if plan.needs_reference:  # the uncached images are the reference itself: no meaningful baseline score
            baseline = {"quality": None, "macs": self.pricer.full_macs,
                        "note": f"{plan.metric} is measured against this model"}
        else:
            baseline = {"quality": base.quality if base else None, "macs": self.pricer.full_macs,
                        "details": base.details if base else {}}
        presets_pts = [{"name": r.name, "speedup": r.speedup, "quality": r.quality,
                        **({plan.tiebreak: r.tiebreak} if r.tiebreak is not None else {})}
                       for r in rows if r.name not in UNNAMED and not r.name.startswith("init:")]
        return Frontier(points, a.family, plan.metric, baseline, presets_pts,
                        {"tiebreak": plan.tiebreak} if plan.tiebreak else {})

    def _summary(self) -> dict[str, Any]:
        plan, history = self.plan, self.history
        live = sum(h.get("components_live", 0) for h in history)
        alone = sum(h.get("components_alone", 0) for h in history)
        return {"tiebreak": plan.tiebreak, "strategy": plan.strategy, "fill": plan.fill, "step_reuse": plan.step_reuse,
                "seeding": plan.seeding,
                "cost": plan.fingerprint["cost"], "steps": plan.steps, "blocks": plan.shape[1],
                "components": list(plan.fingerprint["components"]), "resolution": [plan.height, plan.width],
                "model": plan.fingerprint["model"], "n_images": len(plan.prompts), "seeds": plan.fingerprint["seeds"],
                "evaluations": len(self.archive), "generations": len(history),
                "population": plan.fingerprint["population"],
                "block_component_evaluations": {"done": live, "separately": alone,
                                                "saving": round(alone / live, 4) if live else 1.0},
                "history": history}


def search(pipe: Any, config: SearchConfig | None = None) -> Frontier:
    """Run the ECAD search on ``pipe`` and return the frontier (also written to ``config.out``)."""
    cfg = replace(config) if config is not None else SearchConfig()
    plan = _resolve(pipe, cfg)
    return _SearchRun(pipe, cfg, plan).run()


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False


def _best_label(archive: dict[str, Candidate]) -> str:
    feasible = [r for r in archive.values() if r.feasible]
    if not feasible:
        return ""
    keep = non_dominated([(r.price, r.quality) for r in feasible])
    pts = sorted((feasible[i] for i in keep), key=lambda r: r.speedup)
    picks = pts if len(pts) <= 4 else [pts[int(round(j * (len(pts) - 1) / 3))] for j in range(4)]
    return f"{len(pts)} pts " + " ".join(f"{r.speedup:.1f}x:{r.quality:.3g}" for r in picks)
