"""``detkeeper train``: Keras ``fit`` with the callbacks that keep the best model, resumable.

One "epoch" of ``fit`` is one evaluation interval (``evaluation.every_steps`` steps). At each
interval's end the callbacks run in this order: COCO evaluation -> early stopping -> checkpoint
(ledger, best-k) -> the evaluation line -> TensorBoard. Everything a rerun needs is in the
checkpoint (model, optimizer and its step, EMA, early-stopping state) or follows from the step
(data order, learning rate), so rerunning the same command continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import keras
import tensorflow as tf

from detkeeper.config.loader import check_config, load_config
from detkeeper.config.schema import RunConfig
from detkeeper.data.augment import Resize
from detkeeper.data.pipeline import Augmentation, InputShard, data_errors, evaluation_dataset, training_dataset
from detkeeper.data.sources import DataSources
from detkeeper.errors import ConfigError
from detkeeper.evaluation.callback import CocoEvaluationCallback
from detkeeper.evaluation.distributed import DistributedValidation
from detkeeper.evaluation.monitors import weighted_monitor
from detkeeper.models import build_model
from detkeeper.models.detector import fit_inputs
from detkeeper.models.ema import WeightAverage
from detkeeper.models.precision import mixed_precision
from detkeeper.models.registry import Postprocess
from detkeeper.run.layout import RunDirectory
from detkeeper.run.ledger import Ledger, LedgerEntry
from detkeeper.training.callbacks import BestCheckpoints, StopOnNonFiniteLoss
from detkeeper.training.distributed_loop import fit_distributed
from detkeeper.training.distribution import create_distribution, worker_config
from detkeeper.training.early_stopping import EarlyStopping, EarlyStoppingState
from detkeeper.training.ema import EmaCallback
from detkeeper.training.init_from import apply_init_from
from detkeeper.training.optimizers import build_optimizer, learning_rate_at
from detkeeper.training.preflight import TRAINING_CHECKS, deprecation_warnings
from detkeeper.training.progress import ProgressCallback, Reporter
from detkeeper.training.tensorboard import TensorBoardLogger

logger = logging.getLogger("detkeeper.training")


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """How a ``train`` call ended, and where its outputs are."""

    run_dir: Path
    status: str  # finished | stopped_early | already_finished | already_stopped
    step: int
    best: LedgerEntry | None
    save_seconds: tuple[float, ...] = ()  # training blocked by each checkpoint save
    evaluation_seconds: tuple[float, ...] = ()  # each validation pass
    fit_seconds: float = 0.0  # wall time of this call's training loop, evaluations and saves included

    @property
    def ledger_path(self) -> Path:
        return RunDirectory(self.run_dir).ledger_path


@dataclasses.dataclass(frozen=True)
class TrainingEnd:
    """What training holds in memory when it ends, for an `on_end` hook (the run report).

    `model` holds the weights of `best` (restored from disk); `evaluation_callback` is the run's
    :class:`~detkeeper.evaluation.callback.CocoEvaluationCallback`, its last pass at `final_step`."""

    run_dir: Path
    model: Any
    weight_average: Any  # detkeeper.models.ema.WeightAverage, or None
    config: RunConfig
    evaluation_callback: Any
    final_step: int
    best: LedgerEntry | None


def train(config: RunConfig | str | os.PathLike, overrides: Sequence[str] = (), *,
          reporter: Reporter | None = None, on_end: Callable[[TrainingEnd], object] | None = None) -> TrainResult:
    """Train (or resume) the run `config` describes; returns when it finished or stopped early.

    The config is checked whole (schema, files, model, monitor: detkeeper.training.preflight)
    before any data is read. `on_end` runs when training ends, with what it holds in memory
    (``detkeeper.train`` and ``detkeeper train`` pass the report's hook); a hook that fails is
    logged and never fails the finished run."""
    if isinstance(config, RunConfig):
        check_config(config, TRAINING_CHECKS)
    else:
        config = load_config(config, overrides, checks=TRAINING_CHECKS)

    distribution = create_distribution(config.distribute)  # first: multi-worker needs it before any op
    with worker_config(config, distribution) as config:  # a worker that is not the chief: a temporary run_dir
        run = RunDirectory(config.run_dir)
        # data_errors: a shard that changed under the pipeline stops training with a DataError naming it
        with run.lock(), _log_to_file(run.log_file_path), mixed_precision(config.train.mixed_precision), data_errors():
            return _Training(config, run, reporter or Reporter(), distribution, on_end).run()


@contextlib.contextmanager
def _log_to_file(path: Path) -> Iterator[None]:
    """Copy detkeeper's log records into the run's ``train.log`` while training."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("detkeeper")
    previous_level = root.level
    root.addHandler(handler)
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)
        handler.close()


