"""`detkeeper data ...`: check, convert, generate and show datasets."""

from __future__ import annotations

import argparse
import dataclasses
import io
from pathlib import Path

import numpy as np

from detkeeper.cli.console import is_config_target, print_json, progress, table
from detkeeper.config import load_config
from detkeeper.config.schema import DataConfig, SourceConfig
from detkeeper.data.columns import all_class_ids
from detkeeper.data.coco import write_coco
from detkeeper.data.sources import DataSources, detect_format
from detkeeper.data.synthetic import generate_shapes_dataset
from detkeeper.errors import DataError
from detkeeper.files import atomic_write_bytes, is_url
from detkeeper.visualize import draw_boxes, image_grid

CHECK_EXAMPLES = """\
examples:
  detkeeper data check ../shared/data/bccd/BCCD            every VOC annotation
  detkeeper data check ../shared/data/bccd/BCCD --split val
  detkeeper data check instances_val2017.json --images val2017/
  detkeeper data check 'records/train-*.tfrecord' --label-map label_map.pbtxt
  detkeeper data check config.yaml                         every split the config names
  detkeeper data check config.yaml --json | jq .ok          the counts as JSON, for scripts

Exit status: 0 when nothing needs dropping (warnings allowed), 1 when records or boxes are
unusable, 2 or 3 when the config or data cannot be read at all."""

CONVERT_EXAMPLES = """\
examples:
  detkeeper data convert VOCdevkit/VOC2012 --split train --to tfrecord --out records/train --shards 8
  detkeeper data convert instances_train.json --to tfrecord --out records/train
  detkeeper data convert 'records/val-*' --label-map label_map.pbtxt --to coco --out val/instances.json
  detkeeper data convert my_run.yaml --split val --to tfrecord --out records/val --json

Unusable records and boxes are dropped and reported (--strict refuses instead); the label map
is written beside the output as label_map.pbtxt."""

GENERATE_EXAMPLES = """\
examples:
  detkeeper data generate data/shapes
  detkeeper data generate data/shapes-big --num-train 2000 --image-size 320 --seed 1"""

SHOW_EXAMPLES = """\
examples:
  detkeeper data show demo --out batch.png                  a training batch of the demo preset
  detkeeper data show config.yaml --split val --no-augment --out val.png
  detkeeper data show ../shared/data/bccd/BCCD --image-size 512 --out bccd.png"""


def register(commands, common) -> None:
    data = commands.add_parser("data", help="check, convert, generate and show datasets",
                               description="Work with datasets: VOC folders, COCO JSON, TF OD API TFRecords.")
    sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    fmt = argparse.RawDescriptionHelpFormatter

    check = sub.add_parser("check", parents=[common], formatter_class=fmt, epilog=CHECK_EXAMPLES,
                           help="report and count every problem in a dataset",
                           description="Open every annotation and image and report each problem: missing, "
                                       "corrupt or non-RGB images, size mismatches, inverted, zero-area or "
                                       "outside boxes, unknown classes, duplicate ids.")
    _add_target_arguments(check)
    check.add_argument("--no-images", action="store_true", help="check annotations only (fast; images unopened)")
    check.add_argument("--examples", type=int, default=3, help="problems listed per kind (default 3)")
    check.add_argument("--json", action="store_true",
                       help="print the counts and problems as JSON on stdout (no progress bar)")
    check.set_defaults(handler=run_check)

    convert = sub.add_parser("convert", parents=[common], formatter_class=fmt, epilog=CONVERT_EXAMPLES,
                             help="write a dataset as sharded TF OD API TFRecords or COCO JSON",
                             description="Convert a VOC, COCO or TFRecord dataset to TFRecords or COCO JSON.")
    _add_target_arguments(convert)
    convert.add_argument("--to", choices=["tfrecord", "coco"], required=True, help="output format")
    convert.add_argument("--out", required=True,
                         help="tfrecord: output prefix (shards PREFIX-00000-of-0000N); coco: JSON file")
    convert.add_argument("--shards", type=int, default=1, help="TFRecord shards (default 1)")
    convert.add_argument("--strict", action="store_true", help="refuse to convert when anything is unusable")
    convert.add_argument("--json", action="store_true",
                         help="print what was written and dropped as JSON on stdout (no progress bar)")
    convert.set_defaults(handler=run_convert)

    generate = sub.add_parser("generate", parents=[common], formatter_class=fmt, epilog=GENERATE_EXAMPLES,
                              help="generate the built-in shapes dataset (VOC layout)",
                              description="Generate the seeded, procedurally drawn shapes dataset with exact "
                                          "boxes, as a VOC folder with train/val/test splits and a label map.")
    generate.add_argument("out", help="folder to create (reused when it already holds the same dataset)")
    for name, default in [("num-train", 400), ("num-val", 100), ("num-test", 100), ("image-size", 256),
                          ("max-objects", 6), ("seed", 0)]:
        generate.add_argument(f"--{name}", type=int, default=default, help=f"default {default}")
    generate.set_defaults(handler=run_generate)

    show = sub.add_parser("show", parents=[common], formatter_class=fmt, epilog=SHOW_EXAMPLES,
                          help="draw a batch from the input pipeline, boxes included, into a PNG",
                          description="Run the tf.data input pipeline and draw one batch with its boxes, "
                                      "exactly as a model would receive it.")
    _add_target_arguments(show)
    show.add_argument("--out", required=True, help="PNG file to write")
    show.add_argument("--count", type=int, default=8, help="images in the batch (default 8)")
    show.add_argument("--image-size", type=int, help="model input size (default: the config's model.image_size, else 320)")
    show.add_argument("--no-augment", action="store_true", help="show evaluation-time preprocessing")
    show.add_argument("--seed", type=int, help="seed (default: the config's train.seed, else 0)")
    show.set_defaults(handler=run_show)


