"""A detector with a user's layer exports and verifies; the SavedModel needs neither detkeeper nor the
user's module, the ``.keras`` archive needs the module and says so when it is missing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import keras
import pytest

from export_runs import write_run_config

GATED_CONV = '''
import keras


@keras.saving.register_keras_serializable(package="export_layers")
class GatedConv(keras.layers.Layer):
    """3x3 conv times a sigmoid gate: a head tower block detkeeper does not know."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.conv = keras.layers.Conv2D(filters, 3, padding="same")
        self.gate = keras.layers.Conv2D(filters, 1, activation="sigmoid")

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.gate.build(input_shape)

    def call(self, x):
        return keras.ops.relu(self.conv(x)) * self.gate(x)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}
'''


@pytest.fixture
def layer_module(tmp_path, monkeypatch):
    """`export_layers` importable from a folder on sys.path; forgotten by Python and Keras afterwards."""
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "export_layers.py").write_text(GATED_CONV)
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    sys.modules.pop("export_layers", None)
    keras.saving.get_custom_objects().pop("export_layers>GatedConv", None)


def test_a_detector_with_a_custom_layer_exports_verifies_and_reloads(layer_module, shapes_dataset, tmp_path):
    from detkeeper.export.exporter import export_model
    from detkeeper.training.trainer import train

    config = write_run_config(tmp_path / "run.yaml", shapes_dataset, tmp_path / "run", steps=2,
                              custom_objects_module="export_layers", head={"block": "export_layers>GatedConv"})
    run_dir = train(config).run_dir
    result = export_model(run_dir, verify_images=4)  # verification loads the SavedModel without the module
    assert result.verification.passed and ".keras archive" in result.verification.checked
    assert result.metadata["model"]["custom_objects_module"] == "export_layers"

    # A fresh process: the archive names the module it needs while the module cannot be imported,
    # and loads once the user's folder is on the path.
    environment = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    load_archive = textwrap.dedent(f"""
        import sys
        from detkeeper.errors import DetkeeperError
        from detkeeper.models.archive import load_keras_archive

        def load():
            try:
                model = load_keras_archive({str(result.keras_path)!r})
            except DetkeeperError as error:
                print("ERROR", str(error).replace("\\n", " "))
            else:
                print("LOADED", type(model).__name__, any(type(layer).__name__ == "GatedConv"
                                                          for layer in model._flatten_layers()))

        load()
        sys.path.insert(0, {str(layer_module)!r})
        load()
    """)
    loaded = subprocess.run([sys.executable, "-c", load_archive], capture_output=True, text=True, cwd=tmp_path,
                            env=environment, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    without, with_module = loaded.stdout.strip().splitlines()[-2:]
    assert without.startswith("ERROR") and "export_layers" in without and "Traceback" not in loaded.stdout
    assert with_module == "LOADED RetinaNet True"
