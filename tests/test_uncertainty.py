"""After a short training: the wake score separates chips without a wake, and the
predicted uncertainty grows when the wake is blanked out (issue #12)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
from PIL import Image, ImageDraw

from wakemodel.datamodule import WakeDataModule
from wakemodel.evaluate import evaluate
from wakemodel.infer import predict
from wakemodel.model import WakeKeypointModule
from wakemodel.synthetic import generate_dataset

pytestmark = pytest.mark.slow

CHIP_SIDES = {"min_size": 64, "max_size": 96}


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[WakeKeypointModule, Path, Path]:
    """A model trained briefly on chips with and without a wake, those chips, and its checkpoint.

    Without augmentation, so that ~100 steps are enough for the pooled features
    (and their BatchNorm statistics) to tell wakes from sea. After so short a
    training only the chips it learned from are separated reliably (held-out
    figures are measured in benchmarks/README.md).
    """
    root = tmp_path_factory.mktemp("uncertainty")
    train_dir = generate_dataset(
        root / "train", 96, seed=21, no_wake_fraction=0.35, workers=2, **CHIP_SIDES
    )
    pl.seed_everything(0, verbose=False)
    datamodule = WakeDataModule(
        train_dir, image_size=64, batch_size=16, num_workers=0, seed=0, augment=False
    )
    module = WakeKeypointModule(image_size=64, wake_weight=1.0, warmup_epochs=0.5, max_epochs=20)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=20,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(module, datamodule=datamodule)
    checkpoint = root / "trained.ckpt"
    trainer.save_checkpoint(checkpoint)
    return module.eval(), train_dir, checkpoint


def test_wake_score_separates_chips_without_a_wake(
    trained: tuple[WakeKeypointModule, Path, Path],
) -> None:
    module, chips, _ = trained
    report = evaluate(module, chips)
    calibration = report.summary["calibration"]
    assert calibration["negatives"] >= 5 and calibration["positives"] >= 10
    assert calibration["roc_auc"] > 0.8, calibration
    # Calibrated during validation: a finite, positive uncertainty for every wake.
    assert np.isfinite(report.heading_std_deg[report.has_wake]).all()
    assert (report.heading_std_deg[report.has_wake] > 0).all()


def _blank_wake(image_path: Path, annotation_path: Path) -> np.ndarray:
    """The chip with every wake line (vertex to each end) painted over in the sea's median."""
    pixels = np.asarray(Image.open(image_path).convert("L"))
    points = [(p["x"], p["y"]) for p in json.loads(annotation_path.read_text())["tooltips"]]
    blanked = Image.fromarray(pixels)
    draw = ImageDraw.Draw(blanked)
    width = max(4, round(0.08 * min(pixels.shape)))
    for end in points[1:]:
        draw.line([points[0], end], fill=int(np.median(pixels)), width=width)
    return np.asarray(blanked)


def test_uncertainty_grows_when_the_wake_is_blanked_out(
    trained: tuple[WakeKeypointModule, Path, Path],
) -> None:
    module, chips, _ = trained
    annotations = sorted((chips / "annotations").glob("*.json"))
    with_wake = [a for a in annotations if json.loads(a.read_text())["tooltips"]]
    images = [chips / "imgs" / f"{a.stem}.png" for a in with_wake]
    blanked = [_blank_wake(i, a) for i, a in zip(images, with_wake, strict=True)]
    originals = [np.asarray(Image.open(i).convert("L")) for i in images]
    # So weak a model is calibrated to stds near the 103.9-degree cap (a heading spread over the
    # whole circle), which squeezes their ratio: compare the network's own spread (scale 1).
    scale = module.detector.std_scale.item()
    module.detector.std_scale.fill_(1.0)
    before = predict(module, originals, tta=False)
    after = predict(module, blanked, tta=False)
    module.detector.std_scale.fill_(scale)
    std_before = np.array([p.heading_std_deg for p in before])
    std_after = np.array([p.heading_std_deg for p in after])
    assert np.median(std_after) > 1.25 * np.median(std_before), (std_before, std_after)
    assert np.mean(std_after > std_before) >= 0.75
    score_before = np.array([p.wake_score for p in before])
    score_after = np.array([p.wake_score for p in after])
    assert np.median(score_after) < np.median(score_before)


def test_platt_scaling_is_fitted_on_chips_without_a_wake_and_refits_the_same(
    trained: tuple[WakeKeypointModule, Path, Path], tmp_path: Path
) -> None:
    import shutil

    from wakemodel.calibration import apply_wake_score_platt
    from wakemodel.predictors import load_predictor, wake_score_platt
    from wakemodel.records import scan_dataset
    from wakemodel.train import calibrate_tta

    _, chips, trained_checkpoint = trained
    checkpoint = Path(shutil.copy(trained_checkpoint, tmp_path / "model.ckpt"))
    records = scan_dataset(chips)
    raw = evaluate(checkpoint, chips, accelerator="cpu")
    platt = calibrate_tta([checkpoint], records, "cpu")[checkpoint].wake_score_platt
    assert platt is not None and platt[0] > 0
    assert wake_score_platt(load_predictor(checkpoint, accelerator="cpu")) == pytest.approx(platt)
    calibrated = evaluate(checkpoint, chips, accelerator="cpu")
    np.testing.assert_allclose(
        calibrated.wake_score, apply_wake_score_platt(raw.wake_score, platt), atol=1e-5
    )
    # Fitted by maximum likelihood on these chips: the mean probability is the mean of
    # Platt's smoothed targets, (P + 1) / (P + 2) per wake and 1 / (N + 2) per negative.
    positives = int(raw.has_wake.sum())
    negatives = len(records) - positives
    targets = positives * (positives + 1) / (positives + 2) + negatives / (negatives + 2)
    assert calibrated.wake_score.mean() == pytest.approx(targets / len(records), abs=2e-3)
    assert calibrated.summary["calibration"]["roc_auc"] == pytest.approx(
        raw.summary["calibration"]["roc_auc"]
    )
    # A refit sees the scores before the stored scaling, so it finds the same one.
    refit = calibrate_tta([checkpoint], records, "cpu")[checkpoint].wake_score_platt
    assert refit == pytest.approx(platt, rel=1e-3)
    # Chips of one kind only (as in the real data) leave nothing to fit: the entry goes.
    wakes = [record for record in records if record.has_wake]
    assert calibrate_tta([checkpoint], wakes, "cpu")[checkpoint].wake_score_platt is None
    assert wake_score_platt(load_predictor(checkpoint, accelerator="cpu")) is None
