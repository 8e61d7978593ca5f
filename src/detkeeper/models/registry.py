"""One registry of detectors: a dict filled by plain imports of the family modules.

A family module registers builders with :func:`register_model`; :func:`build_model` turns a
``model`` config section into a Keras detector. Tests iterate :func:`list_models`, so every
registered model goes through the same build / train / predict / checkpoint checks.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable

from detkeeper.errors import ConfigError
from detkeeper.models.custom import import_custom_objects

#: Modules whose import registers models; listed here so the registry fills without side effects
#: at `import detkeeper`.
_FAMILY_MODULES = ("detkeeper.models.retinanet", "detkeeper.models.fcos", "detkeeper.models.ssd",
                  "detkeeper.models.efficientdet", "detkeeper.models.hub")


@dataclasses.dataclass(frozen=True)
class Postprocess:
    """Decoding settings shared by every detector: what `predict` keeps after NMS."""

    score_threshold: float = 0.05
    iou_threshold: float = 0.5
    max_detections: int = 100

    @classmethod
    def from_config(cls, evaluation) -> "Postprocess":
        """The settings of a run config's ``evaluation`` section, which training and restoring share."""
        return cls(evaluation.score_threshold, evaluation.iou_threshold, evaluation.max_detections)


ModelBuilder = Callable[..., object]  # (model_config, num_classes, postprocess) -> Detector
ModelCheck = Callable[[object], None]  # (model_config) -> None; raises ConfigError("model.<key>: ...")
_BUILDERS: dict[str, ModelBuilder] = {}
_CHECKS: dict[str, ModelCheck] = {}
#: detkeeper's own resize (``model.resize``: mode, method), for families that register none.
DEFAULT_RESIZE = ("pad", "antialias")
_RESIZES: dict[str, tuple[str, str]] = {}
_ZOO_FAMILIES: set[str] = set()
#: ``model`` keys only some families read, with the value that means "not used": every other family
#: refuses another value rather than ignore it.
FAMILY_OPTIONS = {"neck.repeats": None, "neck.separable": None, "backbone.depth_multiplier": 1.0,
                  "head.kernel_size": None, "head.share_tower": None, "head.separable": None,
                  "head.assigner": None, "head.classification_loss": None}
_OPTIONS: dict[str, frozenset[str]] = {}


def register_model(name: str, check: ModelCheck | None = None, resize: tuple[str, str] = DEFAULT_RESIZE,
                   reads_zoo_checkpoints: bool = False,
                   options: tuple[str, ...] = ()) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: make `builder(model_config, num_classes, postprocess)` available under `name`.

    `check(model_config)` raises the ``ConfigError`` the builder would raise for the config's names
    and sizes, without building anything, so a run can refuse a config before it reads its data.
    `resize` is the family's ``model.resize`` (mode, method) where the config leaves it unset: a TF
    OD API family resizes as its zoo configs do. `reads_zoo_checkpoints`: its models load TF OD
    API zoo checkpoints by the API's keys (:mod:`detkeeper.models.ssd.zoo_checkpoint`).
    `options`: the keys of :data:`FAMILY_OPTIONS` the family reads (``neck.repeats``: a BiFPN's
    iterations; ``backbone.depth_multiplier`` and the ``head`` ones: the TF OD API SSDs' fields, but
    ``head.assigner`` and ``head.classification_loss``: FCOS's training options).
    """
    unknown = set(options) - set(FAMILY_OPTIONS)
    if unknown:
        raise ValueError(f"unknown family options {sorted(unknown)}; expected some of {sorted(FAMILY_OPTIONS)}")

    def add(builder: ModelBuilder) -> ModelBuilder:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is registered twice")
        _BUILDERS[name] = builder
        _RESIZES[name] = resize
        if reads_zoo_checkpoints:
            _ZOO_FAMILIES.add(name)
        _OPTIONS[name] = frozenset(options)
        if check is not None:
            _CHECKS[name] = check
        return builder

    return add


def model_resize(model_config) -> tuple[str, str]:
    """``model.resize`` (mode, method) as the model applies it: the config's values, the family's
    registered ones where it leaves them unset."""
    _load_families()
    mode, method = _RESIZES.get(model_config.name, DEFAULT_RESIZE)
    return model_config.resize.mode or mode, model_config.resize.method or method


def resize_settings(model_config) -> dict[str, str]:
    """The ``Detector`` arguments for ``model.resize`` (see :func:`model_resize`)."""
    mode, method = model_resize(model_config)
    return {"resize_mode": mode, "resize_method": method}


def _load_families() -> None:
    for module in _FAMILY_MODULES:
        importlib.import_module(module)


def list_models() -> list[str]:
    _load_families()
    return sorted(_BUILDERS)


def zoo_checkpoint_families() -> list[str]:
    """The registered families whose models read TF OD API zoo checkpoints."""
    _load_families()
    return sorted(_ZOO_FAMILIES)


def _builder_for(model_config) -> ModelBuilder:
    """The builder ``model.name`` names, after importing ``model.custom_objects_module`` (it may
    register the model); a ``ConfigError`` naming the key otherwise."""
    _load_families()
    import_custom_objects(model_config.custom_objects_module)
    if model_config.name not in _BUILDERS:
        raise ConfigError(f"model.name: unknown model {model_config.name!r}; registered models: "
                          f"{', '.join(sorted(_BUILDERS))}")
    for key, unused in FAMILY_OPTIONS.items():
        section, field = key.split(".")
        value = getattr(getattr(model_config, section), field)
        if value != unused and key not in _OPTIONS.get(model_config.name, ()):
            takers = sorted(name for name, options in _OPTIONS.items() if key in options)
            raise ConfigError(f"model.{key}: {model_config.name} does not read it (the families that do: "
                              f"{', '.join(takers)}); expected {'null' if unused is None else unused}, got {value!r}")
    return _BUILDERS[model_config.name]


def model_config_problems(model_config) -> list[str]:
    """What `build_model` would refuse in ``model``, as ``"<key under model>: <message>"`` lines:
    the name, the custom module and the family's registered check. Builds nothing, reads no data."""
    try:
        _builder_for(model_config)
        check = _CHECKS.get(model_config.name)
        if check is not None:
            check(model_config)
    except ConfigError as error:
        return [_relative_to_model(str(error), "name")]
    return []


def _relative_to_model(message: str, fallback_key: str) -> str:
    """``"model.backbone.name: unknown ..."`` -> ``"backbone.name: unknown ..."``."""
    key, separator, rest = message.partition(": ")
    if separator and key.startswith("model."):
        return f"{key[len('model.'):]}: {rest}"
    return f"{fallback_key}: {message}"


def build_model(model_config, num_classes: int, postprocess: Postprocess | None = None):
    """The detector named by ``model_config.name`` for `num_classes` classes.

    ``model.custom_objects_module`` is imported first, so it can register Keras layers (for
    ``model.head.block``) and whole models (with :func:`register_model`) that the name refers to.
    """
    builder = _builder_for(model_config)
    if num_classes < 1:
        raise ConfigError(f"a detector needs at least one class, got {num_classes}")
    return builder(model_config, num_classes, postprocess or Postprocess())
