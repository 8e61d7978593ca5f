"""User modules in detectors (`model.custom_objects_module`, `model.head.block`) and `.keras` archives.

Each test writes the user's module into its own tmp_path and puts that folder on sys.path; the
`user_modules` fixture removes the modules from sys.modules and their classes from Keras'
registry afterwards, so no test sees another's. Every built-in family's own archive round trip is in
test_detectors.py, on the models trained there.
"""

import sys
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from detkeeper.config.validate import from_data
from detkeeper.config.schema import ModelConfig
from detkeeper.data.pipeline import evaluation_dataset
from detkeeper.data.voc import read_voc
from detkeeper.errors import ConfigError, DetkeeperError
from detkeeper.models import build_model, list_models, registry
from detkeeper.models.archive import load_keras_archive, save_keras_archive
from detkeeper.models.detector import fit_inputs

IMAGE_SIZE = 64

MY_LAYERS = '''
import keras


@keras.saving.register_keras_serializable(package="my_layers")
class SeparableBlock(keras.layers.Layer):
    """Depthwise-separable 3x3 conv + ReLU, a drop-in for a head tower's conv."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.conv = keras.layers.SeparableConv2D(filters, 3, padding="same", activation="relu")

    def build(self, input_shape):
        self.conv.build(input_shape)

    def call(self, x):
        return self.conv(x)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}
'''

MY_DETECTORS = '''
from detkeeper.models import register_model
from detkeeper.models.detector import PyramidDefaults, build_pyramid_detector
from detkeeper.models.retinanet import RetinaNet


@register_model("my_detector")
def my_detector(model_config, num_classes, postprocess):
    return build_pyramid_detector(RetinaNet, model_config, num_classes, postprocess,
                                  PyramidDefaults(channels=32, head_convs=1, min_level=3, max_level=5))
'''

USER_MODULES = ("my_layers", "my_detectors", "broken_layers", "needs_missing_dependency")


def _forget_user_modules():
    for name in USER_MODULES:
        sys.modules.pop(name, None)
    registered = keras.saving.get_custom_objects()  # Keras' global registry itself, not a copy
    for key in [key for key in registered if key.startswith("my_layers>")]:
        del registered[key]


