"""Pascal VOC folders, read into :class:`RecordColumns` and written back.

Layout, as in VOCdevkit and BCCD::

    root/Annotations/<id>.xml
    root/JPEGImages/<filename named in the XML>
    root/ImageSets/Main/<split>.txt      one id per line

Boxes are taken as the XML states them: no -1 shift (as the TF OD API's
``create_pascal_tf_record.py``) and no validation. Inverted, zero-area or outside boxes stay in
the record so that the dataset checker reports each one with its file and index; this module only
reports what it cannot turn into a record at all.

A split is read through the dataset index (:mod:`detkeeper.data.index`) as one entry, not one per
XML file (100k tiny entries would be slower to load than the XML files): its identity is the split
file's and a digest of every listed XML file's path, size and modification time, so a later start
stats the XML files (3 us each) but parses none while none changed, and any change reads the split
again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from detkeeper.data.columns import RecordColumns
from detkeeper.data.image_format import EXTENSIONS, sniff_format
from detkeeper.data.index import FilePart, file_identity, files_digest, indexed_parts
from detkeeper.data.label_map import LabelMap
from detkeeper.data.problems import Problem
from detkeeper.data.readout import Readout
from detkeeper.data.record import DetectionRecord, xyxy_to_yxyx, yxyx_to_xyxy
from detkeeper.errors import DataError
from detkeeper.files import atomic_write_bytes, atomic_write_text, read_user_text, resolve_inside

ANNOTATIONS_DIR = "Annotations"
IMAGES_DIR = "JPEGImages"
SPLITS_DIR = "ImageSets/Main"
_CORNERS = ("xmin", "ymin", "xmax", "ymax")


@dataclasses.dataclass(frozen=True)
class _VocObject:
    position: int  # index among the XML's <object> elements, for problem reports
    name: str
    xyxy: tuple[float, float, float, float]


@dataclasses.dataclass(frozen=True)
class _VocAnnotation:
    image_id: str
    source: str
    image_path: Path
    width: int | None
    height: int | None
    objects: list[_VocObject]


class _Malformed(Exception):
    """Why one annotation file cannot become a record; reported as `malformed_annotation`."""


class _NoDoctypeTreeBuilder(ET.TreeBuilder):
    """Refuses any DOCTYPE before its internal subset is read.

    ElementTree never fetches external entities, and the expat bundled with Python >= 3.7.1
    (2.4.1+) caps entity expansion, so billion-laughs files are already safe; VOC annotations
    never need a DOCTYPE, so refusing it outright costs nothing and does not depend on the
    expat version a given Python was built with.
    """

    def doctype(self, name: str, pubid: str | None, system: str | None) -> None:
        raise _Malformed("has a <!DOCTYPE> declaration; VOC annotations have none, and detkeeper "
                         "does not process XML entity declarations")


# --- reading ------------------------------------------------------------------------------------
def read_voc(root: str | os.PathLike, split: str | None = None, label_map: LabelMap | None = None, *,
             check_images: bool = False, progress: Callable[[int], None] | None = None) -> Readout:
    """Read a VOC folder: every XML in Annotations (`split` None) or the ids in ``<split>.txt``.

    With no `label_map`, one is derived from the class names found (sorted, ids 1..K); with one,
    objects of other classes are left out of their record and reported as ``unknown_class``. The
    split is read through the dataset index; with `check_images` every image is opened in the same
    pass (the readout's ``checked`` says what was found), and `progress` counts the records done.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: VOC dataset folder not found (expected {ANNOTATIONS_DIR}/, "
                        f"{IMAGES_DIR}/ and {SPLITS_DIR}/ inside it)")
    image_ids, listed_in = _image_ids(root, split)
    listing = root / (ANNOTATIONS_DIR if split is None else f"{SPLITS_DIR}/{split}.txt")
    xml_files = [os.path.join(root, ANNOTATIONS_DIR, f"{image_id}.xml") for image_id in image_ids]

    def identity(file: Path) -> list[int | str]:
        return [*file_identity(file), files_digest(xml_files)]

    # Messages and the derived label map name the folder as the caller spells it: the spelling keys the entry.
    (part,) = indexed_parts([listing.resolve()], lambda _: _read_split(root, image_ids, listed_in, label_map),
                            label_map, check_images=check_images, progress=progress, identity=identity,
                            variant=json.dumps(["voc", str(root), split]))
    return Readout(part.records, part.label_map, part.problems, part.checked)


