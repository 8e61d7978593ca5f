"""Every registered detector: builds from config, trains, predicts valid detections, survives a checkpoint."""

import copy
import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from detkeeper.config.schema import BackboneConfig, ModelConfig, ResizeConfig
from detkeeper.data.augment import Resize
from detkeeper.data.pipeline import evaluation_dataset
from detkeeper.data.voc import read_voc
from detkeeper.errors import ConfigError
from detkeeper.models import build_model, list_models, losses
from detkeeper.models.archive import load_keras_archive, save_keras_archive
from detkeeper.models.detector import fit_inputs
from detkeeper.training.fused_updates import FusedAdam
from quick_sizes import quick

IMAGE_SIZE = 128


@pytest.fixture(scope="module")
def batch(shapes_dataset):
    readout = read_voc(shapes_dataset, split="train")
    dataset = evaluation_dataset(readout.records[:4], readout.label_map, image_size=IMAGE_SIZE,
                                 batch_size=4, max_boxes=10)
    return next(iter(dataset)), readout.label_map.num_classes


def _config(name):
    config = ModelConfig(name=name, image_size=IMAGE_SIZE, backbone=BackboneConfig(name="tiny", weights="none"))
    if name.startswith("hub_"):
        pytest.importorskip("keras_hub", reason=f"{name} needs keras-hub: pip install 'detkeeper[hub]'")
        # keras-hub's heads are 256 wide; two convs instead of four keep the checks quick on CPU.
        config = dataclasses.replace(config, head=dataclasses.replace(config.head, convs=2))
    return quick(config)


@dataclasses.dataclass
class Trained:
    model: keras.Model
    loss_before: float
    loss_after: float
    last_logs: dict


def _inference_loss(model, images, targets) -> float:
    """The loss ``evaluate()`` reports, computed eagerly: Keras would trace a test function (2-5 s)."""
    return float(model.compute_loss(x=images, y=targets, y_pred=model(images, training=False), training=False))


@pytest.fixture(scope="module")
def trained(batch):
    """``trained(name)``: the model after 8 Adam steps on the batch, with its loss before and after,
    made once per model and shared by the tests that only read it (predictions, checkpoint, config):
    tracing Keras' train function is most of the cost (3-8 s per model on 2 CPU cores; the 8 steps
    take 0.4-2.5 s), and each test used to build, trace and train its own model."""
    data, num_classes = batch
    images, targets = fit_inputs(data)
    runs = {}

    def train(name: str) -> Trained:
        if name not in runs:
            keras.utils.set_random_seed(0)
            model = build_model(_config(name), num_classes)
            model.compile(optimizer=FusedAdam(1e-3))  # the trainer's Adam
            before = _inference_loss(model, images, targets)  # also creates the model's variables
            # The optimizer's slots before the first step, as the trainer does: Keras' train function
            # otherwise traces twice (once more after creating them), doubling its cost.
            model.optimizer.build(model.trainable_variables)
            for _ in range(8):
                logs = model.train_on_batch(images, targets, return_dict=True)
            runs[name] = Trained(model, before, _inference_loss(model, images, targets), logs)
        return runs[name]

    return train


@pytest.mark.parametrize("name", list_models())
def test_training_steps_lower_the_loss(name, trained):
    run = trained(name)
    before, after = run.loss_before, run.loss_after
    assert np.isfinite(before) and after < before, (before, after)
    assert np.isfinite(run.last_logs["loss"])


@pytest.mark.parametrize("name", list_models())
def test_predictions_are_valid_detections(name, batch, trained, monkeypatch):
    data, num_classes = batch
    model = trained(name).model
    # After 8 steps the anchor families score nothing above the 0.05 default: keep every candidate,
    # so the checks below see real detections (up to max_detections per image) for every family.
    monkeypatch.setattr(model, "score_threshold", 0.0)
    detections = model.detect(data["images"])
    boxes, scores = detections["boxes"].numpy(), detections["scores"].numpy()
    classes, count = detections["classes"].numpy(), detections["num_detections"].numpy()
    assert boxes.shape[0] == scores.shape[0] == classes.shape[0] == count.shape[0] == 4
    assert np.all(count > 0), count
    for b, s, c, n in zip(boxes, scores, classes, count):
        assert np.all((b[:n] >= 0) & (b[:n] <= IMAGE_SIZE))
        assert np.all(b[:n, 2:] >= b[:n, :2])
        assert np.all((s[:n] >= 0) & (s[:n] <= 1))
        assert np.all(np.diff(s[:n]) <= 0), s[:n]  # best first
        assert np.all((c[:n] >= 0) & (c[:n] < num_classes))
        assert np.all(c[n:] == -1)


def _assert_same(got: dict, expected: dict) -> None:
    for key in expected:
        np.testing.assert_array_equal(got[key].numpy(), expected[key].numpy(), err_msg=key)


