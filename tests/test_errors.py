"""Exit statuses: 2 for input that cannot be used (whatever kind), 1 for work that could not be done."""

from __future__ import annotations

import errno

from detkeeper.errors import ConfigError, DataError, DetkeeperError, RunFailed
from detkeeper.files import out_of_space
from detkeeper.training.callbacks import TrainingDiverged


def test_every_kind_of_unusable_input_exits_2():
    assert DetkeeperError.exit_code == ConfigError.exit_code == DataError.exit_code == 2


def test_work_that_could_not_be_done_exits_1():
    assert RunFailed.exit_code == TrainingDiverged.exit_code == 1
    full = out_of_space("/runs/a/checkpoints", OSError(errno.ENOSPC, "No space left on device"))
    assert isinstance(full, RunFailed) and full.exit_code == 1
