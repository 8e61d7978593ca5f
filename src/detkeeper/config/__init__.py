"""The run config: typed dataclasses loaded from YAML files, presets and `--set` overrides.

    config = load_config("my_run.yaml", overrides=["train.steps=500"])
    save_config(config, Path(config.run_dir) / "config.yaml")
"""

from detkeeper.config.loader import (
    config_to_dict,
    config_to_yaml,
    list_presets,
    load_config,
    preset_summary,
    save_config,
)
from detkeeper.config.schema import (
    AugmentConfig,
    BackboneConfig,
    CheckpointConfig,
    DataConfig,
    EarlyStoppingConfig,
    EvaluationConfig,
    ExportConfig,
    ModelConfig,
    OptimizerConfig,
    RunConfig,
    ScheduleConfig,
    SourceConfig,
    SyntheticConfig,
    TrainConfig,
)

__all__ = [
    "AugmentConfig",
    "BackboneConfig",
    "CheckpointConfig",
    "DataConfig",
    "EarlyStoppingConfig",
    "EvaluationConfig",
    "ExportConfig",
    "ModelConfig",
    "OptimizerConfig",
    "RunConfig",
    "ScheduleConfig",
    "SourceConfig",
    "SyntheticConfig",
    "TrainConfig",
    "config_to_dict",
    "config_to_yaml",
    "list_presets",
    "load_config",
    "save_config",
]
