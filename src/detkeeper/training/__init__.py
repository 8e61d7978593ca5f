"""Training: the optimizer and its schedule, weight averaging, checkpoints and the training loop."""
