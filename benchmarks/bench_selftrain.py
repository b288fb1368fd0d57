r"""Self-training (issue 13): what unlabelled chips add to 60 labelled ones.

All on synthetic chips with known truth (``--min-size``/``--max-size`` px sides):
labelled = ``--labeled`` chips of seed ``--labeled-seed`` (default style);
unlabelled = ``--unlabeled`` chips of seed ``--unlabeled-seed`` whose annotations
are hidden (only their images are passed on); held out = ``--heldout`` chips of
seed ``--heldout-seed``. Side by side, every training with the same settings and
wall-clock budget (``--max-time`` per training, ``--image-size``, random starting
weights, training seed 0) and the same labelled validation chips:

- (a) supervised on the labelled chips (self-training's round 0);
- (b) self-training rounds 1..``--rounds`` (:func:`wakemodel.selftrain.selftrain`);
- (c) the ceiling: the labelled chips plus the unlabelled ones with their true
  labels, built like a self-training round (labelled chips repeated alike).

Mode ``iid``: unlabelled and held-out chips of the default style. Mode ``shift``:
unlabelled and held-out chips of the ``shifted`` style (``synth --style shifted``),
labelled chips still of the default style. With ``--shift-val 0`` (the default) it validates on
the labelled split like ``iid`` ((a) is then the same model); with ``--shift-val N``
on ``N`` labelled shifted chips of seed ``--val-seed`` (``selftrain --val``: every
labelled chip trains, these chips choose each round's checkpoint and the round).

Printed per mode: the held-out heading error (median, p90; degrees) and vertex error
(median, pixels and share of the wake length) of every model; the pseudo-labels'
precision against the hidden truth per round (share of kept chips within 10 degrees
of heading and within 5 % of the chip diagonal at the vertex, and the same for the
rejected chips); the round each selection rule picks (:data:`SELECT_METRICS`: the
best epoch's single-view median on the labelled validation chips, and the 8-view median
and mean there, the default); the gap closed by the round that the labelled validation chose.

``--min-kept-fraction`` sets :attr:`wakemodel.selftrain.Reward.min_kept_fraction`;
several values run (b) once per value and mode on the same round 0 (and ceiling).
``--evidence-weight`` sets :attr:`wakemodel.selftrain.Reward.evidence_weight` the
same way (runs with a weight above 0 get an ``-ev{W}`` folder; 0 keeps the old names);
several ``--shift-val`` counts run the shift mode once per count. ``--seeds``
repeats everything per training seed (starting weights, labelled split, shuffling
and augmentation) and ends with every run's gain and their median over the seeds.

Usage (from the repository root; about 2 + (2 + runs x rounds + shift-val counts
above 0) x (max-time + 1) minutes, runs = fractions x (iid + shift-val counts))::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_selftrain.py
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_selftrain.py \
        --modes shift --min-kept-fraction 0 0.1
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_selftrain.py \
        --modes shift --min-kept-fraction 0.1 --shift-val 0 20
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wakemodel import keypoints as kp
from wakemodel.evaluate import evaluate
from wakemodel.records import scan_dataset, split_records
from wakemodel.selftrain import (
    ROUND_CHECKPOINTS,
    ROUND_FILE,
    VIEW_METRICS_PREFIX,
    Reward,
    SelfTrainConfig,
    SelfTrainResult,
    choose_round,
    selftrain,
    train_round,
    write_training_set,
)
from wakemodel.synthetic import generate_dataset
from wakemodel.train import TrainConfig

SELECT_METRICS = (
    "val/heading_error_deg",
    f"{VIEW_METRICS_PREFIX}heading_error_deg",
    f"{VIEW_METRICS_PREFIX}heading_error_mean_deg",
)
"""Round-selection rules compared: single-view median (the best epoch's), 8-view median, mean."""

HEADING_OK_DEG = 10.0
"""A pseudo-label's heading is correct within this many degrees of the truth."""

VERTEX_OK_FRAC = 0.05
"""A pseudo-label's vertex is correct within this share of the chip diagonal."""


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-selftrain"))
    parser.add_argument("--modes", nargs="+", choices=("iid", "shift"), default=["iid", "shift"])
    parser.add_argument("--labeled", type=int, default=60)
    parser.add_argument("--unlabeled", type=int, default=1000)
    parser.add_argument("--heldout", type=int, default=200)
    parser.add_argument("--labeled-seed", type=int, default=1)
    parser.add_argument("--unlabeled-seed", type=int, default=2)
    parser.add_argument("--heldout-seed", type=int, default=3)
    parser.add_argument(
        "--shift-val",
        type=int,
        nargs="+",
        default=[0],
        help="Labelled shifted chips validating the shift mode (0: the labelled split); "
        "several counts run the shift mode once each.",
    )
    parser.add_argument("--val-seed", type=int, default=4)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="Training seeds, one run each."
    )
    parser.add_argument("--min-size", type=int, default=64)
    parser.add_argument("--max-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--max-time", default="00:00:05:30", help="Wall-clock budget of every training."
    )
    parser.add_argument("--epochs", type=int, default=400, help="Upper bound on the epochs.")
    parser.add_argument(
        "--min-kept-fraction",
        type=float,
        nargs="+",
        default=[Reward.min_kept_fraction],
        help="Reward.min_kept_fraction: keep at least this share of the unlabelled chips; "
        "several values run (b) once each, side by side, on the same round 0.",
    )
    parser.add_argument(
        "--evidence-weight",
        type=float,
        nargs="+",
        default=[Reward.evidence_weight],
        help="Reward.evidence_weight: weight of the image's wake contrast in the ranking that "
        "fills the kept share; several values run (b) once each on the same round 0.",
    )
    parser.add_argument(
        "--round-checkpoint",
        choices=ROUND_CHECKPOINTS,
        default=SelfTrainConfig.round_checkpoint,
        help="SelfTrainConfig.round_checkpoint, also the ceiling's checkpoint.",
    )
    parser.add_argument("--json", type=Path, help="Also write the results as JSON.")
    return parser.parse_args()


