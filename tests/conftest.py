"""Shared fixtures: tiny synthetic wake datasets in the real dataset's layout."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from wakemodel.synthetic import generate_dataset

SyntheticFactory = Callable[..., Path]


@pytest.fixture(scope="session")
def make_synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> SyntheticFactory:
    """Return ``make(count=24, seed=0, min_size=64, max_size=128) -> Path`` (a new dataset root)."""

    def make(count: int = 24, seed: int = 0, min_size: int = 64, max_size: int = 128) -> Path:
        parent = tmp_path_factory.mktemp(f"synthetic_{count}_{seed}")
        return generate_dataset(parent / "data", count, seed, min_size=min_size, max_size=max_size)

    return make


@pytest.fixture(scope="session")
def synthetic_dir(make_synthetic_dir: SyntheticFactory) -> Path:
    """A session-wide dataset of 24 synthetic chips, 64-128 px per side, seed 0 (do not modify)."""
    return make_synthetic_dir()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, synthetic_dir: Path) -> Path:
    """A checkpoint from a 1-epoch, 32 px training run on ``synthetic_dir`` (CPU, no download).

    The run's CSV log is in ``<checkpoint folder>/../runs/tiny/metrics.csv`` (the
    checkpoints go to ``--checkpoint-dir`` here, outside the run folder).
    """
    from wakemodel.train import TrainConfig, train

    root = tmp_path_factory.mktemp("tiny_run")
    result = train(
        TrainConfig(
            data_dir=synthetic_dir,
            epochs=1,
            batch_size=8,
            image_size=32,
            accelerator="cpu",
            checkpoint_dir=root / "checkpoints",
            run_dir=root / "runs",
            run_name="tiny",
            pretrained=False,
            progress_bar=False,
            workers=0,
            warmup_epochs=0,
        )
    )
    checkpoint = result.best_checkpoint or result.last_checkpoint
    assert checkpoint is not None and checkpoint.is_file()
    return checkpoint
