"""Whole-scene scanning: detector recall, heading errors, wall time and peak memory.

Writes (once, then reuses) a full synthetic Sentinel-2 scene with ``cli.py synth
--scene`` (10980 x 10980 px, 100 wakes plus bright platforms, cumulus puffs, hot
pixels and a nodata corner) and scans it with ``cli.py scan`` in a fresh process
per run, measuring its wall time and peak RSS:

- ``detector``: the vessels come from the built-in CFAR detector, with the
  defaults (two looks, each combined over the 8 flips/rotations: ``--tta``);
- ``detector, no TTA``: the same with ``--no-tta``;
- ``truth, one look``: the vessels come from the truth CSV (``--vessels``), which
  isolates the model from the detector, one window centred on each vessel and no
  TTA (``--no-second-look --no-tta``: the first way);
- ``truth, two looks``: a second window centred on the wake the first found
  (``--no-tta``);
- ``truth``: the defaults (two looks, TTA).

Side by side it prints the detector's recall and false alarms against the truth
(a candidate within ``--match-m`` of a vessel), the heading error of the scanned
vessels against the truth (median, p90, share over 90 degrees; vessels with a
readable wake), how far its predicted uncertainty can be trusted (Spearman of
``heading_std_deg`` against the error, coverage of the 90% intervals, p90 of the
80% most confident; :func:`wakemodel.calibration.heading_calibration`), and the
same for the same model on held-out synthetic chips (``cli.py evaluate``), which
the scanned errors should match.

Usage (from the repository root; a .ckpt is exported to ONNX first)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_scan.py --model MODEL.ckpt
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from wakemodel.calibration import heading_calibration
from wakemodel.evaluate import evaluate
from wakemodel.keypoints import angle_difference_deg

ROOT = Path(__file__).resolve().parents[1]

_PEAK_RSS = (
    "import resource, subprocess, sys; "
    "code = subprocess.run(sys.argv[1:]).returncode; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
    "sys.exit(code)"
)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help=".ckpt or .onnx")
    parser.add_argument("--size", type=int, default=10980)
    parser.add_argument("--wakes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chips", type=int, default=200, help="Held-out chips to evaluate.")
    parser.add_argument("--chip-seed", type=int, default=7)
    parser.add_argument("--match-m", type=float, default=100.0)
    parser.add_argument("--work", type=Path, default=Path("data/bench-scan"))
    return parser.parse_args()


def _run(command: list[str]) -> tuple[float, float, str]:
    """Run a command in a fresh process; wall seconds, peak RSS (MB) and stdout."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, sys.executable, *command],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    peak_kb = float(done.stderr.strip().splitlines()[-1])
    return seconds, peak_kb / 1024.0, done.stdout


def _truth(path: Path) -> list[dict[str, float]]:
    with path.open() as handle:
        return [
            {key: float(value) if key != "id" else value for key, value in row.items()}
            for row in csv.DictReader(handle)
        ]


