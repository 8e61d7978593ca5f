"""The checker finds every kind of problem with its record and box, and the skip policy applies them."""

import io

import numpy as np
import pytest
from PIL import Image

from detkeeper.data.check import check_records, drop_bad
from detkeeper.data.problems import ProblemReport
from detkeeper.data.record import DetectionRecord
from detkeeper.errors import DataError


def _save(path, mode="RGB", size=(40, 30), fmt="PNG"):
    colour = {"RGB": (9, 9, 9), "RGBA": (9, 9, 9, 9), "CMYK": (1, 2, 3, 4), "L": 9}[mode]
    Image.new(mode, size, colour).save(path, fmt)
    return path


def _record(path, boxes=((2, 2, 10, 10),), image_id=None, width=40, height=30):
    return DetectionRecord(image_id=image_id or path.stem, boxes=np.array(boxes, np.float32),
                           class_ids=[1] * len(boxes), is_crowd=None, source=f"ann/{path.stem}.xml",
                           image_path=path, width=width, height=height)


def _kinds(problems):
    return sorted(p.kind for p in problems)


def test_clean_record_has_no_problems(tmp_path):
    assert check_records([_record(_save(tmp_path / "a.png"))]) == []


def test_image_problems_are_found_and_named(tmp_path):
    good = _save(tmp_path / "good.jpg", fmt="JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    records = [
        _record(truncated), _record(tmp_path / "empty.jpg"), _record(tmp_path / "text.jpg"),
        _record(tmp_path / "missing.jpg"),
        _record(_save(tmp_path / "gray.png", "L")), _record(_save(tmp_path / "rgba.png", "RGBA")),
        _record(_save(tmp_path / "cmyk.jpg", "CMYK", fmt="JPEG")),
        _record(_save(tmp_path / "small.png", size=(20, 30))),
    ]
    problems = check_records(records)
    by_id = {p.image_id: p for p in problems}
    assert by_id["truncated"].kind == "corrupt_image"
    assert by_id["empty"].kind == "corrupt_image" and "0 bytes" in by_id["empty"].detail
    assert by_id["text"].kind == "not_an_image"
    assert by_id["missing"].kind == "missing_image" and "missing.jpg" in by_id["missing"].detail
    assert by_id["gray"].kind == "grayscale_image"
    assert by_id["rgba"].kind == "rgba_image"
    assert by_id["cmyk"].kind == "cmyk_image"
    assert by_id["small"].kind == "size_mismatch" and "40x30" in by_id["small"].detail
    assert all(p.record_index == records.index(next(r for r in records if r.image_id == p.image_id))
               for p in problems)


def test_box_problems_name_the_box(tmp_path):
    path = _save(tmp_path / "a.png")  # 40 wide, 30 high
    boxes = [(2, 2, 10, 10), (10, 5, 5, 9), (4, 4, 4, 9), (np.nan, 1, 2, 3), (31, 2, 35, 9), (20, 30, 35, 45)]
    problems = check_records([_record(path, boxes)])
    assert [(p.box_index, p.kind) for p in problems] == [
        (1, "inverted_box"), (2, "zero_area_box"), (3, "non_finite_box"),
        (4, "box_outside_image"), (5, "box_clipped")]
    assert "ann/a.xml box 2" in str(problems[1])


def test_duplicates_and_crowded_records(tmp_path):
    path = _save(tmp_path / "a.png")
    records = [_record(path, image_id="x"), _record(path, image_id="x", boxes=[(1, 1, 5, 5)] * 3)]
    problems = check_records(records, max_boxes=2)
    assert _kinds(problems) == ["duplicate_image_id", "too_many_boxes"]
    assert all(p.record_index == 1 for p in problems)


def test_skip_policy_drops_named_records_and_boxes_and_clips(tmp_path):
    good = _save(tmp_path / "a.png")
    records = [_record(good, [(2, 2, 10, 10), (4, 4, 4, 9), (-3, 30, 12, 50)]), _record(tmp_path / "gone.png")]
    problems = check_records(records)
    kept = drop_bad(records, problems)
    assert [r.image_id for r in kept] == ["a"]
    np.testing.assert_array_equal(kept[0].boxes, [[2, 2, 10, 10], [0, 30, 12, 40]])
    assert len(kept[0].class_ids) == 2


def test_strict_policy_raises_listing_each_problem(tmp_path):
    records = [_record(_save(tmp_path / "a.png"), [(10, 5, 5, 9)]), _record(tmp_path / "gone.png")]
    report = ProblemReport(check_records(records))
    with pytest.raises(DataError) as error:
        report.raise_if_strict("data.train")
    message = str(error.value)
    assert "2 problem(s)" in message and "inverted_box" in message and "gone.png" in message
    assert "bad_records: skip" in message


def test_warnings_alone_are_not_errors(tmp_path):
    report = ProblemReport(check_records([_record(_save(tmp_path / "g.png", "L"))]))
    assert not report.has_errors
    report.raise_if_strict("data.train")  # nothing to raise


def test_encoded_records_are_checked_too():
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6)).save(buffer, "JPEG")
    data = buffer.getvalue()
    record = DetectionRecord(image_id="e", boxes=[(0, 0, 6, 8)], class_ids=[1], is_crowd=None,
                             source="x.tfrecord#0", encoded_image=data[:40], width=8, height=6)
    assert _kinds(check_records([record])) == ["corrupt_image"]


def test_boxes_left_of_above_or_beyond_the_image_are_outside_it(tmp_path):
    path = _save(tmp_path / "a.png")  # 40 wide, 30 high
    boxes = [(-9, 2, -1, 9), (2, -9, 9, 0), (2, 40, 9, 45), (np.inf, 1, 2, 3), (0, 0, 30, 40)]
    problems = check_records([_record(path, boxes)])
    assert [(p.box_index, p.kind) for p in problems] == [
        (0, "box_outside_image"), (1, "box_outside_image"), (2, "box_outside_image"), (3, "non_finite_box")]