class _Training:
    """One train call's objects, built in dependency order."""

    def __init__(self, config: RunConfig, run: RunDirectory, reporter: Reporter, distribution,
                 on_end: Callable[[TrainingEnd], object] | None = None) -> None:
        self.config, self.rundir, self.reporter = config, run, reporter
        self.distribution = distribution  # detkeeper.training.distribution.Distribution
        self.on_end = on_end

    def run(self) -> TrainResult:
        config = self.config
        for warning in deprecation_warnings(config):
            logger.warning(warning)
        if config.data.val is None:
            raise ConfigError("data.val: training keeps the best checkpoints by validation mAP, so it needs "
                              "a validation split; set data.val.format and data.val.path")
        answered = self._done_by_the_ledger()
        if answered is not None:
            return answered
        sources = DataSources(config.data)
        train_split, val_split = sources.prepare("train"), sources.prepare("val")
        label_map = sources.label_map
        self.rundir.write_config(config)
        self.rundir.write_label_map(label_map)

        keras.utils.set_random_seed(config.train.seed)
        tf.config.experimental.enable_op_determinism()
        distribution = self.distribution
        # Worth a line where there is something to say: a strategy was chosen.
        logger.log(logging.DEBUG if distribution.name == "default" else logging.INFO, distribution.describe(config))
        with distribution.strategy.scope():  # model, optimizer, EMA, metrics and states: one copy per replica
            model, weight_average = self._build_model(label_map.num_classes, val_split.records, label_map)
            state = EarlyStoppingState()
        checkpointer = BestCheckpoints(
            self.rundir.checkpoints_path, config.evaluation.monitor, mode=config.checkpoint.mode,
            keep_best=config.checkpoint.keep_best, keep_last=config.checkpoint.keep_last,
            min_delta=config.checkpoint.min_delta, weight_average=weight_average,
            extra={"early_stopping": state}, is_chief=distribution.is_chief)
        for message in checkpointer.store.tidy():
            logger.warning(message)
        checkpointer.ledger.data = {"train": train_split.counts(), "val": val_split.counts()}  # kept from the next save on

        start = checkpointer.restore(model, "latest")
        for problem in checkpointer.problems:
            logger.warning(problem)
        self._init_from(model, weight_average, start)
        # Only the chief read the run directory: every worker continues from the chief's values.
        distribution.broadcast_from_chief(list(model.weights) + list(model.optimizer.variables)
                                          + (list(weight_average.averages) if weight_average else [])
                                          + list(state.variables))
        start_step = int(model.optimizer.iterations.numpy())
        finished = self._already_done(checkpointer, state, start_step)
        if finished is not None:
            return finished
        if start:
            logger.info("resuming %s from %s (step %d of %d)", self.rundir.path, start.name, start.step,
                        config.train.steps)
        self._fit(model, weight_average, state, checkpointer, train_split.records, val_split.records,
                  label_map, start_step)
        result = self._finish(model, checkpointer, state)
        self._end_hook(model, weight_average, result)
        return result

    # -- building ---------------------------------------------------------------------------
    def _build_model(self, num_classes: int, val_records, label_map):
        config = self.config
        model = build_model(config.model, num_classes, Postprocess.from_config(config.evaluation))
        model.compile(optimizer=build_optimizer(config.train, num_replicas=self.distribution.num_replicas))
        sample = next(iter(evaluation_dataset(val_records[:4], label_map, image_size=config.model.image_size,
                                              batch_size=4, max_boxes=config.data.max_boxes,
                                              resize=Resize.of(model))))
        model(sample["images"][:1], training=False)  # create the variables, so a checkpoint can fill them
        model.optimizer.build(model.trainable_variables)
        self.distribution.synchronise_batch_norm(model)
        self.sample_batch = sample
        weight_average = WeightAverage(model, config.train.ema_decay) if config.train.ema_decay else None
        return model, weight_average

    def _init_from(self, model, weight_average, start: LedgerEntry | None) -> None:
        """``model.init_from`` on a fresh start; on resume the run's own checkpoint wins."""
        init_from = self.config.model.init_from
        if init_from is None:
            return
        if start is not None:
            logger.info("model.init_from (%s) not applied: the run continues from its own checkpoint %s",
                        init_from.path, start.name)
            return

        apply_init_from(model, init_from, self.rundir.path)
        if weight_average is not None:  # the averages were taken from the random init: start them here
            for average, weight in zip(weight_average.averages, weight_average.model_weights):
                average.assign(weight.value)

    def _done_by_the_ledger(self) -> TrainResult | None:
        """A run whose ledger records its end (stopped early, or finished at ``train.steps`` or
        beyond) is answered from the ledger alone, before any data is read: a rerun of a finished
        run on a large dataset says so at once. Anything else (no ledger, still training, a killed
        run whose end is not recorded, more steps asked for) takes the full path, as does a
        multi-worker run, whose workers must all decide together."""
        path = self.rundir.ledger_path
        if self.distribution.num_workers != 1 or not path.is_file():
            return None
        ledger = Ledger.read(path)  # the run's own retention policy ranks its best
        state, step = ledger.status.get("state"), ledger.status.get("step")
        if not isinstance(step, int) or state not in ("stopped_early", "finished"):
            return None
        if state == "stopped_early":
            self._log_already_stopped(step, ledger.best)
            return TrainResult(self.rundir.path, "already_stopped", step, ledger.best)
        if step < self.config.train.steps:
            return None  # train.steps was raised: train on
        self._log_already_finished(step, ledger.best)
        return TrainResult(self.rundir.path, "already_finished", step, ledger.best)

    def _log_already_stopped(self, step: int, best: LedgerEntry | None) -> None:
        logger.info("%s stopped early at step %d (no improvement of %s for %d evaluations); best: %s. "
                    "Not training again: use a new run_dir, or raise early_stopping.patience and remove "
                    "the run's checkpoints to start over.", self.rundir.path, step,
                    self.config.evaluation.monitor, self.config.early_stopping.patience, _describe(best))

    def _log_already_finished(self, step: int, best: LedgerEntry | None) -> None:
        logger.info("%s already trained to step %d (train.steps is %d); best: %s", self.rundir.path,
                    step, self.config.train.steps, _describe(best))

    def _already_done(self, checkpointer: BestCheckpoints, state: EarlyStoppingState,
                      start_step: int) -> TrainResult | None:
        best = checkpointer.ledger.best
        if (state.stopped or start_step >= self.config.train.steps) and checkpointer.ledger.status.get("state") == "training":
            # killed after its last checkpoint was committed, before the end was recorded: record it now
            checkpointer.store.set_status(state="stopped_early" if state.stopped else "finished", step=start_step,
                                          best=best.name if best else None)
        if state.stopped:
            self._log_already_stopped(int(state.stopped_step.numpy()), best)
            return TrainResult(self.rundir.path, "already_stopped", start_step, best)
        if start_step >= self.config.train.steps:
            self._log_already_finished(start_step, best)
            return TrainResult(self.rundir.path, "already_finished", start_step, best)
        return None

    # -- training ---------------------------------------------------------------------------
    def _fit(self, model, weight_average, state, checkpointer, train_records, val_records, label_map,
             start_step: int) -> None:
        config = self.config
        every, total = config.evaluation.every_steps, config.train.steps
        distribution = self.distribution
        resize = Resize.of(model)

        def train_data_for(shard=None):
            return training_dataset(
                train_records, label_map, image_size=config.model.image_size, batch_size=config.train.batch_size,
                max_boxes=config.data.max_boxes, augmentation=Augmentation.from_config(config.data.augment),
                seed=config.train.seed, start_step=start_step, shard=shard, resize=resize).map(fit_inputs)

        distributed_validation = None
        if distribution.uses_keras_fit:
            train_data = train_data_for()
            val_data = evaluation_dataset(val_records, label_map, image_size=config.model.image_size,
                                          batch_size=config.train.batch_size, max_boxes=config.data.max_boxes,
                                          resize=resize)
        else:  # each worker makes only its replicas' slices of every global batch

            distribution.replica_batch_size(config.train.batch_size)  # refuses a batch that does not split evenly
            train_data = distribution.strategy.distribute_datasets_from_function(
                lambda context: train_data_for(InputShard.from_input_context(context, config.train.batch_size)))
            val_data = None
            distributed_validation = DistributedValidation(
                distribution.strategy, val_records, label_map, image_size=config.model.image_size, resize=resize,
                batch_size=config.train.batch_size, max_boxes=config.data.max_boxes,
                is_chief=distribution.is_chief, max_detections=config.evaluation.max_detections)
        monitors = {name: weighted_monitor(weights) for name, weights in config.evaluation.weighted_monitors.items()}
        early_stopping = None
        if config.early_stopping.enabled:
            settings = config.early_stopping
            early_stopping = EarlyStopping(config.evaluation.monitor, mode=config.checkpoint.mode,
                                           patience=settings.patience, min_delta=settings.min_delta,
                                           start_from=settings.start_from, baseline=settings.baseline, state=state)
        self.evaluation = CocoEvaluationCallback(
            val_data, label_map, ground_truth=val_records, weight_average=weight_average,
            max_detections=config.evaluation.max_detections, monitors=monitors,
            on_progress=self.reporter.evaluated_images, distributed=distributed_validation,
            keep_detections_of=[value.decode("utf-8") for value in self.sample_batch["image_ids"].numpy()])
        callbacks = [
            StopOnNonFiniteLoss(lambda: f"Kept checkpoints are intact; best: {_describe(checkpointer.ledger.best)}."),
            *([EmaCallback(weight_average)] if weight_average is not None else []),
            _StopAtStep(total),
            ProgressCallback(self.reporter, config.train.batch_size, total),
            _AnnounceEvaluation(self.reporter, len(val_records)),
            self.evaluation,
            *([early_stopping] if early_stopping else []),
            checkpointer,
            _EvaluationLine(config.evaluation.monitor, checkpointer, early_stopping),
            TensorBoardLogger(self.rundir.logs_path, learning_rate=lambda: learning_rate_at(model.optimizer),
                              sample_batch=self.sample_batch, label_map=label_map,
                              detections=lambda: self.evaluation.kept_detections),
        ]
        started = time.perf_counter()
        try:
            if distribution.uses_keras_fit:
                model.fit(train_data, epochs=math.ceil(total / every), initial_epoch=start_step // every,
                          steps_per_epoch=every, callbacks=callbacks, verbose=0, shuffle=False)
            else:
                fit_distributed(model, train_data, epochs=math.ceil(total / every), initial_epoch=start_step // every,
                                steps_per_epoch=every, callbacks=callbacks)
        finally:
            self.fit_seconds = time.perf_counter() - started
            self.reporter.close()

    def _finish(self, model, checkpointer: BestCheckpoints, state: EarlyStoppingState) -> TrainResult:
        step = int(model.optimizer.iterations.numpy())
        best = checkpointer.ledger.best
        status = "stopped_early" if state.stopped else "finished"
        checkpointer.store.set_status(state=status, step=step, best=best.name if best else None)
        saves = checkpointer.save_seconds
        if saves:
            logger.info("checkpoint saves: %d, training blocked %.2f s per save on average", len(saves),
                        sum(saves) / len(saves))
        if best is not None:  # restores the best checkpoint's (older) early-stopping state too
            checkpointer.restore(model, str(best.step))
        ending = "stopped early" if status == "stopped_early" else "finished"
        logger.info("training %s at step %d; best: %s (restored into the model)", ending, step, _describe(best))
        return TrainResult(self.rundir.path, status, step, best, tuple(saves),
                           tuple(self.evaluation.seconds), self.fit_seconds)

    def _end_hook(self, model, weight_average, result: TrainResult) -> None:
        """Run the caller's `on_end` with what training holds; its failure never fails the run."""
        if self.on_end is None:
            return
        end = TrainingEnd(run_dir=self.rundir.path, model=model, weight_average=weight_average, config=self.config,
                          evaluation_callback=self.evaluation, final_step=result.step, best=result.best)
        try:
            self.on_end(end)
        except Exception as error:  # noqa: BLE001 - any failure: the run itself is complete and committed
            logger.warning("the end-of-training step failed (%s: %s); training is complete, the checkpoints are "
                           "intact.", type(error).__name__, error)
            logger.debug("end-of-training failure", exc_info=True)


