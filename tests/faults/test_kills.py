"""The kill chains of tests/faults/kill_chains.py (started by conftest.py before the rest of the fault
suite, so they run beside it): each must end as the uninterrupted run, having lost nothing."""

from __future__ import annotations

import random

import pytest

from fault_driver import EXPORT_KINDS, TRAINING_KINDS
from kill_chains import EXPORT_KILLS, SEED, TRAINING_CHAINS, TRAINING_KILLS, export_moments, training_moments


@pytest.mark.slow
@pytest.mark.parametrize("chain", range(TRAINING_CHAINS))
def test_training_killed_at_each_moment_of_its_chain_then_rerun_ends_as_the_uninterrupted_run(kill_chains, chain):
    kill_chains[chain].result()


@pytest.mark.slow
def test_export_killed_at_each_moment_then_rerun_publishes_only_a_verified_export(kill_chains):
    kill_chains["export"].result()


def test_the_moments_cover_every_kind_and_are_reachable_in_order():
    rng = random.Random(SEED)  # as kill_chains.plan draws them
    moments = training_moments(rng, [30, 40, 50])  # pruned_at of the reference run (fault_runs.py)
    assert len(moments) == TRAINING_KILLS == len(set(moments))
    assert {kind for kind, _ in moments} == set(TRAINING_KINDS)
    for chain in range(TRAINING_CHAINS):
        ordered = moments[chain::TRAINING_CHAINS]
        assert sum(kind == "status" for kind, _ in ordered) <= 1
        for (kind, step), (next_kind, next_step) in zip(ordered, ordered[1:]):
            # a kill that committed its step (prune) resumes there: the next moment must lie beyond it
            assert next_step > step if kind == "prune" and next_kind != "status" else next_step >= step
    first, overwrite = export_moments(rng)
    assert set(first) == set(EXPORT_KINDS) and overwrite[-1] == "export-publish"
    assert len(first) + len(overwrite) == EXPORT_KILLS and TRAINING_KILLS + EXPORT_KILLS >= 20
