"""BiFPN: the TF OD API's ``KerasBiFpnFeatureMaps`` with its default node parameters.

From ``models/bidirectional_feature_pyramid_generators.py`` and ``utils/bifpn_utils.py`` as the
EfficientDet configs build them (``combine_method: fast_attention``, max-pooling downsampling):

- the nodes, in the API's order (:func:`bifpn_nodes`): levels above the backbone's are made from
  the level below (``0_up_lvl_6`` from level 5, ...); then, per iteration, a top-down pass
  (``i_dn_lvl_l`` for l = max - 1 .. min) and a bottom-up pass (``i_up_lvl_l`` for l = min + 1 .. max);
  the outputs are the last ``max - min + 1`` nodes (level min first);
- each input of a node: a 1x1 convolution with bias and batch norm where the input has other
  channels (only backbone features), then nearest-neighbour upsampling or a ``stride + 1``
  "same" max pooling to the node's level (``node_input_blocks/<node>/<input>/1/{0,1}``);
- nodes with several inputs: a fast-attention sum, ``sum(relu(w_i) x_i) / (sum(relu(w_i)) + 1e-4)``
  (``node_combine_op/<node>/bifpn_combine_weights``, ones at first), then swish, a 3x3 separable
  convolution with bias and batch norm (``node_post_combine_block/<node>/{1,2}``).

Inputs whose side is not a multiple of the coarsest stride (the API refuses them) work too: an
upsampled map is cut to its level's size.
"""

from __future__ import annotations

import dataclasses

import keras
from keras import ops

from detkeeper.models import batch_norm

#: The EfficientDet configs' ``conv_hyperparams``: batch norm decay and epsilon, the initializer.
BATCH_NORM_MOMENTUM, BATCH_NORM_EPSILON = 0.99, 1e-3
CONV_INITIALIZER_STDDEV = 0.03
FAST_ATTENTION_EPSILON = 1e-4


@dataclasses.dataclass(frozen=True)
class BiFpnNode:
    """One node: its API name, its pyramid level, and the indices of its inputs in the list of
    feature maps (the backbone levels first, then the nodes in order)."""

    name: str
    level: int
    inputs: tuple[int, ...]


def bifpn_nodes(repeats: int, min_level: int, max_level: int, input_max_level: int) -> list[BiFpnNode]:
    """The API's ``_create_bifpn_node_config``, as nodes with their inputs resolved."""
    names = [f"0_up_lvl_{level}" for level in range(min_level, min(max_level, input_max_level) + 1)]
    nodes = []

    def add(name: str, level: int, inputs: list[str]) -> None:
        nodes.append(BiFpnNode(name, level, tuple(names.index(item) for item in inputs)))
        names.append(name)

    for level in range(input_max_level + 1, max_level + 1):
        add(f"0_up_lvl_{level}", level, [f"0_up_lvl_{level - 1}"])
    for iteration in range(1, repeats + 1):
        for level in reversed(range(min_level, max_level)):
            same_level = "up" if level > min_level or iteration == 1 else "dn"
            add(f"{iteration}_dn_lvl_{level}", level, [f"{iteration - 1}_{same_level}_lvl_{level}", names[-1]])
        for level in range(min_level + 1, max_level + 1):
            inputs = [f"{iteration - 1}_up_lvl_{level}"]
            if level < max_level:
                inputs.append(f"{iteration}_dn_lvl_{level}")
            add(f"{iteration}_up_lvl_{level}", level, inputs + [names[-1]])
    return nodes


def _initializer():
    return keras.initializers.TruncatedNormal(stddev=CONV_INITIALIZER_STDDEV)


