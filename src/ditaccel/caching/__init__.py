"""Caching runtime: schedules, presets, the hooks that apply them, and their MACs.

See ``ditaccel.caching.runtime`` for how steps are tracked and how the search can count,
snapshot and restore the caches.
"""

from ditaccel.caching import presets
from ditaccel.caching.compile import CompiledComponents, compile_components
from ditaccel.caching.cost import schedule_macs
from ditaccel.caching.runtime import CacheHandle, CacheState, apply_schedule
from ditaccel.caching.schedule import CacheSchedule

__all__ = ["CacheHandle", "CacheSchedule", "CacheState", "CompiledComponents", "apply_schedule", "compile_components",
           "presets", "schedule_macs"]
