"""Inference: from chips to wakes, headings, positions and platforms.

The chain is: read pixels (:mod:`wakemodel.preprocess`) -> preprocess -> a model
backend (:mod:`wakemodel.predictors`: a checkpoint or an ONNX file) ->
keypoints in original pixels -> heading and wake length
(:mod:`wakemodel.keypoints`) -> georeference and platforms
(:mod:`wakemodel.georef`, only for chips that may be georeferenced) -> JSON,
table and plots. :func:`predict` gives the predictions alone (:func:`iter_predictions`
batch by batch, for folders of thousands of chips); :func:`run` gives
an :class:`InferenceReport` holding everything ``python cli.py infer`` prints.

Test-time augmentation combines the 8 dihedral transforms of the network input
(:mod:`wakemodel.tta`: median keypoints), matching arm orders with
:func:`wakemodel.keypoints.match_arm_order` (numpy). Only a ``.ckpt`` model
imports torch; an ``.onnx`` model runs with numpy, PIL and ONNX Runtime alone,
and pyproj/rasterio are imported only for geo options or chips that may be
georeferenced, so the ``infer`` command starts fast.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wakemodel import keypoints as kp
from wakemodel import preprocess
from wakemodel._io import json_float
from wakemodel.calibration import DEFAULT_MIN_WAKE_SCORE
from wakemodel.errors import InputError, WakeModelError
from wakemodel.keypoints import KEYPOINT_NAMES
from wakemodel.metrics import DEFAULT_GSD_M
from wakemodel.predictors import KeypointPredictor, Predictor, TorchPredictor, load_predictor
from wakemodel.tta import (
    DEFAULT_TTA,
    dihedral_transforms,
    predict_batch,
    transform_images,
    untransform_keypoints,
    untransform_spread,
)

if TYPE_CHECKING:
    import torch

    from wakemodel.georef import GeoLocation, Platforms

__all__ = [
    "KEYPOINT_NAMES",
    "PLOT_SUFFIXES",
    "ImageInput",
    "InferenceReport",
    "KeypointPredictor",
    "Prediction",
    "Predictor",
    "ProgressCallback",
    "TorchKeypointPredictor",
    "as_predictor",
    "check_plot_path",
    "dihedral_transforms",
    "find_images",
    "format_table",
    "iter_predictions",
    "load_model",
    "predict",
    "predict_batch",
    "run",
    "transform_images",
    "untransform_keypoints",
    "untransform_spread",
]

logger = logging.getLogger(__name__)

ImageInput = preprocess.ImageInput

TorchKeypointPredictor = TorchPredictor
"""The torch backend (:class:`wakemodel.predictors.TorchPredictor`), by its old name."""

load_model = load_predictor
"""Open a ``.ckpt`` or ``.onnx`` model (:func:`wakemodel.predictors.load_predictor`)."""

PLOT_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")
"""``--plot`` targets with these suffixes are one file; anything else is a folder."""

ProgressCallback = Callable[[int, int], None]
"""``progress(done, total)``: called after each batch with the chips handled so far
(readable or skipped) and the chips in all; ``done`` ends at ``total``."""

PREFETCH = True
"""Read and preprocess the next batch of chips in a background thread while the model
runs on the current one (at most two batches of pixels in memory); False reads them
in the calling thread only."""


@dataclass
class Prediction:
    """The wake found in one chip, in original-image pixels.

    Attributes:
        source: Image path, or None for an in-memory array.
        width: Chip width (pixels).
        height: Chip height (pixels).
        keypoints_px: float ``[3, 2]`` (x, y) pixels; slot 0 is the vertex
            (vessel), slots 1-2 the wake ends (their order is meaningless).
        visible: bool ``[3]``; the vertex and at least one end are always
            visible: the keypoints are the model's best reading even when
            ``wake_found`` is False.
        visibility: float ``[3]`` visibility probabilities in [0, 1].
        heading_deg: Compass bearing of the vessel in degrees [0, 360), north
            up, from the far end point towards the vertex.
        keypoint_std_px: float ``[3]`` 1-sigma spread of each keypoint per axis
            (pixels; NaN when the model gives no uncertainty).
        heading_std_deg: 1-sigma heading uncertainty (degrees; the 90 %
            interval is ``heading_deg +- 1.645 * heading_std_deg``).
        wake_score: Probability in [0, 1] that the chip holds a readable wake
            (the vertex visibility).
        wake_found: ``wake_score`` reached the ``min_wake_score`` threshold; when
            False the heading is reported as "no readable wake".
        wake_length_px: Vertex to far end point distance (pixels).
        wake_length_m: The same in metres (``wake_length_px * gsd_m``; for a
            georeferenced chip, measured on the ellipsoid).
        gsd_m: Ground sampling distance (metres per pixel; for a
            georeferenced chip, the mean ground pixel size).
        geo: Position, true heading and platform approach on the Earth, set by
            :func:`wakemodel.georef.geolocate_predictions` for georeferenced chips.
        geo_note: Why ``geo`` is absent (one line), when geolocation was tried.
    """

    source: str | None
    width: int
    height: int
    keypoints_px: np.ndarray
    visible: np.ndarray
    visibility: np.ndarray
    heading_deg: float
    wake_length_px: float
    wake_length_m: float
    gsd_m: float
    keypoint_std_px: np.ndarray = field(default_factory=lambda: np.full(3, np.nan))
    heading_std_deg: float = math.nan
    wake_score: float = math.nan
    wake_found: bool = True
    geo: GeoLocation | None = None
    geo_note: str | None = None

    @property
    def vertex_std_px(self) -> float:
        """1-sigma spread of the vertex per axis (pixels)."""
        return float(self.keypoint_std_px[kp.VERTEX_SLOT])

    @property
    def keypoints_norm(self) -> np.ndarray:
        """Keypoints normalised by the chip size, float ``[3, 2]`` in [0, 1]."""
        return self.keypoints_px / np.array([self.width, self.height], dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict; invisible keypoints are included with ``visible: false``.

        A georeferenced chip's geo fields (:meth:`wakemodel.georef.GeoLocation.to_dict`)
        are under ``geo``; the key is absent otherwise.
        """
        document: dict[str, Any] = {
            "source": self.source,
            "width": self.width,
            "height": self.height,
            "keypoints": [
                {
                    "name": name,
                    "x": round(float(x), 3),
                    "y": round(float(y), 3),
                    "visible": bool(visible),
                    "visibility": round(float(probability), 4),
                    "std_px": json_float(std_px, 2),
                }
                for name, (x, y), visible, probability, std_px in zip(
                    KEYPOINT_NAMES,
                    self.keypoints_px,
                    self.visible,
                    self.visibility,
                    self.keypoint_std_px,
                    strict=True,
                )
            ],
            "wake_found": bool(self.wake_found),
            "wake_score": json_float(self.wake_score, 4),
            "heading_deg": json_float(self.heading_deg, 2),
            "heading_std_deg": json_float(self.heading_std_deg, 2),
            "vertex_std_px": json_float(self.vertex_std_px, 2),
            "wake_length_px": json_float(self.wake_length_px, 2),
            "wake_length_m": json_float(self.wake_length_m, 1),
            "gsd_m": self.gsd_m,
        }
        if self.geo is not None:
            document["geo"] = self.geo.to_dict()
        return document


