import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from scipy import ndimage

from wakemodel.cli import main
from wakemodel.errors import InputError, WakeModelError
from wakemodel.synthetic import (
    KELVIN_HALF_ANGLE_DEG,
    NO_WAKE_KINDS,
    SyntheticChip,
    generate_dataset,
    no_wake_indices,
    render_chip,
    render_no_wake_chip,
)


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _chips(count: int, seed: int = 0, low: int = 64, high: int = 128) -> list[SyntheticChip]:
    chips = []
    for child in np.random.SeedSequence(seed).spawn(count):
        rng = np.random.default_rng(child)
        width, height = (int(side) for side in rng.integers(low, high + 1, size=2))
        chips.append(render_chip(rng, width, height))
    return chips


def _bearing_deg(vertex: np.ndarray, far_end: np.ndarray) -> float:
    dx, dy = vertex - far_end
    return math.degrees(math.atan2(dx, -dy)) % 360.0


def _angle_diff_deg(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


def test_same_seed_gives_identical_files(synthetic_dir: Path, make_synthetic_dir) -> None:
    again = make_synthetic_dir(count=24, seed=0)
    first, second = _hashes(synthetic_dir), _hashes(again)
    assert len(first) == 48
    assert first == second
    assert _hashes(make_synthetic_dir(count=24, seed=1)) != first


def test_chip_does_not_depend_on_count_or_workers(tmp_path: Path, synthetic_dir: Path) -> None:
    fewer = generate_dataset(tmp_path / "fewer", 5, 0, min_size=64, max_size=128, workers=2)
    full = _hashes(synthetic_dir)
    assert _hashes(fewer) == {name: full[name] for name in _hashes(fewer)}


def test_layout_and_schema(synthetic_dir: Path) -> None:
    images = sorted((synthetic_dir / "imgs").iterdir())
    annotations = sorted((synthetic_dir / "annotations").iterdir())
    assert [path.name for path in images][:2] == ["synth_000000.png", "synth_000001.png"]
    assert [path.stem for path in images] == [path.stem for path in annotations]
    for image_path, annotation_path in zip(images, annotations, strict=True):
        with Image.open(image_path) as image:
            assert image.mode == "L"
            assert 64 <= image.width <= 128 and 64 <= image.height <= 128
            assert not image.info.get("dpi") and "tIME" not in image.info
            width, height = image.size
        content = json.loads(annotation_path.read_text())
        assert list(content) == ["tooltips"]
        tooltips = content["tooltips"]
        assert 2 <= len(tooltips) <= 3
        for point in tooltips:
            assert set(point) == {"x", "y"}
            assert 0 <= point["x"] <= width and 0 <= point["y"] <= height
            assert round(point["x"], 2) == point["x"]


def test_existing_non_empty_output_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(WakeModelError, match="not empty"):
        generate_dataset(out, 2, 0, min_size=64, max_size=64)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]
    empty = tmp_path / "empty"
    empty.mkdir()
    written = generate_dataset(empty, 2, 0, min_size=64, max_size=64)
    assert len(list((written / "imgs").iterdir())) == 2
    with pytest.raises(InputError):
        generate_dataset(tmp_path / "bad", 2, 0, min_size=20, max_size=64)


def test_about_a_fifth_of_chips_have_two_points() -> None:
    chips = _chips(200, seed=3)
    two_point = sum(len(chip.keypoints_px) == 2 for chip in chips)
    assert 20 <= two_point <= 65
    assert {chip.wake_kind for chip in chips} == {"kelvin", "single_arm", "turbulent"}