def _vessels(geojson_path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    collection = json.loads(geojson_path.read_text())
    vessels = [
        feature["properties"]
        for feature in collection["features"]
        if feature["properties"]["feature"] == "vessel"
    ]
    return vessels, collection


def _match(
    vessels: list[dict[str, Any]], truth: list[dict[str, float]], radius_px: float
) -> dict[int, int]:
    """Greedy one-to-one matching of scanned vessels (input position) to truth vessels."""
    truth_xy = np.array([[row["x"], row["y"]] for row in truth])
    pairs = []
    for index, vessel in enumerate(vessels):
        x, y = vessel["input_x_px"], vessel["input_y_px"]
        distances = np.hypot(truth_xy[:, 0] - x, truth_xy[:, 1] - y)
        for truth_index in np.flatnonzero(distances < radius_px):
            pairs.append((distances[truth_index], index, int(truth_index)))
    matched: dict[int, int] = {}
    used: set[int] = set()
    for _, index, truth_index in sorted(pairs):
        if index not in matched and truth_index not in used:
            matched[index] = truth_index
            used.add(truth_index)
    return matched


def _heading_stats(errors: list[float]) -> dict[str, float]:
    values = np.abs(np.array(errors, dtype=np.float64))
    if not len(values):
        return {"n": 0, "median": np.nan, "p90": np.nan, "over90": np.nan}
    return {
        "n": len(values),
        "median": float(np.median(values)),
        "p90": float(np.percentile(values, 90)),
        "over90": float(np.mean(values > 90.0)),
    }


def _scan_errors(
    vessels: list[dict[str, Any]], truth: list[dict[str, float]], radius_px: float
) -> dict[str, Any]:
    matched = _match(vessels, truth, radius_px)
    found = [(i, t) for i, t in matched.items() if vessels[i]["wake_found"]]
    errors = [
        abs(float(angle_difference_deg(vessels[i]["heading_deg"], truth[t]["heading_deg"])))
        for i, t in found
    ]
    stds = [vessels[i]["heading_std_deg"] for i, _ in found]
    unmatched = [vessel for i, vessel in enumerate(vessels) if i not in matched]
    return {
        "recall": len(matched) / len(truth),
        "false_alarms": len(unmatched),
        "false_alarms_with_wake": sum(vessel["wake_found"] for vessel in unmatched),
        "wake_found": sum(vessels[i]["wake_found"] for i in matched) / len(truth),
        "heading": _heading_stats(errors),
        "calibration": heading_calibration(errors, stds),
    }


def main() -> None:
    args = _parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    model = args.model.resolve()
    if model.suffix == ".ckpt":
        onnx_path = args.work / f"{model.stem}.onnx"
        if not onnx_path.exists():
            _run(["cli.py", "export", str(model), "--out", str(onnx_path.resolve())])
        model = onnx_path.resolve()
    scene = (args.work / f"scene_{args.size}_{args.wakes}_{args.seed}.tif").resolve()
    if not scene.exists():
        seconds, peak_mb, _ = _run(
            [
                "cli.py",
                "synth",
                "--scene",
                str(scene),
                "--wakes",
                str(args.wakes),
                "--size",
                str(args.size),
                "--seed",
                str(args.seed),
            ]
        )
        print(f"synth --scene: {seconds:.1f} s, peak RSS {peak_mb:.0f} MB")
    truth = _truth(scene.with_suffix(".csv"))
    rows = {}
    truth_csv = str(scene.with_suffix(".csv"))
    for name, extra in (
        ("detector", []),
        ("detector, no TTA", ["--no-tta"]),
        ("truth, one look", ["--vessels", truth_csv, "--no-second-look", "--no-tta"]),
        ("truth, two looks", ["--vessels", truth_csv, "--no-tta"]),
        ("truth", ["--vessels", truth_csv]),
    ):
        slug = "".join(c if c.isalnum() else "_" for c in name)
        out = (args.work / f"scan_{slug}.geojson").resolve()
        command = ["cli.py", "scan", str(model), str(scene), "--out", str(out), *extra]
        seconds, peak_mb, _ = _run(command)
        vessels, collection = _vessels(out)
        rows[name] = {
            "wall_s": seconds,
            "peak_mb": peak_mb,
            "timing_s": collection["timing_s"],
            **_scan_errors(vessels, truth, args.match_m / collection_pixel_m(collection)),
        }
    chips = args.work / f"chips_{args.chips}_{args.chip_seed}"
    if not chips.exists():
        _run(
            [
                "cli.py",
                "synth",
                str(chips.resolve()),
                "--count",
                str(args.chips),
                "--seed",
                str(args.chip_seed),
            ]
        )
    report = evaluate(str(model), chips, tta=False)
    errors = report.errors["heading_error_deg"]
    found = np.array([prediction.wake_found for prediction in report.predictions])
    chip_stats = _heading_stats([e for e, f in zip(errors, found, strict=True) if f])
    chip_calibration = heading_calibration(errors[found], report.heading_std_deg[found])
    names = list(rows)
    print(f"\nScene {scene.name}: {args.size} px, {len(truth)} wakes; model {model.name}")
    header = f"{'':<32}" + "".join(f"{name:>17}" for name in [*names, "chips"])
    print(header)
    print("-" * len(header))

    def line(label: str, values: list[str], chip: str = "") -> None:
        print(f"{label:<32}" + "".join(f"{value:>17}" for value in [*values, chip]))

    def each(key: str, fmt: str) -> list[str]:
        return [fmt.format(rows[name][key]) for name in names]

    line("wall time, whole command (s)", each("wall_s", "{:.1f}"))
    line(
        "  detect or read CSV (s)",
        [f"{sum(v for k, v in rows[n]['timing_s'].items() if k != 'predict'):.1f}" for n in names],
    )
    line("  predict (s)", [f"{rows[n]['timing_s']['predict']:.1f}" for n in names])
    line("peak RSS (MB)", each("peak_mb", "{:.0f}"))
    line("vessels found (recall)", each("recall", "{:.2f}"))
    line("false alarms", each("false_alarms", "{}"))
    line("  of which 'wake found'", each("false_alarms_with_wake", "{}"))
    line("readable wake (of the vessels)", each("wake_found", "{:.2f}"), f"{found.mean():.2f}")
    for key, label, fmt in (
        ("n", "heading errors counted", "{}"),
        ("median", "heading error median (deg)", "{:.1f}"),
        ("p90", "heading error p90 (deg)", "{:.1f}"),
        ("over90", "share > 90 deg", "{:.2f}"),
    ):
        line(
            label, [fmt.format(rows[n]["heading"][key]) for n in names], fmt.format(chip_stats[key])
        )
    for key, label, fmt in (
        ("spearman", "Spearman (std vs error)", "{:.2f}"),
        ("interval_coverage", "90% interval coverage", "{:.2f}"),
        ("p90_error_confident_deg", "p90, 80% most confident (deg)", "{:.1f}"),
    ):
        line(
            label,
            [fmt.format(rows[n]["calibration"][key]) for n in names],
            fmt.format(chip_calibration[key]),
        )


def collection_pixel_m(collection: dict[str, Any]) -> float:
    """The scene's pixel size (metres), from the window's side in metres and pixels."""
    return float(collection["window_m"]) / float(collection["window_px"])


if __name__ == "__main__":
    main()
