"""EfficientNet-B0..B7 as the TF OD API's EfficientDet feature extractor builds and taps it.

The API (``models/ssd_efficientnet_bifpn_feature_extractor.py``) builds tf-models-official's
``official.legacy.image_classification.efficientnet.efficientnet_model.EfficientNet.from_name``
with ``rescale_input: False`` and taps it at ``stack_2/block_1/add`` (level 3, stride 8),
``stack_4/block_2/add`` (level 4) and ``stack_6/block_0/project_bn`` (level 5), whatever the size:
at B1-B7 a stack has more blocks than the tapped one, and the later blocks of stack 2 and 4 still
feed the next stack, while stack 6's later blocks, the ``top`` convolution and the classifier are
never computed (the zoo checkpoints keep them under ``classification_backbone/``).

Here the network is built up to the last tapped layer, block for block as that source defines it:
a 3x3 stride-2 stem, seven stacks of MBConv blocks (1x1 expansion unless the ratio is 1, k x k
depthwise, squeeze-and-excitation with ``max(1, input_filters / 4)`` channels, 1x1 projection, an
identity skip with drop-connect where the shape allows it), batch norm (momentum 0.99, epsilon
1e-3) after every convolution but the SE ones, swish (``x * sigmoid(x)``) activations and
"same" padding. Widths and depths scale by EfficientNet's own compound coefficients
(:data:`COMPOUND_COEFFICIENTS`, rounded as its ``round_filters`` / ``round_repeats`` do). Its
weighted layers come in the model's order, which is the checkpoint's
``_efficientnet/layer_with_weights-N`` order (:func:`layers_with_weights`).
"""

from __future__ import annotations

import math

import keras
from keras import ops

from detkeeper.models import batch_norm

#: EfficientNet's own definition (``MODEL_CONFIGS``): name -> (width, depth) coefficient.
COMPOUND_COEFFICIENTS = {
    "efficientnet-b0": (1.0, 1.0), "efficientnet-b1": (1.0, 1.1), "efficientnet-b2": (1.1, 1.2),
    "efficientnet-b3": (1.2, 1.4), "efficientnet-b4": (1.4, 1.8), "efficientnet-b5": (1.6, 2.2),
    "efficientnet-b6": (1.8, 2.6), "efficientnet-b7": (2.0, 3.1),
}
#: The B0 stacks: (input filters, output filters, kernel, repeats, expand ratio, stride).
STACKS = ((32, 16, 3, 1, 1, 1), (16, 24, 3, 2, 6, 2), (24, 40, 5, 2, 6, 2), (40, 80, 3, 3, 6, 2),
          (80, 112, 5, 3, 6, 1), (112, 192, 5, 4, 6, 2), (192, 320, 3, 1, 6, 1))
STEM_FILTERS = 32
SE_RATIO = 0.25
DROP_CONNECT_RATE = 0.2
DEPTH_DIVISOR = 8
BATCH_NORM_MOMENTUM, BATCH_NORM_EPSILON = 0.99, 1e-3
#: The extractor's taps (``_EFFICIENTNET_LEVEL_ENDPOINTS``), '/' written '_' in Keras 3 names.
LEVEL_ENDPOINTS = {3: "stack_2_block_1_add", 4: "stack_4_block_2_add", 5: "stack_6_block_0_project_bn"}
#: The input normalisation of the API's ``preprocess``: ImageNet's mean and standard deviation.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The VarianceScaling(2, fan_out, normal) initializer EfficientNet's convolutions start from.
CONV_INITIALIZER = {"class_name": "VarianceScaling",
                    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "normal"}}


def round_filters(filters: int, width: float) -> int:
    """EfficientNet's ``round_filters``: scaled, to a multiple of 8, never 10 % below the scaled value."""
    scaled = filters * width
    rounded = max(DEPTH_DIVISOR, int(scaled + DEPTH_DIVISOR / 2) // DEPTH_DIVISOR * DEPTH_DIVISOR)
    return int(rounded + DEPTH_DIVISOR if rounded < 0.9 * scaled else rounded)


def round_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(depth * repeats))


@keras.saving.register_keras_serializable(package="detkeeper")
class ImageNetNormalization(keras.layers.Layer):
    """RGB 0..255 -> ``(x / 255 - mean) / std``, in the API's order of operations."""

    def call(self, images):
        mean = ops.convert_to_tensor(IMAGENET_MEAN, images.dtype)
        std = ops.convert_to_tensor(IMAGENET_STD, images.dtype)
        return (images / 255.0 - mean) / std


