"""Keras ``.keras`` archives of detectors: written atomically, loaded safely.

A ``.keras`` file is a zip of ``config.json`` (the architecture), ``model.weights.h5`` and
``metadata.json``; nothing in it is pickled. Loading runs Keras with ``safe_mode=True`` unless the
caller says otherwise, so an archive holding Python bytecode (a ``Lambda`` layer with a lambda) is
refused rather than executed.

Keras does not import the module that defines custom layers by itself. A detector records
``model.custom_objects_module`` in its config; :func:`load_keras_archive` reads that name from
``config.json`` (plain JSON, nothing deserialized) and imports the module before Keras rebuilds
the model. detkeeper's own classes (detectors, the COCO metric and optimizers of a compiled model)
are found the same way: each serialized object records its module, and those of the installed
``detkeeper`` package are imported, so this layer never names a module above it. When a class still
cannot be found, the error names it, the module its config says defines it, and how to pass one.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Iterator

import keras

from detkeeper.errors import ConfigError, DetkeeperError
from detkeeper.files import atomic_path
from detkeeper.models.custom import import_custom_objects
from detkeeper.models.registry import list_models

_MISSING_CLASS = re.compile(r"Could not (?:locate|deserialize) (?:class|function) '([^']+)'")


def save_keras_archive(model: keras.Model, path: str | os.PathLike) -> Path:
    """Write `model` to `path` (must end in ``.keras``) atomically: a temporary file in the same
    folder, flushed to disk, then renamed over `path`, so a crash never leaves half an archive."""
    path = Path(path)
    if path.suffix != ".keras":
        raise DetkeeperError(f"{path}: a Keras archive's file name must end in .keras")
    if not model.built:
        raise ValueError(f"model {model.name!r} has no weights yet: call it on a batch before saving it")
    with atomic_path(path, suffix=".tmp.keras") as tmp:
        keras.saving.save_model(model, tmp, overwrite=True)
    return path


def load_keras_archive(path: str | os.PathLike, custom_objects_module: str | None = None,
                       safe_mode: bool = True) -> keras.Model:
    """The model saved in the ``.keras`` file `path`.

    Imports `custom_objects_module` if given, else the module the archive's config records (a
    detector's ``custom_objects_module``), detkeeper's own model families and the detkeeper modules its
    objects name (a compiled model's metric and optimizer); then
    ``keras.saving.load_model(path, safe_mode=safe_mode)``. Keep `safe_mode` on for files you did
    not make: off, a ``Lambda`` layer's stored bytecode runs on load.
    """
    path = Path(path)
    config = read_archive_config(path)
    if safe_mode:
        lambdas = sorted(_layers_with_lambdas(config))
        if lambdas:
            raise DetkeeperError(
                f"{path}: refused: layer(s) {', '.join(map(repr, lambdas))} hold a Python lambda, and "
                "loading one runs code stored in the file. Replace the Lambda layer with a registered "
                "layer class, or, only for a file you trust, load it with safe_mode=False")
    list_models()  # detkeeper's own detector classes register on import
    for module in sorted(_detkeeper_modules(config)):  # e.g. the metric and optimizer of a compiled model
        importlib.import_module(module)
    if custom_objects_module is not None:
        import_custom_objects(custom_objects_module, source=f"{path}: load_keras_archive(custom_objects_module=...)")
    else:
        recorded = _recorded_module(config)
        import_custom_objects(recorded, source=f"{path} (its config records custom_objects_module {recorded!r}; "
                                               "pass custom_objects_module=... to use another)")
    try:
        return keras.saving.load_model(path, safe_mode=safe_mode)
    except ConfigError as error:  # raised while rebuilding, e.g. a head block that is not registered
        raise ConfigError(f"{path}: {error}") from error
    except TypeError as error:
        missing = _MISSING_CLASS.search(str(error))
        if missing is None:
            raise
        name = missing.group(1)
        modules = sorted(_modules_defining(config, name))
        defined_in = f" (its config says it is defined in module {', '.join(map(repr, modules))})" if modules else ""
        module = modules[0] if modules else "your_module"
        raise ConfigError(
            f"{path}: cannot load: class {name!r}{defined_in} is not registered with Keras in this "
            f"process. Import the module that registers it before loading: pass "
            f"custom_objects_module={module!r} to load_keras_archive (or set model.custom_objects_module: "
            f"{module} in the run config), with its folder on the Python path") from error
    except ValueError as error:
        if "safe_mode" not in str(error):
            raise
        raise DetkeeperError(f"{path}: refused in safe mode: {error}") from error
    except (OSError, zipfile.BadZipFile) as error:
        raise DetkeeperError(f"{path}: cannot read the Keras archive: {error}") from error


def read_archive_config(path: str | os.PathLike) -> dict:
    """The architecture stored in a ``.keras`` file, as plain JSON: nothing is deserialized or run.

    Checks that `path` exists, is a zip whose members are intact (CRC) and holds ``config.json``.
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise DetkeeperError(f"{path}: expected a Keras archive ending in .keras")
    if not path.is_file():
        raise DetkeeperError(f"{path}: Keras archive not found")
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
            if damaged is not None:
                raise DetkeeperError(f"{path}: the Keras archive is damaged: member {damaged!r} fails its checksum")
            if "config.json" not in archive.namelist():
                raise DetkeeperError(f"{path}: not a Keras archive: it has no config.json")
            return json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise DetkeeperError(f"{path}: not a readable Keras archive (truncated or not a .keras zip): "
                             f"{error}") from error
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DetkeeperError(f"{path}: the Keras archive's config.json is not valid JSON: {error}") from error


def _recorded_module(config: dict) -> str | None:
    module = config.get("config", {}).get("custom_objects_module") if isinstance(config, dict) else None
    return module if isinstance(module, str) and module else None


def _detkeeper_modules(config: dict) -> set[str]:
    """The modules of the installed detkeeper package that define objects serialized in `config`:
    importing one registers its classes. Only modules that exist in the package are returned, so
    a file cannot make the loader import anything else."""
    modules = {node["module"] for node, _ in _objects(config)
               if isinstance(node.get("module"), str) and node["module"].startswith("detkeeper.")}
    return {module for module in modules if _exists(module)}


def _exists(module: str) -> bool:
    """Whether `module` can be imported; a missing one is left to Keras, whose error names the class."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def _objects(node, owner: str | None = None) -> Iterator[tuple[dict, str | None]]:
    """Every serialized Keras object (a dict with ``class_name``) under `node`, with the name of the
    nearest enclosing named object."""
    if isinstance(node, dict):
        if "class_name" in node:
            name = node.get("config", {}).get("name") if isinstance(node.get("config"), dict) else None
            owner = name or owner
            yield node, owner
        for value in node.values():
            yield from _objects(value, owner)
    elif isinstance(node, list):
        for value in node:
            yield from _objects(value, owner)


def _layers_with_lambdas(config: dict) -> set[str]:
    return {owner or "?" for node, owner in _objects(config) if node.get("class_name") == "__lambda__"}


def _modules_defining(config: dict, class_name: str) -> set[str]:
    return {node["module"] for node, _ in _objects(config)
            if node.get("class_name") == class_name and isinstance(node.get("module"), str)}
