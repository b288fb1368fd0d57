"""Annotated wake chips on disk: annotation parsing, dataset scanning and splitting.

Dataset layout (Del Prete et al., Zenodo 7947694)::

    ROOT/imgs/NAME.png           grayscale chip (also .tif/.tiff; RGB/RGBA become luminance)
    ROOT/annotations/NAME.json   {"tooltips": [{"x": .., "y": ..}, ...]} in original pixels

Keypoint 0 is the wake vertex (the vessel); keypoints 1 and 2 are the far ends of
the wake components, in no meaningful order. Chips with 2 keypoints are padded to
3 slots with coordinate 0.0 and ``visible=False``. A chip without a readable wake
(a negative, e.g. from ``python cli.py synth --no-wake-fraction``) has an empty
list, ``{"tooltips": []}``: all 3 slots are padding (:attr:`WakeRecord.has_wake`
False).

Pixel coordinates are continuous (pixel ``(i, j)`` covers ``[i, i+1) x [j, j+1)``).

This module needs numpy and Pillow only, no torch: ``evaluate`` with an ONNX model
reads its labels through it. The torch dataset lives in :mod:`wakemodel.data`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from wakemodel.errors import InputError, WakeModelError
from wakemodel.keypoints import NUM_KEYPOINTS
from wakemodel.preprocess import IMAGE_ERRORS, IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")

_MISSING_DATA_HINT = (
    "run `python cli.py download` (real data) or `python cli.py synth` (synthetic data) "
    "or pass the folder that holds imgs/ and annotations/"
)


@dataclass(frozen=True, eq=False)
class WakeRecord:
    """One annotated chip.

    Attributes:
        image_path: The chip's image file.
        annotation_path: The chip's JSON annotation.
        width: Original chip width (pixels).
        height: Original chip height (pixels).
        keypoints_px: float32 ``[3, 2]`` (x, y) in original pixels; padding rows are 0.0.
        visible: bool ``[3]``; False marks a padding slot (all False: no wake).
    """

    image_path: Path
    annotation_path: Path
    width: int
    height: int
    keypoints_px: np.ndarray
    visible: np.ndarray

    def __post_init__(self) -> None:
        self.keypoints_px.setflags(write=False)
        self.visible.setflags(write=False)

    @property
    def name(self) -> str:
        """Sample name: the image file name without extension."""
        return self.image_path.stem

    @property
    def has_wake(self) -> bool:
        """Whether the chip has an annotated wake (False for a negative, all slots padding)."""
        return bool(self.visible.any())

    @property
    def keypoints_norm(self) -> np.ndarray:
        """float32 ``[3, 2]`` keypoints divided by (width, height); padding rows 0.0."""
        scale = np.array([self.width, self.height], dtype=np.float32)
        return (self.keypoints_px / scale).astype(np.float32)


class _UnusableSampleError(Exception):
    """A sample is unusable.

    Args:
        path: The file at fault.
        reason: Why the sample is skipped.
    """

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def median_chip_extent_m(records: Sequence[WakeRecord], gsd_m: float) -> float:
    """Median ground extent of chips: the side of a square of the same area (metres).

    Args:
        records: Chips (their original width and height in pixels).
        gsd_m: Ground sampling distance (metres per pixel).

    Returns:
        ``median(sqrt(width * height)) * gsd_m``; NaN without records.
    """
    if not records:
        return math.nan
    sides_px = [math.sqrt(record.width * record.height) for record in records]
    return float(np.median(sides_px)) * gsd_m


def _parse_keypoints(annotation_path: Path, width: int, height: int) -> np.ndarray:
    """Parse and validate an annotation's tooltips.

    Returns:
        float32 ``[K, 2]`` with K = 0 (no wake) or 2 <= K <= 3, inside
        ``[0, width] x [0, height]``.

    Raises:
        _UnusableSampleError: Malformed JSON, missing tooltips, a bad point, 1
            point or more than 3.
    """
    try:
        content = json.loads(annotation_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _UnusableSampleError(annotation_path, "malformed JSON") from error
    if not isinstance(content, dict) or not isinstance(content.get("tooltips"), list):
        raise _UnusableSampleError(annotation_path, "missing 'tooltips'")
    points = []
    for tooltip in content["tooltips"]:
        coordinates = [tooltip.get(axis) if isinstance(tooltip, dict) else None for axis in "xy"]
        if not all(
            isinstance(value, (int, float)) and not isinstance(value, bool) for value in coordinates
        ):
            raise _UnusableSampleError(annotation_path, "malformed keypoint")
        points.append(coordinates)
    if not points:
        return np.zeros((0, 2), dtype=np.float32)
    if len(points) == 1:
        raise _UnusableSampleError(
            annotation_path, "1 keypoint (use 0 for a chip without a wake, or 2-3)"
        )
    if len(points) > NUM_KEYPOINTS:
        raise _UnusableSampleError(annotation_path, f"more than {NUM_KEYPOINTS} keypoints")
    keypoints = np.asarray(points, dtype=np.float64)
    if not np.isfinite(keypoints).all():
        raise _UnusableSampleError(annotation_path, "keypoint is NaN or infinite")
    inside = (keypoints >= 0).all() and (keypoints <= [width, height]).all()
    if not inside:
        raise _UnusableSampleError(annotation_path, "keypoint outside the image")
    return keypoints.astype(np.float32)


def _image_size(image_path: Path) -> tuple[int, int]:
    """Return (width, height) of an image after checking its file structure.

    PIL's ``verify`` checks PNG chunk checksums without decoding the pixels, so
    truncated and corrupt PNGs are caught here cheaply.

    Raises:
        _UnusableSampleError: The image is unreadable or corrupt.
    """
    try:
        with Image.open(image_path) as image:
            size = image.size
            image.verify()
    except IMAGE_ERRORS as error:
        raise _UnusableSampleError(image_path, "unreadable image") from error
    return size


def _make_record(image_path: Path, annotation_path: Path) -> WakeRecord:
    """Build a record, raising :class:`_UnusableSampleError` if the sample is unusable."""
    width, height = _image_size(image_path)
    points = _parse_keypoints(annotation_path, width, height)
    keypoints_px = np.zeros((NUM_KEYPOINTS, 2), dtype=np.float32)
    keypoints_px[: len(points)] = points
    visible = np.arange(NUM_KEYPOINTS) < len(points)
    return WakeRecord(image_path, annotation_path, width, height, keypoints_px, visible)


def _required_dir(path: Path) -> Path:
    if not path.is_dir():
        raise WakeModelError(f"Dataset folder {path} does not exist; {_MISSING_DATA_HINT}.")
    return path


def scan_dataset(root: str | os.PathLike[str]) -> list[WakeRecord]:
    """Find and validate the annotated chips of a dataset.

    An empty ``tooltips`` list is a chip without a wake (a negative: every slot
    invisible). Each unusable sample (unreadable image, malformed JSON, missing
    ``tooltips``, malformed point, 1 point or more than 3, a NaN point, a point
    outside ``[0, width] x [0, height]``, an annotation without image, an image
    without annotation) is skipped with one warning naming the file and the
    reason; a one-line summary is logged at INFO level (with the number of
    chips without a wake, when there are any).

    Args:
        root: Dataset root holding ``imgs/`` and ``annotations/``.

    Returns:
        Records sorted by name.

    Raises:
        WakeModelError: A folder is missing or no sample is usable.
    """
    root = Path(root)
    _required_dir(root)
    image_dir = _required_dir(root / "imgs")
    annotation_dir = _required_dir(root / "annotations")

    skipped: Counter[str] = Counter()

    def skip(path: Path, reason: str) -> None:
        logger.warning("Skipping %s: %s", path, reason)
        skipped[reason] += 1

    images: dict[str, Path] = {}
    for path in sorted(image_dir.iterdir()):
        if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if path.stem in images:
            skip(path, "duplicate image name")
        else:
            images[path.stem] = path
    annotations = {
        path.stem: path for path in sorted(annotation_dir.glob("*.json")) if path.is_file()
    }

    records = []
    for name in sorted(images.keys() | annotations.keys()):
        if name not in annotations:
            skip(images[name], "no annotation")
            continue
        if name not in images:
            skip(annotations[name], "no image")
            continue
        try:
            records.append(_make_record(images[name], annotations[name]))
        except _UnusableSampleError as error:
            skip(error.path, error.reason)

    reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(skipped.items()))
    no_wake = sum(not record.has_wake for record in records)
    summary = (
        f"kept {len(records)}"
        + (f" ({no_wake} without a wake)" if no_wake else "")
        + f", skipped {sum(skipped.values())}"
        + (f" ({reasons})" if reasons else "")
    )
    if not records:
        raise WakeModelError(f"No usable samples in {root} ({summary}); {_MISSING_DATA_HINT}.")
    logger.info("Scanned %s: %s", root, summary)
    return records


def _read_split_file(path: Path) -> list[str]:
    """Names in a split file: one per line; blank lines and ``#`` comments ignored."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise WakeModelError(
            f"Cannot read split file {path}: {error}; give a text file with one name per line."
        ) from error
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def split_records(
    records: Sequence[WakeRecord],
    seed: int = 0,
    split: Sequence[float] = (0.8, 0.1, 0.1),
) -> dict[str, list[WakeRecord]]:
    """Split records into train/val/test, deterministically by seed.

    The records are sorted by name and permuted with ``numpy.random.default_rng(seed)``;
    val and test get ``round(fraction * N)`` records and train the rest.

    Args:
        records: All records.
        seed: Split seed.
        split: (train, val, test) fractions, non-negative, summing to 1.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each sorted by name.

    Raises:
        InputError: The fractions are invalid.
    """
    fractions = tuple(float(fraction) for fraction in split)
    if (
        len(fractions) != 3
        or any(not math.isfinite(f) or f < 0 for f in fractions)
        or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6)
    ):
        raise InputError(f"split {tuple(split)}: give 3 non-negative fractions summing to 1.")
    ordered = sorted(records, key=lambda record: record.name)
    permutation = np.random.default_rng(seed).permutation(len(ordered))
    num_val = round(fractions[1] * len(ordered))
    num_test = min(round(fractions[2] * len(ordered)), len(ordered) - num_val)
    parts = {
        "val": permutation[:num_val],
        "test": permutation[num_val : num_val + num_test],
        "train": permutation[num_val + num_test :],
    }
    return {name: [ordered[i] for i in sorted(parts[name])] for name in SPLIT_NAMES}


