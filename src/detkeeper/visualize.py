"""Drawing labelled boxes on images, for `data show`, predictions and reports."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from detkeeper.data.label_map import LabelMap

# Colour-blind-friendly palette (Okabe-Ito), cycled by class position in the label map.
_PALETTE = [(230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178),
            (213, 94, 0), (204, 121, 167), (255, 255, 255)]


def class_colour(label_map: LabelMap, class_id: int) -> tuple[int, int, int]:
    index = label_map.ids.index(class_id) if label_map.has_id(class_id) else len(_PALETTE) - 1
    return _PALETTE[index % len(_PALETTE)]


def draw_boxes(image: np.ndarray | Image.Image, boxes: np.ndarray, class_ids: Sequence[int],
               label_map: LabelMap, scores: Sequence[float] | None = None) -> Image.Image:
    """A copy of `image` with each ``[ymin, xmin, ymax, xmax]`` pixel box outlined and labelled."""
    canvas = (image.copy() if isinstance(image, Image.Image)
              else Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8))).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for position, (box, class_id) in enumerate(zip(np.asarray(boxes).reshape(-1, 4), class_ids)):
        ymin, xmin, ymax, xmax = [float(v) for v in box]
        colour = class_colour(label_map, int(class_id))
        draw.rectangle([xmin, ymin, max(xmin, xmax - 1), max(ymin, ymax - 1)], outline=colour, width=2)
        name = label_map.item_of_id(int(class_id)).display_name if label_map.has_id(int(class_id)) else str(class_id)
        text = name if scores is None else f"{name} {float(scores[position]):.2f}"
        left, top, right, bottom = draw.textbbox((xmin, ymin), text, font=font)
        lift = bottom - top + 2 if ymin >= bottom - top + 2 else -2  # label inside at the top edge
        draw.rectangle([left, top - lift, right + 2, bottom - lift], fill=colour)
        draw.text((xmin + 1, ymin - lift), text, fill=(0, 0, 0), font=font)
    return canvas


def image_grid(images: Sequence[Image.Image], columns: int = 4, gap: int = 4) -> Image.Image:
    """Tile equally sized images into one picture."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    width, height = images[0].size
    rows = (len(images) + columns - 1) // columns
    columns = min(columns, len(images))
    grid = Image.new("RGB", (columns * width + (columns - 1) * gap, rows * height + (rows - 1) * gap),
                     (40, 40, 40))
    for position, image in enumerate(images):
        row, column = divmod(position, columns)
        grid.paste(image, (column * (width + gap), row * (height + gap)))
    return grid
