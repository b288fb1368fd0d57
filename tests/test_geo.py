import math

import numpy as np
import pytest

import wakemodel
from wakemodel.errors import InputError
from wakemodel.geo import (
    EARTH_RADIUS_KM,
    PlatformIndex,
    closest_point_of_approach,
    destination_point,
    find_closest_platform,
    haversine_vectorized,
    initial_bearing_deg,
)

KM_PER_DEGREE = EARTH_RADIUS_KM * math.pi / 180.0


def random_points(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniform points on the sphere, in degrees."""
    lats = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, count)))
    return lats, rng.uniform(-180.0, 180.0, count)


def brute_force(index_lats, index_lons, vessel_lats, vessel_lons, k):
    """Reference k nearest: stable sort of the full distance matrix (ties by lower index)."""
    matrix = haversine_vectorized(
        vessel_lats[:, None], vessel_lons[:, None], index_lats, index_lons
    )
    order = np.argsort(matrix, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(matrix, order, axis=1), order


def test_public_names_are_exported_lazily():
    assert wakemodel.haversine_vectorized is haversine_vectorized
    assert wakemodel.PlatformIndex is PlatformIndex
    assert wakemodel.find_closest_platform is find_closest_platform


def test_identical_points_are_exactly_zero():
    lats = np.array([0.0, 45.5, -89.9, 90.0, 12.345678])
    lons = np.array([0.0, -179.0, 33.3, 10.0, 123.456])
    for lat, lon in zip(lats, lons, strict=True):
        assert haversine_vectorized(lat, lon, lats, lons)[lats == lat][0] == 0.0
    # Same point with the longitude written 360 degrees apart.
    assert haversine_vectorized(10.0, 190.0, [10.0], [-170.0])[0] == 0.0
    assert haversine_vectorized(10.0, 190.0, [10.0], [-170.0], dtype=np.float32)[0] == 0.0


def test_antipodal_and_near_antipodal_are_stable():
    half_circumference = math.pi * EARTH_RADIUS_KM
    antipodes = haversine_vectorized(0.0, 0.0, [0.0, 90.0, 0.0], [180.0, 0.0, -180.0])
    np.testing.assert_allclose(
        antipodes, [half_circumference, half_circumference / 2, half_circumference], rtol=1e-14
    )
    assert haversine_vectorized(30.0, 40.0, [-30.0], [-140.0])[0] == pytest.approx(
        half_circumference, rel=1e-14
    )
    # 1e-6 degree short of the antipode: an asin(sqrt(h)) haversine is off by ~0.1 m here.
    offset_deg = 1e-6
    near = haversine_vectorized(0.0, 0.0, [0.0], [180.0 - offset_deg])[0]
    assert near == pytest.approx(half_circumference - offset_deg * KM_PER_DEGREE, abs=1e-9)


def test_known_distances_and_radius_keyword():
    one_degree = haversine_vectorized(0.0, 0.0, [1.0], [0.0])[0]
    assert one_degree == pytest.approx(KM_PER_DEGREE, rel=1e-14)
    assert haversine_vectorized(0.0, 0.0, [0.0], [1.0], earth_radius_km=1.0)[0] == pytest.approx(
        math.pi / 180.0, rel=1e-14
    )
    with pytest.raises(InputError, match="earth_radius_km"):
        haversine_vectorized(0.0, 0.0, [0.0], [1.0], earth_radius_km=-1.0)


def test_broadcast_shapes_match_per_vessel_calls():
    rng = np.random.default_rng(0)
    vessel_lats, vessel_lons = random_points(rng, 5)
    lats, lons = random_points(rng, 7)
    scalar = haversine_vectorized(float(vessel_lats[0]), float(vessel_lons[0]), lats, lons)
    assert scalar.shape == (7,)
    matrix = haversine_vectorized(vessel_lats[:, None], vessel_lons[:, None], lats, lons)
    assert matrix.shape == (5, 7)
    for row, (lat, lon) in enumerate(zip(vessel_lats, vessel_lons, strict=True)):
        np.testing.assert_array_equal(matrix[row], haversine_vectorized(lat, lon, lats, lons))
    pairs = haversine_vectorized(vessel_lats, vessel_lons, lats[:5], lons[:5])
    assert pairs.shape == (5,)
    np.testing.assert_array_equal(pairs, matrix[np.arange(5), np.arange(5)])
    assert haversine_vectorized(1.0, 2.0, 3.0, 4.0).shape == ()
    grid = haversine_vectorized(
        vessel_lats[:, None, None],
        vessel_lons[:, None, None],
        lats.reshape(1, 7),
        lons.reshape(1, 7),
    )
    assert grid.shape == (5, 1, 7)


def test_blocks_and_bulk_paths_agree_bitwise():
    rng = np.random.default_rng(1)
    lats, lons = random_points(rng, 40_000)  # more than one block
    index = PlatformIndex(lats, lons)
    direct = haversine_vectorized(12.5, -33.0, lats, lons)
    np.testing.assert_array_equal(direct, index.distances(12.5, -33.0))
    np.testing.assert_array_equal(
        direct, haversine_vectorized(np.array([[12.5]]), np.array([[-33.0]]), lats, lons)[0]
    )


def test_matches_wgs84_geodesics_within_documented_error():
    pyproj = pytest.importorskip("pyproj")
    rng = np.random.default_rng(2)
    lat1, lon1 = random_points(rng, 2000)
    lat2, lon2 = random_points(rng, 2000)
    _, _, geodesic_m = pyproj.Geod(ellps="WGS84").inv(lon1, lat1, lon2, lat2)
    relative_error = haversine_vectorized(lat1, lon1, lat2, lon2) / (geodesic_m / 1000.0) - 1.0
    assert np.abs(relative_error).max() < 0.006
    # Worst case: a short north-south path at the equator (meridian radius 6335 km).
    _, _, meridian_m = pyproj.Geod(ellps="WGS84").inv(0.0, -0.5, 0.0, 0.5)
    ratio = haversine_vectorized(-0.5, 0.0, [0.5], [0.0])[0] / (meridian_m / 1000.0)
    assert 1.004 < ratio < 1.006


def test_float32_mode_error_is_metres():
    rng = np.random.default_rng(3)
    lats, lons = random_points(rng, 50_000)
    exact = haversine_vectorized(-20.0, 100.0, lats, lons)
    fast = haversine_vectorized(-20.0, 100.0, lats, lons, dtype=np.float32)
    assert fast.dtype == np.float32
    assert np.abs(fast - exact).max() < 0.005  # km
    index_fast = PlatformIndex(lats, lons).distances(-20.0, 100.0, dtype=np.float32)
    assert np.abs(index_fast - exact).max() < 0.005
    with pytest.raises(InputError, match="dtype"):
        haversine_vectorized(0.0, 0.0, [0.0], [1.0], dtype=np.int32)


def test_longitudes_of_any_range_are_normalised():
    rng = np.random.default_rng(4)
    lats, lons = random_points(rng, 100)
    shifted = lons + 360.0 * rng.integers(-3, 4, lons.size)
    np.testing.assert_allclose(
        haversine_vectorized(5.0, 725.0, lats, shifted),
        haversine_vectorized(5.0, 5.0, lats, lons),
        rtol=0,
        atol=1e-9,
    )
    index = PlatformIndex(lats, shifted)
    assert index.lons.min() >= -180.0 and index.lons.max() < 180.0
    np.testing.assert_allclose(index.lons, lons, atol=1e-9)


def test_nan_in_gives_nan_out():
    lats, lons = np.array([1.0, np.nan, 3.0]), np.array([1.0, 2.0, 3.0])
    distances = haversine_vectorized(0.0, 0.0, lats, lons)
    assert np.isnan(distances[1]) and np.isfinite(distances[[0, 2]]).all()
    assert np.isnan(haversine_vectorized(np.nan, 0.0, [1.0, 2.0], [1.0, 2.0])).all()
    assert np.isnan(haversine_vectorized(0.0, np.nan, [1.0], [1.0], dtype=np.float32)).all()
    indices, distance_km = find_closest_platform(np.nan, 0.0, [1.0, 2.0], [1.0, 2.0])
    assert indices == [] and math.isnan(distance_km)
    with pytest.raises(InputError, match="platform_lats is NaN at index 1"):
        find_closest_platform(0.0, 0.0, lats, lons)
    with pytest.raises(InputError, match="lats is NaN"):
        PlatformIndex(lats, lons)
    found = PlatformIndex([1.0, 2.0], [1.0, 2.0]).query([0.0, np.nan], [0.0, 5.0], k=2)
    assert np.isfinite(found.distances_km[0]).all() and np.isnan(found.distances_km[1]).all()
    np.testing.assert_array_equal(found.indices[1], [-1, -1])
    assert np.isnan(initial_bearing_deg(np.nan, 0.0, 1.0, 1.0))
    cpa, along = closest_point_of_approach(0.0, 0.0, np.nan, 1.0, 1.0)
    assert np.isnan(cpa) and np.isnan(along)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"vessel_lat": 91.0}, "vessel_lat"),
        ({"vessel_lon": [np.inf]}, "vessel_lon"),
        ({"platform_lats": [0.0, -90.5]}, "platform_lats"),
        ({"platform_lons": [0.0, 1.0, 2.0]}, "platform_lons"),
        ({"vessel_lon": [1.0, 2.0]}, "vessel_lon"),
        ({"platform_lats": [], "platform_lons": []}, "platform_lats"),
        ({"vessel_lat": [1.0, 2.0, 3.0], "vessel_lon": [1.0, 2.0, 3.0]}, "vessel_lat"),
        ({"platform_lats": ["north", "x"]}, "platform_lats"),
    ],
)
def test_invalid_input_raises_naming_the_argument(kwargs, name):
    arguments = {
        "vessel_lat": 0.0,
        "vessel_lon": 0.0,
        "platform_lats": [1.0, 2.0],
        "platform_lons": [1.0, 2.0],
        **kwargs,
    }
    with pytest.raises(InputError, match=name) as caught:
        haversine_vectorized(**arguments)
    assert isinstance(caught.value, ValueError)
    assert "\n" not in str(caught.value)


def test_find_closest_platform_returns_all_ties():
    # Four platforms exactly 1 degree from the vessel, one slightly farther.
    lats = [0.0, 1.0, 0.0, -1.0, 1.0]
    lons = [1.0, 0.0, -1.0, 0.0, 0.5]
    indices, distance_km = find_closest_platform(0.0, 0.0, lats, lons)
    assert indices == [0, 1, 2, 3]
    assert distance_km == pytest.approx(KM_PER_DEGREE, rel=1e-14)
    assert find_closest_platform(50.0, 3.0, [50.0, 51.0], [3.0, 3.0]) == ([0], 0.0)
    with pytest.raises(InputError, match="vessel_lat must be a single value"):
        find_closest_platform([1.0, 2.0], 0.0, lats, lons)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_index_query_equals_brute_force_with_ties(k):
    rng = np.random.default_rng(5)
    lats, lons = random_points(rng, 3000)
    lats *= 75.0 / 90.0  # keep the random points away from the pole ring below
    # Duplicates (exact ties), a ring around the north pole (ties up to rounding) and four
    # points symmetric about (0, 0) (exact ties).
    lats = np.concatenate([lats, lats[:50], np.full(36, 80.0), [0.01, 0.0, -0.01, 0.0]])
    ring_lons = np.arange(-180.0, 180.0, 10.0)
    lons = np.concatenate([lons, lons[:50], ring_lons, [0.0, 0.01, 0.0, -0.01]])
    vessel_lats, vessel_lons = random_points(rng, 400)
    vessel_lats = np.concatenate([vessel_lats, lats[:20], [90.0, 0.0, -lats[0]]])
    vessel_lons = np.concatenate([vessel_lons, lons[:20], [0.0, 0.0, lons[0] + 180.0]])
    found = PlatformIndex(lats, lons).query(vessel_lats, vessel_lons, k=k)
    expected_km, expected_idx = brute_force(lats, lons, vessel_lats, vessel_lons, k)
    np.testing.assert_array_equal(found.indices, expected_idx)
    np.testing.assert_array_equal(found.distances_km, expected_km)
    # A vessel on point 0 finds it, then its duplicate 3000, both at exactly 0 km.
    np.testing.assert_array_equal(found.indices[400, : min(k, 2)], [0, 3000][: min(k, 2)])
    assert found.distances_km[400, 0] == 0.0
    assert set(found.indices[420]) <= set(range(3050, 3086))
    np.testing.assert_array_equal(found.indices[421, : min(k, 4)], np.arange(3086, 3090)[:k])
    assert len(set(found.distances_km[421, : min(k, 4)])) == 1


def test_index_query_shapes_and_k_checks():
    index = PlatformIndex([0.0, 1.0, 2.0], [0.0, 1.0, 2.0])
    assert len(index) == 3
    assert index.query(0.0, 0.0, k=2).indices.shape == (2,)
    assert index.query(np.zeros((4, 5)), np.zeros((4, 5))).distances_km.shape == (4, 5, 1)
    np.testing.assert_array_equal(index.query(0.0, 0.0, k=3).indices, [0, 1, 2])
    with pytest.raises(InputError, match="k must"):
        index.query(0.0, 0.0, k=4)
    with pytest.raises(InputError, match="vessel_lats"):
        index.query(95.0, 0.0)
    with pytest.raises(InputError, match="lats is empty"):
        PlatformIndex([], [])


def test_initial_bearing():
    bearings = initial_bearing_deg(
        0.0, 0.0, [1.0, 0.0, -1.0, 0.0, 1.0], [0.0, 1.0, 0.0, -1.0, -1.0]
    )
    np.testing.assert_allclose(bearings, [0.0, 90.0, 180.0, 270.0, 315.0], atol=0.01)
    assert ((bearings >= 0.0) & (bearings < 360.0)).all()
    # Across the date line.
    assert initial_bearing_deg(0.0, 170.0, 0.0, -170.0) == pytest.approx(90.0)
    # Textbook formula: atan2(sin dlon cos lat2, cos lat1 sin lat2 - sin lat1 cos lat2 cos dlon).
    lat = math.radians(60.0)
    expected = math.degrees(math.atan2(math.cos(lat), math.cos(lat) * math.sin(lat)))
    assert initial_bearing_deg(60.0, 0.0, 60.0, 90.0) == pytest.approx(expected, abs=1e-9)


def test_destination_round_trip_and_geod_sphere():
    rng = np.random.default_rng(6)
    lats, lons = random_points(rng, 200)
    lats = np.clip(lats, -89.0, 89.0)
    bearings = rng.uniform(0.0, 360.0, 200)
    distances = rng.uniform(0.1, 15000.0, 200)
    end_lats, end_lons = destination_point(lats, lons, bearings, distances)
    np.testing.assert_allclose(
        haversine_vectorized(lats, lons, end_lats, end_lons), distances, rtol=1e-9
    )
    np.testing.assert_allclose(
        initial_bearing_deg(lats, lons, end_lats, end_lons), bearings, atol=1e-6
    )
    pyproj = pytest.importorskip("pyproj")
    sphere = pyproj.Geod(a=EARTH_RADIUS_KM * 1000.0, b=EARTH_RADIUS_KM * 1000.0)
    ref_lons, ref_lats, _ = sphere.fwd(lons, lats, bearings, distances * 1000.0)
    np.testing.assert_allclose(end_lats, ref_lats, atol=1e-7)
    np.testing.assert_allclose(((end_lons - ref_lons + 180.0) % 360.0) - 180.0, 0.0, atol=1e-7)


def test_closest_point_of_approach():
    # Heading east along the equator; target 1 degree north, 5 degrees ahead.
    cpa_km, along_km = closest_point_of_approach(0.0, 0.0, 90.0, 1.0, 5.0)
    assert cpa_km == pytest.approx(KM_PER_DEGREE, rel=1e-12)
    assert along_km == pytest.approx(5.0 * KM_PER_DEGREE, rel=1e-12)
    # Target behind: CPA is now (current distance), along-track 0.
    cpa_km, along_km = closest_point_of_approach(0.0, 0.0, 90.0, 1.0, -5.0)
    assert cpa_km == pytest.approx(haversine_vectorized(0.0, 0.0, [1.0], [-5.0])[0])
    assert along_km == 0.0
    # Against a sampled track, vectorised over targets.
    rng = np.random.default_rng(7)
    target_lats, target_lons = 50.0 + rng.uniform(-3, 3, 20), 4.0 + rng.uniform(-3, 3, 20)
    cpa_km, along_km = closest_point_of_approach(51.0, 2.0, 60.0, target_lats, target_lons)
    steps = np.linspace(0.0, 2000.0, 200_001)
    track_lats, track_lons = destination_point(51.0, 2.0, 60.0, steps)
    track = haversine_vectorized(target_lats[:, None], target_lons[:, None], track_lats, track_lons)
    np.testing.assert_allclose(cpa_km, track.min(axis=1), atol=1e-4)
    np.testing.assert_allclose(along_km, steps[track.argmin(axis=1)], atol=0.02)
    assert (cpa_km <= haversine_vectorized(51.0, 2.0, target_lats, target_lons) + 1e-9).all()


def test_read_points_csv_keeps_names_and_ids(tmp_path) -> None:
    from wakemodel.geo import read_points_csv

    path = tmp_path / "points.csv"
    path.write_text(
        "MMSI,Name,Latitude,Longitude\n244123456,Alpha,55.0,4.0\n"
        "244999999,,55.5,364.5\n,,56.0,5.0\n"
    )
    points = read_points_csv(path)
    np.testing.assert_allclose(points.lats, [55.0, 55.5, 56.0])
    np.testing.assert_allclose(points.lons, [4.0, 4.5, 5.0])
    assert points.labels == ["Alpha", "244999999", "2"]
    assert points.ids == ["244123456", "244999999", "2"]
    with_id = tmp_path / "with_id.csv"
    with_id.write_text("id,mmsi,lat,lng\nP-1,111,1.0,2.0\n")
    assert read_points_csv(with_id).ids == ["P-1"]
    assert read_points_csv(with_id).labels == ["P-1"]
