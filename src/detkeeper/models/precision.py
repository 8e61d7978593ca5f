"""The mixed-precision policy a run's model is built under, in one place.

Keras layers take the global dtype policy when they are built, so training and every later
restore of the run's checkpoints must build the model under the same policy.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import keras


@contextlib.contextmanager
def mixed_precision(enabled: bool) -> Iterator[None]:
    """``mixed_float16`` inside the block when `enabled`; the caller's policy after, always."""
    previous = keras.mixed_precision.dtype_policy()
    if enabled:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)
