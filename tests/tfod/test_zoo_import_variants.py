"""`detkeeper config import` of the SSD MobileNetV2 fields the families follow (issue 17): depth
multiplier, the weight-shared predictor's tower sharing, depthwise convolutions and kernel, the
convolutional predictor's kernel and layers before it. Each is carried into ``model`` only where it
differs from the family's own value, and an absent field takes the API's default. No TensorFlow:
tests/models/test_ssd_variants_zoo.py checks what the imported configs compute against the API."""

from __future__ import annotations

from pathlib import Path

from detkeeper.tfod.importer import import_pipeline_config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tfod"
FPNLITE = FIXTURES / "ssd_mobilenet_v2_fpnlite_320x320.config"
SSD = FIXTURES / "ssd_mobilenet_v2_320x320.config"


def imported(tmp_path: Path, base: Path, *replacements: tuple[str, str]):
    text = base.read_text()
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new, 1)
    path = tmp_path / "pipeline.config"
    path.write_text(text)
    return import_pipeline_config(path, base_dir=tmp_path, out_dir=tmp_path)


def test_fpnlite_depth_multiplier_narrows_the_fpn_as_the_api(tmp_path):
    result = imported(tmp_path, FPNLITE, ("depth_multiplier: 1.0", "depth_multiplier: 0.75"))
    model = result.data["model"]
    assert model["backbone"]["depth_multiplier"] == 0.75
    assert model["neck"]["channels"] == 96  # int(128 * 0.75)
    carried = {(entry.source, entry.target): entry for entry in result.mapped}
    fpn_depth = carried[("model.ssd.feature_extractor.fpn.additional_layer_depth", "model.neck.channels")]
    assert fpn_depth.value == 96 and "128 x depth_multiplier 0.75" in fpn_depth.comment
    assert not [note for note in result.not_carried if "depth_multiplier" in note.path]


def test_fields_absent_take_the_apis_defaults(tmp_path):
    """share_prediction_tower and both use_depthwise default to false in the API, not to the zoo's
    true; additional_layer_depth to 256."""
    result = imported(tmp_path, FPNLITE, ("        share_prediction_tower: true\n", ""),
                      ("        use_depthwise: true\n", ""), ("      use_depthwise: true\n", ""),
                      ("        additional_layer_depth: 128\n", ""))
    model = result.data["model"]
    assert model["head"] == {"channels": 128, "convs": 4, "share_tower": False, "separable": False}
    assert model["neck"] == {"min_level": 3, "max_level": 7, "channels": 256, "separable": False}
    comments = {entry.target: entry.comment for entry in result.mapped}
    assert comments["model.head.share_tower"] == "absent: the API's default"


def test_ssd_layers_before_the_predictor_need_both_fields(tmp_path):
    both = imported(tmp_path, SSD, ("num_layers_before_predictor: 0", "num_layers_before_predictor: 2"),
                    ("max_depth: 0", "max_depth: 64"), ("kernel_size: 1", "kernel_size: 3"))
    assert both.data["model"]["head"] == {"kernel_size": 3, "convs": 2, "channels": 64}
    alone = imported(tmp_path, SSD, ("num_layers_before_predictor: 0", "num_layers_before_predictor: 2"))
    assert "head" not in alone.data["model"]  # max_depth 0: the API builds no layers
    assert any("the API builds none unless both are above 0" in entry.comment for entry in alone.mapped)
