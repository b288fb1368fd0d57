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

With ``no_wake_fraction=F`` each chip is, with probability F, a negative: a chip
without a readable wake (open sea, clouds, sun glint, or a vessel without a
wake) annotated ``{"tooltips": []}``. Whether chip ``i`` is negative, and the
negative chip itself, come from a second generator of its own
(:func:`no_wake_indices`), so the wake chips are the same as with F = 0.

``style="shifted"`` (:data:`STYLES`) draws the same chips with another look,
closer to a real Sentinel-2 B8 chip: heavier grain, broad sea patches, stronger
glint, a harder stretch and wider wakes; the annotations are the same.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import numbers
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from wakemodel.errors import InputError, WakeModelError
from wakemodel.keypoints import (
    KELVIN_HALF_ANGLE_DEG,
    NUM_KEYPOINTS,
    bearing_unit_vector,
    heading_deg,
)

logger = logging.getLogger(__name__)

TWO_POINT_FRACTION = 0.2
"""Share of chips with only 2 annotated keypoints."""

CLOUD_FRACTION = 0.2
"""Share of chips with cloud patches."""

NO_WAKE_KINDS = ("open_sea", "clouds", "glint", "vessel")
"""Kinds of chips without a wake, drawn with equal probability (:func:`render_no_wake_chip`)."""


@dataclass(frozen=True)
class SyntheticStyle:
    """The appearance of synthetic chips: sea, noise, glint, stretch and wake strength.

    Ranges are (low, high) of uniform draws; factors multiply the wake's
    amplitudes and widths (noise-sigma units and pixels). The draws are the
    same in every style, so a chip's geometry does not depend on its style.

    Attributes:
        sea_slope: Power-spectrum exponent of the sea texture (larger: smoother patches).
        sea_amplitude: Sea texture strength relative to the sensor noise.
        glint: Brightness change of the sun-glint ramp across the chip diagonal.
        noise_sigma: Sensor noise standard deviation (1: the unit of the other amplitudes).
        low_percentile: Percentile stretched to black.
        high_percentile: Percentile stretched to 225 (of 255).
        wake_contrast: Factor on the Kelvin arms' and turbulent wake's amplitudes.
        wake_width: Factor on the Kelvin arms' and turbulent wake's widths.
    """

    sea_slope: tuple[float, float] = (1.6, 2.8)
    sea_amplitude: tuple[float, float] = (0.3, 1.1)
    glint: tuple[float, float] = (0.0, 3.0)
    noise_sigma: float = 1.0
    low_percentile: tuple[float, float] = (0.5, 3.0)
    high_percentile: tuple[float, float] = (97.0, 99.8)
    wake_contrast: float = 1.0
    wake_width: float = 1.0


STYLES = {
    "default": SyntheticStyle(),
    # Closer to a real Sentinel-2 B8 chip: heavy grain, broad smooth bright/dark sea patches,
    # stronger glint, a harder stretch that saturates both ends, and wider wakes.
    "shifted": SyntheticStyle(
        sea_slope=(2.8, 3.6),
        sea_amplitude=(0.8, 1.8),
        glint=(1.0, 6.0),
        noise_sigma=1.5,
        low_percentile=(3.0, 8.0),
        high_percentile=(90.0, 96.0),
        wake_contrast=1.2,  # 0.8x the default's contrast over the (1.5x) noise
        wake_width=1.8,
    ),
}
"""Chip appearances by name (``synth --style``); ``default`` is the generator's original look."""


def synthetic_style(name: str) -> SyntheticStyle:
    """The :data:`STYLES` entry ``name``.

    Raises:
        InputError: ``name`` is not a style.
    """
    if name not in STYLES:
        raise InputError(f"Style {name!r} is unknown; use one of {', '.join(STYLES)}.")
    return STYLES[name]


_NO_WAKE_STREAM = 0x6E6F_7761_6B65
"""First spawn-key word of the per-chip negative streams (ASCII "nowake"); chip
``i``'s stream is ``SeedSequence(seed, spawn_key=(_NO_WAKE_STREAM, i))``, never one
of the wake chips' ``SeedSequence(seed).spawn(n)`` children (spawn keys ``(i,)``)."""


