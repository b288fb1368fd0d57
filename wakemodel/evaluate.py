"""Evaluation of a model on a dataset in the ShipWakes layout.

Predictions go through :func:`wakemodel.infer.predict` and errors through
:func:`wakemodel.metrics.keypoint_errors`, so evaluation measures exactly what
users get from ``infer``. The summary reports each error's median, mean and
90th percentile, and the share of chips within the thresholds published for the
ShipWakes keypoint model (Del Prete, Graziano & Renga, "Keypoints Method for
Recognition of Ship Wake Components in Sentinel-2 Images by Deep Learning",
IEEE GRSL 20, 2023): vertex error under 10 % of the wake length and heading
error under 10 degrees.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from wakemodel import calibration
from wakemodel._io import json_float
from wakemodel.calibration import DEFAULT_MIN_WAKE_SCORE
from wakemodel.infer import KeypointPredictor, Prediction, ProgressCallback, predict
from wakemodel.metrics import DEFAULT_GSD_M
from wakemodel.predictors import tta_std_scale, wake_score_platt
from wakemodel.records import WakeRecord
from wakemodel.tta import DEFAULT_TTA

if TYPE_CHECKING:
    import torch

PUBLISHED_VERTEX_ERROR_FRAC = 0.10
"""Published bound on the vertex error as a fraction of the wake length."""

PUBLISHED_HEADING_ERROR_DEG = 10.0
"""Published bound on the heading error (degrees)."""

METRIC_NAMES = (
    "vertex_error_px",
    "vertex_error_m",
    "vertex_error_frac",
    "heading_error_deg",
    "pck",
)
"""Per-sample errors from :func:`wakemodel.metrics.keypoint_errors`, in table order."""

METRIC_LABELS = {
    "vertex_error_px": "vertex error (px)",
    "vertex_error_m": "vertex error (m)",
    "vertex_error_frac": "vertex error / wake length",
    "heading_error_deg": "heading error (deg)",
    "pck": "PCK@5%",
}
"""Human-readable names of the metrics, for tables and plots."""


@dataclass
class EvaluationReport:
    """Errors of a model on one dataset.

    Attributes:
        data_dir: Dataset root (``imgs/`` + ``annotations/``).
        names: Image file names, one per sample ``[N]``.
        errors: Metric name -> per-sample values float ``[N]`` (see ``METRIC_NAMES``;
            pixels, metres, fraction of wake length, degrees, fraction of
            keypoints); NaN for chips without a wake.
        summary: Aggregate figures: ``count``, ``wakes`` and ``no_wake`` (chips
            with and without a wake), per metric ``{median, mean, p90}`` and the
            shares within the published thresholds (over the chips with a wake),
            and ``calibration`` (:func:`wakemodel.calibration.calibration_summary`).
        predictions: The model's predictions ``[N]``.
        target_keypoints_px: Ground-truth keypoints float ``[N, 3, 2]`` (pixels).
        target_visible: Ground-truth visibility bool ``[N, 3]``.
        gsd_m: Ground sampling distance used (metres per pixel).
    """

    data_dir: Path
    names: list[str]
    errors: dict[str, np.ndarray]
    summary: dict[str, Any]
    predictions: list[Prediction] = field(repr=False)
    target_keypoints_px: np.ndarray = field(repr=False)
    target_visible: np.ndarray = field(repr=False)
    gsd_m: float = DEFAULT_GSD_M
    min_wake_score: float = DEFAULT_MIN_WAKE_SCORE

    @property
    def has_wake(self) -> np.ndarray:
        """Bool ``[N]``: the annotation holds a wake (a visible vertex)."""
        return self.target_visible[:, 0]

    @property
    def heading_std_deg(self) -> np.ndarray:
        """Predicted 1-sigma heading uncertainty per chip, float ``[N]`` (degrees)."""
        return np.array([p.heading_std_deg for p in self.predictions], dtype=np.float64)

    @property
    def wake_score(self) -> np.ndarray:
        """Predicted wake score per chip, float ``[N]`` in [0, 1]."""
        return np.array([p.wake_score for p in self.predictions], dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: summary, published thresholds and per-sample errors."""
        return {
            "data_dir": str(self.data_dir),
            "gsd_m": self.gsd_m,
            "summary": _json_ready(self.summary),
            "published": {
                "vertex_error_frac_below": PUBLISHED_VERTEX_ERROR_FRAC,
                "heading_error_deg_below": PUBLISHED_HEADING_ERROR_DEG,
            },
            "min_wake_score": self.min_wake_score,
            "samples": [
                {
                    "name": name,
                    "has_wake": bool(self.has_wake[i]),
                    **{key: json_float(self.errors[key][i]) for key in METRIC_NAMES},
                    "heading_std_deg": json_float(self.predictions[i].heading_std_deg),
                    "vertex_std_px": json_float(self.predictions[i].vertex_std_px),
                    "wake_score": json_float(self.predictions[i].wake_score),
                    "wake_found": bool(self.predictions[i].wake_found),
                }
                for i, name in enumerate(self.names)
            ],
        }

    def format_table(self) -> str:
        """The summary as a plain-text table beside the published figures."""
        header = f"{'metric':<28}{'median':>10}{'mean':>10}{'p90':>10}   published"
        counted = f"{self.summary['count']} chips in {self.data_dir}"
        if self.summary["no_wake"]:
            counted += f" ({self.summary['no_wake']} without a wake; errors over the wakes)"
        lines = [counted, header, "-" * len(header)]
        published = {
            "vertex_error_frac": f"< {PUBLISHED_VERTEX_ERROR_FRAC:.0%}",
            "heading_error_deg": f"< {PUBLISHED_HEADING_ERROR_DEG:g}",
        }
        for key in METRIC_NAMES:
            stats = self.summary["metrics"][key]
            as_percent = key in ("vertex_error_frac", "pck")
            cells = "".join(
                f"{_format_number(stats[stat], as_percent):>10}"
                for stat in ("median", "mean", "p90")
            )
            lines.append(f"{METRIC_LABELS[key]:<28}{cells}   {published.get(key, '')}".rstrip())
        lines.append(
            f"{'share vertex < 10% length':<28}"
            f"{_format_number(self.summary['share_vertex_within_threshold'], True):>10}"
        )
        lines.append(
            f"{'share heading < 10 deg':<28}"
            f"{_format_number(self.summary['share_heading_within_threshold'], True):>10}"
        )
        lines.append(self.format_calibration())
        return "\n".join(lines)

    def format_calibration(self) -> str:
        """How far the uncertainties and wake scores can be trusted, beside the targets."""
        return calibration.format_calibration(self.summary["calibration"])

    def plot_calibration(self, path: str | os.PathLike[str]) -> Path:
        """Save actual heading error against predicted uncertainty, coverage and wake scores.

        Args:
            path: Output image file.

        Returns:
            The written path.
        """
        from wakemodel.plots import plot_calibration

        return plot_calibration(
            self.errors["heading_error_deg"],
            self.heading_std_deg,
            self.wake_score,
            self.has_wake,
            path,
            min_wake_score=self.min_wake_score,
        )

    def plot_predictions(
        self, path: str | os.PathLike[str], count: int = 12, *, worst: bool = False
    ) -> Path:
        """Save a grid of chips with ground truth, predictions and heading errors.

        Args:
            path: Output image file.
            count: Number of chips shown.
            worst: Show the chips with the largest heading errors (undefined
                errors first) instead of the first ones in dataset order.

        Returns:
            The written path.
        """
        from wakemodel.plots import plot_prediction_grid
        from wakemodel.preprocess import read_image

        heading_errors = self.errors["heading_error_deg"]
        if worst:
            ranked = np.where(self.has_wake, np.nan_to_num(heading_errors, nan=np.inf), -1.0)
            order = np.argsort(-ranked, kind="stable")
        else:
            order = np.arange(len(self.predictions))
        shown = order[: min(count, len(self.predictions))]
        return plot_prediction_grid(
            [read_image(Path(self.predictions[i].source)) for i in shown],
            [self.predictions[i] for i in shown],
            self.target_keypoints_px[shown],
            self.target_visible[shown],
            path,
            heading_errors_deg=[float(heading_errors[i]) for i in shown],
        )

    def plot_errors(self, path: str | os.PathLike[str]) -> Path:
        """Save the vertex and heading error distributions with the published bounds marked.

        Args:
            path: Output image file.

        Returns:
            The written path.
        """
        from wakemodel.plots import plot_error_distributions

        return plot_error_distributions(
            self.errors["vertex_error_frac"],
            self.errors["heading_error_deg"],
            path,
            vertex_threshold_frac=PUBLISHED_VERTEX_ERROR_FRAC,
            heading_threshold_deg=PUBLISHED_HEADING_ERROR_DEG,
        )


