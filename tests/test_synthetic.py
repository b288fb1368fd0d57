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
    SyntheticChip,
    generate_dataset,
    render_chip,
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
