"""Benchmark great-circle distances and the nearest-platform index.

Run from the repository root: ``python benchmarks/bench_geo.py`` (about 1-2
minutes on 2 cores). Every figure is the median wall time over ``--repeats``
runs (the pure-Python loop and the brute-force search run fewer times, as
printed), and ratios are taken within this one run.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np

from wakemodel.geo import EARTH_RADIUS_KM, PlatformIndex, haversine_vectorized


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls, after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def math_loop(vessel_lat, vessel_lon, lats, lons) -> list[float]:
    """The naive per-platform haversine with the ``math`` module."""
    phi1, lam1 = math.radians(vessel_lat), math.radians(vessel_lon)
    cos_phi1 = math.cos(phi1)
    out = []
    for lat, lon in zip(lats, lons, strict=True):
        phi2, lam2 = math.radians(lat), math.radians(lon)
        h = (
            math.sin((phi2 - phi1) / 2) ** 2
            + cos_phi1 * math.cos(phi2) * math.sin((lam2 - lam1) / 2) ** 2
        )
        out.append(2 * EARTH_RADIUS_KM * math.asin(math.sqrt(h)))
    return out


def numpy_straightforward(vessel_lat, vessel_lon, lats, lons) -> np.ndarray:
    """The textbook numpy haversine (broadcasts like the package function)."""
    phi1, lam1, phi2, lam2 = map(np.radians, (vessel_lat, vessel_lon, lats, lons))
    h = (
        np.sin((phi2 - phi1) / 2) ** 2
        + np.cos(phi1) * np.cos(phi2) * np.sin((lam2 - lam1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(h))


def random_points(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniform points on the sphere in degrees."""
    return np.degrees(np.arcsin(rng.uniform(-1, 1, count))), rng.uniform(-180, 180, count)


def distance_table(rng: np.random.Generator, repeats: int) -> None:
    """Time the distance implementations for one vessel and for a broadcast grid."""
    print("\n== Distances (median ms; x = speed-up over the straightforward numpy version) ==")
    columns = [
        "math loop",
        "numpy",
        "haversine_vectorized",
        "  float32",
        "PlatformIndex.distances",
        "  float32",
    ]
    print(f"{'case':<22}" + "".join(f"{c:>25}" for c in columns))
    cases = [
        ("1 x 1e3", 1, 1_000),
        ("1 x 1e4", 1, 10_000),
        ("1 x 1e6", 1, 1_000_000),
        ("2e3 x 2e3 broadcast", 2_000, 2_000),
    ]
    for label, vessels, platforms in cases:
        distance_case(rng, repeats, label, vessels, platforms)


