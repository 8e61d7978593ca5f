"""Is the input pipeline the bottleneck of training on this machine?

Measures, in one run, on the BCCD train split at 512 px with training augmentation:
  1. the pipeline alone: images/s it produces;
  2. the registry's `retinanet_tiny` alone (Keras' compiled training step on one batch held in
     memory): images/s it consumes;
  3. both together, the model fed by the pipeline: images/s of real training.
The pipeline is not the bottleneck when (3) is close to (2), i.e. the ratio (3)/(2) is near 1.
(On 2 cores the pipeline and the model share the CPU, so (3) is the number that matters.)

Usage: .venv/bin/python benchmarks/input_pipeline.py [--bccd ../shared/data/bccd/BCCD] [--batches 20]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from detkeeper.config.schema import DataConfig, ModelConfig, SourceConfig  # noqa: E402
from detkeeper.data.pipeline import Augmentation, training_dataset  # noqa: E402
from detkeeper.data.sources import DataSources  # noqa: E402
from detkeeper.models import build_model  # noqa: E402
from detkeeper.models.detector import fit_inputs  # noqa: E402

IMAGE_SIZE = 512
BATCH = 8
MODEL = "retinanet_tiny"


def rate(count_images: int, seconds: float) -> float:
    return count_images / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_bccd = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bccd" / "BCCD"
    parser.add_argument("--bccd", default=str(default_bccd))
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()

    sources = DataSources(DataConfig(train=SourceConfig(format="voc", path=args.bccd, split="train")))
    prepared = sources.prepare("train")
    dataset = training_dataset(prepared.records, prepared.label_map, image_size=IMAGE_SIZE, batch_size=BATCH,
                               max_boxes=100, augmentation=Augmentation(), seed=0)

    # 1. pipeline alone (after a warm-up batch)
    iterator = iter(dataset)
    next(iterator)
    start = time.perf_counter()
    for _ in range(args.batches):
        next(iterator)
    pipeline_rate = rate(args.batches * BATCH, time.perf_counter() - start)

    # 2. model alone, on one batch held in memory
    model = build_model(ModelConfig(name=MODEL, image_size=IMAGE_SIZE), prepared.label_map.num_classes)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    images, targets = fit_inputs(next(iterator))
    model.train_on_batch(images, targets)  # trace
    start = time.perf_counter()
    for _ in range(args.batches):
        model.train_on_batch(images, targets)
    model_rate = rate(args.batches * BATCH, time.perf_counter() - start)

    # 3. model fed by the pipeline (prefetching in the background, as in training)
    fed = iter(training_dataset(prepared.records, prepared.label_map, image_size=IMAGE_SIZE, batch_size=BATCH,
                                max_boxes=100, augmentation=Augmentation(), seed=1))
    model.train_on_batch(*fit_inputs(next(fed)))
    start = time.perf_counter()
    for _ in range(args.batches):
        model.train_on_batch(*fit_inputs(next(fed)))
    fed_rate = rate(args.batches * BATCH, time.perf_counter() - start)

    print(f"BCCD train ({len(prepared.records)} images), {IMAGE_SIZE} px, batch {BATCH}, augmentation on, "
          f"{os.cpu_count()} CPU cores, {args.batches} batches each")
    print(f"  pipeline alone           {pipeline_rate:8.1f} images/s")
    print(f"  model alone (in memory)  {model_rate:8.1f} images/s  ({MODEL}, {model.count_params() / 1e6:.2f} M params)")
    print(f"  model fed by pipeline    {fed_rate:8.1f} images/s")
    print(f"  pipeline / model         {pipeline_rate / model_rate:8.2f}x  (> 1: pipeline produces faster than the model consumes)")
    print(f"  fed / model alone        {fed_rate / model_rate:8.2f}   (near 1: the pipeline is not the bottleneck)")


if __name__ == "__main__":
    main()
