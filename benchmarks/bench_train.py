"""Training throughput: a reference-style loop vs this package's DataModule + LightningModule.

Both train the same network (EfficientNet-B0 keypoint detector, random weights)
with the same loss, AdamW and per-sample augmentation
(:class:`wakemodel.augment.WakeAugmentation`) on the same synthetic chips:

(a) ``reference``: the public reference implementation's style - every step
    decodes each PNG and resizes it (PIL), one DataLoader worker, plain fp32
    eager PyTorch in the default (channels-first) memory format.
(b) ``package``: :class:`wakemodel.datamodule.WakeDataModule` (chips decoded once
    and kept in memory as uint8 at network size, workers chosen for the core count,
    pinned memory on CUDA) + :class:`wakemodel.model.WakeKeypointModule`
    (channels-last) under ``pytorch_lightning.Trainer``, same precision as (a)
    on the CPU (``--precision``; the package default elsewhere). Augmentation runs
    where ``train --augment-on auto`` puts it: per chip in the loader workers on
    the CPU, per batch on the device (:class:`wakemodel.augment.BatchWakeAugmentation`)
    on CUDA/MPS. ``--augment-on both`` measures the two placements side by side
    (``package/workers`` and ``package/device``).
(c) with ``--compile``: (b) with ``torch.compile``.

For every batch size and image size, the variants run in turn (a, b, a, b ...)
``--repeats`` times, ``--steps`` timed steps each after ``--warmup`` steps, so that
load from other processes hits them alike. A step is forward + backward +
optimizer step, augmentation and data loading included; the data share is the
time spent waiting for the next batch. Figures are medians over repeats; the
ratio is (b) / (a) images/s. Peak memory of one (b) and one (a) training at
batch 32 / 224 px is measured in fresh subprocesses (peak RSS on the CPU,
``torch.cuda.max_memory_allocated`` on CUDA).

Usage::

    python benchmarks/bench_train.py                        # ~5 min on 2 busy cores
    python benchmarks/bench_train.py --batch-sizes 16 --image-sizes 224 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from wakemodel.augment import WakeAugmentation
from wakemodel.datamodule import WakeDataModule, augment_place
from wakemodel.devices import select_device
from wakemodel.losses import keypoint_loss
from wakemodel.model import WakeKeypointModule
from wakemodel.network import EfficientNetB0KeypointDetector
from wakemodel.records import WakeRecord, scan_dataset, split_records
from wakemodel.synthetic import generate_dataset

SEED = 0
LR = 1e-3


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--chips", type=int, default=80, help="Synthetic chips (80%% train).")
    parser.add_argument("--min-chip", type=int, default=200, help="Smallest chip side (px).")
    parser.add_argument("--max-chip", type=int, default=900, help="Largest chip side (px).")
    parser.add_argument("--steps", type=int, default=4, help="Timed steps per repeat.")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed steps per repeat.")
    parser.add_argument("--repeats", type=int, default=3, help="Alternating repeats (median).")
    parser.add_argument("--accelerator", default="auto", help="auto, cpu, gpu ...")
    parser.add_argument(
        "--precision",
        default="32",
        help="Precision of (b) and (c); (a) is always fp32 ('default': package "
        "default for the device).",
    )
    parser.add_argument(
        "--augment-on",
        choices=["auto", "workers", "device", "both"],
        default="auto",
        help="Where (b) augments (both: two variants).",
    )
    parser.add_argument("--compile", action="store_true", help="Also measure (c) torch.compile.")
    parser.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="torch intra-op threads (default: usable cores).",
    )
    parser.add_argument("--no-peak-memory", action="store_true", help="Skip the memory runs.")
    parser.add_argument("--data", type=Path, help="Existing dataset (default: synthetic).")
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    parser.add_argument(
        "--peak-memory-child", choices=["reference", "package"], help=argparse.SUPPRESS
    )
    return parser.parse_args()


class ReferenceDataset(Dataset[dict[str, torch.Tensor]]):
    """Reference style: decode the PNG and resize it on every access."""

    def __init__(self, records: list[WakeRecord], image_size: int) -> None:
        self.records = records
        self.image_size = image_size
        self.augment = WakeAugmentation(image_size)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        record = self.records[index]
        size = self.image_size
        with Image.open(record.image_path) as image:
            resized = image.convert("L").resize((size, size), Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0)[None]
        keypoints_px = torch.from_numpy(record.keypoints_norm * size)
        visible = torch.from_numpy(record.visible.copy())
        pixels, keypoints_px, visible = self.augment(pixels, keypoints_px, visible)
        return {"image": pixels, "keypoints": keypoints_px / size, "visible": visible}


def _cycle(loader: DataLoader[Any]) -> Iterator[dict[str, torch.Tensor]]:
    while True:
        yield from loader


class ReferenceRunner:
    """Plain fp32 eager loop over :class:`ReferenceDataset` with one loader worker."""

    def __init__(
        self, records: list[WakeRecord], image_size: int, batch_size: int, device: torch.device
    ) -> None:
        torch.manual_seed(SEED)
        self.device = device
        self.model = EfficientNetB0KeypointDetector().to(device).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LR)
        loader = DataLoader(
            ReferenceDataset(records, image_size),
            batch_size=batch_size,
            shuffle=True,
            drop_last=len(records) > batch_size,
            num_workers=1,
            persistent_workers=True,
        )
        self.batches = _cycle(loader)

    def run(self, steps: int) -> tuple[list[float], list[float]]:
        """Train ``steps`` steps; return per-step (total seconds, data seconds)."""
        totals, waits = [], []
        for _ in range(steps):
            start = time.perf_counter()
            batch = next(self.batches)
            batch = {key: value.to(self.device) for key, value in batch.items()}
            loaded = time.perf_counter()
            output = self.model(batch["image"])
            loss = keypoint_loss(
                output.keypoints, output.visibility_logits, batch["keypoints"], batch["visible"]
            )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            end = time.perf_counter()
            totals.append(end - start)
            waits.append(loaded - start)
        return totals, waits


class StepTimer(pl.Callback):
    """Per-step wall time and the data-wait share, as seen from Lightning's hooks."""

    def __init__(self) -> None:
        self.totals: list[float] = []
        self.waits: list[float] = []
        self._last_end: float | None = None
        self._start = 0.0

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._start = time.perf_counter()
        self._wait = 0.0 if self._last_end is None else self._start - self._last_end

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        end = time.perf_counter()
        if self._last_end is not None:
            self.totals.append(end - self._last_end)
            self.waits.append(self._wait)
        self._last_end = end


