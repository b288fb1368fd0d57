"""Keypoint rules: slots, names, arm order and the wake geometry derived from them.

The one home for what the three keypoints mean, used by the loss, the metrics,
inference (test-time augmentation included), evaluation and georeferencing.
Every function takes numpy arrays or torch tensors alike and returns the same
kind, so ONNX inference and evaluation run without importing torch.

Conventions: keypoints are ``[..., 3, 2]`` as (x, y); slot 0 is the wake
vertex (the vessel), slots 1 and 2 are the far ends of the wake components,
whose order is meaningless. A bool ``visible`` mask ``[..., 3]`` goes with
them; invisible slots are never read (they may hold NaN). Pixel coordinates
are in the ORIGINAL chip (x right, y down). Headings are compass bearings in
degrees [0, 360): north = image up, east = image right, clockwise, from the
far-end point towards the vertex.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

NUM_KEYPOINTS = 3
"""Keypoint slots per chip: the vertex and two wake ends."""

KEYPOINT_NAMES = ("vertex", "end_1", "end_2")
"""Names of the 3 keypoint slots: the wake vertex (vessel), then the wake ends."""

VERTEX_SLOT = 0
"""Slot of the wake vertex."""

IDENTITY_ORDER = (0, 1, 2)
"""Slot order that keeps the wake ends as they are."""

SWAPPED_ORDER = (0, 2, 1)
"""Slot order that swaps the two wake ends."""

KELVIN_HALF_ANGLE_DEG = math.degrees(math.asin(1.0 / 3.0))
"""Half-angle of the Kelvin wake cusp (about 19.47 degrees): each arm's angle to the wake axis."""

Array = TypeVar("Array", np.ndarray, "Tensor")
"""A numpy array or a torch tensor; functions return the kind they are given."""


def namespace(array: Any) -> ModuleType:
    """``torch`` for a torch tensor, else ``numpy`` (the functions used exist in both)."""
    if type(array).__module__.startswith("torch"):
        import torch

        return torch
    return np


def cast(values: Array, like: Array) -> Array:
    """``values`` with the dtype of ``like`` (same kind of array, same device)."""
    return namespace(values).asarray(values, dtype=like.dtype)


def length(delta: Array) -> Array:
    """Euclidean length of ``[..., 2]`` vectors, ``[...]``."""
    return namespace(delta).hypot(delta[..., 0], delta[..., 1])


def to_pixels(keypoints_norm: Array, orig_size: Array) -> Array:
    """Map normalised keypoints to pixels of the original chip.

    Args:
        keypoints_norm: ``[..., K, 2]`` (x / width, y / height).
        orig_size: ``[..., 2]`` original chip (width_px, height_px).

    Returns:
        ``[..., K, 2]`` keypoints in original pixels.
    """
    return keypoints_norm * cast(orig_size, keypoints_norm)[..., None, :]


def far_end_px(keypoints_px: Array, visible: Array) -> Array:
    """Mean of the visible far-end keypoints (slots 1 and 2).

    Args:
        keypoints_px: ``[..., 3, 2]`` keypoints in pixels.
        visible: Bool ``[..., 3]``.

    Returns:
        ``[..., 2]`` far-end point in pixels; NaN where no far end is visible.
    """
    xp = namespace(keypoints_px)
    ends = keypoints_px[..., 1:, :]
    ends_visible = visible[..., 1:, None]
    total = xp.where(ends_visible, ends, 0.0).sum(-2)
    count = cast(ends_visible.sum(-2), keypoints_px)
    mean = total / xp.clip(count, 1, None)
    return xp.where(count > 0, mean, math.nan)


def copy_single_end(keypoints: Array, visible: Array) -> tuple[Array, Array]:
    """Training targets where a chip's one visible wake end fills both end slots.

    The heading is read towards the mean of the predicted ends that are deemed
    visible. On a chip with one visible end (one Kelvin arm, or the turbulent
    wake alone), an untrained second end slot drags that mean anywhere as soon
    as the network calls it visible; trained onto the same end, it cannot move
    the heading whatever its visibility.

    Args:
        keypoints: ``[..., 3, 2]`` target keypoints (any unit; invisible slots
            may hold NaN).
        visible: Bool ``[..., 3]`` target visibility.

    Returns:
        The targets with the invisible end slot of one-end chips set to the
        visible end, and the bool ``[..., 3]`` mask of slots that have a position
        target. Visibility itself is unchanged: train it on ``visible``.
    """
    xp = namespace(keypoints)
    ends_visible = visible[..., 1:]
    single_end = ends_visible.sum(-1) == 1
    fill = single_end[..., None] & ~ends_visible
    single_end_px = far_end_px(keypoints, visible)[..., None, :]
    ends = xp.where(fill[..., None], single_end_px, keypoints[..., 1:, :])
    filled = xp.concatenate([keypoints[..., :1, :], ends], -2)
    return filled, xp.concatenate([visible[..., :1], ends_visible | fill], -1)


