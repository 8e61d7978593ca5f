"""`detkeeper predict`: run an export (or a run's checkpoint) on image files; JSON + drawn images."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from detkeeper.cli.console import print_json, progress
from detkeeper.errors import DetkeeperError

EXAMPLES = """\
examples:
  detkeeper predict runs/demo/exports/step-0000800 photos/*.jpg --out predictions
  detkeeper predict runs/demo/exports/step-0000800 photos/ --out predictions --min-score 0.5
  detkeeper predict runs/demo photos/ --out predictions          a run's best checkpoint, no export
  detkeeper predict runs/demo photos/ --out predictions --checkpoint latest --no-images
  detkeeper predict runs/demo/exports/step-0000800 a.jpg --out p --json | jq .images

Writes OUT/predictions.json (COCO format: images with file names and sizes, categories from the
label map, annotations with bbox [x, y, width, height] in pixels and a score) and OUT/images/
with the boxes drawn and labelled. Unreadable images are reported and skipped."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def register(commands, common) -> None:
    parser = commands.add_parser(
        "predict", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        help="detect objects in image files with an export; COCO JSON and drawn images",
        description="Run an exported model (or a run's checkpoint) on images: a progress bar over the files, "
                    "COCO-format JSON of the detections and a copy of each image with labelled boxes.")
    parser.add_argument("model", metavar="MODEL", help="an export directory or SavedModel, a run directory, or a TF "
                                                       "OD API model folder (pipeline.config + checkpoint/)")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--min-score", type=float, default=0.3, metavar="S",
                        help="keep detections scoring at least S in the outputs (default 0.3)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch (default 8)")
    parser.add_argument("--no-images", action="store_true", help="write the JSON only, no drawn images")
    parser.add_argument("--checkpoint", metavar="best|latest|STEP",
                        help="with a run directory: which kept checkpoint (default best)")
    parser.add_argument("--label-map", metavar="PBTXT",
                        help="with a TF OD API model folder: its classes (default: the one its pipeline.config names)")
    parser.add_argument("--json", action="store_true",
                        help="print a summary as JSON on stdout: files written, images, detections, skipped "
                             "files with the reason (no progress bar)")
    parser.set_defaults(handler=run_predict)


def image_files(arguments: list[str]) -> list[Path]:
    """The files named, and the images inside the folders named (sorted, not recursive)."""
    files = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.exists():
            files.append(path)
        else:
            raise DetkeeperError(f"{argument}: no such image file or folder")
    if not files:
        raise DetkeeperError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(arguments)}")
    return files


def run_predict(args) -> int:
    from detkeeper.export.predictions import write_predictions  # light: imports TensorFlow
    from detkeeper.export.predictor import load  # light: imports TensorFlow
    from detkeeper.tfod.model_folder import model_source  # light: imports TensorFlow

    if not 0.0 <= args.min_score <= 1.0:
        raise DetkeeperError(f"--min-score: expected a value in [0, 1], got {args.min_score}")
    if args.batch_size < 1:
        raise DetkeeperError(f"--batch-size: expected at least 1, got {args.batch_size}")
    files = image_files(args.images)
    predictor = load(model_source(args.model, args.label_map), checkpoint=args.checkpoint)
    skipped = []
    with progress(len(files), "predicting", args.quiet or args.json) as update:
        found = predictor.detect_files(files, batch_size=args.batch_size, progress=update, skipped=skipped)
    written = write_predictions(found, predictor, Path(args.out), min_score=args.min_score,
                                draw=not args.no_images)
    kept = sum(int((item.scores >= args.min_score).sum()) for item in found)
    if args.json:
        print_json({"model": predictor.source, "out_dir": str(Path(args.out)), "predictions": str(written),
                    "images_dir": None if args.no_images else str(Path(args.out) / "images"),
                    "min_score": args.min_score, "images": len(found), "detections": kept,
                    "skipped": [{"image": item.image, "reason": item.reason} for item in skipped]})
        return 0 if found else 1
    print(f"{len(found):,} images, {kept:,} detections scoring >= {args.min_score}")
    for item in skipped:
        print(f"  skipped {item.image}: {item.reason}")
    print(f"written to {args.out}{os.sep}")
    print(f"  {written.name}    COCO format (images, categories, annotations with scores)")
    if not args.no_images:
        print(f"  images{os.sep}             {len(found):,} images with labelled boxes")
    return 0 if found else 1

