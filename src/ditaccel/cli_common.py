"""What every ``ditaccel`` subcommand shares: argument types, model flags, ``--out`` and ``--metric-path``.

Why a module of its own: ``ditaccel.cli`` (the entry point) registers the ``search`` and ``eval``
subcommands from ``ditaccel.search.cli`` and ``ditaccel.evaluate.cli``; they take their shared
flags from here, so nothing imports the entry point back.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ditaccel.errors import DitaccelError, UsageError

if TYPE_CHECKING:
    from ditaccel.quant.io import QuantizedFolder

console = Console(stderr=True)


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors reach ``main`` and print as one ``ditaccel: error:`` line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}; see `{self.prog} --help`")


def number_type(cast: Callable[[str], Any], ok: Callable[[Any], bool], need: str,
                what: str = "a number") -> Callable[[str], Any]:
    """An argparse type: ``cast`` the text, then refuse values ``ok`` rejects with ``need``."""
    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{need}, got {text}")
        return value

    return parse


# --steps 0 would write a non-denoised image; seeds are numpy's range; nan/inf CFG scales are nonsense
positive_int = number_type(int, lambda v: v >= 1, "must be >= 1", "a whole number")
non_negative_int = number_type(int, lambda v: 0 <= v < 2**63, "must be in 0 .. 2**63-1", "a whole number")
guidance_scale = number_type(float, lambda v: 0 <= v < float("inf"), "must be a finite number >= 0")


def progress() -> Progress:
    """A rich progress bar on stderr, kept on screen when done."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=False,
    )


# ----------------------------------------------------------------------------- the model


def add_model_args(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--device``/``--dtype`` and ``--quantized``: what ``load_model`` reads."""
    p.add_argument("--model", default=None, help="pipeline folder or hub id (default: the bundled model)")
    from ditaccel.device import add_device_args

    add_device_args(p)
    p.add_argument("--quantized", type=Path, default=None, help="folder written by `ditaccel quantize`")


def add_compile_arg(p: argparse.ArgumentParser) -> None:
    """``--compile``: regional torch.compile of the cacheable components (see ditaccel.caching.compile)."""
    p.add_argument("--compile", action="store_true",
                   help="torch.compile (inductor) each cacheable component; cache schedules then add no graph "
                        "break and no recompile (the first generation pays the compile time)")


def load_model(args: argparse.Namespace) -> Any:
    """The pipeline ``add_model_args``' flags name (see ``build_model``); a damaged ``--quantized`` fails first."""
    quantized = getattr(args, "quantized", None)
    if quantized is not None:  # before the model loads; the checked folder is not hashed again when loading
        from ditaccel.quant import open_quantized

        quantized = open_quantized(quantized)
    return build_model(args.model, args.device, getattr(args, "dtype", "auto"), quantized,
                       getattr(args, "compile", False))


def build_model(model: str | None, device: str = "auto", dtype: Any = "auto",
                quantized: str | Path | QuantizedFolder | None = None, compile: bool = False) -> Any:
    """``load_pipeline(model)``, then the 4-bit weights of a ``ditaccel quantize`` folder, then ``--compile``.

    The one place ``--quantized``/``--compile`` act: the CLI and the Ray workers that rebuild the
    driver's model (``ditaccel.search.backend.load_for_worker``) both call it.
    """
    from ditaccel.pipeline import load_pipeline

    pipe = load_pipeline(model, device=device, dtype=dtype)
    if quantized is not None:
        from ditaccel.quant import load_quantized

        load_quantized(quantized, pipe)
    if compile:
        from ditaccel.caching import compile_components

        compile_components(pipe)
    return pipe


# ----------------------------------------------------------------------------- --out


def _non_empty(folder: Path) -> bool:
    return any(folder.iterdir())


def check_out(out: Path, reuse_flag: str | None = None, reuse: bool = False, to: str = "",
              holds: Callable[[Path], bool] = _non_empty, what: str = "is not empty") -> Path:
    """The one ``--out`` check of every command, before any work: a folder path ditaccel can write.

    Commands that would mix new output with an earlier run's name the flag that allows it
    (``reuse_flag``, e.g. ``--resume``; passed: ``reuse``): without it, a folder that ``holds``
    earlier output is refused with ``--out OUT <what>; pass <reuse_flag><to> or choose a new folder``.
    """
    from ditaccel._io import check_out_dir

    check_out_dir(out)
    if reuse_flag is not None and not reuse and out.is_dir() and holds(out):
        raise DitaccelError(f"--out {out} {what}; pass {reuse_flag}{to} or choose a new folder")
    return out


# ----------------------------------------------------------------------------- --metric-path


def add_metric_path_arg(p: argparse.ArgumentParser) -> None:
    """``--metric-path KEY=PATH`` (repeatable), its help naming every registered metric's keys."""
    from ditaccel.metrics import available_metrics, metric_path_keys

    keys = "; ".join(f"{name}: {', '.join(metric_path_keys(name))}" for name in available_metrics()
                     if metric_path_keys(name))
    p.add_argument("--metric-path", action="append", metavar="KEY=PATH", default=None,
                   help=f"local weights (a path or hub id) for a learned metric, repeatable, e.g. "
                        f"clip_path=/models/clip. Keys by metric: {keys}. Unset keys come from the $DITACCEL_* "
                        "variables (e.g. $DITACCEL_CLIP), else the package's default weights")


def parse_metric_paths(items: Sequence[str] | None, metrics: str | Sequence[str] | None = None) -> dict[str, str]:
    """``--metric-path`` items as ``{key: path}``.

    A malformed item, or a key that none of ``metrics`` (None: any registered metric) takes, is
    refused in one line naming the keys.
    """
    from ditaccel.metrics import check_metric_paths

    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise DitaccelError(f"--metric-path {item!r} is not KEY=PATH (e.g. clip_path=/models/clip)")
        out[key.strip()] = value.strip()
    check_metric_paths(metrics, out, flag="--metric-path")
    return out


def metric_names_help() -> str:
    """The registered metric names, comma-separated, for ``--metric``/``--metrics`` help."""
    from ditaccel.metrics import available_metrics

    return ", ".join(available_metrics())
