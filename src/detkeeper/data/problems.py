"""Problems found in a dataset, and the policy that decides what happens to them.

Readers and the checker never drop data silently: everything they cannot use becomes a
:class:`Problem` naming the file, record and field. What a problem costs depends on its scope:

* ``record``: the whole image is unusable (missing, corrupt, malformed annotation, duplicate id);
* ``box``: one box is unusable (inverted, zero-area, entirely outside, unknown class);
* ``warning``: usable after a fix detkeeper applies and reports (grayscale or CMYK images are
  converted to RGB, boxes crossing the border are clipped).

With ``bad_records: skip`` the records and boxes are dropped and counted; with ``strict`` any
record or box problem is a :class:`~detkeeper.errors.DataError`.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Iterable, Literal

from detkeeper.errors import DataError

Scope = Literal["record", "box", "warning"]

#: Every problem kind, with its scope and a short description for reports.
KINDS: dict[str, tuple[Scope, str]] = {
    "missing_image": ("record", "image file missing or unreadable"),
    "corrupt_image": ("record", "image cannot be decoded (corrupt or truncated)"),
    "not_an_image": ("record", "file is not a JPEG/PNG/GIF/BMP image"),
    "huge_image": ("record", "image too large to decode safely"),
    "size_mismatch": ("record", "annotation size differs from the image size"),
    "duplicate_image_id": ("record", "image id used by an earlier record"),
    "malformed_annotation": ("record", "annotation cannot be parsed"),
    "corrupt_record": ("record", "TFRecord entry cannot be read (corrupt or truncated file)"),
    "inverted_box": ("box", "box has min > max"),
    "zero_area_box": ("box", "box has zero width or height"),
    "non_finite_box": ("box", "box coordinate is NaN or infinite"),
    "box_outside_image": ("box", "box lies entirely outside the image"),
    "unknown_class": ("box", "class not in the label map"),
    "box_clipped": ("warning", "box crosses the image border; clipped"),
    "too_many_boxes": ("warning", "more boxes than data.max_boxes; the extra ones are not trained on"),
    "grayscale_image": ("warning", "grayscale image; converted to RGB"),
    "rgba_image": ("warning", "image has an alpha channel; dropped"),
    "cmyk_image": ("warning", "CMYK image; converted to RGB"),
    "other_mode_image": ("warning", "unusual colour mode (palette, 16-bit, ...); converted to RGB"),
}


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with one record (and possibly one box of it)."""

    kind: str
    source: str  # file or record reference, e.g. "Annotations/BloodImage_00338.xml"
    detail: str
    image_id: str | None = None
    record_index: int | None = None  # position in the reader's record list, if a record exists
    box_index: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown problem kind {self.kind!r}")

    @property
    def scope(self) -> Scope:
        return KINDS[self.kind][0]

    def __str__(self) -> str:
        where = self.source if self.box_index is None else f"{self.source} box {self.box_index}"
        return f"{where}: {self.detail} [{self.kind}]"


class ProblemReport:
    """Counts problems by kind and renders them for a log or the terminal."""

    def __init__(self, problems: Iterable[Problem] = ()) -> None:
        self.problems: list[Problem] = list(problems)

    def extend(self, problems: Iterable[Problem]) -> None:
        self.problems.extend(problems)

    def counts(self) -> dict[str, int]:
        return dict(collections.Counter(problem.kind for problem in self.problems))

    def of_scope(self, *scopes: Scope) -> list[Problem]:
        return [problem for problem in self.problems if problem.scope in scopes]

    @property
    def has_errors(self) -> bool:
        """True when any record or box would be dropped."""
        return bool(self.of_scope("record", "box"))

    def summary_lines(self, examples: int = 3) -> list[str]:
        """One line per kind with its count, followed by up to `examples` instances."""
        by_kind: dict[str, list[Problem]] = collections.defaultdict(list)
        for problem in self.problems:
            by_kind[problem.kind].append(problem)
        lines = []
        for kind in sorted(by_kind, key=lambda k: (("record", "box", "warning").index(KINDS[k][0]), k)):
            found = by_kind[kind]
            scope, description = KINDS[kind]
            lines.append(f"{len(found):6d}  {kind:<22} ({scope}) {description}")
            lines.extend(f"          {problem}" for problem in found[:examples])
            if len(found) > examples:
                lines.append(f"          ... and {len(found) - examples} more")
        return lines

    def raise_if_strict(self, what: str) -> None:
        """The `strict` policy: any record or box problem stops the run with the full list."""
        errors = self.of_scope("record", "box")
        if errors:
            listing = "\n".join(f"  {problem}" for problem in errors[:20])
            more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
            raise DataError(
                f"{what}: {len(errors)} problem(s) with data.bad_records: strict:\n{listing}{more}\n"
                "Fix them, or set data.bad_records: skip to drop the affected boxes and images "
                "(each is counted and logged)."
            )
