"""ONNX export and int8 quantisation of a trained model, and an ONNX Runtime predictor.

:func:`export_onnx` turns a ``train`` checkpoint into a self-contained ONNX file:

- input ``images``: float32 ``[B, 1, S, S]`` in [0, 1] (``uint8`` from
  :func:`wakemodel.preprocess.preprocess_image` divided by 255), dynamic batch ``B``;
- outputs ``keypoints``: float32 ``[B, 3, 2]`` normalised (x, y) in [0, 1], and
  ``visibility``: float32 ``[B, 3]`` probabilities in [0, 1];
- the grey mean/std normalisation is inside the graph, and the input side S,
  the preprocessing and the normalisation are stored in ``metadata_props``
  (keys in :data:`METADATA_KEYS`), so inference needs nothing but the file.

With ``int8`` the weights are quantised with ONNX Runtime's dynamic quantiser
(:func:`onnxruntime.quantization.quantize_dynamic`, unsigned 8-bit weights and
activations, per-channel scales; activation ranges are computed at run time);
the stem and the depthwise convolutions stay in float. The file is about 3x
smaller; on x86 CPUs without VNNI it is not faster than fp32 (see
``benchmarks/README.md``).

:class:`wakemodel.predictors.OnnxPredictor` (also importable here under its
old name ``OnnxKeypointPredictor``) runs such a file with ONNX Runtime, so
:func:`wakemodel.infer.predict` (and the ``infer`` CLI) accept ``.onnx`` models;
the input/output contract constants live in :mod:`wakemodel.predictors`. onnx,
onnxruntime and onnxscript are the optional extra ``wakemodel[onnx]``; they are
imported only when used, and their absence is a one-line
:class:`~wakemodel.errors.WakeModelError`.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wakemodel import __version__
from wakemodel._io import atomic_path
from wakemodel.errors import InputError
from wakemodel.predictors import (
    INPUT_NAME,
    METADATA_KEYS,
    OUTPUT_NAMES,
    OnnxPredictor,
    TorchPredictor,
    chip_extent_m,
    load_predictor,
    wake_score_platt,
)
from wakemodel.predictors import require as _require

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

__all__ = [
    "INPUT_NAME",
    "METADATA_KEYS",
    "OPSET_VERSION",
    "OUTPUT_NAMES",
    "OnnxKeypointPredictor",
    "export_onnx",
]

OPSET_VERSION = 18
"""ONNX opset of the exported graph."""

OnnxKeypointPredictor = OnnxPredictor
"""The ONNX Runtime backend (:class:`wakemodel.predictors.OnnxPredictor`), by its old name."""


def _metadata(predictor: TorchPredictor, precision: str, source: Path) -> dict[str, str]:
    """The ``metadata_props`` of an exported model (all values are strings)."""
    from wakemodel import network, preprocess

    image_size = predictor.image_size
    platt = wake_score_platt(predictor)
    known = {
        METADATA_KEYS[key]: repr(value)
        for key, value in (
            ("chip_extent_m", chip_extent_m(predictor)),
            ("tta_std_scale", predictor.metadata.get("tta_std_scale")),
            ("wake_score_platt", None if platt is None else list(platt)),
        )
        if value is not None
    }
    return {
        **known,
        METADATA_KEYS["image_size"]: str(image_size),
        METADATA_KEYS["input_scale"]: repr(1.0 / 255.0),
        METADATA_KEYS["preprocessing"]: (
            "grey chip -> percentile stretch "
            f"(p{preprocess.LOW_PERCENTILE:g} -> 0, p{preprocess.HIGH_PERCENTILE:g} -> 1, "
            "clipped) -> "
            f"antialiased bilinear resize to {image_size}x{image_size} -> uint8 -> / 255 "
            "(wakemodel.preprocess.preprocess_image)"
        ),
        METADATA_KEYS["normalization"]: (
            f"inside the graph: (x - {network.GREY_MEAN}) / {network.GREY_STD}"
        ),
        METADATA_KEYS["outputs"]: (
            "keypoints [B,3,2] (x, y) normalised by the original width and height, "
            "read in a window around each heatmap's mode, "
            "slot 0 vertex, slots 1-2 wake ends; visibility [B,3] probabilities "
            "(slot 0: wake score, before the Platt scaling "
            f"{METADATA_KEYS['wake_score_platt']} [a, b] when present: "
            "sigmoid(a * logit(score) + b)); keypoint_std [B,3,2] calibrated 1-sigma x, y spread, "
            "normalised like keypoints (the 8 flips/rotations combined: times "
            f"{METADATA_KEYS['tta_std_scale']}, see wakemodel.tta.predict_batch)"
        ),
        METADATA_KEYS["precision"]: precision,
        METADATA_KEYS["version"]: __version__,
        METADATA_KEYS["source"]: source.name,
    }


def _export_module(detector: torch.nn.Module) -> torch.nn.Module:
    """Wrap a detector so its forward returns the :data:`OUTPUT_NAMES` outputs, in order."""
    import torch

    class _Exported(torch.nn.Module):
        def __init__(self, network: torch.nn.Module) -> None:
            super().__init__()
            self.network = network

        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            keypoints, visibility_logits, keypoint_std = self.network(images)
            return keypoints, torch.sigmoid(visibility_logits), keypoint_std

    return _Exported(detector).eval()


def _write_fp32(detector: torch.nn.Module, image_size: int, path: Path) -> None:
    """Export ``detector`` to ``path`` with a dynamic batch axis (TorchScript exporter).

    The TorchScript-based exporter (``dynamo=False``) is used: with torch 2.15 and
    onnx 1.23 it writes a graph that ONNX Runtime runs as fast as the dynamo
    export's, in a third of the time, without onnxscript's optimiser passes.
    """
    import torch

    _require("onnx")
    example = torch.rand(2, 1, image_size, image_size)
    torch.onnx.export(
        _export_module(detector),
        (example,),
        str(path),
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        dynamic_axes={INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in OUTPUT_NAMES}},
        opset_version=OPSET_VERSION,
        dynamo=False,
    )


def _float_convolutions(model_proto: Any) -> list[str]:
    """Names of the Conv nodes kept in float by the int8 export.

    These are the stem (its 1-channel input carries the whole image, so 8-bit
    activations cost most accuracy there, for 288 weights) and the depthwise
    convolutions (``group > 1``): they hold about 1% of the weights, and ONNX
    Runtime's ``ConvInteger`` runs them several times slower than float.
    """
    convolutions = [node for node in model_proto.graph.node if node.op_type == "Conv"]
    grouped = [
        node.name
        for node in convolutions
        if any(attribute.name == "group" and attribute.i > 1 for attribute in node.attribute)
    ]
    return [convolutions[0].name, *grouped] if convolutions else grouped


def _quantize_int8(fp32_path: Path, int8_path: Path) -> None:
    """Quantise an fp32 ONNX file to int8 with ONNX Runtime's dynamic quantiser.

    Weights get per-output-channel uint8 scales; activations are quantised at
    run time. See :func:`_float_convolutions` for the convolutions left in float.
    """
    onnx = _require("onnx")
    quantization = _require("onnxruntime.quantization")
    shape_inference = _require("onnxruntime.quantization.shape_inference")
    with tempfile.TemporaryDirectory(prefix="wakemodel-quant-") as folder:
        prepared = Path(folder) / "prepared.onnx"
        shape_inference.quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantization.quantize_dynamic(
            prepared,
            int8_path,
            weight_type=quantization.QuantType.QUInt8,
            per_channel=True,
            nodes_to_exclude=_float_convolutions(onnx.load(str(prepared))),
        )


def _set_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Replace the ``metadata_props`` of the ONNX file at ``path`` (in place)."""
    onnx = _require("onnx")
    model_proto = onnx.load(str(path))
    del model_proto.metadata_props[:]
    for key, value in metadata.items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model_proto, str(path))


