"""Caching runtime: schedules, presets, the hooks that apply them, their MACs and predicted seconds.

See ``ditaccel.caching.runtime`` for how steps are tracked and how the search can count,
snapshot and restore the caches.
"""

from ditaccel.caching import presets
from ditaccel.caching.compile import CompiledComponents, compile_components
from ditaccel.caching.cost import predicted_seconds, schedule_macs
from ditaccel.caching.latency import LatencyProfile, latency_profile
from ditaccel.caching.runtime import CacheHandle, CacheState, apply_schedule
from ditaccel.caching.schedule import CacheSchedule

__all__ = ["CacheHandle", "CacheSchedule", "CacheState", "CompiledComponents", "LatencyProfile", "apply_schedule",
           "compile_components", "latency_profile", "predicted_seconds", "presets", "schedule_macs"]
