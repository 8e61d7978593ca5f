"""Run an exported SavedModel the way a user without detkeeper would, and print what it answered.

Executed as a script (``python -I standalone_check.py SAVED_MODEL IMAGES_DIR``) in a fresh
process by export verification: it imports only TensorFlow and NumPy, and refuses any import of
detkeeper, so an export that secretly needs detkeeper's code fails here rather than at a user's.
It loads the SavedModel, calls the loaded object on each image as uint8 (the images differ in
size), calls the ``encoded_image_string_tensor`` and ``tf_example`` signatures on all of them as
one batch, reads the ``metadata`` signature and the assets, and writes one JSON object to stdout.
"""

import importlib.abc
import json
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
             "num_detections": float(count[row])} for row in range(len(count))]


def main(saved_model_dir: str, images_dir: str) -> dict:
    sys.meta_path.insert(0, _RefuseDetkeeper())
    import tensorflow as tf

    started = time.perf_counter()
    model = tf.saved_model.load(saved_model_dir)
    load_seconds = time.perf_counter() - started
    names = sorted(os.listdir(images_dir))
    encoded = [open(os.path.join(images_dir, name), "rb").read() for name in names]

    called, sizes = [], []
    for data in encoded:
        image = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
        sizes.append([int(image.shape[0]), int(image.shape[1])])
        called += _rows(model(image[None]))
    default = _rows(model.signatures["serving_default"](
        input_tensor=tf.io.decode_image(encoded[0], channels=3, expand_animations=False)[None]))
    by_bytes = _rows(model.signatures["encoded_image_string_tensor"](input_tensor=tf.constant(encoded)))
    examples = [tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data]))})).SerializeToString()
        for data in encoded]
    by_example = _rows(model.signatures["tf_example"](input_tensor=tf.constant(examples)))
    described = model.signatures["metadata"]()
    assets = sorted(os.listdir(os.path.join(saved_model_dir, "assets")))
    return {
        "load_seconds": load_seconds,
        "image_names": names,
        "image_sizes": sizes,
        "signatures": sorted(model.signatures.keys()),
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
