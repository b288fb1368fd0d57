"""Model quality within a training-time budget: today's recipe against the new one.

Every recipe trains from random weights on the same synthetic chips (``--train-seed``,
600 chips) with the same seed and the same wall-clock budget on the CPU, and is
evaluated on held-out chips of another seed (``--eval-seed``, 200 chips) that no
run ever trained on. The recipes (:data:`RECIPES`) are ``train --max-time`` with:

- ``cut``: the schedule planned for ``--epochs`` and cut by Lightning wherever the
  learning rate is when the time is up (the first way);
- ``fitted``: the schedule fitted to the budget (:class:`wakemodel.budget.TimeBudget`),
  visibility from pooled features only, no weight averaging, batch 16 (the recipe
  before issue 11's second part);
- ``new``: today's defaults of ``train`` (batch 8);
- ``b16``: today's defaults with the previous default batch of 16 chips;
- ablations of ``new``, one change each: ``new-ema`` (no weight averaging),
  ``new-kpvis`` (no per-keypoint visibility), ``new+copy`` (both end slots of
  one-end chips trained onto their end), ``new+axis`` (the wake-axis loss on),
  ``new-160`` (160 px network input instead of 224: about twice the epochs in a budget),
  ``new-slot`` (a chip's one visible end in whichever end slot is closer, as before
  session 14, instead of pinned to the first), ``new-lr2`` (peak learning rate 2e-3
  instead of 1e-3).

Every recipe selects its best checkpoint and reads its keypoints today's way (by the
validation loss; in a window around each heatmap's mode, see
``bench_decode.py``): those are not training settings.

For each budget (``--minutes``, default 5 10 15) and recipe it prints the heading
error's median, mean and p90 (degrees), the share of chips more than 90 degrees
off, the median vertex error as a fraction of the wake length, and the epochs
run. The best checkpoint by validation (what ``train`` reports) is evaluated with one
view (``evaluate --no-tta``), and with ``--tta`` also with the 8 test-time views (what
``evaluate`` does by default), in a row of its own.

Usage (from the repository root; about the sum of the budgets times the recipes)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_quality.py --minutes 5 10 15

``--keep-runs DIR`` keeps each run folder (``DIR/RECIPE-15m/checkpoints/`` ...) for
``tail_breakdown.py`` and ``cli.py plot predictions --worst``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from wakemodel.evaluate import evaluate
from wakemodel.synthetic import generate_dataset
from wakemodel.train import TrainConfig, train

BEFORE = {
    "ema_decay": 0.0,
    "keypoint_visibility": False,
    "copy_single_end": False,
    "single_end_slot": False,
    "batch_size": 16,
}
"""The training settings before issue 11's second part."""

RECIPES: dict[str, dict[str, Any]] = {
    "cut": {"fit_schedule_to_time": False, **BEFORE},
    "fitted": BEFORE,
    "new": {},
    "b16": {"batch_size": 16},
    "new-ema": {"ema_decay": 0.0},
    "new-kpvis": {"keypoint_visibility": False},
    "new+copy": {"copy_single_end": True},
    "new+axis": {"heading_weight": 0.1},
    "new-160": {"image_size": 160},
    "new-slot": {"single_end_slot": False},
    "new-lr2": {"lr": 2e-3},
}
"""``TrainConfig`` settings of each recipe on top of today's defaults."""


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[5.0, 10.0, 15.0])
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=["fitted", "new"])
    parser.add_argument("--train-count", type=int, default=600)
    parser.add_argument("--eval-count", type=int, default=200)
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument("--eval-seed", type=int, default=1)
    parser.add_argument(
        "--data-root",
        type=Path,
        default=Path("data/bench-quality"),
        help="Synthetic sets are written here once and reused.",
    )
    parser.add_argument(
        "--tta", action="store_true", help="Also evaluate with the 8 test-time views."
    )
    parser.add_argument("--json", type=Path, help="Also write the rows as JSON.")
    parser.add_argument(
        "--keep-runs",
        type=Path,
        help="Keep each run folder (checkpoints, metrics) here instead of a temporary folder.",
    )
    return parser.parse_args()


def _dataset(root: Path, count: int, seed: int) -> Path:
    folder = root / f"seed{seed}-{count}"
    if not (folder / "imgs").is_dir():
        generate_dataset(folder, count, seed)
    return folder


def _row(report: Any, **fields: Any) -> dict[str, Any]:
    """One table row: the run's ``fields`` and the heading and vertex errors of ``report``."""
    heading = report.errors["heading_error_deg"]
    vertex = report.errors["vertex_error_frac"]
    return {
        **fields,
        "heading_median_deg": float(np.nanmedian(heading)),
        "heading_mean_deg": float(np.nanmean(heading)),
        "heading_p90_deg": float(np.nanpercentile(heading, 90)),
        "share_over_90_deg": float(np.mean(np.nan_to_num(heading, nan=180.0) > 90.0)),
        "vertex_frac_median": float(np.nanmedian(vertex)),
    }


def _run(
    recipe: str,
    minutes: float,
    train_dir: Path,
    eval_dir: Path,
    seed: int,
    tta: bool,
    keep_runs: Path | None,
) -> list[dict[str, Any]]:
    seconds = round(minutes * 60)
    max_time = f"00:{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as folder:
        start = time.monotonic()
        result = train(
            TrainConfig(
                data_dir=train_dir,
                accelerator="cpu",
                max_time=max_time,
                seed=seed,
                pretrained=False,
                progress_bar=False,
                run_dir=keep_runs or Path(folder),
                run_name=f"{recipe}-{minutes:g}m",
                **RECIPES[recipe],
            )
        )
        wall_s = time.monotonic() - start
        model = result.best_checkpoint or result.last_checkpoint
        run = {
            "minutes": minutes,
            "wall_s": wall_s,
            "epochs": result.epochs_completed,
            "best_epoch": result.best_epoch,
        }
        return [
            _row(evaluate(model, eval_dir, accelerator="cpu", tta=tta), recipe=name, **run)
            for name, tta in [(recipe, False)] + ([(f"{recipe} tta", True)] if tta else [])
        ]


def main() -> None:
    args = _parse_args()
    logging.basicConfig(level=logging.WARNING)
    train_dir = _dataset(args.data_root, args.train_count, args.train_seed)
    eval_dir = _dataset(args.data_root, args.eval_count, args.eval_seed)
    rows = [
        row
        for minutes in args.minutes
        for recipe in args.recipes
        for row in _run(
            recipe, minutes, train_dir, eval_dir, args.train_seed, args.tta, args.keep_runs
        )
    ]
    header = (
        f"{'recipe':<14}{'budget':>8}{'wall':>8}{'epochs':>8}{'best':>6}"
        f"{'heading median':>16}{'mean':>8}{'p90':>8}{'> 90°':>8}{'vertex/len':>12}"
    )
    print(f"{len(rows)} runs; train {train_dir}, held out {eval_dir} ({args.eval_count} chips)")
    print(header)
    for row in rows:
        print(
            f"{row['recipe']:<14}{row['minutes']:>7g}m{row['wall_s'] / 60:>7.1f}m"
            f"{row['epochs']:>8}{row['best_epoch']!s:>6}{row['heading_median_deg']:>15.2f}°"
            f"{row['heading_mean_deg']:>7.1f}°{row['heading_p90_deg']:>7.1f}°"
            f"{row['share_over_90_deg']:>8.1%}{row['vertex_frac_median']:>12.1%}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
