"""detkeeper: train TensorFlow 2 object detectors, keep the best checkpoints, export them whole."""

__version__ = "0.1.0"
