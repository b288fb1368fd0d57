"""Which files may georeference a chip, checked without rasterio or pyproj.

Inference asks :func:`georeference_hint` first and imports
:mod:`wakemodel.georef` (pyproj, rasterio) only for a chip that may be
georeferenced: a TIFF, or an image with a world file beside it.
"""

from __future__ import annotations

import os
from pathlib import Path

TIFF_SUFFIXES = (".tif", ".tiff")
"""Image suffixes read as GeoTIFF with rasterio."""

IN_MEMORY_REASON = "an in-memory array has no georeferencing."
"""Why a chip given as an array has no geo fields."""


def world_file_candidates(image_path: str | os.PathLike[str]) -> list[Path]:
    """World files that may georeference ``image_path``, in the order they are tried.

    For ``chip.png``: ``chip.pgw``, ``chip.pngw``, ``chip.wld``, ``chip.png.wld``
    (the first and last letters of the suffix plus ``w``, the suffix plus ``w``,
    then ``.wld``); for ``chip.tif`` the first one is ``chip.tfw``.

    Args:
        image_path: Image file.

    Returns:
        Candidate paths (existing or not).
    """
    path = Path(image_path)
    suffix = path.suffix.lower()
    names = [f"{suffix[:2]}{suffix[-1]}w", f"{suffix}w", ".wld"] if len(suffix) > 1 else [".wld"]
    candidates = [path.with_suffix(name) for name in dict.fromkeys(names)]
    return [*candidates, path.with_name(path.name + ".wld")]


def no_world_file_reason(image_path: str | os.PathLike[str]) -> str:
    """The one-line reason a non-TIFF image without a world file has no georeferencing."""
    path = Path(image_path)
    names = ", ".join(candidate.name for candidate in world_file_candidates(path))
    return f"{path.name}: not a GeoTIFF and no world file beside it ({names})."


def georeference_hint(image_path: str | os.PathLike[str] | None) -> str | None:
    """Say cheaply whether a chip may be georeferenced.

    Args:
        image_path: Image file, or None for an in-memory array.

    Returns:
        None when the chip may be georeferenced (a ``.tif``/``.tiff``, or a
        world file beside it; :mod:`wakemodel.georef` decides), else the one-line
        reason it is not (the same text :mod:`wakemodel.georef` gives).
    """
    if image_path is None:
        return IN_MEMORY_REASON
    path = Path(image_path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        return None
    if any(candidate.is_file() for candidate in world_file_candidates(path)):
        return None
    return no_world_file_reason(path)
