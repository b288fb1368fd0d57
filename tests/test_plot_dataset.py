from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from wakemodel.cli import main
from wakemodel.errors import WakeModelError
from wakemodel.plots import plot_dataset_grid


@pytest.mark.parametrize(("count", "size"), [(3, (900, 300)), (7, (1500, 600))])
def test_dataset_grid_size(
    synthetic_dir: Path, tmp_path: Path, count: int, size: tuple[int, int]
) -> None:
    out = plot_dataset_grid(synthetic_dir, tmp_path / "figs" / "grid.png", count=count)
    assert out == tmp_path / "figs" / "grid.png"
    with Image.open(out) as image:
        assert image.size == size
        assert len(np.unique(np.asarray(image.convert("L")))) > 50
    assert [path.name for path in out.parent.iterdir()] == ["grid.png"]


def test_dataset_grid_errors(tmp_path: Path, synthetic_dir: Path) -> None:
    with pytest.raises(WakeModelError):
        plot_dataset_grid(tmp_path / "missing", tmp_path / "grid.png")
    with pytest.raises(WakeModelError, match="suffix"):
        plot_dataset_grid(synthetic_dir, tmp_path / "grid.nope", count=1)
    assert list(tmp_path.iterdir()) == []


def test_cli_plot_dataset(synthetic_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "grid.png"
    result = runner.invoke(
        main, ["plot", "dataset", str(synthetic_dir), "--out", str(out), "--count", "2"]
    )
    assert result.exit_code == 0, result.output
    assert f"Saved {out}" in result.output
    assert out.stat().st_size > 1000
    missing = runner.invoke(main, ["plot", "dataset", str(tmp_path / "nope"), "--out", str(out)])
    assert missing.exit_code == 2
    assert "Error:" in missing.output
