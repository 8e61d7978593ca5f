"""Retention: the best k by the monitored metric plus the latest k, whatever order values come in."""

import math

import pytest
from hypothesis import given, settings, strategies as st

from detkeeper.errors import DetkeeperError
from detkeeper.training.ledger import FileDigest, Ledger, LedgerEntry, RetentionPolicy


def entry(step, value):
    return LedgerEntry(name=f"step-{step:07d}", step=step, epoch=step // 10, monitor_value=value,
                       metrics={"val_mAP": value, "val_mAP50": 0.5}, ema=False,
                       files={"ckpt.index": FileDigest(10, "ab" * 32)})


def test_keeps_the_best_three_and_the_last_two_not_the_latest_five():
    ledger = Ledger(RetentionPolicy("val_mAP", keep_best=3, keep_last=2))
    values = [0.10, 0.40, 0.35, 0.20, 0.50, 0.05, 0.30, 0.15]
    for index, value in enumerate(values):
        ledger.add(entry((index + 1) * 100, value))
    kept = {e.step: e.monitor_value for e in ledger.entries}
    assert kept == {500: 0.50, 200: 0.40, 300: 0.35, 700: 0.30, 800: 0.15}
    assert ledger.best_name == "step-0000500"
    assert [e.step for e in ledger.ranked()] == [500, 200, 300, 700, 800]
    assert len(ledger.history) == len(values)


def test_min_mode_and_nan_never_best():
    ledger = Ledger(RetentionPolicy("val_loss", mode="min", keep_best=1, keep_last=1))
    ledger.add(entry(10, math.nan))
    assert ledger.best_name is None
    ledger.add(entry(20, 3.0))
    ledger.add(entry(30, math.nan))
    ledger.add(entry(40, 2.0))
    assert ledger.best_name == "step-0000040"
    ledger.add(entry(50, math.nan))
    assert {e.step for e in ledger.entries} == {40, 50}


def test_min_delta_keeps_the_earlier_best_pointer_and_its_files():
    ledger = Ledger(RetentionPolicy("val_mAP", keep_best=1, keep_last=1, min_delta=0.01))
    ledger.add(entry(10, 0.500))
    ledger.add(entry(20, 0.505))  # ranks first but is not an improvement by more than min_delta
    ledger.add(entry(30, 0.100))
    assert ledger.best_name == "step-0000010"
    assert {e.step for e in ledger.entries} == {10, 20, 30}


def test_json_round_trip_keeps_nan_and_policy(tmp_path):
    ledger = Ledger(RetentionPolicy("val_mAP", keep_best=2, keep_last=1))
    for step, value in [(10, 0.2), (20, math.nan), (30, 0.4)]:
        ledger.add(entry(step, value))
    ledger.status = {"state": "stopped_early", "step": 30}
    ledger.write(tmp_path / "ledger.json")
    back = Ledger.read(tmp_path / "ledger.json")
    assert back.policy == ledger.policy and back.best_name == ledger.best_name
    assert [e.to_json() for e in back.ranked()] == [e.to_json() for e in ledger.ranked()]
    assert math.isnan(back.history[1]["monitor_value"])
    assert back.status["state"] == "stopped_early"


def test_a_damaged_ledger_is_a_clear_error(tmp_path):
    path = tmp_path / "ledger.json"
    path.write_text('{"version": 1, "policy": ')
    with pytest.raises(DetkeeperError, match="ledger.json: the checkpoint ledger cannot be read"):
        Ledger.read(path)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.one_of(st.floats(0, 1), st.just(math.nan)), min_size=1, max_size=25),
       keep_best=st.integers(1, 4), keep_last=st.integers(1, 3), mode=st.sampled_from(["max", "min"]))
def test_retention_matches_a_direct_computation(values, keep_best, keep_last, mode):
    ledger = Ledger(RetentionPolicy("val_mAP", mode=mode, keep_best=keep_best, keep_last=keep_last))
    for index, value in enumerate(values):
        dropped = ledger.add(entry(index + 1, value))
        assert all(d.name != ledger.best_name for d in dropped)
    numbers = [(v, i + 1) for i, v in enumerate(values) if not math.isnan(v)]
    ranked = sorted(numbers, key=lambda pair: (-pair[0] if mode == "max" else pair[0], pair[1]))
    expected = {step for _, step in ranked[:keep_best]} | set(range(max(1, len(values) - keep_last + 1), len(values) + 1))
    assert {e.step for e in ledger.entries} == expected
    if ranked:
        assert ledger.best_name == f"step-{ranked[0][1]:07d}"
    else:
        assert ledger.best_name is None
