"""EfficientNet-B0 keypoint detector and its Lightning module.

:class:`EfficientNetB0KeypointDetector` is a torchvision EfficientNet-B0 with a
1-channel stem and a head that regresses 3 keypoints (normalised x, y in
[0, 1]) plus one visibility logit per keypoint. The keypoints come from
integral regression (a soft-argmax over stride-8 heatmaps of a small feature
pyramid), which keeps the spatial layout that global pooling would discard and
learns far faster than a fully connected regressor. The grey ImageNet normalisation
lives inside the network (buffers), so checkpoints and ONNX exports carry it.

:class:`WakeKeypointModule` trains it with :func:`wakemodel.losses.keypoint_loss`
(AdamW, per-step linear warm-up + cosine decay) and logs the metrics of
:func:`wakemodel.metrics.keypoint_errors` per epoch under ``val/`` and ``test/``.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import io
import logging
import math
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.aggregation import CatMetric
from torchvision.models import EfficientNet_B0_Weights, efficientnet_b0

from wakemodel.errors import InputError, WakeModelError
from wakemodel.losses import heatmap_loss, keypoint_loss, match_arm_order, permute_slots
from wakemodel.metrics import DEFAULT_GSD_M, keypoint_errors

logger = logging.getLogger(__name__)

NUM_KEYPOINTS = 3
GREY_MEAN = 0.449
GREY_STD = 0.226
DOWNLOAD_TIMEOUT_S = 10.0
FEATURE_CHANNELS = 1280
MEDIAN_METRICS = ("vertex_error_px", "vertex_error_m", "vertex_error_frac", "heading_error_deg")
PCK_LOG_NAME = "pck@0.05"


class KeypointOutput(NamedTuple):
    """Network output.

    Attributes:
        keypoints: ``[B, 3, 2]`` normalised (x, y) in [0, 1] (soft-argmax of heatmaps).
        visibility_logits: ``[B, 3]`` visibility logits (sigmoid gives probabilities).
    """

    keypoints: Tensor
    visibility_logits: Tensor


def _download_imagenet_state_dict() -> dict[str, Tensor] | None:
    """Fetch torchvision's ImageNet EfficientNet-B0 weights, or None when offline.

    Uses the torch hub cache when the file is already there. Network failures
    are logged as one warning line, never raised; the socket timeout is short
    so an unreachable host cannot hang training.

    Returns:
        The torchvision ``efficientnet_b0`` state dict, or None if unavailable.
    """
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return EfficientNet_B0_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
    except (OSError, RuntimeError, http.client.HTTPException) as error:
        reason = " ".join(str(error).split())
        logger.warning(
            "Could not download the ImageNet EfficientNet-B0 weights (%s); training starts "
            "from random weights. Supply a torchvision efficientnet_b0 state dict with "
            "--weights PATH.",
            reason,
        )
        return None
    finally:
        socket.setdefaulttimeout(previous_timeout)


def _load_weights_file(weights_path: str | Path) -> dict[str, Tensor]:
    """Read a torchvision ``efficientnet_b0`` state dict from a local file.

    Args:
        weights_path: Path to a ``.pth`` file saved with ``torch.save(model.state_dict())``.

    Returns:
        The state dict.

    Raises:
        WakeModelError: If the file is missing or not a readable state dict.
    """
    path = Path(weights_path)
    if not path.is_file():
        raise WakeModelError(
            f"weights file not found: {path}; pass a torchvision efficientnet_b0 state dict (.pth)"
        )
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise WakeModelError(
            f"cannot read weights file {path} ({type(error).__name__}); "
            "pass a torchvision efficientnet_b0 state dict saved with torch.save"
        ) from error
    if not isinstance(state_dict, Mapping):
        raise WakeModelError(
            f"weights file {path} holds a {type(state_dict).__name__}, not a state dict; "
            "save it with torch.save(model.state_dict(), PATH)"
        )
    return dict(state_dict)


class EfficientNetB0KeypointDetector(nn.Module):
    """EfficientNet-B0 regressing wake keypoints from a grey chip.

    With pretrained weights (a local ``weights_path``, or the torchvision
    ImageNet download when ``pretrained``), the RGB stem kernels are summed into
    one input channel, so a grey image gives the stem output the RGB network
    gives on that image repeated over 3 channels. Offline, the download fails
    with one logged warning and the network starts from random weights.

    Args:
        num_keypoints: Number of keypoint slots; must be 3 (vertex + 2 far ends).
        pretrained: Try to download torchvision's ImageNet weights.
        weights_path: Local torchvision ``efficientnet_b0`` state dict; takes
            precedence over (and implies) ``pretrained``.
        dropout: Dropout probability before the visibility head.

    Raises:
        InputError: If ``num_keypoints`` is not 3.
        WakeModelError: If ``weights_path`` is missing or unreadable.
    """

    def __init__(
        self,
        num_keypoints: int = NUM_KEYPOINTS,
        pretrained: bool = False,
        weights_path: str | Path | None = None,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if num_keypoints != NUM_KEYPOINTS:
            raise InputError(
                f"num_keypoints={num_keypoints} is not supported; use {NUM_KEYPOINTS} "
                "(vertex + two far ends)"
            )
        self.num_keypoints = num_keypoints
        backbone = efficientnet_b0(weights=None)
        if weights_path is not None:
            state_dict = _load_weights_file(weights_path)
        elif pretrained:
            state_dict = _download_imagenet_state_dict()
        else:
            state_dict = None
        if state_dict is not None:
            try:
                backbone.load_state_dict(state_dict)
            except RuntimeError as error:
                raise WakeModelError(
                    f"weights {weights_path or 'download'} do not match torchvision "
                    "efficientnet_b0; pass an efficientnet_b0 state dict"
                ) from error
        rgb_stem = backbone.features[0][0]
        grey_stem = nn.Conv2d(
            1,
            rgb_stem.out_channels,
            kernel_size=rgb_stem.kernel_size,
            stride=rgb_stem.stride,
            padding=rgb_stem.padding,
            bias=False,
        )
        with torch.no_grad():
            grey_stem.weight.copy_(rgb_stem.weight.sum(dim=1, keepdim=True))
        backbone.features[0][0] = grey_stem
        self.features = backbone.features
        self.decoder = _HeatmapDecoder(num_keypoints)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.visibility_head = nn.Linear(FEATURE_CHANNELS, num_keypoints)
        nn.init.normal_(self.visibility_head.weight, std=0.01)
        nn.init.zeros_(self.visibility_head.bias)
        self.register_buffer("mean", torch.tensor(GREY_MEAN).reshape(1, 1, 1, 1))
        self.register_buffer("std", torch.tensor(GREY_STD).reshape(1, 1, 1, 1))

    def forward(self, images: Tensor) -> KeypointOutput:
        """Predict keypoints and visibility logits.

        Args:
            images: Float ``[B, 1, S, S]`` grey chips in [0, 1] (any memory format).

        Returns:
            :class:`KeypointOutput` with keypoints ``[B, 3, 2]`` in [0, 1] and
            visibility logits ``[B, 3]``.
        """
        heatmap_logits, visibility_logits = self.heatmaps(images)
        return KeypointOutput(soft_argmax(heatmap_logits), visibility_logits)

    def heatmaps(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Keypoint heatmap logits and visibility logits (what ``forward`` is built on).

        Args:
            images: Float ``[B, 1, S, S]`` grey chips in [0, 1].

        Returns:
            Heatmap logits ``[B, 3, S/8, S/8]`` (rounded up) and visibility logits ``[B, 3]``.
        """
        features = (images - self.mean) / self.std
        pyramid: list[Tensor] = []
        for index, stage in enumerate(self.features):
            features = stage(features)
            if index in PYRAMID_STAGES:
                pyramid.append(features)
        pooled = self.pool(features).flatten(1)
        return self.decoder(pyramid), self.visibility_head(self.dropout(pooled))