def _describe(entry: LedgerEntry | None) -> str:
    if entry is None:
        return "none yet"
    value = "nan" if math.isnan(entry.monitor_value) else f"{entry.monitor_value:.4f}"
    return f"step {entry.step} ({value})"


class _StopAtStep(keras.callbacks.Callback):
    """End training at exactly `steps` even when it is not a multiple of the evaluation interval;
    the interval's end-of-epoch callbacks (evaluation, checkpoint) still run."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps = steps

    def on_train_batch_end(self, batch, logs=None) -> None:
        if int(self.model.optimizer.iterations.numpy()) >= self.steps:
            self.model.stop_training = True


class _AnnounceEvaluation(keras.callbacks.Callback):
    def __init__(self, reporter: Reporter, num_images: int) -> None:
        super().__init__()
        self.reporter, self.num_images = reporter, num_images

    def on_epoch_end(self, epoch, logs=None) -> None:
        self.reporter.evaluating(self.num_images)


class _EvaluationLine(keras.callbacks.Callback):
    """``step 1200  val_mAP 0.412 (best 0.431 @ step 900)  mAP50 0.80  patience 2/5  saved 0.21 s``."""

    def __init__(self, monitor: str, checkpointer: BestCheckpoints, early_stopping: EarlyStopping | None) -> None:
        super().__init__()
        self.monitor, self.checkpointer, self.early_stopping = monitor, checkpointer, early_stopping

    def on_epoch_end(self, epoch, logs=None) -> None:
        logs = logs or {}
        if self.monitor not in logs:
            return
        step = int(self.model.optimizer.iterations.numpy())
        best = self.checkpointer.ledger.best
        best_text = "none yet" if best is None else f"{best.monitor_value:.4f} @ step {best.step}"
        parts = [f"step {step}", f"{self.monitor} {float(logs[self.monitor]):.4f} (best {best_text})"]
        for key in ("val_mAP", "val_mAP50"):
            if key != self.monitor and key in logs:
                parts.append(f"{key[4:]} {float(logs[key]):.3f}")
        if "loss" in logs:
            parts.append(f"loss {float(logs['loss']):.4f}")
        if self.early_stopping is not None:
            parts.append(self.early_stopping.describe())
        if self.checkpointer.save_seconds:
            parts.append(f"saved in {self.checkpointer.save_seconds[-1]:.2f} s")
        logger.info("  ".join(parts))
