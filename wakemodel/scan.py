"""From a whole Sentinel-2 scene to vessels with headings on a map (``cli.py scan``).

:func:`scan` opens one band of a scene (:func:`wakemodel.scene.open_scene`),
takes the vessels from a CSV (``lat,lon`` or scene pixels ``x,y``; optional
``id``, ``name``, ``mmsi``) or finds them with the CFAR detector
(:func:`wakemodel.detect.detect_candidates`), cuts a window around each one
(windowed reads; the window's side is the training chips' median ground extent
that the model file carries, or ``chip_m``), runs the model on the windows in
batches (:func:`wakemodel.infer.iter_predictions`, ``.ckpt`` or ``.onnx``) and
puts every answer on the Earth (:func:`wakemodel.georef.geolocate`): the vessel
at the wake vertex, its true heading (grid convergence corrected) with its
uncertainty, the wake score, the wake length in metres and, with platforms,
the nearest one and the closest point of approach.

A :class:`ScanResult` becomes a GeoJSON FeatureCollection in WGS 84 (RFC
7946: a Point per vessel, a LineString per visible wake component), a CSV
table, or GeoParquet when geopandas is installed (:func:`write_scan`).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wakemodel import geojson
from wakemodel._io import atomic_path, atomic_write_text, json_float
from wakemodel.calibration import DEFAULT_MIN_WAKE_SCORE, INTERVAL_Z90
from wakemodel.detect import CfarSettings, detect_candidates
from wakemodel.errors import InputError, WakeModelError
from wakemodel.geo import read_points_csv
from wakemodel.georef import GeoLocation, Platforms, geolocate, read_platforms
from wakemodel.infer import Prediction, as_predictor, iter_predictions
from wakemodel.keypoints import KEYPOINT_NAMES, VERTEX_SLOT, far_end_px
from wakemodel.predictors import KeypointPredictor, chip_extent_m
from wakemodel.scene import DEFAULT_BAND, SceneBand, open_scene

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CHIP_EXTENT_M",
    "SCAN_FORMATS",
    "ScanResult",
    "ScannedVessel",
    "VesselPosition",
    "read_vessels",
    "scan",
    "write_scan",
]

DEFAULT_CHIP_EXTENT_M = 5500.0
"""Window side (metres) for a model file that does not carry its training chips'
extent: the median of the default synthetic chips (550 px at 10 m)."""

SCAN_FORMATS = ("geojson", "csv", "parquet")
"""Output formats of :func:`write_scan`."""

_CHUNK_WINDOWS = 64
"""Windows read and predicted at a time (about 80 MB of pixels at 550 px)."""

ProgressCallback = Callable[[str, int, int], None]
"""``progress(stage, done, total)``; stage is ``"detect"`` or ``"predict"``."""


@dataclass(frozen=True)
class VesselPosition:
    """Where a vessel is thought to be before the model looks.

    Attributes:
        id: Identifier (the CSV's ``id``, else ``mmsi``, else the row index; or
            ``cand_0001``... for detector candidates).
        x_px: Scene column (continuous pixels).
        y_px: Scene row (continuous pixels).
        source: ``"csv"`` or ``"detector"``.
        name: The CSV's ``name`` (else empty).
        mmsi: The CSV's ``mmsi`` (else empty).
        contrast_sigma: Detector contrast over the local sea (standard
            deviations); NaN for CSV positions.
    """

    id: str
    x_px: float
    y_px: float
    source: str
    name: str = ""
    mmsi: str = ""
    contrast_sigma: float = math.nan


@dataclass(frozen=True)
class ScannedVessel:
    """The model's answer for one vessel, in scene pixels and on the Earth.

    Attributes:
        position: The input position (CSV or detector).
        window: ``(col_off, row_off, side)`` of the window the model saw (pixels).
        prediction: The model's answer in window pixels.
        keypoints_px: float ``[3, 2]`` keypoints in scene pixels.
        location: The answer on the Earth (true heading, wake length, platforms).
        vertex_refinement_m: Ground distance from the input position to the
            predicted vertex (metres).
    """

    position: VesselPosition
    window: tuple[int, int, int]
    prediction: Prediction
    keypoints_px: np.ndarray
    location: GeoLocation
    vertex_refinement_m: float

    @property
    def wake_found(self) -> bool:
        """Whether the wake score reached the threshold (else: no readable wake)."""
        return bool(self.prediction.wake_found)

    def record(self) -> dict[str, Any]:
        """Flat JSON-ready properties (headings null when no readable wake).

        ``lat``/``lon`` (WGS 84) and ``crs_x``/``crs_y`` (the scene's CRS, e.g. UTM
        metres) locate the wake vertex; ``x_px``/``y_px`` is its scene pixel and
        ``input_x_px``/``input_y_px`` the position the vessel came with.
        """
        found = self.wake_found
        location = self.location
        pixel_m = float(np.mean(location.pixel_size_m))
        lat, lon = self.lat_lon
        crs_x, crs_y = location.georef.pixel_to_crs(*self.point_px)  # type: ignore[union-attr]
        record: dict[str, Any] = {
            "id": self.position.id,
            "name": self.position.name,
            "mmsi": self.position.mmsi,
            "source": self.position.source,
            "lat": round(lat, 7),
            "lon": round(lon, 7),
            "x_px": round(float(self.point_px[0]), 2),
            "y_px": round(float(self.point_px[1]), 2),
            "crs_x": round(float(crs_x), 2),
            "crs_y": round(float(crs_y), 2),
            "input_x_px": round(self.position.x_px, 2),
            "input_y_px": round(self.position.y_px, 2),
            "wake_found": found,
            "wake_score": json_float(self.prediction.wake_score, 4),
            "heading_deg": json_float(location.heading_true_deg if found else math.nan, 2),
            "heading_std_deg": json_float(
                self.prediction.heading_std_deg if found else math.nan, 2
            ),
            "heading_grid_deg": json_float(location.heading_grid_deg if found else math.nan, 2),
            "wake_length_m": json_float(location.wake_length_m if found else math.nan, 1),
            "vertex_refinement_m": json_float(self.vertex_refinement_m if found else math.nan, 1),
            "vertex_std_m": json_float(
                self.prediction.vertex_std_px * pixel_m if found else math.nan, 1
            ),
            "detector_contrast_sigma": json_float(self.position.contrast_sigma, 2),
        }
        if location.nearest_platforms:
            nearest = location.nearest_platforms[0]
            record.update(
                {
                    "platform": nearest.name,
                    "platform_id": nearest.id,
                    "platform_distance_km": round(nearest.distance_km, 3),
                    "heading_to_platform_deg": json_float(
                        nearest.heading_to_platform_deg if found else math.nan, 2
                    ),
                    "cpa_km": json_float(nearest.cpa_km if found else math.nan, 3),
                    "cpa_along_track_km": json_float(
                        nearest.cpa_along_track_km if found else math.nan, 3
                    ),
                }
            )
        return record

    @property
    def point_px(self) -> np.ndarray:
        """The vessel's scene pixel: the predicted vertex, or the input position without a wake."""
        if self.wake_found:
            return self.keypoints_px[VERTEX_SLOT]
        return np.array([self.position.x_px, self.position.y_px])

    @property
    def lat_lon(self) -> tuple[float, float]:
        """Latitude and longitude (degrees) of :attr:`point_px`."""
        if self.wake_found:
            return self.location.vessel_lat, self.location.vessel_lon
        georef = self.location.georef
        lon, lat = georef.pixel_to_lonlat(*self.point_px)  # type: ignore[union-attr]
        return float(lat), float(lon)

    def features(self) -> list[dict[str, Any]]:
        """A Point for the vessel and, with a readable wake, a LineString per visible end."""
        record = self.record()
        lat, lon = self.lat_lon
        features = [geojson.point(lon, lat, {"feature": "vessel", **record})]
        if not self.wake_found:
            return features
        location = self.location
        for name, end_lat, end_lon in location.far_ends:
            slot = KEYPOINT_NAMES.index(name)
            end_x, end_y = self.keypoints_px[slot]
            vertex_x, vertex_y = self.keypoints_px[VERTEX_SLOT]
            length_m = location.georef.ground_distance_m(end_x, end_y, vertex_x, vertex_y)  # type: ignore[union-attr]
            features.append(
                geojson.line_string(
                    [(lon, lat), (end_lon, end_lat)],
                    {
                        "feature": "wake",
                        "vessel_id": record["id"],
                        "component": name,
                        "length_m": round(float(length_m), 1),
                    },
                )
            )
        return features


