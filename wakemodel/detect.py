"""Vessel candidates in a scene: bright compact targets on water, by a CFAR test.

A cell-averaging CFAR (constant false-alarm rate) detector: a pixel is a
target when it exceeds the local sea by ``threshold_sigma`` standard deviations,
where the sea's mean and standard deviation come from a square ring around it
(a ``background_m`` window minus a ``guard_m`` window, so the target itself and
its wake's first metres do not count). The ring statistics are computed on
4 x 4 binned sums with :func:`scipy.ndimage.uniform_filter` (so a 10980 x 10980
band costs a few seconds) and compared with every full-resolution pixel. The
target pixels are grouped into 8-connected components (:func:`scipy.ndimage.label`);
a component is a candidate when its area and length fit a vessel
(``min_area_px``, ``max_area_m2``, ``max_length_m``: clouds, land and long
bright wake arms are larger) and it stands alone on the sea (the ring just
around it is not bright: ``max_surround_sigma``; the top of a cloud is).
Candidates closer than ``merge_m`` keep the strongest. The band is walked in blocks with a halo
(:meth:`wakemodel.scene.SceneBand.blocks`), so memory stays bounded.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from wakemodel.errors import InputError
from wakemodel.scene import SceneBand

logger = logging.getLogger(__name__)

__all__ = ["Candidates", "CfarSettings", "detect_candidates"]

BIN_PX = 4
"""Side (pixels) of the bins the background statistics are computed on."""


@dataclass(frozen=True)
class CfarSettings:
    """Detector settings, in metres where they depend on the pixel size.

    Attributes:
        threshold_sigma: Target pixels exceed the ring's mean by this many of
            its standard deviations.
        guard_m: Side of the window left out around the pixel (metres).
        background_m: Side of the window the ring is cut from (metres).
        min_area_px: Smallest component (pixels; 1-pixel hits are noise).
        max_area_m2: Largest component (square metres).
        max_length_m: Longest side of a component's bounding box (metres).
        merge_m: Candidates closer than this keep only the strongest (metres).
        max_surround_sigma: Largest mean excess (standard deviations) of the ring
            2-6 px around a target: a vessel is isolated on the sea, the bright
            top of a cloud or of land is not.
        block_px: Side of the blocks the band is read in (pixels).
    """

    threshold_sigma: float = 6.0
    guard_m: float = 400.0
    background_m: float = 1280.0
    min_area_px: int = 2
    max_area_m2: float = 40_000.0
    max_length_m: float = 400.0
    merge_m: float = 300.0
    max_surround_sigma: float = 3.0
    block_px: int = 2048

    def __post_init__(self) -> None:
        if not self.threshold_sigma > 0:
            raise InputError(f"threshold_sigma must be positive, got {self.threshold_sigma}.")
        if not 0 < self.guard_m < self.background_m:
            raise InputError(
                f"guard_m ({self.guard_m}) must be positive and below background_m "
                f"({self.background_m})."
            )
        if self.block_px < 64 or self.block_px % BIN_PX:
            raise InputError(
                f"block_px must be a multiple of {BIN_PX} from 64, got {self.block_px}."
            )


@dataclass(frozen=True)
class Candidates:
    """Detected targets, strongest first.

    Attributes:
        x_px: float64 ``[N]`` scene column of each target's brightness-weighted
            centre (continuous pixels).
        y_px: float64 ``[N]`` scene row of the centre.
        contrast_sigma: float64 ``[N]`` peak excess over the sea (standard deviations).
        area_px: int64 ``[N]`` pixels in the component.
    """

    x_px: np.ndarray
    y_px: np.ndarray
    contrast_sigma: np.ndarray
    area_px: np.ndarray

    def __len__(self) -> int:
        return len(self.x_px)


def _bins(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin count of valid pixels, sum and sum of squares ``[H/4, W/4]`` (float64)."""
    height, width = pixels.shape
    valid = np.isfinite(pixels)
    values = np.where(valid, pixels, np.float32(0.0))
    shape = (height // BIN_PX, BIN_PX, width // BIN_PX, BIN_PX)
    count = valid.reshape(shape).sum(axis=(1, 3), dtype=np.float64)
    total = values.reshape(shape).sum(axis=(1, 3), dtype=np.float64)
    squares = np.square(values).reshape(shape).sum(axis=(1, 3), dtype=np.float64)
    return count, total, squares


def _ring_statistics(
    pixels: np.ndarray, guard_bins: int, background_bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation ``[H/4, W/4]`` of the ring around each bin."""
    sums = []
    for stat in _bins(pixels):
        outer = ndimage.uniform_filter(stat, background_bins, mode="constant") * background_bins**2
        inner = ndimage.uniform_filter(stat, guard_bins, mode="constant") * guard_bins**2
        sums.append(outer - inner)
    count, total, squares = sums
    enough = count > 0.25 * (background_bins**2 - guard_bins**2) * BIN_PX**2
    safe_count = np.where(enough, count, 1.0)
    mean = total / safe_count
    std = np.sqrt(np.maximum(squares / safe_count - mean**2, 0.0))
    mean[~enough] = np.nan
    return mean.astype(np.float32), std.astype(np.float32)


def _odd(value: float) -> int:
    rounded = max(1, round(value))
    return rounded if rounded % 2 else rounded + 1


def _block_candidates(
    pixels: np.ndarray,
    core: tuple[int, int, int, int],
    offset: tuple[int, int],
    settings: CfarSettings,
    pixel_m: float,
) -> list[tuple[float, float, float, int]]:
    """``(x, y, contrast_sigma, area_px)`` of the components centred in a block's core."""
    guard_bins = _odd(settings.guard_m / pixel_m / BIN_PX)
    background_bins = _odd(max(settings.background_m / pixel_m / BIN_PX, guard_bins + 2))
    mean, std = _ring_statistics(pixels, guard_bins, background_bins)
    std = np.maximum(std, np.float32(1e-6))
    threshold = mean + np.float32(settings.threshold_sigma) * std
    height, width = pixels.shape
    binned = pixels.reshape(height // BIN_PX, BIN_PX, width // BIN_PX, BIN_PX)
    with np.errstate(invalid="ignore"):
        hits = (binned > threshold[:, None, :, None]).reshape(height, width)
    if not hits.any():
        return []
    labels, _ = ndimage.label(hits, structure=np.ones((3, 3), bool))
    max_area_px = settings.max_area_m2 / pixel_m**2
    max_length_px = settings.max_length_m / pixel_m
    found = []
    col_off, row_off = offset
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        rows, cols = box
        if max(rows.stop - rows.start, cols.stop - cols.start) > max_length_px:
            continue
        member = labels[box] == index
        area = int(member.sum())
        if area < settings.min_area_px or area > max_area_px:
            continue
        patch = pixels[box]
        bin_rows = np.arange(rows.start, rows.stop) // BIN_PX
        bin_cols = np.arange(cols.start, cols.stop) // BIN_PX
        local_mean = mean[np.ix_(bin_rows, bin_cols)]
        local_std = std[np.ix_(bin_rows, bin_cols)]
        excess = np.where(member, (patch - local_mean) / local_std, 0.0)
        weights = np.maximum(excess, 0.0)
        grid_y, grid_x = np.nonzero(member)
        total = float(weights[grid_y, grid_x].sum())
        x = cols.start + float((weights[grid_y, grid_x] * (grid_x + 0.5)).sum()) / total
        y = rows.start + float((weights[grid_y, grid_x] * (grid_y + 0.5)).sum()) / total
        radius = 0.5 * max(rows.stop - rows.start, cols.stop - cols.start)
        surround = _surround_sigma(pixels, labels != 0, x, y, radius, mean, std)
        if surround > settings.max_surround_sigma:
            continue
        x, y = x + col_off, y + row_off
        col0, row0, col1, row1 = core
        if col0 <= x < col1 and row0 <= y < row1:
            found.append((x, y, float(excess.max()), area))
    return found


def _surround_sigma(
    pixels: np.ndarray,
    targets: np.ndarray,
    x: float,
    y: float,
    radius: float,
    mean: np.ndarray,
    std: np.ndarray,
) -> float:
    """Mean excess (ring standard deviations) of the pixels 2 to 6 px beyond a target.

    An isolated vessel sits on open sea (about 0); the top of a cloud or of land
    that crossed the threshold sits on its own bright flanks.
    """
    inner, outer = radius + 2.0, radius + 6.0
    height, width = pixels.shape
    top, bottom = max(0, int(y - outer)), min(height, int(y + outer) + 1)
    left, right = max(0, int(x - outer)), min(width, int(x + outer) + 1)
    rows = np.arange(top, bottom)[:, None] + 0.5
    cols = np.arange(left, right)[None, :] + 0.5
    distance = np.hypot(cols - x, rows - y)
    patch = pixels[top:bottom, left:right]
    ring = (distance >= inner) & (distance <= outer) & ~targets[top:bottom, left:right]
    ring &= np.isfinite(patch)
    if not ring.any():
        return 0.0
    row, col = min(int(y) // BIN_PX, mean.shape[0] - 1), min(int(x) // BIN_PX, mean.shape[1] - 1)
    return float((patch[ring].mean() - mean[row, col]) / std[row, col])


def _merge(found: list[tuple[float, float, float, int]], merge_px: float) -> Candidates:
    """Keep the strongest of candidates closer than ``merge_px`` (greedy, strongest first)."""
    if not found:
        empty = np.zeros(0)
        return Candidates(empty, empty.copy(), empty.copy(), np.zeros(0, np.int64))
    table = np.array(found, dtype=np.float64)
    table = table[np.argsort(-table[:, 2], kind="stable")]
    tree = cKDTree(table[:, :2])
    keep = np.ones(len(table), bool)
    for index in range(len(table)):
        if keep[index]:
            for other in tree.query_ball_point(table[index, :2], merge_px):
                if other > index:
                    keep[other] = False
    table = table[keep]
    return Candidates(table[:, 0], table[:, 1], table[:, 2], table[:, 3].astype(np.int64))


def detect_candidates(
    scene: SceneBand,
    settings: CfarSettings | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Candidates:
    """Find bright compact targets on the sea of a whole band.

    Args:
        scene: The opened band.
        settings: Detector settings (defaults: :class:`CfarSettings`).
        progress: Called as ``progress(done, total)`` after each block.

    Returns:
        The candidates, strongest first.
    """
    settings = settings or CfarSettings()
    pixel_m = scene.pixel_size_m
    halo_px = BIN_PX * math.ceil(settings.background_m / pixel_m / BIN_PX / 2 + 1)
    block_px = settings.block_px
    total = math.ceil(scene.width / block_px) * math.ceil(scene.height / block_px)
    found: list[tuple[float, float, float, int]] = []
    for done, block in enumerate(scene.blocks(block_px, halo_px), start=1):
        found.extend(
            _block_candidates(
                block.pixels, block.core, (block.col_off, block.row_off), settings, pixel_m
            )
        )
        if progress is not None:
            progress(done, total)
    candidates = _merge(found, settings.merge_m / pixel_m)
    logger.info("CFAR: %d candidates (%d components before merging)", len(candidates), len(found))
    return candidates
