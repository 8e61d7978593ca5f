"""`detkeeper train` and `detkeeper checkpoints`: run training, list what it kept."""

from __future__ import annotations

import argparse
import logging
import math
import sys

from tqdm import tqdm

from detkeeper.cli.console import print_json, table
from detkeeper.run.layout import RunDirectory
from detkeeper.run.ledger import read_ledger

TRAIN_EXAMPLES = """\
examples:
  detkeeper train demo                                  the built-in dataset, demo preset
  detkeeper train my_run.yaml                           rerun the same command to resume after a crash
  detkeeper train my_run.yaml --set train.steps=5000 --set evaluation.every_steps=250
  detkeeper train demo --run-dir runs/demo2 --quiet
  detkeeper train my_run.yaml --json | jq .best.metrics.val_mAP     how it ended, for scripts"""

CHECKPOINTS_EXAMPLES = """\
examples:
  detkeeper checkpoints runs/demo
  detkeeper checkpoints runs/demo --json | jq '.checkpoints[0]'"""


def register(commands, common) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    train = commands.add_parser(
        "train", parents=[common], formatter_class=fmt, epilog=TRAIN_EXAMPLES,
        help="train a detector, keeping the best checkpoints by validation mAP",
        description="Train the model a config describes. COCO mAP is evaluated on data.val every "
                    "evaluation.every_steps steps; the checkpoint.keep_best best and keep_last latest "
                    "checkpoints are kept in RUN_DIR/checkpoints (ledger.json lists them); training stops "
                    "early when the monitored metric stops improving. Rerunning the same command resumes.")
    train.add_argument("config", help="YAML file or preset name")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. train.steps=500 (repeatable)")
    train.add_argument("--run-dir", help="run directory (default: the config's run_dir)")
    train.add_argument("--strategy", choices=("default", "mirrored", "multi_worker", "tpu"),
                       help="tf.distribute strategy (default: the config's distribute.strategy); "
                            "multi_worker reads TF_CONFIG, see docs/distributed.md")
    train.add_argument("--json", action="store_true",
                       help="print how the run ended (status, step, best checkpoint and its stats) as JSON on "
                            "stdout; no progress bars, warnings on stderr")
    train.set_defaults(handler=run_train)

    checkpoints = commands.add_parser(
        "checkpoints", parents=[common], formatter_class=fmt, epilog=CHECKPOINTS_EXAMPLES,
        help="list a run's kept checkpoints, best first",
        description="Show the checkpoint ledger of a run directory: every kept checkpoint with its step, "
                    "validation stats and why it is kept (best, latest), best first.")
    checkpoints.add_argument("run_dir", help="a run directory (holding checkpoints/ledger.json)")
    checkpoints.add_argument("--json", action="store_true", help="print the ledger as JSON")
    checkpoints.set_defaults(handler=run_checkpoints, uses_tensorflow=False)


class BarReporter:
    """tqdm bars on stderr: one for training steps (loss, images/s), one per validation pass.

    Implements :class:`detkeeper.training.progress.Reporter` without importing it: that module
    imports Keras, and the command line imports TensorFlow only once, quietly, after parsing."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self._bar = self._eval_bar = None

    def start(self, total_steps: int, start_step: int) -> None:
        self._bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", file=sys.stderr,
                         disable=True if self.quiet else None, dynamic_ncols=True)

    def step(self, step: int, logs: dict, images_per_second: float) -> None:
        if self._bar is None:
            return
        self._close_eval()
        self._bar.update(step - self._bar.n)
        loss = logs.get("loss")
        if loss is not None and step % 5 == 0:
            self._bar.set_postfix_str(f"loss {float(loss):.4f}  {images_per_second:.1f} img/s", refresh=False)

    def evaluating(self, total_images: int) -> None:
        self._close_eval()
        self._eval_bar = tqdm(total=total_images, desc="evaluate", unit="img", file=sys.stderr, leave=False,
                              disable=True if self.quiet else None, dynamic_ncols=True)

    def evaluated_images(self, count: int) -> None:
        if self._eval_bar is not None:
            self._eval_bar.update(count)

    def _close_eval(self) -> None:
        if self._eval_bar is not None:
            self._eval_bar.close()
            self._eval_bar = None

    def close(self) -> None:
        self._close_eval()
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class _TqdmHandler(logging.Handler):
    """Training's messages as plain lines printed above the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        prefix = "" if record.levelno <= logging.INFO else f"{record.levelname.lower()}: "
        tqdm.write(prefix + record.getMessage(), file=sys.stdout if record.levelno <= logging.INFO else sys.stderr)


