"""Inference with a checkpoint spread over several devices through Lightning's predict loop.

``infer``/``evaluate --devices N`` (N > 1, a ``.ckpt`` model) come here from
:func:`wakemodel.infer.iter_predictions`; one device keeps the plain streaming path
of :mod:`wakemodel.infer`, which imports neither Lightning nor (for ONNX) torch.

How it works:

- the chips are a map-style dataset (:class:`ChipDataset`) read and preprocessed
  exactly as in :mod:`wakemodel.infer`; Lightning gives each rank its share with
  an ``UnrepeatedDistributedSampler`` (no chip is padded or repeated);
- the detector of the checkpoint is wrapped in :class:`DetectorModule`, whose
  ``predict_step`` runs :func:`wakemodel.infer.predict_batch` (same numerics and
  TTA as one device) and returns the sample indices with the outputs;
- the ``ddp_spawn`` strategy starts N fresh worker processes and leaves the calling
  process alone: unlike ``ddp``, which re-runs the command line (``sys.argv``)
  for the other ranks, nothing re-parses the options, re-reads platform CSVs or
  prints; it works from Python too (under an ``if __name__ == "__main__"`` guard);
- each rank writes its outputs and indices to a temporary folder
  (:class:`RankWriter`, a ``BasePredictionWriter``); the calling process reads them
  all, puts them back in input order and builds the predictions; progress travels
  back through a queue.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from wakemodel import preprocess
from wakemodel.devices import available_cores, select_device
from wakemodel.errors import InputError, WakeModelError, first_line
from wakemodel.predictors import TorchPredictor, load_predictor
from wakemodel.preprocess import ImageInput, read_chip
from wakemodel.tta import DEFAULT_TTA, predict_batch

ProgressCallback = Callable[[int, int], None]
"""``progress(done, total)``, as :data:`wakemodel.infer.ProgressCallback`."""

__all__ = ["ChipDataset", "DetectorModule", "RankWriter", "predict_on_devices"]

logger = logging.getLogger(__name__)

_LIGHTNING_LOGGERS = (
    "pytorch_lightning",
    "lightning.pytorch",
    "lightning_fabric",
    "lightning.fabric",
)
"""Loggers whose INFO lines (device availability, process-group start) are hidden."""

_IGNORED_WARNINGS = (
    r".*does not have many workers",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated",
)
"""Lightning/torch warnings that say nothing useful about inference."""


class ChipDataset(Dataset[dict[str, Any]]):
    """Chips read and preprocessed on demand, as :mod:`wakemodel.infer` does.

    Samples are dicts::

        image   uint8 [1, S, S] (the network input times 255; zeros if unreadable)
        index   int64 scalar, position in ``items``
        size    int64 [2], original (width, height) in pixels (0, 0 if unreadable)
        error   str, why the chip could not be read ("" when it could)

    Args:
        items: Image paths and/or raw grey arrays ``[H, W]``.
        image_size: Network input side S (pixels).
    """

    def __init__(self, items: Sequence[ImageInput], image_size: int) -> None:
        self.items = list(items)
        self.image_size = int(image_size)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            _, raw = read_chip(self.items[index])
        except WakeModelError as exc:
            return {
                "image": torch.zeros((1, self.image_size, self.image_size), dtype=torch.uint8),
                "index": index,
                "size": torch.zeros(2, dtype=torch.int64),
                "error": first_line(exc),
            }
        return {
            "image": torch.from_numpy(preprocess.preprocess_image(raw, self.image_size)),
            "index": index,
            "size": torch.tensor([raw.shape[1], raw.shape[0]], dtype=torch.int64),
            "error": "",
        }


def _quiet_worker(quiet: bool) -> None:
    """In a worker process: hide Lightning's INFO lines and its useless warnings."""
    for pattern in _IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    if quiet:
        for name in _LIGHTNING_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


