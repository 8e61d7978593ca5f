"""Exit statuses: 2 for input that cannot be used (whatever kind), 1 for work that could not be done."""

from __future__ import annotations

import errno

from detkeeper.errors import ConfigError, DataError, DetkeeperError, RunFailed
from detkeeper.files import out_of_space
from detkeeper.training.callbacks import TrainingDiverged

from inside_tf_data import raise_inside_tf_data


def test_every_kind_of_unusable_input_exits_2():
    assert DetkeeperError.exit_code == ConfigError.exit_code == DataError.exit_code == 2


def test_work_that_could_not_be_done_exits_1():
    assert RunFailed.exit_code == TrainingDiverged.exit_code == 1
    full = out_of_space("/runs/a/checkpoints", OSError(errno.ENOSPC, "No space left on device"))
    assert isinstance(full, RunFailed) and full.exit_code == 1


def test_a_data_error_raised_inside_tf_data_reaches_the_command_line_as_itself(monkeypatch, capsys):
    """A shard that changed under `detkeeper evaluate` or `export` fails inside a tf.data pipeline, whose
    error carries the DataError's message and traceback: the command prints the message alone, exit 2."""
    from detkeeper.cli import data_commands
    from detkeeper.cli.main import main

    def handler(args):
        raise_inside_tf_data(DataError("/data/train.record-00001-of-00004: bytes 10-90 are not the image they held"))

    monkeypatch.setattr(data_commands, "run_check", handler)
    assert main(["data", "check", "anything.record", "--quiet"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "detkeeper data: error: /data/train.record-00001-of-00004: bytes 10-90 are not the image they held"]
