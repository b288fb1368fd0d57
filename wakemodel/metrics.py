"""Keypoint metrics: vertex error, heading, wake length and PCK.

The geometry functions take numpy arrays or torch tensors alike and return the
same kind (ONNX inference uses them without importing torch); :func:`pck` and
:func:`keypoint_errors` take torch tensors. All functions take keypoints
``[..., 3, 2]`` as (x, y) with slot 0 = wake vertex and slots 1, 2 = far ends
(order meaningless), plus a bool ``visible`` mask ``[..., 3]``; invisible slots
are never read. Pixel coordinates are in the ORIGINAL chip (x right, y down).
Headings are compass bearings in degrees [0, 360): north = image up, east =
image right, clockwise, from the far-end point towards the vertex.
:func:`keypoint_errors` is the single entry point used by the Lightning module
and by the evaluation.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

DEFAULT_GSD_M = 10.0
PCK_THRESHOLD = 0.05

Array = TypeVar("Array", np.ndarray, "Tensor")
"""A numpy array or a torch tensor; functions return the kind they are given."""


def _namespace(array: Any) -> ModuleType:
    """``torch`` for a torch tensor, else ``numpy`` (the functions used exist in both)."""
    if type(array).__module__.startswith("torch"):
        import torch

        return torch
    return np


def _cast(values: Array, like: Array) -> Array:
    """``values`` with the dtype of ``like`` (same kind of array, same device)."""
    return _namespace(values).asarray(values, dtype=like.dtype)


def _length(delta: Array) -> Array:
    """Euclidean length of ``[..., 2]`` vectors, ``[...]``."""
    return _namespace(delta).hypot(delta[..., 0], delta[..., 1])


def to_pixels(keypoints_norm: Array, orig_size: Array) -> Array:
    """Map normalised keypoints to pixels of the original chip.

    Args:
        keypoints_norm: ``[..., K, 2]`` (x / width, y / height).
        orig_size: ``[..., 2]`` original chip (width_px, height_px).

    Returns:
        ``[..., K, 2]`` keypoints in original pixels.
    """
    return keypoints_norm * _cast(orig_size, keypoints_norm)[..., None, :]


def far_end_px(keypoints_px: Array, visible: Array) -> Array:
    """Mean of the visible far-end keypoints (slots 1 and 2).

    Args:
        keypoints_px: ``[..., 3, 2]`` keypoints in pixels.
        visible: Bool ``[..., 3]``.

    Returns:
        ``[..., 2]`` far-end point in pixels; NaN where no far end is visible.
    """
    xp = _namespace(keypoints_px)
    ends = keypoints_px[..., 1:, :]
    ends_visible = visible[..., 1:, None]
    total = xp.where(ends_visible, ends, 0.0).sum(-2)
    count = _cast(ends_visible.sum(-2), keypoints_px)
    mean = total / xp.clip(count, 1, None)
    return xp.where(count > 0, mean, math.nan)


def heading_deg(keypoints_px: Array, visible: Array) -> Array:
    """Compass bearing from the far-end point towards the vertex.

    Args:
        keypoints_px: ``[..., 3, 2]`` keypoints in original pixels (y down).
        visible: Bool ``[..., 3]``.

    Returns:
        ``[...]`` heading in degrees [0, 360), 0 = north (image up), 90 = east;
        NaN where no far end is visible.
    """
    xp = _namespace(keypoints_px)
    delta = keypoints_px[..., 0, :] - far_end_px(keypoints_px, visible)
    bearing = xp.rad2deg(xp.arctan2(delta[..., 0], -delta[..., 1]))
    return xp.remainder(bearing, 360.0)


def angular_error_deg(a: Array, b: Array) -> Array:
    """Smallest absolute difference between two bearings.

    Args:
        a: ``[...]`` bearings in degrees (any range).
        b: ``[...]`` bearings in degrees (any range).

    Returns:
        ``[...]`` absolute angular difference in degrees [0, 180].
    """
    xp = _namespace(a)
    return xp.abs(xp.remainder(a - b + 180.0, 360.0) - 180.0)


def wake_length_px(keypoints_px: Array, visible: Array) -> Array:
    """Distance from the vertex to the far-end point.

    Args:
        keypoints_px: ``[..., 3, 2]`` keypoints in original pixels.
        visible: Bool ``[..., 3]``.

    Returns:
        ``[...]`` wake length in pixels; NaN where no far end is visible.
    """
    return _length(keypoints_px[..., 0, :] - far_end_px(keypoints_px, visible))


def vertex_error_px(pred_px: Array, target_px: Array) -> Array:
    """Euclidean distance between predicted and target vertex (slot 0).

    Args:
        pred_px: ``[..., 3, 2]`` predicted keypoints in original pixels.
        target_px: ``[..., 3, 2]`` target keypoints in original pixels.

    Returns:
        ``[...]`` vertex error in pixels.
    """
    return _length(pred_px[..., 0, :] - target_px[..., 0, :])


def pck(
    pred_px: Tensor,
    target_px: Tensor,
    visible: Tensor,
    diagonal_px: Tensor,
    threshold: float = PCK_THRESHOLD,
) -> Tensor:
    """Percentage of correct keypoints: visible targets within ``threshold * diagonal``.

    The arm order of the target is matched to the prediction first
    (:func:`wakemodel.losses.match_arm_order`), so the input arm order does not matter.

    Args:
        pred_px: ``[..., 3, 2]`` predicted keypoints in original pixels.
        target_px: ``[..., 3, 2]`` target keypoints in original pixels.
        visible: Bool ``[..., 3]`` target visibility.
        diagonal_px: ``[...]`` chip diagonal in pixels.
        threshold: Distance threshold as a fraction of the diagonal.

    Returns:
        ``[...]`` fraction in [0, 1] of the visible target keypoints that are
        correct; NaN where no keypoint is visible.
    """
    import torch

    from wakemodel.losses import match_arm_order, permute_slots

    order = match_arm_order(pred_px, target_px, visible)
    target_px = permute_slots(target_px, order)
    visible = permute_slots(visible, order)
    distance = _length(pred_px - target_px)
    correct = (distance <= threshold * diagonal_px.unsqueeze(-1)) & visible
    count = visible.sum(dim=-1).to(pred_px.dtype)
    fraction = correct.sum(dim=-1).to(pred_px.dtype) / count.clamp(min=1)
    return torch.where(count > 0, fraction, math.nan)


def predicted_visibility(visibility_prob: Array, threshold: float = 0.5) -> Array:
    """Turn predicted visibility probabilities into a mask with at least one far end.

    The vertex (slot 0) is always visible; a far end is visible when its
    probability exceeds ``threshold``; if neither is, the more confident one is.

    Args:
        visibility_prob: ``[..., 3]`` probabilities in [0, 1] (a bool mask also works).
        threshold: Probability above which a far end counts as visible.

    Returns:
        Bool ``[..., 3]`` visibility mask.
    """
    xp = _namespace(visibility_prob)
    arm_prob = xp.asarray(visibility_prob[..., 1:], dtype=xp.float32)
    arms = arm_prob > threshold
    best = arm_prob.argmax(-1)
    best_arm = xp.stack([best == 0, best == 1], -1)
    arms = xp.where(arms.any(-1)[..., None], arms, best_arm)
    vertex = xp.ones_like(arms[..., :1])
    return xp.concatenate([vertex, arms], -1)


def keypoint_errors(
    pred_norm: Tensor,
    pred_visible: Tensor,
    target_norm: Tensor,
    target_visible: Tensor,
    orig_size: Tensor,
    gsd_m: float = DEFAULT_GSD_M,
) -> dict[str, Tensor]:
    """Per-sample errors of a batch of predictions, in original-chip units.

    Args:
        pred_norm: ``[B, 3, 2]`` predicted normalised keypoints.
        pred_visible: ``[B, 3]`` predicted visibility probabilities (or a bool
            mask); see :func:`predicted_visibility` for the far ends used.
        target_norm: ``[B, 3, 2]`` target normalised keypoints.
        target_visible: Bool ``[B, 3]`` target visibility.
        orig_size: ``[B, 2]`` original chip (width_px, height_px).
        gsd_m: Ground sampling distance in metres per pixel.

    Returns:
        Dict of float ``[B]`` tensors: ``vertex_error_px`` (pixels),
        ``vertex_error_m`` (metres), ``vertex_error_frac`` (vertex error / true
        wake length), ``heading_error_deg`` (degrees [0, 180]) and ``pck``
        (fraction of visible keypoints within 5 % of the chip diagonal).
        Entries are NaN where undefined (no visible far end).
    """
    pred_norm = pred_norm.float()
    target_norm = target_norm.float()
    orig_size = orig_size.float()
    target_visible = target_visible.bool()
    pred_px = to_pixels(pred_norm, orig_size)
    target_px = to_pixels(target_norm, orig_size)
    vertex_px = vertex_error_px(pred_px, target_px)
    pred_heading = heading_deg(pred_px, predicted_visibility(pred_visible))
    target_heading = heading_deg(target_px, target_visible)
    diagonal_px = _length(orig_size)
    return {
        "vertex_error_px": vertex_px,
        "vertex_error_m": vertex_px * gsd_m,
        "vertex_error_frac": vertex_px / wake_length_px(target_px, target_visible),
        "heading_error_deg": angular_error_deg(pred_heading, target_heading),
        "pck": pck(pred_px, target_px, target_visible, diagonal_px),
    }