def _format_number(value: float, as_percent: bool) -> str:
    """Format a table cell; NaN shows as ``n/a``."""
    if math.isnan(value):
        return "n/a"
    return f"{value:.1%}" if as_percent else f"{value:.2f}"


def _json_ready(value: Any) -> Any:
    """Recursively replace NaN floats by None."""
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, float):
        return json_float(value)
    return value


def summarize(errors: dict[str, np.ndarray], has_wake: np.ndarray | None = None) -> dict[str, Any]:
    """Aggregate per-sample errors.

    Args:
        errors: Metric name -> float ``[N]`` (NaN where undefined, ignored).
        has_wake: Bool ``[N]``, the chips whose annotation holds a wake; the
            others (NaN errors) are left out of the shares. Default: all.

    Returns:
        ``{"count": N, "wakes": chips with a wake, "no_wake": chips without,
        "metrics": {name: {"median", "mean", "p90"}},
        "share_vertex_within_threshold": fraction of the chips with a wake
        whose vertex error is under 10 % of the wake length,
        "share_heading_within_threshold": fraction with heading error under 10
        degrees}``; undefined errors of chips with a wake count as outside the
        thresholds.
    """
    count = len(next(iter(errors.values()))) if errors else 0
    has_wake = np.ones(count, dtype=bool) if has_wake is None else np.asarray(has_wake, bool)
    wakes = int(has_wake.sum())
    stats: dict[str, dict[str, float]] = {}
    for key in METRIC_NAMES:
        values = np.asarray(errors[key], dtype=np.float64)
        finite = values[np.isfinite(values)]
        stats[key] = (
            {
                "median": float(np.median(finite)),
                "mean": float(np.mean(finite)),
                "p90": float(np.percentile(finite, 90)),
            }
            if finite.size
            else {"median": math.nan, "mean": math.nan, "p90": math.nan}
        )
    vertex_frac = np.nan_to_num(errors["vertex_error_frac"][has_wake], nan=np.inf)
    heading = np.nan_to_num(errors["heading_error_deg"][has_wake], nan=np.inf)
    return {
        "count": count,
        "wakes": wakes,
        "no_wake": count - wakes,
        "metrics": stats,
        "share_vertex_within_threshold": float(np.mean(vertex_frac < PUBLISHED_VERTEX_ERROR_FRAC))
        if wakes
        else math.nan,
        "share_heading_within_threshold": float(np.mean(heading < PUBLISHED_HEADING_ERROR_DEG))
        if wakes
        else math.nan,
    }


