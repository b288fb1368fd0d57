"""Inference: load a trained model and predict wake keypoints on new chips.

``load_model`` turns a checkpoint written by ``train`` into a
:class:`KeypointPredictor`, a small interface (``image_size`` and a call on a
batch of network inputs) that other backends can implement too. ``predict``
reads chips of any size through the same preprocessing as training
(:mod:`wakemodel.preprocess`),
optionally averages over the 8 dihedral transforms (test-time augmentation),
maps the keypoints back to original-image pixels and derives the heading and
the wake length with :mod:`wakemodel.metrics`.

Only a ``.ckpt`` model (and test-time augmentation, which matches arm orders
with :mod:`wakemodel.losses`) imports torch; an ``.onnx`` model runs with numpy,
PIL and ONNX Runtime alone, so the ``infer`` command starts fast.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import sys
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Union, runtime_checkable

import numpy as np

from wakemodel import metrics, preprocess
from wakemodel.errors import InputError, WakeModelError

if TYPE_CHECKING:
    import torch

    from wakemodel.georef import GeoLocation

logger = logging.getLogger(__name__)

KEYPOINT_NAMES = ("vertex", "end_1", "end_2")
"""Names of the 3 keypoint slots: the wake vertex (vessel), then the wake ends."""

ImageInput = Union[str, "os.PathLike[str]", np.ndarray]
"""One chip: a path to an image file, or a raw grey image array ``[H, W]``."""


@runtime_checkable
class KeypointPredictor(Protocol):
    """What ``predict`` needs from a model backend (Lightning checkpoint, ONNX, ...).

    Attributes:
        image_size: Side S (pixels) of the square network input.
    """

    image_size: int

    def __call__(self, images: np.ndarray) -> tuple[Any, Any]:
        """Run the network on a batch.

        Args:
            images: float32 ``[B, 1, S, S]`` in [0, 1] (preprocessed chips).

        Returns:
            ``(keypoints, visibility)``: normalised keypoints ``[B, 3, 2]`` as
            (x, y) in [0, 1] and visibility probabilities ``[B, 3]``, as numpy
            arrays or torch tensors.
        """
        ...


class TorchKeypointPredictor:
    """A :class:`KeypointPredictor` running the network with torch.

    Args:
        module: An ``EfficientNetB0KeypointDetector`` (as :func:`load_model`
            builds it) or a ``WakeKeypointModule``; its forward returns a ``KeypointOutput``
            ``(keypoints [B,3,2] normalised, visibility_logits [B,3])``.
        image_size: Side S (pixels) of the square network input.
        device: Device the module lives on and inputs are sent to.
    """

    def __init__(self, module: torch.nn.Module, image_size: int, device: torch.device) -> None:
        self.module = module.eval()
        self.image_size = int(image_size)
        self.device = device

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predict normalised keypoints ``[B,3,2]`` and visibility probabilities ``[B,3]``."""
        import torch

        batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self.device)
        with torch.inference_mode():
            keypoints, visibility_logits = self.module(batch)
        return (
            keypoints.float().cpu().numpy(),
            torch.sigmoid(visibility_logits.float()).cpu().numpy(),
        )


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
            visible, since every chip is taken to hold a wake.
        visibility: float ``[3]`` visibility probabilities in [0, 1].
        heading_deg: Compass bearing of the vessel in degrees [0, 360), north
            up, from the far end point towards the vertex.
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
    geo: GeoLocation | None = None
    geo_note: str | None = None

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
                }
                for name, (x, y), visible, probability in zip(
                    KEYPOINT_NAMES, self.keypoints_px, self.visible, self.visibility, strict=True
                )
            ],
            "heading_deg": _json_float(self.heading_deg, 2),
            "wake_length_px": _json_float(self.wake_length_px, 2),
            "wake_length_m": _json_float(self.wake_length_m, 1),
            "gsd_m": self.gsd_m,
        }
        if self.geo is not None:
            document["geo"] = self.geo.to_dict()
        return document


