"""The wake score as the network gives it against its Platt scaling, on held-out chips.

``train`` fits the Platt scaling of the wake score on its validation split when that
split holds chips without a wake (``wakemodel_wake_score_platt`` in the checkpoint).
This script predicts a held-out set once (8 views, as ``evaluate``), recovers the
network's own score from the scaled one (the scaling is a monotone map on the logit)
and prints, side by side for both: recall of true wakes, rejection of negatives at each
threshold, and the ROC AUC (the same for both: the ranking does not change); then the
heading error of the wakes each keeps at 0.5.

Usage (from the repository root; the data and training of ``benchmarks/README.md``)::

    python benchmarks/bench_wake_score.py MODEL.ckpt eval200n [--thresholds 0.3 0.5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from wakemodel.calibration import invert_wake_score_platt, wake_detection
from wakemodel.evaluate import evaluate
from wakemodel.infer import as_predictor
from wakemodel.predictors import wake_score_platt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="A .ckpt or .onnx file written by train/export.")
    parser.add_argument("data", type=Path, help="Held-out dataset with chips without a wake.")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--no-tta", dest="tta", action="store_false", help="One view only.")
    args = parser.parse_args()

    predictor = as_predictor(str(args.model), "cpu")
    platt = wake_score_platt(predictor)
    if platt is None:
        parser.error(f"{args.model} has no wake-score Platt scaling; train on data with negatives.")
    report = evaluate(predictor, args.data, tta=args.tta)
    scores = {
        "network (raw)": invert_wake_score_platt(report.wake_score, platt),
        f"Platt sigmoid({platt[0]:.3f}·logit {platt[1]:+.3f})": report.wake_score,
    }
    has_wake = report.has_wake
    heading_error_deg = report.errors["heading_error_deg"]
    print(
        f"{args.data}: {int(has_wake.sum())} wakes, {int((~has_wake).sum())} without a wake; "
        f"{'8 views' if args.tta else '1 view'}"
    )
    header = f"{'score':<38}{'threshold':>10}{'recall':>9}{'rejected':>10}{'ROC AUC':>9}"
    print(header + f"{'kept wakes: median':>20}{'p90 heading':>13}")
    print("-" * (len(header) + 33))
    for label, score in scores.items():
        for threshold in args.thresholds:
            detection = wake_detection(score, has_wake, threshold=threshold)
            kept = heading_error_deg[has_wake & (score >= threshold)]
            median, p90 = (np.percentile(kept, q) if kept.size else np.nan for q in (50, 90))
            print(
                f"{label:<38}{threshold:>10.2f}{detection['wake_recall']:>9.1%}"
                f"{detection['negative_rejection']:>10.1%}{detection['roc_auc']:>9.3f}"
                f"{median:>19.2f}°{p90:>12.1f}°"
            )


if __name__ == "__main__":
    main()
