"""The in-memory torch dataset of annotated wake chips.

Records (:class:`wakemodel.records.WakeRecord`, from
:func:`wakemodel.records.scan_dataset`) hold keypoints in original pixels.
Targets are normalised by the original width and height (``x / width``,
``y / height``), so squashing a chip to the square network size keeps them exact.

Images go through the preprocessing shared with inference
(:mod:`wakemodel.preprocess`), once: training images are kept in memory as
``uint8 [N, 1, S, S]``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import Dataset

from wakemodel.devices import available_cores
from wakemodel.errors import WakeModelError
from wakemodel.keypoints import NUM_KEYPOINTS
from wakemodel.preprocess import check_image_size, load_image
from wakemodel.records import (  # re-exported: these lived here before wakemodel.records
    SPLIT_NAMES,
    WakeRecord,
    scan_dataset,
    split_records,
    split_records_by_files,
)

__all__ = [
    "SPLIT_NAMES",
    "Augmentation",
    "WakeDataset",
    "WakeRecord",
    "scan_dataset",
    "split_records",
    "split_records_by_files",
]

logger = logging.getLogger(__name__)

Augmentation = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]
]
"""``(image float [1,S,S], keypoints_px float [3,2], visible bool [3]) -> same``."""


def _default_num_workers() -> int:
    """Data loader workers: one fewer than the cores, at most 4 (0 on a single core).

    Measured on 2 busy cores with 224 px chips: augmenting in the main process
    took 115-185 ms per chip (torch's two intra-op threads contend with the
    other load), one worker process (single-threaded) 6.5 ms per chip; the
    cached images make a worker otherwise cheap.
    """
    return min(4, available_cores() - 1)


class WakeDataset(Dataset[dict[str, torch.Tensor]]):
    """Annotated chips decoded once and held in memory at network size.

    Samples are dicts::

        image       float32 [1, S, S] in [0, 1] (augmented when ``augment`` is set)
        keypoints   float32 [3, 2] normalised to [0, 1] by the (augmented) S x S image
        visible     bool [3] (all False for a chip without a wake)
        orig_size   float32 [2] (width, height) of the original chip in pixels
        index       int64 scalar, position in :attr:`records`

    Args:
        records: Samples to load (from :func:`wakemodel.records.scan_dataset`).
        image_size: Network input side S (pixels).
        augment: Optional ``(image [1,S,S], keypoints_px [3,2] in S x S pixels,
            visible [3]) -> same`` applied per sample, e.g.
            :class:`wakemodel.augment.WakeAugmentation`.

    Attributes:
        records: The kept records; a record whose image fails to decode is
            skipped with a warning.
        images: uint8 ``[N, 1, S, S]`` cached network inputs.
    """

    def __init__(
        self,
        records: Sequence[WakeRecord],
        image_size: int = 224,
        augment: Augmentation | None = None,
    ) -> None:
        self.image_size = image_size
        self.augment = augment
        decoded = self._decode_all(records, image_size)
        kept = [i for i, image in enumerate(decoded) if image is not None]
        self.records: list[WakeRecord] = [records[i] for i in kept]
        self.images = torch.zeros((len(kept), 1, image_size, image_size), dtype=torch.uint8)
        for row, i in enumerate(kept):
            self.images[row] = torch.from_numpy(decoded[i])
        self.keypoints = torch.zeros((len(kept), NUM_KEYPOINTS, 2), dtype=torch.float32)
        self.visible = torch.zeros((len(kept), NUM_KEYPOINTS), dtype=torch.bool)
        self.orig_size = torch.zeros((len(kept), 2), dtype=torch.float32)
        for row, record in enumerate(self.records):
            self.keypoints[row] = torch.from_numpy(record.keypoints_norm)
            self.visible[row] = torch.from_numpy(record.visible.copy())
            self.orig_size[row] = torch.tensor([record.width, record.height])

    @staticmethod
    def _decode_all(records: Sequence[WakeRecord], image_size: int) -> list[np.ndarray | None]:
        """Decode and preprocess every image once (threads: PNG inflate releases the GIL)."""
        check_image_size(image_size)

        def decode(record: WakeRecord) -> np.ndarray | None:
            try:
                return load_image(record.image_path, image_size)
            except WakeModelError as error:
                logger.warning("Skipping %s: unreadable image (%s)", record.image_path, error)
                return None

        workers = min(4, available_cores(), max(1, len(records)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(decode, records))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = self.images[index].float().div_(255.0)
        keypoints = self.keypoints[index].clone()
        visible = self.visible[index].clone()
        if self.augment is not None:
            size = float(self.image_size)
            image, keypoints_px, visible = self.augment(image, keypoints * size, visible)
            keypoints = keypoints_px / size
        return {
            "image": image,
            "keypoints": keypoints,
            "visible": visible,
            "orig_size": self.orig_size[index].clone(),
            "index": torch.tensor(index, dtype=torch.int64),
        }
