"""Keypoint rules: numpy and torch give the same answers; the loss and metrics share them."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from wakemodel import keypoints as kp
from wakemodel import losses, metrics


def _random_batch(seed: int, size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predictions, targets (NaN in invisible slots) and visibility for ``size`` samples."""
    rng = np.random.default_rng(seed)
    pred = rng.uniform(0, 100, (size, 3, 2))
    target = rng.uniform(0, 100, (size, 3, 2))
    visible = rng.random((size, 3)) > 0.3
    visible[:, 0] = True
    target[~visible] = np.nan
    return pred, target, visible


def test_constants() -> None:
    assert kp.NUM_KEYPOINTS == len(kp.KEYPOINT_NAMES) == 3
    assert kp.KEYPOINT_NAMES == ("vertex", "end_1", "end_2")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_match_arm_order_numpy_equals_torch(seed: int) -> None:
    pred, target, visible = _random_batch(seed)
    order_np = kp.match_arm_order(pred, target, visible)
    order_t = kp.match_arm_order(
        torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(visible)
    )
    assert isinstance(order_np, np.ndarray) and isinstance(order_t, torch.Tensor)
    np.testing.assert_array_equal(order_np, order_t.numpy())
    assert {tuple(row) for row in order_np} == {(0, 1, 2), (0, 2, 1)}
    # The loss's L1 matcher (no logits, beta 0) is the same rule.
    np.testing.assert_array_equal(
        losses.match_arm_order(
            torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(visible)
        ).numpy(),
        order_np,
    )


