"""Keypoint metrics: vertex error, heading error and PCK.

The keypoint geometry (pixels, far end, heading, wake length, angular
difference, visibility rule) lives in :mod:`wakemodel.keypoints` and is
re-exported here under its historical names. Every function takes numpy arrays
or torch tensors alike and returns the same kind, so evaluation of an ONNX
model needs no torch. All functions take keypoints ``[..., 3, 2]`` as (x, y)
with slot 0 = wake vertex and slots 1, 2 = far ends (order meaningless), plus a
bool ``visible`` mask ``[..., 3]``; invisible slots are never read. Pixel
coordinates are in the ORIGINAL chip (x right, y down). :func:`keypoint_errors`
is the single entry point used by the Lightning module and by the evaluation.
"""

from __future__ import annotations

import math
from typing import Any

from wakemodel.keypoints import (
    Array,
    far_end_px,
    heading_deg,
    length,
    match_arm_order,
    namespace,
    permute_slots,
    predicted_visibility,
    to_pixels,
    wake_length_px,
)
from wakemodel.keypoints import angle_difference_deg as angular_error_deg

__all__ = [
    "DEFAULT_GSD_M",
    "PCK_THRESHOLD",
    "angular_error_deg",
    "far_end_px",
    "heading_deg",
    "keypoint_errors",
    "pck",
    "predicted_visibility",
    "to_pixels",
    "vertex_error_px",
    "wake_length_px",
]

DEFAULT_GSD_M = 10.0
"""Sentinel-2 visible-band ground sampling distance (metres per pixel), the default everywhere."""

PCK_THRESHOLD = 0.05
"""PCK distance threshold as a fraction of the chip diagonal."""


def vertex_error_px(pred_px: Array, target_px: Array) -> Array:
    """Euclidean distance between predicted and target vertex (slot 0).

    Args:
        pred_px: ``[..., 3, 2]`` predicted keypoints in original pixels.
        target_px: ``[..., 3, 2]`` target keypoints in original pixels.

    Returns:
        ``[...]`` vertex error in pixels.
    """
    return length(pred_px[..., 0, :] - target_px[..., 0, :])


def pck(
    pred_px: Array,
    target_px: Array,
    visible: Array,
    diagonal_px: Array,
    threshold: float = PCK_THRESHOLD,
) -> Array:
    """Percentage of correct keypoints: visible targets within ``threshold * diagonal``.

    The arm order of the target is matched to the prediction first
    (:func:`wakemodel.keypoints.match_arm_order`), so the input arm order does not matter.

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
    xp = namespace(pred_px)
    order = match_arm_order(pred_px, target_px, visible)
    target_px = permute_slots(target_px, order)
    visible = permute_slots(visible, order)
    distance = length(pred_px - target_px)
    correct = (distance <= threshold * diagonal_px[..., None]) & visible
    count = xp.asarray(visible.sum(-1), dtype=pred_px.dtype)
    fraction = xp.asarray(correct.sum(-1), dtype=pred_px.dtype) / xp.clip(count, 1, None)
    return xp.where(count > 0, fraction, math.nan)


def keypoint_errors(
    pred_norm: Array,
    pred_visible: Array,
    target_norm: Array,
    target_visible: Array,
    orig_size: Array,
    gsd_m: float = DEFAULT_GSD_M,
) -> dict[str, Any]:
    """Per-sample errors of a batch of predictions, in original-chip units.

    Takes numpy arrays or torch tensors (all of one kind) and returns that kind.

    Args:
        pred_norm: ``[B, 3, 2]`` predicted normalised keypoints.
        pred_visible: ``[B, 3]`` predicted visibility probabilities (or a bool
            mask); see :func:`predicted_visibility` for the far ends used.
        target_norm: ``[B, 3, 2]`` target normalised keypoints.
        target_visible: Bool ``[B, 3]`` target visibility.
        orig_size: ``[B, 2]`` original chip (width_px, height_px).
        gsd_m: Ground sampling distance in metres per pixel.

    Returns:
        Dict of float32 ``[B]`` arrays or tensors: ``vertex_error_px`` (pixels),
        ``vertex_error_m`` (metres), ``vertex_error_frac`` (vertex error / true
        wake length), ``heading_error_deg`` (degrees [0, 180]) and ``pck``
        (fraction of visible keypoints within 5 % of the chip diagonal).
        Entries are NaN where undefined (no visible far end; every entry of a
        chip without a wake, whose target has no visible keypoint).
    """
    xp = namespace(pred_norm)
    pred_norm = xp.asarray(pred_norm, dtype=xp.float32)
    target_norm = xp.asarray(target_norm, dtype=xp.float32)
    orig_size = xp.asarray(orig_size, dtype=xp.float32)
    target_visible = xp.asarray(target_visible, dtype=xp.bool)
    pred_px = to_pixels(pred_norm, orig_size)
    target_px = to_pixels(target_norm, orig_size)
    vertex_px = xp.where(target_visible[..., 0], vertex_error_px(pred_px, target_px), math.nan)
    pred_heading = heading_deg(pred_px, predicted_visibility(pred_visible))
    target_heading = heading_deg(target_px, target_visible)
    diagonal_px = length(orig_size)
    return {
        "vertex_error_px": vertex_px,
        "vertex_error_m": vertex_px * gsd_m,
        "vertex_error_frac": vertex_px / wake_length_px(target_px, target_visible),
        "heading_error_deg": angular_error_deg(pred_heading, target_heading),
        "pck": pck(pred_px, target_px, target_visible, diagonal_px),
    }
