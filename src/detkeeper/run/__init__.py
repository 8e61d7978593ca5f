"""The run directory: every path in it, the checkpoint ledger and store, restoring a kept
checkpoint, finding exports and evaluations.

Training writes a run through this package, and evaluation, export, report and the CLI read it
through it: no other package spells a file name inside a run. Importing it (or any module but
:mod:`.restore`) does not import TensorFlow, so light commands use it freely.
"""

from detkeeper.run.layout import RunDirectory
from detkeeper.run.ledger import FileDigest, Ledger, LedgerEntry, RetentionPolicy

__all__ = ["FileDigest", "Ledger", "LedgerEntry", "RetentionPolicy", "RunDirectory"]