PYRAMID_STAGES = (3, 5, 8)
"""EfficientNet-B0 ``features`` stages feeding the decoder: strides 8, 16, 32."""
PYRAMID_CHANNELS = (40, 112, FEATURE_CHANNELS)
DECODER_CHANNELS = 96


class _HeatmapDecoder(nn.Module):
    """A small top-down feature pyramid giving one heatmap per keypoint at stride 8.

    Args:
        num_keypoints: Number of heatmaps.
    """

    def __init__(self, num_keypoints: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(
            nn.Conv2d(channels, DECODER_CHANNELS, kernel_size=1) for channels in PYRAMID_CHANNELS
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(DECODER_CHANNELS, DECODER_CHANNELS, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(DECODER_CHANNELS),
            nn.SiLU(inplace=True),
            nn.Conv2d(DECODER_CHANNELS, num_keypoints, kernel_size=1),
        )

    def forward(self, pyramid: list[Tensor]) -> Tensor:
        """Fuse stride-8/16/32 features top-down into heatmap logits.

        Args:
            pyramid: Feature maps ``[B, C_i, H_i, W_i]`` from fine to coarse.

        Returns:
            Heatmap logits ``[B, K, H_0, W_0]`` at the finest level (stride 8).
        """
        fused = self.lateral[-1](pyramid[-1])
        for level in range(len(pyramid) - 2, -1, -1):
            finer = self.lateral[level](pyramid[level])
            fused = finer + nn.functional.interpolate(
                fused, size=finer.shape[-2:], mode="bilinear", align_corners=False
            )
        return self.fuse(fused)


def soft_argmax(heatmap_logits: Tensor) -> Tensor:
    """Differentiable arg-max (integral regression) of heatmaps in normalised coordinates.

    Each heatmap is a softmax over its cells; the keypoint is the expected
    position with cell coordinates spread evenly over [0, 1] (first cell 0,
    last cell 1), so chip borders are reachable.

    Args:
        heatmap_logits: ``[B, K, H, W]`` logits.

    Returns:
        ``[B, K, 2]`` normalised (x, y) in [0, 1].
    """
    height, width = heatmap_logits.shape[-2:]
    probabilities = heatmap_logits.flatten(2).softmax(dim=-1).unflatten(2, (height, width))
    xs = torch.linspace(0.0, 1.0, width, dtype=probabilities.dtype, device=probabilities.device)
    ys = torch.linspace(0.0, 1.0, height, dtype=probabilities.dtype, device=probabilities.device)
    x = (probabilities.sum(dim=2) * xs).sum(dim=-1)
    y = (probabilities.sum(dim=3) * ys).sum(dim=-1)
    return torch.stack((x, y), dim=-1)


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
    ``val/`` and ``test/``: ``loss`` (mean),
    ``vertex_error_px``, ``vertex_error_m``, ``vertex_error_frac``,
    ``heading_error_deg`` (medians over the epoch) and ``pck@0.05`` (mean).
    Checkpoints are meant to monitor ``val/vertex_error_px`` (mode min).

    Gradient clipping is not done here: set ``gradient_clip_val`` on the Trainer.
    With ``channels_last`` the network is converted to channels-last memory
    format in :meth:`setup` (any stage); inputs need no conversion (1 channel).
    Saved checkpoints store ``pretrained=False`` and ``weights_path=None``, since
    the weights are in the checkpoint, so loading one never downloads anything.

    Args:
        image_size: Square network input size S in pixels.
        num_keypoints: Keypoint slots (3).
        pretrained: Start from torchvision's ImageNet weights (downloaded; one
            warning and random weights when offline).
        weights_path: Local torchvision ``efficientnet_b0`` state dict to start from.
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
        dropout: Dropout before the visibility head.
        channels_last: Convert the network to channels-last memory format.
    """

    def __init__(
        self,
        image_size: int = 224,
        num_keypoints: int = NUM_KEYPOINTS,
        pretrained: bool = True,
        weights_path: str | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        warmup_epochs: float = 1.0,
        max_epochs: int = 50,
        min_lr_ratio: float = 0.01,
        gsd_m: float = DEFAULT_GSD_M,
        visibility_weight: float = 0.1,
        loss_beta: float = 0.02,
        heatmap_weight: float = 0.25,
        dropout: float = 0.2,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.detector = EfficientNetB0KeypointDetector(
            num_keypoints=num_keypoints,
            pretrained=pretrained,
            weights_path=weights_path,
            dropout=dropout,
        )
        self.val_metrics = _stage_metrics()
        self.test_metrics = _stage_metrics()
        self.example_input_array = torch.zeros(1, 1, image_size, image_size)

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
        every heatmap cell a learning signal and speeds up convergence.
        """
        heatmap_logits, visibility_logits = self.detector.heatmaps(batch["image"])
        output = KeypointOutput(soft_argmax(heatmap_logits), visibility_logits)
        loss = keypoint_loss(
            output.keypoints,
            output.visibility_logits,
            batch["keypoints"],
            batch["visible"],
            visibility_weight=self.hparams.visibility_weight,
            beta=self.hparams.loss_beta,
        )
        if self.hparams.heatmap_weight > 0:
            order = match_arm_order(
                output.keypoints, batch["keypoints"], batch["visible"], beta=self.hparams.loss_beta
            )
            loss = loss + self.hparams.heatmap_weight * heatmap_loss(
                heatmap_logits,
                permute_slots(batch["keypoints"], order),
                permute_slots(batch["visible"], order),
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
        )
        return loss

    def _evaluation_step(
        self, batch: Mapping[str, Tensor], stage: str, metrics: nn.ModuleDict
    ) -> Tensor:
        """Log the loss and accumulate per-sample errors for one val/test batch."""
        output, loss = self._forward_with_loss(batch)
        batch_size = batch["image"].shape[0]
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, batch_size=batch_size)
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

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        """Log ``val/loss`` and accumulate the ``val/`` metrics."""
        return self._evaluation_step(batch, "val", self.val_metrics)

    def test_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        """Log ``test/loss`` and accumulate the ``test/`` metrics."""
        return self._evaluation_step(batch, "test", self.test_metrics)

    def predict_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Predict one batch.

        Returns:
            Dict with ``keypoints`` ``[B, 3, 2]`` normalised (arm order as
            predicted), ``visibility`` ``[B, 3]`` probabilities, and the batch's
            ``orig_size`` / ``index`` when present.
        """
        output = self(batch["image"])
        prediction = {
            "keypoints": output.keypoints,
            "visibility": torch.sigmoid(output.visibility_logits),
        }
        for key in ("orig_size", "index"):
            if key in batch:
                prediction[key] = batch[key]
        return prediction

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
        schedule = functools.partial(
            warmup_cosine_factor,
            warmup_steps=warmup_steps,
            total_steps=total_steps,
            min_lr_ratio=self.hparams.min_lr_ratio,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store hparams that rebuild the network without downloads or weight files."""
        hyper_parameters = checkpoint.get("hyper_parameters")
        if hyper_parameters is not None:
            hyper_parameters["pretrained"] = False
            hyper_parameters["weights_path"] = None
