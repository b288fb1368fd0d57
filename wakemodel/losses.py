"""Masked, arm-order-invariant keypoint loss.

Slot 0 of a keypoint tensor is the wake vertex; slots 1 and 2 are the far ends
of the wake components, whose order is meaningless. The loss is therefore the
minimum over both arm orders (per sample), so a network is never pushed towards
the midpoint of the two arms. Invisible target slots never contribute, and a
garbage (even NaN) coordinate in an invisible slot cannot leak into the loss or
its gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional

from wakemodel import keypoints
from wakemodel.keypoints import IDENTITY_ORDER, SWAPPED_ORDER, permute_slots

__all__ = [
    "IDENTITY_ORDER",
    "SWAPPED_ORDER",
    "heatmap_loss",
    "keypoint_loss",
    "match_arm_order",
    "permute_slots",
]


def _order_costs(
    pred_keypoints: Tensor,
    target_keypoints: Tensor,
    target_visible: Tensor,
    *,
    pred_visibility_logits: Tensor | None,
    visibility_weight: float,
    beta: float,
    position_visible: Tensor | None = None,
    pin_single_end: bool = False,
) -> Tensor:
    """Per-sample loss for the identity and the swapped arm order of the target.

    Args:
        pred_keypoints: ``[..., 3, 2]`` predicted coordinates (any unit).
        target_keypoints: ``[..., 3, 2]`` target coordinates (same unit).
        target_visible: Bool ``[..., 3]``; invisible slots are ignored.
        pred_visibility_logits: Optional ``[..., 3]`` logits; adds a BCE term
            against ``target_visible``.
        visibility_weight: Weight of the BCE term.
        beta: Smooth-L1 transition point (same unit as the coordinates); 0 gives L1.
        position_visible: Bool ``[..., 3]`` slots whose position is trained, when
            not ``target_visible`` (see :func:`wakemodel.keypoints.copy_single_end`).
        pin_single_end: On samples with exactly one visible end, allow only the
            identity order (the target's end is in slot 1, see
            :func:`wakemodel.keypoints.single_end_first`): the swapped cost is +inf.

    Returns:
        ``[..., 2]`` costs: index 0 for the identity order, 1 for the swapped order.
    """
    if position_visible is None:
        position_visible = target_visible
    slot_dim = target_keypoints.dim() - 2
    costs = []
    for order in (IDENTITY_ORDER, SWAPPED_ORDER):
        index = torch.tensor(order, device=target_keypoints.device)
        target = target_keypoints.index_select(slot_dim, index)
        visible = target_visible.index_select(slot_dim, index)
        positioned = position_visible.index_select(slot_dim, index)
        mask = positioned.unsqueeze(-1)
        target = torch.where(mask, target, torch.zeros_like(target))
        difference = torch.where(mask, pred_keypoints - target, torch.zeros_like(target))
        per_coordinate = functional.smooth_l1_loss(
            difference, torch.zeros_like(difference), beta=beta, reduction="none"
        )
        visible_count = positioned.sum(dim=-1).clamp(min=1)
        cost = per_coordinate.sum(dim=(-2, -1)) / visible_count
        if pred_visibility_logits is not None:
            bce = functional.binary_cross_entropy_with_logits(
                pred_visibility_logits, visible.to(pred_visibility_logits.dtype), reduction="none"
            )
            cost = cost + visibility_weight * bce.mean(dim=-1)
        costs.append(cost)
    if pin_single_end:
        single_end = target_visible[..., 1:].sum(dim=-1) == 1
        costs[1] = torch.where(single_end, torch.full_like(costs[1], torch.inf), costs[1])
    return torch.stack(costs, dim=-1)


def match_arm_order(
    pred_keypoints: Tensor,
    target_keypoints: Tensor,
    target_visible: Tensor,
    *,
    pred_visibility_logits: Tensor | None = None,
    visibility_weight: float = 0.0,
    beta: float = 0.0,
    pin_single_end: bool = False,
) -> Tensor:
    """Best order of the target's arm slots for each sample (the training loss's variant).

    The cost of an order is the masked (smooth) L1 distance between the
    prediction and the reordered target, plus ``visibility_weight`` times the
    visibility BCE when logits are given. Ties keep the identity order. Without
    logits and with ``beta=0`` this is :func:`wakemodel.keypoints.match_arm_order`.

    Args:
        pred_keypoints: ``[..., 3, 2]`` predicted coordinates (normalised or pixels).
        target_keypoints: ``[..., 3, 2]`` target coordinates in the same unit.
        target_visible: Bool ``[..., 3]`` target visibility.
        pred_visibility_logits: Optional ``[..., 3]`` predicted visibility logits.
        visibility_weight: Weight of the BCE term in the cost.
        beta: Smooth-L1 transition point in coordinate units (0: plain L1).
        pin_single_end: Keep the identity order on one-end samples (see
            :func:`_order_costs`).

    Returns:
        Long ``[..., 3]`` slot order, ``(0, 1, 2)`` or ``(0, 2, 1)``; apply it to the
        TARGET with :func:`permute_slots` to align it with the prediction.
    """
    if pred_visibility_logits is None and beta == 0.0 and not pin_single_end:
        return keypoints.match_arm_order(pred_keypoints, target_keypoints, target_visible)
    costs = _order_costs(
        pred_keypoints.detach(),
        target_keypoints,
        target_visible,
        pred_visibility_logits=(
            None if pred_visibility_logits is None else pred_visibility_logits.detach()
        ),
        visibility_weight=visibility_weight,
        beta=beta,
        pin_single_end=pin_single_end,
    )
    return keypoints.order_from_costs(costs)


def keypoint_loss(
    pred_keypoints: Tensor,
    pred_visibility_logits: Tensor,
    target_keypoints: Tensor,
    target_visible: Tensor,
    *,
    visibility_weight: float = 0.1,
    beta: float = 0.02,
    position_visible: Tensor | None = None,
    pin_single_end: bool = False,
) -> Tensor:
    """Masked smooth-L1 keypoint loss plus visibility BCE, minimised over arm orders.

    For every sample: smooth L1 over the visible target slots (summed over x and
    y, averaged over visible slots) plus ``visibility_weight`` times the mean
    BCE of the visibility logits, with the target's arm slots in whichever order
    gives the lower value. The result is averaged over the batch.

    Args:
        pred_keypoints: ``[B, 3, 2]`` predicted normalised coordinates in [0, 1].
        pred_visibility_logits: ``[B, 3]`` predicted visibility logits.
        target_keypoints: ``[B, 3, 2]`` target normalised coordinates; invisible
            slots may hold any value, NaN included.
        target_visible: Bool ``[B, 3]`` target visibility.
        visibility_weight: Weight of the visibility BCE term.
        beta: Smooth-L1 transition point in normalised units (fraction of the chip).
        position_visible: Bool ``[B, 3]`` slots whose position is trained when not
            ``target_visible`` (:func:`wakemodel.keypoints.copy_single_end`).
        pin_single_end: Keep the identity order on one-end samples (their end in
            slot 1, :func:`wakemodel.keypoints.single_end_first`).

    Returns:
        Scalar loss tensor (float32).
    """
    costs = _order_costs(
        pred_keypoints.float(),
        target_keypoints.float(),
        target_visible.bool(),
        pred_visibility_logits=pred_visibility_logits.float(),
        visibility_weight=visibility_weight,
        beta=beta,
        position_visible=None if position_visible is None else position_visible.bool(),
        pin_single_end=pin_single_end,
    )
    return costs.min(dim=-1).values.mean()


def heatmap_loss(
    heatmap_logits: Tensor,
    target_keypoints: Tensor,
    target_visible: Tensor,
    *,
    sigma_cells: float = 1.0,
) -> Tensor:
    """Cross-entropy between softmax heatmaps and Gaussians at the visible targets.

    The heatmap cells lie evenly over [0, 1] as in
    :func:`wakemodel.network.soft_argmax`. Align the target's arm order with the
    prediction first (:func:`match_arm_order`, :func:`permute_slots`).

    Args:
        heatmap_logits: ``[B, K, H, W]`` logits.
        target_keypoints: ``[B, K, 2]`` normalised (x, y); invisible slots may hold
            any value, NaN included.
        target_visible: Bool ``[B, K]``.
        sigma_cells: Standard deviation of the target Gaussian in heatmap cells.

    Returns:
        Scalar: mean over visible slots (0 when none is visible).
    """
    height, width = heatmap_logits.shape[-2:]
    visible = target_visible.bool()
    targets = torch.where(visible[..., None], target_keypoints.float(), 0.5)
    xs = torch.linspace(0.0, 1.0, width, device=heatmap_logits.device)
    ys = torch.linspace(0.0, 1.0, height, device=heatmap_logits.device)
    sigma_x = sigma_cells / max(width - 1, 1)
    sigma_y = sigma_cells / max(height - 1, 1)
    gauss_x = torch.exp(-0.5 * ((xs - targets[..., 0:1]) / sigma_x) ** 2)
    gauss_y = torch.exp(-0.5 * ((ys - targets[..., 1:2]) / sigma_y) ** 2)
    target_maps = gauss_y[..., :, None] * gauss_x[..., None, :]
    target_maps = target_maps / target_maps.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    log_probs = heatmap_logits.float().flatten(2).log_softmax(dim=-1)
    cross_entropy = -(target_maps.flatten(2) * log_probs).sum(dim=-1)
    return (cross_entropy * visible).sum() / visible.sum().clamp_min(1)


def wake_axis_loss(
    pred_keypoints_px: Tensor, target_keypoints_px: Tensor, target_visible: Tensor
) -> Tensor:
    """One minus the cosine between the predicted and the true wake axis.

    The wake axis points from the far end (mean of the visible wake ends,
    :func:`wakemodel.keypoints.far_end_px`) to the vertex, so its angle is the
    heading: a reversed heading costs 2, a right one 0. Both axes use the
    TARGET's visible ends; align the target's arm order with the prediction
    first (:func:`match_arm_order`, :func:`permute_slots`).

    Args:
        pred_keypoints_px: ``[B, 3, 2]`` predicted keypoints in pixels (any unit
            with the chip's aspect, e.g. normalised times the original size).
        target_keypoints_px: ``[B, 3, 2]`` target keypoints in the same unit.
        target_visible: Bool ``[B, 3]``.

    Returns:
        Scalar: mean over the samples with a visible vertex and far end (0 when none).
    """
    visible = target_visible.bool()
    defined = visible[:, 0] & visible[:, 1:].any(dim=-1)
    # Invisible target slots are zeroed (they may hold NaN); samples without an axis use every
    # slot so that their (masked) terms stay finite.
    safe_visible = torch.where(defined[:, None], visible, torch.ones_like(visible))
    target = torch.where(visible[..., None], target_keypoints_px.float(), 0.0)
    pred = pred_keypoints_px.float()
    pred_axis = pred[:, 0] - keypoints.far_end_px(pred, safe_visible)
    target_axis = target[:, 0] - keypoints.far_end_px(target, safe_visible)
    cosine = functional.cosine_similarity(pred_axis, target_axis, dim=-1, eps=1e-6)
    return ((1.0 - cosine) * defined).sum() / defined.sum().clamp_min(1)