@dataclass
class ScanResult:
    """Everything one scan found.

    Attributes:
        scene: The band file read.
        band: Band name.
        crs: The scene's CRS (``EPSG:32631``).
        pixel_size_m: Mean ground pixel size (metres).
        window_px: Window side (pixels).
        chip_extent_m: Window side (metres) and where it came from.
        vessels: One answer per vessel inside the scene, in input (or
            detector-strength) order.
        skipped: ``(position, reason)`` of vessels that were not scanned.
        candidates: Detector candidates (None when vessels came from a CSV).
        seconds: Wall time per stage (``detect``, ``predict``).
    """

    scene: Path
    band: str
    crs: str
    pixel_size_m: float
    window_px: int
    chip_extent_m: tuple[float, str]
    vessels: list[ScannedVessel] = field(default_factory=list)
    skipped: list[tuple[VesselPosition, str]] = field(default_factory=list)
    candidates: int | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def wakes_found(self) -> int:
        """Vessels with a readable wake."""
        return sum(vessel.wake_found for vessel in self.vessels)

    def to_geojson(self) -> dict[str, Any]:
        """The FeatureCollection (WGS 84, RFC 7946) with the scan's settings as foreign members."""
        return geojson.feature_collection(
            (feature for vessel in self.vessels for feature in vessel.features()),
            scene=str(self.scene),
            band=self.band,
            scene_crs=self.crs,
            window_px=self.window_px,
            window_m=round(self.chip_extent_m[0], 1),
            heading_interval=f"90% interval: heading_deg +- {INTERVAL_Z90:.3f} * heading_std_deg",
            candidates=self.candidates,
            skipped=[{"id": position.id, "reason": reason} for position, reason in self.skipped],
            timing_s={stage: round(seconds, 2) for stage, seconds in self.seconds.items()},
        )

    def records(self) -> list[dict[str, Any]]:
        """One flat record per vessel (the CSV rows)."""
        return [vessel.record() for vessel in self.vessels]

    def summary(self) -> str:
        """A few lines for the terminal."""
        extent_m, extent_source = self.chip_extent_m
        lines = [
            f"Scene {self.scene.name} ({self.band}, {self.crs}, {self.pixel_size_m:g} m pixels): "
            f"{len(self.vessels)} vessels scanned, {self.wakes_found} with a readable wake.",
            f"  Windows: {self.window_px} px ({extent_m:,.0f} m, {extent_source}).",
        ]
        if self.candidates is not None:
            lines.append(f"  Detector: {self.candidates} candidates.")
        if self.skipped:
            shown = ", ".join(f"{pos.id} ({reason})" for pos, reason in self.skipped[:5])
            more = f" and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
            lines.append(f"  Skipped {len(self.skipped)}: {shown}{more}.")
        timing = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in self.seconds.items())
        lines.append(f"  Time: {timing}.")
        return "\n".join(lines)


