"""Inference speed and size: PyTorch eager fp32 vs ONNX Runtime fp32 vs ONNX int8 on the CPU.

Measures, on synthetic chips and the same model:

- single-chip latency of the network call (median and 90th percentile, ms);
- batch-32 throughput of the network call (chips/s, median over repeats);
- model file sizes (MB);
- keypoint agreement of each ONNX model with PyTorch (max |difference| in original
  pixels over the chips; the export tolerance is 0.5 px fp32 and 2 px int8);
- end-to-end ``python cli.py infer MODEL CHIP`` wall time (process start included).

Backends are measured round-robin (one repeat of each in turn) so that load from
other processes on a shared machine affects them alike. Without ``--checkpoint``
a randomly initialised model at ``--image-size`` is used (speed and size do not
depend on the weights).

With ``--memory`` it measures large jobs instead: ``python cli.py infer`` and
``python cli.py evaluate`` with the ONNX model on folders of 500 and 5000 synthetic
chips (``cli.py synth --seed 7 --min-size 200 --max-size 480``; the 500 are the first
500 of the 5000), each in a fresh process, with the next batch read in a background
thread (``wakemodel.infer.PREFETCH``) and without; per run the peak resident memory
(``VmHWM``, read by the process itself at exit) and chips/s, process start included
and between the two sizes (the fixed start-up cost cancels). Then ``infer`` with the
``.ckpt`` on ``--devices-chips`` chips with ``--devices 1`` and ``--devices 2``
(Lightning's predict loop, ``ddp_spawn``; the peak is the calling process's only).
Last, in this process, ``wakemodel.infer.iter_predictions`` over ``--prefetch-chips``
chips with and without prefetching, alternated, 3 repeats each (median chips/s),
beside the time to read + preprocess a chip and the model's time per chip.

Usage::

    python benchmarks/bench_infer.py                      # defaults: 224 px, ~3 min on 2 cores
    python benchmarks/bench_infer.py --checkpoint checkpoints/last.ckpt --repeats 50
    python benchmarks/bench_infer.py --memory             # ~8 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="Trained .ckpt (default: random weights).")
    parser.add_argument("--image-size", type=int, default=224, help="Network input side (px).")
    parser.add_argument("--chips", type=int, default=32, help="Synthetic chips (>= batch).")
    parser.add_argument("--batch", type=int, default=32, help="Throughput batch size.")
    parser.add_argument("--repeats", type=int, default=30, help="Single-chip latency repeats.")
    parser.add_argument("--batch-repeats", type=int, default=5, help="Batch throughput repeats.")
    parser.add_argument("--cli-repeats", type=int, default=3, help="End-to-end CLI repeats.")
    parser.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="Threads for torch and ONNX Runtime (default: usable cores).",
    )
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    parser.add_argument(
        "--memory", action="store_true", help="Peak memory and chips/s of large infer jobs."
    )
    parser.add_argument(
        "--memory-chips",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[500, 5000],
        help="Folder sizes for --memory, comma-separated (the first ones of the largest).",
    )
    parser.add_argument(
        "--devices-chips", type=int, default=160, help="Chips of the --devices 1/2 runs (0: none)."
    )
    parser.add_argument(
        "--prefetch-chips",
        type=int,
        default=800,
        help="Chips of the in-process prefetch on/off comparison of --memory (0: none).",
    )
    parser.add_argument("--work", type=Path, help="Folder for chips and models (kept; reused).")
    return parser.parse_args()


def _random_checkpoint(image_size: int, path: Path) -> Path:
    """Save an untrained WakeKeypointModule as a Lightning checkpoint."""
    import pytorch_lightning as pl

    from wakemodel.model import WakeKeypointModule

    module = WakeKeypointModule(image_size=image_size, pretrained=False)
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


def _timed(call: Callable[..., object], *args: object) -> float:
    start = time.perf_counter()
    call(*args)
    return time.perf_counter() - start


def _cli_seconds(model: Path, chip: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "cli.py"),
            "infer",
            str(model),
            str(chip),
            "--accelerator",
            "cpu",
            "--no-tta",
        ],
        check=True,
        capture_output=True,
        cwd=REPO_ROOT,
    )
    return time.perf_counter() - start


_MEMORY_CHILD = r"""
import atexit, os, sys, time
start = time.perf_counter()
def _report():
    with open("/proc/self/status") as status:
        peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(f"BENCH {peak_kb} {time.perf_counter() - start:.3f} {int('torch' in sys.modules)}",
          file=sys.stderr)
