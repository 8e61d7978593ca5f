"""evaluation.weighted_monitors: a custom monitored value as a weighted sum of COCO stats."""

import pytest

from detkeeper.config import config_to_yaml, load_config
from detkeeper.errors import ConfigError


def test_weighted_monitor_loads_and_round_trips(tmp_path):
    config = load_config("demo", ["evaluation.weighted_monitors={score: {mAP50: 0.1, mAP: 0.9}}",
                                  "evaluation.monitor=val_score"])
    assert config.evaluation.weighted_monitors == {"score": {"mAP50": 0.1, "mAP": 0.9}}
    path = tmp_path / "run.yaml"
    path.write_text(config_to_yaml(config))
    assert load_config(path).evaluation == config.evaluation


@pytest.mark.parametrize("value, message", [
    ("{score: {mAPx: 1}}", r"evaluation.weighted_monitors.score.mAPx: unknown stat; expected one of AR1"),
    ("{score: 3}", r"evaluation.weighted_monitors.score: expected a mapping of names to a number, got 3"),
    ("{score: {mAP: high}}", r"evaluation.weighted_monitors.score.mAP: expected a number, got 'high'"),
    ("{2x: {mAP: 1}}", r"weighted_monitors.2x: expected a name made of letters"),
])
def test_bad_weighted_monitors_name_the_key(value, message):
    with pytest.raises(ConfigError, match=message):
        load_config("demo", [f"evaluation.weighted_monitors={value}"])
