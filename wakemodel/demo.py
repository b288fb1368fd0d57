"""The main job on the embedded default: synthetic data, short CPU training, evaluation.

``python cli.py demo`` runs :func:`run_demo`: it writes a small synthetic
Sentinel-2 wake set (if absent), trains the keypoint model briefly at a small
image size, evaluates it on held-out chips of another seed, predicts one chip
and saves the figures. Everything goes through the same library functions as
the individual commands.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from wakemodel._io import atomic_write_text
from wakemodel.config import DEMO_EPOCHS, DEMO_IMAGE_SIZE, MODEL_DEFAULTS, TRAIN_BATCH_SIZE
from wakemodel.evaluate import EvaluationReport, evaluate
from wakemodel.infer import Prediction, predict
from wakemodel.plots import plot_prediction, plot_training_history
from wakemodel.preprocess import read_image
from wakemodel.synthetic import generate_dataset
from wakemodel.train import TrainConfig, TrainResult, train

logger = logging.getLogger(__name__)

HOLDOUT_SEED_OFFSET = 1
"""The held-out evaluation set uses ``seed + 1``, so it shares no chip with training."""

TRAIN_RUN_NAME = "train"
"""The training run's folder inside the demo folder (``OUT/train/``; ``train-1`` ... if taken)."""


@dataclass
class DemoResult:
    """What the demo produced.

    Attributes:
        training: The training run (checkpoints, run folder, best metrics).
        evaluation: Errors on the held-out synthetic chips.
        prediction: The prediction on one held-out chip.
        figures: Paths of the written figures.
        report_path: Evaluation JSON.
    """

    training: TrainResult
    evaluation: EvaluationReport
    prediction: Prediction
    figures: list[Path]
    report_path: Path


def _ensure_synthetic(root: Path, count: int, seed: int, max_size: int) -> Path:
    """Generate a synthetic set at ``root`` unless it already holds images."""
    if (root / "imgs").is_dir() and any((root / "imgs").iterdir()):
        logger.info("Using the existing synthetic set %s", root)
        return root
    logger.info("Generating %d synthetic chips in %s (seed %d)", count, root, seed)
    return generate_dataset(root, count, seed, min_size=200, max_size=max_size)


def run_demo(
    data_dir: Path = Path("data/synthetic"),
    out_dir: Path = Path("runs/demo"),
    *,
    count: int = 600,
    holdout_count: int = 48,
    epochs: int = DEMO_EPOCHS,
    lr: float = MODEL_DEFAULTS.lr,
    image_size: int = DEMO_IMAGE_SIZE,
    batch_size: int = TRAIN_BATCH_SIZE,
    seed: int = 0,
    accelerator: str = "cpu",
    max_size: int = 480,
) -> DemoResult:
    """Run the whole pipeline on synthetic data.

    Args:
        data_dir: Training set (generated with ``seed`` when absent).
        out_dir: Folder for the evaluation JSON and figures; the training run
            folder (``config.yaml``, ``metrics.csv``, ``checkpoints/``) is
            ``OUT_DIR/train/`` (``train-1`` ... when taken).
        count: Number of training chips to generate.
        holdout_count: Number of held-out evaluation chips (seed ``seed + 1``),
            written to ``DATA_DIR-holdout``.
        epochs: Training epochs.
        lr: Peak AdamW learning rate.
        image_size: Network input side (pixels).
        batch_size: Chips per batch.
        seed: Seed of the data and the training run.
        accelerator: Device (see :func:`wakemodel.devices.select_device`).
        max_size: Largest synthetic chip side (pixels); small chips keep it quick.

    The held-out chips and the example chip are read as ``infer`` and ``evaluate`` read
    them by default: the 8 flips/rotations combined.

    Returns:
        The training run, the evaluation, one prediction and the figure paths.
    """
    data_dir = _ensure_synthetic(Path(data_dir), count, seed, max_size)
    holdout_dir = _ensure_synthetic(
        data_dir.with_name(f"{data_dir.name}-holdout"),
        holdout_count,
        seed + HOLDOUT_SEED_OFFSET,
        max_size,
    )
    out_dir = Path(out_dir)
    training = train(
        TrainConfig(
            data_dir=data_dir,
            epochs=epochs,
            lr=lr,
            pretrained=False,
            batch_size=batch_size,
            image_size=image_size,
            seed=seed,
            accelerator=accelerator,
            run_dir=out_dir,
            run_name=TRAIN_RUN_NAME,
            warmup_epochs=1.0,
        )
    )
    model_path = training.best_checkpoint or training.last_checkpoint
    evaluation = evaluate(model_path, holdout_dir, accelerator=accelerator)
    report_path = atomic_write_text(
        out_dir / "evaluation.json", json.dumps(evaluation.to_dict(), indent=2)
    )
    chip = sorted((holdout_dir / "imgs").iterdir())[0]
    prediction = predict(model_path, [chip], accelerator=accelerator)[0]
    figures = [
        plot_prediction(read_image(chip), prediction, out_dir / "prediction.png"),
        evaluation.plot_predictions(out_dir / "predictions.png"),
        evaluation.plot_errors(out_dir / "errors.png"),
    ]
    if training.metrics_path is not None:
        figures.append(plot_training_history(training.metrics_path, out_dir / "history.png"))
    return DemoResult(training, evaluation, prediction, figures, report_path)