atexit.register(_report)
import wakemodel.infer
wakemodel.infer.PREFETCH = os.environ["BENCH_PREFETCH"] == "1"
from wakemodel.cli import main
sys.argv = ["cli.py", *sys.argv[1:]]
main()
"""
"""Runs the CLI in-process and prints its own peak RSS (``VmHWM``, which starts afresh at
exec, unlike ``ru_maxrss``, which Linux carries over from the forking parent)."""


def _measure_cli(cli_args: list[str], prefetch: bool = True) -> dict[str, float]:
    """Run ``python cli.py CLI_ARGS --no-tta`` in a fresh process: wall s, peak RSS MB, torch.

    One view per chip (``--no-tta``), as the figures in ``benchmarks/README.md`` were measured.
    """
    env = {**os.environ, "BENCH_PREFETCH": "1" if prefetch else "0"}
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, *cli_args, "--no-tta"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
    )
    wall_s = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(cli_args)} failed:\n{result.stderr[-3000:]}")
    line = next(line for line in result.stderr.splitlines() if line.startswith("BENCH "))
    _, peak_kb, _, torch_loaded = line.split()
    return {"wall_s": wall_s, "peak_mb": int(peak_kb) / 1024, "torch": bool(int(torch_loaded))}


def _chip_folders(work: Path, sizes: list[int]) -> dict[int, Path]:
    """Synthesise the largest folder with the CLI; the smaller ones hard-link its first chips."""
    largest = max(sizes)
    folders = {largest: work / f"chips{largest}"}
    if not (folders[largest] / "imgs").is_dir():
        subprocess.run(
            [
                sys.executable,
                str(REPO_ROOT / "cli.py"),
                "synth",
                str(folders[largest]),
                "--count",
                str(largest),
                "--seed",
                "7",
                "--min-size",
                "200",
                "--max-size",
                "480",
                "--workers",
                "2",
            ],
            check=True,
            capture_output=True,
            cwd=REPO_ROOT,
        )
    images = sorted((folders[largest] / "imgs").iterdir())
    for size in sorted(set(sizes) - {largest}):
        folder = folders[size] = work / f"chips{size}"
        if (folder / "imgs").is_dir():
            continue
        for sub in ("imgs", "annotations"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        for image in images[:size]:
            annotation = folders[largest] / "annotations" / f"{image.stem}.json"
            os.link(image, folder / "imgs" / image.name)
            os.link(annotation, folder / "annotations" / annotation.name)
    return folders


def _prefetch_speed(onnx_model: Path, images: Path, count: int, threads: int) -> None:
    """Chips/s of ``iter_predictions`` with and without prefetching (alternated, median of 3)."""
    import wakemodel.infer as infer
    from wakemodel.export import OnnxKeypointPredictor
    from wakemodel.preprocess import load_image

    paths = infer.find_images([images])[:count]
    predictor = OnnxKeypointPredictor(onnx_model, threads=threads)
    list(infer.iter_predictions(predictor, paths[:32]))  # warm-up
    start = time.perf_counter()
    chips = [load_image(path, predictor.image_size) for path in paths[:160]]
    read_ms = 1e3 * (time.perf_counter() - start) / len(chips)
    batch = np.stack(chips[:16]).astype(np.float32) / np.float32(255.0)
    model_ms = 1e3 * min(_timed(predictor, batch) for _ in range(5)) / len(batch)
    rates: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(3):
        for prefetch in (True, False):
            infer.PREFETCH = prefetch
            seconds = _timed(lambda: sum(1 for _ in infer.iter_predictions(predictor, paths)))
            rates[prefetch].append(len(paths) / seconds)
    infer.PREFETCH = True
    print(
        f"in-process, {len(paths)} chips, batch 16, {threads} ORT threads: read + preprocess "
        f"{read_ms:.1f} ms/chip, model {model_ms:.1f} ms/chip"
    )
    for prefetch, values in rates.items():
        print(
            f"  prefetch {'yes' if prefetch else 'no '}: {statistics.median(values):.1f} chips/s "
            f"(runs {', '.join(f'{value:.1f}' for value in values)})"
        )


def _memory_main(args: argparse.Namespace) -> None:
    """Peak memory and speed of ``infer``/``evaluate`` on growing folders (see the docstring)."""
    from wakemodel.export import export_onnx

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_infer_memory_"))
    work.mkdir(parents=True, exist_ok=True)
    sizes = sorted(args.memory_chips)
    folders = _chip_folders(work, sizes)
    checkpoint = args.checkpoint or work / f"random{args.image_size}.ckpt"
    if not checkpoint.is_file():
        _random_checkpoint(args.image_size, checkpoint)
    onnx_model = work / f"{checkpoint.stem}.onnx"
    if not onnx_model.is_file():
        export_onnx(checkpoint, onnx_model)
    batch = ["--batch-size", "16"]
    rows: list[dict[str, object]] = []
    single = str(next((folders[sizes[0]] / "imgs").iterdir()))
    rows.append(
        {"run": "infer onnx", "chips": 1, "prefetch": True}
        | _measure_cli(["infer", str(onnx_model), single, "--json", str(work / "out.json")])
    )
    for prefetch in (True, False):
        for size in sizes:
            out = str(work / "out.json")
            imgs = str(folders[size] / "imgs")
            rows.append(
                {"run": "infer onnx", "chips": size, "prefetch": prefetch}
                | _measure_cli(["infer", str(onnx_model), imgs, "--json", out, *batch], prefetch)
            )
    for size in sizes:
        out = str(work / "evaluation.json")
        rows.append(
            {"run": "evaluate onnx", "chips": size, "prefetch": True}
            | _measure_cli(["evaluate", str(onnx_model), str(folders[size]), "--json", out, *batch])
        )
    if args.devices_chips > 0:
        subset = _chip_folders(work, [args.devices_chips, max(sizes)])[args.devices_chips]
        for devices in (1, 2):
            rows.append(
                {"run": f"infer ckpt --devices {devices}", "chips": args.devices_chips}
                | {"prefetch": devices == 1}
                | _measure_cli(
                    [
                        "infer",
                        str(checkpoint),
                        str(subset / "imgs"),
                        "--json",
                        str(work / f"devices{devices}.json"),
                        "--accelerator",
                        "cpu",
                        "--devices",
                        str(devices),
                        *batch,
                    ]
                )
            )
        same = (work / "devices1.json").read_text() == (work / "devices2.json").read_text()
        print(f"--devices 2 JSON identical to --devices 1: {same}")
    print(
        f"image size {args.image_size}, batch 16, chips 200-480 px, torch {torch.__version__}, "
        f"{len(os.sched_getaffinity(0))} cores, load {os.getloadavg()[0]:.1f}, work {work}"
    )
    print(
        f"{'run':<22} {'chips':>6} {'prefetch':>8} {'wall s':>7} {'chips/s':>8} "
        f"{'peak MB':>8} {'torch':>5}"
    )
    for row in rows:
        print(
            f"{row['run']:<22} {row['chips']:>6} {'yes' if row['prefetch'] else 'no':>8} "
            f"{row['wall_s']:>7.1f} {row['chips'] / row['wall_s']:>8.1f} "
            f"{row['peak_mb']:>8.1f} {'yes' if row['torch'] else 'no':>5}"
        )
    small, large = sizes[0], sizes[-1]
    for run, prefetch in (("infer onnx", True), ("infer onnx", False), ("evaluate onnx", True)):
        pair = {
            row["chips"]: row
            for row in rows
            if row["run"] == run and row["prefetch"] == prefetch and row["chips"] in (small, large)
        }
        if len(pair) == 2:
            extra = large - small
            print(
                f"{run} (prefetch {'yes' if prefetch else 'no'}), {small} -> {large} chips: "
                f"peak +{pair[large]['peak_mb'] - pair[small]['peak_mb']:.1f} MB "
                f"({1024 * (pair[large]['peak_mb'] - pair[small]['peak_mb']) / extra:.2f} kB "
                f"per extra chip), {extra / (pair[large]['wall_s'] - pair[small]['wall_s']):.1f} "
                "chips/s between the two sizes"
            )
    if args.prefetch_chips > 0:
        _prefetch_speed(onnx_model, folders[max(sizes)] / "imgs", args.prefetch_chips, args.threads)
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args), "memory": rows}, default=str) + "\n")


def main() -> None:
    args = _parse_args()
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    if args.memory:
        _memory_main(args)
        return

    from wakemodel.export import OnnxKeypointPredictor, export_onnx
    from wakemodel.infer import find_images, load_model, predict
    from wakemodel.preprocess import load_image
    from wakemodel.records import scan_dataset
    from wakemodel.synthetic import generate_dataset

    work = Path(tempfile.mkdtemp(prefix="bench_infer_"))
    chips_dir = generate_dataset(work / "chips", args.chips, seed=7, min_size=200, max_size=600)
    checkpoint = args.checkpoint or _random_checkpoint(args.image_size, work / "random.ckpt")
    models = {
        "onnx_fp32": export_onnx(checkpoint, work / "model.onnx"),
        "onnx_int8": export_onnx(checkpoint, work / "model_int8.onnx", int8=True),
    }
    torch_predictor = load_model(checkpoint, accelerator="cpu")
    predictors = {
        "torch_fp32": torch_predictor,
        **{
            name: OnnxKeypointPredictor(path, threads=args.threads) for name, path in models.items()
        },
    }
    image_size = torch_predictor.image_size
    records = scan_dataset(chips_dir)
    images_np = np.stack([load_image(r.image_path, image_size) for r in records])
    images_np = images_np.astype(np.float32) / np.float32(255.0)
    batch = np.ascontiguousarray(np.resize(images_np, (args.batch, *images_np.shape[1:])))
    single = images_np[:1]

    for predictor in predictors.values():  # warm-up: allocations, ORT graph preparation
        predictor(single)
        predictor(batch)
    latency_s: dict[str, list[float]] = {name: [] for name in predictors}
    batch_s: dict[str, list[float]] = {name: [] for name in predictors}
    for _ in range(args.repeats):
        for name, predictor in predictors.items():
            latency_s[name].append(_timed(predictor, single))
    for _ in range(args.batch_repeats):
        for name, predictor in predictors.items():
            batch_s[name].append(_timed(predictor, batch))

    chip_paths = find_images([chips_dir / "imgs"])
    reference_px = np.stack(
        [p.keypoints_px for p in predict(torch_predictor, chip_paths, tta=False)]
    )
    agreement_px = {"torch_fp32": 0.0}
    for name in models:
        keypoints_px = np.stack(
            [p.keypoints_px for p in predict(predictors[name], chip_paths, tta=False)]
        )
        agreement_px[name] = float(np.abs(keypoints_px - reference_px).max())

    cli_s: dict[str, list[float]] = {"torch_fp32": [], "onnx_fp32": []}
    cli_models = {"torch_fp32": checkpoint, "onnx_fp32": models["onnx_fp32"]}
    for _ in range(args.cli_repeats):
        for name, model in cli_models.items():
            cli_s[name].append(_cli_seconds(model, chip_paths[0]))

    sizes_mb = {
        "torch_fp32": Path(checkpoint).stat().st_size / 1e6,
        **{name: path.stat().st_size / 1e6 for name, path in models.items()},
    }
    results = {
        name: {
            "latency_median_ms": 1e3 * statistics.median(latency_s[name]),
            "latency_p90_ms": 1e3 * float(np.percentile(latency_s[name], 90)),
            "batch_chips_per_s": args.batch / statistics.median(batch_s[name]),
            "file_mb": sizes_mb[name],
            "max_keypoint_diff_px": agreement_px[name],
            "cli_infer_s": statistics.median(cli_s[name]) if name in cli_s else None,
        }
        for name in predictors
    }
    base = results["torch_fp32"]
    print(
        f"image size {image_size}, threads {args.threads}, {args.repeats} single-chip and "
        f"{args.batch_repeats} batch-{args.batch} repeats, {args.chips} chips, "
        f"checkpoint {'given' if args.checkpoint else 'random weights'}, load "
        f"{os.getloadavg()[0]:.1f}"
    )
    header = (
        f"{'backend':<11} {'lat med ms':>10} {'lat p90 ms':>10} {'speed-up':>8} "
        f"{'b32 chips/s':>11} {'ratio':>6} {'file MB':>8} {'max dpx':>8} {'CLI s':>6}"
    )
    print(header)
    for name, row in results.items():
        cli = f"{row['cli_infer_s']:.2f}" if row["cli_infer_s"] is not None else "-"
        print(
            f"{name:<11} {row['latency_median_ms']:>10.1f} {row['latency_p90_ms']:>10.1f} "
            f"{base['latency_median_ms'] / row['latency_median_ms']:>7.2f}x "
            f"{row['batch_chips_per_s']:>11.1f} "
            f"{row['batch_chips_per_s'] / base['batch_chips_per_s']:>5.2f}x "
            f"{row['file_mb']:>8.1f} {row['max_keypoint_diff_px']:>8.3f} {cli:>6}"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