@pytest.fixture
def user_modules(tmp_path, monkeypatch):
    """The folder holding the user's modules, on sys.path; the model registry is restored after."""
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "my_layers.py").write_text(MY_LAYERS)
    (folder / "my_detectors.py").write_text(MY_DETECTORS)
    (folder / "broken_layers.py").write_text("raise RuntimeError('broken on purpose')\n")
    (folder / "needs_missing_dependency.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setattr(registry, "_BUILDERS", dict(registry._BUILDERS))
    _forget_user_modules()
    yield folder
    _forget_user_modules()


def _config(name="retinanet_tiny", **model):
    """A model config as the YAML loader builds it, so the keys are the documented ones."""
    data = {"name": name, "image_size": IMAGE_SIZE, "backbone": {"name": "tiny", "weights": "none"}, **model}
    config, problems = from_data(ModelConfig, data)
    assert not problems, problems
    return config


def _block_config(name):
    return _config(name, custom_objects_module="my_layers", head={"block": "my_layers>SeparableBlock"})


@pytest.fixture(scope="module")
def batch(shapes_dataset):
    readout = read_voc(shapes_dataset, split="train")
    dataset = evaluation_dataset(readout.records[:4], readout.label_map, image_size=IMAGE_SIZE,
                                 batch_size=4, max_boxes=10)
    return next(iter(dataset)), readout.label_map.num_classes


def _outputs(model, images):
    """Raw head outputs and detections: an untrained model may detect nothing above the threshold."""
    return {**model(images, training=False), **model.detect(images)}


def _assert_same(got, expected):
    for key in expected:
        np.testing.assert_array_equal(got[key].numpy(), expected[key].numpy(), err_msg=key)


def _block_layers(model):
    return [layer for layer in model.head._flatten_layers() if type(layer).__name__ == "SeparableBlock"]


def test_head_block_config_is_checked_on_load():
    _, problems = from_data(ModelConfig, {"head": {"block": "SeparableBlock"}})
    assert [(p.key, p.message) for p in problems] == [
        (("head", "block"), "expected a registered layer name 'package>ClassName', got 'SeparableBlock'")]


@pytest.mark.parametrize("name", ["retinanet_tiny", "fcos_tiny"])
def test_head_block_trains_checkpoints_and_round_trips_a_keras_archive(name, batch, user_modules, tmp_path):
    data, num_classes = batch
    images, targets = fit_inputs(data)
    keras.utils.set_random_seed(0)
    model = build_model(_block_config(name), num_classes)
    assert len(_block_layers(model)) == 2 * 2  # two towers of two convs, every one the user's block
    assert model.get_config()["head_block"] == "my_layers>SeparableBlock"
    assert model.get_config()["custom_objects_module"] == "my_layers"

    # Eager: tracing the training graph costs ~25 s on 2 cores; test_detectors trains every head in graph mode.
    model.compile(optimizer=keras.optimizers.Adam(1e-3), run_eagerly=True)
    before = model.evaluate(images, targets, verbose=0, return_dict=True)["loss"]
    for _ in range(8):
        model.train_on_batch(images, targets)
    after = model.evaluate(images, targets, verbose=0, return_dict=True)["loss"]
    assert np.isfinite(before) and after < before, (before, after)

    expected = _outputs(model, images)
    checkpoint = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    keras.utils.set_random_seed(1)
    # No optimizer: every weight must come through the model's own graph, not the optimizer's list.
    restored = build_model(_block_config(name), num_classes)
    restored(images[:1])
    tf.train.Checkpoint(model=restored).read(checkpoint).expect_partial().assert_existing_objects_matched()
    _assert_same(_outputs(restored, images), expected)

    archive = save_keras_archive(model, tmp_path / "model.keras")
    _forget_user_modules()  # a fresh process: the archive's recorded module must be imported by the loader
    loaded = load_keras_archive(archive)
    assert "my_layers" in sys.modules
    assert len(_block_layers(loaded)) == 4
    assert loaded.compiled and int(loaded.optimizer.iterations) == 8  # training can go on from the archive
    _assert_same(_outputs(loaded, images), expected)


def test_archive_names_the_module_when_it_cannot_be_imported(batch, user_modules, tmp_path, monkeypatch):
    data, num_classes = batch
    model = build_model(_block_config("retinanet_tiny"), num_classes)
    model(data["images"][:1])
    archive = save_keras_archive(model, tmp_path / "model.keras")
    _forget_user_modules()
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry != str(user_modules)])
    with pytest.raises(ConfigError, match=r"custom_objects_module 'my_layers'.*cannot import module 'my_layers'"):
        load_keras_archive(archive)
    with pytest.raises(ConfigError, match=r"cannot import module 'other_layers'"):
        load_keras_archive(archive, custom_objects_module="other_layers")


def test_unregistered_class_in_an_archive_names_class_and_module(user_modules, tmp_path):
    import my_layers

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, my_layers.SeparableBlock(4, name="block")(inputs))
    archive = save_keras_archive(model, tmp_path / "functional.keras")
    _forget_user_modules()  # importable, but nobody imported it and the archive records no module
    with pytest.raises(ConfigError, match=r"class 'SeparableBlock' \(its config says it is defined in module "
                                          r"'my_layers'\).*custom_objects_module='my_layers'"):
        load_keras_archive(archive)
    loaded = load_keras_archive(archive, custom_objects_module="my_layers")
    x = np.random.default_rng(0).uniform(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())


def test_an_archive_naming_a_missing_detkeeper_module_is_a_clear_error(user_modules, tmp_path):
    """The loader imports the detkeeper modules an archive names; one the package lacks is not a crash."""
    import my_layers

    inputs = keras.Input((8, 8, 3))
    archive = save_keras_archive(keras.Model(inputs, my_layers.SeparableBlock(4)(inputs)), tmp_path / "a.keras")
    edited = tmp_path / "edited.keras"
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(edited, "w") as target:
        for member in source.namelist():
            content = source.read(member)
            if member == "config.json":
                content = content.replace(b'"module": "my_layers"', b'"module": "detkeeper.gone.layers"')
            target.writestr(member, content)
    _forget_user_modules()
    with pytest.raises(ConfigError, match=r"class 'SeparableBlock' \(its config says it is defined in module "
                                          r"'detkeeper.gone.layers'\)"):
        load_keras_archive(edited)


