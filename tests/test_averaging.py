from pathlib import Path

import pytest
import torch
from validation import validate_checkpoint

from wakemodel.averaging import STD_SCALE_KEY, warmed_up_decay
from wakemodel.train import TrainConfig, train

IMAGE_SIZE = 32
SEED = 4


def test_decay_warms_up_to_its_target() -> None:
    assert warmed_up_decay(0.99, 0) == pytest.approx(0.1)
    assert warmed_up_decay(0.99, 10) == pytest.approx(11 / 20)
    assert warmed_up_decay(0.99, 10_000) == 0.99
    decays = [warmed_up_decay(0.99, n) for n in range(2000)]
    assert decays == sorted(decays)


def test_ema_weights_are_validated_and_saved(make_synthetic_dir, tmp_path: Path) -> None:
    data_dir = make_synthetic_dir(count=40, seed=SEED)
    result = train(
        TrainConfig(
            data_dir=data_dir,
            epochs=2,
            batch_size=4,
            image_size=IMAGE_SIZE,
            accelerator="cpu",
            workers=0,
            pretrained=False,
            seed=SEED,
            ema_decay=0.9,
            run_dir=tmp_path,
            run_name="ema",
            progress_bar=False,
            logger="none",
        )
    )
    assert result.best_checkpoint is not None
    checkpoint = torch.load(result.best_checkpoint, map_location="cpu", weights_only=False)
    averaged, raw = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert averaged.keys() == raw.keys()
    differing = [
        name
        for name, value in averaged.items()
        if value.is_floating_point() and not torch.equal(value, raw[name])
    ]
    assert len(differing) > 100  # every trained weight is averaged
    # The calibration fitted after validating the averaged weights is saved with them.
    assert STD_SCALE_KEY not in differing
    assert float(averaged[STD_SCALE_KEY]) != 1.0

    # What was validated during training (and chose the best checkpoint) is the saved
    # averaged model: validating the checkpoint alone gives the same metrics.
    logged = result.best_metrics
    again, _ = validate_checkpoint(
        result.best_checkpoint, data_dir, image_size=IMAGE_SIZE, batch_size=4, seed=SEED
    )
    for name in ("val/vertex_error_px", "val/heading_error_deg", "val/loss"):
        assert again[name] == pytest.approx(logged[name], rel=1e-4, abs=1e-4), name
