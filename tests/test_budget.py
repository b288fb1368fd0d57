"""Training to a wall-clock budget: epochs and LR schedule fitted to the time."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import pytorch_lightning as pl

from wakemodel.budget import TimeBudget, parse_duration_s
from wakemodel.datamodule import WakeDataModule
from wakemodel.errors import InputError
from wakemodel.model import WakeKeypointModule, warmup_cosine_factor


class FakeClock:
    """A clock that moves only when told (seconds)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class OneSecondPerStep(pl.Callback):
    """Advance the fake clock by one second per training step (validation is free)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    def on_train_batch_end(self, *args: object, **kwargs: object) -> None:
        self.clock.now += 1.0


def _fit(data_dir: Path, budget: TimeBudget, clock: FakeClock, max_epochs: int) -> pl.Trainer:
    pl.seed_everything(0, verbose=False)
    module = WakeKeypointModule(image_size=32, pretrained=False, warmup_epochs=0.0, lr=1e-3)
    datamodule = WakeDataModule(data_dir, image_size=32, batch_size=8, num_workers=0)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[OneSecondPerStep(clock), budget],
    )
    trainer.fit(module, datamodule=datamodule)
    return trainer


@pytest.mark.parametrize(("text", "seconds"), [("00:00:15:00", 900.0), ("01:02:03:04", 93784.0)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize("text", ["15:00", "00:00:00:00", "a:b:c:d", "00:00:-1:00"])
def test_parse_duration_rejects_bad_text(text: str) -> None:
    with pytest.raises(InputError, match="--max-time"):
        parse_duration_s(text)


def test_budget_sets_epochs_and_ends_the_schedule_annealed(synthetic_dir: Path) -> None:
    # 20 training chips at batch 8 (last one dropped): 2 steps of 1 s per epoch.
    # 11 s * 0.97 safety fits 5 epochs = 10 steps; the schedule must end there.
    clock = FakeClock()
    budget = TimeBudget(11.0, max_epochs=100, clock=clock)
    trainer = _fit(synthetic_dir, budget, clock, max_epochs=100)
    assert trainer.current_epoch == 5
    assert budget.planned_epochs == 5 and budget.planned_steps == 10
    assert trainer.global_step == 10
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    min_ratio = trainer.lightning_module.hparams.min_lr_ratio
    assert scheduler.get_last_lr()[0] == pytest.approx(1e-3 * min_ratio)
    assert warmup_cosine_factor(10, warmup_steps=0, total_steps=10, min_lr_ratio=min_ratio) == (
        pytest.approx(min_ratio)
    )


def test_budget_never_exceeds_the_epoch_limit(synthetic_dir: Path) -> None:
    clock = FakeClock()
    budget = TimeBudget(1000.0, max_epochs=2, clock=clock)
    trainer = _fit(synthetic_dir, budget, clock, max_epochs=2)
    assert trainer.current_epoch == 2
    assert budget.planned_steps == 4


def test_budget_state_carries_the_time_already_spent() -> None:
    clock = FakeClock()
    budget = TimeBudget(100.0, max_epochs=10, clock=clock)
    clock.now = 30.0
    resumed = TimeBudget(100.0, max_epochs=10, clock=clock)
    resumed.load_state_dict(budget.state_dict())
    assert resumed.elapsed_s() == pytest.approx(30.0)


class FinalLearningRate(pl.Callback):
    """Record the learning rate the optimizer ends with."""

    lr: float | None = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.lr = trainer.optimizers[0].param_groups[0]["lr"]


def test_train_with_max_time_ends_annealed_on_time(synthetic_dir: Path, tmp_path: Path) -> None:
    from wakemodel.train import TrainConfig, train

    final = FinalLearningRate()
    start = time.monotonic()
    result = train(
        TrainConfig(
            data_dir=synthetic_dir,
            epochs=1000,
            batch_size=8,
            image_size=32,
            accelerator="cpu",
            run_dir=tmp_path,
            pretrained=False,
            progress_bar=False,
            workers=0,
            logger="none",
            warmup_epochs=0.0,
            max_time="00:00:00:12",
        ),
        callbacks=[final],
    )
    elapsed_s = time.monotonic() - start
    assert 1 < result.epochs_completed < 1000
    assert elapsed_s < 12 + 4  # the budget, plus the last checkpoint and Lightning's teardown
    # Annealed: the cosine schedule ends at min_lr_ratio (0.01) x lr; a run cut mid-schedule
    # (Lightning's max_time alone) would end far above that.
    assert final.lr is not None and final.lr <= 0.05 * 1e-3
    assert result.best_checkpoint is not None and result.best_checkpoint.is_file()
