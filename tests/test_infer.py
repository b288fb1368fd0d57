"""Inference: loading, prediction, pixel mapping, JSON, TTA and CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from wakemodel import keypoints as kp
from wakemodel.cli import main
from wakemodel.errors import InputError, WakeModelError
from wakemodel.infer import (
    KEYPOINT_NAMES,
    KeypointPredictor,
    Prediction,
    dihedral_transforms,
    find_images,
    format_table,
    load_model,
    predict,
    predict_batch,
    transform_images,
    untransform_keypoints,
)
from wakemodel.tta import consensus, predict_views

FIXED_KEYPOINTS = np.array([[0.25, 0.5], [0.75, 0.125], [0.5, 0.875]])


class FixedPredictor:
    """Returns the same normalised keypoints for every chip."""

    image_size = 32

    def __init__(self, visibility: tuple[float, float, float] = (0.9, 0.8, 0.3)) -> None:
        self.visibility = np.array(visibility)

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = images.shape[0]
        return (
            np.broadcast_to(FIXED_KEYPOINTS, (batch, 3, 2)).copy(),
            np.broadcast_to(self.visibility, (batch, 3)).copy(),
        )


class BrightestPixelPredictor:
    """Flip-equivariant fake network: vertex = centre of the brightest pixel.

    The two wake ends are the centres of the other non-zero pixels, reported in
    raster order, so their slot order changes under flips and rotations; an
    end's visibility is its pixel value + 0.3, so it follows its end.
    """

    image_size = 16

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        size = images.shape[-1]
        keypoints, visibility = [], []
        for image in images[:, 0]:
            vertex_row, vertex_col = np.unravel_index(np.argmax(image), image.shape)
            end_rows, end_cols = np.nonzero((image > 0) & (image < 1))
            points = [(vertex_col, vertex_row), *zip(end_cols, end_rows, strict=True)]
            keypoints.append([((col + 0.5) / size, (row + 0.5) / size) for col, row in points])
            visibility.append([0.9, *(image[end_rows, end_cols] + 0.3)])
        return np.array(keypoints, dtype=np.float64), np.array(visibility, dtype=np.float64)


def _equivariant_batch() -> np.ndarray:
    images = np.zeros((2, 1, 16, 16), dtype=np.float32)
    images[0, 0, 3, 5] = 1.0
    images[0, 0, 12, 1] = 0.5
    images[0, 0, 10, 14] = 0.25
    images[1, 0, 8, 8] = 1.0
    images[1, 0, 0, 15] = 0.5
    images[1, 0, 15, 2] = 0.25
    return images


def _write_png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def test_fake_predictors_satisfy_protocol() -> None:
    assert isinstance(FixedPredictor(), KeypointPredictor)
    assert isinstance(BrightestPixelPredictor(), KeypointPredictor)


def test_load_model_reads_image_size_from_checkpoint(tiny_checkpoint: Path) -> None:
    import torch

    predictor = load_model(tiny_checkpoint, accelerator="cpu")
    stored = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    assert predictor.image_size == stored["hyper_parameters"]["image_size"]
    keypoints, visibility, keypoint_std = predictor(
        np.zeros((2, 1, predictor.image_size, predictor.image_size), np.float32)
    )
    assert np.asarray(keypoints).shape == (2, 3, 2)
    assert np.asarray(visibility).shape == (2, 3)
    assert np.asarray(keypoint_std).shape == (2, 3, 2)
    assert (np.asarray(keypoint_std) > 0).all()


def test_predict_outputs_on_synthetic_chips(tiny_checkpoint: Path, synthetic_dir: Path) -> None:
    paths = find_images([synthetic_dir / "imgs"])
    predictions = predict(tiny_checkpoint, paths, batch_size=3, gsd_m=10.0, accelerator="cpu")
    assert [p.source for p in predictions] == [str(path) for path in paths]
    for prediction in predictions:
        with Image.open(prediction.source) as image:
            assert (prediction.width, prediction.height) == image.size
        assert prediction.keypoints_px.shape == (3, 2)
        assert np.all(prediction.keypoints_px >= 0)
        assert np.all(prediction.keypoints_px[:, 0] <= prediction.width)
        assert np.all(prediction.keypoints_px[:, 1] <= prediction.height)
        assert prediction.visible.dtype == bool and prediction.visible[0]
        assert prediction.visible[1:].any()
        assert np.all((prediction.visibility >= 0) & (prediction.visibility <= 1))
        assert 0.0 <= prediction.heading_deg < 360.0
        assert prediction.wake_length_m == pytest.approx(prediction.wake_length_px * 10.0)


def test_keypoints_scale_with_chip_size() -> None:
    rng = np.random.default_rng(0)
    chip = rng.uniform(0, 255, size=(30, 40)).astype(np.float32)
    doubled = np.repeat(np.repeat(chip, 2, axis=0), 2, axis=1)
    small, large = predict(FixedPredictor(), [chip, doubled], tta=False)
    assert (small.width, small.height, large.width, large.height) == (40, 30, 80, 60)
    np.testing.assert_allclose(small.keypoints_px, FIXED_KEYPOINTS * [40, 30])
    np.testing.assert_allclose(large.keypoints_px, 2 * small.keypoints_px)
    assert large.wake_length_px == pytest.approx(2 * small.wake_length_px)
    assert large.heading_deg == pytest.approx(small.heading_deg)


def test_real_model_keypoints_scale_with_chip_size(
    tiny_checkpoint: Path, synthetic_dir: Path
) -> None:
    from wakemodel.preprocess import read_image

    chip = read_image(find_images([synthetic_dir / "imgs"])[0])
    doubled = np.repeat(np.repeat(chip, 2, axis=0), 2, axis=1)
    small, large = predict(tiny_checkpoint, [chip, doubled], accelerator="cpu")
    np.testing.assert_allclose(large.keypoints_norm, small.keypoints_norm, atol=0.02)
    np.testing.assert_allclose(
        large.keypoints_px / [large.width, large.height],
        small.keypoints_px / [small.width, small.height],
        atol=0.02,
    )


def test_heading_and_visibility_rules() -> None:
    (prediction,) = predict(
        FixedPredictor(visibility=(0.2, 0.1, 0.3)), [np.ones((40, 40))], tta=False
    )
    assert prediction.visible.tolist() == [True, False, True]
    vertex, end = prediction.keypoints_px[0], prediction.keypoints_px[2]
    dx, dy = vertex - end
    assert prediction.heading_deg == pytest.approx(np.degrees(np.arctan2(dx, -dy)) % 360)
    assert prediction.wake_length_px == pytest.approx(np.hypot(dx, dy))


def test_to_dict_schema_is_json_ready() -> None:
    (prediction,) = predict(FixedPredictor(), [np.ones((30, 40))], gsd_m=20.0, tta=False)
    document = json.loads(json.dumps(prediction.to_dict()))
    assert set(document) == {
        "source",
        "width",
        "height",
        "keypoints",
        "wake_found",
        "wake_score",
        "heading_deg",
        "heading_std_deg",
        "vertex_std_px",
        "wake_length_px",
        "wake_length_m",
        "gsd_m",
    }
    assert [k["name"] for k in document["keypoints"]] == list(KEYPOINT_NAMES)
    assert [k["visible"] for k in document["keypoints"]] == [True, True, False]
    assert set(document["keypoints"][2]) == {"name", "x", "y", "visible", "visibility", "std_px"}
    # FixedPredictor gives no uncertainty: unknown, not invented.
    assert document["heading_std_deg"] is None and document["vertex_std_px"] is None
    assert document["wake_score"] == pytest.approx(0.9) and document["wake_found"] is True
    assert document["keypoints"][1]["x"] == pytest.approx(0.75 * 40)
    assert document["gsd_m"] == 20.0
    assert document["wake_length_m"] == pytest.approx(document["wake_length_px"] * 20.0, abs=0.25)
    assert document["source"] is None


@pytest.mark.parametrize("transform", dihedral_transforms())
def test_transform_maps_keypoints_back_exactly(transform: tuple[bool, bool, bool]) -> None:
    images = _equivariant_batch()
    predictor = BrightestPixelPredictor()
    reference, _ = predictor(images)
    transformed, _ = predictor(transform_images(images, transform))
    restored = untransform_keypoints(transformed, transform)
    np.testing.assert_allclose(restored[:, 0], reference[:, 0], atol=1e-12)
    for sample in range(len(images)):
        ends = {tuple(np.round(point, 9)) for point in restored[sample, 1:]}
        assert ends == {tuple(np.round(point, 9)) for point in reference[sample, 1:]}


def test_dihedral_transforms_are_distinct() -> None:
    image = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    outputs = {transform_images(image, t).tobytes() for t in dihedral_transforms()}
    assert len(dihedral_transforms()) == 8 and len(outputs) == 8
    assert dihedral_transforms()[0] == (False, False, False)


def test_tta_of_equivariant_predictor_equals_plain_prediction() -> None:
    images = _equivariant_batch()
    plain_keypoints, plain_visibility, _ = predict_batch(BrightestPixelPredictor(), images)
    tta_keypoints, tta_visibility, _ = predict_batch(BrightestPixelPredictor(), images, tta=True)
    np.testing.assert_allclose(tta_keypoints, plain_keypoints, atol=1e-12)
    np.testing.assert_allclose(tta_visibility, plain_visibility, atol=1e-12)


def test_tta_consensus_ignores_one_stray_view() -> None:
    views = np.zeros((8, 2, 3, 2))
    views[:, :, 1:] = [[0.2, 0.7], [0.8, 0.7]]
    stray = views.copy()
    stray[3, 0, 1] = [0.9, 0.1]  # one view puts sample 0's first end elsewhere
    np.testing.assert_array_equal(consensus(stray), views[0])
    assert not np.allclose(stray.mean(axis=0), views[0])


class _OneStrayViewPredictor(BrightestPixelPredictor):
    """The equivariant fake network, except that its 4th call moves every vertex by 0.4 in x."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keypoints, visibility = super().__call__(images)
        self.calls += 1
        if self.calls == 4:
            keypoints[:, 0, 0] += 0.4
        return keypoints, visibility