class _SkipLogger(logging.Filter):
    """Drops the records of one logger (and its children)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.skipped = name

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == self.skipped or record.name.startswith(self.skipped + "."))


def run_train(args) -> int:
    overrides = list(args.set) + ([f"run_dir={args.run_dir}"] if args.run_dir else [])
    overrides += [f"distribute.strategy={args.strategy}"] if args.strategy else []
    result = train_with_progress(args.config, args.quiet or args.json, overrides)
    if args.json:
        print_json({"run_dir": str(result.run_dir), "status": result.status, "step": result.step,
                    "best": result.best.to_json() if result.best else None,
                    "ledger": str(result.ledger_path), "fit_seconds": result.fit_seconds})
        return 0
    print(f"\nrun directory: {result.run_dir}")
    print(f"  checkpoints:  detkeeper checkpoints {result.run_dir}")
    run = RunDirectory(result.run_dir)
    print(f"  TensorBoard:  tensorboard --logdir {run.logs_path}")
    report = run.report_path
    if report.is_file():
        print(f"  report:       {report}  (detkeeper report {result.run_dir} after an export adds it)")
    return 0


def train_with_progress(config, quiet: bool, overrides=()):
    """Train `config` (a RunConfig, or a file or preset with `overrides`) with progress bars on
    stderr and training's messages printed once, plainly."""
    from detkeeper.report.training_end import report_at_training_end  # light: imports TensorFlow
    from detkeeper.training.trainer import train  # light: imports TensorFlow

    training_logger = logging.getLogger("detkeeper.training")
    handler = _TqdmHandler(level=logging.WARNING if quiet else logging.INFO)
    training_logger.addHandler(handler)
    # The root handlers skip these records, while they still propagate to the run's train.log
    # handler on the `detkeeper` logger.
    skip_training = _SkipLogger("detkeeper.training")
    for root_handler in logging.getLogger().handlers:
        root_handler.addFilter(skip_training)
    try:
        return train(config, overrides, reporter=BarReporter(quiet), on_end=report_at_training_end)
    finally:
        training_logger.removeHandler(handler)
        for root_handler in logging.getLogger().handlers:
            root_handler.removeFilter(skip_training)


def run_checkpoints(args) -> int:
    ledger = read_ledger(RunDirectory(args.run_dir))
    if args.json:
        print_json(ledger.to_json())
        return 0
    best, last = ledger.best_names(), ledger.last_names()
    monitor = ledger.policy.monitor
    stats = [key for key in ("val_mAP", "val_mAP50", "val_mAP75") if key != monitor]
    rows = []
    for entry in ledger.ranked():
        kept = [word for word, names in (("best", best), ("latest", last)) if entry.name in names]
        marker = "*" if entry.name == ledger.best_name else ""
        rows.append([f"{marker}{entry.name}", entry.step, _number(entry.monitor_value),
                     *[_number(entry.metrics.get(key, math.nan)) for key in stats],
                     "yes" if entry.ema else "no", f"{entry.size / 1e6:.1f} MB", "+".join(kept)])
    print(table(rows, ["checkpoint", "step", monitor, *stats, "ema", "size", "kept as"]))
    status = ledger.status.get("state", "training")
    print(f"\n{len(rows)} kept ({ledger.policy.keep_best} best by {monitor}, {ledger.policy.mode}; "
          f"{ledger.policy.keep_last} latest); * marks the best; run status: {status.replace('_', ' ')}")
    return 0


def _number(value: float) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:.4f}"