class PackageRunner:
    """``WakeDataModule`` + ``WakeKeypointModule`` under a Lightning Trainer."""

    def __init__(
        self,
        data_dir: Path,
        image_size: int,
        batch_size: int,
        accelerator: str,
        precision: str | None,
        augment_on: str = "auto",
        compile_model: bool = False,
    ) -> None:
        self.device = select_device(accelerator, precision)
        # setup runs below, before a Trainer is attached: resolve "auto" for this device here.
        augment_on = augment_place(augment_on, self.device.accelerator)
        self.datamodule = WakeDataModule(
            data_dir,
            image_size=image_size,
            batch_size=batch_size,
            seed=SEED,
            augment=True,
            augment_on=augment_on,
        )
        start = time.perf_counter()
        self.datamodule.setup("fit")
        self.setup_s = time.perf_counter() - start
        self.image_size = image_size
        self.compile_model = compile_model

    def run(self, steps: int) -> tuple[list[float], list[float]]:
        """Train ``steps`` timed steps (+1 that starts the clock) on a fresh module."""
        pl.seed_everything(SEED, verbose=False)
        module: Any = WakeKeypointModule(
            image_size=self.image_size, pretrained=False, lr=LR, max_epochs=1
        )
        if self.compile_model:
            module = torch.compile(module)
        timer = StepTimer()
        trainer = pl.Trainer(
            accelerator=self.device.lightning_accelerator,
            devices=1,
            precision=self.device.precision,
            max_steps=steps + 1,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[timer],
        )
        trainer.fit(module, datamodule=self.datamodule)
        return timer.totals, timer.waits


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (MB).

    Linux: ``VmHWM`` from /proc, which starts afresh at exec; ``ru_maxrss`` would
    carry over the forking parent's peak. Elsewhere ``ru_maxrss``.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    divisor = 2**20 if sys.platform == "darwin" else 2**10  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / divisor


def _peak_memory_child(args: argparse.Namespace, data_dir: Path) -> None:
    """Train a few steps at batch 32 / 224 px and print the peak memory as JSON."""
    device = torch.device(select_device(args.accelerator).accelerator)
    image_size, batch_size = 224, 32
    if args.peak_memory_child == "reference":
        records = split_records(scan_dataset(data_dir), SEED)["train"]
        runner: Any = ReferenceRunner(records, image_size, batch_size, device)
    else:
        precision = None if args.precision == "default" else args.precision
        runner = PackageRunner(data_dir, image_size, batch_size, args.accelerator, precision)
    baseline_mb = _peak_rss_mb()
    runner.run(2)
    result = {"peak_rss_mb": _peak_rss_mb(), "baseline_rss_mb": baseline_mb}
    if device.type == "cuda":
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(result))


