"""Fixtures shared across the test suite (the real datasets beside the repository, a small generated
shapes dataset built once per session) and what running the suite on several cores needs.

`make test` runs the suite in pytest-xdist workers with ``--dist loadgroup``; worker_groups.py
keeps the tests that share a trained run in one worker. The fault suite's tally is summed over the
workers here.
"""

from __future__ import annotations

import os
import types
from pathlib import Path

import pytest

# One inter-op thread per TensorFlow process (subprocesses inherit it): `make test` runs one xdist
# worker per core, and a pool per worker as wide as the machine oversubscribes the cores. 4-7% less
# CPU and wall time on tests/models/test_detectors.py + tests/training/test_trainer.py
# (benchmarks/RESULTS.md). Set before anything imports TensorFlow; a user's own setting wins.
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

from detkeeper.data.synthetic import generate_shapes_dataset  # noqa: E402

import worker_groups  # noqa: E402, I001  (tests/ modules)
import zygote  # noqa: E402
from fault_tally import TALLY  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _shared(path: Path, name: str) -> Path:
    if not path.exists():
        pytest.skip(f"../shared/data/{name} not found: the shared datasets sit beside the "
                    "repository in CI and developer checkouts")
    return path


@pytest.fixture(scope="session", autouse=True)
def detkeeper_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """detkeeper's cache (TF OD API model folders read into runs) in the session's temporary
    folder, never the user's ~/.cache; subprocesses inherit it."""
    folder = tmp_path_factory.mktemp("detkeeper-cache")
    os.environ["DETKEEPER_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="session", autouse=True)
def forked_verification_processes():
    """Export verification's fresh process (detkeeper/export/standalone_check.py, ``python -I``) for
    the exports made inside the test processes, forked from a zygote that imported TensorFlow alone
    (zygote.py): the same process without its 4 CPU seconds of importing TensorFlow. Exports made by
    `detkeeper` subprocesses (the fault suite, the README's commands, distributed runs) still start
    it fresh, so that path is tested too."""
    from detkeeper.export import verify

    def run(argv, *, env, timeout, **options):
        assert argv[1:2] == ["-I"] and options == {"capture_output": True, "text": True}, (argv, options)
        return zygote.run("tensorflow", argv[2:], env, timeout)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(verify, "subprocess", types.SimpleNamespace(run=run))
        yield


@pytest.fixture(scope="session")
def bccd_root() -> Path:
    """The BCCD blood-cell dataset in VOC layout (364 images, 3 classes)."""
    return _shared(SHARED_DATA / "bccd" / "BCCD", "bccd")


@pytest.fixture(scope="session")
def coco_fake100_dir() -> Path:
    """COCO val2014 ground truth for 100 images and the reference fake detections."""
    return _shared(SHARED_DATA / "coco-fake100", "coco-fake100")


@pytest.fixture(scope="session")
def tfod_oracle_dir() -> Path:
    """What the TF Object Detection API itself computes for zoo models with seeded weights: per
    model a pipeline.config, a zoo-layout checkpoint and reference.npz (see its README.md)."""
    return _shared(SHARED_DATA / "tfod-oracle", "tfod-oracle")


@pytest.fixture(scope="session")
def shapes_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small shapes dataset (24/8/8 images at 128 px, seed 0), generated once per session.

    Its parameters are in its manifest.json; read them from there rather than repeating them.
    """
    return generate_shapes_dataset(tmp_path_factory.mktemp("shapes") / "shapes",
                                   num_train=24, num_val=8, num_test=8, image_size=128)


SPLIT_GROUP = pytest.StashKey[str]()


@pytest.hookimpl(tryfirst=True)  # before xdist turns the xdist_group marks into node-id suffixes
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    worker_groups.group_and_order(items)


def pytest_collection_finish(session: pytest.Session) -> None:
    if hasattr(session.config, "workerinput") and session.config.getvalue("loadgroup"):
        problem = worker_groups.split_group(session.items)
        if problem:
            session.config.stash[SPLIT_GROUP] = problem


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Where xdist split a group, every test fails saying why, instead of running the trained runs twice."""
    if SPLIT_GROUP in item.config.stash:
        pytest.fail(item.config.stash[SPLIT_GROUP], pytrace=False)


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
