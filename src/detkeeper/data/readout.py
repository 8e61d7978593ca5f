"""What every dataset reader returns: the records it could build and the problems it found.

Readers (VOC, COCO, TFRecord) never drop anything silently and never decide what a problem
costs; they hand both lists to the caller, whose ``bad_records`` policy acts on the problems.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from detkeeper.data.label_map import LabelMap
from detkeeper.data.problems import Problem
from detkeeper.data.record import DetectionRecord


@dataclasses.dataclass
class Readout:
    """Records in reading order, the label map their class ids refer to, and what went wrong.

    A record-level problem means the record is absent from `records`; a box-level one means the
    box is absent from its record (``record_index`` says which record).
    """

    records: Sequence[DetectionRecord]  # a list, or RecordColumns (TFRecord)
    label_map: LabelMap
    problems: list[Problem]
    #: What checking each record alone found (``check.record_problems``; its image opened when the
    #: read was asked to; indices into `records`), when the dataset index kept it; None: not checked yet.
    checked: list[Problem] | None = None