def as_predictor(
    model: KeypointPredictor | torch.nn.Module | str | os.PathLike[str], accelerator: str = "auto"
) -> KeypointPredictor:
    """Return ``model`` as a :class:`KeypointPredictor`.

    Args:
        model: A predictor, a loaded ``WakeKeypointModule`` (used on its
            current device, with the 8-view std calibration it was loaded
            with), or a ``.ckpt``/``.onnx`` path (loaded with
            :func:`wakemodel.predictors.load_predictor`).
        accelerator: Device choice when a path is loaded.

    Returns:
        A predictor.
    """
    if isinstance(model, (str, os.PathLike)):
        return load_predictor(model, accelerator=accelerator)
    if isinstance(model, KeypointPredictor):
        return model
    torch_module = sys.modules.get("torch")  # a torch module exists only if torch was imported
    if torch_module is not None and isinstance(model, torch_module.nn.Module):
        image_size = int(model.hparams.image_size)
        device = next(model.parameters()).device
        metadata = {
            "format": "torch",
            "image_size": image_size,
            "tta_std_scale": getattr(model, "tta_std_scale", None),
            "wake_score_platt": getattr(model, "wake_score_platt", None),
        }
        return TorchPredictor(model, image_size, device, metadata)
    raise InputError(f"Cannot predict with a {type(model).__name__}; pass a checkpoint path.")