@dataclass(frozen=True, eq=False)
class SyntheticChip:
    """One rendered chip and its annotation.

    Attributes:
        image: uint8 ``[H, W]`` grayscale chip.
        keypoints_px: float32 ``[K, 2]`` (x, y) continuous pixel coordinates,
            K = 2 or 3, vertex first, then the far ends of the visible wake
            components (arm order meaningless); K = 0 for a chip without a wake.
        heading_deg: Compass bearing in [0, 360) degrees (north = image up,
            clockwise) from the mean far end towards the vertex, as the project
            defines the heading of an annotation. Equal (within about 1 degree)
            to ``course_deg`` except for ``single_arm`` chips, where the lone far
            end is an arm end and the two differ by about the cusp half-angle;
            NaN without a wake.
        course_deg: Compass bearing in [0, 360) degrees of the vessel's travel;
            NaN without a vessel.
        wake_kind: ``"kelvin"`` (both arms annotated), ``"single_arm"`` (one arm
            annotated), ``"turbulent"`` (the turbulent wake's end annotated) or
            ``"none"`` (no wake).
        no_wake_kind: For a chip without a wake, its kind in
            :data:`NO_WAKE_KINDS`; else None.
    """

    image: np.ndarray
    keypoints_px: np.ndarray
    heading_deg: float
    course_deg: float
    wake_kind: str
    no_wake_kind: str | None = None

    @property
    def tooltips(self) -> list[dict[str, float]]:
        """The annotation in the dataset's JSON schema (pixels, 2 decimals)."""
        return [{"x": round(float(x), 2), "y": round(float(y), 2)} for x, y in self.keypoints_px]


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
        kx, ky = bearing_unit_vector(direction_deg) / wavelength_px
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
    backward = -bearing_unit_vector(course_deg)
    half_angle = KELVIN_HALF_ANGLE_DEG
    arm_dirs = np.stack(
        [
            bearing_unit_vector(course_deg + 180.0 + half_angle),
            bearing_unit_vector(course_deg + 180.0 - half_angle),
        ]
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
    rng: np.random.Generator,
    layout: _WakeLayout,
    rel_x: np.ndarray,
    rel_y: np.ndarray,
    style: SyntheticStyle = STYLES["default"],
) -> tuple[np.ndarray, float]:
    """Draw the Kelvin arms, the turbulent wake and the vessel (noise-sigma units).

    Args:
        rng: Random generator.
        layout: Wake geometry.
        rel_x: ``[1, W']`` pixel-centre x minus vertex x (pixels) of the window drawn.
        rel_y: ``[H', 1]`` pixel-centre y minus vertex y (pixels) of the window drawn.
        style: Wake contrast and width factors.

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
    arm_amplitude *= style.wake_contrast
    arm_width0 = float(rng.uniform(0.8, 1.8)) * style.wake_width
    arm_spread = float(rng.uniform(0.003, 0.012)) * style.wake_width
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
    turbulent_amplitude = (
        float(rng.uniform(strongest - 1.5, strongest))
        * (-1.0 if rng.random() < 0.6 else 1.0)
        * style.wake_contrast
    )
    turbulent_width = float(rng.uniform(1.5, 4.0)) * style.wake_width + np.float32(
        rng.uniform(0.01, 0.05) * style.wake_width
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
    vessel, vessel_amplitude = _draw_vessel(
        rng, along_back, across, 2.0 * (abs(arm_amplitude) + abs(turbulent_amplitude))
    )
    wake += vessel
    return wake, vessel_amplitude


def _draw_vessel(
    rng: np.random.Generator, along_back: np.ndarray, across: np.ndarray, wake_amplitude: float
) -> tuple[np.ndarray, float]:
    """Draw the vessel: a small blob elongated along the track, brighter than anything around it.

    Args:
        rng: Random generator.
        along_back: ``[H', W']`` distance (pixels) behind the vessel along its track.
        across: ``[H', W']`` distance (pixels) across the track.
        wake_amplitude: Twice the summed wake amplitudes (noise-sigma units); the
            vessel's peak is this plus 5 to 9.

    Returns:
        float32 ``[H', W']`` vessel signal and its peak amplitude (noise-sigma units).
    """
    vessel_length = float(rng.uniform(1.0, 2.0))
    vessel_width = float(rng.uniform(0.7, 1.2))
    vessel_amplitude = wake_amplitude + float(rng.uniform(5.0, 9.0))
    vessel = np.float32(vessel_amplitude) * np.exp(
        -0.5
        * ((along_back / np.float32(vessel_length)) ** 2 + (across / np.float32(vessel_width)) ** 2)
    )
    return vessel, vessel_amplitude


def _window(layout: _WakeLayout, width: int, height: int) -> tuple[slice, slice]:
    """Row and column slices of the chip that hold the visible wake (with a margin)."""
    offsets = np.vstack([np.zeros(2), layout.drawn_offsets])
    longest = float(np.hypot(*offsets.T).max())
    pad = 12.0 + 4.0 * (4.0 + 0.05 * longest)
    low = np.floor(layout.vertex + offsets.min(axis=0) - pad).astype(int).clip(0)
    high = np.ceil(layout.vertex + offsets.max(axis=0) + pad).astype(int)
    return slice(low[1], min(high[1], height)), slice(low[0], min(high[0], width))


def _check_size(width: int, height: int) -> None:
    """Raise InputError unless the chip is at least 32 x 32 pixels."""
    if min(width, height) < 32:
        raise InputError(f"Chip size {width}x{height} is too small; use at least 32x32 pixels.")


def _pixel_offsets(vertex: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre x ``[1, W]`` and y ``[H, 1]`` minus the vertex (pixels)."""
    rel_x = (np.arange(width, dtype=np.float32) + 0.5 - np.float32(vertex[0]))[None, :]
    rel_y = (np.arange(height, dtype=np.float32) + 0.5 - np.float32(vertex[1]))[:, None]
    return rel_x, rel_y


