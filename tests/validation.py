"""Validate a saved checkpoint alone, in one process, as ``train`` splits the data."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl

from wakemodel.datamodule import WakeDataModule
from wakemodel.model import WakeKeypointModule


def validate_checkpoint(
    checkpoint: Path, data_dir: Path, *, image_size: int, batch_size: int, seed: int
) -> tuple[dict[str, float], WakeDataModule]:
    """The ``val/`` metrics of ``checkpoint``'s weights on the run's validation split.

    The data module is built as ``train`` builds it, so the same seed gives the same split.

    Returns:
        The metrics and the data module (for its split sizes).
    """
    module = WakeKeypointModule.load_from_checkpoint(checkpoint, map_location="cpu")
    datamodule = WakeDataModule(
        data_dir, image_size=image_size, batch_size=batch_size, num_workers=0, seed=seed
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    results = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    return {name: float(value) for name, value in results.items()}, datamodule
