"""Synthetic Sentinel-2 ship-wake chips in the layout of the real dataset.

The generator draws 8-bit grayscale chips that look like stretched Sentinel-2
visible-band chips at 10 m/px: a multi-scale sea-surface texture with swell, a
sun-glint gradient, occasional clouds and sensor noise; a bright vessel at the
wake vertex; the two Kelvin arms at the cusp half-angle of 19.47 degrees fading
with distance; and a dark or bright turbulent centre wake. It writes::

    OUT_DIR/imgs/synth_000000.png           8-bit grayscale, no metadata
    OUT_DIR/annotations/synth_000000.json   {"tooltips": [{"x": .., "y": ..}, ...]}

or, with ``geotiff=True``, ``imgs/synth_000000.tif``: the same pixels as a
GeoTIFF in a North Sea UTM zone with 10 m pixels.

Keypoint 0 is the vertex (the vessel pixel); the others are where the visible
wake components end. About 80% of chips have both Kelvin arms (3 keypoints); the
rest have 2 keypoints: one arm is missing (too faint, not drawn) and the other
arm's end is annotated, or both arms are missing and the turbulent wake's end is
annotated. Coordinates are continuous pixels (pixel ``(i, j)`` covers
``[i, i+1) x [j, j+1)``), written with 2 decimals.

Chip ``i`` of a dataset is drawn from its own generator, spawned from
``SeedSequence(seed)``, so it does not depend on the dataset size, and the same
seed gives byte-identical files.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from wakemodel.errors import InputError, WakeModelError
from wakemodel.keypoints import NUM_KEYPOINTS, heading_deg

logger = logging.getLogger(__name__)

KELVIN_HALF_ANGLE_DEG = math.degrees(math.asin(1.0 / 3.0))
"""Half-angle of the Kelvin wake cusp (about 19.47 degrees)."""

TWO_POINT_FRACTION = 0.2
"""Share of chips with only 2 annotated keypoints."""

CLOUD_FRACTION = 0.2
"""Share of chips with cloud patches."""


@dataclass(frozen=True, eq=False)
class SyntheticChip:
    """One rendered chip and its annotation.

    Attributes:
        image: uint8 ``[H, W]`` grayscale chip.
        keypoints_px: float32 ``[K, 2]`` (x, y) continuous pixel coordinates,
            K = 2 or 3, vertex first, then the far ends of the visible wake
            components (arm order meaningless).
        heading_deg: Compass bearing in [0, 360) degrees (north = image up,
            clockwise) from the mean far end towards the vertex, as the project
            defines the heading of an annotation. Equal (within about 1 degree)
            to ``course_deg`` except for ``single_arm`` chips, where the lone far
            end is an arm end and the two differ by about the cusp half-angle.
        course_deg: Compass bearing in [0, 360) degrees of the vessel's travel.
        wake_kind: ``"kelvin"`` (both arms annotated), ``"single_arm"`` (one arm
            annotated) or ``"turbulent"`` (the turbulent wake's end annotated).
    """

    image: np.ndarray
    keypoints_px: np.ndarray
    heading_deg: float
    course_deg: float
    wake_kind: str

    @property
    def tooltips(self) -> list[dict[str, float]]:
        """The annotation in the dataset's JSON schema (pixels, 2 decimals)."""
        return [{"x": round(float(x), 2), "y": round(float(y), 2)} for x, y in self.keypoints_px]


def _unit(bearing_deg: float) -> np.ndarray:
    """Image-plane unit vector ``[2]`` (x right, y down) of a compass bearing (degrees)."""
    angle = math.radians(bearing_deg)
    return np.array([math.sin(angle), -math.cos(angle)])


def _annotation_heading_deg(keypoints_px: np.ndarray) -> float:
    """Compass bearing (degrees) from the mean far end to the vertex of ``[K, 2]`` keypoints."""
    points = np.zeros((NUM_KEYPOINTS, 2))
    points[: len(keypoints_px)] = keypoints_px
    return float(heading_deg(points, np.arange(NUM_KEYPOINTS) < len(keypoints_px)))


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * values))


