"""detkeeper: train TensorFlow 2 object detectors, keep the best checkpoints, export them whole.

    import detkeeper
    result = detkeeper.train("my_run.yaml")                  # best-k checkpoints by val mAP
    report = detkeeper.evaluate(result.run_dir, "test")      # COCO metrics of the best checkpoint
    export = detkeeper.export(result.run_dir)                # verified SavedModel + .keras
    predictor = detkeeper.load(export.out_dir)               # detections with labels

The entry points import TensorFlow only when first used, so ``import detkeeper`` stays cheap.
"""

import importlib

__version__ = "0.1.0"

_ENTRY_POINTS = {
    "train": ("detkeeper.api", "train"),
    "evaluate": ("detkeeper.api", "evaluate"),
    "export": ("detkeeper.api", "export"),
    "load": ("detkeeper.api", "load"),
}
__all__ = ["__version__", *_ENTRY_POINTS]


def __getattr__(name: str):
    if name in _ENTRY_POINTS:
        module, attribute = _ENTRY_POINTS[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'detkeeper' has no attribute {name!r}")
