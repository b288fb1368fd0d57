import csv
import dataclasses
import math
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from click.testing import CliRunner

from wakemodel import train as train_module
from wakemodel.cli import main
from wakemodel.config import cli_fields, load_config, option_name, save_config
from wakemodel.errors import WakeModelError
from wakemodel.train import (
    AtomicCheckpointIO,
    TrainConfig,
    TrainResult,
    _unique_run_dir,
    train,
    wandb_mode,
)

ROOT = Path(__file__).resolve().parents[1]

BEST_NAME = re.compile(r"wake-epoch=\d{3}-val_loss=\d+\.\d{2}\.ckpt")


@pytest.fixture(scope="module")
def tiny_dir(make_synthetic_dir) -> Path:
    """10 synthetic chips: 8 train, 1 val, 1 test (2 training steps per epoch at batch 4)."""
    return make_synthetic_dir(count=10, seed=3)


def _config(data_dir: Path, tmp_path: Path, **overrides) -> TrainConfig:
    """A tiny CPU run: 32 px images, batches of 4, no downloads, no progress bar."""
    settings = {
        "data_dir": data_dir,
        "epochs": 1,
        "batch_size": 4,
        "image_size": 32,
        "accelerator": "cpu",
        "workers": 0,
        "pretrained": False,
        "run_dir": tmp_path / "runs",
        "run_name": "run",
        "progress_bar": False,
    }
    settings.update(overrides)
    return TrainConfig(**settings)


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


class _InterruptAtEpoch(pl.Callback):
    """Raise KeyboardInterrupt (as Ctrl-C would) when the given epoch starts."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


class _StartState(pl.Callback):
    """Record where training starts: epoch, global step and the optimizer's step count."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epoch = trainer.current_epoch
        self.global_step = trainer.global_step
        optimizer_state = trainer.optimizers[0].state
        self.optimizer_steps = max(
            (int(state["step"]) for state in optimizer_state.values()), default=0
        )
        self.lr = trainer.optimizers[0].param_groups[0]["lr"]


def test_missing_gpu_cli_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    result = CliRunner().invoke(
        main, ["train", "--accelerator", "gpu", "--checkpoint-dir", str(tmp_path / "ck")]
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Error: ")
    assert "CPU only" in lines[0]
    assert "--accelerator cpu" in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "ck").exists()


def test_missing_data_cli_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--data",
            str(tmp_path / "nowhere"),
            "--accelerator",
            "cpu",
            "--no-pretrained",
            "--run-dir",
            str(tmp_path / "runs"),
        ],
    )
    assert result.exit_code == 2
    assert "nowhere" in result.output
    assert "Traceback" not in result.output
    assert not list(tmp_path.glob("runs/*"))  # a run that never started leaves no folder


@pytest.mark.parametrize(
    ("option", "value"), [("--max-time", "1:2"), ("--devices", "abc"), ("--strategy", "nope")]
)
def test_invalid_trainer_option_cli_error(
    tiny_dir: Path, tmp_path: Path, option: str, value: str
) -> None:
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--data",
            str(tiny_dir),
            "--accelerator",
            "cpu",
            "--image-size",
            "32",
            "--no-pretrained",
            "--checkpoint-dir",
            str(tmp_path / "ck"),
            option,
            value,
        ],
    )
    assert result.exit_code == 2
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1
    assert f"{option} {value}" in error_lines[0]
    assert "Traceback" not in result.output