def _peak_memory(args: argparse.Namespace, data_dir: Path, variant: str) -> dict[str, float]:
    command = [
        sys.executable,
        __file__,
        "--peak-memory-child",
        variant,
        "--data",
        str(data_dir),
        "--accelerator",
        args.accelerator,
        "--precision",
        args.precision,
        "--threads",
        str(args.threads),
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def _summary(
    totals: list[list[float]], waits: list[list[float]], batch_size: int
) -> dict[str, float]:
    """Median images/s and data share over repeats (each repeat: its median step)."""
    per_repeat = [batch_size / statistics.median(run) for run in totals]
    shares = [sum(w) / sum(t) for t, w in zip(totals, waits, strict=True)]
    return {
        "images_per_s": statistics.median(per_repeat),
        "images_per_s_all": per_repeat,
        "data_share": statistics.median(shares),
        "step_s": batch_size / statistics.median(per_repeat),
    }


def main() -> None:
    args = _parse_args()
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    data_dir = args.data or generate_dataset(
        Path(tempfile.mkdtemp(prefix="bench_train_")) / "chips",
        args.chips,
        seed=SEED,
        min_size=args.min_chip,
        max_size=args.max_chip,
    )
    torch.set_num_threads(args.threads)
    if args.peak_memory_child:
        _peak_memory_child(args, data_dir)
        return
    device = torch.device(select_device(args.accelerator).accelerator)
    precision = None if args.precision == "default" else args.precision
    if not args.no_peak_memory and args.chips < 48 and args.data is None:
        sys.exit("--chips must be at least 48 for the batch-32 memory runs (or --no-peak-memory)")
    train_records = split_records(scan_dataset(data_dir), SEED)["train"]
    print(
        f"{len(train_records)} training chips {args.min_chip}-{args.max_chip} px, device "
        f"{select_device(args.accelerator, precision).description}, "
        f"{len(os.sched_getaffinity(0))} usable cores, load {os.getloadavg()[0]:.1f}"
    )
    rows = []
    for image_size in args.image_sizes:
        for batch_size in args.batch_sizes:
            runners: dict[str, Any] = {
                "reference": ReferenceRunner(train_records, image_size, batch_size, device)
            }
            places = ["workers", "device"] if args.augment_on == "both" else [args.augment_on]
            for place in places:
                name = f"package/{place}" if len(places) > 1 else "package"
                runners[name] = PackageRunner(
                    data_dir, image_size, batch_size, args.accelerator, precision, place
                )
            if args.compile:
                runners["compiled"] = PackageRunner(
                    data_dir,
                    image_size,
                    batch_size,
                    args.accelerator,
                    precision,
                    places[0],
                    compile_model=True,
                )
            runners["reference"].run(args.warmup)
            totals: dict[str, list[list[float]]] = {name: [] for name in runners}
            waits: dict[str, list[list[float]]] = {name: [] for name in runners}
            for _ in range(args.repeats):
                for name, runner in runners.items():
                    step_s, wait_s = runner.run(args.warmup + args.steps)
                    totals[name].append(step_s[args.warmup :] or step_s)
                    waits[name].append(wait_s[args.warmup :] or wait_s)
            summary = {name: _summary(totals[name], waits[name], batch_size) for name in runners}
            reference = summary["reference"]["images_per_s"]
            row = {
                "image_size": image_size,
                "batch_size": batch_size,
                **{
                    name: {**values, "ratio": values["images_per_s"] / reference}
                    for name, values in summary.items()
                },
            }
            package = next(name for name in runners if name.startswith("package"))
            row[package]["setup_s"] = runners[package].setup_s
            rows.append(row)
            for name, values in summary.items():
                print(
                    f"size {image_size:>3} batch {batch_size:>2} {name:<15} "
                    f"{values['images_per_s']:>7.1f} img/s  "
                    f"data {100 * values['data_share']:>4.1f}%"
                    f"  x{values['images_per_s'] / reference:.2f}  "
                    f"(repeats: {', '.join(f'{v:.1f}' for v in values['images_per_s_all'])})",
                    flush=True,
                )
            best = max(
                (n for n in summary if n.startswith("package")),
                key=lambda n: summary[n]["images_per_s"],
            )
            projected_min = 500 * 581 * 0.8 / summary[best]["images_per_s"] / 60
            print(
                f"  {best}: decode once {runners[package].setup_s:.1f} s; 500 epochs of "
                f"581 chips (80% train) would take {projected_min:.1f} min here",
                flush=True,
            )
    memory = {}
    if not args.no_peak_memory:
        for variant in ("reference", "package"):
            memory[variant] = _peak_memory(args, data_dir, variant)
            print(
                f"peak memory batch 32 / 224 px, {variant}: "
                + ", ".join(f"{key} {value:.0f}" for key, value in memory[variant].items()),
                flush=True,
            )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "rows": rows,
                    "peak_memory": memory,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
