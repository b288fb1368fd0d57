import math

import pytest
import torch

from wakemodel.keypoints import copy_single_end
from wakemodel.losses import heatmap_loss, keypoint_loss, match_arm_order, permute_slots

ARM_A = (0.2, 0.8)
ARM_B = (0.8, 0.8)
VERTEX = (0.5, 0.2)


def _keypoints(*points: tuple[float, float]) -> torch.Tensor:
    return torch.tensor([points], dtype=torch.float32)


def _logits(visible: list[bool]) -> torch.Tensor:
    return torch.tensor([[4.0 if v else -4.0 for v in visible]])


def test_swapped_arms_give_identical_loss() -> None:
    pred = _keypoints(VERTEX, (0.25, 0.75), (0.7, 0.85))
    logits = torch.tensor([[1.0, 0.5, -0.3]])
    visible = torch.tensor([[True, True, True]])
    target = _keypoints(VERTEX, ARM_A, ARM_B)
    swapped = _keypoints(VERTEX, ARM_B, ARM_A)
    loss = keypoint_loss(pred, logits, target, visible)
    assert loss > 0
    assert torch.equal(loss, keypoint_loss(pred, logits, swapped, visible))


def test_swapped_arms_with_one_visible_end_give_identical_loss() -> None:
    pred = _keypoints(VERTEX, (0.25, 0.75), (0.7, 0.85))
    logits = torch.tensor([[2.0, 1.0, -1.0]])
    target = _keypoints(VERTEX, ARM_A, (0.0, 0.0))
    swapped = _keypoints(VERTEX, (0.0, 0.0), ARM_A)
    loss = keypoint_loss(pred, logits, target, torch.tensor([[True, True, False]]))
    loss_swapped = keypoint_loss(pred, logits, swapped, torch.tensor([[True, False, True]]))
    assert torch.allclose(loss, loss_swapped)


def test_correct_order_beats_midpoint() -> None:
    visible = torch.tensor([[True, True, True]])
    target = _keypoints(VERTEX, ARM_A, ARM_B)
    logits = _logits([True, True, True])
    midpoint = (0.5, 0.8)
    loss_order = keypoint_loss(_keypoints(VERTEX, ARM_A, ARM_B), logits, target, visible)
    loss_swapped = keypoint_loss(_keypoints(VERTEX, ARM_B, ARM_A), logits, target, visible)
    loss_midpoint = keypoint_loss(_keypoints(VERTEX, midpoint, midpoint), logits, target, visible)
    assert torch.allclose(loss_order, loss_swapped)
    assert loss_midpoint > loss_order + 0.1


@pytest.mark.parametrize("garbage", [0.0, 123.0, math.nan, math.inf])
def test_invisible_slot_has_no_effect_and_finite_grads(garbage: float) -> None:
    visible = torch.tensor([[True, True, False]])
    clean = _keypoints(VERTEX, ARM_A, (0.0, 0.0))
    dirty = _keypoints(VERTEX, ARM_A, (garbage, garbage))
    pred = _keypoints((0.4, 0.3), (0.3, 0.7), (0.9, 0.1)).requires_grad_()
    logits = torch.tensor([[0.5, 0.5, 0.5]], requires_grad=True)
    loss = keypoint_loss(pred, logits, dirty, visible)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.allclose(loss, keypoint_loss(pred, logits, clean, visible))
    assert torch.isfinite(pred.grad).all()
    assert torch.isfinite(logits.grad).all()
    # The unmatched predicted arm gets no coordinate gradient.
    assert torch.equal(pred.grad[0, 2], torch.zeros(2))


def test_loss_is_zero_like_for_perfect_prediction_and_grows_with_error() -> None:
    visible = torch.tensor([[True, True, True], [True, True, False]])
    target = torch.tensor([[VERTEX, ARM_A, ARM_B], [VERTEX, ARM_B, (0.0, 0.0)]])
    logits = torch.tensor([[20.0, 20.0, 20.0], [20.0, 20.0, -20.0]])
    perfect = keypoint_loss(target.clone(), logits, target, visible)
    worse = keypoint_loss(target + 0.1, logits, target, visible)
    assert perfect < 1e-6
    assert worse > 0.05
    assert perfect.shape == ()


def test_visibility_term_uses_matched_order() -> None:
    target = _keypoints(VERTEX, ARM_A, (0.0, 0.0))
    visible = torch.tensor([[True, True, False]])
    pred = _keypoints(VERTEX, (0.0, 0.0), ARM_A)  # prediction has the arm in slot 2
    right = keypoint_loss(pred, _logits([True, False, True]), target, visible)
    wrong = keypoint_loss(pred, _logits([True, True, False]), target, visible)
    assert right < wrong


def test_match_arm_order_and_permute_slots() -> None:
    target = torch.tensor([[VERTEX, ARM_A, ARM_B], [VERTEX, ARM_A, ARM_B]])
    pred = torch.tensor([[VERTEX, ARM_A, ARM_B], [VERTEX, ARM_B, ARM_A]])
    visible = torch.ones(2, 3, dtype=torch.bool)
    order = match_arm_order(pred, target, visible)
    assert order.tolist() == [[0, 1, 2], [0, 2, 1]]
    assert torch.equal(permute_slots(target, order), pred)
    vis = torch.tensor([[True, True, False], [True, True, False]])
    assert permute_slots(vis, order).tolist() == [[True, True, False], [True, False, True]]