def test_fast_dev_run_cli(tiny_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--data",
            str(tiny_dir),
            "--fast-dev-run",
            "--accelerator",
            "cpu",
            "--image-size",
            "32",
            "--batch-size",
            "4",
            "--workers",
            "0",
            "--no-pretrained",
            "--checkpoint-dir",
            str(tmp_path / "ck"),
            "--run-dir",
            str(tmp_path / "runs"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Best epoch: 0" in result.output
    assert "val/vertex_error_px" in result.output
    assert "Best checkpoint: none written" in result.output
    assert "Run folder: none written" in result.output
    assert not list(tmp_path.glob("ck/*.ckpt"))
    assert not (tmp_path / "runs").exists()


def test_run_folder_holds_config_metrics_and_checkpoints(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tiny_dir, tmp_path, logger="csv", visibility_weight=0.7)
    result = train(config)
    run = tmp_path / "runs" / "run"
    assert isinstance(result, TrainResult)
    assert result.run_dir == run
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml", "metrics.csv"]
    assert (result.config_path, result.metrics_path) == (run / "config.yaml", run / "metrics.csv")
    assert result.checkpoint_dir == run / "checkpoints"
    assert result.last_checkpoint == run / "checkpoints" / "last.ckpt"
    assert result.best_checkpoint is not None
    assert BEST_NAME.fullmatch(result.best_checkpoint.name)
    assert result.best_epoch == 0
    assert f"{result.best_metrics['val/loss']:.2f}" in result.best_checkpoint.name
    assert {"val/vertex_error_px", "val/heading_error_deg", "val/pck@0.05"} <= set(
        result.best_metrics
    )
    # No temporary files are left behind by the atomic writes.
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == sorted(
        ["last.ckpt", result.best_checkpoint.name]
    )
    checkpoint = _load(result.best_checkpoint)
    assert checkpoint["hyper_parameters"]["image_size"] == 32
    assert checkpoint["hyper_parameters"]["visibility_weight"] == 0.7
    assert checkpoint["wakemodel_run_dir"] == str(run)
    stamped = {key for key in checkpoint if key.startswith("wakemodel_")}
    assert stamped == {"wakemodel_run_dir", "wakemodel_chip_extent_m", "wakemodel_tta_std_scale"}
    # The 8-view calibration is fitted after training, in both files.
    assert checkpoint["wakemodel_tta_std_scale"] > 0.0
    assert _load(result.last_checkpoint)["wakemodel_tta_std_scale"] > 0.0
    # The training chips' median extent in metres (chips of 64-128 px at 10 m).
    assert 640.0 <= checkpoint["wakemodel_chip_extent_m"] <= 1280.0

    # config.yaml is the config it ran with, as a fresh run: no resume, its folder's name.
    assert load_config(run / "config.yaml") == dataclasses.replace(config, run_name="run")

    # `train --config` reruns it in a new folder with its own checkpoints; options given on
    # the command line override the file.
    seen: list[TrainConfig] = []
    real_train = train_module.train

    def recording_train(config: TrainConfig) -> TrainResult:
        seen.append(config)
        return real_train(config)

    monkeypatch.setattr(train_module, "train", recording_train)
    rerun = CliRunner().invoke(
        main, ["train", "--config", str(run / "config.yaml"), "--seed", "5", "--logger", "none"]
    )
    assert rerun.exit_code == 0, rerun.output
    assert seen == [dataclasses.replace(config, seed=5, logger="none")]
    second = tmp_path / "runs" / "run-1"
    assert sorted(p.name for p in second.iterdir()) == ["checkpoints", "config.yaml"]
    assert "Logs: none written (--logger none)" in rerun.output
    assert f"Run folder: {second}" in rerun.output
    assert (second / "checkpoints" / "last.ckpt").is_file()
    assert _load(run / "checkpoints" / "last.ckpt")["wakemodel_run_dir"] == str(run)
    assert _load(second / "checkpoints" / "last.ckpt")["wakemodel_run_dir"] == str(second)


def test_train_options_are_generated_from_the_config() -> None:
    command = main.commands["train"]
    options = {param.name: param for param in command.params}
    fields = cli_fields()
    assert {option_name(spec) for spec, _ in fields} == {
        "--data",
        "--epochs",
        "--batch-size",
        "--image-size",
        "--lr",
        "--weight-decay",
        "--warmup-epochs",
        "--heading-weight",
        "--visibility-weight",
        "--wake-weight",
        "--ema-decay",
        "--seed",
        "--accelerator",
        "--precision",
        "--devices",
        "--num-nodes",
        "--strategy",
        "--workers",
        "--augment-on",
        "--logger",
        "--checkpoint-dir",
        "--run-dir",
        "--run-name",
        "--resume",
        "--deterministic",
        "--fast-dev-run",
        "--pretrained",
        "--weights",
        "--max-time",
        "--fit-schedule-to-time",
        "--compile",
        "--auto-batch-size",
    }
    assert options["pretrained"].opts == ["--pretrained"]
    assert options["pretrained"].secondary_opts == ["--no-pretrained"]
    assert options["fast_dev_run"].is_flag
    help_text = CliRunner().invoke(main, ["train", "--help"]).output
    for spec, _ in fields:
        assert option_name(spec) in help_text
    assert "--config" in help_text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("epochs: [1\n", "not valid YAML"),
        ("- 1\n", "expected a mapping"),
        ("epochs: 2\nlearning_rate: 0.1\n", "unknown setting 'learning_rate'"),
        ("epochs: 0\n", "epochs 0: must be at least 1"),
        ("augment_on: gpu\n", "augment_on 'gpu': choose one of"),
    ],
)
def test_bad_config_file_is_a_one_line_error(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "config.yaml"
    if content is not None:
        path.write_text(content)
    result = CliRunner().invoke(main, ["train", "--config", str(path)])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and result.output.startswith("Error: ")
    assert message in result.output


def test_config_module_imports_neither_torch_nor_lightning() -> None:
    code = (
        "import sys, wakemodel.config; "
        "print(sorted(m for m in ('torch', 'pytorch_lightning') if m in sys.modules))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert completed.stdout.strip() == "[]"


def test_config_file_round_trip(tmp_path: Path) -> None:
    config = TrainConfig(
        data_dir=tmp_path / "data",
        epochs=7,
        lr=2e-3,
        precision="bf16-mixed",
        workers=0,
        checkpoint_dir=tmp_path / "ck",
        fast_dev_run=3,
        run_name="x",
        weights_path="w.pth",
    )
    assert isinstance(config.weights_path, Path)
    assert load_config(save_config(config, tmp_path / "config.yaml")) == config


def test_run_folders_are_never_reused(tmp_path: Path) -> None:
    assert _unique_run_dir(tmp_path, "exp") == tmp_path / "exp"
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp-1").mkdir()
    assert _unique_run_dir(tmp_path, "exp") == tmp_path / "exp-2"
    assert re.fullmatch(r"\d{8}-\d{6}", _unique_run_dir(tmp_path, None).name)


def _csv_epochs(path: Path) -> list[int]:
    """Epochs of the validation rows of a metrics.csv."""
    with path.open(newline="") as file:
        return [int(row["epoch"]) for row in csv.DictReader(file) if row["val/loss"]]


def test_interrupt_then_resume_continues_epoch_and_optimizer(
    tiny_dir: Path, tmp_path: Path
) -> None:
    config = _config(tiny_dir, tmp_path, epochs=2)
    try:
        with pytest.raises(SystemExit):
            train(config, callbacks=[_InterruptAtEpoch(1)])
    finally:
        # Lightning ignores further Ctrl-C during its graceful shutdown; restore it.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    run = tmp_path / "runs" / "run"
    last = run / "checkpoints" / "last.ckpt"
    interrupted = _load(last)
    assert interrupted["epoch"] == 0
    steps_per_epoch = interrupted["global_step"]
    assert steps_per_epoch > 0
    assert _csv_epochs(run / "metrics.csv") == [0]

    start = _StartState()
    result = train(
        _config(tiny_dir, tmp_path, epochs=2, run_name=None, resume=last), callbacks=[start]
    )
    assert start.epoch == 1
    assert start.global_step == steps_per_epoch
    assert start.optimizer_steps == steps_per_epoch
    assert result.epochs_completed == 2
    assert set(result.history) == {0, 1}
    # The resumed run continues in the same folder: same metrics.csv, same checkpoints.
    assert result.run_dir == run and result.resumed
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["run"]
    assert _csv_epochs(run / "metrics.csv") == [0, 1]
    assert load_config(run / "config.yaml").resume is None

    resumed = _load(last)
    assert resumed["epoch"] == 1
    assert resumed["global_step"] == 2 * steps_per_epoch
    schedulers = resumed["lr_schedulers"][0]
    assert schedulers["last_epoch"] == 2 * steps_per_epoch
    assert result.best_checkpoint is not None and result.best_checkpoint.is_file()
    assert len(list((run / "checkpoints").glob("wake-epoch=*.ckpt"))) == 1


def test_resume_rejects_other_image_size(tiny_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.ckpt"
    torch.save({"hyper_parameters": {"image_size": 32}}, other)
    with pytest.raises(WakeModelError, match="--image-size 32"):
        train(_config(tiny_dir, tmp_path, image_size=48, resume=other))
    with pytest.raises(WakeModelError, match="no such checkpoint"):
        train(_config(tiny_dir, tmp_path, resume=tmp_path / "missing.ckpt"))
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    with pytest.raises(WakeModelError, match="not a readable checkpoint"):
        train(_config(tiny_dir, tmp_path, resume=tmp_path / "text.ckpt"))


def test_same_seed_deterministic_runs_match(tiny_dir: Path, tmp_path: Path) -> None:
    results = [
        train(
            _config(
                tiny_dir,
                tmp_path / f"run{index}",
                seed=7,
                deterministic=True,
                logger="none",
            )
        )
        for index in range(2)
    ]
    assert results[0].history == results[1].history
    assert len(results[0].history) == 1
    assert all(not math.isnan(metrics["val/loss"]) for metrics in results[0].history.values())


def test_atomic_checkpoint_io_leaves_no_partial_file(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"weights": torch.arange(4)}, target)
    assert torch.equal(io.load_checkpoint(target)["weights"], torch.arange(4))

    unpicklable = {"weights": torch.zeros(1000), "hook": lambda: None}
    with pytest.raises(Exception):  # noqa: B017 - any pickling error
        io.save_checkpoint(unpicklable, target)
    assert torch.equal(io.load_checkpoint(target)["weights"], torch.arange(4))
    with pytest.raises(Exception):  # noqa: B017
        io.save_checkpoint(unpicklable, tmp_path / "new.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_wandb_mode_without_key_is_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert wandb_mode() == "offline"

    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    (tmp_path / "netrc").chmod(0o600)
    assert wandb_mode() == "online"

    monkeypatch.setenv("NETRC", str(tmp_path / "missing"))
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"


class _AugmentationProbe(pl.Callback):
    """Record, per training batch, how far the images moved from the cached chips."""

    def __init__(self) -> None:
        self.max_change: list[float] = []

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: dict, batch_idx: int
    ) -> None:
        dataset = trainer.datamodule.train_dataset
        cached = dataset.images[batch["index"].cpu()].float() / 255.0
        self.max_change.append(float((batch["image"].cpu() - cached).abs().max()))
        self.per_sample = dataset.augment is not None


@pytest.mark.parametrize(("augment_on", "per_sample"), [("device", False), ("workers", True)])
def test_augmentation_runs_where_asked(
    tiny_dir: Path, tmp_path: Path, augment_on: str, per_sample: bool
) -> None:
    probe = _AugmentationProbe()
    train(_config(tiny_dir, tmp_path, augment_on=augment_on, logger="none"), callbacks=[probe])
    assert probe.per_sample is per_sample
    assert len(probe.max_change) == 2
    assert min(probe.max_change) > 0.05  # every training batch was augmented


def test_train_config_checks_values() -> None:
    with pytest.raises(WakeModelError, match="--augment-on 'gpu': choose one of"):
        TrainConfig(augment_on="gpu")  # type: ignore[arg-type]
    with pytest.raises(WakeModelError, match="--epochs 0: must be at least 1"):
        TrainConfig(epochs=0)
    assert TrainConfig(data_dir="data/x").data_dir == Path("data/x")  # type: ignore[arg-type]


def test_train_command_shows_only_our_lines(tiny_dir: Path, tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            str(ROOT / "cli.py"),
            "train",
            "--data",
            str(tiny_dir),
            "--epochs",
            "1",
            "--image-size",
            "32",
            "--batch-size",
            "4",
            "--workers",
            "0",
            "--no-pretrained",
            "--accelerator",
            "cpu",
            "--run-dir",
            str(tmp_path / "runs"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert "Device: CPU" in output and "Best checkpoint:" in output
    for noise in (
        "GPU available",
        "TPU available",
        "Tip:",
        "litlogger",
        "LeafSpec",
        "to estimate number of stepping batches",
        "stopped: `max_epochs",
        "smaller than the logging interval",
        "does not have many workers",
    ):
        assert noise not in output, noise


@pytest.mark.slow
def test_issue_command_epochs_2_on_cpu(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        main, ["train", "--data", str(tiny_dir), "--epochs", "2", "--accelerator", "cpu"]
    )
    assert result.exit_code == 0, result.output
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1
    best = [p for p in (runs[0] / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt"]
    assert len(best) == 1 and BEST_NAME.fullmatch(best[0].name)
    assert str(best[0].relative_to(tmp_path)) in result.output
    assert (runs[0] / "metrics.csv").is_file() and (runs[0] / "config.yaml").is_file()


@pytest.mark.slow
def test_wandb_logger_runs_offline_without_prompt(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.setattr("sys.stdin", None)
    result = train(_config(tiny_dir, tmp_path, logger="wandb"))
    assert (result.run_dir / "metrics.csv").is_file()
    assert list((result.run_dir / "wandb").glob("offline-run-*"))