def test_geometry_matches_annotation() -> None:
    for chip in _chips(120, seed=5):
        keypoints = chip.keypoints_px.astype(np.float64)
        height, width = chip.image.shape
        vertex = keypoints[0]
        margin = max(4.0, 0.04 * min(width, height))
        assert margin - 0.01 <= vertex[0] <= width - margin + 0.01
        assert margin - 0.01 <= vertex[1] <= height - margin + 0.01
        heading = _bearing_deg(vertex, keypoints[1:].mean(axis=0))
        assert _angle_diff_deg(heading, chip.heading_deg) < 0.01
        length = float(np.linalg.norm(vertex - keypoints[1:].mean(axis=0)))
        assert length > 0.15 * math.hypot(width, height)
        if chip.wake_kind == "single_arm":
            assert _angle_diff_deg(heading, chip.course_deg) == pytest.approx(
                KELVIN_HALF_ANGLE_DEG, abs=0.5
            )
        else:
            assert _angle_diff_deg(heading, chip.course_deg) < 2.0
        if chip.wake_kind == "kelvin":
            arm_a, arm_b = keypoints[1] - vertex, keypoints[2] - vertex
            cosine = arm_a @ arm_b / (np.linalg.norm(arm_a) * np.linalg.norm(arm_b))
            half_angle = math.degrees(math.acos(cosine)) / 2.0
            assert half_angle == pytest.approx(19.47, abs=0.3)
            for arm in (arm_a, arm_b):
                bearing_from_arm_end = math.degrees(math.atan2(-arm[0], arm[1])) % 360.0
                assert _angle_diff_deg(bearing_from_arm_end, chip.course_deg) == pytest.approx(
                    19.47, abs=0.3
                )


def test_vertex_is_the_bright_vessel() -> None:
    for chip in _chips(60, seed=7):
        smoothed = ndimage.gaussian_filter(chip.image.astype(np.float32), 1.0)
        column, row = (int(value) for value in chip.keypoints_px[0])
        assert chip.image[row, column] >= 250
        top, left = max(row - 6, 0), max(column - 6, 0)
        window = smoothed[top : row + 7, left : column + 7]
        peak_row, peak_col = np.unravel_index(int(window.argmax()), window.shape)
        assert math.hypot(peak_row + top - row, peak_col + left - column) <= 2.9


def test_arm_is_visible_up_to_its_annotated_end() -> None:
    """The annotated arm stands out from the sea on either side of it, up to its end."""
    chips = _chips(30, seed=11, low=200, high=300)
    for chip in [chip for chip in chips if chip.wake_kind != "turbulent"][:10]:
        image = chip.image.astype(np.float32)
        vertex = chip.keypoints_px[0]
        for end in chip.keypoints_px[1:]:
            along = end - vertex
            normal = np.array([-along[1], along[0]]) / np.linalg.norm(along)
            samples = vertex + np.linspace(0.5, 0.95, 40)[:, None] * along

            def mean_at(points: np.ndarray, image: np.ndarray = image) -> float:
                coords = [points[:, 1] - 0.5, points[:, 0] - 0.5]
                return float(ndimage.map_coordinates(image, coords, order=1).mean())

            beside = (mean_at(samples + 8 * normal) + mean_at(samples - 8 * normal)) / 2
            assert abs(mean_at(samples) - beside) > 10.0


