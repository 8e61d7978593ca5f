"""detkeeper's graphs are traced as written, without AutoGraph: the input pipelines, evaluation's
compiled detect, the EMA update and every signature of the serving module. Keras 3 converts none of
a model's code either; converting detkeeper's functions cost about 1.7 CPU seconds at every start
(benchmarks/RESULTS.md, "AutoGraph off")."""

from __future__ import annotations

import keras
import pytest
import tensorflow as tf
from tensorflow.python.autograph.impl import api as autograph_api

from detkeeper.config.schema import BackboneConfig, ModelConfig
from detkeeper.data.pipeline import Augmentation, InputShard, evaluation_dataset, sharded_evaluation_dataset, training_dataset
from detkeeper.data.voc import read_voc
from detkeeper.evaluation.runner import compiled_detect
from detkeeper.export.serving import DetectionModule, ServingSettings
from detkeeper.models import build_model
from detkeeper.models.boxes import content_windows
from detkeeper.models.ema import WeightAverage

IMAGE_SIZE = 64


@pytest.fixture
def converted(monkeypatch) -> list[str]:
    """The detkeeper functions AutoGraph is asked to convert from now on (every entry into converted
    code passes through ``converted_call``, cached conversions too)."""
    names = []
    real = autograph_api.converted_call

    def converted_call(f, args, kwargs, caller_fn_scope=None, options=None):
        module = getattr(f, "__module__", None) or ""
        if module.startswith("detkeeper"):
            names.append(f"{module}.{getattr(f, '__qualname__', f)}")
        return real(f, args, kwargs, caller_fn_scope=caller_fn_scope, options=options)

    monkeypatch.setattr(autograph_api, "converted_call", converted_call)
    return names


def test_no_detkeeper_function_is_converted_by_autograph(shapes_dataset, converted):
    readout = read_voc(shapes_dataset, split="train")
    records, label_map = list(readout.records)[:4], readout.label_map
    shapes = dict(image_size=IMAGE_SIZE, batch_size=2, max_boxes=10)
    next(iter(training_dataset(records, label_map, **shapes, seed=0, augmentation=Augmentation(
        horizontal_flip=True, vertical_flip=True, rotate_90=True, scale_jitter=(0.8, 1.2), colour_jitter=0.1,
        mosaic=0.5),
        shard=InputShard(index=1, count=2, replica_batch_size=1))))
    batch = next(iter(evaluation_dataset(records, label_map, **shapes)))
    next(iter(sharded_evaluation_dataset(records, label_map, **shapes, shard=InputShard(index=0, count=2, replica_batch_size=1))))

    keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(name="retinanet_tiny", image_size=IMAGE_SIZE,
                                    backbone=BackboneConfig(name="tiny", weights="none")), label_map.num_classes)
    compiled_detect(model)(batch["images"], content_windows(batch["image_scales"], batch["image_sizes"]))
    WeightAverage(model, decay=0.99).update(1)
    for signature in DetectionModule(model, label_map, ServingSettings(0.05, 0.5, 10), "{}").signatures().values():
        signature.get_concrete_function()
    assert converted == []
