"""The bookkeeping of ``detkeeper config import``: which pipeline field became what, and which not.

:class:`Tracker` records every field the mapping read (`mapped`) and every field it decided not
to carry, with the reason; :func:`unmapped_notes` then walks the whole parsed file and reports
each field that was not read, so nothing in the file goes unmentioned. :class:`Node` is a message
of the parsed file at its dotted path; reading a field through it marks the field as used.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detkeeper.errors import ConfigError
from detkeeper.files import is_url
from detkeeper.tfod.pbtxt import Message, Value
from detkeeper.tfod.reasons import reason_for


@dataclass(frozen=True)
class Mapped:
    """One pipeline field (or a model_main_tf2 flag) and the detkeeper key it became."""

    source: str
    target: str
    value: Any
    comment: str = ""

    def describe(self) -> str:
        return f"{self.source} -> {self.target}: {self.value!r}" + (f" ({self.comment})" if self.comment else "")


@dataclass(frozen=True)
class Note:
    """A pipeline field that was not carried over, and why."""

    path: str
    reason: str
    value: str | None = None  # the value as written, for scalar fields

    def describe(self) -> str:
        shown = f" = {self.value}" if self.value is not None else ""
        return f"{self.path}{shown}: {self.reason}"


@dataclass
class Tracker:
    label: str
    base_dir: Path
    out_dir: Path
    used: set[str] = field(default_factory=set)
    notes: dict[str, str] = field(default_factory=dict)
    mapped: list[Mapped] = field(default_factory=list)
    num_classes_path: str = "model.num_classes"

    def root(self, message: Message) -> "Node":
        return Node(message, "", self)

    def map(self, source: str, target: str, value: Any, comment: str = "") -> None:
        self.mapped.append(Mapped(source, target, value, comment))

    def error(self, path: str, message: str) -> ConfigError:
        return ConfigError(f"{self.label}: {path}: {message}")

    def path_for_yaml(self, path: str) -> str:
        """A pipeline path resolved from base_dir, written relative to the YAML's folder (absolute paths
        and URLs such as ``gs://bucket/train.record``, which tf.io.gfile reads, stay as they are)."""
        if is_url(path):
            return path
        expanded = os.path.expanduser(path)
        if os.path.isabs(expanded):
            return os.path.normpath(expanded)
        absolute = os.path.normpath(os.path.join(self.base_dir, expanded))
        return os.path.relpath(absolute, self.out_dir)

    def absolute(self, path: str) -> Path:
        return Path(os.path.normpath(os.path.join(self.base_dir, os.path.expanduser(path))))


class Node:
    """A message of the parsed file at a dotted path; reading a field marks it as used."""

    def __init__(self, message: Message, path: str, tracker: Tracker) -> None:
        self.message, self.path, self.tracker = message, path, tracker

    def at(self, name: str, index: int | None = None) -> str:
        return child_path(self.path, name, index, len(self.message.get(name, [])))

    def has(self, name: str) -> bool:
        return bool(self.message.get(name))

    def names(self) -> list[str]:
        return list(self.message)

    def use(self, name: str) -> None:
        for index in range(len(self.message.get(name, []))):
            self.tracker.used.add(self.at(name, index))

    def note(self, name: str, reason: str) -> None:
        for index in range(len(self.message.get(name, []))):
            self.tracker.notes[self.at(name, index)] = reason

    def peek(self, name: str) -> Value | None:
        """The field's single value without marking it used (for mappings that decide first)."""
        return self._single(name)

    def _single(self, name: str) -> Value | None:
        values = self.message.get(name, [])
        if len(values) > 1:
            raise self.tracker.error(self.at(name), f"given {len(values)} times; expected one value")
        return values[0] if values else None

    def number(self, name: str, default: float | None = None) -> float | None:
        value = self._single(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.tracker.error(self.at(name), f"expected a finite number, got {value!r}")
        self.use(name)
        return value

    def integer(self, name: str, default: int | None = None) -> int | None:
        value = self.number(name)
        if value is None:
            return default
        if not isinstance(value, int):
            raise self.tracker.error(self.at(name), f"expected an integer, got {value!r}")
        return value

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self._single(name)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.tracker.error(self.at(name), f"expected a string or enum name, got {value!r}")
        self.use(name)
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self._single(name)
        if value is None:
            return default
        known = {True: True, False: False, "t": True, "f": False}
        if isinstance(value, dict) or value not in known or (isinstance(value, int) and value not in (0, 1)):
            raise self.tracker.error(self.at(name), f"expected true or false, got {value!r}")
        self.use(name)
        return known[value]

    def strings(self, name: str) -> list[str]:
        values = self.message.get(name, [])
        for index, value in enumerate(values):
            if not isinstance(value, str):
                raise self.tracker.error(self.at(name, index), f"expected a string, got {value!r}")
        self.use(name)
        return list(values)

    def child(self, name: str) -> "Node | None":
        value = self._single(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.tracker.error(self.at(name), f"expected a message {{ ... }}, got {value!r}")
        return Node(value, self.at(name), self.tracker)

    def children(self, name: str) -> list["Node"]:
        nodes = []
        for index, value in enumerate(self.message.get(name, [])):
            if not isinstance(value, dict):
                raise self.tracker.error(self.at(name, index), f"expected a message {{ ... }}, got {value!r}")
            nodes.append(Node(value, self.at(name, index), self.tracker))
        return nodes

    def oneof(self, what: str) -> tuple[str, "Node"]:
        """The single field set in a `oneof` message (model kind, optimizer, learning rate...)."""
        names = self.names()
        if len(names) != 1:
            found = ", ".join(names) or "none"
            raise self.tracker.error(self.path, f"expected exactly one {what}, found {found}")
        child = self.child(names[0])
        if child is None:
            raise self.tracker.error(self.at(names[0]), f"expected a message {{ ... }} naming the {what}")
        return names[0], child


def child_path(path: str, name: str, index: int | None, count: int) -> str:
    """``parent.name``, with ``[index]`` when the field occurs more than once."""
    suffix = f"[{index}]" if index is not None and count > 1 else ""
    return f"{path}.{name}{suffix}" if path else f"{name}{suffix}"


def unmapped_notes(root: Message, tracker: Tracker) -> list[Note]:
    """Every field of the file that the mapping did not use, in file order, with its reason; then
    the notes on fields the file leaves out, where the API's default is not what detkeeper does."""
    touched = tracker.used | set(tracker.notes)
    notes: list[Note] = []

    def walk(message: Message, path: str) -> None:
        for name, values in message.items():
            for index, value in enumerate(values):
                here = child_path(path, name, index, len(values))
                if here in tracker.notes:  # an explicit note wins over a read that found no use
                    notes.append(Note(here, tracker.notes[here], _shown(value)))
                elif here in tracker.used:
                    continue
                elif isinstance(value, dict) and any(key.startswith(here + ".") for key in touched):
                    walk(value, here)
                else:
                    notes.append(Note(here, reason_for(here, name), _shown(value)))

    walk(root, "")
    listed = {note.path for note in notes}
    # Notes on fields the file leaves out (an API default that differs from what detkeeper does).
    notes += [Note(path, reason) for path, reason in tracker.notes.items() if path not in listed
              and not any(path.startswith(other + ".") for other in listed)]
    return notes


def _shown(value: Value) -> str | None:
    if isinstance(value, dict):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, str) else str(value)