def _read_split(root: Path, image_ids: list[str], listed_in: str, label_map: LabelMap | None) -> FilePart:
    """The records of the listed XML files (as columns, each numbered by its place in the list)."""
    annotations: list[tuple[int, _VocAnnotation]] = []
    problems: list[Problem] = []
    for number, image_id in enumerate(image_ids):
        source = f"{ANNOTATIONS_DIR}/{image_id}.xml"
        try:
            annotations.append((number, _read_annotation(root, image_id, source, listed_in)))
        except _Malformed as error:
            problems.append(Problem("malformed_annotation", source, str(error), image_id=image_id))
    if label_map is None:
        names = sorted({obj.name for _, annotation in annotations for obj in annotation.objects})
        if not names:
            raise DataError(_no_classes_message(root, len(annotations), problems))
        label_map = LabelMap.from_names(
            names, source=f"derived from the class names in {root / ANNOTATIONS_DIR} (sorted, ids 1..K)")
    records = [_to_record(annotation, label_map, position, problems)
               for position, (_, annotation) in enumerate(annotations)]
    columns = RecordColumns.of_image_files(records, [number for number, _ in annotations],
                                           f"{ANNOTATIONS_DIR}/{{image_id}}.xml")
    return FilePart(columns, problems, {}, label_map=label_map)


def _no_classes_message(root: Path, readable: int, problems: list[Problem]) -> str:
    listing = "".join(f"\n  {problem}" for problem in problems[:5])
    more = f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else ""
    return (f"{root}: no objects in {readable} readable annotation(s), so no label map can be "
            f"derived; {len(problems)} annotation(s) could not be read{listing}{more}")


def _image_ids(root: Path, split: str | None) -> tuple[list[str], str]:
    """The ids to read, and where they were listed (for messages)."""
    if split is None:
        folder = root / ANNOTATIONS_DIR
        if not folder.is_dir():
            raise DataError(f"{folder}: folder not found; a VOC dataset keeps its XML files in "
                            f"{ANNOTATIONS_DIR}/")
        return sorted(path.stem for path in folder.glob("*.xml")), f"{ANNOTATIONS_DIR}/"
    path = root / SPLITS_DIR / f"{split}.txt"
    if not path.is_file():
        raise DataError(f"{path}: split file not found. {_available_splits(root)}")
    text = read_user_text(path, "split file")
    # VOC's per-class files (`cat_train.txt`) add a second column (1, 0, -1); only the id counts.
    return [line.split()[0] for line in text.splitlines() if line.strip()], f"{SPLITS_DIR}/{split}.txt"


def _available_splits(root: Path) -> str:
    folder = root / SPLITS_DIR
    names = sorted(path.stem for path in folder.glob("*.txt")) if folder.is_dir() else []
    if not names:
        return f"{folder} has no split files; read without a split to use every annotation."
    return f"Available splits in {folder}: {', '.join(names)}."


