"""Model backends: one interface for a trained checkpoint and an exported ONNX file.

A predictor takes a batch of preprocessed chips, float32 ``[B, 1, S, S]`` in
[0, 1], and returns numpy ``(keypoints [B, 3, 2] normalised (x, y) in [0, 1],
visibility probabilities [B, 3], keypoint std [B, 3, 2] normalised)``; slot 0
of the visibility is the wake score. A backend written elsewhere may return
only the first two (uncertainties are then unknown). :func:`load_predictor` opens either kind of
model file:

- a ``.ckpt`` written by ``train`` becomes a :class:`TorchPredictor` (the
  network is rebuilt with :func:`wakemodel.network.detector_from_checkpoint`,
  without Lightning; torch is imported only here);
- an ``.onnx`` file written by ``export`` becomes an :class:`OnnxPredictor`
  (ONNX Runtime on the CPU; numpy only, no torch).

The ONNX input/output contract (:data:`INPUT_NAME`, :data:`OUTPUT_NAMES`,
:data:`METADATA_KEYS`) lives here; :mod:`wakemodel.export` writes files that
follow it. This module never imports :mod:`wakemodel.export` or
:mod:`wakemodel.infer`.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from wakemodel.errors import InputError, WakeModelError, first_line
from wakemodel.preprocess import check_image_size

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

INPUT_NAME = "images"
"""ONNX input: float32 ``[B, 1, S, S]`` in [0, 1]."""

OUTPUT_NAMES = ("keypoints", "visibility", "keypoint_std")
"""ONNX outputs: normalised keypoints ``[B, 3, 2]``, visibility probabilities ``[B, 3]``
(slot 0: the wake score) and the calibrated std of each keypoint's x and y ``[B, 3, 2]``
(normalised). Files exported before ``keypoint_std`` existed have the first two only."""

METADATA_KEYS = {
    "image_size": "wakemodel.image_size",
    "input_scale": "wakemodel.input_scale",
    "preprocessing": "wakemodel.preprocessing",
    "normalization": "wakemodel.normalization",
    "outputs": "wakemodel.outputs",
    "precision": "wakemodel.precision",
    "version": "wakemodel.version",
    "source": "wakemodel.source_checkpoint",
    "chip_extent_m": "wakemodel.chip_extent_m",
    "tta_std_scale": "wakemodel.tta_std_scale",
    "wake_score_platt": "wakemodel.wake_score_platt",
}
"""Names of the ``metadata_props`` an exported ONNX file carries."""

CHIP_EXTENT_KEY = "wakemodel_chip_extent_m"
"""Checkpoint entry holding the training chips' median ground extent (metres)."""

TTA_STD_SCALE_KEY = "wakemodel_tta_std_scale"
"""Checkpoint entry holding the calibration factor of the 8-view keypoint std (see
:func:`tta_std_scale`); ``train`` fits it on the validation split after training."""

WAKE_SCORE_PLATT_KEY = "wakemodel_wake_score_platt"
"""Checkpoint entry holding the Platt scaling ``[a, b]`` of the wake score (see
:func:`wake_score_platt`); ``train`` fits it on the validation split after training
when that split holds chips without a wake."""

ONNX_INSTALL_HINT = "install the ONNX extra: pip install 'wakemodel[onnx]'"

_CHECKPOINT_HINT = "pass a .ckpt file written by `train`."


@runtime_checkable
class KeypointPredictor(Protocol):
    """The least a model backend offers: an input size and a call on a batch.

    Attributes:
        image_size: Side S (pixels) of the square network input.
    """

    image_size: int

    def __call__(self, images: np.ndarray) -> tuple[Any, Any]:
        """Run the network on a batch.

        Args:
            images: float32 ``[B, 1, S, S]`` in [0, 1] (preprocessed chips).

        Returns:
            ``(keypoints, visibility[, keypoint_std])``: normalised keypoints
            ``[B, 3, 2]`` as (x, y) in [0, 1], visibility probabilities ``[B, 3]``
            (slot 0: the wake score) and, when the backend knows it, the std of
            each keypoint's x and y ``[B, 3, 2]`` (normalised), as numpy arrays
            (or torch tensors, for backends written elsewhere).
        """
        ...


@runtime_checkable
class Predictor(KeypointPredictor, Protocol):
    """A loaded model file: :class:`KeypointPredictor` plus what is known about the model.

    Attributes:
        image_size: Side S (pixels) of the square network input.
        metadata: ``format`` (``"ckpt"`` or ``"onnx"``), ``path`` (the model
            file) and ``image_size``, plus for a checkpoint its
            ``hyper_parameters`` and ``run_dir`` (None when unknown), and for an
            ONNX file its ``metadata_props`` (keys in :data:`METADATA_KEYS`).
    """

    metadata: dict[str, Any]


def require(module_name: str) -> Any:
    """Import an optional ONNX dependency, or raise a one-line install hint.

    Raises:
        WakeModelError: The module is not installed.
    """
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        raise WakeModelError(f"{module_name} is not installed; {ONNX_INSTALL_HINT}.") from error