def evaluate(
    model: KeypointPredictor | torch.nn.Module | str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    *,
    batch_size: int = 16,
    tta: bool = DEFAULT_TTA,
    gsd_m: float = DEFAULT_GSD_M,
    accelerator: str = "auto",
    limit: int | None = None,
    min_wake_score: float = DEFAULT_MIN_WAKE_SCORE,
    progress: ProgressCallback | None = None,
    devices: int = 1,
) -> EvaluationReport:
    """Predict every chip of a dataset and measure the errors.

    Chips are streamed batch by batch (:func:`wakemodel.infer.iter_predictions`);
    only the annotations, the predictions and the errors are kept.

    Args:
        model: A checkpoint path, a loaded ``WakeKeypointModule`` or any
            :class:`~wakemodel.infer.KeypointPredictor`.
        data_dir: Dataset root in the ShipWakes layout (``imgs/``, ``annotations/``).
        batch_size: Chips per network call.
        tta: Combine predictions over the 8 dihedral transforms.
        gsd_m: Ground sampling distance (metres per pixel).
        accelerator: Device choice when ``model`` is a path.
        limit: Evaluate only the first ``limit`` chips (in dataset order); None: all.
        min_wake_score: Wake-score threshold of ``wake_found`` and of the wake
            recall / rejection figures.
        progress: Called as ``progress(done, total)`` after each batch of chips
            (see :data:`wakemodel.infer.ProgressCallback`).
        devices: Above 1, a ``.ckpt`` model runs on that many devices (GPUs, or
            CPU processes) through Lightning's predict loop.

    Returns:
        The per-sample errors and their summary.

    Raises:
        WakeModelError: The dataset is empty or unreadable, or the model cannot be loaded.
        InputError: ``devices`` is above 1 for an ONNX or in-memory model.
    """
    from wakemodel.infer import _check_devices
    from wakemodel.records import scan_dataset

    _check_devices(model, devices)  # before the dataset scan: a bad option fails at once
    root = Path(data_dir)
    return evaluate_records(
        model,
        scan_dataset(root)[:limit],
        data_dir=root,
        batch_size=batch_size,
        tta=tta,
        gsd_m=gsd_m,
        accelerator=accelerator,
        min_wake_score=min_wake_score,
        progress=progress,
        devices=devices,
    )