def _spectral_field(
    rng: np.random.Generator,
    height: int,
    width: int,
    slope: float,
    swell: tuple[float, float, float] | None = None,
) -> np.ndarray:
    """Random field with a power-law spectrum, optionally plus a directional swell band.

    Args:
        rng: Random generator.
        height: Rows (pixels).
        width: Columns (pixels).
        slope: Power-spectrum exponent beta (power ~ f^-beta); larger is smoother.
        swell: Optional (wavelength_px, direction_deg, relative_power) of a
            narrow band of parallel waves.

    Returns:
        float32 ``[H, W]`` with zero mean and unit standard deviation.
    """
    fy = np.fft.fftfreq(height).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(width).astype(np.float32)[None, :]
    radius = np.hypot(fx, fy)
    radius[0, 0] = 1.0
    amplitude = radius ** (-slope / 2.0)
    amplitude[0, 0] = 0.0
    amplitude /= math.sqrt(float(np.sum(amplitude**2)))
    if swell is not None:
        wavelength_px, direction_deg, power = swell
        kx, ky = _unit(direction_deg) / wavelength_px
        spread_sq = 2.0 * (0.3 / wavelength_px) ** 2
        band = np.exp(-((fx - kx) ** 2 + (fy - ky) ** 2) / spread_sq) + np.exp(
            -((fx + kx) ** 2 + (fy + ky) ** 2) / spread_sq
        )
        band /= math.sqrt(float(np.sum(band**2))) or 1.0
        amplitude = amplitude + math.sqrt(power) * band
    spectrum = amplitude * (
        rng.standard_normal(amplitude.shape, dtype=np.float32)
        + np.complex64(1j) * rng.standard_normal(amplitude.shape, dtype=np.float32)
    )
    field = np.fft.irfft2(spectrum, s=(height, width))
    field -= field.mean()
    return (field / (field.std() or 1.0)).astype(np.float32)


