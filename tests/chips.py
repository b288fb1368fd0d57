"""Small hand-made chips shared by the image and dataset tests."""

from __future__ import annotations

import numpy as np


def chip_pixels(width: int, height: int, vertex: tuple[float, float]) -> np.ndarray:
    """uint8 [H, W]: a horizontal gradient with a bright 3x3 spot at the vertex."""
    pixels = np.tile(np.linspace(20, 80, width), (height, 1))
    col, row = int(vertex[0]), int(vertex[1])
    pixels[max(row - 1, 0) : row + 2, max(col - 1, 0) : col + 2] = 250
    return pixels.astype(np.uint8)
