"""The fault suite's tally: tests count what they did through the `faults` fixture
(``faults.injected()``, ``faults.recovered()``, ``faults.bad_input()``, ``faults.lost(n)``), and the
session ends with ``fault suite: N faults injected, N recoveries verified, N bad inputs tried, 0 data lost``.

A module of its own, not conftest.py: the counts are made in the fault suite's process (an xdist
worker under ``make test``) and printed by the root conftest, which sums them over the workers.
"""

from __future__ import annotations

import threading

NAMES = ("injected", "recovered", "bad_input", "lost")


class FaultTally:
    """Thread-safe counts for the summary line (the kill chains run in threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts = dict.fromkeys(NAMES, 0)
        self.used = False

    def _add(self, name: str, n: int) -> None:
        with self._lock:
            self.used = True
            self.counts[name] += n

    def injected(self, n: int = 1) -> None:
        self._add("injected", n)

    def recovered(self, n: int = 1) -> None:
        self._add("recovered", n)

    def bad_input(self, n: int = 1) -> None:
        self._add("bad_input", n)

    def lost(self, n: int) -> None:
        """Record `n` pieces of lost data (0 when a check found none); the test asserts n == 0 itself."""
        self._add("lost", n)

    def merge(self, counts: dict[str, int]) -> None:
        """Add another process's counts (an xdist worker's, sent at its session end)."""
        for name in NAMES:
            self._add(name, int(counts[name]))

    def summary(self) -> str:
        c = self.counts
        return (f"fault suite: {c['injected']} faults injected, {c['recovered']} recoveries verified, "
                f"{c['bad_input']} bad inputs tried, {c['lost']} data lost")


TALLY = FaultTally()
