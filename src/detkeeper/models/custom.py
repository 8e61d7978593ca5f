"""User code in a detector: the module named by ``model.custom_objects_module`` and head blocks.

A run config can name an importable module of the user's own, ``model.custom_objects_module:
my_layers``. detkeeper imports it (never ``exec``) before building a model and before loading a
``.keras`` archive, so whatever it registers at import time is there when it is needed:

- Keras-serializable layers (``@keras.saving.register_keras_serializable(package="my_layers")``).
  ``model.head.block: my_layers>SeparableBlock`` then puts that layer in place of every hidden
  conv of the built-in heads' towers (see :func:`tower_layer`).
- Whole detector families: a module that calls ``detkeeper.models.register_model("my_detector")``
  can be used with ``model.name: my_detector``.

Finding the module is the user's concern: its folder must be on ``sys.path`` (``PYTHONPATH``, or
the current directory for ``python -m``); errors say so and name the module and the config key.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import keras

from detkeeper.errors import ConfigError

CONFIG_KEY = "model.custom_objects_module"


def import_custom_objects(module_name: str | None, source: str = CONFIG_KEY) -> ModuleType | None:
    """Import `module_name` (None: nothing to do) so its Keras objects and models register.

    `source` says where the name came from (a config key, an archive) for the error message. A
    module that cannot be found, or whose own code raises while importing, is a ``ConfigError``
    naming the module and `source`, with the original error's text.
    """
    if module_name is None:
        return None
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and (module_name == error.name or module_name.startswith(error.name + ".")):
            raise ConfigError(
                f"{source}: cannot import module {module_name!r} ({error}); the folder holding it "
                "must be on the Python path (PYTHONPATH, or the current directory)") from error
        raise ConfigError(f"{source}: module {module_name!r} was found but importing it failed: "
                          f"{error}") from error
    except Exception as error:  # the user's module's own code raised: still a user error
        raise ConfigError(f"{source}: importing module {module_name!r} failed: "
                          f"{type(error).__name__}: {error}") from error


def tower_layer(block: str | None, channels: int, name: str, **conv_kwargs) -> keras.layers.Layer:
    """One hidden layer of a head tower.

    With `block` None, the family's own 3x3 "same" ``Conv2D(channels, ...)`` with `conv_kwargs`.
    Otherwise the Keras layer registered as `block` (``"package>ClassName"``, see
    ``keras.saving.register_keras_serializable``), built as ``LayerClass(channels, name=name)``;
    it must keep the spatial size. The family decides what follows it (FCOS: GroupNorm + ReLU).
    """
    if block is None:
        return keras.layers.Conv2D(channels, 3, padding="same", name=name, **conv_kwargs)
    package, _, class_name = block.rpartition(">")
    if not package or not class_name:
        raise ConfigError(f"model.head.block: expected a registered layer name 'package>ClassName', "
                          f"got {block!r}")
    layer_class = keras.saving.get_registered_object(block)
    if layer_class is None:
        registered = sorted(key for key in keras.saving.get_custom_objects() if key.startswith(package + ">"))
        raise ConfigError(
            f"model.head.block: no Keras layer is registered as {block!r} (registered under "
            f"{package!r}: {', '.join(registered) or 'nothing'}); register it with "
            f"@keras.saving.register_keras_serializable(package={package!r}) in the module named by "
            f"{CONFIG_KEY}, which detkeeper imports before building or loading a model")
    if not (isinstance(layer_class, type) and issubclass(layer_class, keras.layers.Layer)):
        raise ConfigError(f"model.head.block: {block!r} is registered but is not a Keras layer class "
                          f"(got {layer_class!r})")
    try:
        return layer_class(channels, name=name)
    except Exception as error:
        raise ConfigError(f"model.head.block: building {block!r} as {class_name}({channels}, name={name!r}) "
                          f"failed: {type(error).__name__}: {error}") from error


def run_tower(tower: list, x):
    """`x` through each layer of a head tower in turn (the tower is shared by every pyramid level)."""
    for layer in tower:
        x = layer(x)
    return x