def _add_target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", help="a config YAML or preset name, or a dataset: VOC root, COCO JSON, "
                                       "TFRecord file/glob/comma list")
    parser.add_argument("--split", help="with a config: train, val or test (default: all configured); "
                                        "with a VOC dataset: an ImageSets/Main name (default: all annotations)")
    parser.add_argument("--format", choices=["voc", "coco", "tfrecord"], help="dataset format (default: guessed)")
    parser.add_argument("--images", help="COCO: image folder (default: the JSON's folder)")
    parser.add_argument("--label-map", help="label_map.pbtxt to map class names and ids")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. data.bad_records=strict (repeatable)")


@dataclasses.dataclass
class _Target:
    sources: object  # DataSources
    splits: list[str]
    config: object | None
    labels: dict[str, str]  # split -> what to call it in output


def _resolve_target(args, bad_records: str = "skip", check_images: bool = True) -> _Target:
    """Turn the command's TARGET into DataSources and the splits to act on."""
    if is_config_target(args.target):
        config = load_config(args.target, args.set)
        sources = DataSources(config.data, check_images=check_images)
        splits = [args.split] if args.split else sources.configured_splits
        if not splits:
            raise DataError(f"{args.target}: the config names no data split (data.train / data.val / data.test)")
        for split in splits:
            sources.source(split)  # a clear error for a split the config does not set
        return _Target(sources, splits, config, {s: f"data.{s}" for s in splits})
    fmt = args.format or detect_format(args.target)
    source = SourceConfig(format=fmt, path=args.target, split=args.split if fmt == "voc" else None,
                          images=args.images if fmt == "coco" else None)
    data = DataConfig(train=source, label_map=args.label_map, bad_records=bad_records)
    name = args.target + (f" (split {args.split})" if fmt == "voc" and args.split else "")
    sources = DataSources(data, check_images=check_images, display_names={"train": name})
    return _Target(sources, ["train"], None, {"train": name})


def run_check(args) -> int:
    target = _resolve_target(args, check_images=not args.no_images)
    summaries, any_errors = [], False
    for split in target.splits:
        with progress(None, f"reading {target.labels[split]}", args.quiet or args.json) as update:
            readout = target.sources.readout(split, progress=update)
        with progress(len(readout.records), f"checking {target.labels[split]}", args.quiet or args.json) as update:
            prepared = target.sources.prepare(split, progress=update, log_problems=False, allow_empty=True)
        summaries.append(_summary(target.labels[split], prepared))
        any_errors |= prepared.report.has_errors
        if not args.json:
            _print_check(target.labels[split], prepared, args.examples)
    if args.json:
        print_json({"splits": summaries, "ok": not any_errors})
    return 1 if any_errors else 0


def _summary(label: str, prepared) -> dict:
    ids, counts = np.unique(all_class_ids(prepared.records), return_counts=True)
    per_class = dict(zip(ids.tolist(), counts.tolist()))
    return {
        "split": label,
        "records_read": prepared.num_read,
        "records_usable": len(prepared.records),
        "boxes_usable": prepared.num_boxes,
        "boxes_per_class": {prepared.label_map.item_of_id(i).name: per_class.get(i, 0)
                            for i in prepared.label_map.ids},
        "problems": prepared.report.counts(),
    }


def _print_check(label: str, prepared, examples: int) -> None:
    summary = _summary(label, prepared)
    print(f"{label}: {summary['records_read']:,} images read, {summary['records_usable']:,} usable, "
          f"{summary['boxes_usable']:,} usable boxes")
    rows = [(item.id, item.name, summary["boxes_per_class"][item.name]) for item in prepared.label_map.items]
    print("\n".join("  " + line for line in table(rows, ["id", "class", "boxes"]).splitlines()))
    if prepared.report.problems:
        print(f"  {len(prepared.report.problems):,} problem(s):")
        print("\n".join("  " + line for line in prepared.report.summary_lines(examples)))
    else:
        print("  no problems found")
    print()


