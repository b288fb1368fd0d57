"""``WakeDataModule``: the Lightning data module over an in-memory wake dataset.

It lives apart from :mod:`wakemodel.data` so that inference, which needs only
the image functions, never imports Lightning; ``wakemodel.data.WakeDataModule``
still resolves to it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from wakemodel.augment import BatchWakeAugmentation, WakeAugmentation
from wakemodel.data import (
    SPLIT_NAMES,
    Augmentation,
    WakeDataset,
    _default_num_workers,
    scan_dataset,
    split_records,
    split_records_by_files,
)
from wakemodel.errors import InputError

logger = logging.getLogger(__name__)


class WakeDataModule(pl.LightningDataModule):
    """Train/val/test loaders over a wake dataset held in memory.

    The built-in training augmentation runs either per sample in the loader
    workers (:class:`wakemodel.augment.WakeAugmentation`, on CPU; the default,
    best without a GPU) or, with ``augment_on_device``, on whole batches after
    they reach the training device (:class:`wakemodel.augment.BatchWakeAugmentation`
    in :meth:`on_after_batch_transfer`, only while the trainer is training;
    best on a GPU, where the per-sample CPU path would starve it). Both draw
    from the same distributions. The device path needs this data module to be
    passed to the Trainer, and a LightningModule overriding
    ``on_after_batch_transfer`` too makes Lightning warn and still use this one.

    Args:
        data_dir: Dataset root holding ``imgs/`` and ``annotations/``.
        image_size: Network input side S (pixels).
        batch_size: Chips per batch.
        num_workers: Loader worker processes; None picks ``min(4, cores - 1)``.
        seed: Seed of the split and of the training shuffle.
        split: (train, val, test) fractions, used when ``split_files`` is None.
        split_files: Optional ``{"train"|"val"|"test": text file of names}``.
        augment: True for the built-in augmentation of the training set,
            False for none, or a custom per-sample augmentation callable.
        augment_on_device: With ``augment=True``, augment training batches on
            their device instead of per sample in the workers (ignored when
            ``augment`` is False).

    Raises:
        InputError: A bad batch size or worker count, or ``augment_on_device``
            with a custom augmentation callable.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        image_size: int = 224,
        batch_size: int = 16,
        num_workers: int | None = None,
        seed: int = 0,
        split: Sequence[float] = (0.8, 0.1, 0.1),
        split_files: Mapping[str, str | os.PathLike[str]] | None = None,
        augment: bool | Augmentation = True,
        augment_on_device: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size {batch_size!r}: must be a positive integer.")
        if num_workers is not None and num_workers < 0:
            raise InputError(f"num_workers {num_workers!r}: must be 0 or more.")
        if augment_on_device and not isinstance(augment, bool):
            raise InputError(
                f"augment_on_device=True with the custom augmentation {augment!r}: custom "
                "augmentations run per sample in the workers; pass augment=True or "
                "augment_on_device=False."
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
        self.device_augmentation = (
            BatchWakeAugmentation() if augment_on_device and augment is True else None
        )
        self.datasets: dict[str, WakeDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        """Scan the dataset, split it and decode the images (once; later calls reuse them)."""
        if self.datasets:
            return
        records = scan_dataset(self.data_dir)
        if self.split_files is not None:
            parts = split_records_by_files(records, self.split_files)
        else:
            parts = split_records(records, self.seed, self.split)
        train_augment: Augmentation | None
        if self.device_augmentation is not None:
            train_augment = None
        elif self.augment is True:
            train_augment = WakeAugmentation(self.image_size)
        else:
            train_augment = self.augment or None
        self.datasets = {
            name: WakeDataset(
                parts[name], self.image_size, train_augment if name == "train" else None
            )
            for name in SPLIT_NAMES
        }
        logger.info(
            "Split %s: %s",
            self.data_dir,
            ", ".join(f"{name} {len(self.datasets[name])}" for name in SPLIT_NAMES),
        )

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
        if not self.datasets:
            self.setup()
        return self.datasets[name]

    def _loader(self, dataset: WakeDataset, train: bool) -> DataLoader[dict[str, torch.Tensor]]:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            generator=torch.Generator().manual_seed(self.seed) if train else None,
            # A last batch of one chip breaks BatchNorm in training; drop the remainder.
            drop_last=train and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augment a training batch on its device when ``augment_on_device`` is set.

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
        images, keypoints, visible = self.device_augmentation(
            batch["image"], batch["keypoints"], batch["visible"]
        )
        return {**batch, "image": images, "keypoints": keypoints, "visible": visible}

    def train_dataloader(self) -> DataLoader[dict[str, torch.Tensor]]:
        """Shuffled (seeded), augmented training batches."""
        return self._loader(self.train_dataset, train=True)

    def val_dataloader(self) -> DataLoader[dict[str, torch.Tensor]]:
        """Validation batches in name order."""
        return self._loader(self.val_dataset, train=False)

    def test_dataloader(self) -> DataLoader[dict[str, torch.Tensor]]:
        """Test batches in name order."""
        return self._loader(self.test_dataset, train=False)

    def predict_dataloader(self) -> DataLoader[dict[str, torch.Tensor]]:
        """Test-set batches in name order, for ``Trainer.predict``."""
        return self._loader(self.test_dataset, train=False)