def test_unknown_head_block_lists_what_the_package_registers(user_modules):
    config = _config(custom_objects_module="my_layers", head={"block": "my_layers>Nope"})
    with pytest.raises(ConfigError, match=r"model.head.block: no Keras layer is registered as 'my_layers>Nope' "
                                          r"\(registered under 'my_layers': my_layers>SeparableBlock\)"):
        build_model(config, 3)


def test_user_module_can_register_a_whole_detector(batch, user_modules):
    data, num_classes = batch
    model = build_model(_config("my_detector", custom_objects_module="my_detectors"), num_classes)
    assert "my_detector" in list_models()
    assert (model.fpn_channels, model.head_convs, model.max_level) == (32, 1, 5)
    assert model.detect(data["images"])["boxes"].shape == (4, 100, 4)


@pytest.mark.parametrize("module, message", [
    ("no_such_layers_xyz", r"model.custom_objects_module: cannot import module 'no_such_layers_xyz' "
                           r"\(No module named 'no_such_layers_xyz'\); the folder holding it must be on"),
    ("broken_layers", r"model.custom_objects_module: importing module 'broken_layers' failed: "
                      r"RuntimeError: broken on purpose"),
    ("needs_missing_dependency", r"module 'needs_missing_dependency' was found but importing it failed: "
                                 r"No module named 'no_such_dependency_xyz'"),
])
def test_bad_custom_objects_module_is_a_config_error(module, message, user_modules):
    with pytest.raises(ConfigError, match=message):
        build_model(_config(custom_objects_module=module), 3)


def test_lambda_layer_is_refused_in_safe_mode(tmp_path):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda t: t + 1, name="add_one")(inputs))
    archive = save_keras_archive(model, tmp_path / "lambda.keras")
    with pytest.raises(DetkeeperError, match=r"lambda.keras: refused: layer\(s\) 'add_one' hold a Python "
                                             r"lambda.*safe_mode=False"):
        load_keras_archive(archive)
    loaded = load_keras_archive(archive, safe_mode=False)  # the caller's explicit trust
    np.testing.assert_array_equal(loaded(np.ones((1, 3), "float32")).numpy(), [[2.0, 2.0, 2.0]])


def test_unreadable_archives_name_the_path(tmp_path):
    with pytest.raises(DetkeeperError, match=r"missing.keras: Keras archive not found"):
        load_keras_archive(tmp_path / "missing.keras")
    (tmp_path / "text.keras").write_text("not a zip")
    with pytest.raises(DetkeeperError, match=r"text.keras: not a readable Keras archive"):
        load_keras_archive(tmp_path / "text.keras")
    with pytest.raises(DetkeeperError, match=r"model.h5: expected a Keras archive ending in .keras"):
        load_keras_archive(tmp_path / "model.h5")

    inputs = keras.Input((3,))
    whole = save_keras_archive(keras.Model(inputs, keras.layers.Dense(2)(inputs)), tmp_path / "whole.keras")
    data = whole.read_bytes()
    (tmp_path / "truncated.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(DetkeeperError, match=r"truncated.keras: not a readable Keras archive"):
        load_keras_archive(tmp_path / "truncated.keras")
    with zipfile.ZipFile(tmp_path / "no_config.keras", "w") as archive:
        archive.writestr("model.weights.h5", b"")
    with pytest.raises(DetkeeperError, match=r"no_config.keras: not a Keras archive: it has no config.json"):
        load_keras_archive(tmp_path / "no_config.keras")


def test_save_is_atomic_and_needs_the_keras_suffix(tmp_path):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(DetkeeperError, match=r"model.h5: a Keras archive's file name must end in .keras"):
        save_keras_archive(model, tmp_path / "model.h5")
    (tmp_path / "model.keras").write_text("the previous archive")
    save_keras_archive(model, tmp_path / "model.keras")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.keras"]  # no temporary file left
    assert zipfile.is_zipfile(tmp_path / "model.keras")