def _read_annotation(root: Path, image_id: str, source: str, listed_in: str) -> _VocAnnotation:
    try:
        xml_path = resolve_inside(root / ANNOTATIONS_DIR, f"{image_id}.xml", what="id", source=listed_in)
    except DataError:
        raise _Malformed(f"id {image_id!r} in {listed_in} points outside {ANNOTATIONS_DIR}/") from None
    if not xml_path.is_file():
        raise _Malformed(f"listed in {listed_in} but the annotation file does not exist")
    try:
        data = xml_path.read_bytes()
    except OSError as error:
        raise _Malformed(f"cannot be read ({error.strerror or error})") from None
    parser = ET.XMLParser(target=_NoDoctypeTreeBuilder())
    try:
        parser.feed(data)
        element = parser.close()
    except ET.ParseError as error:
        raise _Malformed(f"is not well-formed XML ({error})") from None
    if element.tag != "annotation":
        raise _Malformed(f"root element is <{element.tag}>, not <annotation>")

    issues: list[str] = []
    filename = (element.findtext("filename") or "").strip() or f"{image_id}.jpg"
    image_path = None
    try:
        image_path = resolve_inside(root / IMAGES_DIR, filename, what="<filename>", source=source)
    except DataError:
        issues.append(f"<filename> {filename!r} points outside {IMAGES_DIR}/; detkeeper only reads "
                      "images inside the dataset folder")
    width = _size(element, "width", issues)
    height = _size(element, "height", issues)
    # VOC's <difficult> (like <truncated> and <pose>) is deliberately ignored: detkeeper trains and
    # evaluates on every box, as create_pascal_tf_record.py does by default.
    objects = [_object(obj, position, issues) for position, obj in enumerate(element.findall("object"))]
    if issues or image_path is None:
        raise _Malformed("; ".join(issues))
    return _VocAnnotation(image_id, source, image_path, width, height,
                          [obj for obj in objects if obj is not None])


def _size(element: ET.Element, tag: str, issues: list[str]) -> int | None:
    """``size/<tag>`` in pixels; None when absent or 0 (LabelImg writes 0 when it does not know)."""
    text = (element.findtext(f"size/{tag}") or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        issues.append(f"<size>/<{tag}> {text!r} is not a number")
        return None
    if not value.is_integer() or value < 0:
        issues.append(f"<size>/<{tag}> {text!r} is not a whole number of pixels")
        return None
    return int(value) or None


def _object(element: ET.Element, position: int, issues: list[str]) -> _VocObject | None:
    name = (element.findtext("name") or "").strip()
    found = len(issues)
    if not name:
        issues.append(f"object {position} has no <name>")
    bndbox = element.find("bndbox")
    if bndbox is None:
        issues.append(f"object {position} ({name or 'unnamed'}) has no <bndbox>")
        return None
    corners = []
    for tag in _CORNERS:
        text = (bndbox.findtext(tag) or "").strip()
        try:
            corners.append(float(text))
        except ValueError:
            issues.append(f"object {position} ({name or 'unnamed'}) <bndbox>/<{tag}> "
                          + (f"{text!r} is not a number" if text else "is missing"))
    if len(issues) > found:
        return None
    xmin, ymin, xmax, ymax = corners
    return _VocObject(position, name, (xmin, ymin, xmax, ymax))


def _to_record(annotation: _VocAnnotation, label_map: LabelMap, record_index: int,
               problems: list[Problem]) -> DetectionRecord:
    """The record with the objects whose class the label map knows; the rest become problems."""
    xyxy, class_ids = [], []
    for obj in annotation.objects:
        class_id = label_map.id_of_name(obj.name)
        if class_id is None:
            problems.append(Problem(
                "unknown_class", annotation.source,
                f"class {obj.name!r} is not in the label map ({label_map.source}: "
                f"{', '.join(label_map.names)})",
                image_id=annotation.image_id, record_index=record_index, box_index=obj.position))
            continue
        xyxy.append(obj.xyxy)
        class_ids.append(class_id)
    return DetectionRecord(
        image_id=annotation.image_id,
        boxes=xyxy_to_yxyx(np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)),
        class_ids=np.asarray(class_ids, dtype=np.int64),
        is_crowd=np.zeros(len(class_ids), dtype=bool),
        source=annotation.source,
        image_path=annotation.image_path,
        width=annotation.width,
        height=annotation.height,
    )


