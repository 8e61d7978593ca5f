"""The checkpoint ledger: which checkpoints exist, what they scored, and which are kept.

``checkpoints/ledger.json`` is the single source of truth about a run's checkpoints. It is
rewritten atomically after every save, and that write is the commit point: a checkpoint folder
the ledger does not list is an interrupted save, never a checkpoint to trust. Retention keeps the
``keep_best`` entries with the best monitored value plus the ``keep_last`` most recent ones;
only folders the ledger itself recorded are ever pruned.

"The best checkpoint" is always the top of the ranking of the kept entries (:attr:`Ledger.best`),
computed, never stored apart from them: every reader (``detkeeper checkpoints``, ``export``,
``evaluate``, ``predict``, the report, ``checkpoints/best``) gets it from there. ``min_delta`` is
what counts as an improvement for early stopping's patience; it never moves the best.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Iterable

from detkeeper.errors import DetkeeperError
from detkeeper.files import atomic_write_text, json_number

LEDGER_VERSION = 1
LEDGER_NAME = "ledger.json"  # in the run's checkpoints/ folder
CHECKPOINT_PREFIX = "ckpt"  # the tf.train.Checkpoint prefix inside a checkpoint's folder


@dataclasses.dataclass(frozen=True)
class FileDigest:
    size: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class LedgerEntry:
    """One saved checkpoint: where it is, when it was taken, what it scored."""

    name: str  # folder under checkpoints/, e.g. "step-000900"
    step: int
    epoch: int
    monitor_value: float  # NaN when the metric was NaN or missing: never the best
    metrics: dict[str, float]
    ema: bool
    files: dict[str, FileDigest]  # relative to the checkpoint folder
    prefix: str = CHECKPOINT_PREFIX  # tf.train.Checkpoint prefix inside the folder
    created: float = 0.0

    @property
    def size(self) -> int:
        return sum(digest.size for digest in self.files.values())

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["monitor_value"] = json_number(self.monitor_value)
        data["metrics"] = {key: json_number(value) for key, value in self.metrics.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "LedgerEntry":
        return cls(
            name=str(data["name"]), step=int(data["step"]), epoch=int(data["epoch"]),
            monitor_value=_float(data["monitor_value"]),
            metrics={key: _float(value) for key, value in data["metrics"].items()},
            ema=bool(data["ema"]),
            files={key: FileDigest(int(value["size"]), str(value["sha256"]))
                   for key, value in data["files"].items()},
            prefix=str(data.get("prefix", CHECKPOINT_PREFIX)), created=float(data.get("created", 0.0)))


@dataclasses.dataclass(frozen=True)
class RetentionPolicy:
    """What to keep: the best `keep_best` by `monitor` (`mode` max or min) and the latest `keep_last`.

    `min_delta` is only read by :meth:`improves` (patience); the ranking, and so the best, ignore it.
    """

    monitor: str
    mode: str = "max"
    keep_best: int = 3
    keep_last: int = 2
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {self.mode!r}")

    def sort_key(self, entry: LedgerEntry) -> tuple:
        """Best first; NaN after every number; on a tie the earlier step wins (it got there first)."""
        value = entry.monitor_value
        if math.isnan(value):
            return (1, 0.0, entry.step)
        return (0, -value if self.mode == "max" else value, entry.step)

    def improves(self, value: float, best: float | None) -> bool:
        """Whether `value` beats `best` by more than `min_delta` (NaN never does)."""
        if math.isnan(value):
            return False
        if best is None or math.isnan(best):
            return True
        if self.mode == "max":
            return value > best + self.min_delta
        return value < best - self.min_delta


@dataclasses.dataclass
class Ledger:
    """Kept entries, every evaluation's history and the run's status; the best is derived from them.

    `data` is what the last start trained and evaluated on, per split: records ``read``, ``used``, and
    those ``skipped`` by why (an image that does not decode, a duplicate id, ...), so a run's numbers
    can be told from a run on the whole dataset without its log."""

    policy: RetentionPolicy
    entries: list[LedgerEntry] = dataclasses.field(default_factory=list)
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    pruned: list[str] = dataclasses.field(default_factory=list)
    status: dict[str, Any] = dataclasses.field(default_factory=lambda: {"state": "training"})
    data: dict[str, Any] = dataclasses.field(default_factory=dict)

    # -- queries ---------------------------------------------------------------------------
    def by_name(self, name: str) -> LedgerEntry | None:
        return next((entry for entry in self.entries if entry.name == name), None)

    @property
    def best(self) -> LedgerEntry | None:
        """The top of the ranking (None when every kept value is NaN): the one "best checkpoint".

        Derived on every call, so replacing or forgetting an entry can never leave it stale."""
        top = next(iter(self.ranked()), None)
        return top if top is not None and not math.isnan(top.monitor_value) else None

    @property
    def best_name(self) -> str | None:
        best = self.best
        return best.name if best is not None else None

    @property
    def latest(self) -> LedgerEntry | None:
        return max(self.entries, key=lambda entry: entry.step, default=None)

    def ranked(self) -> list[LedgerEntry]:
        """Kept entries, best first."""
        return sorted(self.entries, key=self.policy.sort_key)

    def best_names(self) -> set[str]:
        return {entry.name for entry in self.ranked()[: self.policy.keep_best]
                if not math.isnan(entry.monitor_value)}

    def last_names(self) -> set[str]:
        by_step = sorted(self.entries, key=lambda entry: entry.step, reverse=True)
        return {entry.name for entry in by_step[: self.policy.keep_last]}

    # -- updates ---------------------------------------------------------------------------
    def add(self, entry: LedgerEntry) -> list[LedgerEntry]:
        """Record `entry` and apply retention; returns the entries to prune (already removed here).

        An entry for a step already recorded replaces it (a rerun after a crash that happened after
        the save but before training moved on writes the same step again, or a resume from an older
        checkpoint after the latest was damaged), with whatever value it scores this time.
        """
        self.entries = [kept for kept in self.entries if kept.step != entry.step]
        self.pruned = [name for name in self.pruned if name != entry.name]  # tidy() must not delete it
        self.history = [row for row in self.history if row["step"] != entry.step]
        self.entries.append(entry)
        self.history.append({"step": entry.step, "epoch": entry.epoch, "checkpoint": entry.name,
                             "monitor_value": entry.monitor_value, "metrics": dict(entry.metrics)})
        self.history.sort(key=lambda row: row["step"])
        keep = self.best_names() | self.last_names()  # best_names() holds the best
        dropped = [kept for kept in self.entries if kept.name not in keep]
        self.entries = [kept for kept in self.entries if kept.name in keep]
        self.pruned = sorted(set(self.pruned) | {dropped_entry.name for dropped_entry in dropped})
        return dropped

    def forget(self, names: Iterable[str]) -> None:
        """Drop entries whose files were found damaged (kept in `history`)."""
        names = set(names)
        self.entries = [entry for entry in self.entries if entry.name not in names]

    def mark_pruned_done(self, names: Iterable[str]) -> None:
        self.pruned = sorted(set(self.pruned) - set(names))

    # -- JSON ------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "version": LEDGER_VERSION,
            "policy": dataclasses.asdict(self.policy),
            "best": self.best_name,
            "status": self.status,
            "data": self.data,
            "checkpoints": [entry.to_json() for entry in self.ranked()],
            "pruned": self.pruned,
            "history": [{**row, "monitor_value": json_number(row["monitor_value"]),
                         "metrics": {key: json_number(value) for key, value in row["metrics"].items()}}
                        for row in self.history],
            "updated": time.time(),
        }

    def write(self, path: str | Path) -> Path:
        return atomic_write_text(path, json.dumps(self.to_json(), indent=2, sort_keys=False) + "\n")

    @classmethod
    def read(cls, path: str | Path, policy: RetentionPolicy | None = None) -> "Ledger":
        """Load a ledger; `policy` (from the current config) wins over the stored one when given.

        The stored ``best`` is not read back: it is derived from the entries (a ledger written
        when min_delta could hold it back may name an entry below the top)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            stored = RetentionPolicy(**data["policy"])
            entries = [LedgerEntry.from_json(item) for item in data["checkpoints"]]
            history = [{**row, "monitor_value": _float(row["monitor_value"]),
                        "metrics": {key: _float(value) for key, value in row["metrics"].items()}}
                       for row in data.get("history", [])]
            ledger = cls(policy=policy or stored, entries=entries, history=history,
                         pruned=list(data.get("pruned", [])),
                         status=dict(data.get("status") or {"state": "training"}), data=dict(data.get("data") or {}))
        except FileNotFoundError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DetkeeperError(
                f"{path}: the checkpoint ledger cannot be read ({type(error).__name__}: {error}). "
                "It is only ever replaced atomically, so this file was changed by something else; "
                "restore it or move the run directory's checkpoints/ folder aside.") from None
        return ledger


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def read_ledger(run) -> Ledger:
    """The ledger of `run` (a :class:`~detkeeper.run.layout.RunDirectory`); a :class:`DetkeeperError`
    that says so when the run has none yet."""
    path = run.ledger_path
    if not path.is_file():
        raise DetkeeperError(f"{run.path}: no checkpoint ledger at {path}; is this a run directory that has "
                             "trained past its first evaluation?")
    return Ledger.read(path)