def _render_scene(
    rng: np.random.Generator,
    width: int,
    height: int,
    vertex: np.ndarray,
    window: tuple[slice, slice],
    wake: np.ndarray | None,
    vessel_amplitude: float,
    clear_offsets: np.ndarray,
    scene: str = "wake",
    style: SyntheticStyle = STYLES["default"],
) -> np.ndarray:
    """Add the sea, sun glint, clouds and noise around a wake and stretch to 8 bits.

    Args:
        rng: Random generator.
        width: Chip width (pixels).
        height: Chip height (pixels).
        vertex: ``[2]`` continuous pixel coordinates of the vessel, or of the
            point whose surroundings set the top of the stretch where there is none.
        window: Row and column slices of the chip around the vertex (at least
            12 pixels each way where the chip allows).
        wake: float32 ``[H', W']`` signal (noise-sigma units) added inside
            ``window``, or None.
        vessel_amplitude: The vessel's peak (noise-sigma units); sets the
            clouds' brightness.
        clear_offsets: ``[N, 2]`` segment ends relative to the vertex that
            clouds keep clear of (N = 0: clouds anywhere).
        scene: ``"wake"``, or a kind of :data:`NO_WAKE_KINDS`: ``"clouds"``
            always has (wider) clouds, ``"glint"`` adds a broad bright glint
            patch; the others are drawn like ``"wake"``.
        style: Sea texture, glint, noise and stretch.

    Returns:
        uint8 ``[H, W]`` chip.
    """
    rows, cols = window
    rel_x, rel_y = _pixel_offsets(vertex, width, height)
    diagonal = math.hypot(width, height)
    swell = (
        float(rng.uniform(6.0, 25.0)),
        float(rng.uniform(0.0, 360.0)),
        float(rng.uniform(0.0, 0.12)),
    )
    sea = _spectral_field(
        rng, height, width, slope=float(rng.uniform(*style.sea_slope)), swell=swell
    )
    image = np.float32(rng.uniform(*style.sea_amplitude)) * sea
    if wake is not None:
        image[rows, cols] += wake
    # Sun glint: a smooth brightness ramp across the chip.
    glint_dir = bearing_unit_vector(float(rng.uniform(0.0, 360.0)))
    glint_per_px = np.float32(float(rng.uniform(*style.glint)) / diagonal)
    image += glint_per_px * (
        (rel_x + np.float32(vertex[0])) * np.float32(glint_dir[0])
        + (rel_y + np.float32(vertex[1])) * np.float32(glint_dir[1])
    )
    if scene == "glint":
        # Strong glint: a broad smooth bright patch that also roughens the sea's texture.
        centre = rng.uniform([0.0, 0.0], [width, height])
        sigma_px = np.float32(float(rng.uniform(0.2, 0.5)) * diagonal)
        patch = np.exp(
            -0.5
            * (
                (rel_x + np.float32(vertex[0] - centre[0])) ** 2
                + (rel_y + np.float32(vertex[1] - centre[1])) ** 2
            )
            / sigma_px**2
        )
        image += patch * (
            np.float32(rng.uniform(3.0, 8.0)) + np.float32(rng.uniform(0.5, 1.5)) * sea
        )
    if scene == "clouds" or rng.random() < CLOUD_FRACTION:
        cloud = _spectral_field(rng, height, width, slope=3.2)
        # Cloud chips have lower thresholds: more, larger clouds (still partial cover).
        threshold = float(rng.uniform(-0.5, 0.8) if scene == "clouds" else rng.uniform(0.3, 1.5))
        opacity = np.clip((cloud - np.float32(threshold)) / np.float32(0.8), 0.0, 1.0)
        if len(clear_offsets):
            clear_px = np.float32(6.0 + 0.03 * diagonal)
            distance = _segment_distance(rel_x, rel_y, clear_offsets)
            opacity *= np.clip(distance / clear_px - 1.0, 0.0, 1.0)
        image += np.float32(rng.uniform(0.3, 0.7) * vessel_amplitude) * opacity
    image += np.float32(style.noise_sigma) * rng.standard_normal((height, width), dtype=np.float32)

    # Percentile stretch to 0-225 as in a stretched Sentinel-2 quicklook; the brightest values
    # around the vessel are squeezed into 225-232 and only the vessel (and far-away clouds or
    # glints) reaches 255, so the vessel stays the brightest blob at the vertex.
    low_pct, high_pct = rng.uniform(*style.low_percentile), rng.uniform(*style.high_percentile)
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
    return np.rint(levels).astype(np.uint8)