def _input_size(value: Any) -> int | None:
    """A model's stored input side as a positive int (an int, or digits for ONNX), else None."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    try:
        check_image_size(value)
    except InputError:
        return None
    return value


def _positive_float(value: Any) -> float | None:
    """``value`` as a finite positive float (a number or its text), else None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def chip_extent_m(predictor: KeypointPredictor) -> float | None:
    """The training chips' median ground extent (metres) a model file carries, else None.

    Checkpoints written by ``train`` and ONNX files exported from them carry it;
    older files and in-memory models do not.
    """
    metadata = getattr(predictor, "metadata", None) or {}
    return _positive_float(metadata.get("chip_extent_m"))


def tta_std_scale(predictor: KeypointPredictor) -> float:
    """The factor that calibrates a model's 8-view (TTA) keypoint std, 1.0 when unknown.

    The network's own ``std_scale`` calibrates one view; the combined std of the
    8 views (:func:`wakemodel.tta.predict_batch`) is fitted again on the
    validation split with the views combined, as its errors are smaller.
    Checkpoints written by ``train`` and ONNX files exported from them carry it;
    older files and in-memory models do not (1.0: the uncombined calibration).
    """
    metadata = getattr(predictor, "metadata", None) or {}
    return _positive_float(metadata.get("tta_std_scale")) or 1.0


def _platt_pair(value: Any) -> tuple[float, float] | None:
    """``value`` (a pair of numbers or its JSON text) as ``(a, b)`` with ``a > 0``, else None."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    try:
        slope, intercept = (float(number) for number in value)
    except (TypeError, ValueError):
        return None
    if math.isfinite(slope) and math.isfinite(intercept) and slope > 0:
        return slope, intercept
    return None


def wake_score_platt(predictor: KeypointPredictor) -> tuple[float, float] | None:
    """The Platt scaling ``(a, b)`` of a model's wake score, None when it has none.

    :func:`wakemodel.tta.predict_batch` reports ``sigmoid(a * logit(score) + b)``
    (:func:`wakemodel.calibration.apply_wake_score_platt`) with or without the 8
    views; ``train`` fits it on the validation split with the views combined.
    Checkpoints written by ``train`` on data with chips without a wake, and ONNX
    files exported from them, carry it; other files and in-memory models do not
    (the network's score as it is).
    """
    metadata = getattr(predictor, "metadata", None) or {}
    return _platt_pair(metadata.get("wake_score_platt"))


class TorchPredictor:
    """A :class:`Predictor` running the network with torch.

    Args:
        module: An ``EfficientNetB0KeypointDetector`` (as :func:`load_predictor`
            builds it) or a ``WakeKeypointModule``; its forward returns
            ``(keypoints [B,3,2] normalised, visibility_logits [B,3], keypoint_std [B,3,2])``.
        image_size: Side S (pixels) of the square network input.
        device: Device the module lives on and inputs are sent to.
        metadata: What is known about the model (see :class:`Predictor`).
    """

    def __init__(
        self,
        module: torch.nn.Module,
        image_size: int,
        device: torch.device,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.module = module.eval()
        self.image_size = int(image_size)
        self.device = device
        self.metadata: dict[str, Any] = (
            {"format": "torch", "image_size": self.image_size} if metadata is None else metadata
        )

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Normalised keypoints ``[B,3,2]``, visibility probabilities ``[B,3]``, keypoint std."""
        import torch

        batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self.device)
        with torch.inference_mode():
            keypoints, visibility_logits, keypoint_std = self.module(batch)
        return (
            keypoints.float().cpu().numpy(),
            torch.sigmoid(visibility_logits.float()).cpu().numpy(),
            keypoint_std.float().cpu().numpy(),
        )