class DetectorModule(pl.LightningModule):
    """A LightningModule around a detector, for ``Trainer.predict`` only.

    ``predict_step`` returns numpy ``{"index" [B], "size" [B, 2] (pixels),
    "keypoints" [B, 3, 2] and "keypoint_std" [B, 3, 2] (normalised),
    "visibility" [B, 3], "error" [B] str}``, NaN for unreadable chips.

    Args:
        detector: The network (as :func:`wakemodel.network.detector_from_checkpoint`
            builds it).
        image_size: Network input side S (pixels).
        tta: Combine the 8 flips/rotations of the input (:mod:`wakemodel.tta`).
        quiet: Hide Lightning's INFO lines in the worker processes too.
        metadata: The model file's metadata (:class:`wakemodel.predictors.Predictor`),
            which carries its 8-view calibration factor.
    """

    def __init__(
        self,
        detector: torch.nn.Module,
        image_size: int,
        tta: bool,
        quiet: bool = True,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.detector = detector
        self.image_size = int(image_size)
        self.tta = tta
        self.quiet = quiet
        self.metadata = metadata

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Runs first in a ddp_spawn worker, before Lightning logs anything there.
        super().__setstate__(state)
        _quiet_worker(self.quiet)

    def forward(self, images: torch.Tensor) -> Any:
        """The detector's outputs for float ``[B, 1, S, S]`` in [0, 1]."""
        return self.detector(images)

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        """Keep the batch on the CPU: :class:`TorchPredictor` sends the images to the device."""
        return batch

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, np.ndarray]:
        """Predict the readable chips of ``batch`` with :func:`wakemodel.infer.predict_batch`."""
        errors = np.array(batch["error"], dtype=str)
        readable = errors == ""
        count = len(errors)
        keypoints = np.full((count, 3, 2), np.nan)
        visibility = np.full((count, 3), np.nan)
        keypoint_std = np.full((count, 3, 2), np.nan)
        if readable.any():
            images = batch["image"].numpy()[readable].astype(np.float32) / np.float32(255.0)
            predictor = TorchPredictor(self.detector, self.image_size, self.device, self.metadata)
            outputs = predict_batch(predictor, images, tta=self.tta)
            keypoints[readable], visibility[readable], keypoint_std[readable] = outputs
        return {
            "index": batch["index"].numpy().astype(np.int64),
            "size": batch["size"].numpy().astype(np.int64),
            "keypoints": keypoints,
            "visibility": visibility,
            "keypoint_std": keypoint_std,
            "error": errors,
        }


class RankWriter(BasePredictionWriter):
    """Collect one rank's outputs; write them to ``<folder>/rank<R>.npz`` at the end.

    After each batch the number of chips it held is put on ``queue`` (progress).

    Args:
        folder: Folder shared by the ranks (a local temporary folder).
        queue: A ``multiprocessing`` spawn-context ``SimpleQueue``, or None.
    """

    def __init__(self, folder: str, queue: Any = None) -> None:
        super().__init__(write_interval="batch")
        self.folder = folder
        self.queue = queue
        self.outputs: list[dict[str, np.ndarray]] = []

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep the batch's outputs and report its chips."""
        self.outputs.append(prediction)
        if self.queue is not None:
            self.queue.put(len(prediction["index"]))

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write this rank's outputs (atomically: a temporary name, then a rename)."""
        if not self.outputs:
            return
        merged = {key: np.concatenate([o[key] for o in self.outputs]) for key in self.outputs[0]}
        final = Path(self.folder) / f"rank{trainer.global_rank}.npz"
        partial = final.with_name(f".{final.stem}.partial.npz")
        np.savez(partial, **merged)
        os.replace(partial, final)
        self.outputs = []


def _gather(folder: Path, count: int) -> dict[str, np.ndarray]:
    """Read every rank's file and put the outputs back in input order (index 0 .. count - 1)."""
    parts = []
    for path in sorted(folder.glob("rank*.npz")):
        with np.load(path, allow_pickle=False) as data:
            parts.append({key: data[key] for key in data.files})
    if not parts:
        raise WakeModelError("The prediction processes wrote no results; rerun with --verbose.")
    merged = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    order = np.argsort(merged["index"], kind="stable")
    if not np.array_equal(merged["index"][order], np.arange(count)):
        raise WakeModelError(
            f"The prediction processes returned {len(order)} results for {count} chips; "
            "rerun with --verbose."
        )
    return {key: value[order] for key, value in merged.items()}


def _progress_thread(queue: Any, progress: ProgressCallback, total: int) -> threading.Thread:
    """Start a thread that sums the chip counts put on ``queue`` until None and reports them."""

    def follow() -> None:
        done = 0
        while (count := queue.get()) is not None:
            done += count
            progress(min(done, total), total)

    thread = threading.Thread(target=follow, name="wakemodel-progress", daemon=True)
    thread.start()
    return thread