def single_end_first(keypoints: Array, visible: Array) -> tuple[Array, Array]:
    """Targets where a chip's one visible wake end sits in the first end slot.

    Arm order is meaningless on chips with two visible ends, but on a chip with
    one (one Kelvin arm, or the turbulent wake alone) a free order makes the
    second slot's visibility target depend on which slot the matching gave the
    end, which no head can know beforehand. With the one end pinned to slot 1
    (and the arm-order matching told so: ``pin_single_end`` in
    :func:`wakemodel.losses.keypoint_loss`), the visibility of slot 2 reads "the
    chip shows two wake ends", a property of the whole chip.

    Args:
        keypoints: ``[..., 3, 2]`` target keypoints (any unit; invisible slots
            may hold NaN).
        visible: Bool ``[..., 3]`` target visibility.

    Returns:
        The keypoints and visibility with slots 1 and 2 swapped where only slot 2
        is visible; other chips unchanged.
    """
    order = orders_where_swapped(visible[..., 2] & ~visible[..., 1])
    return permute_slots(keypoints, order), permute_slots(visible, order)


def heading_deg(keypoints_px: Array, visible: Array) -> Array:
    """Compass bearing from the far-end point towards the vertex.

    Args:
        keypoints_px: ``[..., 3, 2]`` keypoints in original pixels (y down).
        visible: Bool ``[..., 3]``.

    Returns:
        ``[...]`` heading in degrees [0, 360), 0 = north (image up), 90 = east;
        NaN where no far end is visible.
    """
    xp = namespace(keypoints_px)
    delta = keypoints_px[..., VERTEX_SLOT, :] - far_end_px(keypoints_px, visible)
    bearing = xp.rad2deg(xp.arctan2(delta[..., 0], -delta[..., 1]))
    return xp.remainder(bearing, 360.0)


HEADING_STD_MAX_DEG = 180.0 / math.sqrt(3.0)
"""Standard deviation of a bearing spread evenly over the circle (no heading at all), degrees."""


def heading_std_deg(keypoints_px: Array, keypoint_std_px: Array, visible: Array) -> Array:
    """Heading uncertainty propagated from the keypoints' positional spread.

    The far end is the mean of the visible wake ends, so its spread is theirs
    divided by their count; the heading moves with the spread across the
    wake axis, divided by the wake length (small-angle), capped at
    :data:`HEADING_STD_MAX_DEG`.

    Args:
        keypoints_px: ``[..., 3, 2]`` keypoints in original pixels.
        keypoint_std_px: ``[..., 3, 2]`` standard deviation of each keypoint's
            x and y, in original pixels.
        visible: Bool ``[..., 3]``.

    Returns:
        ``[...]`` 1-sigma heading uncertainty in degrees; :data:`HEADING_STD_MAX_DEG`
        where the far end sits on the vertex (no axis), NaN where no far end is visible.
    """
    xp = namespace(keypoints_px)
    axis = keypoints_px[..., VERTEX_SLOT, :] - far_end_px(keypoints_px, visible)
    axis_length = length(axis)
    has_axis = axis_length > 0
    safe_length = xp.where(has_axis, axis_length, 1.0)
    across = xp.stack([-axis[..., 1], axis[..., 0]], -1) / safe_length[..., None]
    variance_across = (keypoint_std_px**2 * across[..., None, :] ** 2).sum(-1)
    ends_visible = visible[..., 1:]
    end_count = cast(ends_visible.sum(-1), keypoints_px)
    ends_variance = xp.where(ends_visible, variance_across[..., 1:], 0.0).sum(-1)
    far_variance = ends_variance / xp.clip(end_count, 1, None) ** 2
    spread = xp.sqrt(variance_across[..., VERTEX_SLOT] + far_variance)
    std_deg = xp.clip(xp.rad2deg(spread / safe_length), None, HEADING_STD_MAX_DEG)
    std_deg = xp.where(has_axis, std_deg, HEADING_STD_MAX_DEG)
    return xp.where(end_count > 0, std_deg, math.nan)


def keypoint_radius_px(keypoint_std_px: Array) -> Array:
    """Isotropic spread of each keypoint: the root mean square of its x and y std.

    Args:
        keypoint_std_px: ``[..., K, 2]`` std of x and y in pixels.

    Returns:
        ``[..., K]`` per-keypoint 1-sigma spread in pixels (per axis).
    """
    xp = namespace(keypoint_std_px)
    return xp.sqrt((keypoint_std_px**2).mean(-1))


def bearing_unit_vector(bearing_deg: float) -> np.ndarray:
    """Image-plane unit vector ``[2]`` (x right, y down) of a compass bearing (degrees)."""
    angle = math.radians(bearing_deg)
    return np.array([math.sin(angle), -math.cos(angle)])


def angle_difference_deg(a: Any, b: Any) -> Any:
    """Smallest absolute difference between two bearings (the angular error).

    Args:
        a: ``[...]`` bearings in degrees (any range); a number, list, array or tensor.
        b: ``[...]`` bearings in degrees, broadcastable with ``a``.

    Returns:
        ``[...]`` absolute angular difference in degrees [0, 180] (a numpy
        array for non-tensor input).
    """
    xp = namespace(a)
    if xp is np:
        a, b = np.asarray(a), np.asarray(b)
    return xp.abs(xp.remainder(a - b + 180.0, 360.0) - 180.0)


