import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from wakemodel.cli import main


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline_on_synthetic_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "synthetic"
    out_dir = tmp_path / "demo"
    result = CliRunner().invoke(
        main,
        [
            "demo",
            "--data",
            str(data_dir),
            "--out",
            str(out_dir),
            "--epochs",
            "1",
            "--lr",
            "0.0005",
            "--image-size",
            "32",
            "--count",
            "12",
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(list((data_dir / "imgs").glob("*.png"))) == 12
    holdout = sorted((tmp_path / "synthetic-holdout" / "imgs").glob("*.png"))
    assert len(holdout) == 48
    report = json.loads((out_dir / "evaluation.json").read_text())
    assert report["summary"]["count"] == 48
    assert len(report["samples"]) == 48
    for name in ("prediction.png", "predictions.png", "errors.png", "history.png"):
        with Image.open(out_dir / name) as figure:
            assert figure.width > 100 and figure.height > 100
    run = out_dir / "train"
    assert list((run / "checkpoints").glob("wake-epoch=000-*.ckpt"))
    assert (run / "config.yaml").is_file() and (run / "metrics.csv").is_file()
    assert "lr: 0.0005\n" in (run / "config.yaml").read_text()
    assert "Best checkpoint:" in result.output
    assert "heading error (deg)" in result.output