def _conv_bn(x, filters: int | None, kernel: int, name: str, momentum: float, strides: int = 1,
             activation: str | None = "swish"):
    """EfficientNet's ``conv2d_block``: a bias-free (depthwise when `filters` is None) convolution,
    batch norm, then the activation."""
    if filters is None:
        conv = keras.layers.DepthwiseConv2D(kernel, strides, padding="same", use_bias=False,
                                            depthwise_initializer=CONV_INITIALIZER, name=f"{name}_conv2d")
    else:
        conv = keras.layers.Conv2D(filters, kernel, strides, padding="same", use_bias=False,
                                   kernel_initializer=CONV_INITIALIZER, name=f"{name}_conv2d")
    x = batch_norm.BatchNormalization(momentum=momentum, epsilon=BATCH_NORM_EPSILON, name=f"{name}_bn")(conv(x))
    return x if activation is None else keras.layers.Activation(activation, name=f"{name}_activation")(x)


def _mb_conv_block(inputs, input_filters: int, output_filters: int, kernel: int, expand_ratio: int, stride: int,
                   drop_rate: float, prefix: str, momentum: float):
    """EfficientNet's ``mb_conv_block`` (depthwise, with squeeze-and-excitation)."""
    filters = input_filters * expand_ratio
    x = inputs
    if expand_ratio != 1:
        x = _conv_bn(x, filters, 1, f"{prefix}expand", momentum)
    x = _conv_bn(x, None, kernel, f"{prefix}depthwise", momentum, strides=stride)
    squeezed = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{prefix}se_squeeze")(x)
    reduced = max(1, int(input_filters * SE_RATIO))
    squeezed = keras.layers.Conv2D(reduced, 1, padding="same", activation="swish", kernel_initializer=CONV_INITIALIZER,
                                   name=f"{prefix}se_reduce_conv2d")(squeezed)
    squeezed = keras.layers.Conv2D(filters, 1, padding="same", activation="sigmoid",
                                   kernel_initializer=CONV_INITIALIZER, name=f"{prefix}se_expand_conv2d")(squeezed)
    x = keras.layers.Multiply(name=f"{prefix}se_excite")([x, squeezed])
    x = _conv_bn(x, output_filters, 1, f"{prefix}project", momentum, activation=None)
    if stride == 1 and input_filters == output_filters:
        if drop_rate > 0:
            x = keras.layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=f"{prefix}drop")(x)
        x = keras.layers.Add(name=f"{prefix}add")([x, inputs])
    return x


def build_efficientnet(name: str, image_size: int, max_level: int = 5,
                       batch_norm_momentum: float = BATCH_NORM_MOMENTUM) -> keras.Model:
    """``images [B, S, S, 3]`` RGB 0..255 -> ``{"C3", ..., "C<max_level>"}`` (max_level 3..5), the
    API's taps of EfficientNet `name` (a key of :data:`COMPOUND_COEFFICIENTS`); random init."""
    width, depth = COMPOUND_COEFFICIENTS[name]
    images = keras.Input((image_size, image_size, 3), name="images")
    x = ImageNetNormalization(name="imagenet_normalization")(images)
    x = _conv_bn(x, round_filters(STEM_FILTERS, width), 3, "stem", batch_norm_momentum, strides=2)
    total_blocks = sum(round_repeats(stack[3], depth) for stack in STACKS)
    taps, block_number = {}, 0
    for stack_index, (input_filters, output_filters, kernel, repeats, expand_ratio, stride) in enumerate(STACKS):
        input_filters, output_filters = round_filters(input_filters, width), round_filters(output_filters, width)
        for block_index in range(round_repeats(repeats, depth)):
            prefix = f"stack_{stack_index}_block_{block_index}_"
            x = _mb_conv_block(x, input_filters if block_index == 0 else output_filters, output_filters, kernel,
                               expand_ratio, stride if block_index == 0 else 1,
                               DROP_CONNECT_RATE * block_number / total_blocks, prefix, batch_norm_momentum)
            block_number += 1
            for level, endpoint in LEVEL_ENDPOINTS.items():
                if level <= max_level and endpoint in (f"{prefix}add", f"{prefix}project_bn"):
                    taps[f"C{level}"] = x
            if len(taps) == max_level - 2:
                return keras.Model(images, taps, name=name.replace("-", "_"))
    raise ValueError(f"EfficientNet taps for levels 3..{max_level} not found")


def layers_with_weights(backbone: keras.Model) -> list[keras.layers.Layer]:
    """The network's layers that hold variables, in its order: the checkpoint's
    ``_efficientnet/layer_with_weights-N`` is the N-th of them."""
    return [layer for layer in backbone.layers if layer.weights]
