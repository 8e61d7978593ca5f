"""Error types for problems a user can fix, and the exit status each gives.

Everything raised as a :class:`DetkeeperError` is a user-facing problem: the CLI prints its message
as one paragraph and exits non-zero without a traceback. Anything else is a bug in detkeeper and
keeps its traceback.

Exit status, as for most command-line tools (argparse's usage errors are 2 too):

- 2: the input cannot be used: a config, an argument, a dataset, a model or a file the user named
  (:class:`DetkeeperError`, :class:`ConfigError`, :class:`DataError`).
- 1: the input was fine but the work could not be done or did not pass: no space left, a loss
  that diverged, a run directory another process is training in, an export that fails its
  verification (:class:`RunFailed`); and ``data check`` finding records it would drop.
"""

from __future__ import annotations

import re


class DetkeeperError(Exception):
    """A problem with the user's input: a config, an argument, a dataset, a model, a file on disk."""

    exit_code = 2


class ConfigError(DetkeeperError):
    """The config file, a preset or a `--set` override is invalid."""


class DataError(DetkeeperError):
    """A dataset, annotation, label map or image cannot be used."""


class RunFailed(DetkeeperError):
    """The input was usable, but the work stopped or failed: nothing written before is lost."""

    exit_code = 1


#: A DataError raised inside a tf.data pipeline (in tf.numpy_function) reaches the caller as TensorFlow's
#: error, whose message holds the DataError's message followed by the Python traceback.
_WRAPPED_DATA_ERROR = re.compile(r"\bDataError: (.*?)\n\s*(?:Traceback|\[\[)", re.DOTALL)


def wrapped_data_error(message: str) -> DataError | None:
    """The DataError whose message TensorFlow's error `message` carries, if it carries one."""
    found = _WRAPPED_DATA_ERROR.search(message or "")
    return DataError(found.group(1).strip()) if found else None