def render_chip(
    rng: np.random.Generator, width: int, height: int, style: str = "default"
) -> SyntheticChip:
    """Render one synthetic Sentinel-2 wake chip.

    Args:
        rng: Random generator; the chip is a pure function of its state.
        width: Chip width (pixels, at least 32).
        height: Chip height (pixels, at least 32).
        style: Appearance, a name in :data:`STYLES`; the wake's geometry and
            annotation do not depend on it.

    Returns:
        The chip with its annotation; all keypoints lie inside the chip, the
        vertex at least ``max(4, 4% of the short side)`` pixels from the border.

    Raises:
        InputError: ``width`` or ``height`` is below 32 pixels, or an unknown ``style``.
    """
    _check_size(width, height)
    look = synthetic_style(style)
    course_deg = float(rng.uniform(0.0, 360.0))
    layout = _layout(rng, width, height, course_deg)
    vertex = layout.vertex
    rel_x, rel_y = _pixel_offsets(vertex, width, height)
    rows, cols = _window(layout, width, height)
    wake, vessel_amplitude = _draw_wake(rng, layout, rel_x[:, cols], rel_y[rows], look)
    pixels = _render_scene(
        rng,
        width,
        height,
        vertex,
        (rows, cols),
        wake,
        vessel_amplitude,
        layout.drawn_offsets,
        style=look,
    )
    keypoints_px = np.vstack([vertex, vertex + layout.annotated])
    return SyntheticChip(
        image=pixels,
        keypoints_px=keypoints_px.astype(np.float32),
        heading_deg=_annotation_heading_deg(keypoints_px),
        course_deg=course_deg,
        wake_kind=layout.wake_kind,
    )


