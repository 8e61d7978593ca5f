"""`detkeeper export`: a kept checkpoint -> a verified SavedModel (+ .keras) directory."""

from __future__ import annotations

import argparse

from detkeeper.cli.console import print_json
from detkeeper.cli.predict_command import image_files

EXAMPLES = """\
examples:
  detkeeper export runs/demo                               best checkpoint -> runs/demo/exports/step-…
  detkeeper export runs/demo --checkpoint latest --out exports/demo
  detkeeper export runs/demo --checkpoint 1200 --score-threshold 0.3 --max-detections 50
  detkeeper export runs/demo --tflite                      also float32 and dynamic-range int8 TFLite models
  detkeeper export runs/demo --json | jq .verification     what was compared, for scripts

Then, anywhere TensorFlow runs (detkeeper not needed):
  import tensorflow as tf
  model = tf.saved_model.load("runs/demo/exports/step-0000800/saved_model")
  detections = model(tf.constant(uint8_images))   # the TF OD API's 8 outputs: detection_boxes/scores/
                                                  # classes, num_detections, raw_detection_boxes/scores,
                                                  # detection_multiclass_scores, detection_anchor_indices"""


def register(commands, common) -> None:
    parser = commands.add_parser(
        "export", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        help="export a kept checkpoint as a verified SavedModel (TF OD API outputs) and a .keras archive",
        description="Export a checkpoint of a run: a SavedModel with preprocessing and NMS in the graph and "
                    "the TF OD API's outputs and signatures (uint8 images, encoded images, tf.Example), the "
                    "label map, config and metadata.json as assets, and a .keras archive. Before it is "
                    "published, the SavedModel is reloaded in a fresh Python process without detkeeper and "
                    "must answer as the checkpoint does on validation images; otherwise nothing is written.")
    parser.add_argument("run", metavar="RUN_DIR", help="a run directory, a checkpoint in it, or a TF OD API model "
                                                       "folder (pipeline.config + checkpoint/)")
    parser.add_argument("--checkpoint", metavar="best|latest|STEP", help="which kept checkpoint (default best)")
    parser.add_argument("--out", metavar="DIR", help="export directory (default RUN_DIR/exports/<checkpoint>)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing export at --out (only once the new one is verified)")
    parser.add_argument("--score-threshold", type=float, metavar="S",
                        help="drop detections below S (default: the run's evaluation.score_threshold)")
    parser.add_argument("--iou-threshold", type=float, metavar="T",
                        help="NMS IoU threshold (default: the run's evaluation.iou_threshold)")
    parser.add_argument("--max-detections", type=int, metavar="N",
                        help="detections per image (default: the run's evaluation.max_detections)")
    parser.add_argument("--verify-images", type=int, default=8, metavar="N",
                        help="images the verification compares on (default 8)")
    parser.add_argument("--tflite", action="store_true",
                        help="also write TFLite models to OUT/tflite/: float32 and dynamic-range int8 (int8 "
                             "weights, float32 activations; not an integer-only model), each scored by its mAP on "
                             "the verification images; one that does not convert is reported, and the SavedModel "
                             "is exported anyway")
    parser.add_argument("--verify-with", nargs="+", metavar="IMAGE",
                        help="verify on these image files or folders instead of the run's validation images "
                             "(detections compared, no mAP); a TF OD API model folder without its eval data needs it")
    parser.add_argument("--label-map", metavar="PBTXT",
                        help="with a TF OD API model folder: its classes (default: the one its pipeline.config names)")
    parser.add_argument("--json", action="store_true", help="print the export folder, metadata and verification as JSON on stdout")
    parser.set_defaults(handler=run_export)


def run_export(args) -> int:
    from detkeeper.export.exporter import export_model  # light: imports TensorFlow
    from detkeeper.tfod.model_folder import model_source  # light: imports TensorFlow

    if not (args.quiet or args.json):
        print("exporting and verifying (a fresh Python process reloads the SavedModel) ...", flush=True)
    result = export_model(model_source(args.run, args.label_map), checkpoint=args.checkpoint, out=args.out, overwrite=args.overwrite,
                          score_threshold=args.score_threshold, iou_threshold=args.iou_threshold,
                          max_detections=args.max_detections, verify_images=args.verify_images,
                          tflite=args.tflite, verify_with=image_files(args.verify_with) if args.verify_with else ())
    if args.json:
        print_json({"out_dir": str(result.out_dir), "metadata": result.metadata,
                    "verification": result.verification.to_json_dict(), "seconds": result.seconds,
                    "tflite": result.tflite.to_json_dict() if result.tflite else None})
        return 0
    source, out = result.metadata["source"], result.out_dir
    print(f"exported {source['checkpoint']} (step {source['step']}"
          f"{', EMA weights' if source['ema'] else ''}) of {source['run_dir']}")
    print(result.verification.summary())
    if result.tflite is not None:
        print("\n".join(result.tflite.summary_lines()))
    print(f"\nwritten to {out}/")
    print("  saved_model/       tf.saved_model.load(...)(uint8 images): the TF OD API's 8 outputs (detections, "
          "raw boxes and scores, anchor indices); signatures serving_default, encoded_image_string_tensor, "
          "tf_example, metadata")
    print("  model.keras        Keras archive (detkeeper.models.archive.load_keras_archive)")
    print("  metadata.json      model, conventions, thresholds, source checkpoint; also label_map.pbtxt, "
          "config.yaml")
    if result.tflite is not None:
        print("  tflite/            float32 and dynamic-range int8 (int8 weights, float32 activations) TFLite "
              "models; tflite.json: input [1, S, S, 3] float32 canvas, the 4 detection outputs, mAP")
    print("  verification.json  what was compared, and the result")
    print(f"\nnext: detkeeper predict {out} IMAGES... --out predictions")
    return 0
