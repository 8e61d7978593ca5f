"""The config reference (``docs/config-reference.md``), generated from the schema dataclasses.

Every key of :class:`~detkeeper.config.schema.RunConfig` is listed with its dotted path, its type
as a user writes it in YAML (``int >= 8``, ``"sgd" | "adam" | "adamw"``, ``float in [0, 1]``,
``path``), its default and its help sentence; each section opens with its class docstring. The
text is a pure function of the schema, so a test compares it with the checked-in file and the
reference cannot drift from the code (``detkeeper config reference --out docs/config-reference.md``
or ``make docs`` regenerates it).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from detkeeper.config.schema import RunConfig

REGENERATE_COMMAND = "detkeeper config reference --out docs/config-reference.md"

_TITLE = "# Config reference"

_PREAMBLE = f"""\
<!-- Generated from src/detkeeper/config/schema.py by `{REGENERATE_COMMAND}`
     (or `make docs`); do not edit by hand. tests/docs/test_config_reference.py checks it. -->

A run is one YAML file; every key below is optional unless its default says *required*. A file
may start from a named preset (`preset: demo`; `detkeeper config presets` lists them) and override
any key; `--set KEY=VALUE` overrides on the command line. Relative paths in a YAML file are
relative to that file; in presets and `--set`, to the current directory. `detkeeper config show
FILE` prints the resolved config with every default filled in.

Types are written as in YAML: `int`, `float`, `bool` (`true` / `false`), `string`, `path`, `null`;
`"a" | "b"` is one of those words; `[float, float]` a list of two numbers; `{{string: float}}` a
mapping of names to numbers."""


@dataclasses.dataclass
class _Section:
    """One dataclass and every dotted path it sits at (SourceConfig: data.train, data.val, ...)."""

    cls: type
    paths: list[str]

    @property
    def title(self) -> str:
        return " / ".join(self.paths) if self.paths[0] else "top level"

    @property
    def anchor(self) -> str:
        """The anchor GitHub and most Markdown renderers derive from the heading."""
        return re.sub(r"[^a-z0-9 _-]", "", self.title.lower()).replace(" ", "-")

    def key(self, name: str) -> str:
        """The dotted key of field `name`; a class at several paths shows the last part as <...>."""
        if len(self.paths) == 1:
            return f"{self.paths[0]}.{name}" if self.paths[0] else name
        parents = {path.rpartition(".")[0] for path in self.paths}
        if len(parents) == 1:
            return f"{parents.pop()}.<{_placeholder(self.paths)}>.{name}"
        return f"<{self.title}>.{name}"


def _placeholder(paths: list[str]) -> str:
    return "|".join(path.rpartition(".")[2] for path in paths)


def _sections(root: type = RunConfig) -> list[_Section]:
    """Every dataclass reachable from `root`, depth first in field order, each listed once."""
    found: dict[type, _Section] = {}
    order: list[_Section] = []

    def visit(cls: type, path: str) -> None:
        if cls in found:
            found[cls].paths.append(path)
            return
        section = found[cls] = _Section(cls, [path])
        order.append(section)
        hints = get_type_hints(cls)
        for field in dataclasses.fields(cls):
            inner = _section_class(hints[field.name])
            if inner is not None:
                visit(inner, f"{path}.{field.name}" if path else field.name)

    visit(root, "")
    return order


def _section_class(tp: Any) -> type | None:
    """The dataclass a field holds (directly or as ``X | None``), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if get_origin(tp) in (Union, types.UnionType):
        inner = [arg for arg in get_args(tp) if arg is not type(None)]
        if len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
            return inner[0]
    return None


def all_config_classes(root: type = RunConfig) -> list[type]:
    """Every config dataclass reachable from `root` (the classes the reference documents)."""
    return [section.cls for section in _sections(root)]


_PLAIN = {int: "int", float: "float", str: "string", bool: "bool"}


