"""Plot commands and functions for training history, predictions and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from wakemodel.cli import main
from wakemodel.errors import WakeModelError
from wakemodel.infer import Prediction
from wakemodel.plots import (
    find_metrics_csv,
    plot_error_distributions,
    plot_prediction,
    plot_training_history,
)

METRICS_CSV = """epoch,step,train/loss,val/loss,val/vertex_error_px,val/heading_error_deg,lr-AdamW
0,9,0.9,,,,0.001
0,19,0.7,,,,
0,19,,0.8,40.0,30.0,
1,29,0.5,,,,0.0009
1,39,0.4,,,,
1,39,,0.6,20.0,15.0,
"""


def _png_size(path: Path) -> tuple[int, int]:
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


@pytest.fixture
def metrics_csv(tmp_path: Path) -> Path:
    path = tmp_path / "runs" / "tiny" / "metrics.csv"
    path.parent.mkdir(parents=True)
    path.write_text(METRICS_CSV)
    return path


def test_plot_history_from_run_dir(metrics_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "curves.png"
    result = CliRunner().invoke(
        main, ["plot", "history", str(metrics_csv.parent.parent), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert _png_size(out) == (1200, 300)


def test_plot_history_from_csv(metrics_csv: Path, tmp_path: Path) -> None:
    out = plot_training_history(metrics_csv, tmp_path / "h.png")
    assert _png_size(out) == (1200, 300)
    assert find_metrics_csv(metrics_csv.parent) == metrics_csv


def test_plot_history_errors(tmp_path: Path) -> None:
    with pytest.raises(WakeModelError, match=r"metrics\.csv"):
        plot_training_history(tmp_path, tmp_path / "h.png")
    bad = tmp_path / "metrics.csv"
    bad.write_text("a,b\n1,2\n")
    result = CliRunner().invoke(
        main, ["plot", "history", str(bad), "--out", str(tmp_path / "h.png")]
    )
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ") and "epoch" in result.stderr
    assert not (tmp_path / "h.png").exists()


def test_plot_errors_function(tmp_path: Path) -> None:
    out = plot_error_distributions(
        np.array([0.05, 0.2, np.nan, 0.08]),
        np.array([3.0, 12.0, 40.0, np.nan]),
        tmp_path / "errors.png",
    )
    assert _png_size(out) == (1000, 400)


def test_plot_prediction_function(tmp_path: Path) -> None:
    image = np.random.default_rng(0).uniform(0, 255, size=(100, 200)).astype(np.float32)
    prediction = Prediction(
        source="chip.png",
        width=200,
        height=100,
        keypoints_px=np.array([[150.0, 50.0], [20.0, 20.0], [20.0, 80.0]]),
        visible=np.array([True, True, True]),
        visibility=np.array([0.9, 0.9, 0.8]),
        heading_deg=90.0,
        wake_length_px=130.0,
        wake_length_m=1300.0,
        gsd_m=10.0,
    )
    out = plot_prediction(image, prediction, tmp_path / "one.png")
    assert _png_size(out) == (600, 400)


def test_plot_predictions_and_errors_commands(
    tiny_checkpoint: Path, synthetic_dir: Path, tmp_path: Path
) -> None:
    grid = tmp_path / "grid.png"
    result = CliRunner().invoke(
        main,
        [
            "plot",
            "predictions",
            str(tiny_checkpoint),
            str(synthetic_dir),
            "--out",
            str(grid),
            "--count",
            "3",
            "--accelerator",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert _png_size(grid) == (900, 300)
    errors = tmp_path / "errors.png"
    result = CliRunner().invoke(
        main,
        [
            "plot",
            "errors",
            str(tiny_checkpoint),
            str(synthetic_dir),
            "--out",
            str(errors),
            "--accelerator",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert _png_size(errors) == (1000, 400)
