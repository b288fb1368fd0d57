"""``WakeDataModule``: the Lightning data module over an in-memory wake dataset.

It lives apart from :mod:`wakemodel.data` so that inference, which needs only
the image functions, never imports Lightning.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.accelerators import CUDAAccelerator, MPSAccelerator
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, DistributedSampler

from wakemodel.augment import BatchWakeAugmentation, WakeAugmentation
from wakemodel.config import TRAIN_BATCH_SIZE, AugmentPlace
from wakemodel.data import Augmentation, WakeDataset, _default_num_workers
from wakemodel.errors import InputError
from wakemodel.records import (
    SPLIT_NAMES,
    WakeRecord,
    scan_dataset,
    split_records,
    split_records_by_files,
)

logger = logging.getLogger(__name__)

STAGE_SPLITS: dict[str, tuple[str, ...]] = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
}
"""The splits each Lightning stage decodes (``setup(None)``: all of them)."""


def process_seed(seed: int, global_rank: int) -> int:
    """A seed for one training process's augmentation draws.

    Args:
        seed: The run's seed.
        global_rank: The process's global rank (0 without DDP).

    Returns:
        A 63-bit seed, different for every rank, the same on every rerun.
    """
    state = np.random.SeedSequence([seed, global_rank]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def augment_place(augment_on: str, device_type: str | None) -> str:
    """Where the built-in augmentation runs for ``augment_on`` on a device type.

    Args:
        augment_on: ``"auto"``, ``"workers"`` or ``"device"``.
        device_type: The training device's type (``"cuda"``, ``"mps"``, ``"cpu"``),
            or None when unknown.

    Returns:
        ``"workers"`` or ``"device"``: ``auto`` is the device on CUDA and MPS,
        the loader workers elsewhere.
    """
    if augment_on != "auto":
        return augment_on
    return "device" if device_type in ("cuda", "mps") else "workers"


def _split_summary(parts: Mapping[str, Sequence[WakeRecord]]) -> str:
    """``train 80, val 10, test 10``, with ``(N without a wake)`` after a split that has any."""
    texts = []
    for name in SPLIT_NAMES:
        no_wake = sum(not record.has_wake for record in parts[name])
        texts.append(
            f"{name} {len(parts[name])}" + (f" ({no_wake} without a wake)" if no_wake else "")
        )
    return ", ".join(texts)


class WakeDataModule(pl.LightningDataModule):
    """Train/val/test loaders over a wake dataset held in memory.

    :meth:`setup` scans and splits the dataset once and decodes only the
    splits its stage needs (:data:`STAGE_SPLITS`: ``fit`` train + val,
    ``validate`` val, ``test`` test); later calls reuse what is decoded.

    The built-in training augmentation runs either per sample in the loader
    workers (:class:`wakemodel.augment.WakeAugmentation`; best without a GPU)
    or on whole batches after they reach the training device
    (:class:`wakemodel.augment.BatchWakeAugmentation` in
    :meth:`on_after_batch_transfer`, only while the trainer is training; best
    on a GPU, where the per-sample CPU path would starve it). Both draw from
    the same distributions. ``augment_on="auto"`` picks the device when the
    attached trainer runs on CUDA or MPS, else the workers (also without a
    trainer); it is resolved in :meth:`setup`. The device path needs this data
    module to be passed to the Trainer, and a LightningModule overriding
    ``on_after_batch_transfer`` too makes Lightning warn and still use this one.

    Under multi-process training (DDP, ``trainer.world_size > 1``) Lightning
    shards the training set (padding it so every process gets as many
    batches). The validation and test loaders instead get an unrepeated
    sampler (:meth:`evaluation_sampler`): every chip is seen by exactly one
    process, no padding duplicates, and the epoch metrics (torchmetrics) are
    reduced over all processes.

    Augmentation draws differ between processes: the device augmentation uses
    a generator seeded by ``(seed, global rank)`` (:func:`process_seed`), loader
    workers are seeded by Lightning with the rank (after
    ``seed_everything(..., workers=True)``, which ``train`` calls), and per-sample augmentation
    in the training process itself (``num_workers=0``) reseeds torch's global
    generator the same way when the training loader is built. So no two
    processes draw the same flips, rotations and noise, and a rerun with the
    same seed and process count draws the same ones again. (Device
    augmentation on a single GPU therefore no longer draws from torch's global
    generator; a ``--resume`` restarts these streams from their seed.)

    Args:
        data_dir: Dataset root holding ``imgs/`` and ``annotations/``.
        image_size: Network input side S (pixels).
        batch_size: Chips per batch (per process under DDP).
        num_workers: Loader worker processes; None picks ``min(4, cores - 1)``.
        seed: Seed of the split, of the training shuffle and (with the process's
            rank, :func:`process_seed`) of the augmentation draws.
        split: (train, val, test) fractions, used when ``split_files`` is None.
        split_files: Optional ``{"train"|"val"|"test": text file of names}``.
        augment: True for the built-in augmentation of the training set,
            False for none, or a custom per-sample augmentation callable.
        augment_on: Where the built-in augmentation runs: ``"workers"``,
            ``"device"`` or ``"auto"`` (see above). Custom callables always
            run in the workers.

    Attributes:
        datasets: The decoded splits by name (``"train"``, ``"val"``, ``"test"``).
        device_augmentation: The batch augmentation when it runs on the device
            (set by :meth:`setup`), else None.

    Raises:
        InputError: A bad batch size, worker count or ``augment_on``, or
            ``augment_on="device"`` with a custom augmentation callable.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        image_size: int = 224,
        batch_size: int = TRAIN_BATCH_SIZE,
        num_workers: int | None = None,
        seed: int = 0,
        split: Sequence[float] = (0.8, 0.1, 0.1),
        split_files: Mapping[str, str | os.PathLike[str]] | None = None,
        augment: bool | Augmentation = True,
        augment_on: AugmentPlace = "auto",
    ) -> None:
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size {batch_size!r}: must be a positive integer.")
        if num_workers is not None and num_workers < 0:
            raise InputError(f"num_workers {num_workers!r}: must be 0 or more.")
        if augment_on not in get_args(AugmentPlace):
            raise InputError(f"augment_on {augment_on!r}: choose auto, workers or device.")
        if augment_on == "device" and not isinstance(augment, bool):
            raise InputError(
                f"augment_on='device' with the custom augmentation {augment!r}: custom "
                "augmentations run per sample in the workers; pass augment=True or "
                "augment_on='workers'."
            )
        self.data_dir = Path(data_dir)
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = _default_num_workers() if num_workers is None else num_workers
        self.seed = seed
        self.split = tuple(split)
        self.split_files = (
            None if split_files is None else {k: Path(v) for k, v in split_files.items()}
        )
        self.augment = augment
        self.augment_on = augment_on
        self.device_augmentation: BatchWakeAugmentation | None = None
        self.datasets: dict[str, WakeDataset] = {}
        self._parts: dict[str, list[WakeRecord]] | None = None
        self._device_generator: torch.Generator | None = None

    def resolve_augment_on(self) -> str:
        """Where the training augmentation runs: ``"workers"`` or ``"device"``.

        ``auto`` is the device when the attached trainer's accelerator is CUDA
        or MPS, else (also without a trainer) the workers. Custom callables and
        ``augment=False`` always give ``"workers"``.
        """
        if self.augment is not True or self.augment_on == "workers":
            return "workers"
        trainer = self.trainer
        accelerator = None if trainer is None else getattr(trainer, "accelerator", None)
        device_type = (
            "cuda"
            if isinstance(accelerator, CUDAAccelerator)
            else "mps"
            if isinstance(accelerator, MPSAccelerator)
            else None
        )
        return augment_place(self.augment_on, device_type)

    def setup(self, stage: str | None = None) -> None:
        """Decode the splits ``stage`` needs (:data:`STAGE_SPLITS`; ``None``: all).

        The dataset is scanned and split on the first call; splits already
        decoded are reused. The training split's augmentation place is resolved
        when it is decoded (:meth:`resolve_augment_on`).
        """
        names = STAGE_SPLITS.get(stage, SPLIT_NAMES) if stage else SPLIT_NAMES
        missing = [name for name in names if name not in self.datasets]
        if not missing:
            return
        if self._parts is None:
            records = scan_dataset(self.data_dir)
            if self.split_files is not None:
                self._parts = split_records_by_files(records, self.split_files)
            else:
                self._parts = split_records(records, self.seed, self.split)
            logger.info("Split %s: %s", self.data_dir, _split_summary(self._parts))
        for name in missing:
            augment: Augmentation | None = None
            if name == "train":
                augment = self._training_augmentation()
            self.datasets[name] = WakeDataset(self._parts[name], self.image_size, augment)

    def _training_augmentation(self) -> Augmentation | None:
        """The per-sample augmentation of the training set; sets :attr:`device_augmentation`."""
        if self.resolve_augment_on() == "device":
            self.device_augmentation = BatchWakeAugmentation()
            logger.info("Augmentation: per batch on the training device")
            return None
        self.device_augmentation = None
        if self.augment is True:
            return WakeAugmentation(self.image_size)
        return self.augment or None

    @property
    def train_dataset(self) -> WakeDataset:
        """The training set (after :meth:`setup`)."""
        return self._dataset("train")

    @property
    def val_dataset(self) -> WakeDataset:
        """The validation set (after :meth:`setup`)."""
        return self._dataset("val")

    @property
    def test_dataset(self) -> WakeDataset:
        """The test set (after :meth:`setup`)."""
        return self._dataset("test")

    def _dataset(self, name: str) -> WakeDataset:
        if name not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[name])
        return self.datasets[name]

    def evaluation_sampler(self, dataset: WakeDataset, split: str) -> DistributedSampler | None:
        """The unrepeated shard of ``dataset`` for this process under DDP, else None.

        Each process gets every ``world_size``-th chip starting at its global
        rank (in name order), so the shards may differ by one chip and no chip
        is repeated; Lightning keeps a distributed sampler it is given.

        Args:
            dataset: The validation or test set.
            split: Its name, for the error message.

        Returns:
            An ``UnrepeatedDistributedSampler`` when the attached trainer runs
            several processes, else None (the loader's plain order).

        Raises:
            InputError: The split has fewer chips than there are processes (a
                process without a batch would stall the metric reduction).
        """
        trainer = self.trainer
        world_size = 1 if trainer is None else trainer.world_size
        if world_size <= 1:
            return None
        if len(dataset) < world_size:
            raise InputError(
                f"the {split} split has {len(dataset)} chips, fewer than the {world_size} "
                "training processes; use fewer devices or a larger dataset."
            )
        return UnrepeatedDistributedSampler(
            dataset, num_replicas=world_size, rank=trainer.global_rank, shuffle=False
        )

    def _loader(
        self, dataset: WakeDataset, train: bool, sampler: DistributedSampler | None = None
    ) -> DataLoader[dict[str, torch.Tensor]]:
        # Under DDP each process trains on its shard of ceil(len / world_size) chips.
        world_size = 1 if self.trainer is None else max(1, self.trainer.world_size)
        per_process = math.ceil(len(dataset) / world_size)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            sampler=sampler,
            generator=torch.Generator().manual_seed(self.seed) if train else None,
            # A last batch of one chip breaks BatchNorm in training; drop the remainder.
            drop_last=train and per_process > self.batch_size,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augment a training batch on its device when augmentation runs there.

        Args:
            batch: Collated dict with ``image`` float32 ``[B, 1, S, S]`` in [0, 1],
                ``keypoints`` float32 ``[B, 3, 2]`` normalised, ``visible`` bool
                ``[B, 3]`` (other keys pass through).
            dataloader_idx: Index of the loader (unused).

        Returns:
            The batch, augmented only while the attached trainer is training.
        """
        if self.device_augmentation is None or self.trainer is None or not self.trainer.training:
            return batch
        device = batch["image"].device
        if self._device_generator is None or self._device_generator.device != device:
            seed = process_seed(self.seed, self.trainer.global_rank)
            self._device_generator = torch.Generator(device=device).manual_seed(seed)
        images, keypoints, visible = self.device_augmentation(
            batch["image"], batch["keypoints"], batch["visible"], generator=self._device_generator
        )
        return {**batch, "image": images, "keypoints": keypoints, "visible": visible}

    def train_dataloader(self) -> DataLoader[dict[str, torch.Tensor]]:
        """Shuffled (seeded), augmented training batches.

        Under DDP with per-sample augmentation in this process (no loader
        workers), torch's global generator is reseeded by ``(seed, global rank)``
        first, so the processes draw different augmentations.
        """
        dataset = self.train_dataset
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1 and self.num_workers == 0:
            torch.manual_seed(process_seed(self.seed, trainer.global_rank))
        return self._loader(dataset, train=True)

    def val_dataloader(self) -> DataLoader[dict[str, torch.Tensor]]:
        """Validation batches in name order (this process's shard under DDP)."""
        dataset = self.val_dataset
        return self._loader(dataset, train=False, sampler=self.evaluation_sampler(dataset, "val"))

    def test_dataloader(self) -> DataLoader[dict[str, torch.Tensor]]:
        """Test batches in name order (this process's shard under DDP)."""
        dataset = self.test_dataset
        return self._loader(dataset, train=False, sampler=self.evaluation_sampler(dataset, "test"))