def evaluate_records(
    model: KeypointPredictor | torch.nn.Module | str | os.PathLike[str],
    records: Sequence[WakeRecord],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 16,
    tta: bool = DEFAULT_TTA,
    gsd_m: float = DEFAULT_GSD_M,
    accelerator: str = "auto",
    min_wake_score: float = DEFAULT_MIN_WAKE_SCORE,
    progress: ProgressCallback | None = None,
    devices: int = 1,
) -> EvaluationReport:
    """:func:`evaluate` on annotated chips already scanned (a split, a subset).

    Args:
        model: As in :func:`evaluate`.
        records: The chips (:func:`wakemodel.records.scan_dataset`), at least one.
        data_dir: Folder named in the report; default: the first chip's dataset root.
        batch_size: Chips per network call.
        tta: Combine predictions over the 8 dihedral transforms.
        gsd_m: Ground sampling distance (metres per pixel).
        accelerator: Device choice when ``model`` is a path.
        min_wake_score: Wake-score threshold (as in :func:`evaluate`).
        progress: Called as ``progress(done, total)`` after each batch of chips.
        devices: Devices for a ``.ckpt`` model (as in :func:`evaluate`).

    Returns:
        The per-sample errors and their summary, in the order of ``records``.
    """
    from wakemodel import metrics

    predictions = predict(
        model,
        [record.image_path for record in records],
        batch_size=batch_size,
        tta=tta,
        gsd_m=gsd_m,
        accelerator=accelerator,
        min_wake_score=min_wake_score,
        progress=progress,
        devices=devices,
    )
    orig_size = np.array([[r.width, r.height] for r in records], dtype=np.float32)
    target_px = np.stack([r.keypoints_px for r in records]).astype(np.float32)
    target_visible = np.stack([r.visible for r in records]).astype(bool)
    pred_px = np.stack([p.keypoints_px for p in predictions]).astype(np.float32)
    scale = orig_size[:, None, :]
    per_sample = metrics.keypoint_errors(
        pred_px / scale,
        np.stack([p.visible for p in predictions]),
        target_px / scale,
        target_visible,
        orig_size,
        gsd_m=gsd_m,
    )
    errors = {key: np.asarray(per_sample[key], dtype=np.float64) for key in METRIC_NAMES}
    report = EvaluationReport(
        data_dir=Path(data_dir) if data_dir is not None else records[0].image_path.parent.parent,
        names=[record.image_path.name for record in records],
        errors=errors,
        summary=summarize(errors, target_visible[:, 0]),
        predictions=predictions,
        target_keypoints_px=target_px,
        target_visible=target_visible,
        gsd_m=gsd_m,
        min_wake_score=min_wake_score,
    )
    report.summary["calibration"] = calibration.calibration_summary(
        errors["heading_error_deg"],
        report.heading_std_deg,
        report.wake_score,
        report.has_wake,
        min_wake_score=min_wake_score,
    )
    return report


