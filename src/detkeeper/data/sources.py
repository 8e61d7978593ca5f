"""From the config's `data` section to checked records: one label map, one policy, every split.

This is the only module that knows which reader serves which format. It reads each split once,
resolves the label map (the configured file; else the synthetic dataset's own; else the classes
found in the first configured split), checks the records against their images, and applies
``data.bad_records``: ``skip`` drops what is unusable and logs every reason with a count,
``strict`` raises with the list.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import logging
from pathlib import Path
from typing import Callable, Sequence

from detkeeper.config.schema import SPLITS
from detkeeper.data.check import check_records, drop_bad
from detkeeper.data.coco import read_coco
from detkeeper.data.columns import box_counts
from detkeeper.data.label_map import LabelMap
from detkeeper.data.problems import ProblemReport
from detkeeper.data.readout import Readout
from detkeeper.data.record import DetectionRecord
from detkeeper.data.synthetic import generate_shapes_dataset
from detkeeper.data.voc import read_voc
from detkeeper.errors import DataError
from detkeeper.files import is_url

logger = logging.getLogger("detkeeper.data")

TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords", ".record", ".records", ".tfrec")


@dataclasses.dataclass
class PreparedSplit:
    """A split ready for the pipeline: clean records, and the report of what was dropped or fixed."""

    name: str
    records: Sequence[DetectionRecord]  # a list, or RecordColumns (TFRecord)
    label_map: LabelMap
    report: ProblemReport
    num_read: int  # records the reader produced, before the policy

    @property
    def num_boxes(self) -> int:
        return int(box_counts(self.records).sum())

    def counts(self) -> dict:
        """Records read and used, and the records skipped by why (a record may have several reasons)."""
        skipped = collections.Counter(problem.kind for problem in self.report.of_scope("record"))
        return {"read": self.num_read, "used": len(self.records), "skipped": dict(sorted(skipped.items()))}


def read_source(source, label_map: LabelMap | None, synthetic=None, *, check_images: bool = False,
                progress: Callable[[int], None] | None = None) -> Readout:
    """Read one configured split (`source` is a ``SourceConfig``) with the reader of its format.
    Every reader goes through the dataset index, opens the images too with `check_images`, and
    reports the records it has read to `progress`."""
    if source.format == "voc":
        return read_voc(source.path, split=source.split, label_map=label_map, check_images=check_images,
                        progress=progress)
    if source.format == "coco":
        return read_coco(source.path, images_dir=source.images, label_map=label_map, check_images=check_images,
                         progress=progress)
    if source.format == "tfrecord":
        from detkeeper.data.tfrecord import read_tfrecords  # light: imports TensorFlow
        return read_tfrecords(source.path, label_map=label_map, check_images=check_images, progress=progress)
    if source.format == "synthetic":
        root = ensure_synthetic(source.path, synthetic)
        return read_voc(root, split=source.split, label_map=label_map or LabelMap.read(root / "label_map.pbtxt"),
                        check_images=check_images, progress=progress)
    raise DataError(f"data format {source.format!r} is not one of voc, coco, tfrecord, synthetic")


def ensure_synthetic(path: str | Path, synthetic) -> Path:
    """Generate the built-in shapes dataset at `path` unless the same one is already there."""
    params = {} if synthetic is None else dataclasses.asdict(synthetic)
    return Path(generate_shapes_dataset(path, **params))


class DataSources:
    """The splits of one `data` config; each split is read at most once."""

    def __init__(self, data_config, *, check_images: bool = True,
                 display_names: dict[str, str] | None = None) -> None:
        self.config = data_config
        self.check_images = check_images
        self._display_names = display_names or {}
        self._readouts: dict[str, Readout] = {}
        self._prepared: dict[str, PreparedSplit] = {}
        self._label_map: LabelMap | None = None

    @property
    def configured_splits(self) -> list[str]:
        return [name for name in SPLITS if getattr(self.config, name) is not None]

    def source(self, split: str):
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
        source = getattr(self.config, split)
        if source is None:
            raise DataError(f"data.{split} is not set in the config; set data.{split}.format and "
                            f"data.{split}.path (configured splits: {', '.join(self.configured_splits) or 'none'})")
        return source

    @property
    def label_map(self) -> LabelMap:
        """The configured label map, else the synthetic dataset's, else the first split's classes."""
        if self._label_map is None:
            if self.config.label_map:
                self._label_map = LabelMap.read(self.config.label_map)
            elif not self.configured_splits:
                raise DataError("the config sets no data split (data.train, data.val, data.test) "
                                "and no data.label_map")
            else:
                first = self.configured_splits[0]
                source = self.source(first)
                if source.format == "synthetic":
                    root = ensure_synthetic(source.path, self.config.synthetic)
                    self._label_map = LabelMap.read(root / "label_map.pbtxt")
                else:
                    readout = read_source(source, None, self.config.synthetic, check_images=self.check_images)
                    self._label_map = readout.label_map
                    self._readouts[first] = readout
        return self._label_map

    def describe(self, split: str) -> str:
        """How messages name a split: ``data.val (path)``, or the dataset path for ad-hoc sources."""
        return self._display_names.get(split) or f"data.{split} ({self.source(split).path})"

    def readout(self, split: str, progress: Callable[[int], None] | None = None) -> Readout:
        """The split as its reader gives it (read once; `progress` counts the records read)."""
        label_map = self.label_map  # first: deriving it reads the first split, which is then not read again
        if split not in self._readouts:
            self._readouts[split] = read_source(self.source(split), label_map, self.config.synthetic,
                                                check_images=self.check_images, progress=progress)
        return self._readouts[split]

    def prepare(self, split: str, progress: Callable[[int], None] | None = None,
                log_problems: bool = True, allow_empty: bool = False) -> PreparedSplit:
        """Read, check and apply ``data.bad_records`` to one split (once; later calls reuse it).

        Problems are logged unless the caller shows the report itself (`log_problems=False`). A split
        with no usable record left is an error unless `allow_empty` (``data check`` reports it).
        """
        if split in self._prepared:
            return self._prepared[split]
        readout = self.readout(split)
        found = check_records(readout.records, max_boxes=self.config.max_boxes,
                              check_images=self.check_images, progress=progress, checked=readout.checked)
        report = ProblemReport([*readout.problems, *found])
        where = self.describe(split)
        if self.config.bad_records == "strict":
            report.raise_if_strict(where)
        records = drop_bad(readout.records, found)
        if not records and not allow_empty:
            raise DataError(f"{where}: no usable records ({len(readout.records)} read); "
                            "run `detkeeper data check` on it to see why")
        if report.problems and log_problems:
            logger.warning("%s: %d of %d records kept, %d problem(s):\n%s", where, len(records),
                           len(readout.records), len(report.problems), "\n".join(report.summary_lines()))
        self._prepared[split] = PreparedSplit(split, records, self.label_map, report, len(readout.records))
        return self._prepared[split]

    def first_usable(self, split: str, count: int) -> list[DetectionRecord]:
        """The first `count` records of `split` that ``data.bad_records: skip`` keeps, their images
        opened and checked, opening only as many as that takes (an export verifies on 8 images,
        not on the whole split): the first `count` records, then twice as many, until enough are kept."""
        records = self.readout(split).records
        taken = count
        while True:
            prefix = list(records[:taken])
            kept = drop_bad(prefix, check_records(prefix, max_boxes=self.config.max_boxes, check_images=True))
            if len(kept) >= count or taken >= len(records):
                break
            taken *= 2
        if not kept:
            raise DataError(f"{self.describe(split)}: no usable records ({len(records)} read); "
                            "run `detkeeper data check` on it to see why")
        return list(kept[:count])


def detect_format(path: str) -> str:
    """Guess a dataset's format from its path: VOC folder, COCO JSON, or TFRecord files/globs."""
    candidate = Path(path)
    if candidate.is_dir():
        if (candidate / "Annotations").is_dir():
            return "voc"
        raise DataError(f"{path}: a folder, but not a Pascal VOC dataset (no Annotations/ inside); "
                        "give a VOC root, a COCO instances JSON, or TFRecord files")
    if candidate.suffix == ".json":
        return "coco"
    first = path.split(",")[0]
    if first.endswith(TFRECORD_SUFFIXES) or ".tfrecord" in first or glob.has_magic(first) or is_url(first):
        return "tfrecord"  # of the formats, only TFRecords are read from object stores (gs://...)
    if not candidate.exists():
        raise DataError(f"{path}: no such file or folder")
    raise DataError(f"{path}: cannot tell the dataset format from the name; pass --format voc|coco|tfrecord")
