"""Training entry point: :func:`train` runs Lightning on a :class:`TrainConfig`.

A run owns one folder, ``RUN_DIR/RUN_NAME/`` (``--run-dir``, ``--run-name``;
default ``runs/`` and a timestamp; a taken name gets ``-1``, ``-2`` ...), which
holds everything it writes (see ``checkpoints/README.md``):

- ``config.yaml``: the :class:`TrainConfig` it ran with (plain YAML, written
  atomically once the data is loaded); ``train --config RUN/config.yaml``
  reruns it, and options given on the command line override the file.
- ``metrics.csv``: the training and validation metrics (Lightning's CSV
  logger, for the training-curve plots); not written with ``--logger none``.
  With ``--logger wandb`` also ``wandb/``: without an API key W&B runs
  offline (sync later with ``wandb sync RUN/wandb/offline-run-*``); it never
  prompts.
- ``checkpoints/wake-epoch=012-val_loss=1.21.ckpt``: the best checkpoint by
  :attr:`WakeKeypointModule.monitor <wakemodel.model.WakeKeypointModule.monitor>`
  (the mean validation loss per chip, lower is better), and
  ``checkpoints/last.ckpt`` after every epoch, for ``--resume``; both written
  atomically. ``--checkpoint-dir`` puts them elsewhere. Every
  checkpoint carries the module's hyperparameters (``image_size`` ...) and
  ``checkpoint["wakemodel_run_dir"]``, the run folder (where ``metrics.csv``
  is), and ``checkpoint["wakemodel_chip_extent_m"]``, the training chips' median
  ground extent (metres; ``scan`` cuts scene windows of this size).

``--resume RUN/checkpoints/last.ckpt`` continues in the same run folder: the
same ``metrics.csv`` (appended) and checkpoints. ``--fast-dev-run`` writes no
run folder at all.

Multi-process training (DDP: ``--devices 2``, ``--num-nodes``, ``torchrun``,
``srun``) writes one run folder: every process uses the same ``RUN_DIR/RUN_NAME``
(:func:`_resolve_run_dir`), only global rank 0 writes files and log lines,
and every logged metric is reduced over all processes.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import logging
import math
import netrc
import os
import pickle
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar
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
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.plugins import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from wakemodel._io import atomic_path
from wakemodel.averaging import EmaWeights
from wakemodel.budget import TimeBudget, _set_total_steps, parse_duration_s
from wakemodel.config import CONFIG_FILE_NAME, TrainConfig, save_config
from wakemodel.datamodule import WakeDataModule
from wakemodel.devices import DeviceChoice, environment_info, select_device
from wakemodel.errors import InputError, WakeModelError, first_line
from wakemodel.evaluate import TtaCalibration, fit_tta_calibration
from wakemodel.model import WakeKeypointModule
from wakemodel.predictors import CHIP_EXTENT_KEY, TTA_STD_SCALE_KEY, WAKE_SCORE_PLATT_KEY
from wakemodel.records import SPLIT_NAMES, WakeRecord, median_chip_extent_m

logger = logging.getLogger(__name__)

__all__ = ["TrainConfig", "TrainResult", "train"]

LAST_CHECKPOINT_NAME = "last"
"""``last.ckpt``: the state after the latest finished epoch, for ``--resume``."""

CHECKPOINT_SUBDIR = "checkpoints"
"""The checkpoints' folder inside a run folder (unless ``--checkpoint-dir`` is given)."""

RUN_DIR_ENV = "WAKEMODEL_RUN_DIR"
"""Environment variable that hands the run folder chosen by global rank 0 to the DDP
processes Lightning starts from it (set by :func:`train` only while fitting; internal)."""

LOG_EVERY_N_STEPS = 10
"""The training loss is logged every this many steps (once per epoch for shorter epochs)."""

_LIGHTNING_LOGGERS = (
    "pytorch_lightning",
    "lightning.pytorch",
    "lightning_fabric",
    "lightning.fabric",
)
"""Loggers whose INFO lines (GPU/TPU availability, tips, fit-stopped notes) are hidden."""