def test_heatmap_loss_is_lowest_at_the_target_and_ignores_invisible_slots() -> None:
    targets = torch.tensor([[[0.5, 0.5], [0.0, 1.0], [float("nan"), 0.0]]])
    visible = torch.tensor([[True, True, False]])
    uniform = torch.zeros(1, 3, 9, 9, requires_grad=True)
    uniform_loss = heatmap_loss(uniform, targets, visible)
    assert uniform_loss.item() == pytest.approx(math.log(81), rel=1e-5)
    uniform_loss.backward()
    assert torch.isfinite(uniform.grad).all()
    assert uniform.grad[0, 2].abs().sum() == 0
    grid = torch.linspace(0, 1, 9)
    at_target = -((grid[None, :] - 0.5) ** 2 + (grid[:, None] - 0.5) ** 2) / (2 / 8**2)
    elsewhere = -((grid[None, :] - 0.25) ** 2 + (grid[:, None] - 0.5) ** 2) / (2 / 8**2)
    good = torch.stack([at_target, uniform[0, 1].detach(), torch.randn(9, 9)])[None]
    bad = torch.stack([elsewhere, uniform[0, 1].detach(), torch.randn(9, 9)])[None]
    assert heatmap_loss(good, targets, visible) < uniform_loss < heatmap_loss(bad, targets, visible)


def test_wake_axis_loss_measures_the_heading_direction() -> None:
    from wakemodel.losses import wake_axis_loss

    target = torch.tensor([[[10.0, 10.0], [10.0, 30.0], [0.0, 0.0]]])  # heading north
    visible = torch.tensor([[True, True, False]])
    same = target.clone()
    reversed_ = torch.tensor([[[10.0, 30.0], [10.0, 10.0], [5.0, 5.0]]])
    east = torch.tensor([[[30.0, 30.0], [10.0, 30.0], [0.0, 0.0]]])
    assert wake_axis_loss(same, target, visible).item() == pytest.approx(0.0, abs=1e-6)
    assert wake_axis_loss(reversed_, target, visible).item() == pytest.approx(2.0)
    assert wake_axis_loss(east, target, visible).item() == pytest.approx(1.0)


def test_wake_axis_loss_ignores_undefined_axes_and_invisible_garbage() -> None:
    from wakemodel.losses import wake_axis_loss

    target = torch.tensor(
        [
            [[10.0, 10.0], [10.0, 30.0], [float("nan"), float("nan")]],
            [[5.0, 5.0], [float("nan"), 1.0], [float("nan"), 2.0]],  # no visible end
        ]
    )
    visible = torch.tensor([[True, True, False], [True, False, False]])
    pred = torch.tensor(
        [[[10.0, 30.0], [10.0, 10.0], [3.0, 3.0]], [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]],
        requires_grad=True,
    )
    loss = wake_axis_loss(pred, target, visible)
    assert loss.item() == pytest.approx(2.0)  # only the first (reversed) sample counts
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    assert torch.all(pred.grad[1] == 0)


def test_single_end_copied_trains_both_positions_but_not_the_visibility() -> None:
    target = _keypoints(VERTEX, ARM_A, (math.nan, math.nan))
    visible = torch.tensor([[True, True, False]])
    filled, positioned = copy_single_end(target, visible)
    logits = _logits([True, True, False])
    on_end = _keypoints(VERTEX, ARM_A, ARM_A)
    astray = _keypoints(VERTEX, ARM_A, ARM_B)
    # Without the copy the second slot's position is free; with it, it is pulled onto the end.
    assert torch.equal(
        keypoint_loss(on_end, logits, target, visible),
        keypoint_loss(astray, logits, target, visible),
    )
    copied = keypoint_loss(on_end, logits, filled, visible, position_visible=positioned)
    assert keypoint_loss(astray, logits, filled, visible, position_visible=positioned) > copied
    # The second slot is still taught to be invisible, in either slot order.
    wrong_visibility = _logits([True, True, True])
    assert (
        keypoint_loss(on_end, wrong_visibility, filled, visible, position_visible=positioned)
        > copied + 0.01
    )
    swapped_visibility = _logits([True, False, True])
    assert torch.allclose(
        keypoint_loss(on_end, swapped_visibility, filled, visible, position_visible=positioned),
        copied,
    )


def test_pinned_single_end_trains_the_first_slot_only() -> None:
    target = _keypoints(VERTEX, ARM_A, (math.nan, math.nan))
    visible = torch.tensor([[True, True, False]])
    logits = _logits([True, True, False])
    # The end predicted in slot 2: free matching takes it, the pinned order does not.
    in_second = _keypoints(VERTEX, ARM_B, ARM_A)
    in_first = _keypoints(VERTEX, ARM_A, ARM_B)
    free = keypoint_loss(in_second, _logits([True, False, True]), target, visible)
    pinned = keypoint_loss(
        in_second, _logits([True, False, True]), target, visible, pin_single_end=True
    )
    assert pinned > free + 0.1
    assert torch.allclose(
        keypoint_loss(in_first, logits, target, visible, pin_single_end=True),
        keypoint_loss(in_first, logits, target, visible),
    )
    order = match_arm_order(in_second, target, visible, pin_single_end=True)
    assert order.tolist() == [[0, 1, 2]]
    assert match_arm_order(in_second, target, visible).tolist() == [[0, 2, 1]]
    # Chips with both ends keep the free order.
    both = _keypoints(VERTEX, ARM_A, ARM_B)
    all_visible = torch.tensor([[True, True, True]])
    swapped = _keypoints(VERTEX, ARM_B, ARM_A)
    assert torch.equal(
        keypoint_loss(swapped, _logits([True] * 3), both, all_visible, pin_single_end=True),
        keypoint_loss(swapped, _logits([True] * 3), both, all_visible),
    )
