"""What the image itself says about a predicted wake, independent of the model.

Self-training's reward (:mod:`wakemodel.selftrain`) asks whether a chip's 8 views
agree; a model that is wrong the same way in every view (the usual failure on
imagery unlike its training chips) passes that test. :func:`wake_contrast` is a
second, model-free opinion: a wake is a line brighter or darker than the sea
around it, running back from the vessel along the wake axis (the turbulent wake)
or at the Kelvin cusp half-angle to either side of it (the arms).
"""

from __future__ import annotations

import math

import numpy as np

from wakemodel.keypoints import KELVIN_HALF_ANGLE_DEG, bearing_unit_vector

__all__ = ["WAKE_RAY_OFFSETS_DEG", "wake_contrast"]

WAKE_RAY_OFFSETS_DEG = (-KELVIN_HALF_ANGLE_DEG, 0.0, KELVIN_HALF_ANGLE_DEG)
"""Directions of the rays sampled behind the vertex, relative to the wake axis (degrees)."""


def wake_contrast(
    image: np.ndarray,
    vertex_px: np.ndarray,
    heading_deg: float,
    *,
    length_fraction: float = 0.35,
    background_sigma_px: float = 6.0,
    samples: int = 40,
) -> float:
    """Line contrast of the wake a prediction places behind its vertex.

    The chip minus its Gaussian-blurred self (the sea's slow patches removed),
    divided by its standard deviation, is sampled along three rays from the
    vertex, pointing away from the heading: the wake axis and the two Kelvin
    arms. Each ray's contrast is ``|mean| * sqrt(n)`` of its ``n`` samples
    inside the chip (a z-score if the sea were white noise); the strongest
    ray's is returned.

    Args:
        image: ``[H, W]`` grayscale chip, any numeric type.
        vertex_px: ``[2]`` predicted vertex (x, y) in the chip's pixels.
        heading_deg: Predicted heading (compass degrees; the wake lies behind).
        length_fraction: Ray length as a fraction of the chip diagonal.
        background_sigma_px: Blur that estimates the background (pixels).
        samples: Points per ray, from 4 pixels off the vertex to its end.

    Returns:
        The contrast (>= 0; larger: a clearer line where the wake should be);
        NaN for a NaN heading or vertex, or when every ray has fewer than
        ``samples // 4`` points inside the chip.
    """
    from scipy import ndimage

    vertex = np.asarray(vertex_px, dtype=np.float64)
    if not (math.isfinite(heading_deg) and np.isfinite(vertex).all()):
        return math.nan
    pixels = np.asarray(image, dtype=np.float32)
    detail = pixels - ndimage.gaussian_filter(pixels, background_sigma_px)
    detail /= float(detail.std()) + 1e-6
    length_px = length_fraction * math.hypot(*pixels.shape)
    along = np.linspace(4.0, max(length_px, 4.0), samples)
    best = math.nan
    for offset in WAKE_RAY_OFFSETS_DEG:
        x, y = vertex[:, None] + bearing_unit_vector(heading_deg + 180.0 + offset)[:, None] * along
        values = ndimage.map_coordinates(detail, [y, x], order=1, mode="constant", cval=np.nan)
        values = values[np.isfinite(values)]
        if len(values) >= samples // 4:
            score = abs(float(values.mean())) * math.sqrt(len(values))
            best = score if math.isnan(best) else max(best, score)
    return best