def export_onnx(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    int8: bool = False,
) -> Path:
    """Export a ``train`` checkpoint to ONNX (fp32, or int8 with ``int8``).

    Args:
        checkpoint: Lightning ``.ckpt`` written by ``train``.
        out: Destination ``.onnx`` file (written atomically; folders are created).
        int8: Quantise weights and activations to 8 bits (dynamic quantisation).

    Returns:
        ``out``.

    Raises:
        WakeModelError: The checkpoint is missing or unreadable, or the ONNX
            extra is not installed.
        InputError: ``out`` does not end in ``.onnx``.
    """
    out_path = Path(out)
    if out_path.suffix.lower() != ".onnx":
        raise InputError(f"--out {out_path}: the file name must end in .onnx.")
    _require("onnx")
    if int8:
        _require("onnxruntime")
    predictor = load_predictor(checkpoint, accelerator="cpu")
    if not isinstance(predictor, TorchPredictor):
        raise InputError(f"{checkpoint}: export needs a .ckpt checkpoint written by `train`.")
    detector = predictor.module.float().to(memory_format=_contiguous_format())
    metadata = _metadata(predictor, "int8" if int8 else "fp32", Path(checkpoint))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with (
        atomic_path(out_path) as tmp,
        tempfile.TemporaryDirectory(prefix="wakemodel-export-") as folder,
    ):
        fp32_path = Path(folder) / "fp32.onnx" if int8 else Path(tmp)
        _write_fp32(detector, predictor.image_size, fp32_path)
        if int8:
            _quantize_int8(fp32_path, Path(tmp))
        _set_metadata(Path(tmp), metadata)
    logger.info("Exported %s to %s (%s)", checkpoint, out_path, "int8" if int8 else "fp32")
    return out_path


def _contiguous_format() -> torch.memory_format:
    """``torch.contiguous_format`` (channels-first weights export the plainest graph)."""
    import torch

    return torch.contiguous_format