def test_cli_synth(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "synth"
    result = runner.invoke(
        main,
        ["synth", str(out), "--count", "3", "--seed", "2", "--min-size", "48", "--max-size", "64"],
    )
    assert result.exit_code == 0, result.output
    assert "Wrote 3 chips" in result.output
    assert len(list((out / "annotations").glob("*.json"))) == 3
    again = runner.invoke(main, ["synth", str(out), "--count", "3"])
    assert again.exit_code == 2
    assert "Error:" in again.output and "not empty" in again.output


SMALL = {"min_size": 64, "max_size": 96}


def _tooltips(root: Path) -> dict[str, list[dict[str, float]]]:
    return {
        path.stem: json.loads(path.read_text())["tooltips"]
        for path in sorted((root / "annotations").glob("*.json"))
    }


@pytest.fixture(scope="module")
def half_negative_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 chips, 64-96 px, seed 4, half of them (in expectation) without a wake."""
    return generate_dataset(
        tmp_path_factory.mktemp("half_negative") / "data", 40, 4, no_wake_fraction=0.5, **SMALL
    )


def test_zero_no_wake_fraction_gives_todays_files(tmp_path: Path) -> None:
    default = generate_dataset(tmp_path / "default", 6, 4, **SMALL)
    zero = generate_dataset(tmp_path / "zero", 6, 4, no_wake_fraction=0.0, **SMALL)
    assert _hashes(zero) == _hashes(default)
    assert all(len(tooltips) >= 2 for tooltips in _tooltips(zero).values())


def test_about_the_requested_share_has_no_wake(half_negative_dir: Path) -> None:
    tooltips = _tooltips(half_negative_dir)
    empty = sorted(name for name, points in tooltips.items() if not points)
    assert 12 <= len(empty) <= 28
    assert empty == [f"synth_{i:06d}" for i in no_wake_indices(40, 4, 0.5)]
    assert all(2 <= len(points) <= 3 for name, points in tooltips.items() if name not in empty)
    for name in empty:
        assert json.loads((half_negative_dir / "annotations" / f"{name}.json").read_text()) == {
            "tooltips": []
        }
        with Image.open(half_negative_dir / "imgs" / f"{name}.png") as image:
            assert image.mode == "L"
            assert 64 <= image.width <= 96 and 64 <= image.height <= 96


def test_wake_chips_do_not_depend_on_the_no_wake_fraction(
    tmp_path: Path, half_negative_dir: Path
) -> None:
    plain = _hashes(generate_dataset(tmp_path / "plain", 40, 4, **SMALL))
    mixed = _hashes(half_negative_dir)
    negatives = {f"synth_{i:06d}" for i in no_wake_indices(40, 4, 0.5)}
    wake_files = [name for name in mixed if Path(name).stem not in negatives]
    assert len(wake_files) == 2 * (40 - len(negatives))
    assert {name: mixed[name] for name in wake_files} == {name: plain[name] for name in wake_files}
    assert all(mixed[name] != plain[name] for name in mixed if Path(name).stem in negatives)


def test_negatives_are_deterministic_and_independent_of_count_and_workers(
    tmp_path: Path, half_negative_dir: Path
) -> None:
    again = generate_dataset(tmp_path / "again", 40, 4, no_wake_fraction=0.5, workers=2, **SMALL)
    assert _hashes(again) == _hashes(half_negative_dir)
    other = generate_dataset(tmp_path / "other", 40, 5, no_wake_fraction=0.5, **SMALL)
    assert _hashes(other) != _hashes(half_negative_dir)
    assert set(no_wake_indices(20, 4, 0.5)) == {i for i in no_wake_indices(40, 4, 0.5) if i < 20}
    assert set(no_wake_indices(40, 4, 0.3)) <= set(no_wake_indices(40, 4, 0.5))
    assert no_wake_indices(10, 4, 1.0) == list(range(10))
    assert no_wake_indices(10, 4, 0.0) == []


@pytest.mark.parametrize("kind", NO_WAKE_KINDS)
def test_no_wake_chip_kinds(kind: str) -> None:
    for seed in range(3):
        chip = render_no_wake_chip(np.random.default_rng(seed), 80, 64, kind)
        assert chip.image.shape == (64, 80) and chip.image.dtype == np.uint8
        assert chip.keypoints_px.shape == (0, 2)
        assert chip.tooltips == []
        assert (chip.wake_kind, chip.no_wake_kind) == ("none", kind)
        assert math.isnan(chip.heading_deg)
        assert math.isnan(chip.course_deg) == (kind != "vessel")
        assert int(chip.image.max()) - int(chip.image.min()) > 100
        if kind == "vessel":
            # The vessel is a compact target like a wake chip's: the smoothed chip peaks there.
            smoothed = ndimage.gaussian_filter(chip.image.astype(np.float32), 1.0)
            row, column = np.unravel_index(int(smoothed.argmax()), smoothed.shape)
            assert chip.image[row, column] >= 250
            assert (chip.image >= 250).mean() < 0.01
    drawn = {
        render_no_wake_chip(np.random.default_rng(seed), 64, 64).no_wake_kind for seed in range(40)
    }
    assert drawn == set(NO_WAKE_KINDS)
    with pytest.raises(InputError, match="smoke"):
        render_no_wake_chip(np.random.default_rng(0), 64, 64, "smoke")


def test_cloud_and_glint_chips_have_broad_bright_structures() -> None:
    """Clouds and glint add large-scale contrast that open sea lacks (std of a smoothed chip)."""

    def broad_contrast(kind: str) -> float:
        chips = [
            render_no_wake_chip(np.random.default_rng(seed), 96, 96, kind) for seed in range(8)
        ]
        return float(
            np.mean(
                [ndimage.gaussian_filter(chip.image.astype(float), 6.0).std() for chip in chips]
            )
        )

    open_sea = broad_contrast("open_sea")
    assert broad_contrast("clouds") > 1.6 * open_sea
    assert broad_contrast("glint") > 1.3 * open_sea


def test_geotiff_negatives_match_png_negatives(tmp_path: Path) -> None:
    pytest.importorskip("rasterio")
    from wakemodel.preprocess import read_image

    pngs = generate_dataset(tmp_path / "png", 6, 1, no_wake_fraction=0.5, **SMALL)
    tifs = generate_dataset(tmp_path / "tif", 6, 1, no_wake_fraction=0.5, geotiff=True, **SMALL)
    negatives = no_wake_indices(6, 1, 0.5)
    assert negatives
    assert _tooltips(tifs) == _tooltips(pngs)
    for index in negatives:
        name = f"synth_{index:06d}"
        np.testing.assert_array_equal(
            read_image(tifs / "imgs" / f"{name}.tif"), read_image(pngs / "imgs" / f"{name}.png")
        )


def test_cli_synth_no_wake_fraction(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "ds"
    options = ["--count", "8", "--seed", "4", "--min-size", "64", "--max-size", "80"]
    result = runner.invoke(main, ["synth", str(out), *options, "--no-wake-fraction", "0.5"])
    assert result.exit_code == 0, result.output
    negatives = len(no_wake_indices(8, 4, 0.5))
    assert f"Wrote 8 chips ({negatives} without a wake) to {out}" in result.output
    assert sum(not points for points in _tooltips(out).values()) == negatives
    for bad in ["1.5", "-0.1", "nan"]:
        refused = runner.invoke(
            main, ["synth", str(tmp_path / "bad"), *options, "--no-wake-fraction", bad]
        )
        assert refused.exit_code == 2, refused.output
        lines = [line for line in refused.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error:")
        assert f"No-wake fraction {float(bad)!r}" in lines[0]
        assert not (tmp_path / "bad").exists()
    with pytest.raises(InputError, match="2"):
        generate_dataset(tmp_path / "bad", 2, 0, no_wake_fraction=2, **SMALL)


def test_dataset_grid_labels_chips_without_a_wake(
    half_negative_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wakemodel import plots

    titles: list[str] = []
    labels: list[str] = []
    markers: list[int] = []

    def capture(figure: object, out_path: Path) -> Path:
        for ax in figure.axes:  # type: ignore[attr-defined]
            if ax.get_title():
                titles.append(ax.get_title())
                labels.append(" ".join(text.get_text() for text in ax.texts))
                markers.append(len(ax.collections) + len(ax.lines))
        return out_path

    monkeypatch.setattr(plots, "save_figure", capture)
    plots.plot_dataset_grid(half_negative_dir, tmp_path / "grid.png", count=10)
    negatives = {f"synth_{i:06d}" for i in no_wake_indices(10, 4, 0.5)}
    assert 0 < len(negatives) < 10
    assert len(titles) == 10
    for title, label, marker_count in zip(titles, labels, markers, strict=True):
        without = title.split("\n")[0] in negatives
        assert ("no wake" in title) == without
        assert ("no wake" in label) == without
        assert "heading" in title or without
        assert (marker_count == 0) == without
