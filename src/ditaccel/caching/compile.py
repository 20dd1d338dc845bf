"""Regional ``torch.compile`` of the cacheable components, so cache schedules and compile combine.

Why: a cache schedule decides, per step, block and component, whether to recompute. Inside one
compiled graph that decision is either a graph break or a guard on the step (a recompile for
every new step pattern, until dynamo's recompile limit). ditaccel keeps the decision in Python
and compiles what it decides about: the ``forward`` of each cacheable sub-module (PixArt's
``attn1``, ``attn2``, ``ff``), compiled once per class, the way diffusers'
``compile_repeated_blocks`` compiles whole blocks. All blocks share the same compiled graphs, and
no schedule, step or cache state ever reaches compiled code: changing the schedule between
calls cannot recompile anything.

How: the class's unbound ``forward`` is compiled once per (class, options) and installed as the
innermost forward of each component, beneath any diffusers hook (so a cache hook added before or
after still decides first), as ``functools.partial(compiled, module)``: ``copy.deepcopy`` of the
transformer then yields copies that run their own weights. Block norms, adaLN modulation, gates
and residual adds, and the transformer's embedders and final layer, stay eager.
"""

from __future__ import annotations

import contextlib
import functools
import json
import types
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ditaccel.errors import ScheduleError
from ditaccel.models import get_adapter

_MARK = "_ditaccel_compiled"
_OPTIONS = "_ditaccel_options"  # on an installed forward: the ``torch.compile`` options it was made with
_COMPILED: dict[tuple[Callable, str], Callable] = {}


def _options_key(options: dict[str, Any]) -> str:
    return json.dumps(options, sort_keys=True, default=repr)


def compiled_function(fn: Callable, options: dict[str, Any]) -> Callable:
    """``torch.compile(fn, **options)``, made once per (function, options) and shared."""
    key = (fn, _options_key(options))
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(fn, **options)
    return _COMPILED[key]


def is_compiled_forward(fn: Any) -> bool:
    """Whether ``fn`` is a component forward installed by ``compile_components``."""
    return isinstance(fn, functools.partial) and getattr(fn, _MARK, False)


def components_compiled(pipe_or_transformer: Any) -> bool:
    """Whether ``compile_components`` is active on this model (a latency profile must not mix the two)."""
    adapter = get_adapter(pipe_or_transformer)
    return any(is_compiled_forward(Slot(adapter.component_module(b, c)).get())
               for b, c, _ in adapter.component_paths())


def compiled_options(module: torch.nn.Module | None) -> dict[str, Any] | None:
    """The ``torch.compile`` options of ``module``'s forward if ``compile_components`` compiled it, else None
    (how a schedule applied beside ``--compile`` finds that it should run compiled block variants)."""
    fn = Slot(module).get() if module is not None else None
    return getattr(fn, _OPTIONS, None) if is_compiled_forward(fn) else None


class Slot:
    """Where a module's innermost forward lives: its first diffusers hook, else ``module.forward``
    (the runtime's block fast path is installed there too)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        refs = getattr(getattr(module, "_diffusers_hook", None), "_fn_refs", None)
        self.ref = refs[0] if refs else None
        self.attr = "forward" if self.ref is None or self.ref.original_forward is None else "original_forward"

    def get(self) -> Any:
        return getattr(self.ref, self.attr) if self.ref is not None else self.module.forward

    def set(self, fn: Any) -> None:
        if self.ref is not None:
            setattr(self.ref, self.attr, fn)
        elif getattr(fn, "__self__", None) is self.module and fn.__func__ is type(self.module).forward:
            self.module.__dict__.pop("forward", None)  # the class's own forward: nothing on the instance
        else:
            self.module.forward = fn


class CompiledComponents:
    """What ``compile_components`` returns: ``remove()`` puts every component's eager forward back."""

    def __init__(self, pipe_or_transformer: Any, options: dict[str, Any]) -> None:
        self.options = dict(options)
        adapter = get_adapter(pipe_or_transformer)
        self._installed: list[tuple[torch.nn.Module, Any]] = []
        for b, c, path in adapter.component_paths():
            module = adapter.component_module(b, c)
            slot = Slot(module)
            prev = slot.get()
            if is_compiled_forward(prev):
                continue  # compiled already (by another handle); that handle owns it
            if not (isinstance(prev, types.MethodType) and prev.__self__ is module):
                self.remove()
                raise ScheduleError(
                    f"cannot compile {path}: its forward is wrapped by another library "
                    f"({type(prev).__name__}); compile before adding that wrapper"
                )
            fn = functools.partial(compiled_function(prev.__func__, self.options), module)
            setattr(fn, _MARK, True)
            setattr(fn, _OPTIONS, self.options)
            slot.set(fn)
            self._installed.append((module, prev))

    @property
    def active(self) -> bool:
        return bool(self._installed)

    def remove(self) -> None:
        """Restore the eager forward of every component this handle compiled (others untouched)."""
        for module, prev in reversed(self._installed):
            slot = Slot(module)
            cur = slot.get()
            if is_compiled_forward(cur) and cur.args[0] is module:
                slot.set(prev)
        self._installed = []

    def __enter__(self) -> CompiledComponents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def compile_components(pipe_or_transformer: Any, **options: Any) -> CompiledComponents:
    """``torch.compile`` every cacheable component of a pipeline's transformer (``options`` go to it).

    Works with or without a cache schedule, applied before or after; the schedule's per-step
    decisions stay in Python, so they add no graph break and no recompile. Returns a handle whose
    ``remove()`` restores the eager forwards.
    """
    return CompiledComponents(pipe_or_transformer, options)


# -- compiled block variants: the glue compiled too -----------------------------------------------


