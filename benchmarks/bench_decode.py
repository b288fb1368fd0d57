"""How to read a keypoint off its heatmap: the whole heatmap's mean against a window at its peak.

One trained model, labelled chips, the same network outputs read several ways
(:attr:`EfficientNetB0KeypointDetector.decode_radius_cells`):

- ``whole``: the soft-argmax over the whole heatmap (radius 0; what training
  optimises, and what ``infer`` returned before this benchmark);
- ``r1``, ``r2`` ...: the soft-argmax over a window of that half-width, in heatmap
  cells, around each heatmap's highest cell (:func:`wakemodel.network.decode_heatmaps`;
  today's default is :data:`wakemodel.network.DECODE_RADIUS_CELLS`).

Printed per way, without and (``--tta``) with the 8 test-time views: the heading
error's median, mean and p90 (degrees), the share over 90 degrees, the median vertex
error as a fraction of the wake length, and how far the heading uncertainty can be
trusted (Spearman of std against error, and the share of errors inside the 90 %
interval; the model's ``std_scale`` was fitted on its validation chips with the
decoding it was trained under).

Usage (from the repository root)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_decode.py MODEL.ckpt \
        data/bench-quality/seed1-200 [--tta]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from wakemodel.evaluate import evaluate
from wakemodel.predictors import TorchPredictor, load_predictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="A .ckpt written by train.")
    parser.add_argument("data", type=Path, help="Dataset root with imgs/ and annotations/.")
    parser.add_argument("--radii", type=int, nargs="+", default=[0, 1, 2, 3, 4, 6])
    parser.add_argument("--tta", action="store_true", help="Also with the 8 test-time views.")
    args = parser.parse_args()

    predictor = load_predictor(args.model, accelerator="cpu")
    if not isinstance(predictor, TorchPredictor):
        parser.error("the model must be a .ckpt (an ONNX file has its decoding built in)")
    print(f"{args.model} on {args.data}")
    print(
        f"{'decoding':<10}{'views':>6}{'heading median':>16}{'mean':>8}{'p90':>8}{'> 90°':>8}"
        f"{'vertex/len':>12}{'Spearman':>10}{'90% cover':>11}"
    )
    for tta in (False, True) if args.tta else (False,):
        for radius in args.radii:
            predictor.module.decode_radius_cells = radius
            report = evaluate(predictor, args.data, tta=tta)
            heading = report.errors["heading_error_deg"][report.has_wake]
            vertex = report.errors["vertex_error_frac"][report.has_wake]
            calibration = report.summary["calibration"]
            print(
                f"{'whole' if radius == 0 else f'r{radius}':<10}{8 if tta else 1:>6}"
                f"{np.nanmedian(heading):>15.2f}°{np.nanmean(heading):>7.1f}°"
                f"{np.nanpercentile(heading, 90):>7.1f}°"
                f"{np.mean(np.nan_to_num(heading, nan=180.0) > 90.0):>8.1%}"
                f"{np.nanmedian(vertex):>12.1%}{calibration['spearman']:>10.2f}"
                f"{calibration['interval_coverage']:>11.1%}",
                flush=True,
            )


if __name__ == "__main__":
    main()