def _pixel_columns(header: list[str]) -> tuple[int, int] | None:
    """Indices of the ``x`` and ``y`` columns in a lower-cased header, if both are there."""
    if "x" in header and "y" in header:
        return header.index("x"), header.index("y")
    return None


def read_vessels(path: str | os.PathLike[str], scene: SceneBand) -> list[VesselPosition]:
    """Read vessel positions from a CSV: ``lat,lon`` or scene pixels ``x,y``.

    Optional columns ``id``, ``name``, ``mmsi``. With both kinds of columns the
    latitude and longitude are used.

    Args:
        path: CSV file with a header row.
        scene: The scene (to turn latitude/longitude into pixels).

    Returns:
        The positions in file order (including any outside the scene).

    Raises:
        WakeModelError: Unreadable CSV, missing columns or a bad value (one line
            naming the file and row).
    """
    csv_path = Path(path)
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise WakeModelError(f"{csv_path}: cannot read CSV ({error}).") from None
    header = [column.strip().lower() for column in rows[0]] if rows else []
    pixel_columns = _pixel_columns(header)
    has_latlon = any(name in header for name in ("lat", "latitude"))
    if pixel_columns is None or has_latlon:
        points = read_points_csv(csv_path)
        xs, ys = scene.georef.lonlat_to_pixel(points.lons, points.lats)
        ids = points.ids or [str(index) for index in range(len(xs))]
        extras = _extra_columns(header, rows)
        return [
            VesselPosition(
                ids[index], float(x), float(y), "csv", points.labels[index], *extras[index]
            )
            for index, (x, y) in enumerate(zip(np.atleast_1d(xs), np.atleast_1d(ys), strict=True))
        ]
    positions = []
    x_col, y_col = pixel_columns
    extras = _extra_columns(header, rows)
    for line, row in enumerate(rows[1:], start=2):
        if not any(value.strip() for value in row):
            continue
        try:
            x, y = float(row[x_col]), float(row[y_col])
        except (IndexError, ValueError):
            raise WakeModelError(
                f"{csv_path} row {line}: x and y must be numbers (scene pixels)."
            ) from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise WakeModelError(f"{csv_path} row {line}: x and y must be finite numbers.")
        index = len(positions)
        identifier = _cell(header, row, "id") or _cell(header, row, "mmsi") or str(index)
        name = _cell(header, row, "name") or identifier
        positions.append(VesselPosition(identifier, x, y, "csv", name, extras[index][0]))
    if not positions:
        raise WakeModelError(f"{csv_path}: no data rows below the header.")
    return positions


