"""Georeferencing: from wake keypoints in pixels to positions and courses on the Earth.

A :class:`GeoReference` is a chip's affine transform (pixel -> CRS coordinates)
and its CRS. It is read from a GeoTIFF (with rasterio), or from a world file
beside any image (``NAME.pgw``, ``NAME.pngw``, ``NAME.wld``, ``NAME.tfw`` ...)
plus a CRS given by the caller or by a ``NAME.prj`` file. Pixel coordinates are
continuous as everywhere in the package: pixel ``(i, j)`` covers
``[i, i+1) x [j, j+1)``, which is exactly what the transform maps (a world file
refers to pixel centres; :func:`affine.loadsw` shifts it to corners).

:func:`geolocate` turns a prediction's keypoints into the vessel's latitude and
longitude, its true heading and the wake length in metres, all measured on the
CRS's ellipsoid (so grid convergence, map scale and rotated or flipped
transforms need no special case), and, given platforms, the nearest ones with
the closest point of approach along the current heading, measured on the
sphere with :mod:`wakemodel.geo`. :func:`geolocate_predictions` does this for
``wakemodel.infer.Prediction`` objects (``cli.py infer``), and
:func:`north_sea_transform` with :func:`write_geotiff` make the synthetic
GeoTIFF chips (``cli.py synth --geotiff``).

rasterio is imported only where a TIFF is read or written.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyproj
from affine import Affine, loadsw
from pyproj.exceptions import CRSError

from wakemodel import geo
from wakemodel import keypoints as kp
from wakemodel._io import json_float
from wakemodel.errors import InputError, WakeModelError, first_line
from wakemodel.geofiles import (
    IN_MEMORY_REASON,
    TIFF_SUFFIXES,
    no_world_file_reason,
    world_file_candidates,
)
from wakemodel.keypoints import KEYPOINT_NAMES, NUM_KEYPOINTS
from wakemodel.metrics import DEFAULT_GSD_M

logger = logging.getLogger(__name__)

__all__ = [
    "TIFF_SUFFIXES",
    "GeoLocation",
    "GeoReference",
    "NotGeoreferencedError",
    "PlatformApproach",
    "Platforms",
    "geolocate",
    "geolocate_predictions",
    "make_platforms",
    "north_sea_transform",
    "parse_crs",
    "read_georeference",
    "read_platforms",
    "world_file_candidates",
    "write_geotiff",
]


class NotGeoreferencedError(WakeModelError):
    """An image carries no usable georeferencing; the message says why (one line)."""


def parse_crs(crs: str | pyproj.CRS) -> pyproj.CRS:
    """Parse a CRS given by a user (``EPSG:32631``, a WKT or PROJ string).

    Args:
        crs: CRS text, or a CRS (returned as is).

    Returns:
        The CRS.

    Raises:
        InputError: ``crs`` is not a CRS pyproj knows.
    """
    if isinstance(crs, pyproj.CRS):
        return crs
    try:
        return pyproj.CRS.from_user_input(crs)
    except CRSError as error:
        raise InputError(
            f"CRS {crs!r} is not recognised ({first_line(error)}); give one such as EPSG:32631."
        ) from error


@dataclass(frozen=True)
class GeoReference:
    """Where a chip lies on the Earth.

    Attributes:
        transform: Affine map from continuous pixel coordinates (x right, y
            down; pixel ``(i, j)`` covers ``[i, i+1) x [j, j+1)``) to CRS
            coordinates (x, y), e.g. easting and northing in metres.
        crs: The CRS of the transform's output.
        width: Chip width (pixels).
        height: Chip height (pixels).
        source: Where the georeferencing was read (for messages).
    """

    transform: Affine
    crs: pyproj.CRS
    width: int
    height: int
    source: str = ""
    _to_lonlat: pyproj.Transformer = field(init=False, repr=False, compare=False)
    _from_lonlat: pyproj.Transformer = field(init=False, repr=False, compare=False)
    _geod: pyproj.Geod = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not math.isfinite(self.transform.determinant) or self.transform.determinant == 0:
            raise NotGeoreferencedError(
                f"{self.source or 'georeference'}: the pixel transform is degenerate "
                f"({tuple(self.transform)[:6]})."
            )
        lonlat = pyproj.CRS.from_epsg(4326)
        object.__setattr__(
            self, "_to_lonlat", pyproj.Transformer.from_crs(self.crs, lonlat, always_xy=True)
        )
        object.__setattr__(
            self, "_from_lonlat", pyproj.Transformer.from_crs(lonlat, self.crs, always_xy=True)
        )
        object.__setattr__(self, "_geod", self.crs.get_geod() or pyproj.Geod(ellps="WGS84"))

    @classmethod
    def from_path(
        cls,
        image_path: str | os.PathLike[str],
        crs: str | pyproj.CRS | None = None,
        size: tuple[int, int] | None = None,
    ) -> GeoReference:
        """Read the georeferencing of an image.

        A GeoTIFF's own transform and CRS are used (rasterio, which also reads
        a ``.tfw`` beside a plain TIFF). Other images need a world file (see
        :func:`world_file_candidates`). A CRS the file does not carry comes from
        ``NAME.prj`` beside the image, else from ``crs``.

        Args:
            image_path: Image file (GeoTIFF, or any image with a world file).
            crs: CRS for images whose files carry none (``EPSG:32631``, WKT...).
            size: The image's (width, height) in pixels when already known, so a
                world-file image is not opened again.

        Returns:
            The chip's georeference.

        Raises:
            NotGeoreferencedError: The image has no usable transform or CRS;
                the message says why in one line.
            InputError: ``crs`` is not a valid CRS.
        """
        path = Path(image_path)
        fallback_crs = None if crs is None else parse_crs(crs)
        if path.suffix.lower() in TIFF_SUFFIXES:
            transform, file_crs, (width, height) = _read_geotiff(path)
        else:
            transform, (width, height) = _read_world_file(path, size)
            file_crs = None
        chosen = file_crs or _read_prj(path) or fallback_crs
        if chosen is None:
            raise NotGeoreferencedError(
                f"{path.name}: has a pixel transform but no CRS (none in the file, no "
                f"{path.with_suffix('.prj').name}); pass a CRS such as --crs EPSG:32631."
            )
        if fallback_crs is not None and chosen != fallback_crs:
            logger.debug("%s: using the file's CRS %s, not %s", path, chosen, fallback_crs)
        return cls(transform, chosen, width, height, source=str(path))

    def pixel_to_crs(self, x_px: Any, y_px: Any) -> tuple[np.ndarray, np.ndarray]:
        """Map continuous pixel coordinates to CRS coordinates.

        Args:
            x_px: Column coordinates (pixels), any shape.
            y_px: Row coordinates (pixels, down), same shape.

        Returns:
            CRS (x, y) arrays (e.g. easting, northing in metres), broadcast shape.
        """
        x, y = np.broadcast_arrays(np.asarray(x_px, np.float64), np.asarray(y_px, np.float64))
        crs_x, crs_y = self.transform @ (x, y)
        return np.asarray(crs_x, np.float64), np.asarray(crs_y, np.float64)

    def pixel_to_lonlat(self, x_px: Any, y_px: Any) -> tuple[np.ndarray, np.ndarray]:
        """Map continuous pixel coordinates to longitude and latitude (WGS 84).

        Args:
            x_px: Column coordinates (pixels), any shape.
            y_px: Row coordinates (pixels, down), same shape.

        Returns:
            (longitude, latitude) arrays in degrees, broadcast shape.
        """
        crs_x, crs_y = self.pixel_to_crs(x_px, y_px)
        lon, lat = self._to_lonlat.transform(crs_x, crs_y)
        return np.asarray(lon, np.float64), np.asarray(lat, np.float64)

    def lonlat_to_pixel(self, lon: Any, lat: Any) -> tuple[np.ndarray, np.ndarray]:
        """Map longitude and latitude (WGS 84) to continuous pixel coordinates.

        Args:
            lon: Longitudes (degrees), any shape.
            lat: Latitudes (degrees), same shape.

        Returns:
            (x, y) pixel arrays, broadcast shape; points off the chip fall
            outside ``[0, width) x [0, height)``.
        """
        lon_arr, lat_arr = np.broadcast_arrays(
            np.asarray(lon, np.float64), np.asarray(lat, np.float64)
        )
        crs_x, crs_y = self._from_lonlat.transform(lon_arr, lat_arr)
        x_px, y_px = ~self.transform @ (np.asarray(crs_x), np.asarray(crs_y))
        return np.asarray(x_px, np.float64), np.asarray(y_px, np.float64)

    @property
    def pixel_size_m(self) -> tuple[float, float]:
        """Ground size of the pixel at the chip centre, (across x, along y) in metres.

        Measured on the CRS's ellipsoid between the centres of neighbouring
        pixels, so it includes the map projection's scale (a 10 m UTM pixel
        measures 10 m times 1/k, within 0.1% of 10 m inside a zone).
        """
        centre_x, centre_y = self.width / 2.0, self.height / 2.0
        lon, lat = self.pixel_to_lonlat(
            [centre_x, centre_x + 1.0, centre_x], [centre_y, centre_y, centre_y + 1.0]
        )
        _, _, distance_m = self._geod.inv(lon[[0, 0]], lat[[0, 0]], lon[1:], lat[1:])
        return float(distance_m[0]), float(distance_m[1])

    def ground_distance_m(self, x1_px: Any, y1_px: Any, x2_px: Any, y2_px: Any) -> np.ndarray:
        """Ellipsoidal distance between pixel points, in metres (broadcast shape)."""
        lon1, lat1 = self.pixel_to_lonlat(x1_px, y1_px)
        lon2, lat2 = self.pixel_to_lonlat(x2_px, y2_px)
        _, _, distance_m = self._geod.inv(lon1, lat1, lon2, lat2)
        return np.asarray(distance_m, np.float64)

    def grid_bearing_deg(self, x_px: Any, y_px: Any, image_bearing_deg: Any) -> np.ndarray:
        """Map an image bearing to a bearing relative to the CRS's grid north.

        Equal to the image bearing for a north-up transform (no rotation or flip).

        Args:
            x_px: Column of the point (pixels).
            y_px: Row of the point (pixels).
            image_bearing_deg: Compass bearing in the image (degrees, image up
                = 0, clockwise, the package's heading convention).

        Returns:
            Grid bearing in degrees [0, 360), broadcast shape.
        """
        (x0, y0), (x1, y1) = self._step(x_px, y_px, image_bearing_deg)
        crs_x, crs_y = self.pixel_to_crs(np.stack([x0, x1]), np.stack([y0, y1]))
        return _wrap_deg(np.degrees(np.arctan2(crs_x[1] - crs_x[0], crs_y[1] - crs_y[0])))

    def true_bearing_deg(self, x_px: Any, y_px: Any, grid_bearing_deg: Any) -> np.ndarray:
        """Map a bearing measured in the image grid to a true bearing (from true north).

        The point and a point one pixel further along the bearing are
        geolocated, and the ellipsoidal azimuth between them is returned: grid
        convergence, rotated and flipped transforms are all accounted for.

        Args:
            x_px: Column of the point (pixels).
            y_px: Row of the point (pixels).
            grid_bearing_deg: Compass bearing in the image grid (degrees,
                image up = 0, clockwise; grid north for a north-up chip).

        Returns:
            True bearing in degrees [0, 360), broadcast shape.
        """
        (x0, y0), (x1, y1) = self._step(x_px, y_px, grid_bearing_deg)
        lon0, lat0 = self.pixel_to_lonlat(x0, y0)
        lon1, lat1 = self.pixel_to_lonlat(x1, y1)
        azimuth, _, _ = self._geod.inv(lon0, lat0, lon1, lat1)
        return _wrap_deg(azimuth)

    @staticmethod
    def _step(
        x_px: Any, y_px: Any, image_bearing_deg: Any
    ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """A point and the point one pixel further along an image bearing (degrees)."""
        x0, y0, bearing = np.broadcast_arrays(
            np.asarray(x_px, np.float64),
            np.asarray(y_px, np.float64),
            np.radians(np.asarray(image_bearing_deg, np.float64)),
        )
        return (x0, y0), (x0 + np.sin(bearing), y0 - np.cos(bearing))

    def azimuth_deg(self, x1_px: Any, y1_px: Any, x2_px: Any, y2_px: Any) -> np.ndarray:
        """True bearing at point 2 of the geodesic from point 1, continued past point 2.

        This is the course at point 2 of a vessel coming from point 1.

        Args:
            x1_px: Column of point 1 (pixels).
            y1_px: Row of point 1 (pixels).
            x2_px: Column of point 2 (pixels).
            y2_px: Row of point 2 (pixels).

        Returns:
            Degrees [0, 360) from true north, clockwise; broadcast shape.
        """
        lon1, lat1 = self.pixel_to_lonlat(x1_px, y1_px)
        lon2, lat2 = self.pixel_to_lonlat(x2_px, y2_px)
        _, back_azimuth, _ = self._geod.inv(lon1, lat1, lon2, lat2)
        return _wrap_deg(np.asarray(back_azimuth, np.float64) + 180.0)

    def image_bearing_deg(self, x_px: Any, y_px: Any, true_bearing_deg: Any) -> np.ndarray:
        """Map a true bearing at a pixel to a bearing in the image (see :meth:`true_bearing_deg`).

        Args:
            x_px: Column of the point (pixels).
            y_px: Row of the point (pixels).
            true_bearing_deg: Bearing from true north (degrees, clockwise).

        Returns:
            Compass bearing in the image (degrees [0, 360), image up = 0,
            clockwise), broadcast shape: the direction to draw on the chip.
        """
        x0, y0, bearing = np.broadcast_arrays(
            np.asarray(x_px, np.float64),
            np.asarray(y_px, np.float64),
            np.asarray(true_bearing_deg, np.float64),
        )
        lon0, lat0 = self.pixel_to_lonlat(x0, y0)
        step_m = float(np.mean(self.pixel_size_m))
        lon1, lat1, _ = self._geod.fwd(lon0, lat0, bearing, np.full(bearing.shape, step_m))
        x1, y1 = self.lonlat_to_pixel(lon1, lat1)
        return _wrap_deg(np.degrees(np.arctan2(x1 - x0, y0 - y1)))


def _wrap_deg(angle_deg: Any) -> np.ndarray:
    """Angles wrapped into [0, 360) degrees (``-1e-14 % 360`` would give 360)."""
    wrapped = np.asarray(angle_deg, np.float64) % 360.0
    return np.where(wrapped >= 360.0, 0.0, wrapped)


def _read_geotiff(path: Path) -> tuple[Affine, pyproj.CRS | None, tuple[int, int]]:
    """Transform, CRS (or None) and (width, height) of a TIFF, read with rasterio."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as dataset:
                transform, file_crs = dataset.transform, dataset.crs
                size = (dataset.width, dataset.height)
    except RasterioIOError as error:
        raise NotGeoreferencedError(
            f"{path.name}: rasterio cannot read it ({first_line(error)})."
        ) from error
    if transform.is_identity:
        raise NotGeoreferencedError(
            f"{path.name}: the TIFF has no georeferencing (no GeoTIFF transform, "
            f"no {path.with_suffix('.tfw').name} world file)."
        )
    crs = None if file_crs is None else pyproj.CRS.from_user_input(file_crs.to_wkt())
    return transform, crs, size


def _read_world_file(
    path: Path, size: tuple[int, int] | None = None
) -> tuple[Affine, tuple[int, int]]:
    """Transform from the first world file beside ``path``, and the image's (width, height).

    The image is opened for its size only when ``size`` is None.
    """
    from PIL import Image

    candidates = world_file_candidates(path)
    world_file = next((candidate for candidate in candidates if candidate.is_file()), None)
    if world_file is None:
        raise NotGeoreferencedError(no_world_file_reason(path))
    try:
        transform = loadsw(world_file.read_text(encoding="utf-8", errors="replace"))
    except ValueError as error:
        raise NotGeoreferencedError(
            f"{world_file.name}: not a valid world file ({error}); it needs 6 numbers."
        ) from error
    if size is not None:
        return transform, (int(size[0]), int(size[1]))
    try:
        with Image.open(path) as image:
            size = image.size
    except (OSError, ValueError, SyntaxError) as error:
        raise NotGeoreferencedError(
            f"{path.name}: cannot read the image size ({error})."
        ) from error
    return transform, size


def _read_prj(path: Path) -> pyproj.CRS | None:
    """The CRS in ``NAME.prj`` beside the image, or None if there is no such file."""
    prj = path.with_suffix(".prj")
    if not prj.is_file():
        return None
    try:
        return pyproj.CRS.from_user_input(prj.read_text(encoding="utf-8", errors="replace"))
    except CRSError as error:
        raise NotGeoreferencedError(
            f"{prj.name}: not a CRS pyproj can read ({first_line(error)})."
        ) from error


def read_georeference(
    image_path: str | os.PathLike[str],
    crs: str | pyproj.CRS | None = None,
    size: tuple[int, int] | None = None,
) -> tuple[GeoReference | None, str | None]:
    """Like :meth:`GeoReference.from_path`, but return ``(None, reason)`` instead of raising.

    Args:
        image_path: Image file.
        crs: CRS for images whose files carry none.
        size: The image's (width, height) when already known (not re-read).

    Returns:
        ``(georeference, None)``, or ``(None, one-line reason)``.

    Raises:
        InputError: ``crs`` is not a valid CRS.
    """
    try:
        return GeoReference.from_path(image_path, crs=crs, size=size), None
    except NotGeoreferencedError as error:
        return None, str(error)


@dataclass(frozen=True)
class Platforms:
    """Offshore platforms (or any named points) to measure vessels against.

    Attributes:
        points: Latitudes, longitudes (degrees) and labels, as
            :func:`wakemodel.geo.read_points_csv` reads them (label: the
            ``name`` column, else ``id``, else ``mmsi``, else the row index).
        ids: ``[M]`` the ``id`` column's values, else ``mmsi``, else the 0-based row index.
        index: Nearest-neighbour index over the points.
    """

    points: geo.LabelledPoints
    ids: list[str]
    index: geo.PlatformIndex

    def __len__(self) -> int:
        """Number of platforms."""
        return len(self.ids)


def make_platforms(
    lats: Sequence[float] | np.ndarray,
    lons: Sequence[float] | np.ndarray,
    names: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
) -> Platforms:
    """Build :class:`Platforms` from coordinates.

    Args:
        lats: ``[M]`` latitudes in degrees (finite, M >= 1).
        lons: ``[M]`` longitudes in degrees.
        names: ``[M]`` names; default the ids.
        ids: ``[M]`` identifiers; default the 0-based positions.

    Returns:
        The platforms, indexed.

    Raises:
        InputError: Invalid coordinates or list lengths that differ.
    """
    index = geo.PlatformIndex(lats, lons)
    id_list = [str(i) for i in range(len(index))] if ids is None else [str(i) for i in ids]
    name_list = list(id_list) if names is None else [str(name) for name in names]
    if not len(id_list) == len(name_list) == len(index):
        raise InputError(
            f"{len(index)} platform positions but {len(name_list)} names and {len(id_list)} ids."
        )
    return Platforms(geo.LabelledPoints(index.lats, index.lons, name_list), id_list, index)


def read_platforms(path: str | os.PathLike[str]) -> Platforms:
    """Read platforms from a CSV file (see :func:`wakemodel.geo.read_points_csv`).

    Args:
        path: CSV file with lat/latitude, lon/lng/long/longitude and optional
            name, id, mmsi columns (any case).

    Returns:
        The platforms with their names and ids, indexed.

    Raises:
        WakeModelError: Unreadable or invalid CSV (one line naming file and row).
    """
    points = geo.read_points_csv(Path(path))
    return Platforms(points, list(points.ids), geo.PlatformIndex(points.lats, points.lons))


@dataclass(frozen=True)
class PlatformApproach:
    """A platform seen from a vessel holding its course (sphere, :mod:`wakemodel.geo`).

    Attributes:
        name: Platform name.
        id: Platform identifier.
        lat: Platform latitude (degrees).
        lon: Platform longitude (degrees).
        distance_km: Great-circle distance from the vessel (km).
        bearing_deg: Initial bearing from the vessel to the platform (degrees
            from true north, [0, 360)).
        heading_to_platform_deg: Angle between the vessel's true heading and
            ``bearing_deg`` (degrees, [0, 180]; 0 = heading straight for it).
        cpa_km: Closest point of approach along the current heading (km); the
            current distance when the platform is already abaft the beam.
        cpa_along_track_km: Distance the vessel travels to reach the CPA (km, >= 0).
    """

    name: str
    id: str
    lat: float
    lon: float
    distance_km: float
    bearing_deg: float
    heading_to_platform_deg: float
    cpa_km: float
    cpa_along_track_km: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (km to the metre, degrees to 0.01)."""
        return {
            "name": self.name,
            "id": self.id,
            "lat": round(self.lat, 7),
            "lon": round(self.lon, 7),
            "distance_km": round(self.distance_km, 3),
            "bearing_deg": round(self.bearing_deg, 2),
            "heading_to_platform_deg": json_float(self.heading_to_platform_deg, 2),
            "cpa_km": json_float(self.cpa_km, 3),
            "cpa_along_track_km": json_float(self.cpa_along_track_km, 3),
        }


@dataclass(frozen=True)
class GeoLocation:
    """A prediction on the Earth.

    Attributes:
        crs: The chip's CRS (``EPSG:32631``, else its name).
        vessel_lat: Latitude of the wake vertex (degrees, WGS 84).
        vessel_lon: Longitude of the wake vertex (degrees).
        far_ends: ``(slot name, lat, lon)`` of each visible wake end (degrees).
        heading_true_deg: Course at the vertex from true north (degrees
            [0, 360)): the ellipsoidal azimuth from the far end point (mean of
            the visible ends, in pixels) through the vertex; NaN without an end.
        heading_grid_deg: The same course from the CRS's grid north (degrees).
        wake_length_m: Ellipsoidal vertex to far end point distance (metres).
        pixel_size_m: Ground (x, y) size of a pixel at the chip centre (metres).
        nearest_platforms: Nearest platforms first (empty without platforms).
        within_threshold_km: The ``within_km`` threshold (km), or None.
        within_km: Whether the nearest platform is closer than the threshold;
            None without platforms or threshold.
        georef: The chip's georeference (for drawing; not in :meth:`to_dict`).
    """

    crs: str
    vessel_lat: float
    vessel_lon: float
    far_ends: tuple[tuple[str, float, float], ...]
    heading_true_deg: float
    heading_grid_deg: float
    wake_length_m: float
    pixel_size_m: tuple[float, float]
    nearest_platforms: tuple[PlatformApproach, ...] = ()
    within_threshold_km: float | None = None
    within_km: bool | None = None
    georef: GeoReference | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; the nearest platform's angle and CPA are repeated at the top."""
        document: dict[str, Any] = {
            "crs": self.crs,
            "vessel_lat": round(self.vessel_lat, 7),
            "vessel_lon": round(self.vessel_lon, 7),
            "far_ends": [
                {"name": name, "lat": round(lat, 7), "lon": round(lon, 7)}
                for name, lat, lon in self.far_ends
            ],
            "heading_true_deg": json_float(self.heading_true_deg, 2),
            "heading_grid_deg": json_float(self.heading_grid_deg, 2),
            "wake_length_m": json_float(self.wake_length_m, 1),
            "pixel_size_m": [round(size, 3) for size in self.pixel_size_m],
        }
        if self.nearest_platforms:
            listed = [platform.to_dict() for platform in self.nearest_platforms]
            document["nearest_platforms"] = listed
            for key in ("heading_to_platform_deg", "cpa_km", "cpa_along_track_km"):
                document[key] = listed[0][key]
        if self.within_km is not None:
            document["within_threshold_km"] = self.within_threshold_km
            document["within_km"] = self.within_km
        return document

    def summary(self) -> str:
        """One line: position, true heading, wake length and the nearest platform's approach."""
        text = (
            f"vessel {_format_lat(self.vessel_lat)} {_format_lon(self.vessel_lon)}, "
            f"true heading {self.heading_true_deg:.1f}° (grid {self.heading_grid_deg:.1f}°), "
            f"wake {self.wake_length_m:,.0f} m"
        )
        if self.nearest_platforms:
            nearest = self.nearest_platforms[0]
            text += (
                f"; nearest platform {nearest.name} ({nearest.id}) {nearest.distance_km:.2f} km "
                f"at {nearest.bearing_deg:.1f}° ({nearest.heading_to_platform_deg:.1f}° off the "
                f"heading), CPA {nearest.cpa_km:.2f} km after {nearest.cpa_along_track_km:.2f} km"
            )
        if self.within_km:
            text += f"; WITHIN {self.within_threshold_km:g} km"
        return text


def _format_lat(lat: float) -> str:
    """Latitude as ``55.12345°N`` (5 decimals, about 1 m)."""
    return f"{abs(lat):.5f}°{'N' if lat >= 0 else 'S'}"


def _format_lon(lon: float) -> str:
    """Longitude as ``4.12345°E`` (5 decimals)."""
    return f"{abs(lon):.5f}°{'E' if lon >= 0 else 'W'}"


def geolocate(
    georef: GeoReference,
    keypoints_px: np.ndarray,
    visible: np.ndarray,
    *,
    platforms: Platforms | None = None,
    nearest_count: int = 1,
    within_km: float | None = None,
) -> GeoLocation:
    """Put a prediction on the Earth and, given platforms, measure its approach to them.

    Args:
        georef: The chip's georeference.
        keypoints_px: float ``[3, 2]`` (x, y) continuous pixels; slot 0 the
            vertex, slots 1-2 the wake ends.
        visible: bool ``[3]``; the vertex must be visible.
        platforms: Platforms to measure against, or None.
        nearest_count: How many nearest platforms to list (capped at their number).
        within_km: Flag the vessel when its nearest platform is closer than
            this (km); needs ``platforms``.

    Returns:
        The geo fields (see :class:`GeoLocation`).

    Raises:
        InputError: The vertex is not visible, a bad count or threshold, or
            ``within_km`` without platforms.
    """
    keypoints_px = np.asarray(keypoints_px, np.float64).reshape(NUM_KEYPOINTS, 2)
    visible = np.asarray(visible, bool).reshape(NUM_KEYPOINTS)
    if not visible[0]:
        raise InputError("The wake vertex is not visible; there is no vessel position to locate.")
    if nearest_count < 1:
        raise InputError(f"nearest_count must be at least 1, got {nearest_count}.")
    if within_km is not None and (platforms is None or not within_km > 0):
        raise InputError(f"within_km ({within_km}) needs platforms and a positive number of km.")
    lon, lat = georef.pixel_to_lonlat(keypoints_px[:, 0], keypoints_px[:, 1])
    far_ends = tuple(
        (KEYPOINT_NAMES[slot], float(lat[slot]), float(lon[slot]))
        for slot in range(1, NUM_KEYPOINTS)
        if visible[slot]
    )
    vertex_x, vertex_y = keypoints_px[0]
    heading_true = heading_grid = length_m = math.nan
    if visible[1:].any():
        far_x, far_y = kp.far_end_px(keypoints_px, visible)
        heading_true = float(georef.azimuth_deg(far_x, far_y, vertex_x, vertex_y))
        image_bearing = float(kp.heading_deg(keypoints_px, visible))
        heading_grid = float(georef.grid_bearing_deg(vertex_x, vertex_y, image_bearing))
        length_m = float(georef.ground_distance_m(far_x, far_y, vertex_x, vertex_y))
    approaches: tuple[PlatformApproach, ...] = ()
    within: bool | None = None
    if platforms is not None:
        approaches = _approaches(
            float(lat[0]),
            float(lon[0]),
            heading_true,
            platforms,
            min(nearest_count, len(platforms)),
        )
        if within_km is not None:
            within = approaches[0].distance_km < within_km
    epsg = georef.crs.to_epsg()
    return GeoLocation(
        crs=f"EPSG:{epsg}" if epsg is not None else georef.crs.name,
        vessel_lat=float(lat[0]),
        vessel_lon=float(lon[0]),
        far_ends=far_ends,
        heading_true_deg=heading_true,
        heading_grid_deg=heading_grid,
        wake_length_m=length_m,
        pixel_size_m=georef.pixel_size_m,
        nearest_platforms=approaches,
        within_threshold_km=within_km,
        within_km=within,
        georef=georef,
    )


def _approaches(
    vessel_lat: float, vessel_lon: float, heading_deg: float, platforms: Platforms, count: int
) -> tuple[PlatformApproach, ...]:
    """The ``count`` nearest platforms with bearing, angle to the heading and CPA (sphere)."""
    found = platforms.index.query(vessel_lat, vessel_lon, k=count)
    indices = found.indices.ravel()
    lats, lons = platforms.points.lats[indices], platforms.points.lons[indices]
    bearings = geo.initial_bearing_deg(vessel_lat, vessel_lon, lats, lons)
    cpa_km, along_km = geo.closest_point_of_approach(
        vessel_lat, vessel_lon, heading_deg, lats, lons
    )
    angles = kp.angle_difference_deg(heading_deg, bearings)
    return tuple(
        PlatformApproach(
            name=platforms.points.labels[index],
            id=platforms.ids[index],
            lat=float(lats[rank]),
            lon=float(lons[rank]),
            distance_km=float(found.distances_km.ravel()[rank]),
            bearing_deg=float(bearings[rank]),
            heading_to_platform_deg=float(angles[rank]),
            cpa_km=float(cpa_km[rank]),
            cpa_along_track_km=float(along_km[rank]),
        )
        for rank, index in enumerate(indices)
    )


def geolocate_predictions(
    predictions: Sequence[Any],
    *,
    crs: str | pyproj.CRS | None = None,
    platforms: Platforms | None = None,
    nearest_count: int = 1,
    within_km: float | None = None,
) -> list[Any]:
    """Add geo fields to predictions of georeferenced chips.

    Args:
        predictions: ``wakemodel.infer.Prediction`` objects (``source``,
            ``keypoints_px``, ``visible``, ``geo``, ``geo_note``, ...).
        crs: CRS for chips whose files carry none (see :meth:`GeoReference.from_path`).
        platforms: Platforms to measure against, or None.
        nearest_count: Nearest platforms listed per vessel.
        within_km: Flag vessels whose nearest platform is closer than this (km).

    Returns:
        Copies of the predictions. A georeferenced one has ``geo`` (a
        :class:`GeoLocation`), its ``wake_length_m`` measured on the ellipsoid
        and its ``gsd_m`` the mean ground pixel size (metres). Any other has
        ``geo=None`` and ``geo_note``: one line saying why.

    Raises:
        InputError: Bad ``crs``, ``nearest_count`` or ``within_km``.
    """
    located = []
    for prediction in predictions:
        if prediction.source is None:
            located.append(replace(prediction, geo=None, geo_note=IN_MEMORY_REASON))
            continue
        georef, reason = read_georeference(
            prediction.source, crs=crs, size=(prediction.width, prediction.height)
        )
        if georef is None:
            located.append(replace(prediction, geo=None, geo_note=reason))
            continue
        location = geolocate(
            georef,
            prediction.keypoints_px,
            prediction.visible,
            platforms=platforms,
            nearest_count=nearest_count,
            within_km=within_km,
        )
        located.append(
            replace(
                prediction,
                geo=location,
                geo_note=None,
                wake_length_m=location.wake_length_m,
                gsd_m=round(float(np.mean(location.pixel_size_m)), 4),
            )
        )
    return located


NORTH_SEA_BOX = (3.0, 7.0, 54.0, 56.5)
"""(west, east, south, north) degrees of open North Sea (Dutch, German and Danish sectors)."""


def north_sea_transform(
    rng: np.random.Generator, pixel_m: float = DEFAULT_GSD_M
) -> tuple[Affine, pyproj.CRS]:
    """A random north-up UTM chip transform in the open North Sea.

    The top-left corner is drawn uniformly in :data:`NORTH_SEA_BOX` and snapped
    to the pixel grid; the CRS is the corner's WGS 84 UTM zone (31N west of
    6°E, EPSG:32631, else 32N, EPSG:32632).

    Args:
        rng: Random generator (two uniform draws).
        pixel_m: Pixel size in metres (Sentinel-2 visible bands: 10).

    Returns:
        The transform (pixels -> easting, northing in metres) and the CRS.
    """
    west, east, south, north = NORTH_SEA_BOX
    lon, lat = float(rng.uniform(west, east)), float(rng.uniform(south, north))
    crs = pyproj.CRS.from_epsg(32631 if lon < 6.0 else 32632)
    to_utm = pyproj.Transformer.from_crs(pyproj.CRS.from_epsg(4326), crs, always_xy=True)
    easting, northing = to_utm.transform(lon, lat)
    easting, northing = (round(value / pixel_m) * pixel_m for value in (easting, northing))
    return Affine(pixel_m, 0.0, easting, 0.0, -pixel_m, northing), crs


def write_geotiff(
    path: str | os.PathLike[str], pixels: np.ndarray, transform: Affine, crs: pyproj.CRS
) -> Path:
    """Write a single-band GeoTIFF (deflate-compressed) with rasterio.

    Args:
        path: Output file (written as is; wrap in ``wakemodel._io.atomic_path`` if needed).
        pixels: ``[H, W]`` image, any dtype rasterio supports (e.g. uint8).
        transform: Pixel -> CRS transform.
        crs: The CRS.

    Returns:
        ``path``.
    """
    import rasterio

    height, width = pixels.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=1,
        dtype=pixels.dtype,
        crs=crs.to_wkt(),
        transform=transform,
        compress="deflate",
    ) as dataset:
        dataset.write(pixels, 1)
    return Path(path)
