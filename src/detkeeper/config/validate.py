"""Turn plain YAML data into typed config dataclasses, collecting every problem at once.

The dataclass type hints are the schema: the converter checks each value against its field's
type, the range in the field's metadata (see :func:`setting`) and the class's own ``validate()``
cross-checks. It never stops at the first mistake, so a user fixes a config in one pass instead
of one error per run.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import types
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")

KeyPath = tuple[str | int, ...]
"""Where a value sits in the config: ("train", "optimizer", "learning_rate") or ("x", 0)."""


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with a config, at `key`, told as what was expected and what was found."""

    key: KeyPath
    message: str


def format_key(key: KeyPath) -> str:
    """`("data", "augment", "scale_jitter", 1)` -> `data.augment.scale_jitter[1]`."""
    text = ""
    for part in key:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    default_factory: Any = dataclasses.MISSING,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    path: bool = False,
    path_keywords: tuple[str, ...] = (),
) -> Any:
    """A dataclass field carrying its help sentence, its allowed range and whether it is a path.

    `ge`/`gt`/`le`/`lt` bound numbers (None values skip the check). `path` marks a filesystem
    path the loader makes absolute; `path_keywords` are values of that field that are words, not
    paths (a backbone's "imagenet").
    """
    metadata: dict[str, Any] = {"help": help}
    bounds = {"ge": ge, "gt": gt, "le": le, "lt": lt}
    metadata.update({name: bound for name, bound in bounds.items() if bound is not None})
    if path:
        metadata["path"] = True
        metadata["path_keywords"] = path_keywords
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def from_data(cls: type[T], data: Any) -> tuple[T | None, list[Problem]]:
    """Build `cls` from plain data; return the instance (None if anything is wrong) and problems."""
    problems: list[Problem] = []
    try:
        result = _convert(cls, data, (), problems)
    except _Mismatch:
        problems.append(Problem((), f"expected {describe(cls)}, got {_short_repr(data)}"))
    return (None if problems else result), problems


def describe(tp: Any, metadata: Mapping[str, Any] | None = None) -> str:
    """What a value of type `tp` looks like, in words: "an integer >= 1", "one of 'max', 'min'"."""
    bounds = _describe_bounds(metadata or {})
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        choices = [describe(arg) for arg in args if arg is not type(None)]
        text = " or ".join(choices) + (f" {bounds}" if bounds else "")
        return f"{text}, or null" if type(None) in args else text
    text = _describe_plain(tp)
    return f"{text} {bounds}" if bounds else text


class _Mismatch(Exception):
    """The value itself has the wrong type; the caller knows the key and reports it."""


_ACCEPTED: dict[type, tuple[type, ...]] = {
    bool: (bool,), int: (int,), float: (int, float), str: (str,)
}
_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
_PLURALS = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}


def _describe_plain(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if tp in _NAMES:
        return _NAMES[tp]
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if origin is list:
        return f"a list of {_PLURALS.get(args[0], 'items')}"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_PLURALS.get(args[0], 'items')}"
        if len(set(args)) == 1:
            return f"a list of {len(args)} {_PLURALS.get(args[0], 'items')}"
        return f"a list of {len(args)} items"
    if dataclasses.is_dataclass(tp):
        return "a mapping of settings"
    if origin is dict:
        return f"a mapping of names to {_describe_plain(args[1]) if args else 'values'}"
    return getattr(tp, "__name__", repr(tp))


def _describe_bounds(metadata: Mapping[str, Any]) -> str:
    symbols = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    return " and ".join(f"{symbols[name]} {metadata[name]}" for name in symbols if name in metadata)


