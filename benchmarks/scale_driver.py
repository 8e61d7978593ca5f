"""Run ``detkeeper ARGS`` in this process and write when each phase of a start happened.

``python scale_driver.py MARKS detkeeper-args...`` runs ``detkeeper.cli.main.main(args)`` (what the
``detkeeper`` command runs) and exits with its status. benchmarks/scale.py starts it once per
measurement. Nothing prints when a training step ends (the progress bar is off without a terminal),
so the driver wraps, from outside the product, the functions a start goes through and appends one
JSON line per event to the file MARKS, flushed at once (a killed process keeps its lines):
``{"event": ..., "wall": time.time(), "cpu": time.process_time(), ...}``:

  driver        this process started (before Python imports detkeeper and TensorFlow)
  armed         the wrappers are in place ("detkeeper": the package file imported, so the caller
                can check that PYTHONPATH chose the code it meant)
  prepare       DataSources.prepare(split) begins / ends ("split", "records" kept)
  read          the split's reader (read_source) begins / ends ("records" read)
  check         check_records (image checks included) begins / ends
  model         the trainer builds the model (one validation batch goes through it) begins / ends
  pipeline      training_dataset (the tf.data pipeline over the records) begins / ends
  fit           Keras fit calls on_train_begin (progress starts)
  step          a training step ended ("step": the optimizer's step after it)
  exit          main returned ("status")

``python scale_driver.py MARKS --pipeline CONFIG BATCHES`` instead times the training input pipeline
alone (no model): the config's train split read and checked as ``detkeeper train`` does, then
BATCHES batches of ``training_dataset`` iterated ("batch" events, and "images" per batch).

The same wrappers work on the baseline commit: the functions wrapped exist there with the same
names (run it with PYTHONPATH at the baseline's src). Only this benchmark patches detkeeper.
"""

from __future__ import annotations

import json
import os
import sys
import time

_MARKS = None
_STARTED = (time.time(), time.process_time())


def mark(event: str, **fields) -> None:
    _MARKS.write(json.dumps({"event": event, "wall": time.time(), "cpu": time.process_time(), **fields}) + "\n")
    _MARKS.flush()


def _wrap(owner, name: str, event: str, describe=None) -> None:
    original = getattr(owner, name)

    def wrapped(*args, **kwargs):
        mark(event, phase="begin", **(describe(args, kwargs, None) if describe else {}))
        result = original(*args, **kwargs)
        mark(event, phase="end", **(describe(args, kwargs, result) if describe else {}))
        return result

    setattr(owner, name, wrapped)


def _count(result) -> dict:
    if result is None:
        return {}
    records = getattr(result, "records", result)
    return {"records": len(records)}


def arm() -> None:
    import detkeeper
    from detkeeper.cli import train_commands
    from detkeeper.data import sources
    from detkeeper.training import trainer

    _wrap(sources.DataSources, "prepare", "prepare",
          lambda args, kwargs, result: {"split": args[1] if len(args) > 1 else kwargs.get("split"), **_count(result)})
    _wrap(sources, "read_source", "read", lambda args, kwargs, result: _count(result))
    _wrap(sources, "check_records", "check", lambda args, kwargs, result: {"records": len(args[0])})
    _wrap(trainer._Training, "_build_model", "model")
    _wrap(trainer, "training_dataset", "pipeline")

    start, step = train_commands.BarReporter.start, train_commands.BarReporter.step

    def started(self, total_steps, start_step):
        mark("fit", step=start_step, total=total_steps)
        return start(self, total_steps, start_step)

    def stepped(self, step_number, logs, images_per_second):
        mark("step", step=step_number)
        return step(self, step_number, logs, images_per_second)

    train_commands.BarReporter.start, train_commands.BarReporter.step = started, stepped
    mark("armed", detkeeper=detkeeper.__file__)


def time_pipeline(config_path: str, batches: int) -> int:
    from detkeeper.config import load_config
    from detkeeper.data.pipeline import Augmentation, training_dataset
    from detkeeper.data.sources import DataSources

    config = load_config(config_path)
    sources = DataSources(config.data)
    records = sources.prepare("train").records
    mark("pipeline", phase="begin")
    data = training_dataset(records, sources.label_map, image_size=config.model.image_size,
                            batch_size=config.train.batch_size, max_boxes=config.data.max_boxes,
                            augmentation=Augmentation.from_config(config.data.augment), seed=config.train.seed)
    mark("pipeline", phase="end")
    for number, batch in enumerate(data.take(batches), 1):
        mark("batch", step=number, images=int(batch["images"].shape[0]))
    return 0


def main() -> int:
    global _MARKS
    _MARKS = open(sys.argv[1], "a", encoding="utf-8")
    _MARKS.write(json.dumps({"event": "driver", "wall": _STARTED[0], "cpu": _STARTED[1]}) + "\n")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from detkeeper.cli.console import import_tensorflow_quietly
    from detkeeper.cli.main import main as detkeeper_main

    import_tensorflow_quietly()  # as the command line does, before the wrapped modules import TensorFlow
    arm()
    if sys.argv[2] == "--pipeline":
        status = time_pipeline(sys.argv[3], int(sys.argv[4]))
    else:
        status = detkeeper_main(sys.argv[2:])
    mark("exit", status=status)
    return status


if __name__ == "__main__":
    sys.exit(main())