def _dataset(root: Path, name: str, count: int, seed: int, style: str, args: Any) -> Path:
    """A synthetic dataset, generated once."""
    folder = root / name
    if not (folder / "imgs").is_dir():
        generate_dataset(
            folder,
            count,
            seed,
            min_size=args.min_size,
            max_size=args.max_size,
            workers=os.cpu_count() or 1,
            style=style,
        )
    return folder


def _images_only(dataset: Path, folder: Path) -> Path:
    """``folder`` holding hard links to ``dataset``'s images and nothing else."""
    if not folder.is_dir():
        partial = folder.with_name(folder.name + ".partial")
        partial.mkdir(parents=True, exist_ok=True)
        for image in (dataset / "imgs").iterdir():
            if not (partial / image.name).exists():
                os.link(image, partial / image.name)
        partial.rename(folder)
    return folder


def _held_out(checkpoint: Path, heldout: Path) -> dict[str, float]:
    """Held-out errors of a checkpoint (single view)."""
    report = evaluate(checkpoint, heldout, accelerator="cpu", batch_size=32, tta=False)
    heading = report.errors["heading_error_deg"]
    return {
        "heading_median_deg": float(np.nanmedian(heading)),
        "heading_p90_deg": float(np.nanpercentile(heading, 90)),
        "vertex_median_px": float(np.nanmedian(report.errors["vertex_error_px"])),
        "vertex_median_frac": float(np.nanmedian(report.errors["vertex_error_frac"])),
    }


