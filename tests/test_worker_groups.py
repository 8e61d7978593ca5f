"""The suite's own parallel run: tests that share a trained run get one worker and build it once."""

from __future__ import annotations

from pathlib import Path

import worker_groups

CONFTEST = '''
import os
from pathlib import Path

import pytest

import worker_groups


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    worker_groups.group_and_order(items, tests_dir=Path(__file__).parent)


@pytest.fixture(scope="session")
def trained_run():
    """Stands for a trained run: records which worker built it."""
    with open(Path(__file__).parent / "builds.txt", "a") as log:
        log.write(os.environ.get("PYTEST_XDIST_WORKER", "main") + "\\n")
    return "run"
'''

TESTS = {
    "test_export": "def test_export_a(trained_run): pass\ndef test_export_b(trained_run): pass\n",
    "test_report": "def test_report_a(trained_run): pass\ndef test_report_b(trained_run): pass\n",
    "test_plain": "\n".join(f"def test_plain_{i}(): pass" for i in range(8)) + "\n",
    "test_long": "import pytest\n\n@pytest.mark.slow\ndef test_long(): pass\n",
}


def _suite(pytester) -> Path:
    pytester.makeini("[pytest]\nmarkers =\n    slow: long")
    pytester.makepyfile(worker_groups=Path(worker_groups.__file__).read_text(), conftest=CONFTEST, **TESTS)
    return pytester.path


def test_tests_sharing_a_session_fixture_run_in_one_worker_that_builds_it_once(pytester):
    suite = _suite(pytester)
    result = pytester.runpytest_subprocess("-n", "2", "--dist", "loadgroup", "-v", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=13)
    workers = {}
    for line in result.outlines:
        if " PASSED " in line and "trained_run" in line:
            workers.setdefault(line.split()[0], []).append(line)
    assert len(workers) == 1 and len(next(iter(workers.values()))) == 4, result.outlines
    assert (suite / "builds.txt").read_text().split() == [next(iter(workers))[1:-1]]


def test_slow_tests_and_groups_are_handed_out_first(pytester):
    _suite(pytester)
    result = pytester.runpytest_subprocess("--collect-only", "-q", "-p", "no:cacheprovider")
    order = [line.split("::")[-1] for line in result.outlines if "::" in line]
    assert order[0] == "test_long"
    assert order[1:5] == ["test_export_a", "test_export_b", "test_report_a", "test_report_b"]
    assert order[5:] == [f"test_plain_{i}" for i in range(8)]


def test_a_test_without_fixtures_of_its_own_joins_no_group(request):
    """An autouse session fixture under tests/ that is not in PER_WORKER_FIXTURES would join every test
    into one group, and so run the whole suite in one worker (it happened with the verification zygote)."""
    assert worker_groups.shared_fixture_keys(request.node) == set()
