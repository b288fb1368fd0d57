"""Issue #12's calibration targets for several models at once (e.g. one per training seed).

One training's calibration figures move a lot with its seed: the 8-view std factor and
the Platt scaling are fitted on a validation split of a few dozen chips. This script
evaluates every model given on the same held-out set (as ``python cli.py evaluate``,
8 views by default) and prints, one row per model and per number of views: the heading
error (median, p90), the heading uncertainty's Spearman rank correlation with the
error, the p90 error of the 80 % most confident chips over that of all, the share of
errors inside the predicted 90 % intervals, and the wake score's recall, rejection of
negatives and ROC AUC at the default threshold; then, per column, the median over the
models and how many meet the target.

Usage (from the repository root; the data and trainings of ``benchmarks/README.md``)::

    python benchmarks/bench_calibration.py runs/cal20*/checkpoints/wake-*.ckpt --data eval200n \\
        [--views 8 1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from wakemodel.calibration import meets_target
from wakemodel.evaluate import evaluate
from wakemodel.infer import as_predictor

COLUMNS = {
    "heading median": "heading_median_deg",
    "p90": "heading_p90_deg",
    "Spearman": "spearman",
    "confident p90 / all": "confident_p90_ratio",
    "90% coverage": "interval_coverage",
    "wake recall": "wake_recall",
    "negatives rejected": "negative_rejection",
    "ROC AUC": "roc_auc",
}
"""Printed column -> key of the figures; targets: ``calibration.CALIBRATION_TARGETS``."""

PERCENT_KEYS = {"interval_coverage", "wake_recall", "negative_rejection"}


def figures(model: Path, data: Path, tta: bool) -> dict[str, float]:
    """The calibration summary of ``evaluate`` plus the heading median and p90, degrees."""
    report = evaluate(as_predictor(str(model), "cpu"), data, tta=tta)
    heading_error_deg = report.errors["heading_error_deg"][report.has_wake]
    return {
        **report.summary["calibration"],
        "heading_median_deg": float(np.nanmedian(heading_error_deg)),
        "heading_p90_deg": float(np.nanpercentile(heading_error_deg, 90)),
    }


def cell(key: str, value: float) -> str:
    """One table cell: a percentage, degrees or a plain number."""
    if not np.isfinite(value):
        return "n/a"
    if key in PERCENT_KEYS:
        return f"{value:.1%}"
    if key.endswith("_deg"):
        return f"{value:.2f}°"
    return f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", type=Path, nargs="+", help=".ckpt or .onnx files.")
    parser.add_argument("--data", type=Path, required=True, help="Held-out dataset.")
    parser.add_argument("--views", type=int, nargs="+", choices=(1, 8), default=[8])
    args = parser.parse_args()

    print("| model | views | " + " | ".join(COLUMNS) + " |")
    print("| --- " * (len(COLUMNS) + 2) + "|")
    for views in args.views:
        rows = [figures(model, args.data, tta=views == 8) for model in args.models]
        for model, row in zip(args.models, rows, strict=True):
            cells = [cell(key, row[key]) for key in COLUMNS.values()]
            print(f"| {model} | {views} | " + " | ".join(cells) + " |")
        summary = []
        for key in COLUMNS.values():
            values = [row[key] for row in rows]
            text = cell(key, float(np.nanmedian(values)))
            verdicts = [meets_target(key, value) for value in values]
            if any(verdict is not None for verdict in verdicts):
                text += f" ({sum(verdict is True for verdict in verdicts)}/{len(rows)} met)"
            summary.append(text)
        print(f"| median of {len(rows)} | {views} | " + " | ".join(summary) + " |")


if __name__ == "__main__":
    main()
