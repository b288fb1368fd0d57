"""Whole Sentinel-2 scenes: one band, read window by window as reflectance.

:func:`open_scene` opens a single-band GeoTIFF/COG, a JPEG2000 band
(``T31UFU_20230604T105031_B08_10m.jp2``) or a Sentinel-2 ``.SAFE`` product folder
(L1C or L2A), where the band is picked by name (default ``B08``, the 10 m
near-infrared band the ShipWakes chips come from). A :class:`SceneBand` never
holds the band in memory: :meth:`SceneBand.read_window` reads one window with
rasterio's windowed reads and :meth:`SceneBand.blocks` walks the band in
overlapping blocks.

Digital numbers become top-of-atmosphere (L1C) or bottom-of-atmosphere (L2A)
reflectance as ``(DN + offset) / quantification``. From processing baseline
04.00 (January 2022) the products carry an offset of -1000
(``RADIO_ADD_OFFSET`` / ``BOA_ADD_OFFSET`` in ``MTD_MSIL1C.xml`` /
``MTD_MSIL2A.xml``); earlier ones have none. A band file outside a ``.SAFE``
folder may carry the same values as GeoTIFF tags (``BOA_ADD_OFFSET``,
``RADIO_ADD_OFFSET``, ``QUANTIFICATION_VALUE``; ``cli.py synth --scene`` writes
them); otherwise the values are used as they are. Nodata pixels (the file's
nodata value; DN 0 in Sentinel-2 products) and pixels outside the scene read
as NaN.

rasterio is imported when a scene is opened (the ``geo`` extra).
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from wakemodel.errors import WakeModelError, first_line
from wakemodel.georef import GeoReference, NotGeoreferencedError, parse_crs

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_BAND",
    "S2_BANDS",
    "SceneBand",
    "SceneBlock",
    "open_scene",
]

DEFAULT_BAND = "B08"
"""Band read from a ``.SAFE`` product unless told otherwise: 10 m near infrared (842 nm),
the band of the ShipWakes chips (Del Prete et al. 2023)."""

S2_BANDS = (
    "B01",
    "B02",
    "B03",
    "B04",
    "B05",
    "B06",
    "B07",
    "B08",
    "B8A",
    "B09",
    "B10",
    "B11",
    "B12",
)
"""Sentinel-2 MSI bands in the order of the metadata's ``band_id`` (0-12)."""

GEO_INSTALL_HINT = "install the geo extra: pip install 'wakemodel[geo]'"

S2_NODATA_DN = 0
"""Digital number of nodata pixels in Sentinel-2 products."""

_OFFSET_TAGS = ("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET")
_QUANTIFICATION_TAGS = ("QUANTIFICATION_VALUE", "BOA_QUANTIFICATION_VALUE")
_BAND_FILE = re.compile(r"_(B\d[\dA])(?:_\d+m)?\.jp2$", re.IGNORECASE)


@dataclass(frozen=True)
class SceneBlock:
    """One block of a band with a halo around it.

    Attributes:
        pixels: float32 ``[H, W]`` reflectance of the block plus its halo; NaN
            for nodata and outside the scene.
        col_off: Scene column of ``pixels[:, 0]``.
        row_off: Scene row of ``pixels[0]``.
        core: ``(col0, row0, col1, row1)`` the block proper, in scene pixels
            (half-open); every scene pixel is in exactly one block's core.
    """

    pixels: np.ndarray
    col_off: int
    row_off: int
    core: tuple[int, int, int, int]