def find_images(inputs: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand folders into their image files (``preprocess.IMAGE_EXTENSIONS``, sorted by name).

    Args:
        inputs: Image files and/or folders. Files are kept as given, whatever
            their suffix, so that an unreadable one is reported by name.

    Returns:
        Image paths, in the order given.

    Raises:
        WakeModelError: A folder holds no image.
    """
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(
                p for p in item.iterdir() if p.suffix.lower() in preprocess.IMAGE_EXTENSIONS
            )
            if not found:
                raise WakeModelError(
                    f"No images ({', '.join(preprocess.IMAGE_EXTENSIONS)}) in folder {item}; "
                    "pass image files or a folder of them."
                )
            paths.extend(found)
        else:
            paths.append(item)
    return paths


def _chunks(items: Sequence[ImageInput], size: int) -> Iterator[Sequence[ImageInput]]:
    """Consecutive slices of ``items`` of at most ``size`` elements."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _check_run_options(batch_size: int, gsd_m: float, min_wake_score: float) -> None:
    """Reject a batch size below 1, a non-positive GSD or a wake score threshold outside [0, 1]."""
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}.")
    if not gsd_m > 0:
        raise InputError(f"gsd_m must be a positive number of metres per pixel, got {gsd_m}.")
    if not 0.0 <= min_wake_score <= 1.0:
        raise InputError(f"min_wake_score must be a probability in [0, 1], got {min_wake_score}.")


def _check_devices(model: Any, devices: int) -> None:
    """Reject a device count below 1, and several devices for anything but a checkpoint path."""
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise InputError(f"devices must be a positive integer, got {devices!r}.")
    if devices == 1:
        return
    if not isinstance(model, (str, os.PathLike)):
        raise InputError(
            f"--devices {devices} needs a .ckpt checkpoint path (Lightning's predict loop), "
            f"not a {type(model).__name__}; use devices=1."
        )
    if Path(model).suffix.lower() == ".onnx":
        raise InputError(
            f"--devices {devices} is for .ckpt checkpoints; run the ONNX model {model} "
            "with --devices 1 (ONNX Runtime uses the CPU cores)."
        )


def iter_predictions(
    model: KeypointPredictor | torch.nn.Module | str | os.PathLike[str],
    images: Iterable[ImageInput],
    *,
    batch_size: int = 16,
    tta: bool = DEFAULT_TTA,
    gsd_m: float = DEFAULT_GSD_M,
    accelerator: str = "auto",
    min_wake_score: float = DEFAULT_MIN_WAKE_SCORE,
    on_unreadable: Callable[[str, WakeModelError], None] | None = None,
    progress: ProgressCallback | None = None,
    devices: int = 1,
) -> Iterator[Prediction]:
    """Find the wake in each chip, yielding the predictions batch by batch.

    Chips are read, preprocessed and predicted ``batch_size`` at a time (the
    next batch is read in a background thread, see :data:`PREFETCH`), so at
    most two batches of pixels are held whatever the number of chips; a
    :class:`Prediction` takes about 1 kB. The options are checked and the model
    is loaded when this is called; the chips are read as the iterator is consumed.

    Args:
        model: A ``.ckpt``/``.onnx`` path, a loaded ``WakeKeypointModule`` or any
            :class:`KeypointPredictor`.
        images: Image paths (8/16-bit grey, RGB or RGBA; PNG or TIFF; any
            size) and/or raw grey arrays ``[H, W]``.
        batch_size: Chips per network call.
        tta: Combine the 8 flips/rotations of the network input (:mod:`wakemodel.tta`).
        gsd_m: Ground sampling distance (metres per pixel) for the wake length.
        accelerator: Device choice when ``model`` is a path.
        min_wake_score: Wake score (probability) from which a chip counts as
            holding a readable wake (``Prediction.wake_found``).
        on_unreadable: Called with ``(source, error)`` for an image that cannot
            be read, which is then skipped; when None the error is raised.
        progress: Called as ``progress(done, total)`` after each batch (see
            :data:`ProgressCallback`).
        devices: Above 1, a ``.ckpt`` model runs on that many devices (GPUs, or
            CPU processes) through Lightning's predict loop
            (:func:`wakemodel.predict_loop.predict_on_devices`); the predictions
            then all come at the end, still in input order.

    Returns:
        An iterator over one :class:`Prediction` per readable image, in input order.

    Raises:
        WakeModelError: The model cannot be loaded, or (while iterating) an
            image cannot be read (without ``on_unreadable``).
        InputError: ``batch_size`` or ``gsd_m`` is not positive, or ``devices``
            is above 1 for an ONNX model or an in-memory one.
    """
    _check_run_options(batch_size, gsd_m, min_wake_score)
    _check_devices(model, devices)
    stream = _prediction_stream(
        model,
        list(images),
        batch_size=batch_size,
        tta=tta,
        gsd_m=gsd_m,
        accelerator=accelerator,
        min_wake_score=min_wake_score,
        on_unreadable=on_unreadable,
        progress=progress,
        devices=devices,
    )
    return (prediction for prediction, _ in stream)


