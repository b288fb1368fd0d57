import math

import numpy as np
import pytest
import torch

from wakemodel import metrics
from wakemodel.metrics import (
    angular_error_deg,
    far_end_px,
    heading_deg,
    keypoint_errors,
    pck,
    predicted_visibility,
    to_pixels,
    vertex_error_px,
    wake_length_px,
)

ALL = torch.tensor([True, True, True])


def _kp(*points: tuple[float, float]) -> torch.Tensor:
    return torch.tensor(points, dtype=torch.float32)


@pytest.mark.parametrize(
    ("vertex", "far_end", "expected"),
    [
        ((50.0, 10.0), (50.0, 90.0), 0.0),  # vertex above far end: north
        ((90.0, 50.0), (10.0, 50.0), 90.0),  # vertex right of far end: east
        ((50.0, 90.0), (50.0, 10.0), 180.0),
        ((10.0, 50.0), (90.0, 50.0), 270.0),
        ((60.0, 40.0), (50.0, 50.0), 45.0),
    ],
)
def test_heading_compass_bearing(vertex, far_end, expected) -> None:
    keypoints = _kp(vertex, far_end, (0.0, 0.0))
    visible = torch.tensor([True, True, False])
    assert heading_deg(keypoints, visible).item() == pytest.approx(expected, abs=1e-4)


def test_heading_uses_mean_of_visible_far_ends_and_ignores_invisible() -> None:
    keypoints = _kp((50.0, 10.0), (40.0, 90.0), (60.0, 90.0))
    assert heading_deg(keypoints, ALL).item() == pytest.approx(0.0, abs=1e-4)
    garbage = _kp((50.0, 10.0), (50.0, 90.0), (math.nan, math.inf))
    visible = torch.tensor([True, True, False])
    assert heading_deg(garbage, visible).item() == pytest.approx(0.0, abs=1e-4)
    assert far_end_px(garbage, visible).tolist() == [50.0, 90.0]
    assert math.isnan(heading_deg(garbage, torch.tensor([True, False, False])).item())


def test_angular_error_wraps() -> None:
    a = torch.tensor([350.0, 10.0, 0.0, 90.0, -90.0])
    b = torch.tensor([10.0, 350.0, 180.0, 90.0, 270.0])
    assert angular_error_deg(a, b).tolist() == pytest.approx([20.0, 20.0, 180.0, 0.0, 0.0])


def test_vertex_error_and_wake_length() -> None:
    target = _kp((10.0, 10.0), (10.0, 60.0), (0.0, 0.0))
    pred = _kp((13.0, 14.0), (10.0, 60.0), (5.0, 5.0))
    assert vertex_error_px(pred, target).item() == pytest.approx(5.0)
    assert wake_length_px(target, torch.tensor([True, True, False])).item() == pytest.approx(50.0)


def test_to_pixels_uses_width_for_x_and_height_for_y() -> None:
    keypoints = torch.tensor([[[0.5, 0.5], [1.0, 0.0], [0.25, 1.0]]])
    orig_size = torch.tensor([[200.0, 100.0]])
    assert to_pixels(keypoints, orig_size).tolist() == [
        [[100.0, 50.0], [200.0, 0.0], [50.0, 100.0]]
    ]


def test_pck_matches_arms_and_ignores_invisible() -> None:
    target = _kp((50.0, 50.0), (10.0, 90.0), (90.0, 90.0))
    # Arms predicted in swapped order; vertex 6 px off (threshold 0.05 * 100 = 5 px).
    pred = _kp((56.0, 50.0), (90.0, 91.0), (10.0, 89.0))
    diagonal = torch.tensor(100.0)
    assert pck(pred, target, ALL, diagonal).item() == pytest.approx(2 / 3)
    visible = torch.tensor([True, False, True])
    assert pck(pred, target, visible, diagonal).item() == pytest.approx(0.5)
    assert pck(pred, target, ALL, diagonal, threshold=0.1).item() == pytest.approx(1.0)


def test_predicted_visibility_keeps_at_least_one_far_end() -> None:
    prob = torch.tensor([[0.1, 0.9, 0.2], [0.9, 0.3, 0.4], [0.5, 0.6, 0.7]])
    assert predicted_visibility(prob).tolist() == [
        [True, True, False],
        [True, False, True],
        [True, True, True],
    ]