def render_no_wake_chip(
    rng: np.random.Generator,
    width: int,
    height: int,
    kind: str | None = None,
    style: str = "default",
) -> SyntheticChip:
    """Render one synthetic chip without a readable wake (a negative sample).

    The sea, glint, clouds, noise and stretch are drawn as in :func:`render_chip`,
    without the wake:

    - ``"open_sea"``: just the sea (with the usual chance of clouds);
    - ``"clouds"``: bright smooth clouds partly covering the sea;
    - ``"glint"``: a broad bright sun-glint patch over the sea;
    - ``"vessel"``: a bright vessel like a wake chip's, with no wake.

    Args:
        rng: Random generator; the chip is a pure function of its state.
        width: Chip width (pixels, at least 32).
        height: Chip height (pixels, at least 32).
        kind: One of :data:`NO_WAKE_KINDS`, or None to draw one uniformly.
        style: Appearance, a name in :data:`STYLES`.

    Returns:
        The chip with no keypoints (``keypoints_px`` of shape ``[0, 2]``,
        ``wake_kind="none"``, NaN heading; ``course_deg`` is the vessel's for
        ``"vessel"``, else NaN).

    Raises:
        InputError: ``width`` or ``height`` is below 32 pixels, or an unknown ``kind``
            or ``style``.
    """
    _check_size(width, height)
    look = synthetic_style(style)
    if kind is None:
        kind = NO_WAKE_KINDS[int(rng.integers(len(NO_WAKE_KINDS)))]
    elif kind not in NO_WAKE_KINDS:
        raise InputError(
            f"No-wake kind {kind!r} is unknown; use one of {', '.join(NO_WAKE_KINDS)}."
        )
    margin = max(4.0, 0.04 * min(width, height))
    vertex = rng.uniform([margin, margin], [width - margin, height - margin])
    reach = 16
    low = np.floor(vertex).astype(int) - reach
    high = np.ceil(vertex).astype(int) + reach
    rows = slice(max(int(low[1]), 0), min(int(high[1]), height))
    cols = slice(max(int(low[0]), 0), min(int(high[0]), width))
    # The vessel's brightness as if it had a wake: twice the arm and turbulent amplitudes.
    wake_amplitude = 2.0 * (float(rng.uniform(1.2, 3.0)) + float(rng.uniform(1.0, 2.5)))
    course_deg = math.nan
    wake = None
    clear_offsets = np.zeros((0, 2))
    if kind == "vessel":
        course_deg = float(rng.uniform(0.0, 360.0))
        backward = -bearing_unit_vector(course_deg)
        rel_x, rel_y = _pixel_offsets(vertex, width, height)
        rel_x, rel_y = rel_x[:, cols], rel_y[rows]
        along_back = rel_x * np.float32(backward[0]) + rel_y * np.float32(backward[1])
        across = rel_x * np.float32(-backward[1]) + rel_y * np.float32(backward[0])
        wake, vessel_amplitude = _draw_vessel(rng, along_back, across, wake_amplitude)
        clear_offsets = np.zeros((1, 2))
    else:
        vessel_amplitude = wake_amplitude + float(rng.uniform(5.0, 9.0))
    pixels = _render_scene(
        rng, width, height, vertex, (rows, cols), wake, vessel_amplitude, clear_offsets, kind, look
    )
    return SyntheticChip(
        image=pixels,
        keypoints_px=np.zeros((0, 2), dtype=np.float32),
        heading_deg=math.nan,
        course_deg=course_deg,
        wake_kind="none",
        no_wake_kind=kind,
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


def _no_wake_generator(seed: int, index: int) -> np.random.Generator:
    """Chip ``index``'s negative stream: its first draw says whether it is negative."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_NO_WAKE_STREAM, index)))


def _check_no_wake_fraction(no_wake_fraction: float) -> float:
    """The fraction as a float, or InputError naming it unless ``0 <= fraction <= 1``."""
    if (
        isinstance(no_wake_fraction, bool)
        or not isinstance(no_wake_fraction, numbers.Real)
        or not 0.0 <= no_wake_fraction <= 1.0
    ):
        raise InputError(
            f"No-wake fraction {no_wake_fraction!r} is invalid; use a share from 0 to 1."
        )
    return float(no_wake_fraction)


def no_wake_indices(count: int, seed: int, no_wake_fraction: float) -> list[int]:
    """Indices of the chips without a wake in a dataset from :func:`generate_dataset`.

    Chip ``i`` is negative when the first uniform draw of its own negative
    stream (spawned from ``seed`` apart from the wake chips' streams) is below
    ``no_wake_fraction``: each chip independently with that probability, so the
    share is near ``no_wake_fraction``, and whether chip ``i`` is negative does
    not depend on ``count`` (raising the fraction only adds negatives).

    Args:
        count: Number of chips.
        seed: The dataset's seed.
        no_wake_fraction: Probability in [0, 1] that a chip has no wake.

    Returns:
        Sorted chip indices in ``[0, count)``.

    Raises:
        InputError: ``no_wake_fraction`` is outside [0, 1].
    """
    fraction = _check_no_wake_fraction(no_wake_fraction)
    if fraction == 0.0:
        return []
    return [i for i in range(count) if _no_wake_generator(seed, i).random() < fraction]


def _write_chips(
    root: Path,
    indices: range,
    seed: int,
    min_size: int,
    max_size: int,
    geotiff: bool = False,
    no_wake_fraction: float = 0.0,
    style: str = "default",
) -> int:
    """Render and write chips ``indices`` (each from its own spawned generator) under ``root``.

    A GeoTIFF chip's position is drawn from its generator after the chip, so
    pixels and annotations are the same as without ``geotiff``. A chip without
    a wake is drawn, after the draw that chose it, from its negative stream.

    Returns:
        The number of chips written without a wake.
    """
    children = np.random.SeedSequence(seed).spawn(indices.stop)
    no_wake = 0
    for index in indices:
        if no_wake_fraction > 0.0:
            rng = _no_wake_generator(seed, index)
            if rng.random() < no_wake_fraction:
                width, height = (int(side) for side in rng.integers(min_size, max_size + 1, size=2))
                chip = render_no_wake_chip(rng, width, height, style=style)
                _write_chip(root, chip_name(index), chip, rng if geotiff else None)
                no_wake += 1
                continue
        rng = np.random.default_rng(children[index])
        width, height = (int(side) for side in rng.integers(min_size, max_size + 1, size=2))
        chip = render_chip(rng, width, height, style=style)
        _write_chip(root, chip_name(index), chip, rng if geotiff else None)
    return no_wake


def generate_dataset(
    out_dir: str | os.PathLike[str],
    count: int,
    seed: int,
    *,
    min_size: int = 200,
    max_size: int = 900,
    workers: int = 1,
    geotiff: bool = False,
    no_wake_fraction: float = 0.0,
    style: str = "default",
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
        no_wake_fraction: Probability in [0, 1] that a chip has no wake
            (:func:`render_no_wake_chip`, annotated ``{"tooltips": []}``); which
            chips are :func:`no_wake_indices`. The wake chips are the same
            whatever it is, and 0 gives the same files as before it existed.
        style: Appearance, a name in :data:`STYLES` (``"shifted"``: closer to a
            real Sentinel-2 B8 chip); the annotations do not depend on it and
            ``"default"`` gives the same files as before it existed.

    Returns:
        ``out_dir`` holding ``imgs/synth_NNNNNN.png`` (or ``.tif``) and
        ``annotations/synth_NNNNNN.json``.

    Raises:
        InputError: A bad count, size range, no-wake fraction or style.
        WakeModelError: ``out_dir`` exists and is not an empty folder.
    """
    out = Path(out_dir)
    if count < 1:
        raise InputError(f"Chip count {count} must be at least 1.")
    if not 32 <= min_size <= max_size:
        raise InputError(
            f"Chip size range {min_size}-{max_size} is invalid; use 32 <= --min-size <= --max-size."
        )
    no_wake_fraction = _check_no_wake_fraction(no_wake_fraction)
    synthetic_style(style)
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
            no_wake = _write_chips(
                staging, range(count), seed, min_size, max_size, geotiff, no_wake_fraction, style
            )
        else:
            bounds = np.linspace(0, count, workers + 1).astype(int)
            with ProcessPoolExecutor(workers) as pool:
                jobs = [
                    pool.submit(
                        _write_chips,
                        staging,
                        range(start, stop),
                        seed,
                        min_size,
                        max_size,
                        geotiff,
                        no_wake_fraction,
                        style,
                    )
                    for start, stop in itertools.pairwise(bounds)
                ]
                no_wake = sum(job.result() for job in jobs)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info(
        "Wrote %d synthetic chips (%d without a wake) to %s",
        count,
        no_wake,
        out,
    )
    return out