def run_convert(args) -> int:
    if is_url(args.out):  # refused before the dataset is read, not after
        raise DataError(f"--out {args.out}: detkeeper writes local files only; convert into a local folder "
                        "and copy the files to the store (gsutil cp, gcloud storage cp)")
    target = _resolve_target(args, bad_records="strict" if args.strict else "skip")
    if len(target.splits) != 1:
        raise DataError(f"{args.target}: a config names several splits; choose one with --split")
    split = target.splits[0]
    with progress(None, f"reading {target.labels[split]}", args.quiet or args.json) as update:
        readout = target.sources.readout(split, progress=update)
    with progress(len(readout.records), f"checking {target.labels[split]}", args.quiet or args.json) as update:
        prepared = target.sources.prepare(split, progress=update, log_problems=False)
    out = Path(args.out)
    if args.to == "tfrecord":
        from detkeeper.data.tfrecord_writer import write_tfrecords  # light: imports TensorFlow
        if args.shards < 1:
            raise DataError(f"--shards must be at least 1, got {args.shards}")
        written = write_tfrecords(prepared.records, prepared.label_map, out, num_shards=args.shards)
        label_map_path = prepared.label_map.write(out.parent / "label_map.pbtxt")
    else:
        written = [write_coco(prepared.records, prepared.label_map, out, images_dir=args.images)]
        label_map_path = prepared.label_map.write(out.parent / "label_map.pbtxt")
    dropped_images = prepared.num_read - len(prepared.records)
    dropped_boxes = sum(1 for problem in prepared.report.problems if problem.scope == "box")
    if args.json:
        print_json({"format": args.to, "files": [str(path) for path in written], "label_map": str(label_map_path),
                    "images": len(prepared.records), "boxes": prepared.num_boxes,
                    "dropped_images": dropped_images, "dropped_boxes": dropped_boxes,
                    "problems": prepared.report.counts()})
        return 0
    print(f"wrote {len(prepared.records):,} images ({prepared.num_boxes:,} boxes) to "
          f"{len(written)} file(s): {', '.join(str(p) for p in written[:4])}{' ...' if len(written) > 4 else ''}")
    print(f"label map: {label_map_path}")
    if prepared.report.problems:
        print(f"dropped {dropped_images:,} image(s) and {dropped_boxes:,} box(es); problems:")
        print("\n".join(prepared.report.summary_lines()))
    return 0


def run_generate(args) -> int:
    root = generate_shapes_dataset(args.out, num_train=args.num_train, num_val=args.num_val,
                                   num_test=args.num_test, image_size=args.image_size,
                                   max_objects=args.max_objects, seed=args.seed)
    print(f"shapes dataset (VOC layout) at {root}: train {args.num_train}, val {args.num_val}, "
          f"test {args.num_test} images; label map {Path(root) / 'label_map.pbtxt'}")
    return 0


def run_show(args) -> int:
    target = _resolve_target(args, check_images=True)
    split = target.splits[0]
    config = target.config
    image_size = args.image_size or (config.model.image_size if config else 320)
    seed = args.seed if args.seed is not None else (config.train.seed if config else 0)
    augment_config = config.data.augment if config else None
    path = write_batch_picture(target.sources, split, Path(args.out), count=args.count, image_size=image_size,
                               augment=not args.no_augment, augment_config=augment_config, seed=seed,
                               model_config=config.model if config else None)
    print(f"{target.labels[split]}: {args.count} images as the pipeline makes them -> {path}")
    return 0


def write_batch_picture(sources, split: str, out: Path, *, count: int, image_size: int, augment: bool,
                        augment_config=None, seed: int = 0, max_boxes: int = 100, model_config=None) -> Path:
    """Draw one pipeline batch (training transforms unless `augment` is false) into a PNG grid,
    resized as `model_config`'s model would be (detkeeper's default without one)."""
    from detkeeper.data.augment import Resize  # light: imports TensorFlow
    from detkeeper.data.pipeline import Augmentation, training_dataset  # light: imports TensorFlow
    from detkeeper.models.registry import DEFAULT_RESIZE, model_resize  # light: imports Keras

    resize = Resize(*(model_resize(model_config) if model_config is not None else DEFAULT_RESIZE))

    if count < 1:
        raise DataError(f"--count must be at least 1, got {count}")
    prepared = sources.prepare(split)
    augmentation = None
    if augment:
        augmentation = Augmentation.from_config(augment_config) if augment_config else Augmentation()
    dataset = training_dataset(prepared.records, prepared.label_map, image_size=image_size,
                               batch_size=count, max_boxes=max_boxes, augmentation=augmentation, seed=seed,
                               resize=resize)
    batch = next(iter(dataset))
    pictures = []
    for image, boxes, classes, num in zip(batch["images"].numpy(), batch["boxes"].numpy(),
                                          batch["classes"].numpy(), batch["num_boxes"].numpy()):
        ids = prepared.label_map.indices_to_ids(classes[:num])
        pictures.append(draw_boxes(image, boxes[:num], ids, prepared.label_map))
    buffer = io.BytesIO()
    image_grid(pictures, columns=min(4, count)).save(buffer, "PNG")
    return atomic_write_bytes(out, buffer.getvalue())
