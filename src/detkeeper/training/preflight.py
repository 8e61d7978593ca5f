"""What a run config is checked for before training reads any data.

``load_config`` checks types, ranges, cross-field rules and that input files exist. The names a
config gives to registries that live above the config layer (the detector, its backbone and
head block, a custom module, the monitored metric) are checked here, and passed into
``load_config(checks=TRAINING_CHECKS)`` so their problems are reported with the file each key came
from, together with the schema's, in seconds, instead of after every dataset split was read.
"""

from __future__ import annotations

from detkeeper.config.schema import MONITOR_STATS, RunConfig
from detkeeper.config.validate import Problem
from detkeeper.evaluation.monitors import registered_monitors
from detkeeper.models.registry import model_config_problems


def model_problems(config: RunConfig) -> list[Problem]:
    """What building ``model`` would refuse: an unknown name, backbone or head block, a module that
    does not import, a family's own rules (see ``register_model(check=...)``)."""
    problems = []
    for text in model_config_problems(config.model):
        relative, _, message = text.partition(": ")
        problems.append(Problem(("model", *relative.split(".")), message))
    return problems


def monitor_problems(config: RunConfig) -> list[Problem]:
    """``evaluation.monitor`` must be a value the evaluation callback logs; checked after the model's
    custom module was imported, since it may register monitors."""
    monitor = config.evaluation.monitor
    known = [*MONITOR_STATS, *config.evaluation.weighted_monitors, *registered_monitors()]
    if monitor.startswith("val_") and monitor[len("val_"):] in known:
        return []
    return [Problem(("evaluation", "monitor"),
                    f"expected one of {', '.join('val_' + name for name in known)}, got {monitor!r}")]


def deprecation_warnings(config: RunConfig) -> list[str]:
    """Settings that are accepted (saved run configs hold them) but no longer change anything."""
    warnings = []
    if config.checkpoint.min_delta:
        warnings.append(f"checkpoint.min_delta ({config.checkpoint.min_delta:g}) changes nothing any more: the best "
                        "checkpoint is always the top of the ranking by evaluation.monitor; what counts as an "
                        "improvement for patience is early_stopping.min_delta")
    return warnings


#: In order: the model's checks import ``model.custom_objects_module``, which may register monitors.
TRAINING_CHECKS = (model_problems, monitor_problems)
