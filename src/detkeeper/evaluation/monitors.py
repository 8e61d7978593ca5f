"""Custom monitors: extra ``val_<name>`` values computed from an evaluation's stats.

A registry of plain functions, without Keras, so the config checks that run before training
(``training.preflight``) can list the registered names without importing TensorFlow; the Keras
callback (:mod:`detkeeper.evaluation.callback`) computes them after each validation pass.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

from detkeeper.config.schema import MONITOR_STATS

Monitor = Callable[[Mapping[str, float]], float]
_MONITORS: dict[str, Monitor] = {}


def register_monitor(name: str, function: Monitor) -> Monitor:
    """Make ``val_<name>`` available to every evaluation: `function` gets the stats
    (``{"mAP": ..., "mAP50": ..., "latency_ms": ...}``, without the prefix) and returns a float."""
    if not name.isidentifier():
        raise ValueError(f"monitor name must be an identifier, got {name!r}")
    _MONITORS[name] = function
    return function


def weighted_monitor(weights: Mapping[str, float]) -> Monitor:
    """``sum(weight * stat)``, e.g. ``{"mAP50": 0.1, "mAP": 0.9}``; unknown stat names fail at once."""
    known = set(MONITOR_STATS)
    unknown = sorted(set(weights) - known)
    if unknown:
        raise ValueError(f"weighted monitor: unknown stats {unknown}; known: {sorted(known)}")
    return lambda stats: math.fsum(float(weight) * stats[name] for name, weight in weights.items())


def registered_monitors() -> dict[str, Monitor]:
    """Every monitor registered so far, by name."""
    return dict(_MONITORS)