def _json_float(value: float, digits: int) -> float | None:
    """Round ``value``; NaN becomes None (JSON has no NaN)."""
    return None if math.isnan(value) else round(float(value), digits)


def load_model(path: str | os.PathLike[str], accelerator: str = "auto") -> KeypointPredictor:
    """Load a checkpoint written by ``train`` as a ready-to-run predictor.

    The network, its input size and its normalisation come from the
    checkpoint's hyperparameters; pretrained weights are never downloaded.

    Args:
        path: Lightning ``.ckpt`` file, or an ``.onnx`` file written by ``export``
            (run with ONNX Runtime on the CPU; needs the ``[onnx]`` extra).
        accelerator: ``auto``, ``cpu``, ``gpu``, ``cuda`` or ``mps`` (as in training);
            ignored for ``.onnx`` files.

    Returns:
        A :class:`TorchKeypointPredictor` on the selected device, or a
        :class:`wakemodel.export.OnnxKeypointPredictor` for ``.onnx`` files.

    Raises:
        WakeModelError: The file is missing, is not a checkpoint, or does not
            hold a wakemodel network (one line naming the file).
    """
    if Path(path).suffix.lower() == ".onnx":
        from wakemodel.export import OnnxKeypointPredictor

        return OnnxKeypointPredictor(path)
    import torch

    from wakemodel.devices import select_device
    from wakemodel.network import detector_from_checkpoint

    checkpoint_path = Path(path)
    if not checkpoint_path.is_file():
        raise WakeModelError(
            f"Model checkpoint not found: {checkpoint_path}; pass a .ckpt file written by `train`."
        )
    if not zipfile.is_zipfile(checkpoint_path):
        raise WakeModelError(
            f"{checkpoint_path} is not a model checkpoint (not a PyTorch file); "
            "pass a .ckpt file written by `train`."
        )
    device = torch.device(select_device(accelerator).accelerator)
    try:
        checkpoint = torch.load(checkpoint_path, map_location=device, weights_only=True)
        image_size = checkpoint["hyper_parameters"].get("image_size")
        detector = detector_from_checkpoint(checkpoint)
    except pickle.UnpicklingError as exc:
        raise WakeModelError(
            f"{checkpoint_path} holds Python objects that safe loading (weights_only) refuses; "
            "load only checkpoints written by `train`."
        ) from exc
    except (zipfile.BadZipFile, EOFError, RuntimeError) as exc:
        raise WakeModelError(
            f"{checkpoint_path} is not a readable model checkpoint ({_first_line(exc)}); "
            "pass a .ckpt file written by `train`."
        ) from exc
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        detail = f"no {exc} entry" if isinstance(exc, KeyError) else _first_line(exc)
        raise WakeModelError(
            f"{checkpoint_path} does not hold a wakemodel network ({detail}); "
            "pass a .ckpt file written by `train`."
        ) from exc
    if not isinstance(image_size, int) or image_size <= 0:
        raise WakeModelError(
            f"{checkpoint_path} has no valid `image_size` hyperparameter; "
            "pass a .ckpt file written by `train`."
        )
    logger.debug("Loaded %s (image size %d) on %s", checkpoint_path, image_size, device)
    return TorchKeypointPredictor(detector, image_size, device)