def distance_case(
    rng: np.random.Generator, repeats: int, label: str, vessels: int, platforms: int
) -> None:
    """Print one row of the distance table."""
    lats, lons = random_points(rng, platforms)
    vessel_lats, vessel_lons = random_points(rng, vessels)
    if vessels == 1:
        v_lat, v_lon = float(vessel_lats[0]), float(vessel_lons[0])
    else:
        v_lat, v_lon = vessel_lats[:, None], vessel_lons[:, None]
    index = PlatformIndex(lats, lons)
    index_lat, index_lon = (v_lat, v_lon) if vessels == 1 else (vessel_lats, vessel_lons)
    loop_repeats = 3 if vessels * platforms <= 10_000 else 1
    if vessels == 1:
        loop = median_seconds(lambda: math_loop(v_lat, v_lon, lats, lons), loop_repeats)
    else:
        loop = median_seconds(
            lambda: [
                math_loop(a, b, lats, lons) for a, b in zip(vessel_lats, vessel_lons, strict=True)
            ],
            loop_repeats,
        )
    timings = [
        loop,
        median_seconds(lambda: numpy_straightforward(v_lat, v_lon, lats, lons), repeats),
        median_seconds(lambda: haversine_vectorized(v_lat, v_lon, lats, lons), repeats),
        median_seconds(
            lambda: haversine_vectorized(v_lat, v_lon, lats, lons, dtype=np.float32), repeats
        ),
        median_seconds(lambda: index.distances(index_lat, index_lon), repeats),
        median_seconds(lambda: index.distances(index_lat, index_lon, dtype=np.float32), repeats),
    ]
    cells = [f"{t * 1e3:.2f} ({timings[1] / t:.2f}x)" for t in timings]
    print(f"{label:<22}" + "".join(f"{c:>25}" for c in cells))
    if platforms == 1_000_000:
        exact = haversine_vectorized(v_lat, v_lon, lats, lons)
        error_m = [
            np.abs(f(v_lat, v_lon, dtype=np.float32) - exact).max() * 1e3
            for f in (
                lambda a, b, dtype: haversine_vectorized(a, b, lats, lons, dtype=dtype),
                index.distances,
            )
        ]
        textbook_m = np.abs(numpy_straightforward(v_lat, v_lon, lats, lons) - exact).max() * 1e3
        print(
            f"{'':<22}max |float32 - float64|: haversine_vectorized {error_m[0]:.2f} m, "
            f"PlatformIndex.distances {error_m[1]:.2f} m; textbook vs package float64 "
            f"{textbook_m:.1e} m"
        )


def index_table(rng: np.random.Generator, vessels: int, points: int, brute_vessels: int) -> None:
    """Time PlatformIndex (build + query) against chunked brute force."""
    print(f"\n== Nearest point: {vessels:.0e} vessels x {points:.0e} points ==")
    lats, lons = random_points(rng, points)
    vessel_lats, vessel_lons = random_points(rng, vessels)
    start = time.perf_counter()
    index = PlatformIndex(lats, lons)
    build = time.perf_counter() - start
    start = time.perf_counter()
    found = index.query(vessel_lats, vessel_lons, k=1)
    query = time.perf_counter() - start

    chunk = 8
    subset = slice(0, brute_vessels)

    def brute_force() -> np.ndarray:
        nearest = []
        for first in range(0, brute_vessels, chunk):
            block = slice(first, min(first + chunk, brute_vessels))
            distances = index.distances(vessel_lats[block], vessel_lons[block])
            nearest.append(np.argmin(distances, axis=1))
        return np.concatenate(nearest)

    brute_times = []
    for _ in range(3):
        start = time.perf_counter()
        brute = brute_force()
        brute_times.append(time.perf_counter() - start)
    brute_total = statistics.median(brute_times) * vessels / brute_vessels
    assert np.array_equal(brute, found.indices[subset, 0]), "index disagrees with brute force"
    print(
        f"PlatformIndex build {build:.2f} s + query {query:.2f} s = {build + query:.2f} s "
        f"(single run)"
    )
    print(
        f"chunked brute force (PlatformIndex.distances, {chunk} vessels per chunk, "
        f"precomputed unit vectors): median {statistics.median(brute_times):.2f} s for the "
        f"first {brute_vessels} vessels, EXTRAPOLATED linearly to {vessels:.0e} vessels: "
        f"{brute_total:.0f} s"
    )
    print(
        f"index speed-up: {brute_total / (build + query):.0f}x (same nearest indices on the "
        f"timed subset)"
    )


def main() -> None:
    """Parse options and print both tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="Timed runs per median.")
    parser.add_argument("--vessels", type=int, default=100_000)
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument(
        "--brute-vessels",
        type=int,
        default=32,
        help="Vessels timed for brute force (then extrapolated).",
    )
    args = parser.parse_args()
    print(
        f"numpy {np.__version__}, Python {platform.python_version()}, "
        f"{platform.processor() or platform.machine()}"
    )
    rng = np.random.default_rng(0)
    distance_table(rng, args.repeats)
    index_table(rng, args.vessels, args.points, args.brute_vessels)


if __name__ == "__main__":
    main()
