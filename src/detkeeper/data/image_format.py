"""Which image format a byte string holds, from its leading bytes.

The formats are the ones ``tf.io.decode_image`` decodes; writers use this to name files and to
fill the TFRecord ``image/format`` field, the checker to tell a corrupt image from a non-image.
"""

from __future__ import annotations

#: Leading bytes -> format name (as TF OD API TFRecords spell ``image/format``).
_MAGIC = ((b"\xff\xd8\xff", "jpeg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"GIF87a", "gif"),
          (b"GIF89a", "gif"), (b"BM", "bmp"))

EXTENSIONS = {"jpeg": ".jpg", "png": ".png", "gif": ".gif", "bmp": ".bmp"}


def sniff_format(data: bytes) -> str | None:
    """``"jpeg"``, ``"png"``, ``"gif"``, ``"bmp"``, or None when the bytes are none of them."""
    return next((name for magic, name in _MAGIC if data.startswith(magic)), None)