class OnnxPredictor:
    """A :class:`Predictor` running an exported ONNX file with ONNX Runtime (no torch).

    Args:
        path: ``.onnx`` file written by :func:`wakemodel.export.export_onnx`.
        threads: ONNX Runtime intra-op threads; ``None`` lets ONNX Runtime choose.

    Attributes:
        image_size: Network input side S (pixels), from the file's metadata.
        metadata: The file's ``metadata_props`` plus ``format``, ``path`` and
            ``image_size``.
        path: The model file.

    Raises:
        WakeModelError: onnxruntime is missing, or the file is missing, is not
            an ONNX model, or lacks the wakemodel metadata.
    """

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise WakeModelError(
                f"ONNX model not found: {self.path}; write one with `python cli.py export`."
            )
        onnxruntime = require("onnxruntime")
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(
                str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own untyped errors
            raise WakeModelError(
                f"{self.path} is not a readable ONNX model ({first_line(error)[:200]}); "
                "write one with `python cli.py export`."
            ) from error
        properties = dict(self.session.get_modelmeta().custom_metadata_map)
        image_size = _input_size(properties.get(METADATA_KEYS["image_size"]))
        if image_size is None:
            raise WakeModelError(
                f"{self.path} has no '{METADATA_KEYS['image_size']}' metadata; "
                "export it with `python cli.py export`."
            )
        self.image_size = image_size
        available = {output.name for output in self.session.get_outputs()}
        self.output_names = [name for name in OUTPUT_NAMES if name in available]
        self.metadata: dict[str, Any] = {
            **properties,
            "format": "onnx",
            "path": str(self.path),
            "image_size": self.image_size,
            "chip_extent_m": _positive_float(properties.get(METADATA_KEYS["chip_extent_m"])),
            "tta_std_scale": _positive_float(properties.get(METADATA_KEYS["tta_std_scale"])),
            "wake_score_platt": _platt_pair(properties.get(METADATA_KEYS["wake_score_platt"])),
        }

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, ...]:
        """Run the network.

        Args:
            images: float32 ``[B, 1, S, S]`` in [0, 1].

        Returns:
            Normalised keypoints float32 ``[B, 3, 2]``, visibility probabilities
            float32 ``[B, 3]`` and, unless the file predates it, the keypoint std
            float32 ``[B, 3, 2]`` (normalised).
        """
        batch = np.ascontiguousarray(images, dtype=np.float32)
        return tuple(self.session.run(self.output_names, {INPUT_NAME: batch}))


def load_predictor(path: str | os.PathLike[str], accelerator: str = "auto") -> Predictor:
    """Open a model file as a ready-to-run predictor.

    The network, its input size and its normalisation come from the file;
    pretrained weights are never downloaded.

    Args:
        path: ``.ckpt`` written by ``train``, or ``.onnx`` written by ``export``
            (run with ONNX Runtime on the CPU; needs the ``[onnx]`` extra).
        accelerator: ``auto``, ``cpu``, ``gpu``, ``cuda`` or ``mps`` (as in
            training); ignored for ``.onnx`` files.

    Returns:
        A :class:`TorchPredictor` on the selected device, or an :class:`OnnxPredictor`.

    Raises:
        WakeModelError: The file is missing, is not a model file, or does not
            hold a wakemodel network (one line naming the file).
    """
    if Path(path).suffix.lower() == ".onnx":
        return OnnxPredictor(path)
    return _load_checkpoint(Path(path), accelerator)


def _load_checkpoint(checkpoint_path: Path, accelerator: str) -> TorchPredictor:
    """Rebuild the detector of a ``train`` checkpoint on the chosen device (no Lightning)."""
    import torch

    from wakemodel.devices import select_device
    from wakemodel.network import detector_from_checkpoint

    if not checkpoint_path.is_file():
        raise WakeModelError(f"Model checkpoint not found: {checkpoint_path}; {_CHECKPOINT_HINT}")
    if not zipfile.is_zipfile(checkpoint_path):
        raise WakeModelError(
            f"{checkpoint_path} is not a model checkpoint (not a PyTorch file); {_CHECKPOINT_HINT}"
        )
    device = torch.device(select_device(accelerator).accelerator)
    try:
        checkpoint = torch.load(checkpoint_path, map_location=device, weights_only=True)
        hyper_parameters = dict(checkpoint["hyper_parameters"])
        detector = detector_from_checkpoint(checkpoint)
    except pickle.UnpicklingError as exc:
        raise WakeModelError(
            f"{checkpoint_path} holds Python objects that safe loading (weights_only) refuses; "
            "load only checkpoints written by `train`."
        ) from exc
    except (zipfile.BadZipFile, EOFError, RuntimeError) as exc:
        raise WakeModelError(
            f"{checkpoint_path} is not a readable model checkpoint ({first_line(exc)}); "
            f"{_CHECKPOINT_HINT}"
        ) from exc
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        detail = f"no {exc} entry" if isinstance(exc, KeyError) else first_line(exc)
        raise WakeModelError(
            f"{checkpoint_path} does not hold a wakemodel network ({detail}); {_CHECKPOINT_HINT}"
        ) from exc
    image_size = hyper_parameters.get("image_size")
    if isinstance(image_size, str) or _input_size(image_size) is None:
        raise WakeModelError(
            f"{checkpoint_path} has no valid `image_size` hyperparameter; {_CHECKPOINT_HINT}"
        )
    run_dir = checkpoint.get("wakemodel_run_dir")
    metadata: dict[str, Any] = {
        "format": "ckpt",
        "path": str(checkpoint_path),
        "image_size": image_size,
        "hyper_parameters": hyper_parameters,
        "run_dir": None if run_dir is None else str(run_dir),
        "chip_extent_m": checkpoint.get(CHIP_EXTENT_KEY),
        "tta_std_scale": checkpoint.get(TTA_STD_SCALE_KEY),
        "wake_score_platt": _platt_pair(checkpoint.get(WAKE_SCORE_PLATT_KEY)),
    }
    logger.debug("Loaded %s (image size %d) on %s", checkpoint_path, image_size, device)
    return TorchPredictor(detector, image_size, device, metadata)
