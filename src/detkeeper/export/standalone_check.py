"""Run an exported SavedModel the way a user without detkeeper would, and print what it answered.

Executed as a script (``python -I standalone_check.py SAVED_MODEL IMAGES_DIR``) in a fresh
process by export verification: it imports only TensorFlow and NumPy, and refuses any import of
detkeeper, so an export that secretly needs detkeeper's code fails here rather than at a user's.
It loads the SavedModel, calls the loaded object on each image as uint8 (the images differ in
size), calls the ``encoded_image_string_tensor`` and ``tf_example`` signatures on all of them as
one batch, reads the ``metadata`` signature and the assets, and writes one JSON object to stdout.
Besides the detections it reports each entry point's output keys, dtypes and shapes, and per
detection the anchor it names with that anchor's raw box and scores (not every anchor: the raw
outputs are ``anchors x classes`` numbers per image), so verification can check what the TF OD
API outputs mean without shipping them whole.
"""

import gc
import importlib.abc
import json
import math
import os
import sys
import time


class _RefuseDetkeeper(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "detkeeper" or name.startswith("detkeeper."):
            raise ImportError(f"the exported SavedModel tried to import {name}; exports must not need detkeeper")
        return None


def _rows(outputs) -> list[dict]:
    count = outputs["num_detections"].numpy()
    return [{"boxes": outputs["detection_boxes"][row].numpy().tolist(),
             "scores": outputs["detection_scores"][row].numpy().tolist(),
             "classes": outputs["detection_classes"][row].numpy().tolist(),
             "num_detections": float(count[row]), **_anchor_fields(outputs, row, int(count[row]))}
            for row in range(len(count))]


def _anchor_fields(outputs, row: int, count: int) -> dict:
    """What the per-anchor outputs say about row `row`'s detections (empty when there are none)."""
    keys = ("detection_anchor_indices", "detection_multiclass_scores", "raw_detection_boxes", "raw_detection_scores")
    if not all(key in outputs for key in keys):
        return {}
    anchors = outputs["detection_anchor_indices"][row].numpy()
    multiclass = outputs["detection_multiclass_scores"][row].numpy()
    num_anchors = int(outputs["raw_detection_boxes"].shape[1])
    usable = [int(value) for value in anchors[:count]
              if math.isfinite(value) and value == int(value) and 0 <= value < num_anchors]
    return {"anchor_indices": anchors[:count].tolist(), "multiclass_scores": multiclass[:count].tolist(),
            "padding_zero": bool(not anchors[count:].any() and not multiclass[count:].any()),
            "raw_boxes_of_anchors": outputs["raw_detection_boxes"][row].numpy()[usable].tolist(),
            "raw_scores_of_anchors": outputs["raw_detection_scores"][row].numpy()[usable].tolist()}


def _layout(outputs) -> dict:
    """``{key: [dtype, shape]}`` of one call's outputs."""
    return {key: [value.dtype.name, [int(size) for size in value.shape]] for key, value in outputs.items()}


def _decode_rgb(tf, data: bytes):
    """detkeeper.data.image_format.decode_rgb, which this process may not import: JPEG with the
    accurate integer IDCT, as the export's graph decodes."""
    if tf.io.is_jpeg(data):
        return tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")
    return tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)


def main(saved_model_dir: str, images_dir: str) -> dict:
    sys.meta_path.insert(0, _RefuseDetkeeper())
    gc.disable()  # TensorFlow's import makes no garbage worth the collector's time (cli/console.py)
    import tensorflow as tf  # order: only after the hook that refuses detkeeper is installed

    gc.freeze()
    gc.enable()

    started = time.perf_counter()
    model = tf.saved_model.load(saved_model_dir)
    load_seconds = time.perf_counter() - started
    names = sorted(os.listdir(images_dir))
    encoded = [open(os.path.join(images_dir, name), "rb").read() for name in names]

    called, sizes, layouts = [], [], {}
    for data in encoded:
        image = _decode_rgb(tf, data)
        sizes.append([int(image.shape[0]), int(image.shape[1])])
        outputs = model(image[None])
        layouts.setdefault("call", _layout(outputs))
        called += _rows(outputs)
    outputs = model.signatures["serving_default"](
        input_tensor=_decode_rgb(tf, encoded[0])[None])
    layouts["serving_default"], default = _layout(outputs), _rows(outputs)
    outputs = model.signatures["encoded_image_string_tensor"](input_tensor=tf.constant(encoded))
    layouts["encoded_image_string_tensor"], by_bytes = _layout(outputs), _rows(outputs)
    examples = [tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data]))})).SerializeToString()
        for data in encoded]
    outputs = model.signatures["tf_example"](input_tensor=tf.constant(examples))
    layouts["tf_example"], by_example = _layout(outputs), _rows(outputs)
    described = model.signatures["metadata"]()
    assets = sorted(os.listdir(os.path.join(saved_model_dir, "assets")))
    return {
        "load_seconds": load_seconds,
        "image_names": names,
        "image_sizes": sizes,
        "signatures": sorted(model.signatures.keys()),
        "output_layouts": layouts,
        "call": called,
        "serving_default_first_image": default,
        "encoded_image_string_tensor": by_bytes,
        "tf_example": by_example,
        "metadata": described["metadata"].numpy().decode("utf-8"),
        "label_map": described["label_map"].numpy().decode("utf-8"),
        "assets": assets,
        "detkeeper_imported": any(name == "detkeeper" or name.startswith("detkeeper.") for name in sys.modules),
        "tensorflow_version": tf.__version__,
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
