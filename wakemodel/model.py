"""Lightning module training the wake keypoint detector.

:class:`WakeKeypointModule` wraps :class:`wakemodel.network.EfficientNetB0KeypointDetector`
and trains it with :func:`wakemodel.losses.keypoint_loss` (AdamW, per-step linear
warm-up + cosine decay); it logs the metrics of
:func:`wakemodel.metrics.keypoint_errors` per epoch under ``val/`` and ``test/``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.nn.functional import binary_cross_entropy_with_logits
from torchmetrics import MeanMetric
from torchmetrics.aggregation import CatMetric

from wakemodel import keypoints as kp
from wakemodel.calibration import fit_std_scale
from wakemodel.config import MODEL_DEFAULTS
from wakemodel.errors import InputError
from wakemodel.keypoints import VERTEX_SLOT
from wakemodel.losses import (
    heatmap_loss,
    keypoint_loss,
    match_arm_order,
    permute_slots,
    wake_axis_loss,
)
from wakemodel.metrics import DEFAULT_GSD_M, keypoint_errors
from wakemodel.network import (
    DETECTOR_PREFIX,
    NUM_KEYPOINTS,
    EfficientNetB0KeypointDetector,
    KeypointOutput,
    decode_heatmaps,
    fill_missing_weights,
    soft_argmax_with_spread,
)
from wakemodel.predictors import TTA_STD_SCALE_KEY, WAKE_SCORE_PLATT_KEY

MEDIAN_METRICS = ("vertex_error_px", "vertex_error_m", "vertex_error_frac", "heading_error_deg")
PCK_LOG_NAME = "pck@0.05"


def warmup_cosine_factor(
    step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float
) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay.

    Args:
        step: Optimizer step index (0-based).
        warmup_steps: Steps of linear warm-up from ``1 / (warmup_steps + 1)`` to 1.
        total_steps: Total optimizer steps of the run.
        min_lr_ratio: Final multiplier at the end of the cosine decay.

    Returns:
        The multiplier of the base learning rate.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class WarmupCosineSchedule:
    """:func:`warmup_cosine_factor` as a ``LambdaLR`` lambda whose length can change.

    :class:`wakemodel.budget.TimeBudget` sets ``total_steps`` during a run to fit
    the schedule to a wall-clock budget.

    Attributes:
        warmup_steps: Steps of linear warm-up.
        total_steps: Optimizer steps of the whole schedule.
        min_lr_ratio: Final multiplier of the base learning rate.
    """

    warmup_steps: int
    total_steps: int
    min_lr_ratio: float

    def __call__(self, step: int) -> float:
        """The learning-rate multiplier at optimizer step ``step`` (0-based)."""
        return warmup_cosine_factor(
            step,
            warmup_steps=self.warmup_steps,
            total_steps=self.total_steps,
            min_lr_ratio=self.min_lr_ratio,
        )


class MedianMetric(CatMetric):
    """Gather per-sample values over an epoch (synced across devices); compute their median.

    NaN values (undefined samples) are dropped; an empty epoch gives NaN.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(nan_strategy="ignore", **kwargs)

    def compute(self) -> Tensor:
        """Median of the gathered values (NaN if none)."""
        values = super().compute()
        if not isinstance(values, Tensor) or values.numel() == 0:
            return torch.tensor(math.nan, device=self.device)
        return values.float().median()


def _stage_metrics() -> nn.ModuleDict:
    """Fresh epoch metrics for one stage: medians of errors and mean PCK."""
    metrics: dict[str, nn.Module] = {name: MedianMetric() for name in MEDIAN_METRICS}
    metrics["pck"] = MeanMetric(nan_strategy="ignore")
    return nn.ModuleDict(metrics)


