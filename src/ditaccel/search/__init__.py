"""ECAD search: a Pareto frontier of caching schedules (NSGA-II via pymoo), cheap by prefix sharing.

``search(pipe, SearchConfig(...)) -> Frontier``; ``load_frontier(dir)``; ``select(frontier,
speedup=2.5 | min_quality=Q, out=FILE)``. See ``engine.py`` for the GA and its reliability,
``evaluate.py`` for prefix sharing, ``backend.py`` for Ray.
"""

import sys
import types
from typing import Any

from ditaccel.search.engine import SearchConfig, search
from ditaccel.search.evaluate import EvalStats, PrefixEvaluator
from ditaccel.search.frontier import (
           Frontier,
           FrontierPoint,
           load_frontier,
           non_dominated,
           parse_speedup,
           select,
)

__all__ = ["EvalStats", "Frontier", "FrontierPoint", "PrefixEvaluator", "SearchConfig", "load_frontier",
           "non_dominated", "parse_speedup", "search", "select"]


class _CallableModule(types.ModuleType):
    """Lets ``ditaccel.search(pipe, SearchConfig(...))`` call the function although the package
    ``ditaccel.search`` shares its name (importing a submodule rebinds the parent attribute)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Frontier:
        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
