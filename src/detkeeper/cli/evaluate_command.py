"""`detkeeper evaluate`: COCO mAP of a kept checkpoint on a split or a dataset, with files to keep."""

from __future__ import annotations

import argparse
import os

from detkeeper.cli.console import print_json, progress
from detkeeper.errors import DetkeeperError
from detkeeper.evaluation.coco import BACKENDS

EXAMPLES = """\
examples:
  detkeeper evaluate runs/demo                                  best checkpoint on data.val
  detkeeper evaluate runs/demo --data test --checkpoint latest
  detkeeper evaluate runs/demo --checkpoint 1200 --out reports/step1200
  detkeeper evaluate runs/demo/checkpoints/step-0001200/ckpt --data ../VOC2012 --split val
  detkeeper evaluate runs/demo --data instances_val.json --images val/ --json | jq .stats
  detkeeper evaluate runs/demo/exports/step-0001200 --data test  an export, as it serves

The model is the first argument, as for export and predict (--model PATH still works).

Writes metrics.json, detections.json (COCO results format: the dataset's own image ids,
label-map category ids, bbox [x, y, width, height] in original pixels) and pr_curves/*.png
into RUN/eval/<checkpoint>-<split or dataset>/ (an export: beside it, eval-<export>-<data>/)
unless --out says otherwise."""


def register(commands, common) -> None:
    parser = commands.add_parser(
        "evaluate", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        help="COCO mAP of a checkpoint on a split or dataset; metrics, detections and PR curves to files",
        description="Evaluate a trained model with COCO box metrics: restores a kept checkpoint of a run "
                    "(its EMA weights when the run kept them, as training evaluated), runs it over a split "
                    "of the run's config or over a dataset (classes matched by name), prints the COCO table "
                    "and AP per class, and writes metrics.json, detections.json and precision-recall plots.")
    parser.add_argument("model_path", nargs="?", metavar="MODEL",
                        help="a run directory, a checkpoint of one (RUN/checkpoints/step-NNNNNNN/ckpt), "
                             "an export of `detkeeper export` (evaluated through its serving signature), or a "
                             "TF OD API model folder (pipeline.config + checkpoint/)")
    parser.add_argument("--model", metavar="PATH", help="the same as MODEL (the older spelling)")
    parser.add_argument("--checkpoint", metavar="best|latest|STEP",
                        help="with a run directory: which kept checkpoint (default best)")
    parser.add_argument("--data", metavar="SPLIT_OR_PATH",
                        help="train, val or test: that split of the run's config (default val); else a dataset: "
                             "VOC root, COCO instances JSON, TFRecord file/glob/comma list (write ./val for a "
                             "folder named val)")
    parser.add_argument("--split", help="with a VOC dataset: an ImageSets/Main name (default: all annotations); "
                                        "without --data: the config split (default val)")
    parser.add_argument("--images", help="COCO: image folder (default: the JSON's folder)")
    parser.add_argument("--label-map", help="label_map.pbtxt naming the dataset's classes (TFRecords without "
                                            "class/text); with a TF OD API model folder, the model's too")
    parser.add_argument("--out", metavar="DIR", help="output folder (default RUN/eval/<checkpoint>-<data>)")
    parser.add_argument("--backend", choices=BACKENDS, default="faster_coco_eval",
                        help="COCO implementation (same numbers; default faster_coco_eval)")
    parser.add_argument("--batch-size", type=int,
                        help="images per batch (default: the run's train.batch_size, as training evaluated)")
    parser.add_argument("--json", action="store_true",
                        help="print metrics.json's content as JSON on stdout (no progress bar, no table)")
    parser.set_defaults(handler=run_evaluate)


def run_evaluate(args) -> int:
    from detkeeper.evaluation.evaluate import prepare_evaluation  # light: imports TensorFlow
    from detkeeper.export.predictor import load  # light: imports TensorFlow
    from detkeeper.tfod.model_folder import model_source  # light: imports TensorFlow

    model = model_source(_model_argument(args), args.label_map)
    prepared = prepare_evaluation(model, args.data, args.split, checkpoint=args.checkpoint,
                                  label_map=args.label_map, images=args.images, batch_size=args.batch_size,
                                  load_export=load)
    with progress(prepared.num_images, "evaluating", args.quiet or args.json) as update:
        report = prepared.run(out_dir=args.out, backend=args.backend, progress=update)
    if args.json:
        print_json(report.metrics)
        return 0
    entry = report.checkpoint
    weights = "EMA weights" if entry.ema else "weights"
    what = (f"export {model} of {entry.name}" if report.metrics["model"]["kind"] == "export"
            else f"{entry.name} ({weights}) of {report.run_dir}")
    print(f"{what} on {report.data}: {report.num_images:,} images, {report.latency_ms:.1f} ms per image\n")
    print(report.result.format_table())
    recorded = entry.metrics.get("val_mAP")
    if report.metrics["data"]["config_split"] == "val" and recorded is not None:
        print(f"training recorded val_mAP {recorded:.4f} for this checkpoint")
    out = report.out_dir
    print(f"\nwritten to {out}{os.sep}")
    print("  metrics.json     stats, per-class AP, TF OD API names, checkpoint and data")
    print(f"  detections.json  {report.result.num_detections:,} detections, COCO results format")
    print(f"  pr_curves{os.sep}       {len(report.plot_paths)} precision-recall PNGs")
    return 0


def _model_argument(args) -> str:
    """MODEL, given as the first argument or as --model (not both, unless they agree)."""
    if args.model_path and args.model and args.model_path != args.model:
        raise DetkeeperError(f"two models given ({args.model_path} and --model {args.model}); evaluate one at a time")
    model = args.model_path or args.model
    if not model:
        raise DetkeeperError("which model? give a run directory, checkpoint or export: "
                             "detkeeper evaluate runs/demo (see detkeeper evaluate --help)")
    return model