def _pseudo_precision(round_dir: Path, truth: Path) -> dict[str, float]:
    """Pseudo-labels against the hidden truth: kept and rejected chips' correct shares."""
    chips = json.loads((round_dir / "agreement.json").read_text(encoding="utf-8"))
    records = {record.name: record for record in scan_dataset(truth)}
    heading_ok, vertex_ok, kept = [], [], []
    for chip in chips:
        record = records[Path(chip["source"]).stem]
        true_heading = float(kp.heading_deg(record.keypoints_px, record.visible))
        heading = math.nan if chip["heading_deg"] is None else chip["heading_deg"]
        heading_ok.append(bool(kp.angle_difference_deg(heading, true_heading) <= HEADING_OK_DEG))
        vertex_error = np.hypot(*(np.array(chip["vertex_px"]) - record.keypoints_px[0]))
        diagonal = math.hypot(record.width, record.height)
        vertex_ok.append(bool(vertex_error <= VERTEX_OK_FRAC * diagonal))
        kept.append(bool(chip["kept"]))
    kept_mask = np.array(kept, dtype=bool)
    heading_ok_a, vertex_ok_a = np.array(heading_ok), np.array(vertex_ok)
    both = heading_ok_a & vertex_ok_a

    def share(values: np.ndarray, mask: np.ndarray) -> float:
        return float(values[mask].mean()) if mask.any() else math.nan

    return {
        "kept": int(kept_mask.sum()),
        "total": len(chips),
        "kept_heading_ok": share(heading_ok_a, kept_mask),
        "kept_vertex_ok": share(vertex_ok_a, kept_mask),
        "kept_both_ok": share(both, kept_mask),
        "rejected_heading_ok": share(heading_ok_a, ~kept_mask),
        "rejected_both_ok": share(both, ~kept_mask),
    }


def _ceiling(config: SelfTrainConfig, truth: Path, folder: Path) -> tuple[Path, float]:
    """(c): train on the labelled chips plus the unlabelled ones with their true labels."""
    done = folder / "ceiling.json"
    if done.is_file():
        stored = json.loads(done.read_text(encoding="utf-8"))
        return Path(stored["checkpoint"]), float(stored["wall_s"])
    start = time.monotonic()
    fractions = (1.0 - config.val_fraction, config.val_fraction, 0.0)
    parts = split_records(scan_dataset(config.labeled_dir), config.train.seed, fractions)
    data = folder / "train_data"
    write_training_set(data, parts["train"], parts["val"], truth, config.labeled_repeats)
    checkpoint, _ = train_round(config, folder, data)
    wall_s = time.monotonic() - start
    done.write_text(json.dumps({"checkpoint": str(checkpoint), "wall_s": wall_s}))
    return checkpoint, wall_s


def _gap_closed(baseline: float, value: float, ceiling: float) -> float:
    """Share of the gap from the baseline to the ceiling that ``value`` closes."""
    gap = baseline - ceiling
    return (baseline - value) / gap if gap > 0 else math.nan


def _print_mode(mode: str, rows: list[dict[str, Any]], result: SelfTrainResult) -> None:
    print(f"\n== {mode}: held-out errors (best round by labelled validation: {result.best_round})")
    print(
        f"{'model':<22}{'train chips':>12}{'kept':>7}{'val heading':>12}{'val 8v mean':>12}"
        f"{'heading median':>16}{'p90':>8}{'vertex px':>11}{'vertex/len':>11}{'wall':>8}"
    )
    for row in rows:
        print(
            f"{row['model']:<22}{row['train_chips']:>12}{row.get('kept', '-')!s:>7}"
            f"{row.get('val_heading_deg', math.nan):>11.2f}°"
            f"{row.get('val_views_mean_deg', math.nan):>11.2f}°"
            f"{row['heading_median_deg']:>15.2f}°{row['heading_p90_deg']:>7.1f}°"
            f"{row['vertex_median_px']:>11.2f}{row['vertex_median_frac']:>11.1%}"
            f"{row['wall_s'] / 60:>7.1f}m"
        )
    precision = [row for row in rows if "pseudo" in row]
    if precision:
        print(
            f"{'pseudo-labels':<22}{'kept':>12}{'heading ok':>12}{'vertex ok':>11}"
            f"{'both ok':>9}{'rejected: heading ok':>22}{'both ok':>9}"
        )
        for row in precision:
            p = row["pseudo"]
            print(
                f"{row['model']:<22}{p['kept']:>7}/{p['total']:<4}{p['kept_heading_ok']:>12.1%}"
                f"{p['kept_vertex_ok']:>11.1%}{p['kept_both_ok']:>9.1%}"
                f"{p['rejected_heading_ok']:>22.1%}{p['rejected_both_ok']:>9.1%}"
            )