class WakeKeypointModule(pl.LightningModule):
    """Lightning module training :class:`EfficientNetB0KeypointDetector`.

    Batches are dicts ``{"image": [B,1,S,S] in [0,1], "keypoints": [B,3,2]
    normalised, "visible": bool [B,3], "orig_size": [B,2] (width_px, height_px),
    "index": [B]}``. Logged: ``train/loss`` (per step), and per epoch for
    ``val/`` and ``test/``: ``loss`` (mean of the chips' losses),
    ``vertex_error_px``, ``vertex_error_m``, ``vertex_error_frac``,
    ``heading_error_deg`` (medians over the epoch) and ``pck@0.05`` (mean).
    :attr:`monitor` names the metric that selects the best checkpoint and
    :attr:`mode` whether lower or higher is better. Under DDP every logged
    value is reduced over all processes.

    Chips without a wake (no visible keypoint) train only the visibility
    logits, whose vertex slot is the wake score; their keypoint terms are
    masked out. After every validation epoch the network's ``std_scale`` is
    refitted so that the predicted 90 % heading intervals hold at least 90 %
    of the validation chips' heading errors (:func:`wakemodel.calibration.fit_std_scale`,
    logged as ``val/std_scale``); each checkpoint carries the calibration of
    its own epoch.

    Gradient clipping is not done here: set ``gradient_clip_val`` on the Trainer.
    With ``channels_last`` the network is converted to channels-last memory
    format in :meth:`setup` (any stage); inputs need no conversion (1 channel).
    ``pretrained`` and ``weights_path`` only choose the starting weights and are
    not saved as hyperparameters (the weights are in the checkpoint), so loading
    a checkpoint rebuilds the network with ``pretrained=False`` and never
    downloads anything. Hyperparameter defaults come from
    :data:`wakemodel.config.MODEL_DEFAULTS`, shared with ``TrainConfig``.

    Args:
        image_size: Square network input size S in pixels.
        num_keypoints: Keypoint slots (3).
        pretrained: Start from torchvision's ImageNet weights (downloaded; one
            warning and random weights when offline). Not saved.
        weights_path: Local torchvision ``efficientnet_b0`` state dict to start
            from. Not saved.
        lr: Peak AdamW learning rate.
        weight_decay: AdamW weight decay (not applied to biases and norm weights).
        warmup_epochs: Linear warm-up length in epochs (may be fractional, e.g. 0.5).
        max_epochs: Planned epochs; used to convert ``warmup_epochs`` to steps when
            the Trainer has no ``max_epochs`` (e.g. only ``max_steps``).
        min_lr_ratio: Learning rate at the end of the cosine decay, as a fraction of ``lr``.
        gsd_m: Ground sampling distance in metres per original pixel.
        visibility_weight: Weight of the visibility BCE in the loss.
        loss_beta: Smooth-L1 transition point in normalised coordinates.
        heatmap_weight: Weight of the heatmap cross-entropy regulariser (0: off).
        wake_weight: Weight of the wake-score BCE (vertex visibility logit
            against "the chip holds a wake"; chips without a wake teach it).
        heading_weight: Weight of the wake-axis loss
            (:func:`wakemodel.losses.wake_axis_loss`, in original-chip pixels; 0: off).
        dropout: Dropout before the visibility head.
        channels_last: Convert the network to channels-last memory format.
        keypoint_visibility: Per-keypoint visibility head (see the network).
        copy_single_end: On chips with one visible wake end, train both end slots'
            positions onto it (:func:`wakemodel.keypoints.copy_single_end`), so the
            heading does not depend on the second slot's visibility.
        single_end_slot: Keep the one visible end of a chip in the first end slot
            (:func:`wakemodel.keypoints.single_end_first`), so the second slot's
            visibility learns whether the chip shows two wake ends.
    """

    monitor: str = "val/loss"
    """Metric that selects the best checkpoint: the mean validation loss per chip.

    It keeps falling through the annealed last epochs, with the heading error, after the
    vertex error in pixels has levelled off: selecting by the vertex error picked epoch 10
    of the demo's 20 (held-out median heading error 21.0 degrees) where the lowest loss,
    its last epoch, gives 6.8. A mean over every validation chip, it is also steadier on a
    validation split of a dozen chips (self-training's) than a median error."""

    mode: Literal["min", "max"] = "min"
    """Whether a lower (``min``) or higher :attr:`monitor` value is better."""

    def __init__(
        self,
        image_size: int = MODEL_DEFAULTS.image_size,
        num_keypoints: int = NUM_KEYPOINTS,
        pretrained: bool = False,
        weights_path: str | None = None,
        lr: float = MODEL_DEFAULTS.lr,
        weight_decay: float = MODEL_DEFAULTS.weight_decay,
        warmup_epochs: float = MODEL_DEFAULTS.warmup_epochs,
        max_epochs: int = MODEL_DEFAULTS.epochs,
        min_lr_ratio: float = 0.01,
        gsd_m: float = DEFAULT_GSD_M,
        visibility_weight: float = MODEL_DEFAULTS.visibility_weight,
        loss_beta: float = 0.02,
        heatmap_weight: float = 0.25,
        heading_weight: float = MODEL_DEFAULTS.heading_weight,
        wake_weight: float = MODEL_DEFAULTS.wake_weight,
        dropout: float = MODEL_DEFAULTS.dropout,
        channels_last: bool = True,
        keypoint_visibility: bool = MODEL_DEFAULTS.keypoint_visibility,
        copy_single_end: bool = MODEL_DEFAULTS.copy_single_end,
        single_end_slot: bool = MODEL_DEFAULTS.single_end_slot,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["pretrained", "weights_path"])
        self.detector = EfficientNetB0KeypointDetector(
            num_keypoints=num_keypoints,
            pretrained=pretrained,
            weights_path=weights_path,
            dropout=dropout,
            keypoint_visibility=keypoint_visibility,
        )
        self.val_metrics = _stage_metrics()
        self.test_metrics = _stage_metrics()
        # Batch-size-weighted mean losses, reduced over all processes at the epoch's end.
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        self.val_heading_error = CatMetric(nan_strategy="ignore")
        self.val_raw_heading_std = CatMetric(nan_strategy="ignore")
        self.example_input_array = torch.zeros(1, 1, image_size, image_size)
        self.tta_std_scale: float | None = None
        """The 8-view std calibration of the checkpoint this module was loaded from
        (:data:`~wakemodel.predictors.TTA_STD_SCALE_KEY`), None before ``train`` fits it."""
        self.wake_score_platt: list[float] | None = None
        """The wake score's Platt scaling ``[a, b]`` of the checkpoint this module was loaded
        from (:data:`~wakemodel.predictors.WAKE_SCORE_PLATT_KEY`), None without one."""

    def forward(self, images: Tensor) -> KeypointOutput:
        """Run the detector on ``[B, 1, S, S]`` chips in [0, 1]; see the detector."""
        return self.detector(images)

    def setup(self, stage: str) -> None:
        """Apply the channels-last memory format when configured."""
        if self.hparams.channels_last:
            self.detector.to(memory_format=torch.channels_last)

    def _forward_with_loss(self, batch: Mapping[str, Tensor]) -> tuple[KeypointOutput, Tensor]:
        """Run the network on a batch and compute its loss (scalar).

        The loss is the arm-order-invariant keypoint loss plus ``heatmap_weight``
        times a heatmap cross-entropy against Gaussians at the targets (arms in
        the order the keypoint loss matched), a DSNT-style regulariser that gives
        every heatmap cell a learning signal and speeds up convergence, plus
        ``wake_weight`` times the wake-score BCE (in batches holding a chip
        without a wake), plus
        ``heading_weight`` times the wake-axis loss, which punishes a heading
        off its true direction (most of all a reversed one).
        """
        heatmap_logits, visibility_logits = self.detector.heatmaps(batch["image"])
        return self._loss_from_logits(batch, heatmap_logits, visibility_logits)

    def _loss_from_logits(
        self, batch: Mapping[str, Tensor], heatmap_logits: Tensor, visibility_logits: Tensor
    ) -> tuple[KeypointOutput, Tensor]:
        """The output and loss (scalar) of :meth:`_forward_with_loss` from the heads' logits."""
        keypoints, spread = soft_argmax_with_spread(heatmap_logits)
        output = KeypointOutput(keypoints, visibility_logits, spread * self.detector.std_scale)
        pin_single_end = self.hparams.single_end_slot
        targets, target_visible = batch["keypoints"], batch["visible"]
        if pin_single_end:
            targets, target_visible = kp.single_end_first(targets, target_visible)
        positioned = target_visible
        if self.hparams.copy_single_end:
            targets, positioned = kp.copy_single_end(targets, positioned)
        loss = keypoint_loss(
            output.keypoints,
            output.visibility_logits,
            targets,
            target_visible,
            visibility_weight=self.hparams.visibility_weight,
            beta=self.hparams.loss_beta,
            position_visible=positioned,
            pin_single_end=pin_single_end,
        )
        has_wake = target_visible[:, VERTEX_SLOT]
        # Only chips without a wake teach the wake score; a batch of wakes alone (all of the
        # real data) would just push one logit up, so it adds nothing and trains as before.
        if self.hparams.wake_weight > 0 and not bool(has_wake.all()):
            loss = loss + self.hparams.wake_weight * binary_cross_entropy_with_logits(
                output.visibility_logits[:, VERTEX_SLOT].float(), has_wake.float()
            )
        if self.hparams.heatmap_weight > 0 or self.hparams.heading_weight > 0:
            order = match_arm_order(
                output.keypoints,
                targets,
                positioned,
                beta=self.hparams.loss_beta,
                pin_single_end=pin_single_end,
            )
            target = permute_slots(targets, order)
            visible = permute_slots(positioned, order)
            if self.hparams.heatmap_weight > 0:
                loss = loss + self.hparams.heatmap_weight * heatmap_loss(
                    heatmap_logits, target, visible
                )
            if self.hparams.heading_weight > 0:
                scale = batch["orig_size"].float()[:, None, :]
                loss = loss + self.hparams.heading_weight * wake_axis_loss(
                    output.keypoints * scale, target.float() * scale, visible
                )
        return output, loss

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        """Compute and log ``train/loss`` for one batch."""
        _, loss = self._forward_with_loss(batch)
        self.log(
            "train/loss",
            loss,
            on_step=True,
            on_epoch=False,
            prog_bar=True,
            batch_size=batch["image"].shape[0],
            sync_dist=True,  # the mean over all processes' batches (one all-reduce per step)
        )
        return loss

    def _evaluation_step(
        self, batch: Mapping[str, Tensor], stage: str, metrics: nn.ModuleDict
    ) -> Tensor:
        """Log the loss and accumulate per-sample errors for one val/test batch.

        The logged loss is the mean of every chip's own loss, reduced over all
        processes at the epoch's end, so it does not depend on how the chips
        are batched or shared out between DDP processes.
        """
        heatmap_logits, visibility_logits = self.detector.heatmaps(batch["image"])
        output, loss = self._loss_from_logits(batch, heatmap_logits, visibility_logits)
        # The loss reads the whole heatmaps (as training does); the metrics and the calibration
        # read the keypoints and their spread the way predictions do, so std_scale is fitted
        # to what infer returns.
        predicted, spread = decode_heatmaps(heatmap_logits, self.detector.decode_radius_cells)
        output = output._replace(keypoints=predicted, keypoint_std=spread * self.detector.std_scale)
        if stage == "val":
            self._accumulate_calibration(batch, output)
        batch_size = batch["image"].shape[0]
        loss_metric: MeanMetric = self.val_loss if stage == "val" else self.test_loss
        loss_metric.update(self._chip_losses(batch, heatmap_logits, visibility_logits).float())
        self.log(
            f"{stage}/loss",
            loss_metric,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=batch_size,
        )
        errors = keypoint_errors(
            output.keypoints,
            torch.sigmoid(output.visibility_logits.float()),
            batch["keypoints"],
            batch["visible"],
            batch["orig_size"],
            gsd_m=self.hparams.gsd_m,
        )
        for name, metric in metrics.items():
            metric.update(errors[name])
            log_name = PCK_LOG_NAME if name == "pck" else name
            self.log(
                f"{stage}/{log_name}",
                metric,
                on_step=False,
                on_epoch=True,
                prog_bar=name == "vertex_error_px",
                batch_size=batch_size,
            )
        return loss

    def _chip_losses(
        self, batch: Mapping[str, Tensor], heatmap_logits: Tensor, visibility_logits: Tensor
    ) -> Tensor:
        """Every chip's own loss, ``[B]``, as if each were a batch of one.

        Vectorised with ``torch.func.vmap``; a loss term that vmap cannot
        batch falls back to a loop over the chips (same values, slower).
        """
        tensors = {key: value for key, value in batch.items() if isinstance(value, Tensor)}

        def chip_loss(chip: dict[str, Tensor], heatmaps: Tensor, visibility: Tensor) -> Tensor:
            one = {key: value.unsqueeze(0) for key, value in chip.items()}
            return self._loss_from_logits(one, heatmaps.unsqueeze(0), visibility.unsqueeze(0))[1]

        try:
            return torch.func.vmap(chip_loss)(tensors, heatmap_logits, visibility_logits)
        except RuntimeError:
            chips = range(heatmap_logits.shape[0])
            return torch.stack(
                [
                    chip_loss(
                        {key: value[i] for key, value in tensors.items()},
                        heatmap_logits[i],
                        visibility_logits[i],
                    )
                    for i in chips
                ]
            )

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        """Log ``val/loss``, accumulate the ``val/`` metrics and the calibration pairs."""
        return self._evaluation_step(batch, "val", self.val_metrics)

    def _accumulate_calibration(self, batch: Mapping[str, Tensor], output: KeypointOutput) -> None:
        """Keep each validation chip's heading error and raw (unscaled) heading std, degrees."""
        orig_size = batch["orig_size"].float()
        pred_visible = kp.predicted_visibility(torch.sigmoid(output.visibility_logits.float()))
        pred_px = kp.to_pixels(output.keypoints.float(), orig_size)
        raw_std_px = kp.to_pixels(output.keypoint_std.float() / self.detector.std_scale, orig_size)
        target_px = kp.to_pixels(batch["keypoints"].float(), orig_size)
        target_visible = batch["visible"].bool()
        error = kp.angle_difference_deg(
            kp.heading_deg(pred_px, pred_visible), kp.heading_deg(target_px, target_visible)
        )
        raw_std = kp.heading_std_deg(pred_px, raw_std_px, pred_visible)
        defined = torch.isfinite(error) & torch.isfinite(raw_std)
        self.val_heading_error.update(torch.where(defined, error, torch.nan))
        self.val_raw_heading_std.update(torch.where(defined, raw_std, torch.nan))

    def on_validation_epoch_end(self) -> None:
        """Calibrate ``std_scale`` on this validation epoch (not during the sanity check).

        The scale makes the predicted 90 % heading interval (heading +- 1.645
        ``heading_std_deg``) hold at least 90 % of the validation chips' heading errors,
        so the checkpoint saved after this epoch carries its own calibration.
        """
        errors = self.val_heading_error.compute()
        raw_std = self.val_raw_heading_std.compute()
        self.val_heading_error.reset()
        self.val_raw_heading_std.reset()
        if self.trainer.sanity_checking or not isinstance(errors, Tensor) or errors.numel() == 0:
            return
        scale = fit_std_scale(errors.cpu().numpy(), raw_std.cpu().numpy())
        self.detector.std_scale.fill_(scale)
        self.log("val/std_scale", scale, sync_dist=False)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Accept checkpoints from before ``std_scale`` or the per-keypoint visibility head.

        Also keeps the checkpoint's 8-view std calibration as :attr:`tta_std_scale`
        and its wake-score Platt scaling as :attr:`wake_score_platt` (neither is saved
        again: more training makes them stale, ``train`` refits them).
        """
        fill_missing_weights(checkpoint["state_dict"], self.detector, prefix=DETECTOR_PREFIX)
        self.tta_std_scale = checkpoint.get(TTA_STD_SCALE_KEY)
        self.wake_score_platt = checkpoint.get(WAKE_SCORE_PLATT_KEY)

    def test_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        """Log ``test/loss`` and accumulate the ``test/`` metrics."""
        return self._evaluation_step(batch, "test", self.test_metrics)

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW (no decay on biases/norms) with per-step warm-up + cosine schedule.

        Raises:
            InputError: If the Trainer has neither ``max_epochs`` nor ``max_steps``.
        """
        decay = [p for p in self.parameters() if p.requires_grad and p.ndim > 1]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.ndim <= 1]
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.hparams.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.hparams.lr,
        )
        total_steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(total_steps):
            raise InputError(
                "the Trainer has no max_epochs or max_steps; set one so the learning-rate "
                "schedule has a length"
            )
        total_steps = max(1, int(total_steps))
        trainer_epochs = self.trainer.max_epochs
        epochs = trainer_epochs if trainer_epochs and trainer_epochs > 0 else None
        steps_per_epoch = total_steps / (epochs or self.hparams.max_epochs)
        warmup_steps = min(total_steps, round(self.hparams.warmup_epochs * steps_per_epoch))
        schedule = WarmupCosineSchedule(
            warmup_steps=warmup_steps,
            total_steps=total_steps,
            min_lr_ratio=self.hparams.min_lr_ratio,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }
