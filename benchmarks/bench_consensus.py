"""How to combine the 8 test-time views: the plain view, their mean, their median.

One model, labelled chips. Every chip is predicted under the 8 flips/rotations
(:func:`wakemodel.tta.predict_views`, arm slots aligned to the plain view), and
the views are combined three ways, side by side on the same predictions:

- ``plain view``: the untransformed input alone (what ``infer`` gives without ``--tta``);
- ``mean``: the views' mean (``--tta`` and self-training before this benchmark);
- ``median``: the per-coordinate median (:func:`wakemodel.tta.consensus`, today's way).

Printed per way: the heading error (median, p90, share over 90 degrees), the
vertex error as a fraction of the wake length, and the share of chips whose
combined answer is right (heading within 10 degrees and vertex within 5 % of
the wake length), a stricter cousin of ``bench_selftrain.py``'s pseudo-label
precision (that one counts the kept chips and 5 % of the chip diagonal).

Usage (from the repository root)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_consensus.py MODEL.ckpt \
        data/bench-quality/seed1-200
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from wakemodel import keypoints as kp
from wakemodel.infer import as_predictor
from wakemodel.preprocess import preprocess_image, read_chip
from wakemodel.records import scan_dataset
from wakemodel.tta import consensus, predict_views

BATCH_SIZE = 32
HEADING_OK_DEG = 10.0
VERTEX_OK_FRAC = 0.05


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("data", type=Path, help="Dataset root with imgs/ and annotations/.")
    args = parser.parse_args()

    records = [record for record in scan_dataset(args.data) if record.has_wake]
    predictor = as_predictor(args.model, accelerator="cpu")
    size = int(predictor.image_size)
    views, probabilities = [], []
    for start in range(0, len(records), BATCH_SIZE):
        batch = records[start : start + BATCH_SIZE]
        images = np.stack([preprocess_image(read_chip(r.image_path)[1], size) for r in batch])
        keypoints, visibility, _ = predict_views(predictor, images.astype(np.float32) / 255.0)
        views.append(keypoints)
        probabilities.append(visibility)
    sizes = np.array([[r.width, r.height] for r in records], dtype=np.float64)
    views_px = np.concatenate(views, axis=1) * sizes[None, :, None, :]
    visibility = np.concatenate(probabilities, axis=1)

    truth_px = np.stack([r.keypoints_px for r in records]).astype(np.float64)
    truth_visible = np.stack([r.visible for r in records])
    true_heading = kp.heading_deg(truth_px, truth_visible)
    length_px = kp.length(truth_px[:, kp.VERTEX_SLOT] - kp.far_end_px(truth_px, truth_visible))
    ways = {
        "plain view": (views_px[0], visibility[0]),
        "mean": (views_px.mean(axis=0), visibility.mean(axis=0)),
        "median": (consensus(views_px), visibility.mean(axis=0)),
    }
    print(f"{args.model} on {len(records)} chips with a wake of {args.data}")
    print(
        f"{'views combined by':<18}{'heading median':>15}{'p90':>8}{'> 90°':>8}"
        f"{'vertex/len':>12}{'pseudo-label ok':>17}"
    )
    for name, (keypoints_px, probability) in ways.items():
        visible = kp.predicted_visibility(probability)
        error_deg = kp.angle_difference_deg(kp.heading_deg(keypoints_px, visible), true_heading)
        vertex_frac = kp.length(keypoints_px[:, kp.VERTEX_SLOT] - truth_px[:, kp.VERTEX_SLOT])
        vertex_frac = vertex_frac / length_px
        correct = (error_deg < HEADING_OK_DEG) & (vertex_frac < VERTEX_OK_FRAC)
        print(
            f"{name:<18}{np.median(error_deg):>14.2f}°{np.percentile(error_deg, 90):>7.1f}°"
            f"{np.mean(error_deg > 90):>8.1%}{np.median(vertex_frac):>12.1%}"
            f"{np.mean(correct):>17.1%}"
        )


if __name__ == "__main__":
    main()
