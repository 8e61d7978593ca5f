"""tf.distribute for training: which strategy, how the global batch is split, who writes the run.

``distribute.strategy`` picks one of TensorFlow's strategies:

* ``default``: one device, Keras ``fit`` (what detkeeper always did).
* ``mirrored``: ``tf.distribute.MirroredStrategy`` over the GPUs of this machine, or the devices
  in ``distribute.devices``.
* ``multi_worker``: ``tf.distribute.MultiWorkerMirroredStrategy``; each process reads its place
  in the cluster from ``TF_CONFIG``. The strategy is created before any other TensorFlow op, as
  collective ops require.
* ``tpu``: ``tf.distribute.TPUStrategy`` on a ``TPUClusterResolver`` (``distribute.tpu`` or the
  environment). This path is written as TensorFlow documents it but has never run here.

Decisions, stated in the log at the start of every run (see docs/distributed.md):

* ``train.batch_size`` is the *global* batch; each replica gets ``batch_size / replicas`` images
  and the gradients of all replicas are summed into one update of that global batch.
* The learning rate is the configured one, for that global batch: no automatic scaling. A run
  moved from 1 to 4 GPUs at the same ``batch_size`` follows the same curve; to use 4x the batch,
  raise ``batch_size`` and scale ``learning_rate`` (and warmup) yourself.
* BatchNormalization: with ``distribute.sync_batch_norm`` (the default) every BN layer computes
  its batch statistics over the global batch (Keras' ``synchronized=True``: three all-reduces per
  layer per step), so training matches one device at the same global batch and the moving
  statistics are identical on every replica. Without it each replica normalises its own slice and
  keeps its own moving statistics (Keras 3 does not aggregate them); a checkpoint saves replica 0's.
* Only the chief (worker 0, or the ``chief`` task) writes the run directory. Other workers train
  in a temporary directory of their own that is removed when they finish: they take part in every
  save (a checkpoint write may need collective ops) without writing the run's files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
from typing import Iterable, Iterator

import keras
import tensorflow as tf

from detkeeper.config.schema import DistributeConfig, RunConfig
from detkeeper.errors import ConfigError

logger = logging.getLogger("detkeeper.training")


@dataclasses.dataclass
class Distribution:
    """A created strategy and what training needs to know about it."""

    name: str  # default | mirrored | multi_worker | tpu
    strategy: tf.distribute.Strategy
    sync_batch_norm: bool = True

    @property
    def num_replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    @property
    def uses_keras_fit(self) -> bool:
        """Keras 3 ``fit`` only for the default strategy: under MultiWorkerMirroredStrategy it fails
        (keras-team/keras#20585), so every other strategy runs Keras' own train function from
        :mod:`detkeeper.training.distributed_loop`, one path for all of them."""
        return self.name == "default"

    @property
    def is_chief(self) -> bool:
        return bool(self.strategy.extended.should_checkpoint)

    @property
    def num_workers(self) -> int:
        resolver = getattr(self.strategy, "cluster_resolver", None)
        if self.name != "multi_worker" or resolver is None:
            return 1
        spec = resolver.cluster_spec()
        return sum(spec.num_tasks(job) for job in ("chief", "worker") if job in spec.jobs)

    @property
    def worker(self) -> str:
        """``worker 1`` (multi-worker), else ``this machine``."""
        resolver = getattr(self.strategy, "cluster_resolver", None)
        if self.name != "multi_worker" or resolver is None:
            return "this machine"
        return f"{resolver.task_type} {resolver.task_id}"

    def replica_batch_size(self, global_batch_size: int) -> int:
        """Images per replica per step; the global batch must split evenly."""
        if global_batch_size % self.num_replicas:
            raise ConfigError(
                f"train.batch_size: the global batch ({global_batch_size}) must split evenly over the "
                f"{self.num_replicas} replicas of distribute.strategy {self.name}; use a multiple of "
                f"{self.num_replicas}")
        return global_batch_size // self.num_replicas

    def describe(self, config: RunConfig) -> str:
        """The log line stating the batch split, the learning-rate rule and BatchNorm."""
        batch = config.train.batch_size
        per_replica = self.replica_batch_size(batch)
        devices = "one device" if self.name == "default" else ", ".join(self.strategy.extended.worker_devices)
        bn = "synchronised over the global batch" if self.sync_batch_norm else \
            "per replica (replica 0's moving statistics saved)"
        return (f"distribute: {self.name}, {self.num_replicas} replica(s) in {self.num_workers} worker(s) "
                f"({self.worker}: {devices}); global batch {batch} = {per_replica} per replica; learning "
                f"rate {config.train.optimizer.learning_rate:g} for the global batch (not scaled); "
                f"BatchNorm {bn if self.num_replicas > 1 else 'as on one device'}; "
                f"{'chief: writes the run directory' if self.is_chief else 'not the chief: writes a temporary directory only'}")

    def synchronise_batch_norm(self, model: keras.Model) -> int:
        """Make every BatchNormalization of `model` normalise over the global batch (when enabled
        and there is more than one replica); returns how many layers were changed."""
        if not self.sync_batch_norm or self.num_replicas == 1:
            return 0
        changed = 0
        for layer in model._flatten_layers(include_self=False, recursive=True):
            if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized:
                layer.synchronized = True
                changed += 1
        return changed

    def broadcast_from_chief(self, variables: Iterable) -> None:
        """Give every worker the chief's values of `variables` (after the chief alone restored a
        checkpoint, or applied ``init_from``). One all-reduce in which only global replica 0, on the
        chief, contributes; values travel as float64 (exact for int64 steps below 2**53)."""
        if self.num_workers == 1:
            return  # one process: restoring a mirrored variable already sets every local replica
        variables = list(variables)

        sizes = [int(tf.size(variable)) for variable in variables]

        def contribution():  # one flat float64 vector: a single all-reduce for everything
            first = tf.equal(tf.distribute.get_replica_context().replica_id_in_sync_group, 0)
            flat = tf.concat([tf.reshape(tf.cast(variable.value if isinstance(variable, keras.Variable) else variable,
                                                 tf.float64), [-1]) for variable in variables], axis=0)
            return tf.where(first, flat, tf.zeros_like(flat))

        @tf.function(autograph=False)
        def gather():
            return self.strategy.reduce(tf.distribute.ReduceOp.SUM, self.strategy.run(contribution), axis=None)

        for variable, value in zip(variables, tf.split(gather(), sizes)):
            variable.assign(tf.reshape(tf.cast(value, variable.dtype), variable.shape))


def create_distribution(config: DistributeConfig) -> Distribution:
    """Create the strategy `config` names. Call it before any other TensorFlow op: the
    multi-worker strategy configures collective ops, which TensorFlow allows only at start-up."""
    name = config.strategy
    if name == "default":
        strategy = tf.distribute.get_strategy()
    elif name == "mirrored":
        strategy = tf.distribute.MirroredStrategy(devices=list(config.devices) or None)
    elif name == "multi_worker":
        _check_tf_config()
        try:
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        except (RuntimeError, ValueError) as error:
            raise ConfigError(
                f"distribute.strategy multi_worker: TensorFlow refused to set up the worker ({error}). The "
                "strategy must be created before any other TensorFlow op in the process: start training "
                "with `detkeeper train` or call detkeeper.train first in a fresh process.") from None
    elif name == "tpu":  # TensorFlow's documented TPU set-up; not run in detkeeper's tests (no TPU)
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=config.tpu or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        strategy = tf.distribute.TPUStrategy(resolver)
    else:
        raise ConfigError(f"distribute.strategy: expected default, mirrored, multi_worker or tpu, got {name!r}")
    return Distribution(name, strategy, sync_batch_norm=config.sync_batch_norm)


def _check_tf_config() -> None:
    text = os.environ.get("TF_CONFIG", "")
    if not text:
        raise ConfigError(
            "distribute.strategy multi_worker needs the TF_CONFIG environment variable in every worker, e.g. "
            "TF_CONFIG='{\"cluster\": {\"worker\": [\"host1:12345\", \"host2:12345\"]}, \"task\": {\"type\": "
            "\"worker\", \"index\": 0}}' (see docs/distributed.md)")
    try:
        parsed = json.loads(text)
        parsed["cluster"], parsed["task"]["type"], parsed["task"]["index"]
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"TF_CONFIG is not a cluster description with a task ({type(error).__name__}: "
                          f"{error}); see docs/distributed.md for its form") from None


@contextlib.contextmanager
def worker_config(config: RunConfig, distribution: Distribution) -> Iterator[RunConfig]:
    """The chief trains `config` as given. Another worker gets the same config with ``run_dir`` in a
    fresh temporary directory, removed afterwards, even on failure (TF's multi-worker pattern)."""
    if distribution.is_chief:
        yield config
        return
    scratch = tempfile.mkdtemp(prefix=f"detkeeper-{distribution.worker.replace(' ', '')}-")
    try:
        yield dataclasses.replace(config, run_dir=os.path.join(scratch, "run"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def use_logical_cpus(count: int) -> None:
    """Split this machine's CPU into `count` logical devices (``/cpu:0`` ... ``/cpu:{count-1}``), to
    run the mirrored strategy without GPUs (tests, benchmarks). Must run before TensorFlow
    initialises its devices, i.e. before any TensorFlow op in the process."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
