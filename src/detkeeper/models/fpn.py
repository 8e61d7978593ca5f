"""Feature pyramid network (Lin et al. 2017) over a backbone's C3..C5, shared by the detector families."""

from __future__ import annotations

import keras


class FeaturePyramid(keras.layers.Layer):
    """C3..C5 -> P{min_level}..P{max_level}, all with `channels` channels.

    Top-down: 1x1 laterals, nearest upsampling and addition, 3x3 smoothing. Levels above 5 come
    from stride-2 3x3 convolutions on C5 (P6) and on ReLU(P6) (P7), as in RetinaNet.
    """

    def __init__(self, channels: int, min_level: int = 3, max_level: int = 7, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 3 <= min_level <= max_level <= 7:
            raise ValueError(f"pyramid levels must satisfy 3 <= min_level <= max_level <= 7, "
                             f"got {min_level}..{max_level}")
        self.channels, self.min_level, self.max_level = channels, min_level, max_level
        self.lateral = {str(level): keras.layers.Conv2D(channels, 1, name=f"lateral_c{level}") for level in (3, 4, 5)}
        self.smooth = {str(level): keras.layers.Conv2D(channels, 3, padding="same", name=f"smooth_p{level}")
                       for level in (3, 4, 5)}
        self.extra = {str(level): keras.layers.Conv2D(channels, 3, strides=2, padding="same", name=f"extra_p{level}")
                      for level in range(6, max_level + 1)}
        self.upsample = keras.layers.UpSampling2D(2, interpolation="nearest")
        # String keys: TensorFlow cannot write a dict with int keys into a SavedModel.

    def call(self, features: dict) -> list:
        top_down = self.lateral["5"](features["C5"])
        outputs = {5: self.smooth["5"](top_down)}
        for level in (4, 3):
            top_down = self.lateral[str(level)](features[f"C{level}"]) + self.upsample(top_down)
            outputs[level] = self.smooth[str(level)](top_down)
        previous = features["C5"]
        for level in range(6, self.max_level + 1):
            previous = self.extra[str(level)](previous if level == 6 else keras.ops.relu(previous))
            outputs[level] = previous
        return [outputs[level] for level in range(self.min_level, self.max_level + 1)]

    def get_config(self) -> dict:
        return {**super().get_config(), "channels": self.channels, "min_level": self.min_level,
                "max_level": self.max_level}
