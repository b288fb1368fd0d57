"""Evaluation: known errors on a hand-made dataset, summary, JSON and CLI."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from wakemodel.cli import main
from wakemodel.evaluate import (
    PUBLISHED_HEADING_ERROR_DEG,
    PUBLISHED_VERTEX_ERROR_FRAC,
    evaluate,
    find_training_log,
    summarize,
)

TRUTH_NORM = np.array([[0.5, 0.5], [0.2, 0.9], [0.8, 0.9]])
VERTEX_SHIFT_NORM = 0.1
CHIP_SIZES = [(100, 100), (200, 100), (40, 80), (20, 100)]


class ShiftedTruthPredictor:
    """Predicts the (shared) normalised ground truth with the vertex moved right by 10 %."""

    image_size = 32

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keypoints = TRUTH_NORM.copy()
        keypoints[0, 0] += VERTEX_SHIFT_NORM
        batch = images.shape[0]
        return np.tile(keypoints, (batch, 1, 1)), np.full((batch, 3), 0.9)


@pytest.fixture
def known_dataset(tmp_path: Path) -> Path:
    """Chips of several sizes whose keypoints sit at the same normalised positions."""
    root = tmp_path / "known"
    (root / "imgs").mkdir(parents=True)
    (root / "annotations").mkdir()
    rng = np.random.default_rng(1)
    for index, (width, height) in enumerate(CHIP_SIZES):
        name = f"chip{index}"
        pixels = rng.integers(0, 255, size=(height, width), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "imgs" / f"{name}.png")
        tooltips = [{"x": x * width, "y": y * height} for x, y in TRUTH_NORM]
        (root / "annotations" / f"{name}.json").write_text(json.dumps({"tooltips": tooltips}))
    return root


def _expected(width: int, height: int) -> dict[str, float]:
    vertex_error_px = VERTEX_SHIFT_NORM * width
    wake_length_px = 0.4 * height
    diagonal = math.hypot(width, height)
    return {
        "vertex_error_px": vertex_error_px,
        "vertex_error_m": vertex_error_px * 10.0,
        "vertex_error_frac": vertex_error_px / wake_length_px,
        "heading_error_deg": math.degrees(math.atan2(vertex_error_px, wake_length_px)),
        "pck": (2 + (vertex_error_px <= 0.05 * diagonal)) / 3,
    }


def test_known_errors(known_dataset: Path) -> None:
    report = evaluate(ShiftedTruthPredictor(), known_dataset, batch_size=3, tta=False)
    assert report.names == [f"chip{i}.png" for i in range(len(CHIP_SIZES))]
    for key in report.errors:
        expected = [_expected(w, h)[key] for w, h in CHIP_SIZES]
        np.testing.assert_allclose(report.errors[key], expected, rtol=1e-4, err_msg=key)
    summary = report.summary
    assert summary["count"] == 4
    frac = [_expected(w, h)["vertex_error_frac"] for w, h in CHIP_SIZES]
    assert summary["metrics"]["vertex_error_frac"]["median"] == pytest.approx(np.median(frac))
    assert summary["metrics"]["vertex_error_frac"]["mean"] == pytest.approx(np.mean(frac))
    assert summary["metrics"]["vertex_error_frac"]["p90"] == pytest.approx(np.percentile(frac, 90))
    assert summary["share_vertex_within_threshold"] == pytest.approx(0.25)
    assert summary["share_heading_within_threshold"] == pytest.approx(0.5)


def test_limit_and_gsd(known_dataset: Path) -> None:
    report = evaluate(ShiftedTruthPredictor(), known_dataset, gsd_m=20.0, limit=2, tta=False)
    assert report.summary["count"] == 2
    np.testing.assert_allclose(report.errors["vertex_error_m"], [200.0, 400.0], rtol=1e-4)


def test_summarize_ignores_nan_and_counts_it_outside() -> None:
    errors = {
        "vertex_error_px": np.array([1.0, 3.0, np.nan]),
        "vertex_error_m": np.array([10.0, 30.0, np.nan]),
        "vertex_error_frac": np.array([0.05, 0.2, np.nan]),
        "heading_error_deg": np.array([5.0, np.nan, 1.0]),
        "pck": np.array([1.0, 0.0, np.nan]),
    }
    summary = summarize(errors)
    assert summary["metrics"]["vertex_error_px"]["mean"] == pytest.approx(2.0)
    assert summary["share_vertex_within_threshold"] == pytest.approx(1 / 3)
    assert summary["share_heading_within_threshold"] == pytest.approx(2 / 3)


def test_report_json_and_table(known_dataset: Path) -> None:
    report = evaluate(ShiftedTruthPredictor(), known_dataset, tta=False)
    document = json.loads(json.dumps(report.to_dict()))
    assert document["published"] == {
        "vertex_error_frac_below": PUBLISHED_VERTEX_ERROR_FRAC,
        "heading_error_deg_below": PUBLISHED_HEADING_ERROR_DEG,
    }
    assert len(document["samples"]) == 4
    assert document["samples"][0]["vertex_error_px"] == pytest.approx(10.0, rel=1e-4)
    table = report.format_table()
    assert "heading error (deg)" in table and "< 10%" in table
    assert "25.0%" in table


class TexturePredictor(ShiftedTruthPredictor):
    """ShiftedTruthPredictor whose wake score is high on textured chips, low on flat ones."""

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keypoints, visibility = super().__call__(images)
        visibility[:, 0] = np.where(images.std(axis=(1, 2, 3)) > 0.01, 0.9, 0.1)
        return keypoints, visibility, np.full_like(keypoints, 0.05)


def test_chips_without_a_wake_are_scored_not_counted_as_errors(
    known_dataset: Path, tmp_path: Path
) -> None:
    for index in range(2):  # flat chips annotated as holding no wake
        name = f"zz_negative{index}"
        flat = Image.fromarray(np.full((60, 60), 90, np.uint8))
        flat.save(known_dataset / "imgs" / f"{name}.png")
        (known_dataset / "annotations" / f"{name}.json").write_text('{"tooltips": []}')
    report = evaluate(TexturePredictor(), known_dataset, tta=False)
    summary = report.summary
    assert (summary["count"], summary["wakes"], summary["no_wake"]) == (6, 4, 2)
    assert np.isnan(report.errors["heading_error_deg"][4:]).all()
    assert np.isnan(report.errors["vertex_error_px"][4:]).all()
    # The shares are over the chips with a wake, as without the negatives.
    assert summary["share_vertex_within_threshold"] == pytest.approx(0.25)
    calibration = summary["calibration"]
    assert calibration["wake_recall"] == 1.0 and calibration["negative_rejection"] == 1.0
    assert calibration["roc_auc"] == 1.0
    assert calibration["count"] == 4
    document = json.loads(json.dumps(report.to_dict()))
    negative = document["samples"][-1]
    assert negative["has_wake"] is False and negative["wake_found"] is False
    assert negative["heading_error_deg"] is None and negative["wake_score"] < 0.5
    assert document["samples"][0]["heading_std_deg"] > 0
    assert document["summary"]["calibration"]["negatives"] == 2
    table = report.format_table()
    assert "2 without a wake" in table and "ROC AUC" in table
    assert "negative rejection" in table
    # The worst-chip grid shows chips with a wake, never a negative's NaN error first.
    worst = report.plot_predictions(tmp_path / "worst.png", count=2, worst=True)
    assert worst.is_file()
    figure = report.plot_calibration(tmp_path / "calibration.png")
    with Image.open(figure) as image:
        assert image.width > 600


def test_empty_dataset_is_an_error(tmp_path: Path) -> None:
    from wakemodel.errors import WakeModelError

    (tmp_path / "imgs").mkdir()
    (tmp_path / "annotations").mkdir()
    with pytest.raises(WakeModelError):
        evaluate(ShiftedTruthPredictor(), tmp_path, tta=False)


def test_find_training_log(tmp_path: Path) -> None:
    checkpoint = tmp_path / "run" / "checkpoints" / "best.ckpt"
    checkpoint.parent.mkdir(parents=True)
    assert find_training_log(checkpoint) is None
    (tmp_path / "run" / "metrics.csv").write_text("epoch,val/loss\n0,1.0\n")
    assert find_training_log(checkpoint) == tmp_path / "run" / "metrics.csv"


def test_find_training_log_follows_the_checkpoint_stamp(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    # The fixture writes checkpoints outside the run folder: only the stamp leads to the log.
    expected = tiny_checkpoint.parent.parent / "runs" / "tiny" / "metrics.csv"
    assert expected.is_file()
    moved = tmp_path / "elsewhere" / "model.ckpt"
    moved.parent.mkdir()
    shutil.copy(tiny_checkpoint, moved)
    assert find_training_log(moved) == expected
    assert find_training_log(tmp_path / "not-a-model.onnx") is None


def test_cli_evaluate_json_and_plots(
    tiny_checkpoint: Path, synthetic_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report.json"
    plots = tmp_path / "plots"
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            str(tiny_checkpoint),
            str(synthetic_dir),
            "--json",
            str(out),
            "--plots",
            str(plots),
            "--accelerator",
            "cpu",
            "--batch-size",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "published" in result.stdout and "PCK@5%" in result.stdout
    document = json.loads(out.read_text())
    assert set(document["summary"]["metrics"]) == {
        "vertex_error_px",
        "vertex_error_m",
        "vertex_error_frac",
        "heading_error_deg",
        "pck",
    }
    for name in ("predictions.png", "errors.png"):
        with Image.open(plots / name) as png:
            assert png.format == "PNG" and min(png.size) > 100


def test_cli_evaluate_missing_data(tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["evaluate", str(tiny_checkpoint), str(tmp_path / "none")])
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ") and len(result.stderr.strip().splitlines()) == 1


def test_plot_worst_chips_orders_by_heading_error(
    known_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wakemodel.plots

    shown: dict[str, object] = {}

    def capture(images, predictions, truth, visible, path, **kwargs):
        shown["names"] = [Path(p.source).stem for p in predictions]
        shown["errors"] = kwargs["heading_errors_deg"]
        return Path(path)

    monkeypatch.setattr(wakemodel.plots, "plot_prediction_grid", capture)
    report = evaluate(ShiftedTruthPredictor(), known_dataset, tta=False)
    report.plot_predictions(tmp_path / "worst.png", count=3, worst=True)
    # Heading errors: chip1 26.6°, chip0 14.0°, chip2 7.1°, chip3 2.9° (see _expected).
    assert shown["names"] == ["chip1", "chip0", "chip2"]
    expected = [_expected(*CHIP_SIZES[i])["heading_error_deg"] for i in (1, 0, 2)]
    assert shown["errors"] == pytest.approx(expected)
    report.plot_predictions(tmp_path / "first.png", count=2)
    assert shown["names"] == ["chip0", "chip1"]


def test_evaluate_reports_progress_and_keeps_dataset_order(known_dataset: Path) -> None:
    calls: list[tuple[int, int]] = []
    report = evaluate(
        ShiftedTruthPredictor(), known_dataset, batch_size=3, progress=lambda *a: calls.append(a)
    )
    assert calls == [(3, 4), (4, 4)]
    assert report.names == [f"chip{i}.png" for i in range(4)]
    assert [Path(p.source).name for p in report.predictions] == report.names
