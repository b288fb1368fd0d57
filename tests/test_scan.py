"""Whole-scene scanning: scene reading, the CFAR detector, windows, GeoJSON and the CLI."""

from __future__ import annotations

import csv
import json
import math
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner
from PIL import Image

from wakemodel.cli import main
from wakemodel.detect import detect_candidates
from wakemodel.errors import WakeModelError
from wakemodel.georef import NotGeoreferencedError
from wakemodel.keypoints import angle_difference_deg
from wakemodel.scan import VesselPosition, read_vessels, scan, write_scan
from wakemodel.scene import open_scene
from wakemodel.scene_synth import TRUTH_COLUMNS, SceneWake, write_synthetic_scene

SCENE_PX = 1024
CHIP_PX = 256
GEOMETRY_TYPES = {
    "Point",
    "MultiPoint",
    "LineString",
    "MultiLineString",
    "Polygon",
    "MultiPolygon",
    "GeometryCollection",
}


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[SceneWake]]:
    path = tmp_path_factory.mktemp("scene") / "scene.tif"
    truth = write_synthetic_scene(path, wakes=4, size=SCENE_PX, seed=3, chip_px=CHIP_PX)
    return path, truth


class OraclePredictor:
    """Answers each window with the truth keypoints it was handed, in call order."""

    def __init__(self, keypoints_norm: list[np.ndarray], image_size: int = CHIP_PX) -> None:
        self.queue = list(keypoints_norm)
        self.image_size = image_size
        self.images: list[np.ndarray] = []

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self.images.extend(images[:, 0])
        keypoints = np.zeros((len(images), 3, 2), np.float32)
        visibility = np.zeros((len(images), 3), np.float32)
        for row in range(len(images)):
            truth = self.queue.pop(0)
            keypoints[row, : len(truth)] = truth
            visibility[row, : len(truth)] = 1.0
        return keypoints, visibility, np.full((len(images), 3, 2), 0.01, np.float32)


def _window_keypoints(wake: SceneWake, side: int, shift: tuple[float, float]) -> np.ndarray:
    """The truth keypoints normalised in the ``side``-pixel window centred at vessel + shift."""
    centre = np.array([wake.x_px, wake.y_px]) + shift
    origin = np.floor(centre - side / 2)
    points = np.vstack([[wake.x_px, wake.y_px], wake.ends_px])
    return (points - origin) / side


def _window_side(scene_path: Path) -> tuple[int, float]:
    with open_scene(scene_path) as band:
        return CHIP_PX, CHIP_PX * band.pixel_size_m