def predict(
    model: KeypointPredictor | torch.nn.Module | str | os.PathLike[str],
    images: Iterable[ImageInput],
    *,
    batch_size: int = 16,
    tta: bool = DEFAULT_TTA,
    gsd_m: float = DEFAULT_GSD_M,
    accelerator: str = "auto",
    min_wake_score: float = DEFAULT_MIN_WAKE_SCORE,
    on_unreadable: Callable[[str, WakeModelError], None] | None = None,
    progress: ProgressCallback | None = None,
    devices: int = 1,
) -> list[Prediction]:
    """Find the wake in each chip (the list of :func:`iter_predictions`).

    Args:
        model: A ``.ckpt``/``.onnx`` path, a loaded ``WakeKeypointModule`` or any
            :class:`KeypointPredictor`.
        images: Image paths (8/16-bit grey, RGB or RGBA; PNG or TIFF; any
            size) and/or raw grey arrays ``[H, W]``.
        batch_size: Chips per network call.
        tta: Combine the 8 flips/rotations of the network input (:mod:`wakemodel.tta`).
        gsd_m: Ground sampling distance (metres per pixel) for the wake length.
        accelerator: Device choice when ``model`` is a path.
        min_wake_score: Wake score (probability) from which a chip counts as
            holding a readable wake (``Prediction.wake_found``).
        on_unreadable: Called with ``(source, error)`` for an image that cannot
            be read, which is then skipped; when None the error is raised.
        progress: Called as ``progress(done, total)`` after each batch.
        devices: Devices for a ``.ckpt`` model (above 1: Lightning's predict loop).

    Returns:
        One :class:`Prediction` per readable image, in input order.

    Raises:
        WakeModelError: An image cannot be read (without ``on_unreadable``).
        InputError: ``batch_size`` or ``gsd_m`` is not positive, or ``devices``
            is above 1 for a model that is not a checkpoint path.
    """
    return list(
        iter_predictions(
            model,
            images,
            batch_size=batch_size,
            tta=tta,
            gsd_m=gsd_m,
            accelerator=accelerator,
            min_wake_score=min_wake_score,
            on_unreadable=on_unreadable,
            progress=progress,
            devices=devices,
        )
    )


def _prediction_stream(
    model: KeypointPredictor | torch.nn.Module | str | os.PathLike[str],
    items: list[ImageInput],
    *,
    batch_size: int,
    tta: bool,
    gsd_m: float,
    accelerator: str,
    min_wake_score: float,
    on_unreadable: Callable[[str, WakeModelError], None] | None,
    progress: ProgressCallback | None,
    devices: int,
) -> Iterator[tuple[Prediction, ImageInput]]:
    """Load the model now and return the (lazy) pairs of prediction and input item.

    One device streams batch by batch in this process; several run
    :func:`wakemodel.predict_loop.predict_on_devices` (Lightning) at once.
    """
    if devices > 1:
        from wakemodel.predict_loop import predict_on_devices

        outputs = predict_on_devices(
            model,
            items,
            devices=devices,
            accelerator=accelerator,
            batch_size=batch_size,
            tta=tta,
            progress=progress,
        )
        return iter(_device_predictions(items, outputs, gsd_m, min_wake_score, on_unreadable))
    predictor = as_predictor(model, accelerator=accelerator)
    return _stream(
        predictor, items, batch_size, tta, gsd_m, min_wake_score, on_unreadable, progress
    )


@dataclass
class _Chunk:
    """One batch of chips, read and preprocessed.

    Attributes:
        items: The readable input items, in order.
        sources: Their paths (None for arrays).
        sizes: Their original (width, height) in pixels.
        images: float32 ``[B, 1, S, S]`` in [0, 1], or None when none was readable.
        failures: ``(source, error)`` of each unreadable item, in order.
        count: Items in the batch, readable or not.
    """

    items: list[ImageInput]
    sources: list[str | None]
    sizes: list[tuple[int, int]]
    images: np.ndarray | None
    failures: list[tuple[str, WakeModelError]]
    count: int