def _in_bounds(value: Any, metadata: Mapping[str, Any]) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return True
    if isinstance(value, float) and math.isnan(value) and _describe_bounds(metadata):
        return False
    return (
        ("ge" not in metadata or value >= metadata["ge"])
        and ("gt" not in metadata or value > metadata["gt"])
        and ("le" not in metadata or value <= metadata["le"])
        and ("lt" not in metadata or value < metadata["lt"])
    )


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _convert(tp: Any, value: Any, key: KeyPath, problems: list[Problem]) -> Any:
    """Return `value` as `tp`. Problems inside containers are appended at their own key; a value
    of the wrong type altogether raises :class:`_Mismatch` for the caller to report."""
    origin, args = get_origin(tp), get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise _Mismatch
        return _convert_dataclass(tp, value, key, problems)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (arg for arg in args if arg is not type(None)):
            try:
                return _convert(arg, value, key, problems)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is Literal:
        if value in args and type(value) in {type(arg) for arg in args}:
            return value
        raise _Mismatch
    if origin in (list, tuple):
        return _convert_sequence(tp, value, key, problems)
    if origin is dict:
        return _convert_mapping(tp, value, key, problems)
    if tp in _ACCEPTED:
        # bool is a subclass of int: `steps: true` must not read as 1.
        if isinstance(value, _ACCEPTED[tp]) and (tp is bool or not isinstance(value, bool)):
            return float(value) if tp is float else value
        raise _Mismatch
    raise TypeError(f"config schema uses an unsupported type {tp!r} at {format_key(key)}")


def _convert_sequence(tp: Any, value: Any, key: KeyPath, problems: list[Problem]) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if not isinstance(value, (list, tuple)):
        raise _Mismatch
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        if len(value) != len(args):
            raise _Mismatch
        item_types = list(args)
    else:
        item_types = [args[0]] * len(value)
    items = []
    for index, (item_type, item) in enumerate(zip(item_types, value)):
        try:
            items.append(_convert(item_type, item, key + (index,), problems))
        except _Mismatch:
            problems.append(
                Problem(key + (index,), f"expected {describe(item_type)}, got {_short_repr(item)}")
            )
    return tuple(items) if origin is tuple else items


def _convert_mapping(tp: Any, value: Any, key: KeyPath, problems: list[Problem]) -> dict:
    """``dict[str, V]``: string keys, each value converted as V and reported at its own key."""
    if not isinstance(value, Mapping):
        raise _Mismatch
    value_type = get_args(tp)[1]
    converted = {}
    for name, item in value.items():
        if not isinstance(name, str) or not name:
            problems.append(Problem(key, f"expected non-empty string keys, got {_short_repr(name)}"))
            continue
        try:
            converted[name] = _convert(value_type, item, key + (name,), problems)
        except _Mismatch:
            problems.append(Problem(key + (name,), f"expected {describe(value_type)}, got {_short_repr(item)}"))
    return converted


def _convert_dataclass(cls: type, data: Mapping, key: KeyPath, problems: list[Problem]) -> Any:
    """Build one section: unknown keys, missing keys, types and ranges, then `cls.validate()`."""
    already = len(problems)
    fields = {field.name: field for field in dataclasses.fields(cls) if field.init}
    for name in data:
        if name not in fields:
            problems.append(Problem(key + (str(name),), _unknown_key_message(str(name), fields)))
    values: dict[str, Any] = {}
    hints = _hints(cls)
    for name, field in fields.items():
        if name not in data:
            if _is_required(field):
                expected = describe(hints[name], field.metadata)
                message = f"required key missing; expected {expected}"
                problems.append(Problem(key + (name,), message))
            continue
        value = data[name]
        try:
            converted = _convert(hints[name], value, key + (name,), problems)
            valid = _in_bounds(converted, field.metadata)
        except _Mismatch:
            valid = False
        if valid:
            values[name] = converted
        else:
            expected = describe(hints[name], field.metadata)
            got = _short_repr(value)
            problems.append(Problem(key + (name,), f"expected {expected}, got {got}"))
    if len(problems) > already:
        return None
    instance = cls(**values)
    for text in getattr(instance, "validate", lambda: [])():
        relative, _, message = text.partition(": ")
        problems.append(Problem(key + tuple(relative.split(".")), message))
    return instance


def _is_required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def _unknown_key_message(name: str, fields: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(name, list(fields), n=1)
    if close:
        return f"unknown key, did you mean {close[0]!r}?"
    return "unknown key; expected one of " + ", ".join(repr(field) for field in fields)