@dataclass
class SceneBand:
    """One band of a scene, opened for windowed reads.

    Attributes:
        path: The band file.
        band: Band name (``B08``) when known, else ``"band 1"``.
        width: Scene width (pixels).
        height: Scene height (pixels).
        georef: The scene's georeference (pixel -> CRS).
        offset: Added to the digital numbers before dividing by ``quantification``.
        quantification: Digital numbers per unit reflectance (1 when unknown).
        nodata: Digital number of nodata pixels, or None.
        product: ``L1C``, ``L2A`` or ``""`` (a band file without product metadata).
        processing_baseline: e.g. ``"04.00"``, or ``""`` when unknown.
    """

    path: Path
    band: str
    width: int
    height: int
    georef: GeoReference
    offset: float = 0.0
    quantification: float = 1.0
    nodata: float | None = None
    product: str = ""
    processing_baseline: str = ""
    _dataset: Any = field(default=None, repr=False)

    def __enter__(self) -> SceneBand:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the band file."""
        if self._dataset is not None:
            self._dataset.close()
            self._dataset = None

    @property
    def pixel_size_m(self) -> float:
        """Mean ground pixel size (metres) at the scene centre."""
        return float(np.mean(self.georef.pixel_size_m))

    def contains(self, x_px: float, y_px: float) -> bool:
        """Whether continuous pixel coordinates lie inside the scene."""
        return 0.0 <= x_px < self.width and 0.0 <= y_px < self.height

    def to_reflectance(self, dn: np.ndarray) -> np.ndarray:
        """Digital numbers ``[H, W]`` -> float32 reflectance, NaN at nodata."""
        reflectance = dn.astype(np.float32)
        if self.nodata is not None:
            nodata = dn == self.nodata
        reflectance += np.float32(self.offset)
        reflectance /= np.float32(self.quantification)
        if self.nodata is not None:
            reflectance[nodata] = np.nan
        return reflectance

    def read_window(self, col_off: int, row_off: int, width: int, height: int) -> np.ndarray:
        """Read a window as reflectance; the part outside the scene is NaN.

        Args:
            col_off: Scene column of the window's left edge (may be negative).
            row_off: Scene row of the window's top edge (may be negative).
            width: Window width (pixels).
            height: Window height (pixels).

        Returns:
            float32 ``[height, width]`` reflectance, NaN outside the scene and at nodata.

        Raises:
            WakeModelError: The file cannot be read there (corrupt or truncated).
        """
        from rasterio.errors import RasterioIOError
        from rasterio.windows import Window

        out = np.full((height, width), np.nan, np.float32)
        col0, row0 = max(col_off, 0), max(row_off, 0)
        col1, row1 = min(col_off + width, self.width), min(row_off + height, self.height)
        if col1 <= col0 or row1 <= row0:
            return out
        try:
            dn = self._dataset.read(1, window=Window(col0, row0, col1 - col0, row1 - row0))
        except RasterioIOError as error:
            raise WakeModelError(
                f"{self.path}: cannot read pixels at column {col0}, row {row0} "
                f"({first_line(error)}); the file may be truncated or corrupt."
            ) from error
        out[row0 - row_off : row1 - row_off, col0 - col_off : col1 - col_off] = self.to_reflectance(
            dn
        )
        return out

    def blocks(self, block_px: int, halo_px: int) -> Iterator[SceneBlock]:
        """Walk the band in square blocks with a halo, row by row.

        Args:
            block_px: Side of a block's core (pixels).
            halo_px: Extra pixels read on every side (NaN outside the scene).

        Yields:
            Blocks of shape ``[block_px + 2 halo_px]`` squared (edge blocks
            too: padded with NaN).
        """
        side = block_px + 2 * halo_px
        for row0 in range(0, self.height, block_px):
            for col0 in range(0, self.width, block_px):
                core = (
                    col0,
                    row0,
                    min(col0 + block_px, self.width),
                    min(row0 + block_px, self.height),
                )
                pixels = self.read_window(col0 - halo_px, row0 - halo_px, side, side)
                yield SceneBlock(pixels, col0 - halo_px, row0 - halo_px, core)

    def overview(self, max_side: int) -> tuple[np.ndarray, float]:
        """The whole band decimated to at most ``max_side`` pixels a side (for quick-looks).

        Returns:
            float32 ``[h, w]`` reflectance (NaN at nodata) and the decimation
            factor (scene pixels per overview pixel).
        """
        factor = max(1.0, max(self.width, self.height) / max_side)
        shape = (max(1, round(self.height / factor)), max(1, round(self.width / factor)))
        dn = self._dataset.read(1, out_shape=shape)
        return self.to_reflectance(dn), factor


def _find_safe_band(safe: Path, band: str) -> Path:
    """The ``.jp2`` of ``band`` in a ``.SAFE`` folder, at its finest resolution."""
    candidates = [
        path
        for path in sorted((safe / "GRANULE").glob("*/IMG_DATA/**/*.jp2"))
        if (match := _BAND_FILE.search(path.name)) and match.group(1).upper() == band
    ]
    if not candidates:
        raise WakeModelError(
            f"{safe}: no {band} band under GRANULE/*/IMG_DATA; check the folder is a complete "
            f"Sentinel-2 product and --band is one of {', '.join(S2_BANDS)}."
        )
    return min(candidates, key=lambda path: _resolution_m(path.name))


def _resolution_m(name: str) -> int:
    match = re.search(r"_(\d+)m\.jp2$", name)
    return int(match.group(1)) if match else 10


def _product_metadata(path: Path) -> Path | None:
    """``MTD_MSIL1C.xml``/``MTD_MSIL2A.xml`` of the ``.SAFE`` product holding ``path``."""
    for folder in (path, *path.parents):
        for name in ("MTD_MSIL2A.xml", "MTD_MSIL1C.xml"):
            if (folder / name).is_file():
                return folder / name
        if folder.suffix.upper() == ".SAFE":
            return None
    return None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _read_product_metadata(metadata: Path, band: str) -> dict[str, Any]:
    """Offset, quantification and processing baseline of ``band`` from a product's XML."""
    try:
        root = ET.parse(metadata).getroot()
    except (OSError, ET.ParseError) as error:
        raise WakeModelError(
            f"{metadata}: cannot read the product metadata ({first_line(error)})."
        ) from error
    band_id = str(S2_BANDS.index(band)) if band in S2_BANDS else None
    found: dict[str, Any] = {
        "product": "L2A" if "L2A" in metadata.name else "L1C",
        "offset": 0.0,
        "quantification": None,
        "baseline": "",
    }
    for element in root.iter():
        tag, text = _local(element.tag), (element.text or "").strip()
        if tag in _OFFSET_TAGS and element.get("band_id") == band_id:
            found["offset"] = float(text)
        elif tag in _QUANTIFICATION_TAGS and found["quantification"] is None:
            found["quantification"] = float(text)
        elif tag == "PROCESSING_BASELINE":
            found["baseline"] = text
    return found