def _default_workers(accelerator: str, devices: int) -> int:
    """Loader workers per rank: none on the CPU (the ranks share the cores), else up to 4."""
    if accelerator == "cpu":
        return 0
    return max(0, min(4, available_cores() // devices - 1))


def predict_on_devices(
    checkpoint: str | os.PathLike[str],
    items: Sequence[ImageInput],
    *,
    devices: int,
    accelerator: str = "auto",
    batch_size: int = 16,
    tta: bool = DEFAULT_TTA,
    progress: ProgressCallback | None = None,
    workers: int | None = None,
) -> dict[str, np.ndarray]:
    """Predict the chips with a checkpoint on ``devices`` devices (Lightning, ``ddp_spawn``).

    With one device Lightning's predict loop runs in this process (used by the
    tests; ``infer`` streams instead). Devices are capped at the number of chips.
    Only the calling process returns (and calls ``progress``): the worker
    processes compute and write their share to a temporary folder.
    :func:`wakemodel.infer.iter_predictions` turns the arrays into predictions.

    Args:
        checkpoint: ``.ckpt`` written by ``train``.
        items: Image paths and/or raw grey arrays ``[H, W]``.
        devices: Processes: GPUs with a GPU accelerator, else CPU processes.
        accelerator: ``auto``, ``cpu``, ``gpu``, ``cuda`` or ``mps``.
        batch_size: Chips per network call on each device.
        tta: Combine the 8 flips/rotations of the input (:mod:`wakemodel.tta`).
        progress: Called as ``progress(done, total)`` after each batch of any rank.
        workers: Data loader workers per rank; None: 0 on the CPU, else up to 4.

    Returns:
        Per input item, in input order: ``keypoints`` ``[N, 3, 2]``,
        ``visibility`` ``[N, 3]``, ``keypoint_std`` ``[N, 3, 2]`` (normalised),
        ``size`` ``[N, 2]`` (width, height pixels) and ``error`` ``[N]`` (the
        one-line reason an image could not be read, ``""`` when it could).

    Raises:
        WakeModelError: The checkpoint cannot be loaded, the devices do not
            exist, or a worker failed.
        InputError: ``devices`` is below 1 or ``checkpoint`` is an ONNX file.
    """
    if devices < 1:
        raise InputError(f"devices must be a positive integer, got {devices}.")
    if Path(checkpoint).suffix.lower() == ".onnx":
        raise InputError(f"--devices {devices} is for .ckpt checkpoints, not {checkpoint}.")
    items = list(items)
    if not items:
        return {}
    devices = min(devices, len(items))
    device = select_device(accelerator)
    if device.accelerator == "cuda" and devices > torch.cuda.device_count():
        raise WakeModelError(
            f"--devices {devices} asks for more GPUs than the {torch.cuda.device_count()} visible; "
            "lower --devices."
        )
    # Loaded on the CPU here (one-line errors before any process starts); Lightning
    # moves the module to each rank's device.
    predictor = load_predictor(checkpoint, accelerator="cpu")
    if not isinstance(predictor, TorchPredictor):
        raise InputError(f"--devices {devices} is for .ckpt checkpoints, not {checkpoint}.")
    quiet = not logging.getLogger("wakemodel").isEnabledFor(logging.DEBUG)
    module = DetectorModule(
        predictor.module, predictor.image_size, tta, quiet=quiet, metadata=predictor.metadata
    )
    loader = DataLoader(
        ChipDataset(items, predictor.image_size),
        batch_size=batch_size,
        shuffle=False,
        num_workers=_default_workers(device.accelerator, devices) if workers is None else workers,
    )
    folder = Path(tempfile.mkdtemp(prefix="wakemodel_predict_"))
    queue = multiprocessing.get_context("spawn").SimpleQueue() if progress is not None else None
    thread = None if progress is None else _progress_thread(queue, progress, len(items))
    try:
        _run_trainer(module, loader, device.lightning_accelerator, devices, folder, queue, quiet)
        outputs = _gather(folder, len(items))
    finally:
        if queue is not None and thread is not None:
            queue.put(None)
            thread.join()
        shutil.rmtree(folder, ignore_errors=True)
    return outputs


def _run_trainer(
    module: DetectorModule,
    loader: DataLoader[dict[str, Any]],
    accelerator: str,
    devices: int,
    folder: Path,
    queue: Any,
    quiet: bool,
) -> None:
    """Run ``Trainer.predict`` (``ddp_spawn`` above one device); Lightning's errors in one line."""
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    saved = {name: logging.getLogger(name).level for name in _LIGHTNING_LOGGERS}
    with warnings.catch_warnings():
        _quiet_worker(quiet)
        try:
            trainer = pl.Trainer(
                accelerator=accelerator,
                devices=devices,
                strategy="ddp_spawn" if devices > 1 else "auto",
                precision="32-true",
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                callbacks=[RankWriter(str(folder), queue)],
                default_root_dir=folder,
            )
            trainer.predict(module, dataloaders=loader, return_predictions=False)
        except MisconfigurationException as exc:
            raise WakeModelError(f"--devices {devices}: {first_line(exc)}") from exc
        finally:
            for name, level in saved.items():
                logging.getLogger(name).setLevel(level)
