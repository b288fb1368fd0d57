"""Where the heading error's tail comes from: one model on labelled chips, split by cause.

Prints the heading error (median, p90, share > 90 degrees) of the model's keypoints,
then the same with the predicted vertex and the TRUE wake ends (so the tail that the
vertex alone causes), then split by the chip's true number of keypoints (one wake
end or two), by whether the predicted visible-end count is right, by aspect ratio
and by wake length, and lists the worst chips with what they have in common. Pair it
with ``python cli.py plot predictions MODEL DATA --worst --count 20`` to look at them.

Usage (from the repository root)::

    python benchmarks/tail_breakdown.py MODEL.ckpt data/bench-quality/seed1-200 [--tta]
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wakemodel import keypoints as kp
from wakemodel.infer import predict


def _truth(annotation: Path) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints ``[3, 2]`` (pixels, 0 where absent) and visibility ``[3]`` of one chip."""
    tooltips = json.loads(annotation.read_text(encoding="utf-8"))["tooltips"]
    points, visible = np.zeros((kp.NUM_KEYPOINTS, 2)), np.zeros(kp.NUM_KEYPOINTS, dtype=bool)
    for slot, point in enumerate(tooltips):
        points[slot], visible[slot] = (point["x"], point["y"]), True
    return points, visible


def _summary(label: str, errors: Sequence[float]) -> str:
    values = np.asarray(errors, dtype=float)
    if values.size == 0:
        return f"{label:<44} n=  0"
    return (
        f"{label:<44} n={values.size:>3}  median {np.median(values):6.2f}°  "
        f"p90 {np.percentile(values, 90):6.1f}°  > 90° {np.mean(values > 90):5.1%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("data", type=Path, help="Dataset root with imgs/ and annotations/.")
    parser.add_argument(
        "--tta", action="store_true", help="Combine the 8 flips/rotations (median keypoints)."
    )
    parser.add_argument("--worst", type=int, default=12)
    args = parser.parse_args()

    images = sorted((args.data / "imgs").iterdir())
    predictions = predict(args.model, images, accelerator="cpu", tta=args.tta)
    rows = []
    for image, prediction in zip(images, predictions, strict=True):
        truth, visible = _truth(args.data / "annotations" / f"{image.stem}.json")
        if not visible[kp.VERTEX_SLOT]:
            continue
        true_heading = kp.heading_deg(truth, visible)
        vertex_only = truth.copy()
        vertex_only[kp.VERTEX_SLOT] = prediction.keypoints_px[kp.VERTEX_SLOT]
        length_px = float(kp.length(truth[kp.VERTEX_SLOT] - kp.far_end_px(truth, visible)))
        rows.append(
            {
                "name": image.name,
                "error_deg": float(kp.angle_difference_deg(prediction.heading_deg, true_heading)),
                "vertex_only_error_deg": float(
                    kp.angle_difference_deg(kp.heading_deg(vertex_only, visible), true_heading)
                ),
                "true_ends": int(visible[1:].sum()),
                "predicted_ends": int(prediction.visible[1:].sum()),
                "aspect": max(prediction.width, prediction.height)
                / min(prediction.width, prediction.height),
                "wake_length_px": length_px,
                "vertex_error_frac": float(
                    kp.length(prediction.keypoints_px[kp.VERTEX_SLOT] - truth[kp.VERTEX_SLOT])
                )
                / length_px,
                "heading_std_deg": prediction.heading_std_deg,
            }
        )
    errors = np.array([row["error_deg"] for row in rows])
    print(_summary("all chips with a wake", errors))
    print(_summary("predicted vertex, true ends", [row["vertex_only_error_deg"] for row in rows]))
    for ends in (1, 2):
        for predicted in (1, 2):
            subset = [
                row["error_deg"]
                for row in rows
                if row["true_ends"] == ends and row["predicted_ends"] == predicted
            ]
            print(_summary(f"{ends} true end(s), {predicted} predicted visible", subset))
    aspects = np.array([row["aspect"] for row in rows])
    for low, high in ((1.0, 1.5), (1.5, 2.5), (2.5, np.inf)):
        inside = (aspects >= low) & (aspects < high)
        print(_summary(f"aspect {low:g} to {high:g}", errors[inside]))
    lengths = np.array([row["wake_length_px"] for row in rows])
    edges = np.quantile(lengths, [0.0, 1 / 3, 2 / 3, 1.0])
    for low, high in itertools.pairwise(edges):
        inside = (lengths >= low) & (lengths <= high)
        print(_summary(f"wake length {low:.0f} to {high:.0f} px", errors[inside]))
    print(f"\n{args.worst} worst chips:")
    for row in sorted(rows, key=lambda row: -row["error_deg"])[: args.worst]:
        print(
            f"  {row['name']:<18} error {row['error_deg']:6.1f}°  with true ends "
            f"{row['vertex_only_error_deg']:5.1f}°  ends true/predicted "
            f"{row['true_ends']}/{row['predicted_ends']}  aspect {row['aspect']:4.2f}  "
            f"length {row['wake_length_px']:5.0f} px  vertex {row['vertex_error_frac']:5.1%}  "
            f"std {row['heading_std_deg']:5.1f}°"
        )


if __name__ == "__main__":
    main()