def _read_chunk(chunk: Sequence[ImageInput], image_size: int) -> _Chunk:
    """Read and preprocess one batch of items; unreadable ones are listed, not raised."""
    kept: list[ImageInput] = []
    sources: list[str | None] = []
    sizes: list[tuple[int, int]] = []
    inputs: list[np.ndarray] = []
    failures: list[tuple[str, WakeModelError]] = []
    for item in chunk:
        try:
            source, raw = preprocess.read_chip(item)
        except WakeModelError as exc:
            failures.append((preprocess.chip_label(item), exc))
            continue
        kept.append(item)
        sources.append(source)
        sizes.append((raw.shape[1], raw.shape[0]))
        inputs.append(preprocess.preprocess_image(raw, image_size))
    images = np.stack(inputs).astype(np.float32) / np.float32(255.0) if inputs else None
    return _Chunk(kept, sources, sizes, images, failures, len(chunk))


def _read_chunks(items: list[ImageInput], batch_size: int, image_size: int) -> Iterator[_Chunk]:
    """The batches of ``items``, read one ahead in a background thread when :data:`PREFETCH`."""
    chunks = _chunks(items, batch_size)
    if not PREFETCH or len(items) <= batch_size:
        for chunk in chunks:
            yield _read_chunk(chunk, image_size)
        return
    from concurrent.futures import ThreadPoolExecutor

    # PIL decoding and resizing release the GIL, so reading overlaps the network call.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="wakemodel-read") as pool:
        pending = pool.submit(_read_chunk, next(chunks), image_size)
        for chunk in chunks:
            ready = pending.result()
            pending = pool.submit(_read_chunk, chunk, image_size)
            yield ready
        yield pending.result()


def _stream(
    predictor: KeypointPredictor,
    items: list[ImageInput],
    batch_size: int,
    tta: bool,
    gsd_m: float,
    min_wake_score: float,
    on_unreadable: Callable[[str, WakeModelError], None] | None,
    progress: ProgressCallback | None,
) -> Iterator[tuple[Prediction, ImageInput]]:
    """Predict each readable item (each read once), batch by batch: pairs of prediction and item."""
    done = 0
    for chunk in _read_chunks(items, batch_size, predictor.image_size):
        for source, error in chunk.failures:
            if on_unreadable is None:
                raise error
            on_unreadable(source, error)
        predictions: list[Prediction] = []
        if chunk.images is not None:
            outputs = predict_batch(predictor, chunk.images, tta=tta)
            predictions = _to_predictions(
                chunk.sources, chunk.sizes, *outputs, gsd_m, min_wake_score
            )
        done += chunk.count
        if progress is not None:
            progress(done, len(items))
        yield from zip(predictions, chunk.items, strict=True)


def _device_predictions(
    items: list[ImageInput],
    outputs: dict[str, np.ndarray],
    gsd_m: float,
    min_wake_score: float,
    on_unreadable: Callable[[str, WakeModelError], None] | None,
) -> list[tuple[Prediction, ImageInput]]:
    """Build the predictions of :func:`wakemodel.predict_loop.predict_on_devices`'s arrays.

    The unreadable chips are reported (or the first raised) in input order.
    """
    if not outputs:
        return []
    readable = outputs["error"] == ""
    for index in np.flatnonzero(~readable):
        error = WakeModelError(str(outputs["error"][index]))
        if on_unreadable is None:
            raise error
        on_unreadable(preprocess.chip_label(items[index]), error)
    kept = np.flatnonzero(readable)
    if kept.size == 0:
        return []
    sources = [None if isinstance(items[i], np.ndarray) else str(Path(items[i])) for i in kept]
    sizes = [(int(w), int(h)) for w, h in outputs["size"][kept]]
    predictions = _to_predictions(
        sources,
        sizes,
        outputs["keypoints"][kept],
        outputs["visibility"][kept],
        outputs["keypoint_std"][kept],
        gsd_m,
        min_wake_score,
    )
    return list(zip(predictions, [items[i] for i in kept], strict=True))