def _cell(header: list[str], row: list[str], name: str) -> str:
    index = header.index(name) if name in header else None
    return row[index].strip() if index is not None and index < len(row) else ""


def _extra_columns(header: list[str], rows: list[list[str]]) -> list[tuple[str]]:
    """The ``mmsi`` of every non-blank data row."""
    return [
        (_cell(header, row, "mmsi"),) for row in rows[1:] if any(value.strip() for value in row)
    ]


def _detected_positions(
    scene: SceneBand, settings: CfarSettings | None, progress: ProgressCallback | None
) -> list[VesselPosition]:
    """Detector candidates as vessel positions, strongest first."""
    report = None if progress is None else (lambda done, total: progress("detect", done, total))
    candidates = detect_candidates(scene, settings, progress=report)
    return [
        VesselPosition(
            f"cand_{index:04d}",
            float(candidates.x_px[index]),
            float(candidates.y_px[index]),
            "detector",
            contrast_sigma=float(candidates.contrast_sigma[index]),
        )
        for index in range(len(candidates))
    ]


def _fill(window: np.ndarray) -> np.ndarray | None:
    """Replace NaN (outside the scene, nodata) by the window's median sea; None if all NaN."""
    valid = np.isfinite(window)
    if not valid.any():
        return None
    if not valid.all():
        window = np.where(valid, window, np.float32(np.median(window[valid])))
    return window


def _resolve_extent(predictor: KeypointPredictor, chip_m: float | None) -> tuple[float, str]:
    """Window side (metres) and where it came from."""
    if chip_m is not None:
        if not chip_m > 0:
            raise InputError(f"--chip-m {chip_m}: give a positive number of metres.")
        return float(chip_m), "--chip-m"
    stored = chip_extent_m(predictor)
    if stored is not None:
        return stored, "the training chips' median, from the model file"
    logger.warning(
        "The model file does not carry its training chips' extent; using %.0f m "
        "(set it with --chip-m).",
        DEFAULT_CHIP_EXTENT_M,
    )
    return DEFAULT_CHIP_EXTENT_M, "default; the model file does not carry it"