@dataclass
class TrainResult:
    """What a finished run produced.

    Attributes:
        best_checkpoint: Best checkpoint by the module's monitored metric
            (``val/loss``); ``None`` when none was written (``fast_dev_run``).
        last_checkpoint: ``last.ckpt`` of this run; ``None`` when none was written.
        best_epoch: 0-based epoch of the lowest validation loss; ``None``
            when no validation ran.
        best_metrics: Validation metrics of the best epoch (``val/vertex_error_px``
            in pixels, ``val/heading_error_deg`` in degrees, ...).
        run_dir: This run's folder; ``None`` when none was written (``fast_dev_run``).
        device: The device and precision used.
        epochs_completed: Number of epochs finished, including resumed ones.
        history: Validation metrics of every epoch, by 0-based epoch.
        config_path: The run's ``config.yaml``; ``None`` when none was written.
        metrics_path: The run's ``metrics.csv``; ``None`` when none was written
            (``--logger none``, ``fast_dev_run``).
        checkpoint_dir: Folder of the checkpoints; ``None`` when none were written.
        resumed: Whether the run continued from ``--resume``.
        is_global_zero: Whether this process is global rank 0, the one that
            writes and reports (always True without DDP); every DDP process
            returns a result with the same metrics and paths.
    """

    best_checkpoint: Path | None
    last_checkpoint: Path | None
    best_epoch: int | None
    best_metrics: dict[str, float]
    run_dir: Path | None
    device: DeviceChoice
    epochs_completed: int = 0
    history: dict[int, dict[str, float]] = field(default_factory=dict)
    config_path: Path | None = None
    metrics_path: Path | None = None
    checkpoint_dir: Path | None = None
    resumed: bool = False
    is_global_zero: bool = True


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
    """Write the run's ``config.yaml``, record validation metrics, stamp the checkpoints.

    Every checkpoint gets the run folder and the training chips' median ground
    extent (:data:`CHIP_EXTENT_KEY`, metres), which ``scan`` sizes scene windows by.

    The per-epoch history is part of the checkpoint's callback state, so a
    resumed run still knows its best epoch.

    Args:
        monitor: Metric that selects the best epoch (``WakeKeypointModule.monitor``).
        mode: ``"min"`` or ``"max"``: whether lower or higher ``monitor`` is better.
        run_dir: The run folder (holds ``metrics.csv``), stamped into checkpoints.
        config: The configuration to write to ``run_dir/config.yaml`` when
            fitting starts (after the data loaded); ``None`` writes nothing.
    """

    def __init__(
        self, monitor: str, mode: str, run_dir: Path | None, config: TrainConfig | None = None
    ) -> None:
        self.monitor = monitor
        self.mode = mode
        self.run_dir = run_dir
        self.config = config
        self.history: dict[int, dict[str, float]] = {}
        self.chip_extent_m = math.nan

    @property
    def config_path(self) -> Path | None:
        """Where ``config.yaml`` goes (``None`` without a config or run folder)."""
        if self.config is None or self.run_dir is None:
            return None
        return self.run_dir / CONFIG_FILE_NAME

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Under DDP, check that every process uses global rank 0's run folder.

        Raises:
            WakeModelError: The processes chose different folders (on every process).
        """
        if trainer.world_size <= 1 or self.run_dir is None:
            return
        mine = str(self.run_dir)
        chosen = trainer.strategy.broadcast(mine, src=0)
        if not trainer.strategy.reduce_boolean_decision(chosen == mine, all=True):
            raise WakeModelError(
                f"the DDP processes disagree on the run folder (rank 0 chose {chosen}); "
                "pass --run-name NAME."
            )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write ``config.yaml`` (rank zero, atomically) and measure the training chips."""
        if self.config_path is not None and trainer.is_global_zero:
            save_config(self.config, self.config_path)  # type: ignore[arg-type]
        datamodule = getattr(trainer, "datamodule", None)
        if isinstance(datamodule, WakeDataModule):
            self.chip_extent_m = median_chip_extent_m(
                datamodule.train_dataset.records, float(pl_module.hparams.gsd_m)
            )

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
        """Stamp the run folder (with ``metrics.csv``) and the chip extent into ``checkpoint``."""
        if self.run_dir is not None:
            checkpoint["wakemodel_run_dir"] = str(self.run_dir)
        if math.isfinite(self.chip_extent_m):
            checkpoint[CHIP_EXTENT_KEY] = self.chip_extent_m

    def state_dict(self) -> dict[str, Any]:
        """Return the metric history (saved in the checkpoint's callback state)."""
        return {"history": {epoch: dict(metrics) for epoch, metrics in self.history.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the metric history when resuming."""
        self.history = {int(epoch): dict(m) for epoch, m in state_dict["history"].items()}

    def best_epoch(self) -> int | None:
        """Return the earliest epoch with the best ``monitor`` value, or ``None``."""
        sign = 1.0 if self.mode == "min" else -1.0
        scored = [
            (sign * metrics[self.monitor], epoch)
            for epoch, metrics in sorted(self.history.items())
            if self.monitor in metrics and not math.isnan(metrics[self.monitor])
        ]
        return min(scored)[1] if scored else None


class LogInterval(Callback):
    """Log the training loss every :data:`LOG_EVERY_N_STEPS` steps, or once per shorter epoch.

    Set when training starts, from ``trainer.num_training_batches``, so the
    batches need not be counted before the Trainer exists. Build the Trainer
    with ``log_every_n_steps=1`` (which also keeps Lightning from warning that
    an epoch is shorter than the logging interval).
    """

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Set ``trainer.log_every_n_steps`` to ``min(10, batches per epoch)``."""
        batches = trainer.num_training_batches
        per_epoch = LOG_EVERY_N_STEPS if math.isinf(batches) else int(batches)
        trainer.log_every_n_steps = max(1, min(LOG_EVERY_N_STEPS, per_epoch))


class _AppendingExperimentWriter(ExperimentWriter):
    """Lightning's CSV writer that appends to an existing ``metrics.csv`` (a resumed run).

    Lightning's own writer deletes an existing ``metrics.csv``; this one reads
    its header instead, so new rows are appended under the same columns.
    """

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = list(next(csv.reader(file), []))


class RunCSVLogger(CSVLogger):
    """CSV logger writing ``RUN/metrics.csv`` (appending when resumed), no ``hparams.yaml``.

    The hyperparameters live in ``RUN/config.yaml`` and in every checkpoint.

    Args:
        run_dir: The run folder.
    """

    def __init__(self, run_dir: Path) -> None:
        super().__init__(save_dir=run_dir.parent, name="", version=run_dir.name)

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        """The writer of ``metrics.csv`` (created on first use)."""
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment

    def log_hyperparams(self, params: Any = None, *args: Any, **kwargs: Any) -> None:
        """Write nothing: ``config.yaml`` and the checkpoints hold the hyperparameters."""


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
            name: value
            for name, value in super().get_metrics(trainer, pl_module).items()
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


def _external_launcher(num_nodes: int) -> str | None:
    """Name what started this run's processes when it was not Lightning from this process.

    Args:
        num_nodes: ``--num-nodes``.

    Returns:
        ``"torchrun"`` (torch elastic with ``WORLD_SIZE`` > 1), ``"srun"`` (a
        SLURM step of several tasks), ``"one command per machine (--num-nodes
        N)"``, or None: a single process, or the first of those that Lightning
        starts itself (``--devices 2`` on one machine).
    """
    if os.environ.get("TORCHELASTIC_RUN_ID") and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "torchrun"
    slurm_tasks = os.environ.get("SLURM_NTASKS", "1")
    interactive = os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive")
    if slurm_tasks.isdigit() and int(slurm_tasks) > 1 and not interactive:
        return "srun"
    if num_nodes > 1:
        return f"one command per machine (--num-nodes {num_nodes})"
    return None


def _job_run_name() -> str | None:
    """A run name that all processes of a launched job share, or None.

    ``slurm-<SLURM_JOB_ID>`` under SLURM, else ``torchrun-<TORCHELASTIC_RUN_ID>``
    when torchrun has a rendezvous id (``--rdzv-id``, or the random one of
    ``--standalone``).
    """
    job = os.environ.get("SLURM_JOB_ID")
    if job:
        return f"slurm-{job}"
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    return None if run_id in ("", "none") else f"torchrun-{run_id}"


def _resolve_run_dir(config: TrainConfig, resume_folder: Path | None) -> Path:
    """The run folder, the same in every process of a multi-process (DDP) run.

    - A process started by Lightning for DDP (``--devices 2``) takes the folder
      its first process chose (:data:`RUN_DIR_ENV`).
    - A resumed run continues in ``resume_folder``.
    - Processes started by a launcher (torchrun, srun, one per machine) cannot
      talk before training starts, so they use ``--run-name`` or else the job
      (:func:`_job_run_name`) instead of their own clocks; they all see the
      same ``RUN_DIR`` before any of them creates the folder, so a taken name
      gets the same ``-1`` suffix everywhere (and :class:`RunRecorder` checks).
    - Otherwise a new ``RUN_DIR/RUN_NAME`` (a timestamp by default).

    Raises:
        InputError: A launcher started the processes and neither ``--run-name``
            nor a job id names the run.
    """
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited:
        return Path(inherited)
    if resume_folder is not None:
        return resume_folder
    name = config.run_name
    launcher = _external_launcher(config.num_nodes)
    if launcher is not None and name is None:
        name = _job_run_name()
        if name is None:
            raise InputError(
                f"the processes of a run started by {launcher} need a shared run name; "
                "pass --run-name NAME (the same for every process)."
            )
    return _unique_run_dir(config.run_dir, name)


class _SharedTimeBudget(TimeBudget):
    """:class:`TimeBudget` whose plan is global rank 0's on every DDP process.

    Each process times its own steps; if their plans differed, the processes
    would stop after different epochs and the last ones would wait forever.
    """

    def _plan(self, trainer: pl.Trainer, seconds_per_epoch: float) -> None:
        super()._plan(trainer, seconds_per_epoch)
        if trainer.world_size <= 1:
            return
        epochs, steps = trainer.strategy.broadcast((self.planned_epochs, self.planned_steps))
        trainer.fit_loop.max_epochs = epochs
        for config in trainer.lr_scheduler_configs:
            _set_total_steps(config.scheduler, steps)
        self.planned_epochs, self.planned_steps = epochs, steps


class _RankZeroFilter(logging.Filter):
    """Keep only errors in DDP processes other than global rank 0 (one copy of each line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or rank_zero_only.rank == 0


@contextlib.contextmanager
def _rank_zero_logging() -> Iterator[None]:
    """Silence this package's log lines below ERROR outside global rank 0 during a run.

    The rank is read when a line is logged: Lightning's ``rank_zero_only.rank``,
    from the environment at first (``RANK``, ``LOCAL_RANK``, ``SLURM_PROCID``),
    then set by the Trainer.
    """
    rank_filter = _RankZeroFilter()
    names = ["wakemodel"] + [
        name for name in logging.Logger.manager.loggerDict if name.startswith("wakemodel.")
    ]
    loggers = [logging.getLogger(name) for name in names]
    for each in loggers:
        each.addFilter(rank_filter)
    try:
        yield
    finally:
        for each in loggers:
            each.removeFilter(rank_filter)


def _build_loggers(config: TrainConfig, run_dir: Path) -> list[Logger]:
    """Create the CSV logger (unless ``none``) and the optional W&B logger."""
    if config.logger == "none" or config.fast_dev_run:
        return []
    loggers: list[Logger] = [RunCSVLogger(run_dir)]
    if config.logger == "wandb":
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


def _check_resume(path: Path, image_size: int) -> Path | None:
    """Check that ``path`` is a checkpoint of this image size; return its run folder.

    Returns:
        The run folder to continue in: the one stamped in the checkpoint
        (``wakemodel_run_dir``) when it exists, else ``RUN`` for a checkpoint
        at ``RUN/checkpoints/NAME.ckpt`` beside a ``RUN/config.yaml``, else
        ``None`` (a new run folder is made).

    Raises:
        InputError: The file is missing, unreadable or of another image size.
    """
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
    stamped = checkpoint.get("wakemodel_run_dir")
    if isinstance(stamped, str) and Path(stamped).is_dir():
        return Path(stamped)
    folder = path.parent.parent
    if path.parent.name == CHECKPOINT_SUBDIR and (folder / CONFIG_FILE_NAME).is_file():
        return folder
    return None


def checkpoint_filename(monitor: str) -> str:
    """Best-checkpoint name pattern for ``monitor`` (``.ckpt`` is appended).

    E.g. ``wake-epoch={epoch:03d}-val_loss={val/loss:.2f}`` gives
    ``wake-epoch=012-val_loss=1.21.ckpt``.
    """
    short = WakeProgressBar.DISPLAYED.get(monitor, monitor.rsplit("/", 1)[-1])
    return f"wake-epoch={{epoch:03d}}-{short}={{{monitor}:.2f}}"


def _checkpoint_callbacks(
    checkpoint_dir: Path, monitor: str, mode: str
) -> tuple[ModelCheckpoint, ModelCheckpoint]:
    """Return the best-checkpoint callback and the every-epoch ``last.ckpt`` callback.

    ``last.ckpt`` comes from its own unmonitored callback: Lightning 2.6's
    ``save_last`` only refreshes it when the monitored metric improved, which
    would make ``--resume`` lose the epochs since the last improvement.
    """
    best = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename=checkpoint_filename(monitor),
        monitor=monitor,
        mode=mode,
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


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Hide Lightning's chatter during a run: only our log lines and the progress bar remain.

    Lightning's INFO lines (GPU/TPU availability, "Tip" adverts, the
    stepping-batches estimate, "fit stopped") are raised to WARNING; torch's
    ``LeafSpec`` deprecation warning from Lightning's pytree helper,
    Lightning's "does not have many workers" hint (the data module chooses the
    worker count) and its DDP advice to sync ``val/std_scale`` (already the same
    on every process) are ignored. Lightning's other warnings and errors still
    show. With debug logging (``--verbose``) nothing is hidden. Levels and
    filters are restored afterwards.
    """
    if logging.getLogger("wakemodel").isEnabledFor(logging.DEBUG):
        yield
        return
    saved = {name: logging.getLogger(name).level for name in _LIGHTNING_LOGGERS}
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated"
        )
        # The data module picks its worker count on purpose (chips are cached in memory).
        warnings.filterwarnings("ignore", message=r".*does not have many workers")
        # Under DDP: the calibration scale is computed from metrics gathered over all
        # processes, so it is already the same everywhere.
        warnings.filterwarnings("ignore", message=r".*self\.log\('val/std_scale'.*sync_dist")
        try:
            for name in _LIGHTNING_LOGGERS:
                logging.getLogger(name).setLevel(logging.WARNING)
            yield
        finally:
            for name, level in saved.items():
                logging.getLogger(name).setLevel(level)


def _build_trainer(
    config: TrainConfig,
    device: DeviceChoice,
    loggers: list[Logger],
    callbacks: list[Callback],
    run_dir: Path,
) -> pl.Trainer:
    """Create the Lightning Trainer of a run (atomic checkpoint writes, clipping ...).

    ``log_every_n_steps`` starts at 1; :class:`LogInterval` sets it when training starts.
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
        log_every_n_steps=1,
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
    from the configured size. On other devices, and under DDP (which the
    finder does not support), it warns and keeps the size.
    """
    if device.accelerator != "cuda":
        logger.warning(
            "--auto-batch-size needs a CUDA GPU (device: %s); keeping --batch-size %d.",
            device.accelerator,
            datamodule.batch_size,
        )
        return
    if trainer.world_size > 1:
        logger.warning(
            "--auto-batch-size works on one GPU, not under DDP (%d processes); keeping "
            "--batch-size %d per device.",
            trainer.world_size,
            datamodule.batch_size,
        )
        return
    from pytorch_lightning.tuner import Tuner

    found = Tuner(trainer).scale_batch_size(module, datamodule=datamodule, mode="binsearch")
    logger.info("Batch-size finder: %s chips per batch", found)


def train(config: TrainConfig, callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Train the wake keypoint model.

    Args:
        config: The run's settings.
        callbacks: Extra Lightning callbacks (e.g. for monitoring in tests).

    Returns:
        Paths of the best and last checkpoints, the best epoch and its
        validation metrics, and the run's folder.

    Raises:
        WakeModelError: A requested GPU is missing, the data is missing or
            empty, the resume checkpoint is missing or does not match.
        SystemExit: The run was interrupted (Ctrl-C); ``last.ckpt`` holds the
            last finished epoch.
    """
    with quiet_lightning(), _rank_zero_logging():
        return _train(config, callbacks)


def calibrate_tta(
    checkpoints: Sequence[Path], records: Sequence[WakeRecord], accelerator: str = "auto"
) -> dict[Path, TtaCalibration]:
    """Fit each checkpoint's 8-view calibration on ``records`` and store it.

    The network's ``std_scale`` is fitted every validation epoch on one view; the
    std of the 8 combined views (what ``infer`` and ``evaluate`` report by
    default) is fitted here, on the same validation chips with the views
    combined, and so is the Platt scaling of the wake score when the chips
    include some without a wake (:func:`wakemodel.evaluate.fit_tta_calibration`).
    They are written into the checkpoint as
    :data:`~wakemodel.predictors.TTA_STD_SCALE_KEY` and
    :data:`~wakemodel.predictors.WAKE_SCORE_PLATT_KEY` (atomically; a Platt
    scaling that cannot be fitted removes the entry).

    Args:
        checkpoints: ``.ckpt`` files written by ``train`` (repeats are fitted once).
        records: Annotated chips none of the checkpoints trained on.
        accelerator: Device for the predictions.

    Returns:
        Checkpoint -> fitted calibration.
    """
    fitted: dict[Path, TtaCalibration] = {}
    by_weights: dict[str, TtaCalibration] = {}
    for path in dict.fromkeys(Path(checkpoint) for checkpoint in checkpoints):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        digest = _weights_digest(checkpoint["state_dict"])
        if digest not in by_weights:
            by_weights[digest] = fit_tta_calibration(path, records, accelerator=accelerator)
        calibration = by_weights[digest]
        checkpoint[TTA_STD_SCALE_KEY] = calibration.std_scale
        checkpoint.pop(WAKE_SCORE_PLATT_KEY, None)
        if calibration.wake_score_platt is not None:
            checkpoint[WAKE_SCORE_PLATT_KEY] = list(calibration.wake_score_platt)
        AtomicCheckpointIO().save_checkpoint(checkpoint, path)
        logger.info(
            "8-view std scale of %s: %.3f (%d validation chips)",
            path,
            calibration.std_scale,
            len(records),
        )
        if calibration.wake_score_platt is not None:
            logger.info(
                "Wake score Platt scaling: sigmoid(%.3f * logit(score) %+.3f)",
                *calibration.wake_score_platt,
            )
        fitted[path] = calibration
    return fitted


def _weights_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-1 of a state dict's names and tensor bytes: equal for equal weights.

    The best and the last checkpoint of a run are often the same epoch;
    :func:`calibrate_tta` then fits them once.
    """
    digest = hashlib.sha1(usedforsecurity=False)
    for name, tensor in state_dict.items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _train(config: TrainConfig, callbacks: Sequence[Callback]) -> TrainResult:
    """:func:`train` without the logging and warning settings."""
    device = select_device(config.accelerator, config.precision)
    env = environment_info(device)
    logger.info("Device: %s", device.description)
    logger.info(
        "Versions: torch %s, CUDA %s, cuDNN %s, Lightning %s",
        env["torch"],
        env["cuda"],
        env["cudnn"],
        env["lightning"],
    )
    budget = (
        _SharedTimeBudget(parse_duration_s(config.max_time), config.epochs)
        if config.max_time is not None and config.fit_schedule_to_time and not config.fast_dev_run
        else None
    )
    resume_folder = None
    if config.resume is not None:
        resume_folder = _check_resume(config.resume, config.image_size)
    # A resumed run continues in its own folder; a new run never reuses one; all DDP
    # processes use the same one.
    run_dir = _resolve_run_dir(config, resume_folder)

    pl.seed_everything(config.seed, workers=True, verbose=False)
    datamodule = WakeDataModule(
        config.data_dir,
        image_size=config.image_size,
        batch_size=config.batch_size,
        num_workers=config.workers,
        seed=config.seed,
        split_files=None
        if config.split_dir is None
        else {name: config.split_dir / f"{name}.txt" for name in SPLIT_NAMES},
        augment=True,
        augment_on=config.augment_on,
    )
    module = WakeKeypointModule(
        image_size=config.image_size,
        pretrained=config.pretrained,
        weights_path=str(config.weights_path) if config.weights_path else None,
        lr=config.lr,
        weight_decay=config.weight_decay,
        warmup_epochs=config.warmup_epochs,
        max_epochs=config.epochs,
        heading_weight=config.heading_weight,
        visibility_weight=config.visibility_weight,
        wake_weight=config.wake_weight,
        keypoint_visibility=config.keypoint_visibility,
        copy_single_end=config.copy_single_end,
        single_end_slot=config.single_end_slot,
    )

    writes = not config.fast_dev_run
    if config.checkpoint_dir is not None:
        checkpoint_dir = config.checkpoint_dir
    elif config.resume is not None and resume_folder is None:
        checkpoint_dir = config.resume.parent  # a checkpoint from before run folders
    else:
        checkpoint_dir = run_dir / CHECKPOINT_SUBDIR
    best_callback, last_callback = _checkpoint_callbacks(
        checkpoint_dir, module.monitor, module.mode
    )
    recorded = replace(config, resume=None, run_name=run_dir.name)
    recorder = RunRecorder(
        module.monitor, module.mode, run_dir if writes else None, recorded if writes else None
    )
    loggers = _build_loggers(config, run_dir)
    all_callbacks: list[Callback] = [recorder, LogInterval(), *callbacks]
    if budget is not None:
        all_callbacks.append(budget)
    if config.ema_decay > 0:
        all_callbacks.append(EmaWeights(config.ema_decay))
    if writes:
        # Lightning's fast_dev_run still writes last.ckpt at the end: keep smoke tests from
        # overwriting a real run's checkpoint by not checkpointing at all.
        all_callbacks[:0] = [best_callback, last_callback]
    if loggers:
        all_callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    if config.progress_bar:
        all_callbacks.append(WakeProgressBar(leave=True))

    try:
        trainer = _build_trainer(config, device, loggers, all_callbacks, run_dir)
    except (MisconfigurationException, ValueError, TypeError) as error:
        reason = first_line(error)
        raise InputError(
            f"invalid trainer settings (--devices {config.devices}, --strategy "
            f"{config.strategy}, --num-nodes {config.num_nodes}, --precision {device.precision}, "
            f"--max-time {config.max_time}): {reason}"
        ) from error
    if not writes:
        logger.info("Fast dev run: no run folder, checkpoints or logs are written")
    elif resume_folder is not None:
        logger.info("Resuming %s in run folder %s", config.resume, run_dir)
    else:
        logger.info("Run folder: %s", run_dir)
    fitted: pl.LightningModule = torch.compile(module) if config.compile else module
    if config.auto_batch_size:
        _scale_batch_size(trainer, fitted, datamodule, device)
    # The DDP processes Lightning starts in fit() copy this environment: they take this
    # run folder instead of choosing one from their own clocks.
    inherited = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    try:
        with warnings.catch_warnings():
            if resume_folder is not None:  # continuing in its own folder is the point
                warnings.filterwarnings("ignore", message=r"Checkpoint directory .* not empty")
            trainer.fit(fitted, datamodule=datamodule, ckpt_path=config.resume)
    except SystemExit:
        if last_callback.best_model_path:
            logger.warning(
                "Training interrupted; continue with --resume %s", last_callback.best_model_path
            )
        raise
    except BaseException:
        if resume_folder is None and inherited is None and trainer.is_global_zero:
            # Lightning opens the CSV log before the data loads; a run that failed to
            # start leaves no empty folder behind.
            with contextlib.suppress(OSError):
                run_dir.rmdir()
        raise
    finally:
        if inherited is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = inherited
        if config.logger == "wandb" and loggers:
            import wandb

            wandb.finish()

    best_epoch = recorder.best_epoch()
    metrics_path = run_dir / "metrics.csv" if loggers else None
    best_checkpoint = (
        Path(best_callback.best_model_path) if writes and best_callback.best_model_path else None
    )
    # An unmonitored ModelCheckpoint's "best" is its latest file.
    last_checkpoint = (
        Path(last_callback.best_model_path) if writes and last_callback.best_model_path else None
    )
    written = [path for path in (best_checkpoint, last_checkpoint) if path is not None]
    if written and trainer.is_global_zero:
        calibrate_tta(written, datamodule.val_dataset.records, device.accelerator)
    return TrainResult(
        best_checkpoint=best_checkpoint,
        last_checkpoint=last_checkpoint,
        best_epoch=best_epoch,
        best_metrics=recorder.history.get(best_epoch, {}) if best_epoch is not None else {},
        run_dir=run_dir if writes else None,
        device=device,
        epochs_completed=trainer.current_epoch,
        history=dict(recorder.history),
        config_path=recorder.config_path,
        metrics_path=metrics_path if metrics_path is not None and metrics_path.is_file() else None,
        checkpoint_dir=checkpoint_dir if writes else None,
        resumed=config.resume is not None,
        is_global_zero=trainer.is_global_zero,
    )