# --- writing ------------------------------------------------------------------------------------
def write_voc(root: str | os.PathLike, records: Sequence[DetectionRecord], label_map: LabelMap,
              split: str | None = None) -> Path:
    """Write `records` as a VOC folder that :func:`read_voc` reads back unchanged.

    Images already inside ``root/JPEGImages`` are referenced where they are; others are copied in
    as ``JPEGImages/<image_id><ext>`` (bytes-only records get the extension of their format).
    Coordinates are written as the shortest decimal that gives back the same float32 (integers
    as integers). VOC has no crowd flag: crowd regions are written as ``difficult`` objects, the
    nearest VOC notion of "ignore in evaluation", which :func:`read_voc` does not read back.
    Unknown sizes are written as 0, which :func:`read_voc` reads back as None.
    """
    root = Path(root)
    for record in records:
        _check_image_id(record)
        filename = _place_image(record, root / IMAGES_DIR)
        xml = _annotation_xml(record, filename, label_map)
        atomic_write_text(root / ANNOTATIONS_DIR / f"{record.image_id}.xml", xml)
    if split is not None:
        atomic_write_text(root / SPLITS_DIR / f"{split}.txt",
                          "".join(f"{record.image_id}\n" for record in records))
    return root


def _check_image_id(record: DetectionRecord) -> None:
    """The id becomes a file name and a split-file line, so it must be a plain, space-free name."""
    image_id = record.image_id
    if (not image_id or image_id in (".", "..") or "/" in image_id or "\\" in image_id
            or any(char.isspace() for char in image_id)):
        raise DataError(f"{record.source}: image id {image_id!r} cannot be a VOC file name "
                        "(it must be non-empty, with no slashes or whitespace)")


def _place_image(record: DetectionRecord, images_dir: Path) -> str:
    """The image's name relative to `images_dir`, copying or writing it there when needed."""
    if record.image_path is not None:
        image_path = Path(record.image_path).resolve()
        inside = images_dir.resolve()
        if inside in image_path.parents:
            return image_path.relative_to(inside).as_posix()
        extension = image_path.suffix
        try:
            data = image_path.read_bytes()
        except OSError as error:
            raise DataError(f"{record.source}: cannot read image {image_path} "
                            f"({error.strerror or error})") from None
    else:
        assert record.encoded_image is not None
        data = record.encoded_image
        extension = _extension_of(data, record.source)
    filename = f"{record.image_id}{extension}"
    atomic_write_bytes(images_dir / filename, data)
    return filename


def _extension_of(data: bytes, source: str) -> str:
    image_format = sniff_format(data)
    if image_format is not None:
        return EXTENSIONS[image_format]
    raise DataError(f"{source}: the encoded image is not JPEG, PNG, GIF or BMP "
                    f"(starts with {data[:8]!r}); cannot name its file")


def _annotation_xml(record: DetectionRecord, filename: str, label_map: LabelMap) -> str:
    annotation = ET.Element("annotation")
    # LabelImg's convention (and BCCD's): <folder> names the images' folder. Not the dataset
    # folder's name, which would make the files depend on where they were written.
    _text_element(annotation, "folder", IMAGES_DIR)
    _text_element(annotation, "filename", filename)
    size = ET.SubElement(annotation, "size")
    _text_element(size, "width", str(record.width or 0))
    _text_element(size, "height", str(record.height or 0))
    _text_element(size, "depth", "3")
    for class_id, box, crowd in zip(record.class_ids, yxyx_to_xyxy(record.boxes), record.is_crowd):
        if not label_map.has_id(class_id):
            raise DataError(f"{record.source}: class id {class_id} is not in the label map "
                            f"({label_map.source}: ids {label_map.ids})")
        obj = ET.SubElement(annotation, "object")
        _text_element(obj, "name", label_map.item_of_id(class_id).name)
        _text_element(obj, "pose", "Unspecified")
        _text_element(obj, "truncated", "0")
        _text_element(obj, "difficult", str(int(crowd)))
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(_CORNERS, box):
            _text_element(bndbox, tag, np.format_float_positional(np.float32(value), unique=True, trim="-"))
    ET.indent(annotation, space="\t")
    return ET.tostring(annotation, encoding="unicode") + "\n"


def _text_element(parent: ET.Element, tag: str, text: str) -> None:
    ET.SubElement(parent, tag).text = text