def scan(
    model: KeypointPredictor | str | os.PathLike[str],
    scene_path: str | os.PathLike[str],
    *,
    vessels: str | os.PathLike[str] | Sequence[VesselPosition] | None = None,
    band: str = DEFAULT_BAND,
    chip_m: float | None = None,
    batch_size: int = 16,
    tta: bool = True,
    accelerator: str = "auto",
    min_wake_score: float = DEFAULT_MIN_WAKE_SCORE,
    platforms: str | os.PathLike[str] | Platforms | None = None,
    cfar: CfarSettings | None = None,
    second_look: bool = True,
    progress: ProgressCallback | None = None,
) -> ScanResult:
    """Find the wake, true heading and position of every vessel in a scene.

    Args:
        model: A ``.ckpt``/``.onnx`` path or a loaded predictor.
        scene_path: GeoTIFF/COG or JPEG2000 band, or a Sentinel-2 ``.SAFE`` folder.
        vessels: A CSV of positions (``lat,lon`` or pixel ``x,y``), positions,
            or None to find candidates with the CFAR detector.
        band: Band read from a ``.SAFE`` folder.
        chip_m: Window side (metres); default: the model file's training-chip
            extent (:func:`wakemodel.predictors.chip_extent_m`).
        batch_size: Windows per network call.
        tta: Combine every look over the 8 flips/rotations of the window (on a
            full synthetic scene: median heading error 6.1° against 8.9° without, at
            about 4x the model time; ``benchmarks/README.md``).
        accelerator: Device for a ``.ckpt`` model.
        min_wake_score: Wake score from which a wake counts as readable.
        platforms: Platforms CSV (or loaded) for the nearest platform and CPA.
        cfar: Detector settings (without ``vessels``).
        second_look: Look again at every readable wake through a window centred
            on the wake (the midpoint of vertex and far end, so the whole wake is
            in view as in a training chip), and keep that answer unless its
            heading is less certain.
        progress: Called as ``progress(stage, done, total)``.

    Returns:
        The :class:`ScanResult`.

    Raises:
        WakeModelError: Unreadable scene, model or CSV (one line).
        NotGeoreferencedError: The scene has no map projection.
        InputError: A bad option value.
    """
    with open_scene(scene_path, band) as scene:
        predictor = as_predictor(model, accelerator=accelerator)
        extent = _resolve_extent(predictor, chip_m)
        platform_set = (
            read_platforms(platforms) if isinstance(platforms, (str, os.PathLike)) else platforms
        )
        epsg = scene.georef.crs.to_epsg()
        side = max(32, round(extent[0] / scene.pixel_size_m))
        result = ScanResult(
            scene=scene.path,
            band=scene.band,
            crs=f"EPSG:{epsg}" if epsg is not None else scene.georef.crs.name,
            pixel_size_m=round(scene.pixel_size_m, 4),
            window_px=side,
            chip_extent_m=extent,
        )
        started = time.perf_counter()
        if vessels is None:
            positions = _detected_positions(scene, cfar, progress)
            result.candidates = len(positions)
        elif isinstance(vessels, (str, os.PathLike)):
            positions = read_vessels(vessels, scene)
        else:
            positions = list(vessels)
        result.seconds["detect" if vessels is None else "read"] = time.perf_counter() - started
        inside = []
        for position in positions:
            if scene.contains(position.x_px, position.y_px):
                inside.append(position)
            else:
                result.skipped.append((position, "outside the scene"))
        if result.skipped:
            logger.warning(
                "%d vessel(s) outside the scene skipped: %s",
                len(result.skipped),
                ", ".join(position.id for position, _ in result.skipped[:10]),
            )
        started = time.perf_counter()
        options = {
            "batch_size": batch_size,
            "tta": tta,
            "min_wake_score": min_wake_score,
        }
        for start in range(0, len(inside), _CHUNK_WINDOWS):
            chunk = inside[start : start + _CHUNK_WINDOWS]
            result.vessels.extend(
                _scan_chunk(
                    predictor,
                    scene,
                    chunk,
                    side,
                    result,
                    options,
                    second_look,
                    platform_set,
                )
            )
            if progress is not None:
                progress("predict", len(result.vessels) + len(result.skipped), len(positions))
        result.seconds["predict"] = time.perf_counter() - started
    return result


@dataclass(frozen=True)
class _Look:
    """One model answer: the prediction and its window (top-left scene pixel and side)."""

    prediction: Prediction
    col_off: int
    row_off: int
    side: int

    @property
    def keypoints_px(self) -> np.ndarray:
        """The keypoints in scene pixels, float ``[3, 2]``."""
        return self.prediction.keypoints_px + np.array([self.col_off, self.row_off], np.float64)

    @property
    def wake_centre_px(self) -> tuple[float, float]:
        """Midpoint of the vertex and the far end point (scene pixels)."""
        keypoints = self.keypoints_px
        far = far_end_px(keypoints, self.prediction.visible)
        centre = (keypoints[VERTEX_SLOT] + far) / 2.0
        return float(centre[0]), float(centre[1])


def _look(
    predictor: KeypointPredictor,
    scene: SceneBand,
    centres: Sequence[tuple[float, float]],
    side: int,
    options: dict[str, Any],
) -> list[_Look | None]:
    """Run the model on the ``side``-pixel windows centred on scene pixels (None: no data)."""
    windows, origins = [], []
    for x_px, y_px in centres:
        col_off, row_off = math.floor(x_px - side / 2), math.floor(y_px - side / 2)
        window = _fill(scene.read_window(col_off, row_off, side, side))
        origins.append(None if window is None else (col_off, row_off))
        if window is not None:
            windows.append(window)
    predictions = iter(iter_predictions(predictor, windows, gsd_m=scene.pixel_size_m, **options))
    return [
        None if origin is None else _Look(next(predictions), *origin, side) for origin in origins
    ]


