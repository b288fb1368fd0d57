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

Usage::

    python benchmarks/bench_infer.py                      # defaults: 224 px, ~3 min on 2 cores
    python benchmarks/bench_infer.py --checkpoint checkpoints/last.ckpt --repeats 50
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
        ],
        check=True,
        capture_output=True,
        cwd=REPO_ROOT,
    )
    return time.perf_counter() - start


def main() -> None:
    args = _parse_args()
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)

    from wakemodel.data import scan_dataset
    from wakemodel.export import OnnxKeypointPredictor, export_onnx
    from wakemodel.infer import find_images, load_model, predict
    from wakemodel.preprocess import load_image
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
    reference_px = np.stack([p.keypoints_px for p in predict(torch_predictor, chip_paths)])
    agreement_px = {"torch_fp32": 0.0}
    for name in models:
        keypoints_px = np.stack([p.keypoints_px for p in predict(predictors[name], chip_paths)])
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
