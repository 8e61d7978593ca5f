"""The ``distribute`` config section, the ``--strategy`` flag and the strategy's bookkeeping
(in this process, default strategy only: the multi-device runs are in subprocesses)."""

from __future__ import annotations

import os
import types

import pytest

from detkeeper.config import load_config
from detkeeper.errors import ConfigError


def test_distribute_section_defaults_and_overrides():
    config = load_config("demo")
    assert config.distribute.strategy == "default" and config.distribute.devices == []
    assert config.distribute.sync_batch_norm is True
    config = load_config("demo", ["distribute.strategy=mirrored", "distribute.devices=[/gpu:0,/gpu:1]",
                                  "distribute.sync_batch_norm=false"])
    assert config.distribute.devices == ["/gpu:0", "/gpu:1"] and not config.distribute.sync_batch_norm


@pytest.mark.parametrize("overrides, message", [
    (["distribute.strategy=two_gpus"], "distribute.strategy"),
    (["distribute.devices=[/gpu:0]"], "only the mirrored strategy takes a device list"),
    (["distribute.strategy=mirrored", "distribute.devices=[/gpu:0,/gpu:0]"], "each device once"),
    (["distribute.tpu=grpc://10.0.0.2:8470"], "only the tpu strategy takes a TPU address"),
])
def test_distribute_section_is_validated(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("demo", overrides)


def test_strategy_flag_becomes_the_config_override(monkeypatch):
    from detkeeper.cli import train_commands
    from detkeeper.cli.main import build_parser
    from detkeeper.config import load_config

    seen = {}
    def stop(config, quiet, overrides=()):
        seen["config"] = load_config(config, overrides)
        raise SystemExit(0)

    monkeypatch.setattr(train_commands, "train_with_progress", stop)
    args = build_parser().parse_args(["train", "demo", "--strategy", "mirrored", "--set", "train.steps=300"])
    with pytest.raises(SystemExit):
        args.handler(args)
    assert seen["config"].distribute.strategy == "mirrored" and seen["config"].train.steps == 300
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "demo", "--strategy", "horovod"])


def test_default_strategy_keeps_keras_fit_and_states_the_rules():
    from detkeeper.training.distribution import create_distribution

    config = load_config("demo", ["train.batch_size=6"])
    distribution = create_distribution(config.distribute)
    assert distribution.uses_keras_fit and distribution.is_chief
    assert distribution.num_replicas == 1 and distribution.num_workers == 1
    assert distribution.replica_batch_size(6) == 6
    line = distribution.describe(config)
    assert "global batch 6 = 6 per replica" in line and "(not scaled)" in line and "chief" in line


def test_multi_worker_without_tf_config_says_what_to_set(monkeypatch):
    from detkeeper.training.distribution import create_distribution

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="needs the TF_CONFIG environment variable"):
        create_distribution(load_config("demo", ["distribute.strategy=multi_worker"]).distribute)
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["127.0.0.1:1"]}}')
    with pytest.raises(ConfigError, match="TF_CONFIG is not a cluster description"):
        create_distribution(load_config("demo", ["distribute.strategy=multi_worker"]).distribute)


def test_global_batch_must_split_evenly_over_replicas():
    from detkeeper.training.distribution import Distribution

    two = types.SimpleNamespace(num_replicas_in_sync=2)
    with pytest.raises(ConfigError, match="must split evenly over the 2 replicas"):
        Distribution("mirrored", two).replica_batch_size(7)
    assert Distribution("mirrored", two).replica_batch_size(8) == 4


def test_a_worker_that_is_not_the_chief_trains_in_a_temporary_directory_removed_after():
    from detkeeper.training.distribution import Distribution, worker_config

    config = load_config("demo")
    resolver = types.SimpleNamespace(task_type="worker", task_id=1)
    worker = Distribution("multi_worker", types.SimpleNamespace(
        extended=types.SimpleNamespace(should_checkpoint=False), cluster_resolver=resolver))
    with pytest.raises(RuntimeError, match="boom"):
        with worker_config(config, worker) as changed:
            assert changed.run_dir != config.run_dir and os.path.isdir(os.path.dirname(changed.run_dir))
            scratch = os.path.dirname(changed.run_dir)
            raise RuntimeError("boom")
    assert not os.path.exists(scratch)
    chief = Distribution("multi_worker", types.SimpleNamespace(extended=types.SimpleNamespace(should_checkpoint=True)))
    with worker_config(config, chief) as same:
        assert same is config
