"""Great-circle distances, nearest-platform search and sphere helpers.

Conventions: latitudes and longitudes in degrees, distances in km, bearings
and headings in compass degrees (0 = north, clockwise). Latitudes must lie in
[-90, 90]; longitudes of any range are normalised to [-180, 180).

Earth model: a sphere of radius ``earth_radius_km`` (default
:data:`EARTH_RADIUS_KM`, the IUGG mean radius R1 = 6371.0088 km). Against
geodesics on the WGS84 ellipsoid the spherical distance is off by about 0.5% at
most: measured on random pairs with ``pyproj.Geod(ellps="WGS84")``, from -0.45%
(short east-west paths near the poles) to +0.56% (short north-south paths near
the equator); the tests check a 0.6% bound. Use pyproj's geodesics where that
matters.

Numerics: a point is turned into a unit vector ``p`` and the central angle
between ``p`` and ``q`` is ``2 * atan(|p - q| / |p + q|)``, which is exact for
identical points (0, not a rounding residue), stable near antipodes (unlike
``asin(sqrt(h))``), and needs no sine or cosine per pair. The unit vectors come
from the half-angle tangent (``sin x = 2t / (1 + t**2)``, ``cos x = (1 - t**2) /
(1 + t**2)`` with ``t = tan(x / 2)``), because numpy's float64 ``tan`` is
vectorised on this kind of CPU while its float64 ``sin``/``cos`` are ~20x
slower. Absolute error in float64 is below 1e-11 km. With ``dtype=np.float32``
the absolute error is a few metres (at most 3.4 m over 1e6 random pairs; see
``benchmarks/README.md``), since float32 resolves positions to ~1 m.

NaN policy: a NaN coordinate gives a NaN distance (and index -1 or no index in
the nearest-platform results), never a finite number. Platform sets given to
:func:`find_closest_platform` and :class:`PlatformIndex` must be finite: an
unknown platform position is rejected with an :class:`InputError`.

Only numpy is imported with this module; scipy is imported by
:class:`PlatformIndex`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from wakemodel.errors import InputError, WakeModelError

EARTH_RADIUS_KM = 6371.0088
"""IUGG mean Earth radius R1 in km, the default sphere radius."""

_HALF_DEGREE_IN_RAD = math.pi / 360.0
_F64 = np.dtype(np.float64)
_BLOCK = 16384
_TIE_MARGIN = 3
_CHORD_REL_SLACK = 1e-9
_CHORD_ABS_SLACK = 1e-12


class NearestPlatforms(NamedTuple):
    """Result of :meth:`PlatformIndex.query`.

    Attributes:
        distances_km: float64 ``[..., k]``, ascending; NaN for NaN vessels.
        indices: int64 ``[..., k]`` platform indices; -1 for NaN vessels. Equal
            distances are ordered by the lower index.
    """

    distances_km: np.ndarray
    indices: np.ndarray


class LabelledPoints(NamedTuple):
    """Points read by :func:`read_points_csv`.

    Attributes:
        lats: float64 ``[M]`` latitudes in degrees.
        lons: float64 ``[M]`` longitudes in degrees, normalised to [-180, 180).
        labels: ``M`` names (the ``name`` column, else ``id``, else ``mmsi``,
            else the 0-based row index).
        ids: ``M`` identifiers (the ``id`` column, else ``mmsi``, else the
            0-based row index); None when built without ids.
    """

    lats: np.ndarray
    lons: np.ndarray
    labels: list[str]
    ids: list[str] | None = None


CSV_COLUMNS = {
    "lat": ("lat", "latitude"),
    "lon": ("lon", "lng", "long", "longitude"),
    "name": ("name",),
    "id": ("id",),
    "mmsi": ("mmsi",),
}
"""Header names :func:`read_points_csv` accepts per field (compared case-insensitively)."""


def _float_array(values: ArrayLike, name: str) -> np.ndarray:
    """Return ``values`` as a float64 array, or raise InputError naming ``name``."""
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be numbers in degrees ({exc}).") from None


def _check_lat(values: ArrayLike, name: str) -> np.ndarray:
    """Return latitudes as float64; raise InputError for values outside [-90, 90]."""
    lat = _float_array(values, name)
    if lat.size:
        flat = lat.ravel()
        if np.fmin.reduce(flat) < -90.0 or np.fmax.reduce(flat) > 90.0:
            bad = int(np.flatnonzero(np.abs(flat) > 90.0)[0])
            raise InputError(
                f"{name} must be within [-90, 90] degrees; got {flat[bad]} at index {bad}."
            )
    return lat


def _check_lon(values: ArrayLike, name: str) -> np.ndarray:
    """Return longitudes as float64 normalised to [-180, 180); reject infinities."""
    lon = _float_array(values, name)
    if lon.size:
        flat = lon.ravel()
        low, high = np.fmin.reduce(flat), np.fmax.reduce(flat)
        if np.isinf(low) or np.isinf(high):
            bad = int(np.flatnonzero(np.isinf(flat))[0])
            raise InputError(f"{name} must be finite (or NaN); got {flat[bad]} at index {bad}.")
        if low < -180.0 or high >= 180.0:
            lon = lon - 360.0 * np.floor((lon + 180.0) / 360.0)
            lon = np.where(lon >= 180.0, lon - 360.0, lon)
    return lon


def _check_pair(
    lat: ArrayLike, lon: ArrayLike, lat_name: str, lon_name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a latitude/longitude pair of equal shapes."""
    lat_arr, lon_arr = _check_lat(lat, lat_name), _check_lon(lon, lon_name)
    if lat_arr.shape != lon_arr.shape:
        raise InputError(
            f"{lon_name} has shape {lon_arr.shape} but {lat_name} has shape {lat_arr.shape}; "
            "they must match."
        )
    return lat_arr, lon_arr