def _to_predictions(
    sources: list[str | None],
    sizes: list[tuple[int, int]],
    keypoints_norm: np.ndarray,
    visibility: np.ndarray,
    keypoint_std: np.ndarray,
    gsd_m: float,
    min_wake_score: float,
) -> list[Prediction]:
    """Build predictions from normalised keypoints and std ``[B,3,2]``, probabilities ``[B,3]``."""
    orig_size = np.array(sizes, dtype=np.float64)
    visible = kp.predicted_visibility(visibility)
    keypoints_px = kp.to_pixels(keypoints_norm, orig_size)
    keypoint_std_px = kp.to_pixels(keypoint_std, orig_size)
    heading = kp.heading_deg(keypoints_px, visible)
    heading_std = kp.heading_std_deg(keypoints_px, keypoint_std_px, visible)
    radius_px = kp.keypoint_radius_px(keypoint_std_px)
    wake_score = visibility[:, kp.VERTEX_SLOT]
    length_px = kp.wake_length_px(keypoints_px, visible)
    return [
        Prediction(
            source=source,
            width=width,
            height=height,
            keypoints_px=keypoints_px[i],
            visible=visible[i],
            visibility=visibility[i],
            heading_deg=float(heading[i]),
            wake_length_px=float(length_px[i]),
            wake_length_m=float(length_px[i]) * gsd_m,
            gsd_m=gsd_m,
            keypoint_std_px=radius_px[i],
            heading_std_deg=float(heading_std[i]),
            wake_score=float(wake_score[i]),
            wake_found=bool(wake_score[i] >= min_wake_score),
        )
        for i, (source, (width, height)) in enumerate(zip(sources, sizes, strict=True))
    ]


def format_table(predictions: Sequence[Prediction]) -> str:
    """Predictions as a plain-text table.

    Columns: keypoints (pixels), heading with its 1-sigma uncertainty
    (degrees), wake score, wake length (pixels, metres). A chip whose wake
    score is under the threshold shows "no readable wake" and its score
    instead of keypoints, heading and length.

    Args:
        predictions: The predictions, one row each; invisible keypoints show as ``-``.

    Returns:
        The table, one header line plus one line per prediction.
    """

    def point(prediction: Prediction, slot: int) -> str:
        if not (prediction.wake_found and prediction.visible[slot]):
            return "-"
        x, y = prediction.keypoints_px[slot]
        return f"({x:.1f}, {y:.1f})"

    def heading(prediction: Prediction) -> str:
        if math.isnan(prediction.heading_std_deg):
            return f"{prediction.heading_deg:.1f}°"
        return f"{prediction.heading_deg:.1f}° ± {prediction.heading_std_deg:.1f}"

    header = (
        f"{'image':<24} {'vertex x,y px':>16} {'end 1 x,y px':>16} {'end 2 x,y px':>16} "
        f"{'heading ± 1σ':>15} {'wake':>5} {'length px':>10} {'length m':>10}"
    )
    rows = [header]
    for prediction in predictions:
        name = Path(prediction.source).name if prediction.source else "<array>"
        row = (
            f"{name:<24} {point(prediction, 0):>16} {point(prediction, 1):>16} "
            f"{point(prediction, 2):>16} "
        )
        if prediction.wake_found:
            row += (
                f"{heading(prediction):>15} {prediction.wake_score:>5.2f} "
                f"{prediction.wake_length_px:>10.1f} {prediction.wake_length_m:>10.0f}"
            )
        else:
            row += f"{'no readable wake':>15} {prediction.wake_score:>5.2f}"
        rows.append(row)
    return "\n".join(rows)


def check_plot_path(plot_path: str | os.PathLike[str] | None, image_count: int) -> None:
    """Reject a single plot file (``.png``, ...) for several images, before any work.

    Raises:
        InputError: ``plot_path`` ends in one of :data:`PLOT_SUFFIXES` and
            ``image_count`` is above 1.
    """
    if (
        plot_path is not None
        and image_count > 1
        and (Path(plot_path).suffix.lower() in PLOT_SUFFIXES)
    ):
        raise InputError(f"--plot {plot_path}: several images given; pass a folder instead.")


