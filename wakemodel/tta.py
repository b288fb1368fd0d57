"""Test-time augmentation: the 8 flips/rotations of a square network input.

:func:`predict_batch` runs a model backend on a batch, optionally under the 8
dihedral transforms, maps every view's keypoints (and their spread) back
exactly, aligns the wake ends of each view with those of the plain prediction
(:func:`wakemodel.keypoints.match_arm_order`) and combines them: keypoints by
their per-coordinate median (:func:`consensus`), visibility by its mean. numpy
only, so the ONNX path and the multi-device predict loop share it without torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from wakemodel import keypoints as kp
from wakemodel.calibration import apply_wake_score_platt
from wakemodel.predictors import KeypointPredictor, tta_std_scale, wake_score_platt

__all__ = [
    "DEFAULT_TTA",
    "as_numpy",
    "calibrated_visibility",
    "consensus",
    "dihedral_transforms",
    "predict_batch",
    "predict_views",
    "run_predictor",
    "transform_images",
    "untransform_keypoints",
    "untransform_spread",
]


DEFAULT_TTA = True
"""Whether ``infer``, ``evaluate`` and their Python functions combine the 8 views by default.

On the CPU-trained models of ``benchmarks/README.md`` the views' median cut the median heading
error by 20-45 % and its p90 by up to a third (not at all on the weakest model) for 8x the
network time; ``--no-tta`` gives one view.
"""


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


def untransform_spread(keypoint_std: np.ndarray, transform: tuple[bool, bool, bool]) -> np.ndarray:
    """Map per-axis keypoint std ``[..., 2]`` predicted on a transformed input back.

    Mirrors leave a spread unchanged; a transpose swaps the x and y spreads.
    """
    return keypoint_std[..., ::-1] if transform[0] else keypoint_std


def as_numpy(value: Any) -> np.ndarray:
    """A float64 numpy copy of a numpy array or torch tensor."""
    if hasattr(value, "detach"):
        value = value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def run_predictor(
    predictor: KeypointPredictor, images: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run ``predictor`` on float ``[B,1,S,S]``: keypoints, visibility, keypoint std.

    A backend that returns no keypoint std gets NaN (unknown) std ``[B,3,2]``.
    """
    keypoints, visibility, *rest = predictor(images)
    keypoints = as_numpy(keypoints)
    keypoint_std = as_numpy(rest[0]) if rest else np.full_like(keypoints, np.nan)
    return keypoints, as_numpy(visibility), keypoint_std


def predict_views(
    predictor: KeypointPredictor, images: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predict a batch under the 8 dihedral views and map every view back, kept apart.

    Each view's keypoints (and spread) are mapped back exactly and its two wake
    ends aligned with those of the plain view (their order is meaningless) with
    :func:`wakemodel.keypoints.match_arm_order`.

    Args:
        predictor: The model backend.
        images: float32 ``[B, 1, S, S]`` network inputs in [0, 1].

    Returns:
        Normalised keypoints ``[8, B, 3, 2]``, visibility probabilities
        ``[8, B, 3]`` and keypoint std ``[8, B, 3, 2]`` (NaN when the backend
        gives none), the plain view first.
    """
    reference, reference_visibility, reference_std = run_predictor(predictor, images)
    all_slots = np.ones(reference.shape[:-1], dtype=bool)
    keypoints, visibility, keypoint_std = [reference], [reference_visibility], [reference_std]
    for transform in dihedral_transforms()[1:]:
        predicted, view_visibility, view_std = run_predictor(
            predictor, transform_images(images, transform)
        )
        restored = untransform_keypoints(predicted, transform)
        order = kp.match_arm_order(reference, restored, all_slots)
        keypoints.append(kp.permute_slots(restored, order))
        visibility.append(kp.permute_slots(view_visibility, order))
        keypoint_std.append(kp.permute_slots(untransform_spread(view_std, transform), order))
    return np.stack(keypoints), np.stack(visibility), np.stack(keypoint_std)


def consensus(view_keypoints: np.ndarray) -> np.ndarray:
    """The views' agreed keypoints: the per-coordinate median over the views.

    A median, not a mean, so one view that put a keypoint on the wrong wake
    component moves the consensus little. Measured on 200 held-out synthetic
    chips with four CPU-trained models (benchmarks/README.md, "Test-time
    augmentation"): the median gave a lower or equal share of headings more
    than 90 degrees off than the mean with every model, and a lower vertex error
    and more pseudo-labels within 10 degrees and 5 % of the wake length.

    Args:
        view_keypoints: Keypoints of the views ``[V, ..., 3, 2]`` (any unit),
            arm slots aligned.

    Returns:
        ``[..., 3, 2]`` in the same unit.
    """
    return np.median(view_keypoints, axis=0)


def predict_batch(
    predictor: KeypointPredictor, images: np.ndarray, *, tta: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predict on one batch of network inputs, optionally with dihedral TTA.

    With ``tta`` the 8 dihedral views (:func:`predict_views`) are combined:
    keypoints by their :func:`consensus`, visibility probabilities by their
    mean; the keypoint std then combines both sources of doubt: the root mean
    square of the views' own std and the views' root-mean-square deviation from
    the consensus, per coordinate, times the model's 8-view calibration
    factor (:func:`wakemodel.predictors.tta_std_scale`, fitted by ``train`` on
    the validation split; 1.0 for a model without one). With or without the
    views, the wake score is then Platt-scaled (:func:`calibrated_visibility`).
    numpy only.

    Args:
        predictor: The model backend.
        images: float32 ``[B, 1, S, S]`` in [0, 1].
        tta: Combine the 8 dihedral transforms.

    Returns:
        Normalised keypoints float ``[B, 3, 2]``, visibility probabilities
        ``[B, 3]`` (slot 0: the wake score) and the std of each keypoint's x and
        y ``[B, 3, 2]`` (normalised; NaN when the backend gives none).
    """
    if not tta:
        keypoints, visibility, keypoint_std = run_predictor(predictor, images)
        return keypoints, calibrated_visibility(predictor, visibility), keypoint_std
    view_keypoints, view_visibility, view_std = predict_views(predictor, images)
    agreed = consensus(view_keypoints)
    spread_variance = np.mean(np.square(view_std), axis=0) + np.mean(
        np.square(view_keypoints - agreed), axis=0
    )
    combined_std = np.sqrt(spread_variance) * tta_std_scale(predictor)
    return agreed, calibrated_visibility(predictor, np.mean(view_visibility, axis=0)), combined_std


def calibrated_visibility(predictor: KeypointPredictor, visibility: np.ndarray) -> np.ndarray:
    """Visibility probabilities ``[..., 3]`` with the wake score (slot 0) Platt-scaled.

    Uses the model's :func:`wakemodel.predictors.wake_score_platt`; without one
    (or for the end slots) the probabilities are returned as they are.

    Args:
        predictor: The model backend.
        visibility: Probabilities ``[..., 3]`` in [0, 1].

    Returns:
        A new array of the same shape.
    """
    platt = wake_score_platt(predictor)
    calibrated = np.array(visibility)
    if platt is not None:
        calibrated[..., kp.VERTEX_SLOT] = apply_wake_score_platt(
            calibrated[..., kp.VERTEX_SLOT], platt
        )
    return calibrated