def _check_platforms(
    lats: ArrayLike, lons: ArrayLike, lat_name: str, lon_name: str, *, finite: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a non-empty platform set; with ``finite``, reject NaN positions."""
    lat, lon = _check_pair(lats, lons, lat_name, lon_name)
    if lat.size == 0:
        raise InputError(f"{lat_name} is empty; give at least one platform.")
    if finite:
        for values, name in ((lat, lat_name), (lon, lon_name)):
            if np.isnan(values).any():
                bad = int(np.flatnonzero(np.isnan(values.ravel()))[0])
                raise InputError(f"{name} is NaN at index {bad}; drop unknown positions.")
    return lat, lon


def _check_radius(earth_radius_km: float) -> float:
    """Return the sphere radius as a float; it must be positive and finite."""
    radius = float(earth_radius_km)
    if not (math.isfinite(radius) and radius > 0):
        raise InputError(f"earth_radius_km must be a positive number of km; got {radius}.")
    return radius


def _check_dtype(dtype: DTypeLike) -> np.dtype:
    """Return ``dtype`` as float32 or float64; anything else is an InputError."""
    resolved = np.dtype(dtype)
    if resolved not in (np.dtype(np.float32), _F64):
        raise InputError(f"dtype must be numpy.float64 or numpy.float32; got {resolved}.")
    return resolved


def _broadcast_shape(*named: tuple[str, tuple[int, ...]]) -> tuple[int, ...]:
    """Broadcast the shapes, or raise InputError naming the arguments."""
    try:
        return np.broadcast_shapes(*(shape for _, shape in named))
    except ValueError:
        described = ", ".join(f"{name} {shape}" for name, shape in named)
        raise InputError(
            f"shapes do not broadcast: {described}; use e.g. vessel_lat[:, None] for all pairs."
        ) from None


def _unit_vectors_into(
    lat_deg: np.ndarray,
    lon_deg: np.ndarray,
    xyz: tuple[np.ndarray, np.ndarray, np.ndarray],
    work: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> None:
    """Write the unit vectors of points into ``xyz`` (x to 0°E, z to the north pole).

    Uses half-angle tangents (one ``tan`` per angle, no ``sin``/``cos``). All
    arrays have the points' shape; ``xyz`` and ``work`` are contiguous buffers
    of the target dtype. Every distance in this module goes through this
    function, so equal inputs give bit-identical vectors.

    Args:
        lat_deg: Latitudes in degrees.
        lon_deg: Longitudes in degrees, normalised.
        xyz: Output x, y, z (dimensionless).
        work: Four scratch buffers.
    """
    x, y, z = xyz
    tan_half, squared, denominator, cos_lat = work
    np.multiply(lat_deg, _HALF_DEGREE_IN_RAD, out=tan_half)
    np.tan(tan_half, out=tan_half)
    np.multiply(tan_half, tan_half, out=squared)
    np.add(squared, 1.0, out=denominator)
    np.add(tan_half, tan_half, out=z)
    np.divide(z, denominator, out=z)
    np.subtract(1.0, squared, out=cos_lat)
    np.divide(cos_lat, denominator, out=cos_lat)
    np.multiply(lon_deg, _HALF_DEGREE_IN_RAD, out=tan_half)
    np.tan(tan_half, out=tan_half)
    np.multiply(tan_half, tan_half, out=squared)
    np.add(squared, 1.0, out=denominator)
    np.add(tan_half, tan_half, out=y)
    np.divide(y, denominator, out=y)
    np.multiply(y, cos_lat, out=y)
    np.subtract(1.0, squared, out=x)
    np.divide(x, denominator, out=x)
    np.multiply(x, cos_lat, out=x)


def _unit_vectors(
    lat_deg: np.ndarray, lon_deg: np.ndarray, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return unit vectors (x, y, z), each shaped like the points, in ``dtype``."""
    xyz = tuple(np.empty(lat_deg.shape, dtype) for _ in range(3))
    work = tuple(np.empty(lat_deg.shape, dtype) for _ in range(4))
    _unit_vectors_into(lat_deg, lon_deg, xyz, work)  # type: ignore[arg-type]
    return xyz  # type: ignore[return-value]


def _arc_km_into(
    vessel_xyz: tuple[Any, Any, Any],
    point_xyz: tuple[Any, Any, Any],
    out: np.ndarray,
    work: tuple[np.ndarray, np.ndarray],
    diameter_km: float,
) -> None:
    """Write great-circle distances ``diameter * atan(|p - q| / |p + q|)`` into ``out``.

    Args:
        vessel_xyz: Unit vector components, broadcastable to ``out``.
        point_xyz: Unit vector components, broadcastable to ``out``.
        out: Contiguous result buffer in km.
        work: Two contiguous scratch buffers shaped like ``out``.
        diameter_km: Twice the sphere radius.
    """
    chord_sq, sum_sq = work
    for combine, acc in ((np.subtract, chord_sq), (np.add, sum_sq)):
        combine(point_xyz[0], vessel_xyz[0], out=acc)
        np.multiply(acc, acc, out=acc)
        for axis in (1, 2):
            combine(point_xyz[axis], vessel_xyz[axis], out=out)
            np.multiply(out, out, out=out)
            np.add(acc, out, out=acc)
    with np.errstate(divide="ignore"):
        np.divide(chord_sq, sum_sq, out=out)
    np.sqrt(out, out=out)
    np.arctan(out, out=out)
    np.multiply(out, diameter_km, out=out)


def _blocks(shape: tuple[int, ...], block: int) -> Iterator[tuple[int | slice, ...]]:
    """Yield index tuples cutting a C-ordered ``shape`` into contiguous blocks of <= block."""
    if not shape:
        yield ()
        return
    inner = math.prod(shape[1:])
    if inner <= block:
        step = max(1, block // max(inner, 1))
        for start in range(0, shape[0], step):
            yield (slice(start, start + step),)
    else:
        for index in range(shape[0]):
            for rest in _blocks(shape[1:], block):
                yield (index, *rest)


def _scratch(count: int, size: int, dtype: np.dtype) -> list[np.ndarray]:
    """Return ``count`` flat scratch buffers of ``size`` elements."""
    return [np.empty(size, dtype) for _ in range(count)]


def _pairwise_km(
    vessel_xyz: tuple[np.ndarray, np.ndarray, np.ndarray],
    point_xyz: tuple[np.ndarray, np.ndarray, np.ndarray],
    shape: tuple[int, ...],
    dtype: np.dtype,
    diameter_km: float,
) -> np.ndarray:
    """Return distances between broadcast unit vectors, computed block by block."""
    out = np.empty(shape, dtype)
    vessel = [np.broadcast_to(c, shape) for c in vessel_xyz]
    point = [np.broadcast_to(c, shape) for c in point_xyz]
    buffers = _scratch(2, min(_BLOCK, max(out.size, 1)), dtype)
    for block in _blocks(shape, _BLOCK):
        index = (*block, Ellipsis)
        target = out[index]
        work = tuple(b[: target.size].reshape(target.shape) for b in buffers)
        _arc_km_into(
            tuple(c[index] for c in vessel),  # type: ignore[arg-type]
            tuple(c[index] for c in point),  # type: ignore[arg-type]
            target,
            work,  # type: ignore[arg-type]
            diameter_km,
        )
    return out


def _one_to_many_km(
    vessel_xyz: tuple[np.ndarray, np.ndarray, np.ndarray],
    lat_deg: np.ndarray,
    lon_deg: np.ndarray,
    dtype: np.dtype,
    diameter_km: float,
) -> np.ndarray:
    """Distances from one vessel to raw points, converting the points block by block."""
    lat_flat, lon_flat = lat_deg.ravel(), lon_deg.ravel()
    out = np.empty(lat_flat.shape, dtype)
    buffers = _scratch(7, min(_BLOCK, out.size), dtype)
    vessel = tuple(c.ravel()[0] for c in vessel_xyz)
    for start in range(0, out.size, _BLOCK):
        stop = min(start + _BLOCK, out.size)
        views = [b[: stop - start] for b in buffers]
        point = (views[0], views[1], views[2])
        _unit_vectors_into(lat_flat[start:stop], lon_flat[start:stop], point, tuple(views[3:]))  # type: ignore[arg-type]
        _arc_km_into(vessel, point, out[start:stop], (views[3], views[4]), diameter_km)  # type: ignore[arg-type]
    return out.reshape(lat_deg.shape)


def haversine_vectorized(
    vessel_lat: ArrayLike,
    vessel_lon: ArrayLike,
    platform_lats: ArrayLike,
    platform_lons: ArrayLike,
    *,
    earth_radius_km: float = EARTH_RADIUS_KM,
    dtype: DTypeLike = np.float64,
) -> np.ndarray:
    """Great-circle distances in km between vessels and platforms on a sphere.

    The usual call is one vessel (floats) against platform arrays ``[M]`` giving
    ``[M]``; any broadcastable shapes work, e.g. vessels ``[N, 1]`` against
    platforms ``[M]`` give all pairs ``[N, M]``. Identical points give exactly
    0 and antipodal points ``pi * earth_radius_km`` (see the module docstring
    for the formula, its accuracy against WGS84, and the NaN policy). For many
    calls against the same platforms, :meth:`PlatformIndex.distances` skips the
    per-platform conversion and :meth:`PlatformIndex.query` finds the nearest.

    Args:
        vessel_lat: Vessel latitude(s) in degrees, within [-90, 90].
        vessel_lon: Vessel longitude(s) in degrees, any range; same shape as
            ``vessel_lat``.
        platform_lats: Platform latitudes in degrees, non-empty.
        platform_lons: Platform longitudes in degrees; same shape as
            ``platform_lats``.
        earth_radius_km: Sphere radius in km; default the IUGG mean radius.
        dtype: ``np.float64`` (default) or ``np.float32`` (several times faster,
            absolute error up to a few metres).

    Returns:
        Distances in km, shape ``broadcast(vessel shape, platform shape)``, in
        ``dtype``; NaN where a coordinate is NaN.

    Raises:
        InputError: A latitude outside [-90, 90], an infinite longitude,
            mismatched or non-broadcasting shapes, empty platform arrays, a bad
            radius or dtype; the message names the argument.
    """
    vessel_lat_arr, vessel_lon_arr = _check_pair(vessel_lat, vessel_lon, "vessel_lat", "vessel_lon")
    lats, lons = _check_platforms(
        platform_lats, platform_lons, "platform_lats", "platform_lons", finite=False
    )
    shape = _broadcast_shape(("vessel_lat", vessel_lat_arr.shape), ("platform_lats", lats.shape))
    diameter_km = 2.0 * _check_radius(earth_radius_km)
    resolved = _check_dtype(dtype)
    vessel_xyz = _unit_vectors(vessel_lat_arr, vessel_lon_arr, resolved)
    if vessel_lat_arr.size == 1 and shape == lats.shape:
        return _one_to_many_km(vessel_xyz, lats, lons, resolved, diameter_km)
    point_xyz = _unit_vectors(lats, lons, resolved)
    return _pairwise_km(vessel_xyz, point_xyz, shape, resolved, diameter_km)


def find_closest_platform(
    vessel_lat: float,
    vessel_lon: float,
    platform_lats: ArrayLike,
    platform_lons: ArrayLike,
    *,
    earth_radius_km: float = EARTH_RADIUS_KM,
) -> tuple[list[int], float]:
    """Find every platform at the minimum great-circle distance from one vessel.

    Args:
        vessel_lat: Vessel latitude in degrees.
        vessel_lon: Vessel longitude in degrees.
        platform_lats: Platform latitudes in degrees, non-empty, finite.
        platform_lons: Platform longitudes in degrees, same shape.
        earth_radius_km: Sphere radius in km.

    Returns:
        ``(indices, distance_km)``: the flat indices (ascending) of all
        platforms whose distance equals the minimum exactly (ties), and that
        distance in km. A NaN vessel coordinate gives ``([], nan)``.

    Raises:
        InputError: Invalid coordinates, shapes, NaN platforms or a vessel that
            is not a single point; the message names the argument.
    """
    for value, name in ((vessel_lat, "vessel_lat"), (vessel_lon, "vessel_lon")):
        if np.ndim(value) != 0:
            raise InputError(
                f"{name} must be a single value; use PlatformIndex.query for many vessels."
            )
    lats, lons = _check_platforms(
        platform_lats, platform_lons, "platform_lats", "platform_lons", finite=True
    )
    distances = haversine_vectorized(
        vessel_lat, vessel_lon, lats, lons, earth_radius_km=earth_radius_km
    ).ravel()
    minimum = distances.min()
    if np.isnan(minimum):
        return [], math.nan
    return np.flatnonzero(distances == minimum).tolist(), float(minimum)


class PlatformIndex:
    """A fixed set of points (platforms, coastline vertices) for many distance queries.

    Built once: the points' unit vectors are precomputed and put in a k-d tree
    (``scipy.spatial.cKDTree``); the chord length between unit vectors grows
    monotonically with the arc length, so tree neighbours are great-circle
    neighbours. :meth:`query` is exact: it returns the same indices and
    distances (bit for bit) as sorting :func:`haversine_vectorized` results,
    with ties ordered by the lower index. Holds 1e6 points (about 100 MB) and
    answers 1e5 vessels in about a second on 2 cores.

    Args:
        lats: Point latitudes in degrees, any shape (flattened), non-empty, finite.
        lons: Point longitudes in degrees, same shape.
        earth_radius_km: Sphere radius in km.

    Raises:
        InputError: Invalid, NaN, empty or mismatched coordinates.
    """

    def __init__(
        self, lats: ArrayLike, lons: ArrayLike, *, earth_radius_km: float = EARTH_RADIUS_KM
    ) -> None:
        from scipy.spatial import cKDTree

        lat, lon = _check_platforms(lats, lons, "lats", "lons", finite=True)
        self.lats: np.ndarray = lat.ravel().copy()
        self.lons: np.ndarray = lon.ravel().copy()
        self.lats.flags.writeable = False
        self.lons.flags.writeable = False
        self.earth_radius_km = _check_radius(earth_radius_km)
        self._xyz = {_F64: _unit_vectors(self.lats, self.lons, _F64)}
        self._tree = cKDTree(np.column_stack(self._xyz[_F64]), balanced_tree=False)

    def __len__(self) -> int:
        """Number of indexed points."""
        return self.lats.size

    def _vectors(self, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return the points' unit vectors in ``dtype`` (float32 made once, on first use)."""
        if dtype not in self._xyz:
            self._xyz[dtype] = tuple(c.astype(dtype) for c in self._xyz[_F64])  # type: ignore[assignment]
        return self._xyz[dtype]

    def distances(
        self, vessel_lat: ArrayLike, vessel_lon: ArrayLike, *, dtype: DTypeLike = np.float64
    ) -> np.ndarray:
        """Distances in km from vessels to every indexed point (brute force, precomputed).

        Float64 results equal :func:`haversine_vectorized` bit for bit; this is
        its fast path for a fixed point set.

        Args:
            vessel_lat: Vessel latitude(s) in degrees, shape ``S``.
            vessel_lon: Vessel longitude(s) in degrees, shape ``S``.
            dtype: ``np.float64`` or ``np.float32`` (faster, error a few metres).

        Returns:
            Distances in km, shape ``S + (M,)``; NaN rows for NaN vessels.
        """
        lat, lon = _check_pair(vessel_lat, vessel_lon, "vessel_lat", "vessel_lon")
        resolved = _check_dtype(dtype)
        vessel_xyz = tuple(c[..., None] for c in _unit_vectors(lat, lon, resolved))
        return _pairwise_km(
            vessel_xyz,  # type: ignore[arg-type]
            self._vectors(resolved),
            (*lat.shape, len(self)),
            resolved,
            2.0 * self.earth_radius_km,
        )

    def _exact_km(self, vessel_xyz: tuple[np.ndarray, ...], indices: np.ndarray) -> np.ndarray:
        """Distances from vessels ``[n]`` to candidate points ``indices [n, c]``, canonically."""
        out = np.empty(indices.shape)
        work = (np.empty(indices.shape), np.empty(indices.shape))
        points = tuple(c[indices] for c in self._vectors(_F64))
        vessel = tuple(c[:, None] for c in vessel_xyz)
        _arc_km_into(vessel, points, out, work, 2.0 * self.earth_radius_km)  # type: ignore[arg-type]
        return out

    def query(self, vessel_lats: ArrayLike, vessel_lons: ArrayLike, k: int = 1) -> NearestPlatforms:
        """Find the ``k`` nearest points to each vessel, exactly.

        The tree proposes ``k + 3`` candidates whose distances are recomputed
        with the canonical formula; where a tie with a point outside the
        candidates cannot be excluded, all points within the k-th chord (plus a
        1e-9 relative margin) are fetched and compared.

        Args:
            vessel_lats: Vessel latitudes in degrees, shape ``S``.
            vessel_lons: Vessel longitudes in degrees, shape ``S``.
            k: Number of neighbours, 1 to ``len(self)``.

        Returns:
            ``NearestPlatforms(distances_km, indices)``, each shape ``S + (k,)``,
            sorted by distance then index; NaN and -1 for NaN vessels.

        Raises:
            InputError: Invalid coordinates or ``k``.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(self):
            raise InputError(f"k must be an integer from 1 to {len(self)} (the points); got {k!r}.")
        lat, lon = _check_pair(vessel_lats, vessel_lons, "vessel_lats", "vessel_lons")
        lat_flat, lon_flat = lat.ravel(), lon.ravel()
        distances = np.full((lat_flat.size, k), np.nan)
        indices = np.full((lat_flat.size, k), -1, dtype=np.int64)
        valid = np.flatnonzero(~(np.isnan(lat_flat) | np.isnan(lon_flat)))
        if valid.size:
            vessel_xyz = _unit_vectors(lat_flat[valid], lon_flat[valid], _F64)
            found_km, found = self._query_valid(vessel_xyz, int(k))
            distances[valid], indices[valid] = found_km, found
        return NearestPlatforms(distances.reshape(*lat.shape, k), indices.reshape(*lat.shape, k))

    def _query_valid(
        self, vessel_xyz: tuple[np.ndarray, np.ndarray, np.ndarray], k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact k nearest for finite vessels given as unit vectors ``[n]`` each."""
        queries = np.column_stack(vessel_xyz)
        candidates = min(len(self), k + _TIE_MARGIN)
        chords, found = self._tree.query(queries, k=candidates, workers=-1)
        chords = chords.reshape(len(queries), candidates)
        found = found.reshape(len(queries), candidates).astype(np.int64)
        exact_km = self._exact_km(vessel_xyz, found)
        order = np.lexsort((found, exact_km))[:, :k]
        result_km = np.take_along_axis(exact_km, order, axis=1)
        result = np.take_along_axis(found, order, axis=1)
        radius = chords[:, k - 1] * (1.0 + _CHORD_REL_SLACK) + _CHORD_ABS_SLACK
        if candidates < len(self):
            unsure = np.flatnonzero(chords[:, -1] <= radius)
            if unsure.size:
                neighbours = self._tree.query_ball_point(
                    queries[unsure], radius[unsure], workers=-1, return_sorted=False
                )
                for row, near in zip(unsure, neighbours, strict=True):
                    near_idx = np.asarray(near, dtype=np.int64)[None, :]
                    row_xyz = tuple(c[row : row + 1] for c in vessel_xyz)
                    near_km = self._exact_km(row_xyz, near_idx)[0]
                    best = np.lexsort((near_idx[0], near_km))[:k]
                    result_km[row], result[row] = near_km[best], near_idx[0, best]
        return result_km, result


def _sphere_frame(
    lat_deg: np.ndarray, lon_deg: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the unit position, north and east vectors ``[..., 3]`` at points."""
    phi, lam = np.radians(lat_deg), np.radians(lon_deg)
    sin_phi, cos_phi, sin_lam, cos_lam = np.sin(phi), np.cos(phi), np.sin(lam), np.cos(lam)
    position = np.stack([cos_phi * cos_lam, cos_phi * sin_lam, sin_phi], axis=-1)
    north = np.stack([-sin_phi * cos_lam, -sin_phi * sin_lam, cos_phi], axis=-1)
    east = np.stack([-sin_lam, cos_lam, np.zeros_like(lam)], axis=-1)
    return position, north, east


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dot product over the last axis."""
    return np.einsum("...i,...i->...", a, b)


def _broadcast_checked(**named: ArrayLike) -> list[np.ndarray]:
    """Validate (``*lat*`` names as latitudes, ``*lon*`` as longitudes) and broadcast."""
    arrays = []
    for name, value in named.items():
        if "lat" in name:
            arrays.append(_check_lat(value, name))
        elif "lon" in name:
            arrays.append(_check_lon(value, name))
        else:
            arrays.append(_float_array(value, name))
    shape = _broadcast_shape(*((name, a.shape) for name, a in zip(named, arrays, strict=True)))
    return [np.broadcast_to(a, shape) for a in arrays]


def initial_bearing_deg(
    lat1: ArrayLike, lon1: ArrayLike, lat2: ArrayLike, lon2: ArrayLike
) -> np.ndarray:
    """Initial compass bearing of the great circle from point 1 to point 2.

    Args:
        lat1: Start latitude(s) in degrees.
        lon1: Start longitude(s) in degrees.
        lat2: End latitude(s) in degrees.
        lon2: End longitude(s) in degrees. All four broadcast together.

    Returns:
        Bearing in degrees in [0, 360), 0 = north, 90 = east. Identical points
        give 0; at a pole, north is taken along the meridian of ``lon1``.
    """
    lat1_arr, lon1_arr, lat2_arr, lon2_arr = _broadcast_checked(
        lat1=lat1, lon1=lon1, lat2=lat2, lon2=lon2
    )
    _, north, east = _sphere_frame(lat1_arr, lon1_arr)
    target, _, _ = _sphere_frame(lat2_arr, lon2_arr)
    bearing = np.degrees(np.arctan2(_dot(target, east), _dot(target, north))) % 360.0
    return np.where(bearing >= 360.0, 0.0, bearing)


def destination_point(
    lat: ArrayLike,
    lon: ArrayLike,
    bearing_deg: ArrayLike,
    distance_km: ArrayLike,
    *,
    earth_radius_km: float = EARTH_RADIUS_KM,
) -> tuple[np.ndarray, np.ndarray]:
    """Point reached by travelling along a great circle.

    Args:
        lat: Start latitude(s) in degrees.
        lon: Start longitude(s) in degrees.
        bearing_deg: Initial compass bearing(s) in degrees.
        distance_km: Distance(s) travelled in km (negative goes backwards).
            All four broadcast together.
        earth_radius_km: Sphere radius in km.

    Returns:
        ``(lat_deg, lon_deg)`` of the destination, lon in [-180, 180].
    """
    lat_arr, lon_arr, bearing, distance = _broadcast_checked(
        lat=lat, lon=lon, bearing_deg=bearing_deg, distance_km=distance_km
    )
    angle = distance / _check_radius(earth_radius_km)
    position, north, east = _sphere_frame(lat_arr, lon_arr)
    theta = np.radians(bearing)[..., None]
    direction = np.cos(theta) * north + np.sin(theta) * east
    end = np.cos(angle)[..., None] * position + np.sin(angle)[..., None] * direction
    x, y, z = end[..., 0], end[..., 1], end[..., 2]
    return (
        np.asarray(np.degrees(np.arctan2(z, np.hypot(x, y)))),
        np.asarray(np.degrees(np.arctan2(y, x))),
    )


def closest_point_of_approach(
    vessel_lat: ArrayLike,
    vessel_lon: ArrayLike,
    heading_deg: ArrayLike,
    target_lat: ArrayLike,
    target_lon: ArrayLike,
    *,
    earth_radius_km: float = EARTH_RADIUS_KM,
) -> tuple[np.ndarray, np.ndarray]:
    """Closest point of approach of a vessel holding a great-circle course to a target.

    The vessel moves along the great circle through its position with initial
    bearing ``heading_deg``. The cross-track distance of the target from that
    circle is the CPA distance and the along-track distance is how far the
    vessel travels to reach it. Choice for targets behind the vessel (negative
    along-track, i.e. more than 90 degrees off the bow): the vessel is already
    past the CPA, so the CPA distance is the current distance and along-track 0.

    Args:
        vessel_lat: Vessel latitude(s) in degrees.
        vessel_lon: Vessel longitude(s) in degrees.
        heading_deg: Vessel course(s), compass degrees.
        target_lat: Target latitude(s) in degrees.
        target_lon: Target longitude(s) in degrees. All five broadcast together.
        earth_radius_km: Sphere radius in km.

    Returns:
        ``(cpa_distance_km, along_track_km)``, both >= 0 (NaN for NaN input).
    """
    v_lat, v_lon, heading, t_lat, t_lon = _broadcast_checked(
        vessel_lat=vessel_lat,
        vessel_lon=vessel_lon,
        heading_deg=heading_deg,
        target_lat=target_lat,
        target_lon=target_lon,
    )
    radius = _check_radius(earth_radius_km)
    position, north, east = _sphere_frame(v_lat, v_lon)
    target, _, _ = _sphere_frame(t_lat, t_lon)
    theta = np.radians(heading)[..., None]
    course = np.cos(theta) * north + np.sin(theta) * east
    normal = np.cross(position, course)
    along, forward = _dot(target, course), _dot(target, position)
    cross_track = np.arctan2(np.abs(_dot(target, normal)), np.hypot(forward, along)) * radius
    along_track = np.arctan2(along, forward) * radius
    current = haversine_vectorized(v_lat, v_lon, t_lat, t_lon, earth_radius_km=radius)
    behind = along_track < 0
    return np.where(behind, current, cross_track), np.where(behind, 0.0, along_track)


def _csv_columns(header: list[str]) -> dict[str, int]:
    """Column index per field of :data:`CSV_COLUMNS` found in a lower-cased header."""
    found: dict[str, int] = {}
    for key, names in CSV_COLUMNS.items():
        index = next((header.index(name) for name in names if name in header), None)
        if index is not None:
            found[key] = index
    return found


def read_points_csv(path: str | os.PathLike[str]) -> LabelledPoints:
    """Read named points (platforms, vessels) from a CSV file with a header row.

    Accepted headers, in any case: ``lat`` or ``latitude``; ``lon``, ``lng``,
    ``long`` or ``longitude``; optional ``name``, ``id`` and ``mmsi``. Blank
    rows are skipped.

    Args:
        path: CSV file.

    Returns:
        The points in file order, with labels (name, else id, else mmsi, else
        the 0-based row index) and ids (id, else mmsi, else the row index).

    Raises:
        WakeModelError: Unreadable file, missing columns (the message names the
            columns found and those expected), no rows, or a row with a
            missing, non-numeric or out-of-range coordinate (one line naming
            the file and the row's line number).
    """
    import csv

    try:
        with Path(path).open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise WakeModelError(f"{path}: cannot read CSV ({exc}).") from None
    if not rows:
        raise WakeModelError(f"{path}: empty file; expected a header with lat, lon.")
    header = [column.strip().lower() for column in rows[0]]
    columns = _csv_columns(header)
    missing = [key for key in ("lat", "lon") if key not in columns]
    if missing:
        found = ", ".join(column for column in header if column) or "none"
        raise WakeModelError(
            f"{path}: missing column(s) {', '.join(missing)} (found: {found}); the header "
            "needs lat (or latitude) and lon (or lng, long, longitude), optionally name, id, mmsi."
        )

    def cell(row: list[str], key: str) -> str:
        index = columns.get(key)
        return row[index].strip() if index is not None and index < len(row) else ""

    lats, lons, labels, ids = [], [], [], []
    for line, row in enumerate(rows[1:], start=2):
        if not any(value.strip() for value in row):
            continue
        values = []
        for key, limit in (("lat", 90.0), ("lon", math.inf)):
            text = cell(row, key)
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if not math.isfinite(value) or abs(value) > limit:
                expected = "a latitude in [-90, 90]" if limit == 90.0 else "a finite longitude"
                raise WakeModelError(
                    f"{path} row {line}: {header[columns[key]]} {text!r} is not {expected}."
                )
            values.append(value)
        position = str(len(lats))
        lats.append(values[0])
        lons.append(values[1])
        identifier = cell(row, "id") or cell(row, "mmsi") or position
        labels.append(cell(row, "name") or identifier)
        ids.append(identifier)
    if not lats:
        raise WakeModelError(f"{path}: no data rows below the header.")
    return LabelledPoints(np.array(lats), _check_lon(np.array(lons), "lon"), labels, ids)


def nearest_records(
    platforms: LabelledPoints, vessels: LabelledPoints, k: int = 1
) -> list[dict[str, Any]]:
    """Nearest platforms of each vessel as JSON-ready records (used by ``cli.py nearest``).

    Args:
        platforms: Platform points (non-empty).
        vessels: Vessel points.
        k: Platforms per vessel; capped at the number of platforms.

    Returns:
        One record per vessel: ``{"vessel", "lat", "lon", "nearest": [{"rank",
        "index", "name", "lat", "lon", "distance_km"}, ...]}``, nearest first,
        equal distances by lower index.
    """
    index = PlatformIndex(platforms.lats, platforms.lons)
    found = index.query(vessels.lats, vessels.lons, k=min(k, len(index)))
    records = []
    for row, label in enumerate(vessels.labels):
        nearest = [
            {
                "rank": rank,
                "index": int(platform),
                "name": platforms.labels[platform],
                "lat": float(index.lats[platform]),
                "lon": float(index.lons[platform]),
                "distance_km": float(distance),
            }
            for rank, (platform, distance) in enumerate(
                zip(found.indices[row], found.distances_km[row], strict=True), start=1
            )
        ]
        records.append(
            {
                "vessel": label,
                "lat": float(vessels.lats[row]),
                "lon": float(vessels.lons[row]),
                "nearest": nearest,
            }
        )
    return records
