"""Where the test suite's CPU time goes: a pytest plugin, and the table it sums to.

The suite is bound by CPU on 2 cores (both busy nearly all the time), so its wall time on a quiet
machine is about its CPU time / 1.88, and the CPU time, unlike the wall time, barely moves when other
jobs share the machine. Loaded with ``-p suite_cpu``, the plugin records for every test its own CPU
time and that of the child processes it reaped (``getrusage``) or had forked from a zygote
(tests/zygote.py), one JSON line per test, in
``$SUITE_CPU_DIR/<xdist worker>.jsonl``. Children reaped by a background thread (the fault suite's
kill chains) count for whichever test is running then.

Usage:
    SUITE_CPU_DIR=/tmp/suite-cpu PYTHONPATH=benchmarks .venv/bin/python -m pytest -p suite_cpu \\
        -n 2 --dist loadgroup --no-loadscope-reorder -q
    .venv/bin/python benchmarks/suite_cpu.py /tmp/suite-cpu     # core-seconds per test file
"""

from __future__ import annotations

import collections
import json
import os
import resource
import sys
import time
from pathlib import Path

import pytest


def _cpu_seconds() -> tuple[float, float]:
    """This process's CPU seconds, and its children's: those it reaped, and those its zygotes forked
    for it (tests/zygote.py reaps them in the zygote, where getrusage here cannot see them)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    zygote = sys.modules.get("zygote")
    forked = zygote.forked_cpu_seconds if zygote is not None else 0.0
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime + forked


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    own, children, started = *_cpu_seconds(), time.time()
    yield
    own_after, children_after = _cpu_seconds()
    folder = Path(os.environ.get("SUITE_CPU_DIR", "suite-cpu"))
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.jsonl", "a") as out:
        out.write(json.dumps({"id": item.nodeid, "self": own_after - own, "children": children_after - children,
                              "started": started, "wall": time.time() - started}) + "\n")


def main(folder: str) -> None:
    rows = [json.loads(line) for path in sorted(Path(folder).glob("*.jsonl")) for line in path.read_text().splitlines()]
    by_file = collections.Counter()
    for row in rows:
        by_file[row["id"].split("::")[0]] += row["self"] + row["children"]
    print(f"{len(rows)} tests, {sum(by_file.values()):.0f} core-seconds\n\n| core-s | file |\n|---|---|")
    for name, seconds in by_file.most_common(20):
        print(f"| {seconds:.0f} | {name} |")


if __name__ == "__main__":
    main(sys.argv[1])
