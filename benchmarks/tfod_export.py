"""detkeeper's export of a TF OD API model against the API's own exporter: latency at batch 1.

The TF OD API model folder (default: the oracle's SSD MobileNetV2 FPN-lite 320) is exported by
detkeeper (`detkeeper.export(folder, verify_with=[photo])`); the API's SavedModel of the same
checkpoint is made by the API itself (``exporter_lib_v2``, see below). Both are loaded here and
called on the same uint8 photo, `--warmup` calls first (not timed), then `--repeats` rounds in
which the two take turns, so load from other processes falls on both alike; outputs are read back
to NumPy inside the timing. Printed: each one's median latency and the ratio detkeeper / API,
measured in this run, and the largest difference of their detection scores (a sanity check: the
API's model is rebuilt by the oracle from the same seed, within about 1e-4 of the folder's).

The API's SavedModel (TF 2.21 + tf-keras, ~2 minutes to set up, once). The oracle's weights depend
only on (config, seed, input size), so this rebuilds the folder's checkpoint and exports it:
  ROOT=/tmp/tfod-oracle ../shared/tools/tfod-oracle/setup.sh
  source /tmp/tfod-oracle/env.sh && python ../shared/tools/tfod-oracle/oracle.py \\
      --config ../shared/data/tfod-oracle/ssd_mobilenet_v2_fpnlite_320/pipeline.config \\
      --out /tmp/api-fpnlite --image ../shared/data/tfod-oracle/photo.jpg --export

Usage: .venv/bin/python benchmarks/tfod_export.py --api-saved-model /tmp/api-fpnlite/export/saved_model
           [--folder FOLDER] [--photo PHOTO] [--repeats 50] [--warmup 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import detkeeper  # noqa: E402

ORACLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tfod-oracle"


def timed_call(model, images: tf.Tensor) -> tuple[float, dict]:
    started = time.perf_counter()
    outputs = {key: value.numpy() for key, value in model(images).items()}
    return time.perf_counter() - started, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api-saved-model", required=True, help="the TF OD API exporter's saved_model/ folder")
    parser.add_argument("--folder", default=str(ORACLE / "ssd_mobilenet_v2_fpnlite_320"))
    parser.add_argument("--photo", default=str(ORACLE / "photo.jpg"))
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tfod-export-bench-") as scratch:
        os.environ.setdefault("DETKEEPER_CACHE", os.path.join(scratch, "cache"))
        started = time.perf_counter()
        exported = detkeeper.export(args.folder, verify_with=[args.photo], out=os.path.join(scratch, "export"))
        export_seconds = time.perf_counter() - started
        models = {"detkeeper": tf.saved_model.load(str(exported.saved_model_dir)),
                  "TF OD API": tf.saved_model.load(args.api_saved_model)}
        image = tf.io.decode_jpeg(tf.io.read_file(args.photo), channels=3, dct_method="INTEGER_ACCURATE")[None]
        answers = {}
        for name, model in models.items():
            for _ in range(args.warmup):
                _, answers[name] = timed_call(model, image)
        seconds = {name: [] for name in models}
        for _ in range(args.repeats):
            for name, model in models.items():
                seconds[name].append(timed_call(model, image)[0])

    print(f"export of {args.folder} by detkeeper: {export_seconds:.1f} s (verification included)")
    median = {name: statistics.median(values) * 1000 for name, values in seconds.items()}
    for name, value in median.items():
        print(f"{name:>10}: {value:7.1f} ms per call at batch 1 (median of {args.repeats})")
    print(f"ratio detkeeper / TF OD API: {median['detkeeper'] / median['TF OD API']:.2f}")
    count = int(answers["TF OD API"]["num_detections"][0])
    gap = float(np.abs(answers["detkeeper"]["detection_scores"][0, :count]
                       - answers["TF OD API"]["detection_scores"][0, :count]).max())
    print(f"largest difference of their {count} detection scores, rank by rank: {gap:.2g} (the API's model "
          "is rebuilt from the same seed, within about 1e-4 of the folder's checkpoint)")


if __name__ == "__main__":
    main()