class TtaCalibration(NamedTuple):
    """What ``train`` fits on the validation split with the 8 views combined.

    Attributes:
        std_scale: Factor on the 8-view keypoint std
            (:data:`wakemodel.predictors.TTA_STD_SCALE_KEY`).
        wake_score_platt: Platt scaling ``(a, b)`` of the wake score
            (:data:`wakemodel.predictors.WAKE_SCORE_PLATT_KEY`); None when the
            split has fewer than 5 chips without a wake (or with one).
    """

    std_scale: float
    wake_score_platt: tuple[float, float] | None


def fit_tta_calibration(
    model: KeypointPredictor | torch.nn.Module | str | os.PathLike[str],
    records: Sequence[WakeRecord],
    *,
    batch_size: int = 16,
    accelerator: str = "auto",
) -> TtaCalibration:
    """The 8-view calibration of a model, fitted on annotated chips (a validation split).

    The model predicts ``records`` with its 8 views combined. The std factor
    makes the 90 % heading intervals of the combined std hold at least 90 % of
    those chips' heading errors (:func:`wakemodel.calibration.fit_std_scale`);
    the Platt scaling makes the wake score a probability on them
    (:func:`wakemodel.calibration.fit_wake_score_platt`). Both are fitted to the
    model's outputs before its current calibration (the std exactly below the
    :data:`~wakemodel.keypoints.HEADING_STD_MAX_DEG` cap).

    Args:
        model: As in :func:`evaluate`.
        records: Annotated chips the model did not train on.
        batch_size: Chips per network call.
        accelerator: Device choice when ``model`` is a path.

    Returns:
        The std factor (1.0 with fewer than 3 chips with a readable heading) and
        the Platt scaling (or None).
    """
    from wakemodel.infer import as_predictor

    predictor = as_predictor(model, accelerator)
    report = evaluate_records(predictor, records, batch_size=batch_size, tta=True)
    raw_std_deg = report.heading_std_deg / tta_std_scale(predictor)
    raw_wake_score = calibration.invert_wake_score_platt(
        report.wake_score, wake_score_platt(predictor)
    )
    return TtaCalibration(
        std_scale=calibration.fit_std_scale(report.errors["heading_error_deg"], raw_std_deg),
        wake_score_platt=calibration.fit_wake_score_platt(raw_wake_score, report.has_wake),
    )


def find_training_log(checkpoint: str | os.PathLike[str]) -> Path | None:
    """Find the ``metrics.csv`` of the run that wrote ``checkpoint``.

    A checkpoint written by ``train`` records its run folder
    (``checkpoint["wakemodel_run_dir"]``); that folder's ``metrics.csv`` is
    used when it exists. Otherwise (a moved or older checkpoint, an ONNX file)
    the checkpoint's folder and its parent are searched, which finds
    ``runs/NAME/metrics.csv`` for ``runs/NAME/checkpoints/*.ckpt``.

    Args:
        checkpoint: Checkpoint (or model) file.

    Returns:
        The CSV path, or None when there is none.
    """
    path = Path(checkpoint)
    candidates = []
    recorded = _recorded_run_dir(path)
    if recorded is not None:
        candidates.append(recorded / "metrics.csv")
    candidates += [path.parent / "metrics.csv", path.parent.parent / "metrics.csv"]
    return next((candidate for candidate in candidates if candidate.is_file()), None)


def _recorded_run_dir(checkpoint: Path) -> Path | None:
    """The run folder stamped into a ``train`` checkpoint, or None (not a readable checkpoint)."""
    if checkpoint.suffix.lower() != ".ckpt" or not checkpoint.is_file():
        return None
    import pickle

    import torch

    try:
        stamp = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True).get(
            "wakemodel_run_dir"
        )
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, AttributeError):
        return None
    return None if stamp is None else Path(stamp)
