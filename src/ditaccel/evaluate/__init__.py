"""Side-by-side evaluation of ditaccel's methods and the peers' on the same prompts, seeds and machine.

``evaluate(EvalConfig(methods="baseline,fora:3,fbc,fp4-w4a8", prompts="heldout", out=...))``
writes results.md/json, grid.png and quality_vs_speed.png. The ``--methods`` grammar is in
``ditaccel.evaluate.methods``; the glue that runs diffusers' caches on PixArt is in
``ditaccel.caching.dynamic``.
"""

from ditaccel.caching.dynamic import PeerHandle, PeerUnavailable, apply_cachedit, apply_peer_cache
from ditaccel.evaluate.methods import (
    METHOD_NAMES,
    REGISTRY,
    Method,
    MethodEntry,
    MethodSpec,
    Prepared,
    QuantSettings,
    installed,
    parse_methods,
    prepare,
    resolve_methods,
)
from ditaccel.evaluate.runner import EvalConfig, EvalResult, MethodResult, check_reference, evaluate, plan

__all__ = [
    "METHOD_NAMES", "REGISTRY", "EvalConfig", "EvalResult", "Method", "MethodEntry", "MethodResult", "MethodSpec",
    "PeerHandle", "PeerUnavailable", "Prepared", "QuantSettings", "apply_cachedit", "apply_peer_cache", "check_reference", "evaluate",
    "installed", "parse_methods", "plan", "prepare", "resolve_methods",
]