def wake_length_px(keypoints_px: Array, visible: Array) -> Array:
    """Distance from the vertex to the far-end point.

    Args:
        keypoints_px: ``[..., 3, 2]`` keypoints in original pixels.
        visible: Bool ``[..., 3]``.

    Returns:
        ``[...]`` wake length in pixels; NaN where no far end is visible.
    """
    return length(keypoints_px[..., VERTEX_SLOT, :] - far_end_px(keypoints_px, visible))


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
    xp = namespace(visibility_prob)
    arm_prob = xp.asarray(visibility_prob[..., 1:], dtype=xp.float32)
    arms = arm_prob > threshold
    best = arm_prob.argmax(-1)
    best_arm = xp.stack([best == 0, best == 1], -1)
    arms = xp.where(arms.any(-1)[..., None], arms, best_arm)
    vertex = xp.ones_like(arms[..., :1])
    return xp.concatenate([vertex, arms], -1)


def permute_slots(values: Array, order: Array) -> Array:
    """Reorder the keypoint slots of ``values`` per sample.

    Args:
        values: Per-slot values, either ``[..., 3]`` (visibility, logits) or
            ``[..., 3, D]`` (coordinates).
        order: Integer ``[..., 3]``: output slot ``k`` takes input slot ``order[..., k]``.

    Returns:
        ``values`` with its slot dimension reordered; same shape and dtype.
    """
    if namespace(values) is np:
        values, order = np.asarray(values), np.asarray(order)
        if values.ndim == order.ndim:
            return np.take_along_axis(values, order, axis=-1)
        index = np.broadcast_to(order[..., None], values.shape)
        return np.take_along_axis(values, index, axis=-2)
    import torch

    if values.dim() == order.dim():
        return torch.gather(values, -1, order)
    index = order.unsqueeze(-1).expand_as(values)
    return torch.gather(values, -2, index)


def slot_orders(like: Array) -> Array:
    """The two arm orders as integer ``[2, 3]`` (identity, swapped), the kind of ``like``."""
    xp = namespace(like)
    if xp is np:
        return np.array([IDENTITY_ORDER, SWAPPED_ORDER], dtype=np.int64)
    return xp.tensor([IDENTITY_ORDER, SWAPPED_ORDER], device=like.device)


def order_from_costs(costs: Array) -> Array:
    """Pick each sample's arm order from its costs; ties keep the identity.

    Args:
        costs: ``[..., 2]`` cost of the identity (index 0) and swapped (1) order.

    Returns:
        Integer ``[..., 3]`` slot order, ``(0, 1, 2)`` or ``(0, 2, 1)``.
    """
    return orders_where_swapped(costs[..., 1] < costs[..., 0])


def orders_where_swapped(swap: Array) -> Array:
    """The swapped arm order where ``swap`` is True, the identity elsewhere.

    Args:
        swap: Bool ``[...]``.

    Returns:
        Integer ``[..., 3]`` slot order, ``(0, 2, 1)`` where ``swap``, else ``(0, 1, 2)``.
    """
    orders = slot_orders(swap)
    return orders[swap.astype(np.int64) if namespace(swap) is np else swap.long()]


def arm_order_costs(pred: Array, target: Array, visible: Array) -> Array:
    """L1 distance between ``pred`` and ``target`` for both arm orders of the target.

    Args:
        pred: ``[..., 3, 2]`` predicted coordinates (any unit).
        target: ``[..., 3, 2]`` target coordinates (same unit); invisible slots
            may hold any value, NaN included.
        visible: Bool ``[..., 3]`` target visibility.

    Returns:
        ``[..., 2]`` summed L1 distance over the visible (reordered) target
        slots: index 0 for the identity order, 1 for the swapped order.
    """
    xp = namespace(pred)
    costs = []
    for order in (IDENTITY_ORDER, SWAPPED_ORDER):
        reordered = target[..., list(order), :]
        mask = visible[..., list(order)][..., None]
        difference = xp.where(mask, pred - xp.where(mask, reordered, 0.0), 0.0)
        costs.append(xp.abs(difference).sum(-1).sum(-1))
    return xp.stack(costs, -1)


def match_arm_order(pred: Array, target: Array, visible: Array) -> Array:
    """Best order of the target's arm slots for each sample, by L1 distance.

    Ties keep the identity order.

    Args:
        pred: ``[..., 3, 2]`` predicted coordinates (normalised or pixels).
        target: ``[..., 3, 2]`` target coordinates in the same unit.
        visible: Bool ``[..., 3]`` target visibility.

    Returns:
        Integer ``[..., 3]`` slot order, ``(0, 1, 2)`` or ``(0, 2, 1)``; apply it
        to the TARGET (and its visibility) with :func:`permute_slots` to align
        it with the prediction.
    """
    if namespace(pred) is not np:
        pred = pred.detach()
    return order_from_costs(arm_order_costs(pred, target, visible))