def test_match_arm_order_swaps_and_ties_keep_identity() -> None:
    target = np.array([[[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]] * 2)
    pred = target.copy()
    pred[1, 1:] = pred[1, [2, 1]]
    visible = np.ones((2, 3), bool)
    np.testing.assert_array_equal(kp.match_arm_order(pred, target, visible), [[0, 1, 2], [0, 2, 1]])
    same_ends = np.array([[[5.0, 5.0], [1.0, 1.0], [1.0, 1.0]]])
    np.testing.assert_array_equal(
        kp.match_arm_order(same_ends, same_ends, visible[:1]), [[0, 1, 2]]
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_permute_slots_numpy_equals_torch(seed: int) -> None:
    pred, target, visible = _random_batch(seed)
    order = kp.match_arm_order(pred, target, visible)
    order_t = torch.from_numpy(order)
    np.testing.assert_array_equal(
        kp.permute_slots(target, order), kp.permute_slots(torch.from_numpy(target), order_t).numpy()
    )
    np.testing.assert_array_equal(
        kp.permute_slots(visible, order),
        kp.permute_slots(torch.from_numpy(visible), order_t).numpy(),
    )
    swapped = np.array([[0, 2, 1]])
    np.testing.assert_array_equal(kp.permute_slots(np.array([[7, 8, 9]]), swapped), [[7, 9, 8]])


@pytest.mark.parametrize("seed", [0, 1])
def test_geometry_numpy_equals_torch(seed: int) -> None:
    pred, _, visible = _random_batch(seed)
    pred_t, visible_t = torch.from_numpy(pred), torch.from_numpy(visible)
    for function in (kp.heading_deg, kp.wake_length_px, kp.far_end_px):
        np.testing.assert_allclose(
            function(pred, visible), function(pred_t, visible_t).numpy(), atol=1e-9, equal_nan=True
        )
    probabilities = np.random.default_rng(seed).random((64, 3))
    np.testing.assert_array_equal(
        kp.predicted_visibility(probabilities),
        kp.predicted_visibility(torch.from_numpy(probabilities)).numpy(),
    )
    a, b = np.random.default_rng(seed).uniform(-720, 720, (2, 64))
    np.testing.assert_allclose(
        kp.angle_difference_deg(a, b),
        kp.angle_difference_deg(torch.from_numpy(a), torch.from_numpy(b)).numpy(),
        atol=1e-9,
    )


def test_heading_far_end_and_angle_rules() -> None:
    keypoints = np.array([[50.0, 10.0], [40.0, 90.0], [60.0, 90.0]])
    visible = np.array([True, True, True])
    np.testing.assert_allclose(kp.far_end_px(keypoints, visible), [50.0, 90.0])
    assert float(kp.heading_deg(keypoints, visible)) == pytest.approx(0.0)
    assert float(kp.wake_length_px(keypoints, visible)) == pytest.approx(80.0)
    assert np.isnan(kp.heading_deg(keypoints, np.array([True, False, False])))
    assert kp.angle_difference_deg([10.0, 350.0, 90.0], [350.0, 10.0, 270.0]) == (
        pytest.approx([20.0, 20.0, 180.0])
    )


def test_metrics_keep_their_names_and_accept_numpy() -> None:
    assert metrics.heading_deg is kp.heading_deg
    assert metrics.angular_error_deg is kp.angle_difference_deg
    rng = np.random.default_rng(3)
    pred = rng.random((16, 3, 2)).astype(np.float32)
    target = rng.random((16, 3, 2)).astype(np.float32)
    target_visible = rng.random((16, 3)) > 0.3
    target_visible[:, :2] = True
    probabilities = rng.random((16, 3)).astype(np.float32)
    size = rng.uniform(50, 300, (16, 2)).astype(np.float32)
    from_numpy = metrics.keypoint_errors(pred, probabilities, target, target_visible, size)
    from_torch = metrics.keypoint_errors(
        *map(torch.from_numpy, (pred, probabilities, target, target_visible, size))
    )
    for key, values in from_numpy.items():
        assert isinstance(values, np.ndarray)
        np.testing.assert_allclose(
            values, from_torch[key].numpy(), rtol=1e-5, atol=1e-4, equal_nan=True, err_msg=key
        )


def test_heading_std_propagates_the_spread_across_the_wake_axis() -> None:
    # A wake along +y (heading north), 100 px long, one far end visible.
    keypoints_px = np.array([[[50.0, 0.0], [50.0, 100.0], [0.0, 0.0]]])
    visible = np.array([[True, True, False]])
    across_only = np.array([[[2.0, 0.0], [0.0, 0.0], [9.0, 9.0]]])
    along_only = np.array([[[0.0, 2.0], [0.0, 5.0], [9.0, 9.0]]])
    expected_deg = np.degrees(2.0 / 100.0)
    assert kp.heading_std_deg(keypoints_px, across_only, visible)[0] == pytest.approx(expected_deg)
    # Spread along the axis changes the length, not the heading; the hidden end never counts.
    assert kp.heading_std_deg(keypoints_px, along_only, visible)[0] == pytest.approx(0.0)
    # Two visible ends: the far end is their mean, so each end's variance counts a quarter.
    both = np.array([[[50.0, 0.0], [40.0, 100.0], [60.0, 100.0]]])
    ends_only = np.array([[[0.0, 0.0], [4.0, 0.0], [4.0, 0.0]]])
    both_visible = np.array([[True, True, True]])
    value = kp.heading_std_deg(both, ends_only, both_visible)[0]
    assert value == pytest.approx(np.degrees(np.sqrt(2 * 16 / 4) / 100.0))


def test_heading_std_is_capped_and_undefined_without_a_far_end() -> None:
    keypoints_px = np.array([[[50.0, 0.0], [50.0, 10.0], [0.0, 0.0]]] * 2)
    huge = np.full((2, 3, 2), 1e4)
    visible = np.array([[True, True, False], [True, False, False]])
    std = kp.heading_std_deg(keypoints_px, huge, visible)
    assert std[0] == pytest.approx(kp.HEADING_STD_MAX_DEG)
    assert np.isnan(std[1])
    # A far end on the vertex has no axis: no heading at all, without a divide warning.
    collapsed = np.array([[[50.0, 0.0], [50.0, 0.0], [0.0, 0.0]]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for xp_array in (np.asarray, torch.as_tensor):
            value = kp.heading_std_deg(
                xp_array(collapsed), xp_array(np.ones((1, 3, 2))), xp_array(visible[:1])
            )
            assert float(value[0]) == pytest.approx(kp.HEADING_STD_MAX_DEG)


def test_heading_std_numpy_equals_torch() -> None:
    pred, _, visible = _random_batch(3)
    spread = np.random.default_rng(4).uniform(0.1, 5.0, pred.shape)
    from_numpy = kp.heading_std_deg(pred, spread, visible)
    from_torch = kp.heading_std_deg(
        torch.from_numpy(pred), torch.from_numpy(spread), torch.from_numpy(visible)
    )
    np.testing.assert_allclose(from_torch.numpy(), from_numpy, rtol=1e-10, equal_nan=True)
    np.testing.assert_allclose(
        kp.keypoint_radius_px(spread), np.sqrt((spread**2).mean(-1)), rtol=1e-12
    )


def test_copy_single_end_fills_the_second_slot_of_one_end_chips() -> None:
    nan = float("nan")
    keypoints = np.array(
        [
            [[1.0, 1.0], [5.0, 6.0], [nan, nan]],  # one Kelvin arm, in slot 1
            [[1.0, 1.0], [nan, 0.0], [7.0, 8.0]],  # one end, in slot 2
            [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]],  # both arms
            [[nan, nan], [nan, nan], [nan, nan]],  # no wake
        ]
    )
    visible = np.array([[1, 1, 0], [1, 0, 1], [1, 1, 1], [0, 0, 0]], dtype=bool)
    filled, positioned = kp.copy_single_end(keypoints, visible)
    np.testing.assert_array_equal(filled[0, 1:], [[5.0, 6.0], [5.0, 6.0]])
    np.testing.assert_array_equal(filled[1, 1:], [[7.0, 8.0], [7.0, 8.0]])
    np.testing.assert_array_equal(filled[2], keypoints[2])
    assert np.isnan(filled[3]).all()
    np.testing.assert_array_equal(positioned, [[1, 1, 1], [1, 1, 1], [1, 1, 1], [0, 0, 0]])
    # The heading is that of the one end, whichever end slots are called visible.
    for mask in ([True, True, True], [True, True, False], [True, False, True]):
        headings = kp.heading_deg(filled[:2], np.array([mask, mask]))
        np.testing.assert_allclose(headings, kp.heading_deg(keypoints[:2], visible[:2]))
    torch_filled, torch_positioned = kp.copy_single_end(
        torch.from_numpy(keypoints), torch.from_numpy(visible)
    )
    np.testing.assert_array_equal(torch_filled.numpy(), filled)
    np.testing.assert_array_equal(torch_positioned.numpy(), positioned)


def test_single_end_first_moves_a_lone_end_into_slot_one() -> None:
    nan = float("nan")
    keypoints = np.array(
        [
            [[1.0, 1.0], [5.0, 6.0], [nan, nan]],  # one end, already in slot 1
            [[1.0, 1.0], [nan, 0.0], [7.0, 8.0]],  # one end, in slot 2
            [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]],  # both ends: order kept
        ]
    )
    visible = np.array([[1, 1, 0], [1, 0, 1], [1, 1, 1]], dtype=bool)
    pinned, pinned_visible = kp.single_end_first(keypoints, visible)
    np.testing.assert_array_equal(pinned_visible, [[1, 1, 0], [1, 1, 0], [1, 1, 1]])
    np.testing.assert_array_equal(pinned[1, 1], [7.0, 8.0])
    np.testing.assert_array_equal(pinned[[0, 2]], keypoints[[0, 2]])
    # The heading of every chip is unchanged.
    np.testing.assert_allclose(
        kp.heading_deg(pinned, pinned_visible), kp.heading_deg(keypoints, visible)
    )
    torch_pinned, torch_visible = kp.single_end_first(
        torch.from_numpy(keypoints), torch.from_numpy(visible)
    )
    np.testing.assert_array_equal(torch_pinned.numpy(), pinned)
    np.testing.assert_array_equal(torch_visible.numpy(), pinned_visible)