def yaml_type(tp: Any, metadata: dict | None = None, sections: dict[type, _Section] | None = None) -> str:
    """A field's type as a user writes the value: ``int >= 8``, ``"max" | "min"``, ``path, or null``."""
    metadata = metadata or {}
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        choices = [arg for arg in args if arg is not type(None)]
        text = " | ".join(yaml_type(arg, metadata, sections) for arg in choices)
        return f"{text}, or null" if type(None) in args else text
    if dataclasses.is_dataclass(tp):
        section = (sections or {}).get(tp)
        return f"section [{section.title}](#{section.anchor})" if section else "section"
    if origin is Literal:
        return " | ".join(json.dumps(arg) for arg in args)
    if metadata.get("path"):
        words = [json.dumps(word) for word in metadata.get("path_keywords", ())]
        return " | ".join(words + ["path"])
    if origin is list or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
        return f"list of {yaml_type(args[0])}"
    if origin is tuple:
        return "[" + ", ".join(yaml_type(arg) for arg in args) + "]"
    if origin is dict:
        return "{string: " + yaml_type(args[1]) + "}"
    if tp in _PLAIN:
        return _PLAIN[tp] + _bounds(metadata)
    raise TypeError(f"the config reference cannot describe the type {tp!r}")


def _bounds(metadata: dict) -> str:
    low = ("[", metadata["ge"]) if "ge" in metadata else ("(", metadata["gt"]) if "gt" in metadata else None
    high = ("]", metadata["le"]) if "le" in metadata else (")", metadata["lt"]) if "lt" in metadata else None
    if low and high:
        return f" in {low[0]}{_number(low[1])}, {_number(high[1])}{high[0]}"
    if low:
        return f" {'>=' if low[0] == '[' else '>'} {_number(low[1])}"
    if high:
        return f" {'<=' if high[0] == ']' else '<'} {_number(high[1])}"
    return ""


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def yaml_default(field: dataclasses.Field) -> str:
    """The default as YAML would show it; *required* when there is none."""
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "*required*"
    if dataclasses.is_dataclass(value):
        return "(its keys' defaults)"
    return f"`{_yaml_value(value)}`"


def _yaml_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_yaml_value(item)}" for key, item in value.items()) + "}"
    return repr(value)


def _cell(text: str) -> str:
    """One table cell: one line, pipes escaped (GFM), `<` escaped outside code spans so that
    `val_<name>` is not taken for an HTML tag."""
    parts = " ".join(text.split()).replace("|", "\\|").split("`")
    return "`".join(part if index % 2 else part.replace("<", "&lt;") for index, part in enumerate(parts))


def render_reference(root: type = RunConfig) -> str:
    """The whole reference as Markdown: a preamble, a contents list, one table per section."""
    sections = _sections(root)
    by_class = {section.cls: section for section in sections}
    lines = [_TITLE, "", _PREAMBLE, "", "Sections:", ""]
    lines += [f"- [{section.title}](#{section.anchor})" for section in sections]
    for section in sections:
        hints = get_type_hints(section.cls)
        lines += ["", f"## {section.title}", "", inspect.cleandoc(section.cls.__doc__ or "")]
        if len(section.paths) > 1:
            lines += ["", f"The same keys apply at each of {', '.join(f'`{path}`' for path in section.paths)}."]
        lines += ["", "| key | type | default | meaning |", "|---|---|---|---|"]
        for field in dataclasses.fields(section.cls):
            kind = yaml_type(hints[field.name], dict(field.metadata), by_class)
            lines.append(f"| {_cell(_code(section.key(field.name)))} | {_cell(_code_type(kind))} | "
                         f"{_cell(yaml_default(field))} | {_cell(field.metadata.get('help', ''))} |")
    return "\n".join(lines) + "\n"


def _code_type(kind: str) -> str:
    """Types in code spans, a section link left as a link."""
    return kind if kind.startswith("section") else _code(kind)


def _code(text: str) -> str:
    return f"`{text}`"