def _better(first: _Look, second: _Look | None) -> _Look:
    """The second look when it finds the wake no less surely (lower or equal heading std)."""
    if second is None or not second.prediction.wake_found:
        return first
    first_std, second_std = first.prediction.heading_std_deg, second.prediction.heading_std_deg
    if math.isnan(first_std) or math.isnan(second_std) or second_std <= first_std:
        return second
    return first


def _scan_chunk(
    predictor: KeypointPredictor,
    scene: SceneBand,
    chunk: Sequence[VesselPosition],
    side: int,
    result: ScanResult,
    options: dict[str, Any],
    second_look: bool,
    platforms: Platforms | None,
) -> list[ScannedVessel]:
    """Look at some positions (twice with ``second_look``) and geolocate the answers."""
    looks = _look(predictor, scene, [(p.x_px, p.y_px) for p in chunk], side, options)
    if second_look:
        found = [index for index, look in enumerate(looks) if look and look.prediction.wake_found]
        again = _look(predictor, scene, [looks[i].wake_centre_px for i in found], side, options)  # type: ignore[union-attr]
        for index, second in zip(found, again, strict=True):
            looks[index] = _better(looks[index], second)  # type: ignore[arg-type]
    scanned = []
    for position, look in zip(chunk, looks, strict=True):
        if look is None:
            result.skipped.append((position, "no valid pixels around it (nodata)"))
            continue
        keypoints_px = look.keypoints_px
        location = geolocate(
            scene.georef, keypoints_px, look.prediction.visible, platforms=platforms
        )
        vertex_x, vertex_y = keypoints_px[VERTEX_SLOT]
        refinement_m = float(
            scene.georef.ground_distance_m(position.x_px, position.y_px, vertex_x, vertex_y)
        )
        scanned.append(
            ScannedVessel(
                position,
                (look.col_off, look.row_off, look.side),
                look.prediction,
                keypoints_px,
                location,
                refinement_m,
            )
        )
    return scanned


def _csv_text(records: list[dict[str, Any]]) -> str:
    """Records as CSV text (union of their keys, in first-seen order; null -> empty)."""
    columns: dict[str, None] = {}
    for record in records:
        columns.update(dict.fromkeys(record))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({key: "" if value is None else value for key, value in record.items()})
    return buffer.getvalue()


def scan_format(out: str | os.PathLike[str] | None, requested: str | None) -> str:
    """The output format: ``requested``, else from ``out``'s suffix, else GeoJSON.

    Raises:
        InputError: An unknown format, or a suffix that contradicts ``requested``.
    """
    suffix_formats = {
        ".geojson": "geojson",
        ".json": "geojson",
        ".csv": "csv",
        ".parquet": "parquet",
    }
    from_suffix = None if out is None else suffix_formats.get(Path(out).suffix.lower())
    if requested is not None:
        if requested not in SCAN_FORMATS:
            raise InputError(f"--format {requested}: use one of {', '.join(SCAN_FORMATS)}.")
        return requested
    return from_suffix or "geojson"


def write_scan(result: ScanResult, out: str | os.PathLike[str], fmt: str = "geojson") -> Path:
    """Write a scan atomically as GeoJSON, CSV or GeoParquet.

    Args:
        result: The scan.
        out: Output file.
        fmt: ``geojson`` (Points and LineStrings, WGS 84), ``csv`` (one row per
            vessel) or ``parquet`` (GeoParquet of the same features; needs geopandas).

    Returns:
        ``out``.

    Raises:
        WakeModelError: ``parquet`` without geopandas (with the install line).
        InputError: An unknown format.
    """
    out_path = Path(out)
    if fmt == "geojson":
        return geojson.write_geojson(out_path, result.to_geojson())
    if fmt == "csv":
        return atomic_write_text(out_path, _csv_text(result.records()))
    if fmt == "parquet":
        try:
            import geopandas
        except ImportError as error:
            raise WakeModelError(
                "--format parquet needs geopandas (pip install geopandas pyarrow); "
                "or use --format geojson or csv."
            ) from error
        frame = geopandas.GeoDataFrame.from_features(
            result.to_geojson()["features"], crs="EPSG:4326"
        )
        with atomic_path(out_path) as tmp:
            frame.to_parquet(tmp)
        return out_path
    raise InputError(f"--format {fmt}: use one of {', '.join(SCAN_FORMATS)}.")
