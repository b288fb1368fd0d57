"""Training entry point: :func:`train` runs Lightning on a :class:`TrainConfig`.

What a run writes (see ``checkpoints/README.md``):

- ``CHECKPOINT_DIR/wake-epoch=012-vertex_px=3.21.ckpt``: the best checkpoint by
  validation vertex error (``val/vertex_error_px``, lower is better; pixels of
  the original chip), and ``CHECKPOINT_DIR/last.ckpt`` after every epoch, for
  ``--resume``. Both are written atomically (a temporary file moved into place).
  Every checkpoint carries the module's hyperparameters (``image_size`` ...),
  ``checkpoint["wakemodel_env"]`` (device, precision, torch/CUDA/Lightning
  versions), ``checkpoint["wakemodel_val_metrics"]`` (the validation metrics
  of its epoch), ``checkpoint["wakemodel_train_config"]`` and
  ``checkpoint["wakemodel_run_dir"]`` (the folder with ``metrics.csv``).
- ``RUN_DIR/RUN_NAME/metrics.csv`` and ``hparams.yaml`` (Lightning's CSVLogger,
  for the training-curve plots), plus ``RUN_DIR/RUN_NAME/wandb/`` when the
  Weights & Biases logger is on. Without an API key W&B runs offline (sync
  later with ``wandb sync RUN_DIR/RUN_NAME/wandb/offline-run-*``); it never
  prompts.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import netrc
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlparse

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import (
    Callback,
    LearningRateMonitor,
    ModelCheckpoint,
    RichProgressBar,
)
from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger
from pytorch_lightning.plugins import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from wakemodel._io import atomic_path
from wakemodel.datamodule import WakeDataModule
from wakemodel.devices import DeviceChoice, environment_info, select_device
from wakemodel.errors import InputError
from wakemodel.model import WakeKeypointModule

logger = logging.getLogger(__name__)

MONITOR = "val/vertex_error_px"
"""Metric that selects the best checkpoint (pixels of the original chip, lower is better)."""

CHECKPOINT_FILENAME = "wake-epoch={epoch:03d}-vertex_px={val/vertex_error_px:.2f}"
"""Best-checkpoint name pattern (``.ckpt`` is appended), e.g. ``wake-epoch=012-vertex_px=3.21``."""

LAST_CHECKPOINT_NAME = "last"
"""``last.ckpt``: the state after the latest finished epoch, for ``--resume``."""

LoggerName = Literal["csv", "wandb", "none"]
AugmentPlace = Literal["auto", "workers", "device"]


@dataclass
class TrainConfig:
    """Everything a training run needs; the CLI's ``train`` options map 1:1 onto it.

    Attributes:
        data_dir: Dataset root with ``imgs/`` and ``annotations/``.
        epochs: Number of training epochs (also the length of the LR schedule).
        batch_size: Chips per batch (per device).
        image_size: Network input side S in pixels (chips are resized to S x S).
        lr: Peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_epochs: Linear learning-rate warm-up length in epochs (may be fractional).
        gradient_clip_val: Gradient norm clipping threshold (``None``: off).
        seed: Seed for weights, data split, shuffling and augmentation.
        accelerator: ``auto``, ``cpu``, ``gpu``, ``cuda`` or ``mps``
            (see :func:`wakemodel.devices.select_device`).
        precision: Lightning precision (``"32"``, ``"bf16-mixed"``, ``"16-mixed"``
            ...); ``None`` picks bf16-mixed on CUDA GPUs that support it, else 32.
        devices: Lightning ``devices``: ``"auto"``, a count (``"2"``) or ids (``"0,1"``).
        num_nodes: Number of machines (multi-node DDP).
        strategy: Lightning strategy (``"auto"`` uses DDP for several devices).
        workers: DataLoader worker processes; ``None`` lets the data module choose.
        augment_on: Where training augmentation runs: ``"workers"`` (per chip in
            the DataLoader workers), ``"device"`` (per batch on the training
            device, :class:`wakemodel.augment.BatchWakeAugmentation`) or
            ``"auto"`` (the device on CUDA and MPS, workers on the CPU).
        logger: ``"csv"`` (metrics.csv only), ``"wandb"`` (CSV and Weights & Biases)
            or ``"none"`` (no logs written).
        wandb_project: Weights & Biases project name.
        checkpoint_dir: Folder of the best and ``last.ckpt`` checkpoints.
        run_dir: Folder holding one sub-folder of logs per run.
        run_name: Name of this run's log folder; ``None``: a timestamp. A taken
            name gets a ``-1``, ``-2`` ... suffix.
        resume: Checkpoint (usually ``CHECKPOINT_DIR/last.ckpt``) to continue from,
            with its epoch, optimizer and scheduler state.
        deterministic: Use deterministic algorithms (bit-identical reruns on CPU).
        fast_dev_run: Run one train and one val batch (``True``) or N batches as a
            smoke test; writes no checkpoints or logs.
        pretrained: Start the backbone from ImageNet weights.
        weights_path: Local ImageNet EfficientNet-B0 weights file (offline machines).
        max_time: Wall-clock limit ``"DD:HH:MM:SS"`` (Lightning's ``max_time``);
            ``None``: no limit.
        progress_bar: Show a progress bar with the loss and validation metrics.
        compile: Compile the module with ``torch.compile`` (slow first steps; pays off
            on GPUs and long runs).
        auto_batch_size: Replace ``batch_size`` by the largest that fits the GPU
            (Lightning's batch-size finder); on other devices a warning, and
            ``batch_size`` is kept.
    """

    data_dir: Path = Path("data/ShipWakes")
    epochs: int = 100
    batch_size: int = 16
    image_size: int = 224
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    gradient_clip_val: float | None = 1.0
    seed: int = 0
    accelerator: str = "auto"
    precision: str | None = None
    devices: str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    workers: int | None = None
    augment_on: AugmentPlace = "auto"
    logger: LoggerName = "csv"
    wandb_project: str = "wakemodel"
    checkpoint_dir: Path = Path("checkpoints")
    run_dir: Path = Path("runs")
    run_name: str | None = None
    resume: Path | None = None
    deterministic: bool = False
    fast_dev_run: bool | int = False
    pretrained: bool = True
    weights_path: Path | None = None
    max_time: str | None = None
    progress_bar: bool = True
    compile: bool = False
    auto_batch_size: bool = False


@dataclass
class TrainResult:
    """What a finished run produced.

    Attributes:
        best_checkpoint: Best checkpoint by ``val/vertex_error_px``; ``None`` when
            none was written (``fast_dev_run``).
        last_checkpoint: ``last.ckpt`` of this run; ``None`` when none was written.
        best_epoch: 0-based epoch of the best validation vertex error; ``None``
            when no validation ran.
        best_metrics: Validation metrics of the best epoch (``val/vertex_error_px``
            in pixels, ``val/heading_error_deg`` in degrees, ...).
        run_dir: This run's log folder (``metrics.csv`` lives there).
        device: The device and precision used.
        epochs_completed: Number of epochs finished, including resumed ones.
        history: Validation metrics of every epoch, by 0-based epoch.
    """

    best_checkpoint: Path | None
    last_checkpoint: Path | None
    best_epoch: int | None
    best_metrics: dict[str, float]
    run_dir: Path
    device: DeviceChoice
    epochs_completed: int = 0
    history: dict[int, dict[str, float]] = field(default_factory=dict)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint I/O that never leaves a partial file at the final path.

    ``torch.save`` writes to a temporary file beside the target, which is moved
    into place (``os.replace``) only after the write succeeded.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike[str], storage_options: Any = None
    ) -> None:
        """Save ``checkpoint`` to ``path`` atomically.

        Args:
            checkpoint: Lightning's checkpoint dictionary.
            path: Final checkpoint file.
            storage_options: Not supported; must be ``None``.

        Raises:
            TypeError: ``storage_options`` was given.
        """
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not support storage_options.")
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


class RunRecorder(Callback):
    """Record validation metrics per epoch and stamp run facts into checkpoints.

    The per-epoch history is part of the checkpoint's callback state, so a
    resumed run still knows its best epoch.

    Args:
        env: Device and version facts (:func:`wakemodel.devices.environment_info`).
        config: The run's configuration, stored as plain values.
        run_dir: The run's log folder (holds ``metrics.csv``).
    """

    def __init__(self, env: dict[str, str], config: dict[str, Any], run_dir: Path) -> None:
        self.env = env
        self.config = config
        self.run_dir = run_dir
        self.history: dict[int, dict[str, float]] = {}

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Store this epoch's ``val/*`` metrics (skipped during the sanity check)."""
        if trainer.sanity_checking:
            return
        self.history[trainer.current_epoch] = {
            name: float(value)
            for name, value in trainer.callback_metrics.items()
            if name.startswith("val/")
        }

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Stamp the env, val metrics, train config and run folder into ``checkpoint``."""
        checkpoint["wakemodel_env"] = dict(self.env)
        checkpoint["wakemodel_val_metrics"] = dict(self.history.get(trainer.current_epoch, {}))
        checkpoint["wakemodel_train_config"] = dict(self.config)
        checkpoint["wakemodel_run_dir"] = str(self.run_dir)

    def state_dict(self) -> dict[str, Any]:
        """Return the metric history (saved in the checkpoint's callback state)."""
        return {"history": {epoch: dict(metrics) for epoch, metrics in self.history.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the metric history when resuming."""
        self.history = {int(epoch): dict(m) for epoch, m in state_dict["history"].items()}

    def best_epoch(self) -> int | None:
        """Return the earliest epoch with the lowest ``val/vertex_error_px``, or ``None``."""
        scored = [
            (metrics[MONITOR], epoch)
            for epoch, metrics in sorted(self.history.items())
            if MONITOR in metrics and not math.isnan(metrics[MONITOR])
        ]
        return min(scored)[1] if scored else None


class WakeProgressBar(RichProgressBar):
    """Rich progress bar showing the training loss and the headline validation metrics."""

    DISPLAYED: ClassVar[dict[str, str]] = {
        "train/loss": "loss",
        "val/loss": "val_loss",
        "val/vertex_error_px": "vertex_px",
        "val/heading_error_deg": "heading_deg",
    }

    def get_metrics(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> dict[str, int | str | float | dict[str, float]]:
        """Return the items shown beside the bar (short names, 3 significant digits)."""
        items = {
            name: value for name, value in super().get_metrics(trainer, pl_module).items()
            if name != "v_num" and name not in self.DISPLAYED
        }
        for name, short in self.DISPLAYED.items():
            value = trainer.callback_metrics.get(name)
            if value is not None:
                items[short] = f"{float(value):.3g}"
        return items


def wandb_mode() -> str:
    """Return the Weights & Biases mode to use, without asking anything.

    Returns:
        ``WANDB_MODE`` when that is set; otherwise ``"online"`` when an API key is
        available (``WANDB_API_KEY`` or a netrc entry for the W&B host), else
        ``"offline"`` (runs are synced later with ``wandb sync``).
    """
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    netrc_path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        entry = netrc.netrc(netrc_path).authenticators(host or "api.wandb.ai")
    except (OSError, netrc.NetrcParseError):
        return "offline"
    return "online" if entry and entry[2] else "offline"


def _unique_run_dir(root: Path, name: str | None) -> Path:
    """Return ``root/name`` (a timestamp when ``name`` is None), suffixed -1, -2 ... if taken.

    An existing run folder is never reused, so no earlier ``metrics.csv`` is overwritten.
    """
    base = name or datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate, counter = root / base, 1
    while candidate.exists():
        candidate, counter = root / f"{base}-{counter}", counter + 1
    return candidate


def _build_loggers(config: TrainConfig, run_dir: Path) -> list[Logger]:
    """Create the CSV logger (always, unless ``none``) and the optional W&B logger."""
    if config.logger == "none":
        return []
    csv_logger = CSVLogger(save_dir=run_dir.parent, name="", version=run_dir.name)
    loggers: list[Logger] = [csv_logger]
    if config.logger == "wandb":
        # Open the CSV log before W&B creates RUN_DIR/wandb/, or the CSV logger warns that
        # the folder is not empty.
        _ = csv_logger.experiment
        mode = wandb_mode()
        logger.info("Weights & Biases: %s mode (logs in %s)", mode, run_dir / "wandb")
        loggers.append(
            WandbLogger(
                name=run_dir.name,
                save_dir=run_dir,
                project=config.wandb_project,
                offline=mode == "offline",
            )
        )
    return loggers


def _check_resume(path: Path, image_size: int) -> None:
    """Raise a one-line error when ``path`` is not a checkpoint of this image size."""
    if not path.is_file():
        raise InputError(f"--resume {path}: no such checkpoint file; train without --resume first.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise InputError(
            f"--resume {path}: not a readable checkpoint ({type(error).__name__}); "
            "pass a last.ckpt written by train."
        ) from error
    stored = checkpoint.get("hyper_parameters", {}).get("image_size")
    if stored is not None and int(stored) != image_size:
        raise InputError(
            f"--resume {path} was trained with --image-size {stored}, not {image_size}; "
            f"pass --image-size {stored}."
        )


def _config_record(config: TrainConfig) -> dict[str, Any]:
    """Return the config as plain values (paths as strings) for checkpoints."""
    return {
        key: str(value) if isinstance(value, Path) else value
        for key, value in dataclasses.asdict(config).items()
    }


def _checkpoint_callbacks(checkpoint_dir: Path) -> tuple[ModelCheckpoint, ModelCheckpoint]:
    """Return the best-checkpoint callback and the every-epoch ``last.ckpt`` callback.

    ``last.ckpt`` comes from its own unmonitored callback: Lightning 2.6's
    ``save_last`` only refreshes it when the monitored metric improved, which
    would make ``--resume`` lose the epochs since the last improvement.
    """
    best = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename=CHECKPOINT_FILENAME,
        monitor=MONITOR,
        mode="min",
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    last = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename=LAST_CHECKPOINT_NAME,
        save_top_k=1,
        enable_version_counter=False,
    )
    return best, last


def _build_trainer(
    config: TrainConfig,
    device: DeviceChoice,
    loggers: list[Logger],
    callbacks: list[Callback],
    run_dir: Path,
    steps_per_epoch: int,
) -> pl.Trainer:
    """Create the Lightning Trainer of a run (atomic checkpoint writes, clipping ...).

    The training loss is logged every 10 steps, or once per epoch for shorter epochs.
    """
    return pl.Trainer(
        accelerator=device.lightning_accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        precision=device.precision,
        max_epochs=config.epochs,
        max_time=config.max_time,
        deterministic=config.deterministic,
        fast_dev_run=config.fast_dev_run,
        gradient_clip_val=config.gradient_clip_val,
        logger=loggers or False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=config.progress_bar,
        enable_checkpointing=not config.fast_dev_run,
        enable_model_summary=False,
        log_every_n_steps=max(1, min(10, steps_per_epoch)),
        default_root_dir=run_dir,
    )


def _scale_batch_size(
    trainer: pl.Trainer,
    module: pl.LightningModule,
    datamodule: WakeDataModule,
    device: DeviceChoice,
) -> None:
    """Set ``datamodule.batch_size`` to the largest that fits a CUDA GPU (binary search).

    Uses Lightning's batch-size finder (``Tuner.scale_batch_size``), starting
    from the configured size. On other devices it warns and keeps the size.
    """
    if device.accelerator != "cuda":
        logger.warning(
            "--auto-batch-size needs a CUDA GPU (device: %s); keeping --batch-size %d.",
            device.accelerator, datamodule.batch_size,
        )
        return
    from pytorch_lightning.tuner import Tuner

    found = Tuner(trainer).scale_batch_size(module, datamodule=datamodule, mode="binsearch")
    logger.info("Batch-size finder: %s chips per batch", found)


def wants_device_augmentation(augment_on: str, accelerator: str) -> bool:
    """Whether augmentation runs per batch on the training device (see ``TrainConfig``)."""
    if augment_on not in ("auto", "workers", "device"):
        raise InputError(f"--augment-on {augment_on!r}: choose auto, workers or device.")
    if augment_on == "auto":
        return accelerator in ("cuda", "mps")
    return augment_on == "device"


def train(config: TrainConfig, callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Train the wake keypoint model.

    Args:
        config: The run's settings.
        callbacks: Extra Lightning callbacks (e.g. for monitoring in tests).

    Returns:
        Paths of the best and last checkpoints, the best epoch and its
        validation metrics, and the run's log folder.

    Raises:
        WakeModelError: A requested GPU is missing, the data is missing or
            empty, the resume checkpoint is missing or does not match.
        SystemExit: The run was interrupted (Ctrl-C); ``last.ckpt`` holds the
            last finished epoch.
    """
    device = select_device(config.accelerator, config.precision)
    env = environment_info(device)
    logger.info("Device: %s", device.description)
    logger.info(
        "Versions: torch %s, CUDA %s, cuDNN %s, Lightning %s",
        env["torch"], env["cuda"], env["cudnn"], env["lightning"],
    )
    if config.epochs < 1:
        raise InputError(f"--epochs {config.epochs}: must be at least 1.")
    if config.resume is not None:
        _check_resume(config.resume, config.image_size)

    pl.seed_everything(config.seed, workers=True, verbose=False)
    datamodule = WakeDataModule(
        config.data_dir,
        image_size=config.image_size,
        batch_size=config.batch_size,
        num_workers=config.workers,
        seed=config.seed,
        augment=True,
        augment_on_device=wants_device_augmentation(config.augment_on, device.accelerator),
    )
    datamodule.setup("fit")
    module = WakeKeypointModule(
        image_size=config.image_size,
        pretrained=config.pretrained,
        weights_path=str(config.weights_path) if config.weights_path else None,
        lr=config.lr,
        weight_decay=config.weight_decay,
        warmup_epochs=config.warmup_epochs,
        max_epochs=config.epochs,
    )

    run_dir = _unique_run_dir(config.run_dir, config.run_name)
    best_callback, last_callback = _checkpoint_callbacks(config.checkpoint_dir)
    recorder = RunRecorder(env, _config_record(config), run_dir)
    loggers = _build_loggers(config, run_dir)
    all_callbacks: list[Callback] = [recorder, *callbacks]
    if not config.fast_dev_run:
        # Lightning's fast_dev_run still writes last.ckpt at the end: keep smoke tests from
        # overwriting a real run's checkpoint by not checkpointing at all.
        all_callbacks[:0] = [best_callback, last_callback]
    if loggers:
        all_callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    if config.progress_bar:
        all_callbacks.append(WakeProgressBar(leave=True))

    try:
        trainer = _build_trainer(
            config, device, loggers, all_callbacks, run_dir, len(datamodule.train_dataloader())
        )
    except (MisconfigurationException, ValueError, TypeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(
            f"invalid trainer settings (--devices {config.devices}, --strategy "
            f"{config.strategy}, --num-nodes {config.num_nodes}, --precision {device.precision}, "
            f"--max-time {config.max_time}): {reason}"
        ) from error
    logger.info("Run folder: %s; checkpoints: %s", run_dir, config.checkpoint_dir)
    fitted: pl.LightningModule = torch.compile(module) if config.compile else module
    if config.auto_batch_size:
        _scale_batch_size(trainer, fitted, datamodule, device)
    try:
        trainer.fit(fitted, datamodule=datamodule, ckpt_path=config.resume)
    except SystemExit:
        if last_callback.best_model_path:
            logger.warning(
                "Training interrupted; continue with --resume %s", last_callback.best_model_path
            )
        raise
    finally:
        if config.logger == "wandb":
            import wandb

            wandb.finish()

    best_epoch = recorder.best_epoch()
    return TrainResult(
        best_checkpoint=Path(best_callback.best_model_path)
        if best_callback.best_model_path else None,
        # An unmonitored ModelCheckpoint's "best" is its latest file.
        last_checkpoint=Path(last_callback.best_model_path)
        if last_callback.best_model_path else None,
        best_epoch=best_epoch,
        best_metrics=recorder.history.get(best_epoch, {}) if best_epoch is not None else {},
        run_dir=run_dir,
        device=device,
        epochs_completed=trainer.current_epoch,
        history=dict(recorder.history),
    )
