"""Training to a wall-clock budget: the epoch count and the LR schedule fitted to the time.

Lightning's ``max_time`` alone cuts a run wherever the clock runs out, usually in
the middle of its learning-rate schedule (high learning rate, no annealing).
:class:`TimeBudget` instead measures how long training steps take, first over
the first few steps and then after every validation, and sets

- the number of epochs to the whole epochs that still fit the budget (so the
  run ends after a full epoch, validated and checkpointed), and
- the length of the warm-up + cosine schedule to the steps of those epochs,

so a run that stops on time ends annealed. ``max_time`` stays on the Trainer as
a hard stop in case the estimate is wrong.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from wakemodel.errors import InputError

logger = logging.getLogger(__name__)

SAFETY_FRACTION = 0.97
"""Share of the remaining budget planned for (the rest absorbs jitter and the last save)."""

PROBE_STEPS = 10
"""Training steps timed before the first estimate (within the first epoch)."""

VALIDATION_COST_GUESS = 0.35
"""Cost of a validation batch relative to a training step, until one has been timed."""


def parse_duration_s(text: str) -> float:
    """Seconds in a ``DD:HH:MM:SS`` duration (Lightning's ``max_time`` string).

    Args:
        text: ``"DD:HH:MM:SS"``, e.g. ``"00:00:15:00"`` for 15 minutes.

    Returns:
        The duration in seconds (> 0).

    Raises:
        InputError: The text is not four non-negative integers or is zero.
    """
    parts = text.strip().split(":")
    if len(parts) != 4 or not all(part.isdigit() for part in parts):
        raise InputError(f"--max-time {text}: give DD:HH:MM:SS, e.g. 00:00:15:00.")
    days, hours, minutes, seconds = map(int, parts)
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total <= 0:
        raise InputError(f"--max-time {text}: the budget must be longer than zero.")
    return float(total)


class TimeBudget(Callback):
    """Fit ``max_epochs`` and the LR schedule's length to a wall-clock budget.

    The budget counts from this callback's creation (so data loading counts
    too). The LR scheduler must be a ``LambdaLR`` whose lambda has a
    ``total_steps`` attribute or keyword (see
    :class:`wakemodel.model.WarmupCosineSchedule`); it is updated in place.

    Args:
        budget_s: Wall-clock budget in seconds.
        max_epochs: Upper bound on the epochs (``--epochs``).
        clock: Monotonic clock in seconds (tests pass a fake one).

    Attributes:
        planned_epochs: Epochs planned at the latest estimate (None before it).
        planned_steps: Schedule length in optimizer steps at the latest estimate.
    """

    def __init__(
        self, budget_s: float, max_epochs: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not budget_s > 0:
            raise InputError(f"time budget {budget_s!r} s: must be positive.")
        self.budget_s = float(budget_s)
        self.max_epochs = int(max_epochs)
        self.clock = clock
        self.start = clock()
        self.offset_s = 0.0
        self.train_start: float | None = None
        self.steps_timed = 0
        self._first_epoch = 0
        self.planned_epochs: int | None = None
        self.planned_steps: int | None = None

    def elapsed_s(self) -> float:
        """Seconds spent of the budget (including a resumed run's earlier time)."""
        return self.offset_s + self.clock() - self.start

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start timing the training steps (and note the epoch a resumed run starts at)."""
        self.train_start = self.clock()
        self.steps_timed = 0
        self._first_epoch = trainer.current_epoch

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """After the first ``PROBE_STEPS`` steps, plan from their speed."""
        self.steps_timed += 1
        if self.planned_epochs is None and self.steps_timed == PROBE_STEPS:
            seconds_per_epoch = (
                self._seconds_per_step()
                * self._steps_per_epoch(trainer)
                * (1.0 + VALIDATION_COST_GUESS * self._validation_share(trainer))
            )
            self._plan(trainer, seconds_per_epoch)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """After each epoch's validation, re-plan from the measured epoch time."""
        if trainer.sanity_checking or self.train_start is None:
            return
        epochs_done = trainer.current_epoch + 1 - self._first_epoch
        if epochs_done < 1:
            return
        self._plan(trainer, (self.clock() - self.train_start) / epochs_done)

    def _seconds_per_step(self) -> float:
        assert self.train_start is not None
        return (self.clock() - self.train_start) / max(1, self.steps_timed)

    @staticmethod
    def _steps_per_epoch(trainer: pl.Trainer) -> int:
        batches = trainer.num_training_batches
        if not math.isfinite(batches):
            batches = 1
        return max(1, math.ceil(int(batches) / max(1, trainer.accumulate_grad_batches)))

    @staticmethod
    def _validation_share(trainer: pl.Trainer) -> float:
        """Validation batches per training batch."""
        validation = sum(trainer.num_val_batches) if trainer.num_val_batches else 0
        return validation / max(1, trainer.num_training_batches)

    def _plan(self, trainer: pl.Trainer, seconds_per_epoch: float) -> None:
        """Set the whole epochs that fit the budget and stretch the schedule to them."""
        assert self.train_start is not None
        training_budget_s = self.budget_s - self.offset_s - (self.train_start - self.start)
        usable_s = max(0.0, training_budget_s) * SAFETY_FRACTION
        fit = math.floor(usable_s / max(seconds_per_epoch, 1e-9))
        epochs = max(trainer.current_epoch + 1, min(self.max_epochs, self._first_epoch + fit))
        trainer.fit_loop.max_epochs = epochs
        total_steps = epochs * self._steps_per_epoch(trainer)
        for config in trainer.lr_scheduler_configs:
            _set_total_steps(config.scheduler, total_steps)
        if epochs != self.planned_epochs:
            logger.info(
                "Time budget: %.0f s for training at %.1f s per epoch -> %d epochs, "
                "learning-rate schedule of %d steps",
                training_budget_s,
                seconds_per_epoch,
                epochs,
                total_steps,
            )
        self.planned_epochs, self.planned_steps = epochs, total_steps

    def state_dict(self) -> dict[str, Any]:
        """The budget spent so far (a resumed run continues the same budget)."""
        return {"elapsed_s": self.elapsed_s()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the budget spent before the run was interrupted."""
        self.offset_s = float(state_dict.get("elapsed_s", 0.0))


def _set_total_steps(scheduler: Any, total_steps: int) -> None:
    """Set the schedule length of a ``LambdaLR`` whose lambdas carry ``total_steps``."""
    for schedule in getattr(scheduler, "lr_lambdas", []):
        if hasattr(schedule, "total_steps"):
            schedule.total_steps = total_steps
