"""Exponential moving average (EMA) of the weights, for validation and checkpoints.

:class:`EmaWeights` is Lightning's :class:`~pytorch_lightning.callbacks.WeightAveraging`
with an EMA whose decay warms up (``min(decay, (1 + n) / (10 + n))`` after ``n``
updates), so a short run does not drag its first, random weights along. Validation
runs on the averaged weights and checkpoints hold them (the raw weights are kept
under ``current_model_state`` for ``--resume``), so the best checkpoint is chosen
and saved as the averaged model. The calibration scale ``std_scale``, fitted after
each validation of the averaged model, is written into the saved averaged weights.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import WeightAveraging
from torch import Tensor
from torch.optim.swa_utils import get_ema_multi_avg_fn

from wakemodel.network import DETECTOR_PREFIX

EMA_WARMUP_UPDATES = 10
"""The decay after ``n`` updates is at most ``(1 + n) / (EMA_WARMUP_UPDATES + n)``."""

STD_SCALE_KEY = f"{DETECTOR_PREFIX}std_scale"


def warmed_up_decay(decay: float, num_averaged: int) -> float:
    """The EMA decay after ``num_averaged`` updates: ``decay``, lower at the start.

    Args:
        decay: Target decay in (0, 1).
        num_averaged: Updates already averaged.

    Returns:
        ``min(decay, (1 + n) / (EMA_WARMUP_UPDATES + n))``.
    """
    return min(decay, (1.0 + num_averaged) / (EMA_WARMUP_UPDATES + num_averaged))


class EmaWeights(WeightAveraging):
    """EMA of all weights and buffers after every optimizer step.

    Args:
        decay: Target decay per step in (0, 1); the average spans about
            ``1 / (1 - decay)`` steps.
    """

    def __init__(self, decay: float) -> None:
        def update(averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor) -> None:
            step_decay = warmed_up_decay(decay, int(num_averaged))
            get_ema_multi_avg_fn(step_decay)(averaged, current, num_averaged)

        super().__init__(multi_avg_fn=update)
        self.decay = decay

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Save the averaged weights with the calibration fitted on them.

        The module refits ``std_scale`` on the averaged model's validation errors
        but writes it into the raw weights (Lightning swaps them back first), so
        it is copied into the saved averaged weights here.
        """
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if "current_model_state" in checkpoint and STD_SCALE_KEY in checkpoint["state_dict"]:
            checkpoint["state_dict"][STD_SCALE_KEY] = checkpoint["current_model_state"][
                STD_SCALE_KEY
            ].clone()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Leave the module holding the averaged weights and the last fitted calibration."""
        state = pl_module.state_dict()
        std_scale = state[STD_SCALE_KEY].clone() if STD_SCALE_KEY in state else None
        super().on_train_end(trainer, pl_module)
        if std_scale is not None:
            pl_module.state_dict()[STD_SCALE_KEY].copy_(std_scale)