@dataclass
class InferenceReport:
    """Everything ``python cli.py infer`` prints, for one model and a list of chips.

    Attributes:
        model: The model as given (a path's text, or the backend's name).
        tta: Whether test-time augmentation was used.
        predictions: One per readable chip, in input order; georeferenced chips
            carry ``geo`` (see :func:`wakemodel.georef.geolocate_predictions`).
        notes: One-line remarks for the user (stderr in the CLI): why chips
            have no geo fields, or one summary line when no chip is
            georeferenced and no geo option was given.
        inputs: The input item (path or array) of each prediction, for plots.
    """

    model: str
    tta: bool
    predictions: list[Prediction]
    notes: list[str] = field(default_factory=list)
    inputs: list[ImageInput] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of ``infer --json``: ``{"model", "tta", "predictions": [...]}``."""
        return {
            "model": self.model,
            "tta": self.tta,
            "predictions": [prediction.to_dict() for prediction in self.predictions],
        }

    def format_table(self) -> str:
        """The table of :func:`format_table` plus one geo summary line per georeferenced chip."""
        lines = [format_table(self.predictions)]
        lines.extend(
            f"{Path(prediction.source).name}: {prediction.geo.summary()}"
            for prediction in self.predictions
            if prediction.geo is not None and prediction.source is not None
        )
        return "\n".join(lines)

    def save_plots(
        self, path: str | os.PathLike[str], single_file: bool | None = None
    ) -> list[Path]:
        """Save each chip with its keypoints, wake axis and heading arrow.

        Args:
            path: A file ending in one of :data:`PLOT_SUFFIXES` (one chip), else
                a folder that gets ``<stem>_wake.png`` per chip (``<stem>_2_wake.png``
                ... for repeated stems; ``array<i>`` for in-memory chips).
            single_file: Write ``path`` itself when it has a plot suffix; default:
                when there is exactly one prediction.

        Returns:
            The written files, in prediction order.

        Raises:
            InputError: ``path`` is a single file but there are several predictions.
        """
        from wakemodel.plots import plot_prediction

        plot_path = Path(path)
        if single_file is None:
            single_file = len(self.predictions) == 1
        as_file = plot_path.suffix.lower() in PLOT_SUFFIXES
        if as_file and not single_file:
            check_plot_path(plot_path, len(self.predictions))
        used_names: set[str] = set()
        saved = []
        for index, prediction in enumerate(self.predictions):
            if as_file and single_file:
                target = plot_path
            else:
                stem = Path(prediction.source).stem if prediction.source else f"array{index}"
                name = f"{stem}_wake.png"
                repeat = 1
                while name in used_names:
                    repeat += 1
                    name = f"{stem}_{repeat}_wake.png"
                used_names.add(name)
                target = plot_path / name
            saved.append(plot_prediction(self._pixels(index), prediction, target))
        return saved

    def _pixels(self, index: int) -> np.ndarray:
        """The raw grey chip ``[H, W]`` of prediction ``index`` (re-read from its file)."""
        item = self.inputs[index] if index < len(self.inputs) else self.predictions[index].source
        if isinstance(item, np.ndarray):
            return item.astype(np.float32, copy=False)
        if item is None:
            raise InputError("This report holds no pixels for an in-memory chip; keep `inputs`.")
        return preprocess.read_image(Path(item))


def run(
    model: KeypointPredictor | torch.nn.Module | str | os.PathLike[str],
    images: Iterable[ImageInput],
    *,
    batch_size: int = 16,
    tta: bool = DEFAULT_TTA,
    gsd_m: float = DEFAULT_GSD_M,
    accelerator: str = "auto",
    crs: str | None = None,
    platforms: str | os.PathLike[str] | Platforms | None = None,
    nearest_count: int = 1,
    within_km: float | None = None,
    min_wake_score: float = DEFAULT_MIN_WAKE_SCORE,
    on_unreadable: Callable[[str, WakeModelError], None] | None = None,
    progress: ProgressCallback | None = None,
    devices: int = 1,
) -> InferenceReport:
    """Run the whole inference chain: predictions, geo fields, notes (what ``infer`` prints).

    Geo options are checked (and platforms read) before the model is loaded.
    :mod:`wakemodel.georef` (pyproj, rasterio) is imported only when ``crs`` or
    ``platforms`` is given or a chip may be georeferenced (a TIFF, or a world
    file beside it; see :func:`wakemodel.geofiles.georeference_hint`). Chips are
    streamed batch by batch (see :func:`iter_predictions`); the report keeps the
    predictions and, for files, only the paths.

    Args:
        model: A ``.ckpt``/``.onnx`` path, a loaded ``WakeKeypointModule`` or any
            :class:`KeypointPredictor`.
        images: Image files, folders of them, and/or raw grey arrays ``[H, W]``.
        batch_size: Chips per network call.
        tta: Combine the 8 flips/rotations of the network input (:mod:`wakemodel.tta`).
        gsd_m: Ground sampling distance (metres per pixel) for chips that are
            not georeferenced.
        accelerator: Device choice when ``model`` is a path.
        crs: CRS for world-file chips without a ``.prj`` (e.g. ``EPSG:32631``).
        platforms: Platform CSV (see :func:`wakemodel.geo.read_points_csv`) or
            :class:`wakemodel.georef.Platforms` already read.
        nearest_count: Platforms listed per vessel.
        within_km: Flag vessels closer than this to their nearest platform (km;
            needs ``platforms``).
        min_wake_score: Wake score from which a chip counts as holding a
            readable wake; below it the table says "no readable wake".
        on_unreadable: Called with ``(source, error)`` for an unreadable image,
            which is then skipped; when None the error is raised.
        progress: Called as ``progress(done, total)`` after each batch (see
            :data:`ProgressCallback`).
        devices: Above 1, a ``.ckpt`` model runs on that many devices (GPUs, or
            CPU processes) through Lightning's predict loop; the predictions keep
            the input order.

    Returns:
        The report (``to_dict()`` is the ``--json`` document).

    Raises:
        WakeModelError: Bad geo options, geo options without rasterio/pyproj,
            an unreadable model or image, or no readable image at all.
        InputError: Bad ``batch_size``, ``gsd_m``, ``crs``, ``nearest_count`` or
            ``devices`` (above 1 for an ONNX or in-memory model).
    """
    _check_run_options(batch_size, gsd_m, min_wake_score)
    _check_devices(model, devices)
    requested = crs is not None or platforms is not None
    platforms = _read_geo_options(crs, platforms, within_km)
    items: list[ImageInput] = []
    for item in images:
        if isinstance(item, np.ndarray):
            items.append(item)
        else:
            items.extend(find_images([item]))
    results = list(
        _prediction_stream(
            model,
            items,
            batch_size=batch_size,
            tta=tta,
            gsd_m=gsd_m,
            accelerator=accelerator,
            min_wake_score=min_wake_score,
            on_unreadable=on_unreadable,
            progress=progress,
            devices=devices,
        )
    )
    if not results:
        raise WakeModelError("None of the images could be read; see the lines above.")
    predictions, notes = _add_geo_fields(
        [prediction for prediction, _ in results],
        crs,
        platforms,
        nearest_count,
        within_km,
        requested=requested,
    )
    return InferenceReport(
        model=_model_name(model),
        tta=tta,
        predictions=predictions,
        notes=notes,
        inputs=[item for _, item in results],
    )


def _model_name(model: Any) -> str:
    """The model as the JSON document names it: a path's text, else the backend's path or type."""
    if isinstance(model, (str, os.PathLike)):
        return str(model)
    metadata = getattr(model, "metadata", None)
    if isinstance(metadata, dict) and metadata.get("path"):
        return str(metadata["path"])
    return type(model).__name__


def _read_geo_options(
    crs: str | None,
    platforms: str | os.PathLike[str] | Platforms | None,
    within_km: float | None,
) -> Platforms | None:
    """Check ``crs`` and read ``platforms`` (a CSV path) before any inference runs."""
    if within_km is not None and platforms is None:
        raise WakeModelError("--within-km needs --platforms CSV (the platforms to measure).")
    if crs is None and platforms is None:
        return None
    try:
        from wakemodel import georef
    except ImportError as exc:
        raise WakeModelError(
            f"--crs and --platforms need rasterio and pyproj ({exc}); "
            "install them with pip install 'wakemodel[geo]'."
        ) from exc
    if crs is not None:
        georef.parse_crs(crs)
    if platforms is None or isinstance(platforms, georef.Platforms):
        return platforms
    return georef.read_platforms(platforms)


def _add_geo_fields(
    predictions: list[Prediction],
    crs: str | None,
    platforms: Platforms | None,
    nearest_count: int,
    within_km: float | None,
    *,
    requested: bool,
) -> tuple[list[Prediction], list[str]]:
    """Geolocate predictions of georeferenced chips; one-line notes for the others.

    Without a geo option (``requested`` false) and no georeferenced chip at
    all, one note sums up; otherwise each chip without geo fields gets a note.
    pyproj and rasterio are imported only when requested or when a chip may
    be georeferenced.
    """
    from wakemodel.geofiles import georeference_hint

    if not requested:
        reasons = [georeference_hint(prediction.source) for prediction in predictions]
        if all(reason is not None for reason in reasons):
            unlocated = [
                dataclasses.replace(prediction, geo=None, geo_note=reason)
                for prediction, reason in zip(predictions, reasons, strict=True)
            ]
            return unlocated, [f"No geo fields: no image is georeferenced (e.g. {reasons[0]})"]
    try:
        from wakemodel.georef import geolocate_predictions
    except ImportError:
        return predictions, [
            "No geo fields: rasterio and pyproj are not installed (pip install 'wakemodel[geo]')."
        ]
    located = geolocate_predictions(
        predictions, crs=crs, platforms=platforms, nearest_count=nearest_count, within_km=within_km
    )
    reasons = [prediction.geo_note for prediction in located if prediction.geo_note]
    if reasons and not requested and len(reasons) == len(located):
        return located, [f"No geo fields: no image is georeferenced (e.g. {reasons[0]})"]
    return located, [f"No geo fields for {reason}" for reason in reasons]
