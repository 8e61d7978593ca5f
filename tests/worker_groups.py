"""Which tests must share a pytest-xdist worker, and the order workers are handed them.

Tests that use the same expensive session or module fixture (a trained run, an export, the fault
suite's kill chains) go in one ``xdist_group``, found from the fixtures each test uses, so a new
test joins its run's group without a mark and the run is built once, in one worker. Groups and
tests marked slow are handed out first, so no long test starts last while the other worker idles.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

#: Session fixtures cheap enough to build once per worker: their users need not share a worker.
PER_WORKER_FIXTURES = frozenset({"shapes_dataset", "bccd_root", "coco_fake100_dir", "tfod_oracle_dir", "faults",
                                 "detkeeper_cache", "forked_verification_processes"})
TESTS = Path(__file__).resolve().parent


def shared_fixture_keys(item: pytest.Item, tests_dir: Path = TESTS) -> set[str]:
    """The session and module fixtures defined under `tests_dir` that `item` uses (directly or through
    other fixtures), as keys that tie tests together: a session fixture by name, a module one per module."""
    keys = set()
    for name, definitions in item._fixtureinfo.name2fixturedefs.items():
        definition = definitions[-1]
        if definition.scope not in ("session", "package", "module", "class") or name in PER_WORKER_FIXTURES:
            continue
        source = inspect.getsourcefile(definition.func)
        if source is None or tests_dir not in Path(source).resolve().parents:
            continue  # pytest's own (tmp_path_factory and the like)
        keys.add(name if definition.scope in ("session", "package") else f"{item.path.name}:{name}")
    return keys


def groups(items: list[pytest.Item], tests_dir: Path = TESTS) -> dict[pytest.Item, str]:
    """Tests joined by any shared fixture, transitively (union-find), each group named by a key of it."""
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    keys = {item: sorted(shared_fixture_keys(item, tests_dir)) for item in items}
    for item_keys in keys.values():
        for key in item_keys[1:]:
            parent[root(key)] = root(item_keys[0])
    return {item: root(item_keys[0]) for item, item_keys in keys.items() if item_keys}


def group_and_order(items: list[pytest.Item], tests_dir: Path = TESTS) -> None:
    """Mark each test's group, then reorder `items` in place: whole groups together, groups with slow
    tests first, then bigger groups first; collection order otherwise."""
    grouped = groups(items, tests_dir)
    for item, group in grouped.items():
        item.add_marker(pytest.mark.xdist_group(group))
    members: dict[str, list[pytest.Item]] = {}
    for item in items:
        members.setdefault(grouped.get(item, item.nodeid), []).append(item)

    def cost_rank(group: list[pytest.Item]) -> tuple[bool, int]:
        return not any(item.get_closest_marker("slow") for item in group), -len(group)

    items[:] = [item for group in sorted(members.values(), key=cost_rank) for item in group]


def split_group(items: list[pytest.Item]) -> str | None:
    """Why xdist would split a group, or None. ``--dist loadgroup`` groups by a node-id suffix xdist adds
    from the marks; pytest 9.2 ignores it (pytest-dev/pytest-xdist#1386) and the groups split silently."""
    for item in items:
        mark = item.get_closest_marker("xdist_group")
        if mark and not item.nodeid.endswith(f"@{mark.args[0]}"):
            return (f"pytest-xdist did not put {item.nodeid} in group '{mark.args[0]}' "
                    "(pytest-dev/pytest-xdist#1386, pytest 9.2): install the test extras' pytest<9.2 "
                    "with `make install`")
    return None