@pytest.mark.parametrize("name", list_models())
def test_checkpoint_round_trip_gives_identical_predictions(name, batch, trained, tmp_path):
    """A training checkpoint (model and optimizer) restores into a model without an optimizer, as
    evaluation and export read it: every weight must come through the model's own graph (the FPN's
    and the towers' weights, held in dicts and lists, once came only through the optimizer's
    variable list). Then whole, optimizer slots included, into the same model compiled, as a
    resumed run reads it."""
    data, num_classes = batch
    model = trained(name).model  # weights and optimizer slots away from their initial values
    images = data["images"]
    expected = model(images, training=False)
    path = tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(str(tmp_path / "ckpt"))

    keras.utils.set_random_seed(2)
    restored = build_model(_config(name), num_classes)
    restored(images[:1])  # create the model's variables
    tf.train.Checkpoint(model=restored).read(path).expect_partial().assert_existing_objects_matched()
    _assert_same(restored(images, training=False), expected)

    restored.compile(optimizer=keras.optimizers.Adam(1e-3))
    restored.optimizer.build(restored.trainable_variables)  # the optimizer's slots
    tf.train.Checkpoint(model=restored, optimizer=restored.optimizer).read(path).assert_consumed()
    _assert_same(restored(images, training=False), expected)
    assert len(restored.optimizer.variables) == len(model.optimizer.variables)
    for got, wanted in zip(restored.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(got.numpy(), wanted.numpy(), err_msg=got.path)


@pytest.mark.parametrize("name", [name for name in list_models() if not name.startswith("hub_")])
def test_keras_archive_round_trip_gives_identical_outputs(name, batch, trained, tmp_path):
    """Every built-in family (hub_retinanet: tests/models/test_hub.py) saves to a ``.keras`` archive
    that loads back in safe mode as the same class, answering as the saved model did: raw outputs
    and detections. The trained model is compiled, so its optimizer comes back too."""
    data, _ = batch
    model = trained(name).model
    images = data["images"]
    loaded = load_keras_archive(save_keras_archive(model, tmp_path / f"{name}.keras"))
    assert type(loaded) is type(model)
    assert loaded.compiled and int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 8
    _assert_same(loaded(images, training=False), model(images, training=False))
    _assert_same(loaded.detect(images), model.detect(images))


@pytest.mark.parametrize("name", list_models())
def test_loss_terms_and_regularization_follow_the_replica_rules(name, batch, trained, monkeypatch):
    """Every family reports its ``LOSS_TERMS`` through the shared trackers, as the global batch's
    value, and adds its share of the weights' regularization: under N replicas each tracker gets
    N x the replica's term and the total 1/N of the regularization (hub_retinanet once skipped both).
    On the trained model, its first weight given a regularizer for this test only."""
    data, _ = batch
    model = trained(name).model
    images, targets = fit_inputs(data)
    outputs = model(images, training=False)
    monkeypatch.setattr(model.trainable_weights[0], "regularizer", keras.regularizers.L2(0.5))
    regularization = float(tf.add_n(model.losses))
    assert regularization > 0

    def loss_and_terms(replicas):
        monkeypatch.setattr(losses, "num_replicas", lambda: replicas)
        for tracker in model.loss_trackers.values():
            tracker.reset_state()
        total = float(model.compute_loss(x=images, y=targets, y_pred=outputs))
        return total, {term: float(tracker.result()) for term, tracker in model.loss_trackers.items()}

    one_total, one_terms = loss_and_terms(1)
    two_total, two_terms = loss_and_terms(2)
    assert list(one_terms) == list(model.LOSS_TERMS) and model.LOSS_TERMS
    assert [metric.name for metric in model.metrics][-len(model.LOSS_TERMS):] == list(model.LOSS_TERMS)
    for term in model.LOSS_TERMS:
        np.testing.assert_allclose(two_terms[term], 2 * one_terms[term], rtol=1e-6, err_msg=term)
    np.testing.assert_allclose(one_total - two_total, regularization / 2, rtol=1e-5)

def test_unknown_model_name_lists_the_registered_ones():
    with pytest.raises(ConfigError, match="unknown model 'yolo'.*retinanet_tiny"):
        build_model(dataclasses.replace(_config("retinanet_tiny"), name="yolo"), 3)


@pytest.mark.parametrize("name", list_models())
def test_config_round_trip_rebuilds_the_same_architecture(name, batch, trained):
    data, _ = batch
    model = trained(name).model
    config = model.get_config()
    unchanged = copy.deepcopy(config)
    rebuilt = type(model).from_config(config)
    assert config == unchanged  # from_config must not consume the config: Keras rebuilds from it again
    rebuilt(data["images"][:1])
    assert [v.shape for v in rebuilt.weights] == [v.shape for v in model.weights]


@pytest.mark.parametrize("name", ["retinanet_tiny", "hub_retinanet"])  # the pyramid builder and keras-hub's
def test_the_resize_a_model_is_built_with_survives_its_config(name):
    """``model.resize`` becomes the detector's ``resize_mode`` / ``resize_method`` and comes back from
    its config, so exports and ``.keras`` archives resize images as training did."""
    config = dataclasses.replace(_config(name), resize=ResizeConfig(mode="stretch", method="tf1_bilinear"))
    model = build_model(config, 3)
    rebuilt = type(model).from_config(model.get_config())
    for detector in (model, rebuilt):
        assert Resize.of(detector) == Resize("stretch", "tf1_bilinear", (0.0, 0.0, 0.0))