def _first_line(exc: BaseException) -> str:
    """The first line of an exception message, or its type name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def as_predictor(
    model: KeypointPredictor | torch.nn.Module | str | os.PathLike[str], accelerator: str = "auto"
) -> KeypointPredictor:
    """Return ``model`` as a :class:`KeypointPredictor`.

    Args:
        model: A predictor, a loaded ``WakeKeypointModule`` (used on its
            current device), or a checkpoint path (loaded with :func:`load_model`).
        accelerator: Device choice when a path is loaded.

    Returns:
        A predictor.
    """
    if isinstance(model, (str, os.PathLike)):
        return load_model(model, accelerator=accelerator)
    if isinstance(model, KeypointPredictor):
        return model
    torch_module = sys.modules.get("torch")  # a torch module exists only if torch was imported
    if torch_module is not None and isinstance(model, torch_module.nn.Module):
        image_size = int(model.hparams.image_size)
        device = next(model.parameters()).device
        return TorchKeypointPredictor(model, image_size, device)
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


def _read(item: ImageInput) -> tuple[str | None, np.ndarray]:
    """Read one chip as ``(source, raw grey image float32 [H, W])``."""
    if isinstance(item, np.ndarray):
        if item.ndim != 2 or min(item.shape) < 1:
            raise InputError(
                f"Image arrays must be 2-D grey [H, W], got shape {item.shape}; "
                "convert colour chips with wakemodel.preprocess.read_image."
            )
        return None, item.astype(np.float32, copy=False)
    path = Path(item)
    if not path.is_file():
        raise WakeModelError(f"Image not found: {path}; check the path.")
    return str(path), preprocess.read_image(path)


def dihedral_transforms() -> list[tuple[bool, bool, bool]]:
    """The 8 symmetries of the square as ``(transpose, flip_x, flip_y)``, identity first.

    Each is applied to an image ``[..., S, S]`` in that order: swap the axes,
    then mirror left-right, then mirror up-down.
    """
    return [(t, fx, fy) for t in (False, True) for fx in (False, True) for fy in (False, True)]


def transform_images(images: np.ndarray, transform: tuple[bool, bool, bool]) -> np.ndarray:
    """Apply a dihedral transform to square images ``[..., S, S]`` (returns a copy)."""
    transpose, flip_x, flip_y = transform
    if transpose:
        images = np.swapaxes(images, -1, -2)
    if flip_x:
        images = images[..., :, ::-1]
    if flip_y:
        images = images[..., ::-1, :]
    return np.ascontiguousarray(images)


def untransform_keypoints(keypoints: np.ndarray, transform: tuple[bool, bool, bool]) -> np.ndarray:
    """Map normalised keypoints ``[..., 2]`` predicted on a transformed input back.

    Exact in continuous coordinates: a mirror maps ``x -> 1 - x`` (``W - x``
    in pixels), a transpose swaps x and y.

    Args:
        keypoints: (x, y) normalised in [0, 1] on the transformed image.
        transform: The ``(transpose, flip_x, flip_y)`` used on the input.

    Returns:
        (x, y) normalised on the original image, same shape.
    """
    transpose, flip_x, flip_y = transform
    restored = np.array(keypoints, dtype=np.float64, copy=True)
    if flip_y:
        restored[..., 1] = 1.0 - restored[..., 1]
    if flip_x:
        restored[..., 0] = 1.0 - restored[..., 0]
    if transpose:
        restored = restored[..., ::-1].copy()
    return restored


def _as_numpy(value: Any) -> np.ndarray:
    """A float64 numpy copy of a numpy array or torch tensor."""
    if hasattr(value, "detach"):
        value = value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def _run(predictor: KeypointPredictor, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run ``predictor`` on float ``[B,1,S,S]``; keypoints ``[B,3,2]``, visibility ``[B,3]``."""
    keypoints, visibility = predictor(images)
    return _as_numpy(keypoints), _as_numpy(visibility)