def test_tta_median_keeps_the_answer_of_the_agreeing_views() -> None:
    images = _equivariant_batch()
    plain, _, _ = predict_batch(BrightestPixelPredictor(), images)
    combined, _, _ = predict_batch(_OneStrayViewPredictor(), images, tta=True)
    np.testing.assert_allclose(combined, plain, atol=1e-12)
    views, _, _ = predict_views(_OneStrayViewPredictor(), images)
    assert not np.allclose(views.mean(axis=0), plain)  # the mean would have moved


def test_tta_combines_mapped_back_predictions() -> None:
    images = np.zeros((1, 1, 32, 32), dtype=np.float32)
    keypoints, visibility, _ = predict_batch(FixedPredictor(), images, tta=True)
    np.testing.assert_allclose(keypoints[0, 0], [0.5, 0.5], atol=1e-12)
    assert visibility[0, 0] == pytest.approx(0.9)
    assert visibility[0, 1:].sum() == pytest.approx(0.8 + 0.3)


def test_predict_reads_files_and_rejects_bad_arrays(tmp_path: Path) -> None:
    rgba = np.zeros((20, 50, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    path = _write_png(tmp_path / "rgba.png", rgba)
    sixteen = _write_png(tmp_path / "grey16.png", np.full((24, 12), 40000, dtype=np.uint16))
    predictions = predict(FixedPredictor(), [path, sixteen], tta=False)
    assert [(p.width, p.height) for p in predictions] == [(50, 20), (12, 24)]
    with pytest.raises(ValueError, match="2-D"):
        predict(FixedPredictor(), [np.zeros((4, 4, 3))], tta=False)
    with pytest.raises(WakeModelError, match=r"missing\.png"):
        predict(FixedPredictor(), [tmp_path / "missing.png"], tta=False)


def test_load_model_errors(tmp_path: Path) -> None:
    with pytest.raises(WakeModelError, match="not found"):
        load_model(tmp_path / "absent.ckpt")
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(WakeModelError, match=r"notes\.ckpt"):
        load_model(text)


def _run(args: list[str]):
    return CliRunner().invoke(main, args)


def _single_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    return lines[0]


def test_cli_missing_model(tmp_path: Path, synthetic_dir: Path) -> None:
    image = find_images([synthetic_dir / "imgs"])[0]
    line = _single_error_line(_run(["infer", str(tmp_path / "nope.ckpt"), str(image)]))
    assert "nope.ckpt" in line


def test_cli_text_file_as_model(tmp_path: Path, synthetic_dir: Path) -> None:
    model = tmp_path / "model.ckpt"
    model.write_text("hello\n")
    image = find_images([synthetic_dir / "imgs"])[0]
    line = _single_error_line(_run(["infer", str(model), str(image)]))
    assert "model.ckpt" in line


def test_cli_unreadable_single_image(tiny_checkpoint: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    line = _single_error_line(
        _run(["infer", str(tiny_checkpoint), str(bad), "--accelerator", "cpu"])
    )
    assert "bad.png" in line


def test_cli_skips_unreadable_among_several(
    tiny_checkpoint: Path, synthetic_dir: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    good = find_images([synthetic_dir / "imgs"])[:2]
    out = tmp_path / "out.json"
    result = _run(
        [
            "infer",
            str(tiny_checkpoint),
            str(good[0]),
            str(bad),
            str(good[1]),
            "--json",
            str(out),
            "--accelerator",
            "cpu",
        ]
    )
    assert result.exit_code == 0, result.output
    skipped = [line for line in result.stderr.splitlines() if line.startswith("Skipping")]
    assert len(skipped) == 1 and "bad.png" in skipped[0]
    document = json.loads(out.read_text())
    assert [Path(p["source"]).name for p in document["predictions"]] == [p.name for p in good]
    assert good[0].name in result.stdout and "heading" in result.stdout


def test_cli_json_stdout_and_plots(
    tiny_checkpoint: Path, synthetic_dir: Path, tmp_path: Path
) -> None:
    images = find_images([synthetic_dir / "imgs"])[:2]
    plot_dir = tmp_path / "plots"
    result = _run(
        [
            "infer",
            str(tiny_checkpoint),
            *map(str, images),
            "--json",
            "-",
            "--tta",
            "--gsd",
            "20",
            "--plot",
            str(plot_dir),
            "--accelerator",
            "cpu",
            "--batch-size",
            "1",
        ]
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["tta"] is True and len(document["predictions"]) == 2
    assert all(p["gsd_m"] == 20.0 for p in document["predictions"])
    for image in images:
        plotted = plot_dir / f"{image.stem}_wake.png"
        with Image.open(plotted) as png:
            assert png.format == "PNG" and min(png.size) > 100


def test_cli_single_plot_file(tiny_checkpoint: Path, synthetic_dir: Path, tmp_path: Path) -> None:
    image = find_images([synthetic_dir / "imgs"])[0]
    target = tmp_path / "one.png"
    result = _run(
        ["infer", str(tiny_checkpoint), str(image), "--plot", str(target), "--accelerator", "cpu"]
    )
    assert result.exit_code == 0, result.output
    assert target.stat().st_size > 0


def test_cli_plot_file_with_several_images_is_an_error(
    tiny_checkpoint: Path, synthetic_dir: Path, tmp_path: Path
) -> None:
    images = find_images([synthetic_dir / "imgs"])[:2]
    line = _single_error_line(
        _run(["infer", str(tiny_checkpoint), *map(str, images), "--plot", str(tmp_path / "x.png")])
    )
    assert "--plot" in line


def test_prediction_dataclass_keypoints_norm() -> None:
    prediction = Prediction(
        source=None,
        width=200,
        height=100,
        keypoints_px=np.array([[100.0, 50.0]] * 3),
        visible=np.array([True, True, False]),
        visibility=np.array([1.0, 1.0, 0.0]),
        heading_deg=0.0,
        wake_length_px=0.0,
        wake_length_m=0.0,
        gsd_m=10.0,
    )
    np.testing.assert_allclose(prediction.keypoints_norm, [[0.5, 0.5]] * 3)


def test_run_from_python_equals_cli_output(tiny_checkpoint: Path, synthetic_dir: Path) -> None:
    from wakemodel.infer import run

    images = find_images([synthetic_dir / "imgs"])[:2]
    args = ["infer", str(tiny_checkpoint), *map(str, images), "--accelerator", "cpu", "--tta"]
    as_json = _run([*args, "--json", "-"])
    as_table = _run(args)
    assert as_json.exit_code == 0 and as_table.exit_code == 0, as_json.output
    report = run(tiny_checkpoint, images, tta=True, accelerator="cpu")
    assert report.to_dict() == json.loads(as_json.stdout)
    assert as_table.stdout == report.format_table() + "\n"
    assert as_table.stderr.splitlines() == report.notes
    assert len(report.notes) == 1 and "no image is georeferenced" in report.notes[0]


def test_run_on_arrays_notes_and_plots(tmp_path: Path) -> None:
    from wakemodel.infer import run

    chips = [np.ones((30, 40)), np.ones((20, 20))]
    report = run(FixedPredictor(), chips, gsd_m=20.0, tta=False)
    assert report.model == "FixedPredictor" and report.tta is False
    assert [p.geo_note for p in report.predictions] == [
        "an in-memory array has no georeferencing."
    ] * 2
    assert report.notes == [
        "No geo fields: no image is georeferenced (e.g. an in-memory array has no georeferencing.)"
    ]
    assert report.to_dict()["predictions"][0]["gsd_m"] == 20.0
    assert report.format_table().count("<array>") == 2
    saved = report.save_plots(tmp_path / "plots")
    assert [path.name for path in saved] == ["array0_wake.png", "array1_wake.png"]
    with pytest.raises(WakeModelError, match="--plot"):
        report.save_plots(tmp_path / "one.png")
    with pytest.raises(WakeModelError, match="could be read"):
        run(FixedPredictor(), [tmp_path / "absent.png"], on_unreadable=lambda *_: None, tta=False)


def test_plain_png_inference_imports_no_geo_or_torch(tmp_path: Path) -> None:
    """pyproj/rasterio load only for chips that may be georeferenced; TTA needs no torch."""
    import subprocess
    import sys

    chip = _write_png(tmp_path / "chip.png", np.full((24, 32), 100, np.uint8))
    world_file = "10\n0\n0\n-10\n500000\n6000000\n"
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from wakemodel.infer import run\n"
        "class Fixed:\n"
        "    image_size = 16\n"
        "    def __call__(self, images):\n"
        "        n = len(images)\n"
        "        return np.full((n, 3, 2), 0.5) + np.arange(3)[:, None] * 0.1, "
        "np.full((n, 3), 0.9)\n"
        f"report = run(Fixed(), [{str(chip)!r}], tta=True)\n"
        "print(report.notes[0])\n"
        "print(sorted(m for m in ('pyproj', 'rasterio', 'torch') if m in sys.modules))\n"
        f"open({str(chip.with_suffix('.pgw'))!r}, 'w').write({world_file!r})\n"
        f"report = run(Fixed(), [{str(chip)!r}])\n"
        "print(report.notes[0])\n"
        "print('pyproj' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    first_note, modules, second_note, pyproj_loaded = result.stdout.strip().splitlines()
    assert "no image is georeferenced" in first_note and "chip.pgw" in first_note
    assert modules == "[]"
    assert "no CRS" in second_note and pyproj_loaded == "True"


def test_load_predictor_carries_metadata(tiny_checkpoint: Path) -> None:
    from wakemodel.predictors import Predictor, TorchPredictor, load_predictor

    predictor = load_predictor(tiny_checkpoint, accelerator="cpu")
    assert isinstance(predictor, TorchPredictor) and isinstance(predictor, Predictor)
    metadata = predictor.metadata
    assert metadata["format"] == "ckpt" and metadata["path"] == str(tiny_checkpoint)
    assert metadata["image_size"] == predictor.image_size == 32
    assert metadata["hyper_parameters"]["image_size"] == 32
    assert "run_dir" in metadata
    assert load_model is load_predictor


class SpreadPredictor(FixedPredictor):
    """FixedPredictor that also reports a fixed keypoint std (normalised)."""

    def __init__(
        self, std: float, visibility: tuple[float, float, float] = (0.9, 0.8, 0.3)
    ) -> None:
        super().__init__(visibility)
        self.std = std

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keypoints, visibility = super().__call__(images)
        return keypoints, visibility, np.full_like(keypoints, self.std)


def test_prediction_uncertainty_in_pixels_and_degrees() -> None:
    (prediction,) = predict(SpreadPredictor(0.01), [np.ones((40, 40))], tta=False)
    assert prediction.vertex_std_px == pytest.approx(0.4)  # 1 % of a 40 px chip, both axes
    keypoints_px = FIXED_KEYPOINTS * 40
    expected = kp.heading_std_deg(
        keypoints_px[None], np.full((1, 3, 2), 0.4), prediction.visible[None]
    )[0]
    assert prediction.heading_std_deg == pytest.approx(expected)
    wider = predict(SpreadPredictor(0.02), [np.ones((40, 40))], tta=False)[0]
    assert wider.heading_std_deg == pytest.approx(2 * prediction.heading_std_deg)


def test_tta_std_adds_the_disagreement_of_the_views() -> None:
    images = np.zeros((1, 1, 32, 32), dtype=np.float32)
    _, _, plain_std = predict_batch(SpreadPredictor(0.01), images)
    keypoints, _, tta_std = predict_batch(SpreadPredictor(0.01), images, tta=True)
    np.testing.assert_allclose(plain_std, 0.01)
    # The fixed vertex maps back to different places from each view: they disagree, and the
    # TTA std is the per-view std and the spread of the views combined.
    vertices = np.array(
        [untransform_keypoints(FIXED_KEYPOINTS[0], t) for t in dihedral_transforms()]
    )
    agreed = np.median(vertices, axis=0)
    np.testing.assert_allclose(keypoints[0, 0], agreed)
    np.testing.assert_allclose(
        tta_std[0, 0], np.sqrt(0.01**2 + np.mean((vertices - agreed) ** 2, axis=0))
    )
    assert (tta_std[0, 0] > 0.1).all()


def test_low_wake_score_is_no_readable_wake(tmp_path: Path) -> None:
    chips = [np.ones((30, 40))]
    (kept,) = predict(SpreadPredictor(0.01, visibility=(0.6, 0.8, 0.3)), chips, tta=False)
    (rejected,) = predict(SpreadPredictor(0.01, visibility=(0.2, 0.8, 0.3)), chips, tta=False)
    assert kept.wake_found and not rejected.wake_found
    strict = predict(
        SpreadPredictor(0.01, visibility=(0.6, 0.8, 0.3)), chips, min_wake_score=0.7, tta=False
    )
    assert not strict[0].wake_found
    document = rejected.to_dict()
    # The JSON keeps the raw values with the flag; the table gives no heading.
    assert document["wake_found"] is False and document["wake_score"] == pytest.approx(0.2)
    assert document["heading_deg"] is not None
    table = format_table([kept, rejected])
    kept_row, rejected_row = table.splitlines()[1:]
    assert "no readable wake" in rejected_row and "°" not in rejected_row
    assert "no readable wake" not in kept_row and "° ±" in kept_row
    with pytest.raises(InputError, match="min_wake_score"):
        predict(FixedPredictor(), chips, min_wake_score=1.5, tta=False)


def test_cli_min_wake_score_out_of_range(tiny_checkpoint: Path, synthetic_dir: Path) -> None:
    image = next((synthetic_dir / "imgs").iterdir())
    result = _run(["infer", str(tiny_checkpoint), str(image), "--min-wake-score", "2"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("Error: ") and "--min-wake-score" in last_line