def main() -> None:
    args = _parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("wakemodel.selftrain").setLevel(logging.INFO)
    start = time.monotonic()
    data = args.out / "data"
    labeled = _dataset(data, "labeled", args.labeled, args.labeled_seed, "default", args)
    base = TrainConfig(
        image_size=args.image_size,
        max_time=args.max_time,
        epochs=args.epochs,
        accelerator="cpu",
        pretrained=False,
        progress_bar=False,
        logger="none",
    )
    print(
        f"torch {torch.__version__}, {platform.machine()} {os.cpu_count()} cores; "
        f"image {args.image_size} px, chips {args.min_size}-{args.max_size} px, "
        f"{args.max_time} per training, {args.rounds} rounds, "
        f"min kept fraction {', '.join(f'{f:g}' for f in args.min_kept_fraction)}, "
        f"evidence weight {', '.join(f'{w:g}' for w in args.evidence_weight)}; "
        f"shift validated on {' / '.join(f'{n} shifted' if n else 'split' for n in args.shift_val)}"
    )
    summary: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    round_0: dict[tuple[int, int], Path] = {}  # round 0 per (shifted val count, seed)
    arms = [
        (seed, mode, fraction, weight, val_count)
        for seed, mode, fraction, weight in itertools.product(
            args.seeds, args.modes, args.min_kept_fraction, args.evidence_weight
        )
        for val_count in (args.shift_val if mode == "shift" else [0])
    ]
    gains: dict[str, list[tuple[int, list[float], int]]] = {}  # (seed, medians, chosen)
    for seed, mode, fraction, weight, val_count in arms:
        style = "default" if mode == "iid" else "shifted"
        truth = _dataset(
            data, f"unlabeled-{style}", args.unlabeled, args.unlabeled_seed, style, args
        )
        heldout = _dataset(data, f"heldout-{style}", args.heldout, args.heldout_seed, style, args)
        unlabeled = _images_only(truth, data / f"unlabeled-{style}-images")
        val_dir = None
        if val_count:
            val_dir = _dataset(
                data, f"val-{style}-{val_count}", val_count, args.val_seed, style, args
            )
        name, out = mode, args.out / mode
        if len(args.min_kept_fraction) > 1:
            name, out = f"{mode}, min kept {fraction:g}", args.out / f"{mode}-kept{fraction:g}"
        if weight > 0:
            name, out = f"{name}, evidence {weight:g}", out.with_name(f"{out.name}-ev{weight:g}")
        if mode == "shift" and len(args.shift_val) > 1:
            name, out = f"{name}, {val_count} val", out.with_name(f"{out.name}-val{val_count}")
        run_name, ceiling_dir = name, args.out / "ceiling"
        if len(args.seeds) > 1:
            name, out = f"{name}, seed {seed}", out.with_name(f"{out.name}-seed{seed}")
            ceiling_dir = ceiling_dir.with_name(f"ceiling-seed{seed}")
        if (val_count, seed) in round_0:
            # (a) is the same model for every mode and reward validated alike: train it once.
            (out / "round_0").mkdir(parents=True, exist_ok=True)
            (out / "round_0" / ROUND_FILE).write_text(round_0[val_count, seed].read_text("utf-8"))
        config = SelfTrainConfig(
            labeled,
            unlabeled,
            out,
            rounds=args.rounds,
            train=replace(base, seed=seed),
            reward=Reward(min_kept_fraction=fraction, evidence_weight=weight),
            val_dir=val_dir,
            round_checkpoint=args.round_checkpoint,
        )
        result = selftrain(config)
        round_0.setdefault((val_count, seed), out / "round_0" / ROUND_FILE)
        rows = []
        for r in result.rounds:
            row = {
                "model": "(a) supervised" if r.round == 0 else f"(b) round {r.round}",
                "train_chips": r.train_chips,
                "kept": r.kept_chips if r.round else "-",
                "val_heading_deg": r.val_metrics.get("val/heading_error_deg", math.nan),
                "val_views_mean_deg": r.val_metrics.get(SELECT_METRICS[-1], math.nan),
                "wall_s": r.wall_s,
                **_held_out(r.checkpoint, heldout),
            }
            if r.round:
                row["pseudo"] = _pseudo_precision(out / f"round_{r.round}", truth)
            rows.append(row)
        if mode == "iid":  # (c) does not depend on the reward: trained once, then read back
            checkpoint, wall_s = _ceiling(config, truth, ceiling_dir)
            rows.append(
                {
                    "model": "(c) ceiling",
                    "train_chips": sum(
                        1
                        for _ in (ceiling_dir / "train_data" / "splits" / "train.txt")
                        .read_text()
                        .splitlines()
                    ),
                    "wall_s": wall_s,
                    **_held_out(checkpoint, heldout),
                }
            )
        _print_mode(name, rows, result)
        for metric in SELECT_METRICS:
            picked = rows[choose_round(result.rounds, metric)]
            print(
                f"round chosen by {metric}: {picked['model']} (held-out median "
                f"{picked['heading_median_deg']:.2f}°, p90 {picked['heading_p90_deg']:.1f}°)"
            )
        chosen = rows[result.best_round]
        baseline = rows[0]
        if mode == "iid":
            ceiling = rows[-1]
            for key in ("heading_median_deg", "heading_p90_deg"):
                closed = _gap_closed(baseline[key], chosen[key], ceiling[key])
                print(
                    f"{key}: (a) {baseline[key]:.2f}, (b) round {result.best_round} "
                    f"{chosen[key]:.2f}, (c) {ceiling[key]:.2f}: gap closed {closed:.0%} "
                    f"(target >= 50%)"
                )
        else:
            gain = 1.0 - chosen["heading_median_deg"] / baseline["heading_median_deg"]
            print(
                f"shifted held-out median heading error: (a) {baseline['heading_median_deg']:.2f}, "
                f"(b) round {result.best_round} {chosen['heading_median_deg']:.2f}: "
                f"{gain:.0%} better (target >= 30%)"
            )
        medians = [row["heading_median_deg"] for row in rows[: len(result.rounds)]]
        gains.setdefault(run_name, []).append((seed, medians, result.best_round))
        summary[name] = {
            "seed": seed,
            "best_round": result.best_round,
            "select_metric": result.select_metric,
            "rows": rows,
        }
    if len(args.seeds) > 1:
        print("\n== held-out median heading error per seed (gain relative to (a))")
        for run_name, runs in gains.items():
            print(f"{run_name}:")
            best_gains, chosen_gains = [], []
            for seed, medians, chosen in runs:
                best = 1 + int(np.argmin(medians[1:])) if len(medians) > 1 else 0
                best_gains.append(1 - medians[best] / medians[0])
                chosen_gains.append(1 - medians[chosen] / medians[0])
                print(
                    f"  seed {seed}: (a) {medians[0]:.2f}°, best round {best} "
                    f"{medians[best]:.2f}° ({best_gains[-1]:+.0%}), chosen round {chosen} "
                    f"{medians[chosen]:.2f}° ({chosen_gains[-1]:+.0%})"
                )
            print(
                f"  median over {len(runs)} seeds: best round {np.median(best_gains):+.0%}, "
                f"chosen round {np.median(chosen_gains):+.0%}"
            )
    print(f"\nTotal wall time: {(time.monotonic() - start) / 60:.1f} min")
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