def _segment_distance(rel_x: np.ndarray, rel_y: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Distance (pixels) ``[H, W]`` from each pixel to the nearest vertex-to-end segment.

    Args:
        rel_x: ``[1, W]`` pixel-centre x minus vertex x.
        rel_y: ``[H, 1]`` pixel-centre y minus vertex y.
        offsets: ``[N, 2]`` segment ends relative to the vertex.
    """
    distance = np.full(np.broadcast_shapes(rel_x.shape, rel_y.shape), np.inf, np.float32)
    for end_x, end_y in offsets:
        length_sq = max(end_x**2 + end_y**2, 1e-6)
        t = np.clip((rel_x * end_x + rel_y * end_y) / length_sq, 0.0, 1.0)
        np.minimum(distance, np.hypot(rel_x - t * end_x, rel_y - t * end_y), out=distance)
    return distance


def _fit_offsets(offsets: np.ndarray, width: int, height: int, margin: float) -> float:
    """Largest scale <= 1 that fits the points ``[N, 2]`` and the origin inside the margins."""
    spans = np.maximum(offsets.max(axis=0), 0.0) - np.minimum(offsets.min(axis=0), 0.0)
    room = np.array([width, height]) - 2.0 * margin
    return float(min(1.0, *(room / np.maximum(spans, 1e-6))))


@dataclass(frozen=True, eq=False)
class _WakeLayout:
    """Where the wake lies in a chip (pixels; offsets are relative to the vertex)."""

    vertex: np.ndarray  # [2] continuous pixel coordinates of the vessel
    backward: np.ndarray  # [2] unit vector opposite to the course
    arm_dirs: np.ndarray  # [2, 2] unit vectors of the Kelvin arms
    arm_lengths: np.ndarray  # [2] pixels
    arm_drawn: np.ndarray  # bool [2]
    turbulent_px: float  # length of the turbulent wake
    annotated: np.ndarray  # [K-1, 2] offsets of the annotated far ends
    wake_kind: str

    @property
    def drawn_offsets(self) -> np.ndarray:
        """``[N, 2]`` offsets of the ends of every drawn wake component."""
        arm_offsets = self.arm_dirs * self.arm_lengths[:, None]
        return np.vstack([arm_offsets[self.arm_drawn], self.backward * self.turbulent_px])


def _layout(rng: np.random.Generator, width: int, height: int, course_deg: float) -> _WakeLayout:
    """Draw the wake kind and lengths and place the vertex so every end fits inside the chip."""
    backward = -_unit(course_deg)
    half_angle = KELVIN_HALF_ANGLE_DEG
    arm_dirs = np.stack(
        [_unit(course_deg + 180.0 + half_angle), _unit(course_deg + 180.0 - half_angle)]
    )
    if rng.random() < TWO_POINT_FRACTION:
        wake_kind = "single_arm" if rng.random() < 0.5 else "turbulent"
    else:
        wake_kind = "kelvin"
    length_px = float(rng.uniform(0.25, 0.6)) * math.hypot(width, height)
    # Arms differ by up to 8%, which moves the mean far end off the track by under 1.5 degrees.
    arm_lengths = length_px * rng.uniform(0.92, 1.08, size=2)
    on_track = length_px * math.cos(math.radians(half_angle))
    if wake_kind == "kelvin":
        arm_drawn = np.array([True, True])
        turbulent_px = on_track * float(rng.uniform(0.3, 1.0))
    elif wake_kind == "single_arm":
        arm_drawn = np.arange(2) == rng.integers(2)
        turbulent_px = on_track * float(rng.uniform(0.2, 0.8))
    else:
        arm_drawn = np.array([False, False])
        turbulent_px = length_px
    arm_offsets = arm_dirs * arm_lengths[:, None]
    annotated = arm_offsets[arm_drawn] if arm_drawn.any() else (backward * turbulent_px)[None]

    margin = max(4.0, 0.04 * min(width, height))
    scale = _fit_offsets(np.vstack([annotated, backward * turbulent_px]), width, height, margin)
    annotated = annotated * scale
    low = margin - np.minimum(annotated.min(axis=0), 0.0)
    high = np.array([width, height]) - margin - np.maximum(annotated.max(axis=0), 0.0)
    vertex = rng.uniform(low, np.maximum(high, low))
    return _WakeLayout(
        vertex,
        backward,
        arm_dirs,
        arm_lengths * scale,
        arm_drawn,
        turbulent_px * scale,
        annotated,
        wake_kind,
    )


def _draw_wake(
    rng: np.random.Generator, layout: _WakeLayout, rel_x: np.ndarray, rel_y: np.ndarray
) -> tuple[np.ndarray, float]:
    """Draw the Kelvin arms, the turbulent wake and the vessel (noise-sigma units).

    Args:
        rng: Random generator.
        layout: Wake geometry.
        rel_x: ``[1, W']`` pixel-centre x minus vertex x (pixels) of the window drawn.
        rel_y: ``[H', 1]`` pixel-centre y minus vertex y (pixels) of the window drawn.

    Returns:
        float32 ``[H', W']`` wake signal and the vessel's peak amplitude.
    """
    backward = layout.backward
    along_back = rel_x * np.float32(backward[0]) + rel_y * np.float32(backward[1])
    across = rel_x * np.float32(-backward[1]) + rel_y * np.float32(backward[0])
    wake = np.zeros(along_back.shape, np.float32)
    # Kelvin arms: thin bright (sometimes dark) lines fading with distance, modulated by the
    # transverse waves that cross them.
    # A lone annotated arm is always bright and clear; a pair is occasionally dark.
    if layout.wake_kind == "single_arm":
        arm_amplitude = float(rng.uniform(1.8, 3.0))
    else:
        arm_amplitude = float(rng.uniform(1.2, 3.0)) * (1.0 if rng.random() < 0.85 else -1.0)
    arm_fade = float(rng.uniform(0.2, 0.55))
    arm_width0 = float(rng.uniform(0.8, 1.8))
    arm_spread = float(rng.uniform(0.003, 0.012))
    crest_px = float(rng.uniform(4.0, 12.0))
    crest_depth = float(rng.uniform(0.0, 0.6))
    crest_phase = float(rng.uniform(0.0, 2.0 * math.pi))
    if layout.arm_drawn.any():
        crests = 1.0 + np.float32(crest_depth) * np.cos(
            np.float32(2.0 * math.pi / crest_px) * along_back + np.float32(crest_phase)
        )
    for drawn, direction, arm_length in zip(
        layout.arm_drawn, layout.arm_dirs, layout.arm_lengths, strict=True
    ):
        if not drawn:
            continue
        along = rel_x * np.float32(direction[0]) + rel_y * np.float32(direction[1])
        off = rel_x * np.float32(-direction[1]) + rel_y * np.float32(direction[0])
        sigma = arm_width0 + np.float32(arm_spread) * np.maximum(along, 0.0)
        fade = (1.0 - np.float32(arm_fade / arm_length) * np.clip(along, 0.0, arm_length)) * (
            _sigmoid((np.float32(arm_length) - along) / np.float32(1.2))
            * _sigmoid(along / np.float32(1.5))
        )
        wake += np.float32(arm_amplitude) * np.exp(-0.5 * (off / sigma) ** 2) * fade * crests
    # Turbulent wake: a wider dark (or bright) band along the track.
    turbulent_px = layout.turbulent_px
    # When the turbulent wake is the only annotated component it must stand out.
    strongest = 3.5 if layout.wake_kind == "turbulent" else 2.5
    turbulent_amplitude = float(rng.uniform(strongest - 1.5, strongest)) * (
        -1.0 if rng.random() < 0.6 else 1.0
    )
    turbulent_width = float(rng.uniform(1.5, 4.0)) + np.float32(
        rng.uniform(0.01, 0.05)
    ) * np.maximum(along_back, 0.0)
    turbulent_fade = float(rng.uniform(0.3, 0.7))
    wake += (
        np.float32(turbulent_amplitude)
        * np.exp(-0.5 * (across / turbulent_width) ** 2)
        * (
            (
                1.0
                - np.float32(turbulent_fade / turbulent_px) * np.clip(along_back, 0.0, turbulent_px)
            )
            * _sigmoid((np.float32(turbulent_px) - along_back) / np.float32(1.5))
            * _sigmoid(along_back / np.float32(1.5))
        )
    )
    # The vessel: a small blob elongated along the track, brighter than anything around it.
    vessel_length = float(rng.uniform(1.0, 2.0))
    vessel_width = float(rng.uniform(0.7, 1.2))
    vessel_amplitude = 2.0 * (abs(arm_amplitude) + abs(turbulent_amplitude)) + float(
        rng.uniform(5.0, 9.0)
    )
    wake += np.float32(vessel_amplitude) * np.exp(
        -0.5
        * ((along_back / np.float32(vessel_length)) ** 2 + (across / np.float32(vessel_width)) ** 2)
    )
    return wake, vessel_amplitude


def _window(layout: _WakeLayout, width: int, height: int) -> tuple[slice, slice]:
    """Row and column slices of the chip that hold the visible wake (with a margin)."""
    offsets = np.vstack([np.zeros(2), layout.drawn_offsets])
    longest = float(np.hypot(*offsets.T).max())
    pad = 12.0 + 4.0 * (4.0 + 0.05 * longest)
    low = np.floor(layout.vertex + offsets.min(axis=0) - pad).astype(int).clip(0)
    high = np.ceil(layout.vertex + offsets.max(axis=0) + pad).astype(int)
    return slice(low[1], min(high[1], height)), slice(low[0], min(high[0], width))


def render_chip(rng: np.random.Generator, width: int, height: int) -> SyntheticChip:
    """Render one synthetic Sentinel-2 wake chip.

    Args:
        rng: Random generator; the chip is a pure function of its state.
        width: Chip width (pixels, at least 32).
        height: Chip height (pixels, at least 32).

    Returns:
        The chip with its annotation; all keypoints lie inside the chip, the
        vertex at least ``max(4, 4% of the short side)`` pixels from the border.

    Raises:
        InputError: ``width`` or ``height`` is below 32 pixels.
    """
    if min(width, height) < 32:
        raise InputError(f"Chip size {width}x{height} is too small; use at least 32x32 pixels.")
    course_deg = float(rng.uniform(0.0, 360.0))
    layout = _layout(rng, width, height, course_deg)
    vertex = layout.vertex
    rel_x = (np.arange(width, dtype=np.float32) + 0.5 - np.float32(vertex[0]))[None, :]
    rel_y = (np.arange(height, dtype=np.float32) + 0.5 - np.float32(vertex[1]))[:, None]
    rows, cols = _window(layout, width, height)
    wake, vessel_amplitude = _draw_wake(rng, layout, rel_x[:, cols], rel_y[rows])

    diagonal = math.hypot(width, height)
    swell = (
        float(rng.uniform(6.0, 25.0)),
        float(rng.uniform(0.0, 360.0)),
        float(rng.uniform(0.0, 0.12)),
    )
    sea = _spectral_field(rng, height, width, slope=float(rng.uniform(1.6, 2.8)), swell=swell)
    image = np.float32(rng.uniform(0.3, 1.1)) * sea
    image[rows, cols] += wake
    # Sun glint: a smooth brightness ramp across the chip.
    glint_dir = _unit(float(rng.uniform(0.0, 360.0)))
    glint_per_px = np.float32(float(rng.uniform(0.0, 3.0)) / diagonal)
    image += glint_per_px * (
        (rel_x + np.float32(vertex[0])) * np.float32(glint_dir[0])
        + (rel_y + np.float32(vertex[1])) * np.float32(glint_dir[1])
    )
    if rng.random() < CLOUD_FRACTION:
        cloud = _spectral_field(rng, height, width, slope=3.2)
        threshold = float(rng.uniform(0.3, 1.5))
        opacity = np.clip((cloud - np.float32(threshold)) / np.float32(0.8), 0.0, 1.0)
        clear_px = np.float32(6.0 + 0.03 * diagonal)
        distance = _segment_distance(rel_x, rel_y, layout.drawn_offsets)
        opacity *= np.clip(distance / clear_px - 1.0, 0.0, 1.0)
        image += np.float32(rng.uniform(0.3, 0.7) * vessel_amplitude) * opacity
    image += rng.standard_normal((height, width), dtype=np.float32)

    # Percentile stretch to 0-225 as in a stretched Sentinel-2 quicklook; the brightest values
    # around the vessel are squeezed into 225-232 and only the vessel (and far-away clouds or
    # glints) reaches 255, so the vessel stays the brightest blob at the vertex.
    low_pct, high_pct = rng.uniform(0.5, 3.0), rng.uniform(97.0, 99.8)
    low_value, high_value = np.percentile(image[::3, ::3], [low_pct, high_pct])
    high_value = max(high_value, low_value + 1e-3)
    distance_sq = rel_x[:, cols] ** 2 + rel_y[rows] ** 2
    around_vessel = image[rows, cols][(distance_sq > 9.0) & (distance_sq < 144.0)]
    top_value = max(float(around_vessel.max()), high_value + 1e-3)
    levels = np.interp(
        image,
        [low_value, high_value, top_value, top_value + 0.25 * (top_value - low_value)],
        [0.0, 225.0, 232.0, 255.0],
    )
    pixels = np.rint(levels).astype(np.uint8)
    keypoints_px = np.vstack([vertex, vertex + layout.annotated])
    return SyntheticChip(
        image=pixels,
        keypoints_px=keypoints_px.astype(np.float32),
        heading_deg=_annotation_heading_deg(keypoints_px),
        course_deg=course_deg,
        wake_kind=layout.wake_kind,
    )


def chip_name(index: int) -> str:
    """File stem of chip ``index`` (``synth_000000``)."""
    return f"synth_{index:06d}"


def _write_chip(
    root: Path, name: str, chip: SyntheticChip, georef_rng: np.random.Generator | None = None
) -> None:
    """Write a chip as PNG, or with ``georef_rng`` as a GeoTIFF placed in the North Sea."""
    if georef_rng is not None:
        from wakemodel.georef import north_sea_transform, write_geotiff

        transform, crs = north_sea_transform(georef_rng)
        write_geotiff(root / "imgs" / f"{name}.tif", chip.image, transform, crs)
    else:
        Image.fromarray(chip.image).save(
            root / "imgs" / f"{name}.png", format="PNG", compress_level=1
        )
    (root / "annotations" / f"{name}.json").write_text(
        json.dumps({"tooltips": chip.tooltips}), encoding="utf-8"
    )


def _write_chips(
    root: Path, indices: range, seed: int, min_size: int, max_size: int, geotiff: bool = False
) -> None:
    """Render and write chips ``indices`` (each from its own spawned generator) under ``root``.

    A GeoTIFF chip's position is drawn from its generator after the chip, so
    pixels and annotations are the same as without ``geotiff``.
    """
    children = np.random.SeedSequence(seed).spawn(indices.stop)
    for index in indices:
        rng = np.random.default_rng(children[index])
        width, height = (int(side) for side in rng.integers(min_size, max_size + 1, size=2))
        chip = render_chip(rng, width, height)
        _write_chip(root, chip_name(index), chip, rng if geotiff else None)


def generate_dataset(
    out_dir: str | os.PathLike[str],
    count: int,
    seed: int,
    *,
    min_size: int = 200,
    max_size: int = 900,
    workers: int = 1,
    geotiff: bool = False,
) -> Path:
    """Write ``count`` synthetic chips in the real dataset's layout.

    The chips are built in a temporary folder beside ``out_dir`` that is renamed
    into place at the end, so ``out_dir`` is either complete or absent.

    Args:
        out_dir: Destination folder; must not exist or be empty.
        count: Number of chips (at least 1).
        seed: Seed; the same seed gives byte-identical files, and chip ``i`` is
            the same whatever ``count`` is.
        min_size: Smallest chip side (pixels, at least 32).
        max_size: Largest chip side (pixels); width and height are drawn
            independently and uniformly in ``[min_size, max_size]``.
        workers: Processes rendering in parallel (the files do not depend on it).
        geotiff: Write ``imgs/synth_NNNNNN.tif`` GeoTIFFs instead of PNGs (needs
            rasterio and pyproj): same pixels and annotations, north-up 10 m
            pixels in UTM zone 31N or 32N (EPSG:32631/32632) at a random open
            North Sea position (:func:`wakemodel.georef.north_sea_transform`).

    Returns:
        ``out_dir`` holding ``imgs/synth_NNNNNN.png`` (or ``.tif``) and
        ``annotations/synth_NNNNNN.json``.

    Raises:
        InputError: A bad count or size range.
        WakeModelError: ``out_dir`` exists and is not an empty folder.
    """
    out = Path(out_dir)
    if count < 1:
        raise InputError(f"Chip count {count} must be at least 1.")
    if not 32 <= min_size <= max_size:
        raise InputError(
            f"Chip size range {min_size}-{max_size} is invalid; use 32 <= --min-size <= --max-size."
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise WakeModelError(
            f"Output folder {out} already exists and is not empty; delete it or choose another."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        staging.chmod(0o755)
        (staging / "imgs").mkdir()
        (staging / "annotations").mkdir()
        workers = max(1, min(workers, count))
        if workers == 1:
            _write_chips(staging, range(count), seed, min_size, max_size, geotiff)
        else:
            bounds = np.linspace(0, count, workers + 1).astype(int)
            with ProcessPoolExecutor(workers) as pool:
                jobs = [
                    pool.submit(
                        _write_chips, staging, range(start, stop), seed, min_size, max_size, geotiff
                    )
                    for start, stop in itertools.pairwise(bounds)
                ]
                for job in jobs:
                    job.result()
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("Wrote %d synthetic chips to %s", count, out)
    return out