def _variant(fn: Callable[..., Any], mask: int) -> Callable[..., Any]:
    """``fn`` (an adapter's ``cached_block_forward``) for one cache pattern, running its components'
    class forwards ``forwards[slot]`` (beneath their hooks: the caller stores what they return) and returning
    ``(block output, {slot: component output})``.

    Each pattern gets its own code object, so dynamo keeps one cache entry per pattern: a new
    pattern is a first compile, never a recompile of another pattern's graph.
    """
    def block_variant(block: torch.nn.Module, cached: tuple, forwards: tuple, *args: Any,
                      **kwargs: Any) -> tuple[Any, dict]:
        outs: dict[int, Any] = {}

        def call(slot: int, module: torch.nn.Module, *a: Any, **kw: Any) -> Any:
            outs[slot] = forwards[slot](module, *a, **kw)
            return outs[slot]

        return fn(block, cached, call, *args, **kwargs), outs

    code = block_variant.__code__.replace(co_name=f"block_variant_{mask}")
    return types.FunctionType(code, block_variant.__globals__, code.co_name, None, block_variant.__closure__)


_VARIANTS: dict[tuple[Callable[..., Any], int], Callable[..., Any]] = {}
#: (forward, options, input layouts) whose every pattern is compiled. After ``torch._dynamo.reset()``
#: clear it too, or new patterns compile on first use instead of at warm-up (first compiles, not recompiles).
_WARM: set[tuple] = set()


class BlockVariants:
    """The compiled variants of adapters' cached-block forwards, one per (forward, cache pattern, options).

    Why: with a schedule, compiling components leaves the glue (norms, modulation, gates, residual
    adds) eager; a whole-block graph per pattern (at most 2**slots) compiles it too, while the
    choice of pattern stays in Python. Dynamo inlines modules, so every block of a class shares
    each pattern's graph. ``run`` compiles every pattern of a forward on its first use (warm-up),
    so a schedule that later uses new patterns compiles nothing; inputs of a new shape or layout
    (dynamo guards on both) warm up again.
    """

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = dict(options)

    def _fn(self, fn: Callable[..., Any], mask: int) -> Callable[..., Any]:
        if (fn, mask) not in _VARIANTS:
            _VARIANTS[(fn, mask)] = _variant(fn, mask)
        return compiled_function(_VARIANTS[(fn, mask)], self.options)

    def run(self, fn: Callable[..., Any], block: torch.nn.Module, cached: tuple, forwards: tuple, args: tuple,
            kwargs: dict) -> tuple[Any, dict]:
        """``fn``'s compiled variant for the pattern of ``cached``: (block output, computed component outputs)."""
        key = (fn, _options_key(self.options), _layout(args), _layout(tuple(kwargs.values())))
        if key not in _WARM:  # e.g. the first block's input is a transposed view, the others' are not
            _WARM.add(key)
            self._warm_up(fn, block, forwards, args, kwargs)
        mask = sum(1 << i for i, x in enumerate(cached) if x is not None)
        return self._fn(fn, mask)(block, cached, forwards, *args, **kwargs)

    def _warm_up(self, fn: Callable[..., Any], block: torch.nn.Module, forwards: tuple, args: tuple,
                 kwargs: dict) -> None:
        """Compile every pattern now, on these inputs (results discarded; nothing is stored)."""
        slots = len(forwards)
        _, outs = self._fn(fn, 0)(block, (None,) * slots, forwards, *args, **kwargs)
        for mask in range(1, 1 << slots):
            if all(i in outs for i in range(slots) if mask >> i & 1):
                cached = tuple(outs[i] if mask >> i & 1 else None for i in range(slots))
                self._fn(fn, mask)(block, cached, forwards, *args, **kwargs)


@contextlib.contextmanager
def count_recompiles() -> Iterator[Counter]:
    """Count dynamo's recompiles (a frame traced again because every cache entry's guards failed) per code
    name while the block runs: in the yielded ``Counter`` and in ``torch._dynamo.utils.counters["recompiles"]``.

    Why: dynamo counts graphs and graph breaks but not recompiles (its ``error_on_recompile`` raises at
    the first one instead); the bench and tests need the number. Wraps the function dynamo calls to
    explain a recompile, so it counts exactly the frames dynamo itself treats as recompiled.
    """
    import torch._dynamo.convert_frame as convert_frame
    from torch._dynamo.utils import counters

    real = convert_frame.get_and_maybe_log_recompilation_reasons
    seen: Counter = Counter()

    def counting(cache_entries: Any, frame: Any, *args: Any, **kwargs: Any) -> Any:
        seen[frame.f_code.co_name] += 1
        counters["recompiles"][frame.f_code.co_name] += 1
        return real(cache_entries, frame, *args, **kwargs)

    convert_frame.get_and_maybe_log_recompilation_reasons = counting
    try:
        yield seen
    finally:
        convert_frame.get_and_maybe_log_recompilation_reasons = real


def _layout(values: tuple) -> tuple:
    return tuple((tuple(v.shape), v.stride(), v.dtype) if isinstance(v, torch.Tensor) else type(v) for v in values)


def plain_component(module: torch.nn.Module | None, hook_name: str) -> bool:
    """Whether ``module`` runs nothing but its own forward, under the ditaccel cache hook ``hook_name`` or none
    (no torch hooks, no other diffusers or accelerate hook), so a block variant may call its forward directly."""
    if module is None:
        return True
    reg = getattr(module, "_diffusers_hook", None)
    return (list(reg.hooks if reg is not None else ()) in ([hook_name], []) and not module._forward_hooks
            and not module._forward_pre_hooks and getattr(module, "_hf_hook", None) is None
            and not torch.nn.modules.module._global_forward_hooks
            and not torch.nn.modules.module._global_forward_pre_hooks)
