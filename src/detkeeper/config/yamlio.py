"""YAML reading for configs: safe, strict about duplicates and booleans, precise about errors.

PyYAML follows YAML 1.1, where `yes`/`no`/`on`/`off` are booleans, `1e-3` is a *string* and a
repeated key silently wins. Each of those turns a typo into a silently different run, so the
loader here (a :class:`yaml.SafeLoader` subclass: it still builds only plain data, never
objects) uses the YAML 1.2 rules for booleans and floats and rejects duplicate keys.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from detkeeper.errors import ConfigError

_BOOL_TAG = "tag:yaml.org,2002:bool"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated within one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping", node.start_mark,
                        f"found duplicate key {key!r}", key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_ConfigLoader.add_implicit_resolver(
    _FLOAT_TAG,
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str, label: str) -> Any:
    """Parse YAML `text`; a syntax error becomes a ConfigError naming `label`, line and column."""
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{label}: line {mark.line + 1}, column {mark.column + 1}" if mark else label
        context = f" ({error.context})" if error.context else ""
        raise ConfigError(f"{where}: invalid YAML: {error.problem}{context}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{label}: invalid YAML: {error}") from None


class _ConfigDumper(yaml.SafeDumper):
    """SafeDumper quoting by the loader's rules, so a string like "1e5" stays a string."""


_ConfigDumper.yaml_implicit_resolvers = _ConfigLoader.yaml_implicit_resolvers


def _inline_list(dumper: yaml.SafeDumper, data: list) -> yaml.SequenceNode:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


_ConfigDumper.add_representer(list, _inline_list)


def dump_yaml(data: Any) -> str:
    """Block-style YAML in key order, lists inline (`scale_jitter: [0.75, 1.25]`)."""
    return yaml.dump(data, Dumper=_ConfigDumper, sort_keys=False, allow_unicode=True)
