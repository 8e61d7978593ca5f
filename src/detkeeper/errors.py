"""Error types for mistakes a user can fix.

Everything raised as a :class:`DetkeeperError` is a user error: the CLI prints its message as one
paragraph and exits non-zero without a traceback. Anything else is a bug in detkeeper and keeps
its traceback.
"""

from __future__ import annotations


class DetkeeperError(Exception):
    """A problem with the user's input: a config, a dataset, a file on disk."""

    exit_code = 1


class ConfigError(DetkeeperError):
    """The config file, a preset or a `--set` override is invalid."""

    exit_code = 2


class DataError(DetkeeperError):
    """A dataset, annotation, label map or image cannot be used."""

    exit_code = 3