def test_keypoint_errors_hand_made_batch() -> None:
    orig_size = torch.tensor([[100.0, 200.0], [100.0, 200.0]])
    # Target: vertex (50, 20) px, far end (50, 120) px -> heading 0, length 100 px.
    target_px = torch.tensor(
        [[[50.0, 20.0], [50.0, 120.0], [0.0, 0.0]], [[50.0, 20.0], [40.0, 120.0], [60.0, 120.0]]]
    )
    # Sample 0: vertex off by (3, 4) px; sample 1: perfect, arms swapped.
    pred_px = torch.tensor(
        [[[53.0, 24.0], [50.0, 120.0], [0.0, 0.0]], [[50.0, 20.0], [60.0, 120.0], [40.0, 120.0]]]
    )
    target_visible = torch.tensor([[True, True, False], [True, True, True]])
    pred_prob = torch.tensor([[0.9, 0.9, 0.1], [0.9, 0.8, 0.7]])
    errors = keypoint_errors(
        pred_px / orig_size[:, None],
        pred_prob,
        target_px / orig_size[:, None],
        target_visible,
        orig_size,
        gsd_m=10.0,
    )
    assert set(errors) == {
        "vertex_error_px",
        "vertex_error_m",
        "vertex_error_frac",
        "heading_error_deg",
        "pck",
    }
    assert errors["vertex_error_px"].tolist() == pytest.approx([5.0, 0.0], abs=1e-4)
    assert errors["vertex_error_m"].tolist() == pytest.approx([50.0, 0.0], abs=1e-3)
    assert errors["vertex_error_frac"].tolist() == pytest.approx([0.05, 0.0], abs=1e-5)
    expected_heading_0 = math.degrees(math.atan2(3.0, 96.0))
    assert errors["heading_error_deg"].tolist() == pytest.approx(
        [expected_heading_0, 0.0], abs=1e-3
    )
    # Diagonal sqrt(100^2 + 200^2) = 223.6 -> 11.2 px threshold: all correct.
    assert errors["pck"].tolist() == pytest.approx([1.0, 1.0])
    assert all(v.shape == (2,) for v in errors.values())


def test_keypoint_errors_predicted_heading_uses_confident_end_when_none_visible() -> None:
    orig_size = torch.tensor([[100.0, 100.0]])
    target = torch.tensor([[[0.5, 0.1], [0.5, 0.9], [0.0, 0.0]]])
    # Slot 2 points east of the vertex (wrong), slot 1 south (right) and more confident.
    pred = torch.tensor([[[0.5, 0.1], [0.5, 0.9], [0.1, 0.1]]])
    errors = keypoint_errors(
        pred,
        torch.tensor([[0.9, 0.4, 0.3]]),
        target,
        torch.tensor([[True, True, False]]),
        orig_size,
    )
    assert errors["heading_error_deg"].item() == pytest.approx(0.0, abs=1e-4)
    errors = keypoint_errors(
        pred,
        torch.tensor([[0.9, 0.3, 0.4]]),
        target,
        torch.tensor([[True, True, False]]),
        orig_size,
    )
    assert errors["heading_error_deg"].item() == pytest.approx(90.0, abs=1e-4)


def test_geometry_gives_the_same_numbers_for_numpy_and_torch() -> None:
    rng = np.random.default_rng(3)
    keypoints_px = rng.uniform(0, 500, size=(64, 3, 2))
    visibility = rng.uniform(0, 1, size=(64, 3))
    visibility[:8, 1:] = 0.2  # no arm above threshold: the likelier one is taken
    orig_size = rng.uniform(100, 900, size=(64, 2))
    visible_np = metrics.predicted_visibility(visibility)
    visible_t = metrics.predicted_visibility(torch.from_numpy(visibility))
    assert isinstance(visible_np, np.ndarray)
    assert visible_np.dtype == bool
    np.testing.assert_array_equal(visible_np, visible_t.numpy())
    assert visible_np[:8, 1:].sum(axis=1).tolist() == [1] * 8
    keypoints_t = torch.from_numpy(keypoints_px)
    for name in ("heading_deg", "wake_length_px", "far_end_px"):
        function = getattr(metrics, name)
        from_numpy = function(keypoints_px, visible_np)
        assert isinstance(from_numpy, np.ndarray)
        np.testing.assert_allclose(from_numpy, function(keypoints_t, visible_t).numpy(), atol=1e-9)
    np.testing.assert_allclose(
        metrics.to_pixels(keypoints_px / 500, orig_size),
        metrics.to_pixels(keypoints_t / 500, torch.from_numpy(orig_size)).numpy(),
    )
