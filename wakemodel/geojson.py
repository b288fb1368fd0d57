"""GeoJSON (RFC 7946) features in WGS 84: what ``scan`` and ``synth --scene`` write.

RFC 7946 fixes the CRS to WGS 84 longitude/latitude (no ``crs`` member), puts
longitude first, and allows a closed set of geometry types. Coordinates are
rounded to 7 decimals (about 1 cm), and NaN property values become ``null``
(JSON has no NaN).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from wakemodel._io import atomic_write_text

__all__ = ["feature_collection", "line_string", "point", "write_geojson"]

COORDINATE_DECIMALS = 7


def _position(lon: float, lat: float) -> list[float]:
    """``[lon, lat]`` rounded, longitude wrapped into [-180, 180)."""
    wrapped = (float(lon) + 180.0) % 360.0 - 180.0
    return [round(wrapped, COORDINATE_DECIMALS), round(float(lat), COORDINATE_DECIMALS)]


def _clean(value: Any) -> Any:
    """JSON-ready copy of a property value: NaN -> None, numpy scalars -> Python."""
    if isinstance(value, Mapping):
        return {str(key): _clean(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(item) for item in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def point(lon: float, lat: float, properties: Mapping[str, Any]) -> dict[str, Any]:
    """A Point feature at (lon, lat) degrees."""
    return {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": _position(lon, lat)},
        "properties": _clean(properties),
    }


def line_string(
    positions: Sequence[tuple[float, float]], properties: Mapping[str, Any]
) -> dict[str, Any]:
    """A LineString feature through ``(lon, lat)`` positions (degrees; at least 2)."""
    if len(positions) < 2:
        raise ValueError("A LineString needs at least 2 positions.")
    return {
        "type": "Feature",
        "geometry": {
            "type": "LineString",
            "coordinates": [_position(lon, lat) for lon, lat in positions],
        },
        "properties": _clean(properties),
    }


def feature_collection(features: Iterable[Mapping[str, Any]], **members: Any) -> dict[str, Any]:
    """A FeatureCollection; ``members`` become foreign members (e.g. ``scene``)."""
    return {"type": "FeatureCollection", **_clean(members), "features": list(features)}


def write_geojson(path: str | os.PathLike[str], collection: Mapping[str, Any]) -> Path:
    """Write a FeatureCollection atomically (UTF-8, no NaN); returns the path."""
    return atomic_write_text(path, json.dumps(collection, allow_nan=False, indent=1) + "\n")
