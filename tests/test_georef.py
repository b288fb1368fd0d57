"""Tests of georeferencing: pixel <-> lat/lon, true bearings, platforms and CPA."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyproj
import pytest
import rasterio
from affine import Affine, dumpsw
from PIL import Image

from wakemodel import geo
from wakemodel.errors import InputError
from wakemodel.georef import (
    GeoReference,
    NotGeoreferencedError,
    geolocate,
    make_platforms,
    read_georeference,
    read_platforms,
)
from wakemodel.keypoints import angle_difference_deg as angle_between_deg

WIDTH, HEIGHT = 48, 40


def _utm_transform(lon: float, lat: float, epsg: int = 32631, pixel_m: float = 10.0) -> Affine:
    """North-up transform whose top-left corner is at (lon, lat), snapped to 10 m."""
    to_utm = pyproj.Transformer.from_crs(4326, epsg, always_xy=True)
    easting, northing = to_utm.transform(lon, lat)
    return Affine(pixel_m, 0.0, round(easting, -1), 0.0, -pixel_m, round(northing, -1))


def _write_geotiff(path: Path, transform: Affine, crs: str = "EPSG:32631") -> Path:
    pixels = np.arange(WIDTH * HEIGHT, dtype=np.uint8).reshape(HEIGHT, WIDTH)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=WIDTH,
        height=HEIGHT,
        count=1,
        dtype="uint8",
        crs=crs,
        transform=transform,
    ) as dataset:
        dataset.write(pixels, 1)
    return path


def _write_png(path: Path) -> Path:
    Image.fromarray(np.zeros((HEIGHT, WIDTH), np.uint8)).save(path)
    return path


def _random_pixels(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.concatenate([[0.0, WIDTH, 0.5, 13.37], rng.uniform(0, WIDTH, 50)])
    y = np.concatenate([[0.0, HEIGHT, 0.5, 29.01], rng.uniform(0, HEIGHT, 50)])
    return x, y


def _assert_round_trip(georef: GeoReference) -> None:
    x, y = _random_pixels()
    lon, lat = georef.pixel_to_lonlat(x, y)
    back_x, back_y = georef.lonlat_to_pixel(lon, lat)
    assert np.abs(back_x - x).max() < 0.01
    assert np.abs(back_y - y).max() < 0.01
    assert not np.allclose(lon, lon[0])


def test_geotiff_round_trip_and_corner_convention(tmp_path: Path) -> None:
    transform = _utm_transform(4.5, 56.0)
    georef = GeoReference.from_path(_write_geotiff(tmp_path / "chip.tif", transform))
    assert georef.crs.to_epsg() == 32631
    assert (georef.width, georef.height) == (WIDTH, HEIGHT)
    _assert_round_trip(georef)
    # Pixel (0, 0)'s top-left corner is the transform origin, its centre rasterio's "center".
    assert georef.pixel_to_crs(0.0, 0.0) == pytest.approx((transform.c, transform.f))
    centre = rasterio.transform.xy(transform, 0, 0, offset="center")
    assert georef.pixel_to_crs(0.5, 0.5) == pytest.approx(centre)
    lon, lat = georef.pixel_to_lonlat(0.0, 0.0)
    assert float(lon) == pytest.approx(4.5, abs=2e-4)
    assert float(lat) == pytest.approx(56.0, abs=2e-4)


@pytest.mark.parametrize("world_suffix", [".pgw", ".pngw", ".wld"])
def test_png_with_world_file_and_crs_matches_geotiff(tmp_path: Path, world_suffix: str) -> None:
    transform = _utm_transform(5.2, 54.3)
    png = _write_png(tmp_path / "chip.png")
    png.with_suffix(world_suffix).write_text(dumpsw(transform))
    with pytest.raises(NotGeoreferencedError, match="--crs"):
        GeoReference.from_path(png)
    georef = GeoReference.from_path(png, crs="EPSG:32631")
    _assert_round_trip(georef)
    reference = GeoReference.from_path(_write_geotiff(tmp_path / "chip.tif", transform))
    x, y = _random_pixels(1)
    np.testing.assert_allclose(
        georef.pixel_to_lonlat(x, y), reference.pixel_to_lonlat(x, y), rtol=0, atol=1e-9
    )


def test_png_with_prj_and_world_file_centre_convention(tmp_path: Path) -> None:
    png = _write_png(tmp_path / "chip.png")
    # World files give the CENTRE of the top-left pixel.
    png.with_suffix(".wld").write_text("10\n0\n0\n-10\n600005\n6000005\n")
    png.with_suffix(".prj").write_text(pyproj.CRS.from_epsg(32632).to_wkt("WKT1_ESRI"))
    georef = GeoReference.from_path(png, crs="EPSG:32631")  # the .prj wins
    assert georef.crs.equals(pyproj.CRS.from_epsg(32632), ignore_axis_order=True)
    assert georef.pixel_to_crs(0.5, 0.5) == pytest.approx((600005.0, 6000005.0))
    assert georef.pixel_to_crs(0.0, 0.0) == pytest.approx((600000.0, 6000010.0))
    _assert_round_trip(georef)


@pytest.mark.parametrize("lon", [1.5, 4.5])
def test_true_bearing_corrects_grid_convergence(tmp_path: Path, lon: float) -> None:
    """UTM 31N (central meridian 3°E) at 56°N, 1.5° off-centre: convergence ~ ±1.24°."""
    georef = GeoReference.from_path(_write_geotiff(tmp_path / "c.tif", _utm_transform(lon, 56.0)))
    x, y = 20.0, 15.0
    vertex_lon, vertex_lat = georef.pixel_to_lonlat(x, y)
    convergence = (
        pyproj.Proj("EPSG:32631")
        .get_factors(float(vertex_lon), float(vertex_lat))
        .meridian_convergence
    )
    assert abs(convergence) == pytest.approx(1.5 * math.sin(math.radians(56.0)), abs=0.02)
    assert math.copysign(1.0, convergence) == math.copysign(1.0, lon - 3.0)
    grid = np.array([0.0, 45.0, 90.0, 200.0, 359.5])
    true = georef.true_bearing_deg(x, y, grid)
    np.testing.assert_allclose(georef.grid_bearing_deg(x, y, grid), grid, atol=1e-9)
    np.testing.assert_allclose(((true - grid + 180.0) % 360.0) - 180.0, convergence, atol=0.01)


def test_south_up_transform_is_handled(tmp_path: Path) -> None:
    north_up = _utm_transform(4.5, 56.0)
    # The same chip rotated 180 degrees: image up points to grid south.
    south_up = Affine(-10.0, 0.0, north_up.c + 10.0 * WIDTH, 0.0, 10.0, north_up.f - 10.0 * HEIGHT)
    rotated = GeoReference(south_up, pyproj.CRS.from_epsg(32631), WIDTH, HEIGHT)
    upright = GeoReference(north_up, pyproj.CRS.from_epsg(32631), WIDTH, HEIGHT)
    assert float(rotated.grid_bearing_deg(10.0, 10.0, 0.0)) == pytest.approx(180.0)
    expected = upright.true_bearing_deg(WIDTH - 10.0, HEIGHT - 10.0, 180.0)
    assert float(rotated.true_bearing_deg(10.0, 10.0, 0.0)) == pytest.approx(
        float(expected), abs=1e-6
    )


def test_geolocate_vessel_heading_length(tmp_path: Path) -> None:
    georef = GeoReference.from_path(_write_geotiff(tmp_path / "c.tif", _utm_transform(6.0, 55.0)))
    assert georef.pixel_size_m == pytest.approx((10.0, 10.0), rel=1e-3)
    # Two arms behind a vessel going grid east: far end point 30 px west of the vertex.
    keypoints = np.array([[40.0, 20.0], [10.0, 10.0], [10.0, 30.0]])
    location = geolocate(georef, keypoints, np.array([True, True, True]))
    lon, lat = georef.pixel_to_lonlat(40.0, 20.0)
    assert (location.vessel_lon, location.vessel_lat) == pytest.approx((float(lon), float(lat)))
    assert [name for name, _, _ in location.far_ends] == ["end_1", "end_2"]
    assert location.heading_grid_deg == pytest.approx(90.0)
    expected_true = float(georef.true_bearing_deg(40.0, 20.0, 90.0))
    assert location.heading_true_deg == pytest.approx(expected_true, abs=0.01)
    assert abs(location.heading_true_deg - 90.0) > 1.0  # 3° east of the 31N central meridian
    assert location.wake_length_m == pytest.approx(300.0, rel=1e-3)
    assert location.nearest_platforms == ()
    document = location.to_dict()
    json.dumps(document)
    assert {"vessel_lat", "vessel_lon", "far_ends", "heading_true_deg", "wake_length_m"} <= set(
        document
    )
    assert "cpa_km" not in document
    one_end = geolocate(georef, keypoints, np.array([True, False, True]))
    assert [name for name, _, _ in one_end.far_ends] == ["end_2"]
    with pytest.raises(InputError, match="vertex"):
        geolocate(georef, keypoints, np.array([False, True, True]))


def _equator_chip() -> GeoReference:
    """A lon/lat chip (1e-4 degree pixels) whose pixel (100, 100) is at 0°N 0°E."""
    transform = Affine(1e-4, 0.0, -0.01, 0.0, -1e-4, 0.01)
    return GeoReference(transform, pyproj.CRS.from_epsg(4326), 200, 200)


def test_cpa_on_hand_made_geometry() -> None:
    """Vessel at 0°N 0°E heading due east; a platform 1° north of the point 2° ahead."""
    georef = _equator_chip()
    keypoints = np.array([[100.0, 100.0], [50.0, 100.0], [0.0, 0.0]])
    visible = np.array([True, True, False])
    platforms = make_platforms(
        [1.0, 0.5, 30.0],
        [2.0, -1.0, 30.0],
        names=["Ahead", "Behind", "Far"],
        ids=["A1", "B2", "F3"],
    )
    location = geolocate(
        georef, keypoints, visible, platforms=platforms, nearest_count=2, within_km=150.0
    )
    assert location.heading_true_deg == pytest.approx(90.0, abs=1e-6)
    degree_km = geo.EARTH_RADIUS_KM * math.pi / 180.0
    behind, ahead = location.nearest_platforms
    assert (behind.name, behind.id, ahead.name, ahead.id) == ("Behind", "B2", "Ahead", "A1")
    assert behind.distance_km < ahead.distance_km
    assert ahead.cpa_km == pytest.approx(degree_km, rel=1e-6)  # ~111.2 km
    assert ahead.cpa_along_track_km == pytest.approx(2.0 * degree_km, rel=1e-6)
    expected_bearing = math.degrees(
        math.atan2(
            math.sin(math.radians(2.0)) * math.cos(math.radians(1.0)), math.sin(math.radians(1.0))
        )
    )
    assert ahead.bearing_deg == pytest.approx(expected_bearing, abs=1e-6)
    assert ahead.heading_to_platform_deg == pytest.approx(90.0 - expected_bearing, abs=1e-6)
    # Behind the beam: already past the CPA, which is the current distance.
    assert behind.cpa_along_track_km == 0.0
    assert behind.cpa_km == pytest.approx(behind.distance_km)
    assert behind.heading_to_platform_deg > 90.0
    assert location.within_km is True  # Behind is ~124 km away
    document = location.to_dict()
    json.dumps(document)
    assert document["cpa_km"] == pytest.approx(behind.cpa_km, abs=1e-3)
    assert document["nearest_platforms"][1]["id"] == "A1"
    assert document["within_km"] is True and document["within_threshold_km"] == 150.0
    far = geolocate(georef, keypoints, visible, platforms=platforms, within_km=100.0)
    assert far.within_km is False
    assert len(far.nearest_platforms) == 1


def test_angle_between_bearings() -> None:
    assert angle_between_deg([10.0, 350.0, 90.0, 0.0], [350.0, 10.0, 270.0, 0.0]) == (
        pytest.approx([20.0, 20.0, 180.0, 0.0])
    )


def test_read_platforms_names_and_ids(tmp_path: Path) -> None:
    with_ids = tmp_path / "platforms.csv"
    with_ids.write_text("id,name,lat,lon\nP-1,Alpha,55.0,4.0\n\nP-2,Beta,55.5,4.5\n")
    platforms = read_platforms(with_ids)
    assert platforms.points.labels == ["Alpha", "Beta"]
    assert platforms.ids == ["P-1", "P-2"]
    plain = tmp_path / "plain.csv"
    plain.write_text("lat,lon\n55.0,4.0\n56.0,5.0\n")
    assert read_platforms(plain).ids == ["0", "1"]


def test_not_georeferenced_gives_one_line_reason(tmp_path: Path) -> None:
    png = _write_png(tmp_path / "plain.png")
    georef, reason = read_georeference(png, crs="EPSG:32631")
    assert georef is None
    assert "plain.pgw" in reason and "\n" not in reason
    tif = tmp_path / "plain.tif"
    Image.fromarray(np.zeros((HEIGHT, WIDTH), np.uint8)).save(tif)
    georef, reason = read_georeference(tif)
    assert georef is None and "no georeferencing" in reason
    bad = _write_png(tmp_path / "bad.png")
    bad.with_suffix(".pgw").write_text("10\n0\n")
    georef, reason = read_georeference(bad, crs="EPSG:32631")
    assert georef is None and "bad.pgw" in reason
    with pytest.raises(InputError, match="not-a-crs"):
        read_georeference(png, crs="not-a-crs")


def _prediction(source: str | None, keypoints: np.ndarray) -> Any:
    from wakemodel.infer import Prediction

    visible = np.array([True, True, True])
    return Prediction(
        source=source,
        width=WIDTH,
        height=HEIGHT,
        keypoints_px=keypoints,
        visible=visible,
        visibility=np.array([0.9, 0.8, 0.7]),
        heading_deg=90.0,
        wake_length_px=30.0,
        wake_length_m=300.0,
        gsd_m=10.0,
    )


def test_geolocate_predictions_and_map_plot(tmp_path: Path) -> None:
    from wakemodel.georef import geolocate_predictions
    from wakemodel.plots import plot_prediction

    tif = _write_geotiff(tmp_path / "geo.tif", _utm_transform(4.0, 55.0))
    png = _write_png(tmp_path / "plain.png")
    keypoints = np.array([[40.0, 20.0], [10.0, 10.0], [10.0, 30.0]])
    lon, lat = GeoReference.from_path(tif).pixel_to_lonlat([20.0, 46.0], [5.0, 35.0])
    platforms = make_platforms(lat, lon + np.array([0.0, 0.5]), names=["OnChip", "East"])
    located, plain, array = geolocate_predictions(
        [
            _prediction(str(tif), keypoints),
            _prediction(str(png), keypoints),
            _prediction(None, keypoints),
        ],
        platforms=platforms,
        nearest_count=2,
        within_km=1.0,
    )
    assert located.geo is not None and located.geo_note is None
    assert located.wake_length_m == pytest.approx(located.geo.wake_length_m)
    assert located.gsd_m == pytest.approx(10.0, rel=1e-3)
    assert [p.name for p in located.geo.nearest_platforms] == ["OnChip", "East"]
    assert located.geo.within_km is True
    document = json.loads(json.dumps(located.to_dict()))
    assert document["geo"]["nearest_platforms"][0]["name"] == "OnChip"
    assert {"cpa_km", "cpa_along_track_km", "heading_to_platform_deg"} <= set(document["geo"])
    assert "WITHIN 1 km" in located.geo.summary()
    for unlocated in (plain, array):
        assert unlocated.geo is None and unlocated.wake_length_m == 300.0
        assert "geo" not in unlocated.to_dict()
    assert "plain.pgw" in plain.geo_note and "array" in array.geo_note
    out = plot_prediction(np.zeros((HEIGHT, WIDTH), np.float32), located, tmp_path / "map.png")
    with Image.open(out) as image:
        assert image.size[0] > 400


def test_image_bearing_inverts_true_bearing(tmp_path: Path) -> None:
    rotated = _utm_transform(7.5, 55.5, epsg=32631) @ Affine.rotation(25.0)
    georef = GeoReference(rotated, pyproj.CRS.from_epsg(32631), WIDTH, HEIGHT)
    image_bearings = np.array([0.0, 33.0, 181.0, 300.0])
    true = georef.true_bearing_deg(12.0, 30.0, image_bearings)
    assert float(georef.grid_bearing_deg(12.0, 30.0, 0.0)) == pytest.approx(25.0)
    np.testing.assert_allclose(
        georef.image_bearing_deg(12.0, 30.0, true), image_bearings, atol=1e-3
    )


def test_north_sea_geotiff_is_utm_10m_offshore(tmp_path: Path) -> None:
    from wakemodel.georef import NORTH_SEA_BOX, north_sea_transform, write_geotiff

    west, east, south, north = NORTH_SEA_BOX
    for seed in range(4):
        transform, crs = north_sea_transform(np.random.default_rng(seed))
        assert crs.to_epsg() in (32631, 32632)
        assert (transform.a, transform.e, transform.b, transform.d) == (10.0, -10.0, 0.0, 0.0)
        pixels = np.random.default_rng(seed).integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)
        path = write_geotiff(tmp_path / f"chip{seed}.tif", pixels, transform, crs)
        georef = GeoReference.from_path(path)
        assert georef.crs.to_epsg() == crs.to_epsg()
        lon, lat = georef.pixel_to_lonlat(0.0, 0.0)
        assert west - 0.01 < float(lon) < east + 0.01 and south - 0.01 < float(lat) < north + 0.01
        with Image.open(path) as image:
            np.testing.assert_array_equal(np.asarray(image), pixels)


def test_cli_infer_geotiff_with_platforms(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from wakemodel.cli import main
    from wakemodel.georef import write_geotiff

    transform = _utm_transform(4.5, 56.0)
    pixels = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)
    chip = write_geotiff(tmp_path / "chip.tif", pixels, transform, pyproj.CRS.from_epsg(32631))
    plain = _write_png(tmp_path / "plain.png")
    csv_path = tmp_path / "platforms.csv"
    csv_path.write_text("name,id,lat,lon\nAlpha,A-1,56.01,4.52\nBravo,B-2,55.5,4.0\n")
    runner = CliRunner()
    result = runner.invoke(
        main,
        [
            "infer",
            str(tiny_checkpoint),
            str(chip),
            str(plain),
            "--platforms",
            str(csv_path),
            "--within-km",
            "5",
            "--json",
            "-",
            "--accelerator",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    located, unlocated = json.loads(result.stdout)["predictions"]
    geo_fields = located["geo"]
    assert geo_fields["crs"] == "EPSG:32631"
    assert geo_fields["vessel_lat"] == pytest.approx(56.0, abs=0.01)
    assert geo_fields["nearest_platforms"][0]["name"] == "Alpha"
    assert geo_fields["nearest_platforms"][0]["id"] == "A-1"
    assert geo_fields["within_km"] is True
    for key in (
        "heading_true_deg",
        "wake_length_m",
        "cpa_km",
        "cpa_along_track_km",
        "heading_to_platform_deg",
        "far_ends",
        "vessel_lon",
    ):
        assert key in geo_fields
    assert located["wake_length_m"] == geo_fields["wake_length_m"]
    assert "geo" not in unlocated
    notes = [line for line in result.stderr.splitlines() if line.startswith("No geo fields")]
    assert len(notes) == 1 and "plain.png" in notes[0]
    table = runner.invoke(main, ["infer", str(tiny_checkpoint), str(plain), "--accelerator", "cpu"])
    assert table.exit_code == 0, table.output
    assert table.stderr.count("\n") == 1 and "no image is georeferenced" in table.stderr
    needs_platforms = runner.invoke(
        main, ["infer", str(tiny_checkpoint), str(chip), "--within-km", "5"]
    )
    assert needs_platforms.exit_code == 2 and "--platforms" in needs_platforms.stderr


def test_synthetic_geotiff_dataset_matches_png_dataset(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from wakemodel.cli import main
    from wakemodel.preprocess import read_image
    from wakemodel.records import scan_dataset
    from wakemodel.synthetic import generate_dataset

    options = {"min_size": 40, "max_size": 64}
    pngs = generate_dataset(tmp_path / "png", 3, 7, **options)
    result = CliRunner().invoke(
        main,
        [
            "synth",
            str(tmp_path / "tif"),
            "--count",
            "3",
            "--seed",
            "7",
            "--min-size",
            "40",
            "--max-size",
            "64",
            "--workers",
            "1",
            "--geotiff",
        ],
    )
    assert result.exit_code == 0, result.output
    tifs = tmp_path / "tif"
    again = generate_dataset(tmp_path / "again", 3, 7, geotiff=True, **options)
    records = scan_dataset(tifs)
    assert [record.image_path.suffix for record in records] == [".tif"] * 3
    for record, png_record in zip(records, scan_dataset(pngs), strict=True):
        np.testing.assert_array_equal(record.keypoints_px, png_record.keypoints_px)
        np.testing.assert_array_equal(
            read_image(record.image_path), read_image(png_record.image_path)
        )
        assert (again / "imgs" / record.image_path.name).read_bytes() == (
            record.image_path.read_bytes()
        )
        georef = GeoReference.from_path(record.image_path)
        assert georef.crs.to_epsg() in (32631, 32632)
        assert georef.pixel_size_m == pytest.approx((10.0, 10.0), rel=2e-3)
        x, y = record.keypoints_px[0]
        lon, lat = georef.pixel_to_lonlat(x, y)
        back_x, back_y = georef.lonlat_to_pixel(lon, lat)
        assert abs(float(back_x) - x) < 0.01 and abs(float(back_y) - y) < 0.01


def test_read_platforms_accepts_header_variants(tmp_path: Path) -> None:
    path = tmp_path / "platforms.csv"
    path.write_text("Name,MMSI,Latitude,Longitude\nAlpha,111,55.0,4.0\nBeta,222,55.5,4.5\n")
    platforms = read_platforms(path)
    assert platforms.points.labels == ["Alpha", "Beta"] and platforms.ids == ["111", "222"]
    np.testing.assert_allclose(platforms.points.lats, [55.0, 55.5])
