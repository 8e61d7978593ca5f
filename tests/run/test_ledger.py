"""Retention: the best k by the monitored metric plus the latest k, whatever order values come in."""

import json
import math

import pytest
from hypothesis import given, settings, strategies as st

from detkeeper.errors import DetkeeperError
from detkeeper.run.ledger import FileDigest, Ledger, LedgerEntry, RetentionPolicy


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


def test_best_is_the_top_of_the_ranking_whatever_min_delta():
    """min_delta is what counts as an improvement for patience; "the best checkpoint" is the top."""
    ledger = Ledger(RetentionPolicy("val_mAP", keep_best=1, keep_last=1, min_delta=0.01))
    ledger.add(entry(10, 0.500))
    ledger.add(entry(20, 0.509))  # not an improvement by more than min_delta, yet it ranks first
    ledger.add(entry(30, 0.100))
    assert ledger.best_name == "step-0000020" == ledger.ranked()[0].name
    assert {e.step for e in ledger.entries} == {20, 30}  # step 10 is neither the best 1 nor the last 1


def test_a_stored_best_that_is_not_the_top_is_not_believed(tmp_path):
    """A ledger written when min_delta could hold the pointer back reads with the top as best."""
    ledger = Ledger(RetentionPolicy("val_mAP", keep_best=2, keep_last=1, min_delta=0.01))
    for step, value in [(10, 0.500), (20, 0.509), (30, 0.1)]:
        ledger.add(entry(step, value))
    data = ledger.to_json()
    data["best"] = "step-0000010"
    (tmp_path / "ledger.json").write_text(json.dumps(data))
    back = Ledger.read(tmp_path / "ledger.json")
    assert back.best.name == back.best_name == "step-0000020"
    assert back.to_json()["best"] == "step-0000020"


def test_a_step_saved_again_with_a_lower_value_gives_up_best():
    """Resumed from an older checkpoint after the latest was damaged: step 300 is evaluated again."""
    ledger = Ledger(RetentionPolicy("val_mAP", keep_best=2, keep_last=1))
    for step, value in [(100, 0.30), (200, 0.50), (300, 0.60)]:
        ledger.add(entry(step, value))
    assert ledger.best_name == "step-0000300"
    ledger.add(entry(300, 0.40))
    assert ledger.best_name == "step-0000200"
    assert {e.step: e.monitor_value for e in ledger.entries} == {200: 0.50, 300: 0.40}
    assert [row["monitor_value"] for row in ledger.history] == [0.30, 0.50, 0.40]


def test_forgetting_the_best_moves_best_to_the_next_in_the_ranking():
    ledger = Ledger(RetentionPolicy("val_mAP", keep_best=3, keep_last=1))
    for step, value in [(100, 0.30), (200, 0.50), (300, 0.40)]:
        ledger.add(entry(step, value))
    ledger.forget(["step-0000200"])
    assert ledger.best_name == "step-0000300"
    ledger.forget(["step-0000300", "step-0000100"])
    assert ledger.best is None and ledger.best_name is None


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


@settings(max_examples=300, deadline=None)
@given(adds=st.lists(st.tuples(st.integers(1, 8), st.one_of(st.floats(0, 1), st.just(math.nan))),
                     min_size=1, max_size=30),
       keep_best=st.integers(1, 4), keep_last=st.integers(1, 3), mode=st.sampled_from(["max", "min"]),
       min_delta=st.sampled_from([0.0, 0.01, 0.2]))
def test_retention_with_steps_saved_again_matches_a_model(adds, keep_best, keep_last, mode, min_delta):
    """Steps come again (resumes from older checkpoints) with new values; min_delta never moves best.

    The model: a dict step -> value; a step saved again replaces its value; after each save the
    best `keep_best` (by value, NaN never, earlier step on a tie) and the `keep_last` highest steps stay.
    """
    ledger = Ledger(RetentionPolicy("val_mAP", mode=mode, keep_best=keep_best, keep_last=keep_last,
                                    min_delta=min_delta))
    model: dict[int, float] = {}
    for step, value in adds:
        dropped = ledger.add(entry(step, value))
        model[step] = value
        ranked = sorted(((v, s) for s, v in model.items() if not math.isnan(v)),
                        key=lambda pair: (-pair[0] if mode == "max" else pair[0], pair[1]))
        keep = {s for _, s in ranked[:keep_best]} | set(sorted(model)[-keep_last:])
        model = {s: v for s, v in model.items() if s in keep}
        kept = {e.step: e.monitor_value for e in ledger.entries}
        assert kept.keys() == model.keys()
        assert all(kept[s] == model[s] or (math.isnan(kept[s]) and math.isnan(model[s])) for s in model)
        assert ledger.best_name == (f"step-{ranked[0][1]:07d}" if ranked else None)
        assert ledger.best is None or ledger.best.name not in {d.name for d in dropped}
        assert not set(ledger.pruned) & {e.name for e in ledger.entries}  # tidy() would delete it
