"""Which image format a byte string holds, from its leading bytes, and the one way images are decoded.

The formats are the ones ``tf.io.decode_image`` decodes; writers use this to name files and to
fill the TFRecord ``image/format`` field, the checker to tell a corrupt image from a non-image.
:func:`decode_rgb` is how training, evaluation and the exported graph decode an image.
"""

from __future__ import annotations

import io
import re

from PIL import Image, UnidentifiedImageError

from detkeeper.errors import DataError

#: Leading bytes -> format name (as TF OD API TFRecords spell ``image/format``).
_MAGIC = ((b"\xff\xd8\xff", "jpeg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"GIF87a", "gif"),
          (b"GIF89a", "gif"), (b"BM", "bmp"))

EXTENSIONS = {"jpeg": ".jpg", "png": ".png", "gif": ".gif", "bmp": ".bmp"}


def decode_rgb(data):
    """An encoded image (a string tensor) -> uint8 ``[H, W, 3]``, in a graph or eagerly.

    JPEG is decoded with libjpeg's accurate integer IDCT: the pixels PIL, OpenCV and the TF OD API's
    own Python tools decode. ``tf.io.decode_image``'s default (the fast IDCT) is off by up to a few
    levels on most pixels, which changes what a trained network answers. Other formats as
    ``tf.io.decode_image`` decodes them (the first frame of a GIF)."""
    import tensorflow as tf  # light: imports TensorFlow

    image = tf.cond(tf.io.is_jpeg(data),
                    lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
                    lambda: tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8))
    return tf.ensure_shape(image, [None, None, 3])


def decoded_size(data: bytes) -> tuple[int, int]:
    """``(height, width)`` of an encoded image, decoded as ``tf.io.decode_image`` (and so an export's
    serving graph) decodes it; a DataError saying why when it cannot be."""
    import tensorflow as tf  # light: imports TensorFlow

    if not data:
        raise DataError("empty file")
    try:
        image = decode_rgb(tf.constant(data))
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
        reason = re.sub(r"\{\{.*?\}\}|\[Op:\w+\]|\s+name:\s*$", "", error.message.strip()).strip().splitlines()[0][:200]
        raise DataError(f"not a readable image ({reason})") from None
    return int(image.shape[0]), int(image.shape[1])


def header_size(data: bytes) -> tuple[int, int] | None:
    """``(height, width)`` from the image header (None if unreadable), for records declaring no size."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError):
        return None
    return height, width


def sniff_format(data: bytes) -> str | None:
    """``"jpeg"``, ``"png"``, ``"gif"``, ``"bmp"``, or None when the bytes are none of them."""
    return next((name for magic, name in _MAGIC if data.startswith(magic)), None)
