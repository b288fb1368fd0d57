import math

import numpy as np
import pytest

from wakemodel.evidence import WAKE_RAY_OFFSETS_DEG, wake_contrast
from wakemodel.keypoints import KELVIN_HALF_ANGLE_DEG

VERTEX = np.array([48.0, 30.0])


def _chip_with_line(bearing_from_vertex_deg: float, amplitude: float = 1.5) -> np.ndarray:
    """float32 [96, 96] white noise (std 1) with a line from VERTEX along this compass bearing."""
    image = np.random.default_rng(1).normal(0.0, 1.0, (96, 96)).astype(np.float32)
    angle = math.radians(bearing_from_vertex_deg)
    for t in np.linspace(0.0, 50.0, 200):
        x, y = VERTEX[0] + t * math.sin(angle), VERTEX[1] - t * math.cos(angle)
        image[round(y), round(x)] += amplitude
    return image


def test_wake_contrast_sees_the_wake_behind_the_vertex_not_ahead_of_it() -> None:
    # The wake runs south of the vertex: the vessel heads north (0 degrees).
    turbulent = _chip_with_line(180.0)
    behind = wake_contrast(turbulent, VERTEX, heading_deg=0.0)
    ahead = wake_contrast(turbulent, VERTEX, heading_deg=180.0)
    noise_only = wake_contrast(_chip_with_line(180.0, amplitude=0.0), VERTEX, heading_deg=0.0)
    assert behind > 3.0 * max(ahead, noise_only)
    # A dark line counts as well as a bright one; so does a Kelvin arm off the axis.
    assert wake_contrast(-turbulent, VERTEX, 0.0) == pytest.approx(behind, rel=0.2)
    arm = _chip_with_line(180.0 + KELVIN_HALF_ANGLE_DEG)
    assert wake_contrast(arm, VERTEX, 0.0) > 3.0 * wake_contrast(arm, VERTEX, 180.0)
    assert len(WAKE_RAY_OFFSETS_DEG) == 3


def test_wake_contrast_is_nan_without_a_reading() -> None:
    image = _chip_with_line(180.0)
    assert math.isnan(wake_contrast(image, VERTEX, heading_deg=math.nan))
    assert math.isnan(wake_contrast(image, np.array([math.nan, 3.0]), heading_deg=0.0))
    # A vertex far outside the chip: no ray has enough samples inside.
    assert math.isnan(wake_contrast(image, np.array([-500.0, -500.0]), heading_deg=0.0))
    assert wake_contrast(np.full((40, 40), 7, dtype=np.uint8), VERTEX / 2, 0.0) == 0.0
