"""`detkeeper demo`: the main job end to end on the built-in dataset, as a new user meets it.

Generate and check the shapes dataset, train the `demo` preset (COCO mAP on the validation split,
best-k checkpoints, early stopping), export the best checkpoint with verification, evaluate the
export on the held-out test split, predict on held-out images, and write the HTML report. Every
step is the library call the matching command makes, so the demo shows what the commands do.
Rerunning it reuses what is done: training resumes or says it finished, a verified export is kept.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from detkeeper.cli.console import progress
from detkeeper.cli.train_commands import train_with_progress
from detkeeper.config import load_config
from detkeeper.config.schema import SPLITS
from detkeeper.data.sources import DataSources
from detkeeper.errors import RunFailed
from detkeeper.run.exports import ExportPaths, default_export_dir
from detkeeper.run.layout import RunDirectory

EXAMPLES = """\
examples:
  detkeeper demo                                      about 10 minutes on 2 CPU cores
  detkeeper demo --run-dir /tmp/demo --set train.steps=400
  detkeeper demo --quiet --json                       only a JSON summary on stdout"""

PREDICTED_IMAGES = 16
"""Held-out test images the demo draws predictions on (the evaluation uses the whole test split)."""


def register(commands, common) -> None:
    demo = commands.add_parser(
        "demo", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        help="the main job on the built-in dataset: train, export, evaluate, predict, report",
        description="Generate the built-in shapes dataset and check it, train the `demo` preset with COCO mAP "
                    "evaluation, best-k checkpoints and early stopping, export the best checkpoint as a "
                    "verified SavedModel, evaluate that export on the held-out test split, predict on "
                    "held-out images and write an HTML report. Rerun it to resume where it stopped.")
    demo.add_argument("--run-dir", help="run directory (default: the preset's run_dir, runs/demo)")
    demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a key of the demo preset, e.g. train.steps=400 (repeatable)")
    demo.add_argument("--json", action="store_true", help="print a JSON summary (paths and metrics) at the end")
    demo.set_defaults(handler=run_demo)


@dataclass
class _Steps:
    """Numbered progress lines (suppressed with --json, which prints only the summary)."""

    total: int
    silent: bool
    done: int = 0
    summary: dict = field(default_factory=dict)

    def begin(self, text: str) -> None:
        self.done += 1
        self.say(f"{self.done}/{self.total} {text}")

    def say(self, text: str) -> None:
        if not self.silent:
            print(text, flush=True)


def run_demo(args) -> int:
    config = load_config("demo", _run_dir_overrides(args.run_dir) + list(args.set))
    run = RunDirectory(config.run_dir)
    steps = _Steps(total=6, silent=args.json)
    sources = DataSources(config.data)

    steps.begin(f"built-in dataset: {config.data.train.path}")
    _check_splits(sources, steps, args.quiet or args.json)

    steps.begin(f"training the demo preset into {run.path} ({config.train.steps} steps, COCO mAP on val every "
                f"{config.evaluation.every_steps}; best {config.checkpoint.keep_best} kept; early stopping)")
    trained = _train(config, args.quiet or args.json)
    best = trained.best
    steps.summary["training"] = {"status": trained.status, "step": trained.step, "best_checkpoint": best.name,
                                 "best_step": best.step, "val_mAP": best.metrics.get("val_mAP"),
                                 "val_mAP50": best.metrics.get("val_mAP50")}
    steps.say(f"    {trained.status.replace('_', ' ')} at step {trained.step}; best {best.name}: "
              f"val mAP {best.metrics['val_mAP']:.3f}, mAP50 {best.metrics['val_mAP50']:.3f}")

    steps.begin(f"exporting {best.name} (reloaded without detkeeper and checked against the checkpoint)")
    export_dir, verification = _export(run, best)
    steps.summary["export"] = {"path": str(export_dir), "verification": verification}
    steps.say(f"    {export_dir}  ({verification})")

    steps.begin("evaluating the export on the held-out test split")
    evaluation = _evaluate(export_dir, args.quiet or args.json)
    stats = evaluation.result.stats
    steps.summary["test"] = {"mAP": stats["mAP"], "mAP50": stats["mAP50"], "mAP75": stats["mAP75"],
                             "images": evaluation.num_images, "latency_ms": evaluation.latency_ms,
                             "metrics": str(evaluation.metrics_path)}
    steps.say(f"    test mAP {stats['mAP']:.3f}, mAP50 {stats['mAP50']:.3f} on {evaluation.num_images} images "
              f"({evaluation.latency_ms:.1f} ms per image)  ->  {evaluation.out_dir}")

    test_images = [record.image_path for record in sources.readout("test").records[:PREDICTED_IMAGES]]
    steps.begin(f"predicting on {len(test_images)} held-out images")
    predictions = _predict(export_dir, test_images, run.predictions_path, args.quiet or args.json)
    steps.summary["predictions"] = str(predictions)
    steps.say(f"    {predictions}  (COCO JSON) and {predictions.parent / 'images'}{os.sep}")

    steps.begin("writing the report")
    report = _report(run)
    steps.summary["report"] = str(report)
    steps.say(f"    {report}")

    if args.json:
        print(json.dumps({"run_dir": str(run.path), **steps.summary}, indent=2))
        return 0
    print(f"\nEverything is in {run.path}{os.sep}:")
    print(f"  report.html          open it in a browser: {report.resolve().as_uri()}")
    print("  checkpoints/         kept checkpoints; ledger.json lists them with their validation stats")
    print(f"  exports/{export_dir.name}/  the verified SavedModel (+ model.keras, label map, metadata)")
    print(f"  predictions/         {len(test_images)} held-out images with drawn boxes + predictions.json")
    print("  logs/                TensorBoard (losses, learning rate, validation stats, drawn predictions)")
    print("\nNext:")
    print(f"  detkeeper checkpoints {run.path}")
    print(f"  tensorboard --logdir {run.logs_path}")
    print(f"  detkeeper predict {export_dir} YOUR_IMAGES... --out predictions")
    print(f"  detkeeper evaluate --model {run.path} --data test --checkpoint latest")
    print("  detkeeper config show demo > my_run.yaml    then point data.* at your dataset and "
          "`detkeeper train my_run.yaml`")
    return 0


def _run_dir_overrides(run_dir: str | None) -> list[str]:
    """--run-dir moves the generated dataset into the run directory too, as the preset has it."""
    if not run_dir:
        return []
    shapes = Path(run_dir) / "shapes"
    return [f"run_dir={run_dir}"] + [f"data.{split}.path={shapes}" for split in SPLITS]


def _check_splits(sources, steps: _Steps, quiet: bool) -> None:
    steps.say(f"    classes: {', '.join(sources.label_map.names)}")
    checked = {}
    for split in sources.configured_splits:
        with progress(None, f"reading {split}", quiet) as update:
            readout = sources.readout(split, progress=update)
        with progress(len(readout.records), f"checking {split}", quiet) as update:
            prepared = sources.prepare(split, progress=update)
        problems = len(prepared.report.problems)
        checked[split] = {"images": len(prepared.records), "boxes": prepared.num_boxes, "problems": problems}
        steps.say(f"    {split:5s} {len(prepared.records):5,} images  {prepared.num_boxes:6,} boxes  "
                  f"{'no problems' if not problems else f'{problems} problem(s)'}")
    steps.summary["data"] = checked


def _train(config, quiet: bool):
    result = train_with_progress(config, quiet)
    if result.best is None:
        raise RunFailed(f"training of {result.run_dir} kept no checkpoint, so there is nothing to export; "
                         "see its train.log")
    return result


def _export(run, best) -> tuple[Path, str]:
    """The verified export of the best checkpoint: made now, or kept from an earlier demo run."""
    from detkeeper.export.exporter import export_model  # light: imports TensorFlow

    out = default_export_dir(run, best.name)
    if ExportPaths(out).verification.is_file():  # published exports were verified before their rename; reuse it
        return out, "verified earlier; kept"
    result = export_model(run.path, checkpoint=best.step, out=out)
    verification = result.verification
    return result.out_dir, (f"verification passed on {verification.num_images} images: max box difference "
                            f"{verification.max_box_difference:.1g}, max score difference "
                            f"{verification.max_score_difference:.1g}")


def _evaluate(export_dir: Path, quiet: bool):
    from detkeeper.evaluation.evaluate import prepare_evaluation  # light: imports TensorFlow
    from detkeeper.export.predictor import load  # light: imports TensorFlow

    prepared = prepare_evaluation(export_dir, "test", load_export=load)
    with progress(prepared.num_images, "evaluating", quiet) as update:
        return prepared.run(progress=update)


def _predict(export_dir: Path, images: list[Path], out: Path, quiet: bool) -> Path:
    from detkeeper.export.predictions import write_predictions  # light: imports TensorFlow
    from detkeeper.export.predictor import load  # light: imports TensorFlow

    predictor = load(export_dir)
    with progress(len(images), "predicting", quiet) as update:
        found = predictor.detect_files(images, progress=update)
    return write_predictions(found, predictor, out, min_score=0.3)


def _report(run) -> Path:
    from detkeeper.report import write_report  # light: imports TensorFlow

    return write_report(run.path)