def predict_batch(
    predictor: KeypointPredictor, images: np.ndarray, *, tta: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Predict on one batch of network inputs, optionally with dihedral TTA.

    With ``tta`` each of the 8 dihedral transforms of the square input is
    predicted, its keypoints are mapped back exactly, its two wake ends are
    aligned to those of the untransformed prediction (their order is
    meaningless) with :func:`wakemodel.losses.match_arm_order`, and the
    keypoints and visibility probabilities are averaged.

    Args:
        predictor: The model backend.
        images: float32 ``[B, 1, S, S]`` in [0, 1].
        tta: Average over the 8 dihedral transforms.

    Returns:
        Normalised keypoints float ``[B, 3, 2]`` and visibility probabilities ``[B, 3]``.
    """
    if not tta:
        return _run(predictor, images)
    import torch

    from wakemodel.losses import match_arm_order, permute_slots

    reference, reference_visibility = _run(predictor, images)
    reference_t = torch.from_numpy(reference)
    all_slots = torch.ones(reference.shape[:-1], dtype=torch.bool)
    keypoint_sum, visibility_sum = reference.copy(), reference_visibility.copy()
    transforms = dihedral_transforms()
    for transform in transforms[1:]:
        keypoints, visibility = _run(predictor, transform_images(images, transform))
        keypoints_t = torch.from_numpy(untransform_keypoints(keypoints, transform))
        order = match_arm_order(reference_t, keypoints_t, all_slots)
        keypoint_sum += permute_slots(keypoints_t, order).numpy()
        visibility_sum += permute_slots(torch.from_numpy(visibility), order).numpy()
    return keypoint_sum / len(transforms), visibility_sum / len(transforms)


def _chunks(items: Sequence[ImageInput], size: int) -> Iterator[Sequence[ImageInput]]:
    """Consecutive slices of ``items`` of at most ``size`` elements."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def predict(
    model: KeypointPredictor | torch.nn.Module | str | os.PathLike[str],
    images: Iterable[ImageInput],
    *,
    batch_size: int = 16,
    tta: bool = False,
    gsd_m: float = 10.0,
    accelerator: str = "auto",
    on_unreadable: Callable[[str, WakeModelError], None] | None = None,
) -> list[Prediction]:
    """Find the wake in each chip.

    Args:
        model: A checkpoint path, a loaded ``WakeKeypointModule`` or any
            :class:`KeypointPredictor`.
        images: Image paths (8/16-bit grey, RGB or RGBA; PNG or TIFF; any
            size) and/or raw grey arrays ``[H, W]``.
        batch_size: Chips per network call.
        tta: Average over the 8 flips/rotations of the network input.
        gsd_m: Ground sampling distance (metres per pixel) for the wake length.
        accelerator: Device choice when ``model`` is a path.
        on_unreadable: Called with ``(source, error)`` for an image that cannot
            be read, which is then skipped; when None the error is raised.

    Returns:
        One :class:`Prediction` per readable image, in input order.

    Raises:
        WakeModelError: An image cannot be read (without ``on_unreadable``).
        InputError: ``batch_size`` or ``gsd_m`` is not positive.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}.")
    if not gsd_m > 0:
        raise InputError(f"gsd_m must be a positive number of metres per pixel, got {gsd_m}.")
    predictor = as_predictor(model, accelerator=accelerator)
    items = list(images)
    predictions: list[Prediction] = []
    for chunk in _chunks(items, batch_size):
        sources: list[str | None] = []
        sizes: list[tuple[int, int]] = []
        inputs: list[np.ndarray] = []
        for item in chunk:
            try:
                source, raw = _read(item)
            except WakeModelError as exc:
                if on_unreadable is None:
                    raise
                on_unreadable(str(item) if not isinstance(item, np.ndarray) else "<array>", exc)
                continue
            sources.append(source)
            sizes.append((raw.shape[1], raw.shape[0]))
            inputs.append(preprocess.preprocess_image(raw, predictor.image_size))
        if not inputs:
            continue
        batch = np.stack(inputs).astype(np.float32) / np.float32(255.0)
        keypoints_norm, visibility = predict_batch(predictor, batch, tta=tta)
        predictions.extend(_to_predictions(sources, sizes, keypoints_norm, visibility, gsd_m))
    return predictions


def _to_predictions(
    sources: list[str | None],
    sizes: list[tuple[int, int]],
    keypoints_norm: np.ndarray,
    visibility: np.ndarray,
    gsd_m: float,
) -> list[Prediction]:
    """Build predictions from normalised keypoints ``[B,3,2]`` and probabilities ``[B,3]``."""
    orig_size = np.array(sizes, dtype=np.float64)
    visible = metrics.predicted_visibility(visibility)
    keypoints_px = metrics.to_pixels(keypoints_norm, orig_size)
    heading = metrics.heading_deg(keypoints_px, visible)
    length_px = metrics.wake_length_px(keypoints_px, visible)
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
        )
        for i, (source, (width, height)) in enumerate(zip(sources, sizes, strict=True))
    ]
