"""Multi-process training (DDP): 2 CPU processes (gloo) through the CLI, as a user runs it.

One run trains 2 epochs and resumes to a 3rd; the test checks that the processes
share one run folder, print one summary, log metrics reduced over the whole
validation split (each chip once) and pick the best checkpoint by them.
"""

from __future__ import annotations

import csv
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from validation import validate_checkpoint

from wakemodel.datamodule import WakeDataModule
from wakemodel.errors import InputError
from wakemodel.train import RUN_DIR_ENV, TrainConfig, _resolve_run_dir

ROOT = Path(__file__).resolve().parents[1]

SEED = 3
IMAGE_SIZE = 32
BATCH_SIZE = 4

_LAUNCH_ENV = (
    RUN_DIR_ENV,
    "MASTER_ADDR",
    "MASTER_PORT",
    "NODE_RANK",
    "LOCAL_RANK",
    "RANK",
    "WORLD_SIZE",
    "SLURM_NTASKS",
    "SLURM_JOB_ID",
    "TORCHELASTIC_RUN_ID",
)
"""Variables of an outer launcher that must not leak into the test's DDP run."""


def _train_ddp(data_dir: Path, cwd: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """``python cli.py train`` on 2 CPU processes (Lightning starts the second)."""
    env = {key: value for key, value in os.environ.items() if key not in _LAUNCH_ENV}
    completed = subprocess.run(
        [
            sys.executable,
            str(ROOT / "cli.py"),
            "train",
            "--data",
            str(data_dir),
            "--accelerator",
            "cpu",
            "--devices",
            "2",
            "--strategy",
            "ddp",
            "--image-size",
            str(IMAGE_SIZE),
            "--batch-size",
            str(BATCH_SIZE),
            "--workers",
            "0",
            "--seed",
            str(SEED),
            "--no-pretrained",
            "--logger",
            "csv",
            "--run-dir",
            "runs",
            *options,
        ],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed


def _val_rows(metrics_csv: Path) -> dict[int, dict[str, float]]:
    """The validation metrics of ``metrics.csv`` by epoch."""
    with metrics_csv.open(newline="") as file:
        rows = [row for row in csv.DictReader(file) if row["val/loss"]]
    return {
        int(row["epoch"]): {
            name: float(value) for name, value in row.items() if name.startswith("val/") and value
        }
        for row in rows
    }


def _validate_one_process(checkpoint: Path, data_dir: Path) -> dict[str, float]:
    """The ``val/`` metrics of ``checkpoint`` on the run's validation split, in one process."""
    metrics, datamodule = validate_checkpoint(
        checkpoint, data_dir, image_size=IMAGE_SIZE, batch_size=BATCH_SIZE, seed=SEED
    )
    assert len(datamodule.val_dataset) == 3  # an odd split: DDP padding would repeat a chip
    return metrics


@pytest.mark.slow
def test_ddp_two_processes_one_run_exact_metrics_and_resume(
    make_synthetic_dir, tmp_path: Path
) -> None:
    data_dir = make_synthetic_dir(count=26, seed=SEED, min_size=64, max_size=96)
    first = _train_ddp(data_dir, tmp_path, "--epochs", "2")

    # One run folder, named once (rank 0's timestamp), holding everything.
    runs = tmp_path / "runs"
    (run,) = runs.iterdir()
    assert re.fullmatch(r"\d{8}-\d{6}", run.name)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml", "metrics.csv"]
    best = [p for p in (run / "checkpoints").iterdir() if p.name != "last.ckpt"]
    assert len(best) == 1 and (run / "checkpoints" / "last.ckpt").is_file()

    # One summary and one copy of each log line, naming that folder.
    assert first.stdout.count("Best checkpoint:") == 1
    assert first.stdout.count(f"Run folder: runs/{run.name}\n") == 1
    assert first.stderr.count("Run folder: ") == 1
    assert f"Run folder: runs/{run.name}" in first.stderr
    assert first.stderr.count("Split ") == 1
    assert "runs/" not in first.stdout.replace(f"runs/{run.name}", "")

    # The logged metrics are those of the whole validation split, each chip once:
    # the same as a one-process validation of the saved checkpoint.
    rows = _val_rows(run / "metrics.csv")
    assert sorted(rows) == [0, 1]
    best_epoch = min(rows, key=lambda epoch: (rows[epoch]["val/loss"], epoch))
    checkpoint = torch.load(best[0], map_location="cpu", weights_only=False)
    assert checkpoint["epoch"] == best_epoch  # chosen on the reduced metric
    assert f"val_loss={rows[best_epoch]['val/loss']:.2f}.ckpt" in best[0].name
    expected = _validate_one_process(best[0], data_dir)
    logged = rows[best_epoch]
    assert set(expected) <= set(logged)
    for name, value in expected.items():
        assert math.isclose(logged[name], value, rel_tol=1e-4, abs_tol=1e-5), name
    assert f"{logged['val/vertex_error_px']:.4g}" in first.stdout

    # --resume under DDP continues the same run: same folder, metrics.csv appended.
    resumed = _train_ddp(
        data_dir, tmp_path, "--epochs", "3", "--resume", str(run / "checkpoints" / "last.ckpt")
    )
    assert [p.name for p in runs.iterdir()] == [run.name]
    assert resumed.stdout.count("Best checkpoint:") == 1
    assert f"Run folder: runs/{run.name}" in resumed.stdout
    assert sorted(_val_rows(run / "metrics.csv")) == [0, 1, 2]
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 2
    assert last["wakemodel_run_dir"] == f"runs/{run.name}"


def _clear_launch_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _LAUNCH_ENV:
        monkeypatch.delenv(name, raising=False)


def test_processes_started_by_lightning_take_rank_zero_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _clear_launch_env(monkeypatch)
    config = TrainConfig(run_dir=tmp_path, run_name="exp")
    assert _resolve_run_dir(config, None) == tmp_path / "exp"
    # Rank 0 has created its folder by the time a later process looks: no "-1" suffix there.
    (tmp_path / "exp").mkdir()
    monkeypatch.setenv(RUN_DIR_ENV, str(tmp_path / "exp"))
    assert _resolve_run_dir(config, None) == tmp_path / "exp"
    assert _resolve_run_dir(TrainConfig(run_dir=tmp_path), None) == tmp_path / "exp"


def test_launched_processes_share_the_job_name_or_ask_for_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _clear_launch_env(monkeypatch)
    unnamed = TrainConfig(run_dir=tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun without --rdzv-id
    with pytest.raises(InputError, match=r"torchrun .*--run-name NAME"):
        _resolve_run_dir(unnamed, None)
    assert _resolve_run_dir(TrainConfig(run_dir=tmp_path, run_name="a"), None) == tmp_path / "a"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "exp42")
    assert _resolve_run_dir(unnamed, None) == tmp_path / "torchrun-exp42"

    _clear_launch_env(monkeypatch)
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    assert _resolve_run_dir(unnamed, None) == tmp_path / "slurm-1234"

    _clear_launch_env(monkeypatch)
    with pytest.raises(InputError, match=r"--num-nodes 2.*--run-name"):
        _resolve_run_dir(TrainConfig(run_dir=tmp_path, num_nodes=2), None)
    resumed = tmp_path / "old"
    assert _resolve_run_dir(TrainConfig(run_dir=tmp_path, num_nodes=2), resumed) == resumed


def test_evaluation_shards_hold_each_chip_once(make_synthetic_dir) -> None:
    data_dir = make_synthetic_dir(count=26, seed=SEED, min_size=64, max_size=96)
    seen: list[int] = []
    for rank in range(2):
        datamodule = WakeDataModule(data_dir, image_size=32, batch_size=2, num_workers=0)
        datamodule.trainer = SimpleNamespace(world_size=2, global_rank=rank)  # type: ignore[assignment]
        for loader in (datamodule.val_dataloader(), datamodule.test_dataloader()):
            seen += [int(i) for batch in loader for i in batch["index"]]
    # val and test have 3 chips each: rank 0 gets 2, rank 1 gets 1, none repeated.
    assert sorted(seen) == [0, 0, 1, 1, 2, 2]
    datamodule = WakeDataModule(data_dir, image_size=32, batch_size=2, num_workers=0)
    datamodule.trainer = SimpleNamespace(world_size=4, global_rank=0)  # type: ignore[assignment]
    with pytest.raises(InputError, match="fewer than the 4"):
        datamodule.val_dataloader()