def _tag_float(tags: dict[str, str], names: tuple[str, ...]) -> float | None:
    for name in names:
        if name in tags:
            try:
                return float(tags[name])
            except ValueError:
                return None
    return None


def open_scene(path: str | os.PathLike[str], band: str = DEFAULT_BAND) -> SceneBand:
    """Open one band of a scene for windowed reads (use it as a context manager).

    Args:
        path: A single-band GeoTIFF/COG, a JPEG2000 band, or a Sentinel-2
            ``.SAFE`` folder (L1C or L2A).
        band: Band picked in a ``.SAFE`` folder (``B08``, ``B04``...); ignored
            for a band file (its name comes from the file name or its ``BAND`` tag).

    Returns:
        The opened band.

    Raises:
        WakeModelError: Missing or unreadable file, a band not in the
            product, or a multi-band file (one line naming the file).
        NotGeoreferencedError: The file has no CRS or pixel transform.
    """
    try:
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
    except ImportError as error:
        raise WakeModelError(f"Reading scenes needs rasterio; {GEO_INSTALL_HINT}.") from error

    source = Path(path)
    band = band.upper()
    if not source.exists():
        raise WakeModelError(f"{source}: no such file or folder.")
    if source.is_dir():
        if band not in S2_BANDS:
            raise WakeModelError(f"Unknown band {band!r}; use one of {', '.join(S2_BANDS)}.")
        band_path = _find_safe_band(source, band)
    else:
        band_path = source
    match = _BAND_FILE.search(band_path.name)
    band_name = match.group(1).upper() if match else ""
    metadata_file = _product_metadata(band_path.parent)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            dataset = rasterio.open(band_path)
    except RasterioIOError as error:
        raise WakeModelError(
            f"{band_path}: cannot open it as a raster ({first_line(error)}); give a GeoTIFF, "
            "a JPEG2000 band or a Sentinel-2 .SAFE folder."
        ) from error
    try:
        band_obj = _band(dataset, band_path, band_name, metadata_file)
    except BaseException:
        dataset.close()
        raise
    logger.info(
        "Scene %s: %s, %dx%d px, %s, offset %g, quantification %g",
        band_path.name,
        band_obj.band,
        band_obj.width,
        band_obj.height,
        band_obj.georef.crs.name,
        band_obj.offset,
        band_obj.quantification,
    )
    return band_obj


def _band(dataset: Any, path: Path, band_name: str, metadata_file: Path | None) -> SceneBand:
    """Build the :class:`SceneBand` of an open rasterio dataset."""
    if dataset.count != 1:
        raise WakeModelError(
            f"{path}: has {dataset.count} bands; give a single-band file (e.g. the B08 band) "
            "or the .SAFE folder with --band."
        )
    transform: Affine = dataset.transform
    if dataset.crs is None or transform.is_identity:
        raise NotGeoreferencedError(
            f"{path}: not georeferenced (no CRS or pixel transform); scan needs a GeoTIFF, "
            "JPEG2000 or .SAFE scene with its map projection."
        )
    georef = GeoReference(
        transform, parse_crs(dataset.crs.to_wkt()), dataset.width, dataset.height, str(path)
    )
    tags = {key.upper(): value for key, value in dataset.tags().items()}
    band_name = band_name or tags.get("BAND", "").upper() or "band 1"
    nodata = dataset.nodata
    product = baseline = ""
    offset = _tag_float(tags, _OFFSET_TAGS) or 0.0
    quantification = _tag_float(tags, _QUANTIFICATION_TAGS)
    if metadata_file is not None:
        found = _read_product_metadata(metadata_file, band_name)
        product, baseline, offset = found["product"], found["baseline"], found["offset"]
        quantification = found["quantification"]
        nodata = S2_NODATA_DN if nodata is None else nodata
    quantification = quantification if quantification and math.isfinite(quantification) else 1.0
    return SceneBand(
        path=path,
        band=band_name,
        width=dataset.width,
        height=dataset.height,
        georef=georef,
        offset=offset,
        quantification=quantification,
        nodata=None if nodata is None else float(nodata),
        product=product,
        processing_baseline=baseline,
        _dataset=dataset,
    )
