"""Chip reading and preprocessing, shared by training and inference.

:func:`read_image` -> :func:`normalize_image` -> :func:`preprocess_image` is the
one path from an image file to the network input (:func:`load_image` chains
them). It uses numpy and PIL only, so ONNX inference runs without importing
torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from wakemodel.errors import InputError, WakeModelError

IMAGE_EXTENSIONS = (".png", ".tif", ".tiff")
"""Suffixes of the chip files read (PNG and TIFF)."""
LOW_PERCENTILE = 1.0
"""Percentile of the raw grey values that maps to 0."""
HIGH_PERCENTILE = 99.5
"""Percentile of the raw grey values that maps to 1."""
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
"""Errors PIL raises for missing, unknown, truncated or corrupt files."""


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a chip as raw grey values.

    PNG (8-bit or 16-bit grayscale, RGB, RGBA, palette) and TIFF (8/16/32-bit
    integer or float, single band or RGB) are supported. Colour images become
    luminance ``0.299 R + 0.587 G + 0.114 B`` (ITU-R 601, as PIL's ``L`` mode);
    alpha is ignored.

    Args:
        path: Image file.

    Returns:
        float32 ``[H, W]`` raw grey values (0-255 for 8-bit, 0-65535 for 16-bit).

    Raises:
        WakeModelError: The file is missing, unreadable or corrupt.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("1", "LA", "La"):
                image = image.convert("L")
            elif image.mode not in ("L", "I", "F") and not image.mode.startswith("I;16"):
                image = image.convert("RGB")
            pixels = np.asarray(image, dtype=np.float32)
    except IMAGE_ERRORS as error:
        raise WakeModelError(
            f"Cannot read image {path}: {error or type(error).__name__}; "
            "check that it is a PNG or TIFF file."
        ) from error
    if pixels.ndim == 3:
        pixels = pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if pixels.ndim != 2 or pixels.size == 0:
        raise WakeModelError(f"Cannot read image {path}: unsupported shape {pixels.shape}.")
    return np.ascontiguousarray(pixels, dtype=np.float32)


def normalize_image(image: np.ndarray) -> np.ndarray:
    """Stretch raw grey values to [0, 1] per image (robust percentile stretch).

    The 1st percentile maps to 0 and the 99.5th percentile to 1 (values beyond
    are clipped), computed over the finite pixels. If those percentiles coincide
    (e.g. a flat sea with one bright vessel pixel) the finite min and max are
    used instead; a constant image becomes all zeros. NaN and inf pixels become 0.

    Args:
        image: ``[H, W]`` raw grey values, any real dtype.

    Returns:
        float32 ``[H, W]`` in [0, 1].
    """
    pixels = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(pixels)
    if not finite.any():
        return np.zeros(pixels.shape, dtype=np.float32)
    values = pixels[finite]
    low, high = np.percentile(values, [LOW_PERCENTILE, HIGH_PERCENTILE])
    if high <= low:
        low, high = values.min(), values.max()
    if high <= low:
        return np.zeros(pixels.shape, dtype=np.float32)
    stretched = (np.where(finite, pixels, low) - low) / (high - low)
    return np.clip(stretched, 0.0, 1.0).astype(np.float32)


def check_image_size(image_size: int) -> None:
    """Raise InputError unless ``image_size`` is a positive integer."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise InputError(f"image_size {image_size!r}: must be a positive integer.")


def preprocess_image(image: np.ndarray, image_size: int) -> np.ndarray:
    """Normalise a raw chip and resize it to the square network input.

    The resize is PIL's antialiased bilinear filter on float pixels (the filter
    torchvision's ``resize(..., antialias=True)`` reproduces), so this path needs
    neither torch nor torchvision.

    Args:
        image: ``[H, W]`` raw grey values (as from :func:`read_image`).
        image_size: Network input side S (pixels).

    Returns:
        uint8 ``[1, S, S]``; the network input is this divided by 255.

    Raises:
        InputError: ``image_size`` is not positive or ``image`` is not 2-D.
    """
    check_image_size(image_size)
    if np.ndim(image) != 2:
        raise InputError(f"image of shape {np.shape(image)}: expected a 2-D [H, W] array.")
    normalized = Image.fromarray(normalize_image(image))
    resized = np.asarray(
        normalized.resize((image_size, image_size), Image.Resampling.BILINEAR), dtype=np.float32
    )
    return np.round(np.clip(resized, 0.0, 1.0) * 255.0).astype(np.uint8)[None]


def load_image(path: str | os.PathLike[str], image_size: int) -> np.ndarray:
    """Read and preprocess a chip: :func:`read_image` then :func:`preprocess_image`.

    Args:
        path: Image file.
        image_size: Network input side S (pixels).

    Returns:
        uint8 ``[1, S, S]``.

    Raises:
        WakeModelError: The file is unreadable.
    """
    return preprocess_image(read_image(path), image_size)


ImageInput = Union[str, "os.PathLike[str]", np.ndarray]
"""One chip: a path to an image file, or a raw grey image array ``[H, W]``."""


def read_chip(item: ImageInput) -> tuple[str | None, np.ndarray]:
    """Read one chip as ``(source, raw grey image float32 [H, W])``.

    Args:
        item: A path to an image file, or a raw grey image array ``[H, W]``.

    Returns:
        The path's text (None for an array) and the grey pixels.

    Raises:
        InputError: The array is not 2-D.
        WakeModelError: The file is missing or unreadable.
    """
    if isinstance(item, np.ndarray):
        if item.ndim != 2 or min(item.shape) < 1:
            raise InputError(
                f"Image arrays must be 2-D grey [H, W], got shape {item.shape}; "
                "convert colour chips with wakemodel.preprocess.read_image."
            )
        return None, item.astype(np.float32, copy=False)
    path = Path(item)
    if not path.is_file():
        raise WakeModelError(f"Image not found: {path}; check the path.")
    return str(path), read_image(path)


def chip_label(item: ImageInput) -> str:
    """An input item as messages name it (its path, or ``<array>``)."""
    return "<array>" if isinstance(item, np.ndarray) else str(item)