class BiFpnFeatureMaps(keras.layers.Layer):
    """``{"C3", ..., "C<input_max_level>"}`` -> ``[P{min_level}, ..., P{max_level}]``, `channels` each."""

    def __init__(self, channels: int = 64, repeats: int = 3, min_level: int = 3, max_level: int = 7,
                 input_max_level: int = 5, batch_norm_momentum: float = BATCH_NORM_MOMENTUM, **kwargs) -> None:
        super().__init__(**kwargs)
        self.channels, self.repeats = channels, repeats
        self.min_level, self.max_level, self.input_max_level = min_level, max_level, input_max_level
        self.batch_norm_momentum = batch_norm_momentum
        self.nodes = tuple(bifpn_nodes(repeats, min_level, max_level, input_max_level))
        self.input_levels = list(range(min_level, min(max_level, input_max_level) + 1))
        levels = self.input_levels + [node.level for node in self.nodes]
        # Layers held in dicts keyed "<node>" / "<node>_<input>": the checkpoint's indices.
        self.projections, self.projection_norms, self.resamples = {}, {}, {}
        self.combine_weights, self.post_convs, self.post_norms = {}, {}, {}
        for index, node in enumerate(self.nodes):
            for position, source in enumerate(node.inputs):
                key = f"{index}_{position}"
                if source < len(self.input_levels):  # a backbone feature: other channels
                    self.projections[key] = keras.layers.Conv2D(channels, 1, kernel_initializer=_initializer(),
                                                                name=f"node{index}_input{position}_conv")
                    self.projection_norms[key] = self._batch_norm(f"node{index}_input{position}_batchnorm")
                if levels[source] != node.level:
                    self.resamples[key] = _resample(levels[source], node.level, f"node{index}_input{position}")
            if len(node.inputs) > 1:
                self.combine_weights[str(index)] = self.add_weight(
                    shape=(len(node.inputs), 1), initializer="ones", name=f"node{index}_combine_weights")
                self.post_convs[str(index)] = keras.layers.SeparableConv2D(
                    channels, 3, padding="same", depthwise_initializer=_initializer(),
                    pointwise_initializer=_initializer(), name=f"node{index}_separable_conv")
                self.post_norms[str(index)] = self._batch_norm(f"node{index}_batchnorm")

    def _batch_norm(self, name: str) -> keras.layers.BatchNormalization:
        return batch_norm.BatchNormalization(momentum=self.batch_norm_momentum, epsilon=BATCH_NORM_EPSILON,
                                             name=name)

    def call(self, features: dict, training=False) -> list:
        maps = [features[f"C{level}"] for level in self.input_levels]
        sides = {level: tuple(x.shape[1:3]) for level, x in zip(self.input_levels, maps)}
        for index, node in enumerate(self.nodes):
            inputs = []
            for position, source in enumerate(node.inputs):
                key, x = f"{index}_{position}", maps[source]
                if key in self.projections:
                    x = self.projection_norms[key](self.projections[key](x), training=training)
                if key in self.resamples:
                    x = self.resamples[key](x)
                inputs.append(_crop(x, sides.get(node.level)))
            if len(inputs) == 1:
                maps.append(inputs[0])
                sides.setdefault(node.level, tuple(inputs[0].shape[1:3]))
                continue
            weights = ops.relu(self.combine_weights[str(index)])
            weights = weights / (ops.sum(weights) + FAST_ATTENTION_EPSILON)
            x = ops.squeeze(ops.matmul(ops.stack(inputs, axis=-1), ops.cast(weights, inputs[0].dtype)), axis=-1)
            x = self.post_convs[str(index)](ops.silu(x))
            maps.append(self.post_norms[str(index)](x, training=training))
        return maps[-(self.max_level - self.min_level + 1):]

    def get_config(self) -> dict:
        return {**super().get_config(), "channels": self.channels, "repeats": self.repeats,
                "min_level": self.min_level, "max_level": self.max_level,
                "input_max_level": self.input_max_level, "batch_norm_momentum": self.batch_norm_momentum}


def _crop(x, side: tuple[int, int] | None):
    """An upsampled map cut to its level's size where that is odd: an input side that is not a
    multiple of the coarsest stride, which the API refuses; the coarser map's last row and column
    covered the finer one's "same" padding."""
    if side is None or tuple(x.shape[1:3]) == side:
        return x
    return x[:, : side[0], : side[1], :]


def _resample(from_level: int, to_level: int, name: str) -> keras.layers.Layer:
    """Nearest-neighbour upsampling to a finer level, a ``stride + 1`` max pooling to a coarser one."""
    if to_level < from_level:
        return keras.layers.UpSampling2D(2 ** (from_level - to_level), interpolation="nearest", name=f"{name}_up")
    stride = 2 ** (to_level - from_level)
    return keras.layers.MaxPooling2D(stride + 1, stride, padding="same", name=f"{name}_down")