def split_records_by_files(
    records: Sequence[WakeRecord], split_files: Mapping[str, str | os.PathLike[str]]
) -> dict[str, list[WakeRecord]]:
    """Split records by explicit split files.

    Args:
        records: All records.
        split_files: ``{"train"|"val"|"test": path}``; each file lists sample names
            (image file name with or without extension), one per line. Splits
            without a file are empty; names of skipped or unknown samples are
            ignored with a warning.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` in file order.

    Raises:
        InputError: Unknown split key, or a name listed in two splits.
        WakeModelError: A split file is unreadable.
    """
    unknown = set(split_files) - set(SPLIT_NAMES)
    if unknown:
        raise InputError(f"split_files keys {sorted(unknown)}: use 'train', 'val' and 'test'.")
    by_name = {record.name: record for record in records}
    by_name.update({record.image_path.name: record for record in records})
    assigned: dict[str, str] = {}
    result: dict[str, list[WakeRecord]] = {name: [] for name in SPLIT_NAMES}
    for split_name, file in split_files.items():
        for name in _read_split_file(Path(file)):
            record = by_name.get(name)
            if record is None:
                logger.warning("Split file %s: no usable sample named %r, ignored", file, name)
                continue
            if record.name in assigned:
                raise InputError(
                    f"Split file {file}: {name!r} is also in the {assigned[record.name]} split; "
                    "list each sample in one split only."
                )
            assigned[record.name] = split_name
            result[split_name].append(record)
    return result
