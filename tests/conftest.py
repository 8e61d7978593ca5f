"""Fixtures shared across the test suite (the real datasets beside the repository, a small generated
shapes dataset built once per session) and what running the suite on several cores needs.

`make test` runs the suite in pytest-xdist workers with ``--dist loadgroup``. Tests that share an
expensive session or module fixture (a trained run, the fault suite's kill chains) are put in one
group here, so the fixture is built once, in one worker; the groups and the slow tests are handed
out first, so no long test starts last.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from detkeeper.data.synthetic import generate_shapes_dataset
from fault_tally import TALLY

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _shared(path: Path, name: str) -> Path:
    if not path.exists():
        pytest.skip(f"../shared/data/{name} not found: the shared datasets sit beside the "
                    "repository in CI and developer checkouts")
    return path


@pytest.fixture(scope="session")
def bccd_root() -> Path:
    """The BCCD blood-cell dataset in VOC layout (364 images, 3 classes)."""
    return _shared(SHARED_DATA / "bccd" / "BCCD", "bccd")


@pytest.fixture(scope="session")
def coco_fake100_dir() -> Path:
    """COCO val2014 ground truth for 100 images and the reference fake detections."""
    return _shared(SHARED_DATA / "coco-fake100", "coco-fake100")


@pytest.fixture(scope="session")
def shapes_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small shapes dataset (24/8/8 images at 128 px, seed 0), generated once per session.

    Its parameters are in its manifest.json; read them from there rather than repeating them.
    """
    return generate_shapes_dataset(tmp_path_factory.mktemp("shapes") / "shapes",
                                   num_train=24, num_val=8, num_test=8, image_size=128)


#: Session fixtures cheap enough to build once per worker: their users need not share a worker.
PER_WORKER_FIXTURES = frozenset({"shapes_dataset", "bccd_root", "coco_fake100_dir", "faults"})
TESTS = Path(__file__).resolve().parent


def _shared_fixture_keys(item: pytest.Item) -> set[str]:
    """The session/module fixtures of this suite that `item` uses, as keys that tie tests together."""
    keys = set()
    for name, definitions in item._fixtureinfo.name2fixturedefs.items():
        definition = definitions[-1]
        if definition.scope not in ("session", "package", "module", "class") or name in PER_WORKER_FIXTURES:
            continue
        source = inspect.getsourcefile(definition.func)
        if source is None or TESTS not in Path(source).resolve().parents:
            continue  # pytest's own (tmp_path_factory and the like)
        keys.add(name if definition.scope in ("session", "package") else f"{item.path.name}:{name}")
    return keys


def _groups(items: list[pytest.Item]) -> dict[pytest.Item, str]:
    """Tests joined by any shared fixture, transitively, each group named after its first key."""
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    keys = {item: sorted(_shared_fixture_keys(item)) for item in items}
    for item_keys in keys.values():
        for key in item_keys[1:]:
            parent[root(key)] = root(item_keys[0])
    return {item: root(item_keys[0]) for item, item_keys in keys.items() if item_keys}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    groups = _groups(items)
    for item, group in groups.items():
        item.add_marker(pytest.mark.xdist_group(group))
    members: dict[str, list[pytest.Item]] = {}
    for item in items:
        members.setdefault(groups.get(item, item.nodeid), []).append(item)

    def cost_rank(group: list[pytest.Item]) -> tuple[bool, int]:
        return not any(item.get_closest_marker("slow") for item in group), -len(group)

    # Whole groups stay together in their first member's place; groups with slow tests, then big ones, first.
    ordered = sorted(members.values(), key=cost_rank)  # stable: collection order within a rank
    items[:] = [item for group in ordered for item in group]


UNGROUPED = pytest.StashKey[str]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Under ``--dist loadgroup`` xdist groups by a node-id suffix it adds from the marks above; where it
    cannot (pytest 9.2, pytest-dev/pytest-xdist#1386) the groups would split silently and each worker
    would build the trained runs again: every test then fails, saying why."""
    if not (hasattr(session.config, "workerinput") and session.config.getvalue("loadgroup")):
        return
    for item in session.items:
        mark = item.get_closest_marker("xdist_group")
        if mark and not item.nodeid.endswith(f"@{mark.args[0]}"):
            session.config.stash[UNGROUPED] = (
                f"pytest-xdist did not put {item.nodeid} in group '{mark.args[0]}' (pytest-dev/pytest-xdist#1386, "
                "pytest 9.2): install the test extras' pytest<9.2 with `make install`")
            return


def pytest_runtest_setup(item: pytest.Item) -> None:
    if UNGROUPED in item.config.stash:
        pytest.fail(item.config.stash[UNGROUPED], pytrace=False)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """An xdist worker sends its fault tally to the controller with its other results."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None and TALLY.used:
        workeroutput["fault_tally"] = dict(TALLY.counts)


@pytest.hookimpl(optionalhook=True)  # an xdist hook: pytest without xdist does not know it
def pytest_testnodedown(node, error) -> None:
    counts = getattr(node, "workeroutput", {}).get("fault_tally")
    if counts:
        TALLY.merge(counts)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TALLY.used and not hasattr(terminalreporter.config, "workeroutput"):
        terminalreporter.write_sep("=", "fault suite")
        terminalreporter.write_line(TALLY.summary())
