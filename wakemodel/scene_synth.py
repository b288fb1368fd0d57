"""Synthetic Sentinel-2 scenes: a georeferenced band with wakes at known places (``synth --scene``).

:func:`write_synthetic_scene` writes an L2A-like B08 band: a uint16 GeoTIFF
(tiled, deflate) in a North Sea UTM zone at 10 m, with digital numbers
``10000 * reflectance + 1000`` (processing baseline 04.00; the file's tags
``BOA_ADD_OFFSET=-1000`` and ``QUANTIFICATION_VALUE=10000`` say so, nodata 0). It
holds:

- the sea: a periodic multi-scale texture with swell, a slowly varying sun-glint
  field and sensor noise (the noise standard deviation is :data:`NOISE_DN`);
- N wakes drawn exactly like those of training chips of ``chip_px`` pixels
  (:mod:`wakemodel.synthetic`: lengths, kinds and contrasts), each with its
  vessel at a known pixel;
- clutter that is not a wake: bright platforms (compact, no wake), small cumulus
  puffs and single hot pixels;
- a nodata corner (as at a swath edge).

The scene is written in strips of :data:`STRIP_ROWS` rows, so memory stays
bounded whatever its size. Beside it go the truth (``OUT.csv``:
``id,lat,lon,x,y,heading_deg,wake_length_m``, the heading from true north and the
vertex at the vessel's pixel) and the same as GeoJSON (``OUT.geojson``).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from wakemodel import geojson
from wakemodel._io import atomic_path, atomic_write_text
from wakemodel.errors import InputError
from wakemodel.georef import GeoReference, north_sea_transform
from wakemodel.synthetic import (
    _annotation_heading_deg,
    _draw_wake,
    _layout,
    _spectral_field,
    _WakeLayout,
    _window,
)

logger = logging.getLogger(__name__)

__all__ = ["TRUTH_COLUMNS", "SceneWake", "write_synthetic_scene"]

S2_TILE_PX = 10980
"""Side of a Sentinel-2 tile at 10 m (pixels)."""
DEFAULT_CHIP_PX = 550
"""Window side the wakes are sized for: the median side of the default synthetic
training chips (``synth --min-size 200 --max-size 900``), 5.5 km at 10 m."""
STRIP_ROWS = 512
"""Rows written at a time (the GeoTIFF's tile height)."""
NOISE_DN = 12.0
"""Standard deviation of the sensor noise (digital numbers); the unit of the drawing."""
SEA_DN = 1200.0
"""Mean sea level: reflectance 0.02 plus the 1000 offset."""
TEXTURE_PX = 1024
"""Period of the sea texture (pixels)."""
TRUTH_COLUMNS = ("id", "lat", "lon", "x", "y", "heading_deg", "wake_length_m")
"""Columns of the truth CSV."""


@dataclass(frozen=True)
class SceneWake:
    """One wake of a synthetic scene and its truth.

    Attributes:
        id: ``wake_000``...
        x_px: Scene column of the vessel (continuous pixels).
        y_px: Scene row of the vessel.
        ends_px: ``[K-1, 2]`` annotated far ends (scene pixels).
        heading_deg: True heading (degrees from true north, [0, 360)), from
            the mean far end to the vessel (the project's annotation heading).
        wake_length_m: Vessel to mean far end on the ellipsoid (metres).
        lat: Vessel latitude (degrees).
        lon: Vessel longitude (degrees).
    """

    id: str
    x_px: float
    y_px: float
    ends_px: np.ndarray
    heading_deg: float
    wake_length_m: float
    lat: float
    lon: float


@dataclass(frozen=True)
class _Drawn:
    """A wake to draw: geometry, its own random stream and its pixel box."""

    layout: _WakeLayout
    seed: int
    rows: tuple[int, int]
    cols: tuple[int, int]


@dataclass(frozen=True)
class _Blob:
    """A Gaussian clutter blob (noise-sigma units)."""

    x: float
    y: float
    sigma_px: float
    amplitude: float

    def box(self, size: int) -> tuple[int, int, int, int]:
        reach = 4.0 * self.sigma_px + 1.0
        return (
            max(0, math.floor(self.y - reach)),
            min(size, math.ceil(self.y + reach)),
            max(0, math.floor(self.x - reach)),
            min(size, math.ceil(self.x + reach)),
        )


def _place(
    rng: np.random.Generator, count: int, size: int, keep_out: float, margin: float
) -> np.ndarray:
    """``[count, 2]`` vessel positions, one per grid cell, clear of the nodata corner."""
    per_side = math.ceil(math.sqrt(count))
    cell = size / per_side
    inset = min(margin, 0.3 * cell)
    positions = []
    for index in range(count):
        row, col = divmod(index, per_side)
        for _ in range(100):
            x = float(rng.uniform(col * cell + inset, (col + 1) * cell - inset))
            y = float(rng.uniform(row * cell + inset, (row + 1) * cell - inset))
            if x + y > keep_out:
                break
        positions.append((x, y))
    return np.array(positions)


def _clutter(
    rng: np.random.Generator, count: int, size: int, vessels: np.ndarray, clear_px: float
) -> list[_Blob]:
    """Platforms (compact, bright), cumulus puffs and hot pixels away from the vessels."""
    blobs: list[_Blob] = []
    kinds = (
        [("platform", 1.0, 1.3, 25.0, 40.0)] * max(1, count // 10)
        + [("cloud", 18.0, 45.0, 8.0, 25.0)] * max(1, count // 3)
        + [("hot", 0.2, 0.25, 60.0, 90.0)] * max(1, count)
    )
    for _, sigma_low, sigma_high, amp_low, amp_high in kinds:
        for _ in range(100):
            x, y = rng.uniform(0.0, size, size=2)
            if len(vessels) == 0 or np.hypot(*(vessels - (x, y)).T).min() > clear_px:
                break
        blobs.append(
            _Blob(
                float(x),
                float(y),
                float(rng.uniform(sigma_low, sigma_high)),
                float(rng.uniform(amp_low, amp_high)),
            )
        )
    return blobs


def _low_frequency(rng: np.random.Generator, size: int, spacing_px: int) -> np.ndarray:
    """Coarse ``[n, n]`` random grid of the glint field (noise-sigma units)."""
    nodes = size // spacing_px + 2
    return rng.normal(0.0, 1.5, size=(nodes, nodes)).astype(np.float32)


def _interpolation_matrix(start: int, stop: int, spacing_px: int, nodes: int) -> np.ndarray:
    """``[stop - start, nodes]`` bilinear weights of pixel centres on a node grid."""
    position = (np.arange(start, stop) + 0.5) / spacing_px
    lower = np.clip(np.floor(position).astype(int), 0, nodes - 2)
    weight = (position - lower).astype(np.float32)
    matrix = np.zeros((stop - start, nodes), np.float32)
    rows = np.arange(stop - start)
    matrix[rows, lower] = 1.0 - weight
    matrix[rows, lower + 1] = weight
    return matrix


def _strip(
    row0: int,
    row1: int,
    size: int,
    seed: int,
    texture: np.ndarray,
    glint: np.ndarray,
    wakes: list[_Drawn],
    blobs: list[_Blob],
    nodata_corner: float,
) -> np.ndarray:
    """Rows ``[row0, row1)`` of the scene as uint16 digital numbers."""
    spacing = TEXTURE_PX
    columns = np.arange(size) % TEXTURE_PX
    image = texture[np.ix_(np.arange(row0, row1) % TEXTURE_PX, columns)]
    image += (
        _interpolation_matrix(row0, row1, spacing, len(glint))
        @ glint
        @ _interpolation_matrix(0, size, spacing, len(glint)).T
    )
    image += np.random.default_rng([seed, 1, row0]).standard_normal(image.shape, np.float32)
    for drawn in wakes:
        vertex_x, vertex_y = drawn.layout.vertex
        top, bottom = max(drawn.rows[0], row0), min(drawn.rows[1], row1)
        left, right = drawn.cols
        if top >= bottom:
            continue
        rel_x = (np.arange(left, right, dtype=np.float32) + 0.5 - np.float32(vertex_x))[None]
        rel_y = (np.arange(top, bottom, dtype=np.float32) + 0.5 - np.float32(vertex_y))[:, None]
        signal, _ = _draw_wake(np.random.default_rng(drawn.seed), drawn.layout, rel_x, rel_y)
        image[top - row0 : bottom - row0, left:right] += signal
    for blob in blobs:
        top, bottom, left, right = blob.box(size)
        top, bottom = max(top, row0), min(bottom, row1)
        if top >= bottom:
            continue
        dx = np.arange(left, right, dtype=np.float32) + 0.5 - np.float32(blob.x)
        dy = np.arange(top, bottom, dtype=np.float32) + 0.5 - np.float32(blob.y)
        image[top - row0 : bottom - row0, left:right] += np.float32(blob.amplitude) * np.exp(
            -0.5 * (dy[:, None] ** 2 + dx[None] ** 2) / np.float32(blob.sigma_px**2)
        )
    dn = np.clip(np.rint(SEA_DN + NOISE_DN * image), 1, 65535).astype(np.uint16)
    corner = (np.arange(row0, row1)[:, None] + 0.5) + (np.arange(size)[None] + 0.5)
    dn[corner < nodata_corner] = 0
    return dn


def _truth(georef: GeoReference, vessels: np.ndarray, wakes: list[_Drawn]) -> list[SceneWake]:
    """The wakes' true headings, positions and lengths on the Earth."""
    truth = []
    for index, ((x, y), drawn) in enumerate(zip(vessels, wakes, strict=True)):
        ends = np.array([x, y]) + drawn.layout.annotated
        keypoints = np.vstack([[x, y], ends])
        image_heading = _annotation_heading_deg(keypoints)
        far_x, far_y = ends.mean(axis=0)
        lon, lat = georef.pixel_to_lonlat(x, y)
        truth.append(
            SceneWake(
                id=f"wake_{index:03d}",
                x_px=float(x),
                y_px=float(y),
                ends_px=ends,
                heading_deg=float(georef.true_bearing_deg(x, y, image_heading)),
                wake_length_m=float(georef.ground_distance_m(far_x, far_y, x, y)),
                lat=float(lat),
                lon=float(lon),
            )
        )
    return truth


def _write_truth(path: Path, truth: list[SceneWake], scene_name: str) -> None:
    """``OUT.csv`` and ``OUT.geojson`` beside the scene."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(TRUTH_COLUMNS)
    for wake in truth:
        writer.writerow(
            [
                wake.id,
                f"{wake.lat:.7f}",
                f"{wake.lon:.7f}",
                f"{wake.x_px:.2f}",
                f"{wake.y_px:.2f}",
                f"{wake.heading_deg:.2f}",
                f"{wake.wake_length_m:.1f}",
            ]
        )
    atomic_write_text(path.with_suffix(".csv"), buffer.getvalue())
    features = [
        geojson.point(
            wake.lon,
            wake.lat,
            {
                "id": wake.id,
                "x": round(wake.x_px, 2),
                "y": round(wake.y_px, 2),
                "heading_deg": round(wake.heading_deg, 2),
                "wake_length_m": round(wake.wake_length_m, 1),
            },
        )
        for wake in truth
    ]
    geojson.write_geojson(
        path.with_suffix(".geojson"), geojson.feature_collection(features, scene=scene_name)
    )


def write_synthetic_scene(
    path: str | os.PathLike[str],
    wakes: int = 100,
    *,
    size: int = S2_TILE_PX,
    seed: int = 0,
    chip_px: int = DEFAULT_CHIP_PX,
    progress: Callable[[int, int], None] | None = None,
) -> list[SceneWake]:
    """Write a synthetic georeferenced B08 scene with wakes, and its truth beside it.

    Args:
        path: Output GeoTIFF (``.tif``); ``.csv`` and ``.geojson`` of the same
            name are written beside it. All three are written atomically.
        wakes: Number of wakes (one per cell of a square grid).
        size: Scene side (pixels; a Sentinel-2 tile is 10980).
        seed: Random seed (same seed and size: the same scene).
        chip_px: Side of the training chip each wake is drawn for (pixels): the
            wake fits in a ``chip_px`` square, as in a chip.
        progress: Called as ``progress(rows_done, rows_total)`` after each strip.

    Returns:
        The wakes with their truth, in id order.

    Raises:
        InputError: ``size`` below 256 px, a negative ``wakes``, ``chip_px``
            below 64, or a path not ending in ``.tif``/``.tiff``.
    """
    import rasterio

    out = Path(path)
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise InputError(f"--scene {out}: the file name must end in .tif.")
    if size < 256:
        raise InputError(f"--size {size}: a scene needs at least 256 pixels a side.")
    if wakes < 0:
        raise InputError(f"--wakes {wakes}: give 0 or more wakes.")
    if chip_px < 64:
        raise InputError(f"chip_px {chip_px}: use at least 64 pixels.")
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    transform, crs = north_sea_transform(rng)
    georef = GeoReference(transform, crs, size, size, str(out))
    nodata_corner = 0.08 * size
    vessels = _place(rng, wakes, size, nodata_corner + chip_px, margin=0.5 * chip_px)
    drawn: list[_Drawn] = []
    for vessel in vessels:
        course_deg = float(rng.uniform(0.0, 360.0))
        layout = replace(_layout(rng, chip_px, chip_px, course_deg), vertex=vessel)
        rows, cols = _window(layout, size, size)
        drawn.append(
            _Drawn(
                layout, int(rng.integers(2**63)), (rows.start, rows.stop), (cols.start, cols.stop)
            )
        )
    blobs = _clutter(rng, wakes, size, vessels, clear_px=0.6 * chip_px)
    swell = (float(rng.uniform(8.0, 20.0)), float(rng.uniform(0.0, 360.0)), 0.06)
    texture = np.float32(0.7) * _spectral_field(rng, TEXTURE_PX, TEXTURE_PX, 2.2, swell)
    glint = _low_frequency(rng, size, TEXTURE_PX)
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 1,
        "dtype": "uint16",
        "crs": crs.to_wkt(),
        "transform": transform,
        "nodata": 0,
        "tiled": True,
        "blockxsize": STRIP_ROWS,
        "blockysize": STRIP_ROWS,
        "compress": "deflate",
        "predictor": 2,
        "BIGTIFF": "IF_SAFER",
    }
    from rasterio.windows import Window

    with atomic_path(out) as tmp, rasterio.open(tmp, "w", **profile) as dataset:
        dataset.update_tags(
            BOA_ADD_OFFSET="-1000",
            QUANTIFICATION_VALUE="10000",
            BAND="B08",
            SYNTHETIC=f"wakemodel synth --scene --wakes {wakes} --size {size} --seed {seed}",
        )
        for row0 in range(0, size, STRIP_ROWS):
            row1 = min(row0 + STRIP_ROWS, size)
            dn = _strip(row0, row1, size, seed, texture, glint, drawn, blobs, nodata_corner)
            dataset.write(dn, 1, window=Window(0, row0, size, row1 - row0))
            if progress is not None:
                progress(row1, size)
    truth = _truth(georef, vessels, drawn)
    _write_truth(out, truth, out.name)
    logger.info("Wrote %s: %d wakes, %d clutter targets", out, wakes, len(blobs))
    return truth