def _check_rfc7946(collection: dict) -> None:
    """The RFC 7946 rules we rely on: closed types, no crs member, lon/lat positions."""
    assert collection["type"] == "FeatureCollection"
    assert "crs" not in collection
    for feature in collection["features"]:
        assert feature["type"] == "Feature"
        assert isinstance(feature["properties"], dict)
        geometry = feature["geometry"]
        assert geometry["type"] in GEOMETRY_TYPES
        positions = (
            [geometry["coordinates"]] if geometry["type"] == "Point" else geometry["coordinates"]
        )
        if geometry["type"] == "LineString":
            assert len(positions) >= 2
        for lon, lat in positions:
            assert -180.0 <= lon < 180.0 and -90.0 <= lat <= 90.0
            # The scenes are in the North Sea: longitude 3-9 E, latitude 53-57 N.
            assert 2.0 < lon < 10.0 and 53.0 < lat < 58.0


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_synthetic_scene_truth_files(scene: tuple[Path, list[SceneWake]]) -> None:
    path, truth = scene
    with path.with_suffix(".csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == TRUTH_COLUMNS
    assert [row["id"] for row in rows] == [wake.id for wake in truth]
    collection = json.loads(path.with_suffix(".geojson").read_text())
    _check_rfc7946(collection)
    assert len(collection["features"]) == len(truth)
    with rasterio.open(path) as dataset:
        pixels = dataset.read(1)
        assert dataset.dtypes[0] == "uint16" and dataset.nodata == 0
        assert dataset.tags()["BOA_ADD_OFFSET"] == "-1000"
    assert (pixels == 0).any()
    sea = pixels[pixels > 0]
    for wake in truth:
        # The vessel is among the brightest 0.1% of the sea.
        assert pixels[int(wake.y_px), int(wake.x_px)] >= np.percentile(sea, 99.9)
        lon, lat = collection["features"][int(wake.id[-3:])]["geometry"]["coordinates"]
        assert lat == pytest.approx(wake.lat, abs=1e-6) and lon == pytest.approx(wake.lon, abs=1e-6)


def test_scene_reads_reflectance_windows_padded_with_nan(
    scene: tuple[Path, list[SceneWake]],
) -> None:
    path, _ = scene
    with rasterio.open(path) as dataset:
        dn = dataset.read(1)
    with open_scene(path) as band:
        assert band.band == "B08" and band.offset == -1000 and band.quantification == 10000
        window = band.read_window(SCENE_PX - 10, 500, 30, 20)
    expected = (dn[500:520, SCENE_PX - 10 :].astype(np.float32) - 1000) / 10000
    np.testing.assert_allclose(window[:, :10], expected, rtol=1e-6)
    assert np.isnan(window[:, 10:]).all()


def test_vessel_given_in_lat_lon_lands_on_its_pixel(
    scene: tuple[Path, list[SceneWake]], tmp_path: Path
) -> None:
    path, truth = scene
    csv_path = _write_csv(
        tmp_path / "ais.csv",
        ["mmsi", "latitude", "longitude"],
        [[f"24400{index}", wake.lat, wake.lon] for index, wake in enumerate(truth)],
    )
    with open_scene(path) as band:
        positions = read_vessels(csv_path, band)
    assert [position.id for position in positions] == [f"24400{i}" for i in range(len(truth))]
    assert [position.mmsi for position in positions] == [position.id for position in positions]
    for position, wake in zip(positions, truth, strict=True):
        assert position.x_px == pytest.approx(wake.x_px, abs=0.01)
        assert position.y_px == pytest.approx(wake.y_px, abs=0.01)


def test_scan_maps_window_answers_back_to_the_earth(
    scene: tuple[Path, list[SceneWake]], tmp_path: Path
) -> None:
    path, truth = scene
    side, chip_m = _window_side(path)
    shift = (3.0, -2.0)
    oracle = OraclePredictor([_window_keypoints(wake, side, shift) for wake in truth])
    positions = [
        VesselPosition(wake.id, wake.x_px + shift[0], wake.y_px + shift[1], "csv") for wake in truth
    ]
    platforms = _write_csv(
        tmp_path / "platforms.csv",
        ["name", "lat", "lon"],
        [["Alpha", truth[0].lat + 0.05, truth[0].lon], ["Bravo", 50.0, 1.0]],
    )
    result = scan(
        oracle,
        path,
        vessels=positions,
        chip_m=chip_m,
        second_look=False,
        tta=False,
        platforms=platforms,
    )
    assert result.window_px == side
    assert [vessel.position.id for vessel in result.vessels] == [wake.id for wake in truth]
    for vessel, wake in zip(result.vessels, truth, strict=True):
        assert vessel.wake_found
        np.testing.assert_allclose(vessel.keypoints_px[0], [wake.x_px, wake.y_px], atol=0.02)
        assert abs(angle_difference_deg(vessel.location.heading_true_deg, wake.heading_deg)) < 0.2
        assert vessel.location.wake_length_m == pytest.approx(wake.wake_length_m, rel=1e-3)
        assert vessel.location.vessel_lat == pytest.approx(wake.lat, abs=1e-6)
        assert vessel.vertex_refinement_m == pytest.approx(math.hypot(3, 2) * 10, rel=0.01)
    # The window the model saw is centred on the vessel (shifted by 3, -2 px of 256): the
    # vessel saturates the stretch there.
    for image in oracle.images:
        centre = image.shape[0] // 2
        assert image[centre - 2 : centre + 3, centre - 3 : centre + 2].max() >= 0.99
    out = write_scan(result, tmp_path / "vessels.geojson")
    collection = json.loads(out.read_text())
    _check_rfc7946(collection)
    points = [f for f in collection["features"] if f["geometry"]["type"] == "Point"]
    lines = [f for f in collection["features"] if f["geometry"]["type"] == "LineString"]
    assert len(points) == len(truth)
    assert len(lines) == sum(len(wake.ends_px) for wake in truth)
    nearest = points[0]["properties"]
    assert nearest["platform"] == "Alpha"
    assert nearest["platform_distance_km"] == pytest.approx(5.56, abs=0.05)  # 0.05 deg north
    assert nearest["cpa_km"] <= nearest["platform_distance_km"]
    heading = points[0]["properties"]["heading_deg"]
    assert abs(angle_difference_deg(heading, truth[0].heading_deg)) < 0.2
    assert points[0]["geometry"]["coordinates"][0] == pytest.approx(truth[0].lon, abs=1e-6)


def test_edge_window_is_padded_and_outside_vessel_skipped(
    scene: tuple[Path, list[SceneWake]],
) -> None:
    path, _ = scene
    _, chip_m = _window_side(path)
    oracle = OraclePredictor([np.array([[0.5, 0.5], [0.5, 0.8]])])
    positions = [
        VesselPosition("edge", SCENE_PX - 2.0, SCENE_PX / 2, "csv"),
        VesselPosition("outside", SCENE_PX + 50.0, 10.0, "csv"),
    ]
    result = scan(oracle, path, vessels=positions, chip_m=chip_m, second_look=False, tta=False)
    assert [vessel.position.id for vessel in result.vessels] == ["edge"]
    assert [(pos.id, reason) for pos, reason in result.skipped] == [
        ("outside", "outside the scene")
    ]
    image = oracle.images[0]
    assert np.isfinite(image).all()
    # The right half lies outside the scene: filled with one value (the window's median sea).
    outside = image[:, -image.shape[1] // 4 :]
    assert outside.std() < 0.02
    assert image[:, : image.shape[1] // 4].std() > 0.05
    assert "outside" in result.to_geojson()["skipped"][0]["id"]


class FixedPredictor:
    """Always the same answer: vertex at the window centre, one end 0.4 window below it."""

    image_size = 64

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self.calls += 1
        keypoints = np.tile(
            np.array([[0.5, 0.5], [0.5, 0.9], [0.0, 0.0]], np.float32), (len(images), 1, 1)
        )
        visibility = np.tile(np.array([1.0, 1.0, 0.0], np.float32), (len(images), 1))
        # Sharper on every call: the second look is the more certain one.
        spread = np.full((len(images), 3, 2), 0.02 / self.calls, np.float32)
        return keypoints, visibility, spread


def test_second_look_centres_the_window_on_the_wake(
    scene: tuple[Path, list[SceneWake]],
) -> None:
    path, _ = scene
    side, chip_m = _window_side(path)
    x, y = 500.0, 400.0
    result = scan(
        FixedPredictor(), path, vessels=[VesselPosition("v", x, y, "csv")], chip_m=chip_m, tta=False
    )
    (vessel,) = result.vessels
    # First look: vertex at (x, y), far end 0.4 side below; the second window is centred midway.
    centre_y = y + 0.2 * side
    assert vessel.window == (math.floor(x - side / 2), math.floor(centre_y - side / 2), side)
    np.testing.assert_allclose(vessel.keypoints_px[0], [x, centre_y], atol=1.0)
    assert vessel.location.heading_true_deg == pytest.approx(0.0, abs=3.0)
    one_look = FixedPredictor()
    result = scan(
        one_look,
        path,
        vessels=[VesselPosition("v", x, y, "csv")],
        chip_m=chip_m,
        second_look=False,
    )
    assert result.vessels[0].window[1] == math.floor(y - side / 2)
    # By default every look is averaged over the 8 flips/rotations: one network call each.
    assert one_look.calls == 8


def test_detector_finds_every_vessel_and_little_else(
    scene: tuple[Path, list[SceneWake]],
) -> None:
    path, truth = scene
    with open_scene(path) as band:
        candidates = detect_candidates(band)
    found = np.stack([candidates.x_px, candidates.y_px], axis=1)
    for wake in truth:
        assert np.hypot(*(found - [wake.x_px, wake.y_px]).T).min() < 2.0
    clutter = max(1, len(truth) // 10) + max(1, len(truth) // 3)  # platforms and clouds
    assert len(candidates) <= len(truth) + clutter


def _fake_safe(root: Path, product: str, offset_tag: str, offset: int) -> Path:
    """A minimal .SAFE product: the B08 JPEG2000 band and the product metadata."""
    safe = root / f"S2A_MSI{product}_20230604T105031_N0509_R051_T31UFU_20230604T150000.SAFE"
    folder = safe / "GRANULE" / f"{product}_T31UFU_A041512_20230604T105031" / "IMG_DATA"
    if product == "L2A":
        folder = folder / "R10m"
    folder.mkdir(parents=True)
    name = "T31UFU_20230604T105031_B08" + ("_10m" if product == "L2A" else "") + ".jp2"
    dn = np.full((64, 64), 1300, np.uint16)
    dn[:8] = 0
    dn[30, 40] = 4000
    with rasterio.open(
        folder / name,
        "w",
        driver="JP2OpenJPEG",
        width=64,
        height=64,
        count=1,
        dtype="uint16",
        crs="EPSG:32631",
        transform=Affine(10.0, 0.0, 600000.0, 0.0, -10.0, 5800000.0),
        QUALITY=100,
        REVERSIBLE=True,
    ) as dataset:
        dataset.write(dn, 1)
    root_tag = ET.Element(f"Level-{product[1:]}_User_Product")
    ET.SubElement(root_tag, "PROCESSING_BASELINE").text = "05.09"
    ET.SubElement(root_tag, "QUANTIFICATION_VALUE").text = "10000"
    offsets = ET.SubElement(root_tag, "Offsets")
    for band_id in range(13):
        element = ET.SubElement(offsets, offset_tag, band_id=str(band_id))
        element.text = str(offset if band_id == 7 else -999)
    ET.ElementTree(root_tag).write(safe / f"MTD_MSI{product}.xml")
    return safe


@pytest.mark.parametrize(
    ("product", "offset_tag"), [("L2A", "BOA_ADD_OFFSET"), ("L1C", "RADIO_ADD_OFFSET")]
)
def test_safe_folder_band_offset_and_nodata(tmp_path: Path, product: str, offset_tag: str) -> None:
    safe = _fake_safe(tmp_path, product, offset_tag, -1000)
    with open_scene(safe, band="b08") as band:
        assert band.band == "B08" and band.product == product
        assert band.processing_baseline == "05.09"
        window = band.read_window(0, 0, 64, 64)
    assert np.isnan(window[:8]).all()
    assert window[20, 20] == pytest.approx(0.03)
    assert window[30, 40] == pytest.approx(0.3)
    with pytest.raises(WakeModelError, match="no B04 band"):
        open_scene(safe, band="B04")


def test_unusable_scenes_fail_with_one_line(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00" + b"\x17" * 200)
    plain = tmp_path / "plain.tif"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(plain)
    with pytest.raises(WakeModelError, match=r"corrupt\.tif: cannot open it as a raster"):
        open_scene(corrupt)
    with pytest.raises(NotGeoreferencedError, match=r"plain\.tif: not georeferenced"):
        open_scene(plain)
    runner = CliRunner()
    for scene_path, expected in (
        (plain, "not georeferenced"),
        (corrupt, "cannot open it as a raster"),
        (tmp_path / "missing.tif", "no such file"),
    ):
        outcome = runner.invoke(
            main, ["scan", "model.onnx", str(scene_path)], catch_exceptions=False
        )
        assert outcome.exit_code == 2, outcome.output
        lines = [line for line in outcome.output.splitlines() if line.strip()]
        assert len(lines) == 1 and expected in lines[0], outcome.output
        assert not (tmp_path / "vessels.geojson").exists()


def test_cli_scan_with_a_checkpoint(
    scene: tuple[Path, list[SceneWake]], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    path, truth = scene
    vessels = _write_csv(
        tmp_path / "vessels.csv",
        ["id", "x", "y"],
        [[wake.id, wake.x_px, wake.y_px] for wake in truth] + [["far", 5000, 5000]],
    )
    out = tmp_path / "out" / "vessels.csv"
    plot = tmp_path / "scan.png"
    runner = CliRunner()
    outcome = runner.invoke(
        main,
        [
            "scan",
            str(tiny_checkpoint),
            str(path),
            "--vessels",
            str(vessels),
            "--out",
            str(out),
            "--plot",
            str(plot),
            "--accelerator",
            "cpu",
            "--chip-m",
            "2560",
        ],
        catch_exceptions=False,
    )
    assert outcome.exit_code == 0, outcome.output
    assert f"{len(truth)} vessels scanned" in outcome.output
    assert "Skipped 1: far (outside the scene)" in outcome.output
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["id"] for row in rows] == [wake.id for wake in truth]
    assert {"lat", "lon", "heading_deg", "heading_std_deg", "wake_score", "wake_length_m"} <= set(
        rows[0]
    )
    with Image.open(plot) as image:
        assert image.width >= 800 and image.height >= 800


def test_model_files_carry_the_training_chip_extent(tiny_checkpoint: Path) -> None:
    import torch

    from wakemodel.predictors import chip_extent_m, load_predictor

    stored = torch.load(tiny_checkpoint, weights_only=True)["wakemodel_chip_extent_m"]
    # The session's chips are 64-128 px at 10 m.
    assert 640.0 <= stored <= 1280.0
    assert chip_extent_m(load_predictor(tiny_checkpoint, accelerator="cpu")) == stored


def test_parquet_without_geopandas_is_one_clear_line(
    scene: tuple[Path, list[SceneWake]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = scene
    _, chip_m = _window_side(path)
    result = scan(
        FixedPredictor(),
        path,
        vessels=[VesselPosition("v", 500.0, 400.0, "csv")],
        chip_m=chip_m,
        second_look=False,
    )
    monkeypatch.setitem(sys.modules, "geopandas", None)
    out = tmp_path / "vessels.parquet"
    with pytest.raises(WakeModelError, match="needs geopandas"):
        write_scan(result, out, "parquet")
    assert not out.exists() and not list(tmp_path.iterdir())
    rows = write_scan(result, tmp_path / "vessels.csv", "csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("v,")


def test_cli_synth_scene(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "small.tif"
    outcome = runner.invoke(
        main, ["synth", "--scene", str(out), "--wakes", "2", "--size", "512", "--seed", "1"]
    )
    assert outcome.exit_code == 0, outcome.output
    assert "2 wakes" in outcome.output
    with rasterio.open(out) as dataset:
        assert (dataset.width, dataset.height) == (512, 512)
        assert dataset.crs.to_epsg() in (32631, 32632)
    with out.with_suffix(".csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 2
    again = tmp_path / "again.tif"
    runner.invoke(
        main, ["synth", "--scene", str(again), "--wakes", "2", "--size", "512", "--seed", "1"]
    )
    with rasterio.open(out) as first, rasterio.open(again) as second:
        np.testing.assert_array_equal(first.read(1), second.read(1))
    for arguments in (["synth"], ["synth", str(tmp_path / "chips"), "--scene", str(out)]):
        outcome = runner.invoke(main, arguments)
        assert outcome.exit_code == 2 and "OUT_DIR" in outcome.output
