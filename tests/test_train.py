import math
import re
import signal
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from click.testing import CliRunner

from wakemodel.cli import main
from wakemodel.errors import InputError, WakeModelError
from wakemodel.train import (
    AtomicCheckpointIO,
    TrainConfig,
    TrainResult,
    _unique_run_dir,
    train,
    wandb_mode,
    wants_device_augmentation,
)

BEST_NAME = re.compile(r"wake-epoch=\d{3}-vertex_px=\d+\.\d{2}\.ckpt")


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
        "checkpoint_dir": tmp_path / "checkpoints",
        "run_dir": tmp_path / "runs",
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
        ["train", "--data", str(tmp_path / "nowhere"), "--accelerator", "cpu",
         "--no-pretrained", "--checkpoint-dir", str(tmp_path / "ck")],
    )
    assert result.exit_code == 2
    assert "nowhere" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("option", "value"), [("--max-time", "1:2"), ("--devices", "abc"), ("--strategy", "nope")]
)
def test_invalid_trainer_option_cli_error(
    tiny_dir: Path, tmp_path: Path, option: str, value: str
) -> None:
    result = CliRunner().invoke(
        main,
        ["train", "--data", str(tiny_dir), "--accelerator", "cpu", "--image-size", "32",
         "--no-pretrained", "--checkpoint-dir", str(tmp_path / "ck"), option, value],
    )
    assert result.exit_code == 2
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1
    assert f"{option} {value}" in error_lines[0]
    assert "Traceback" not in result.output


def test_fast_dev_run_cli(tiny_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["train", "--data", str(tiny_dir), "--fast-dev-run", "--accelerator", "cpu",
         "--image-size", "32", "--batch-size", "4", "--workers", "0", "--no-pretrained",
         "--checkpoint-dir", str(tmp_path / "ck"), "--run-dir", str(tmp_path / "runs")],
    )
    assert result.exit_code == 0, result.output
    assert "Best epoch: 0" in result.output
    assert "val/vertex_error_px" in result.output
    assert "Best checkpoint: none written" in result.output
    assert not list(tmp_path.glob("ck/*.ckpt"))


def test_train_writes_named_checkpoints_with_metadata(tiny_dir: Path, tmp_path: Path) -> None:
    result = train(_config(tiny_dir, tmp_path, logger="csv"))
    assert isinstance(result, TrainResult)
    assert result.best_checkpoint is not None
    assert result.last_checkpoint == tmp_path / "checkpoints" / "last.ckpt"
    assert BEST_NAME.fullmatch(result.best_checkpoint.name)
    assert result.best_checkpoint.parent == tmp_path / "checkpoints"
    assert result.best_epoch == 0
    assert f"{result.best_metrics['val/vertex_error_px']:.2f}" in result.best_checkpoint.name
    assert {"val/vertex_error_px", "val/heading_error_deg", "val/pck@0.05"} <= set(
        result.best_metrics
    )
    assert (result.run_dir / "metrics.csv").is_file()
    assert result.run_dir.parent == tmp_path / "runs"

    checkpoint = _load(result.best_checkpoint)
    assert checkpoint["hyper_parameters"]["image_size"] == 32
    assert checkpoint["wakemodel_env"]["accelerator"] == "cpu"
    assert checkpoint["wakemodel_env"]["precision"] == "32"
    assert checkpoint["wakemodel_env"]["torch"] == torch.__version__
    assert checkpoint["wakemodel_val_metrics"] == result.best_metrics
    assert checkpoint["wakemodel_train_config"]["image_size"] == 32
    assert checkpoint["wakemodel_run_dir"] == str(result.run_dir)
    # No temporary files are left behind by the atomic writes.
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == sorted(
        ["last.ckpt", result.best_checkpoint.name]
    )


def test_run_folders_are_never_reused(tmp_path: Path) -> None:
    assert _unique_run_dir(tmp_path, "exp") == tmp_path / "exp"
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp-1").mkdir()
    assert _unique_run_dir(tmp_path, "exp") == tmp_path / "exp-2"
    assert re.fullmatch(r"\d{8}-\d{6}", _unique_run_dir(tmp_path, None).name)


def test_interrupt_then_resume_continues_epoch_and_optimizer(
    tiny_dir: Path, tmp_path: Path
) -> None:
    config = _config(tiny_dir, tmp_path, epochs=2, logger="none")
    try:
        with pytest.raises(SystemExit):
            train(config, callbacks=[_InterruptAtEpoch(1)])
    finally:
        # Lightning ignores further Ctrl-C during its graceful shutdown; restore it.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    last = tmp_path / "checkpoints" / "last.ckpt"
    interrupted = _load(last)
    assert interrupted["epoch"] == 0
    steps_per_epoch = interrupted["global_step"]
    assert steps_per_epoch > 0

    start = _StartState()
    result = train(
        _config(tiny_dir, tmp_path, epochs=2, logger="none", resume=last), callbacks=[start]
    )
    assert start.epoch == 1
    assert start.global_step == steps_per_epoch
    assert start.optimizer_steps == steps_per_epoch
    assert result.epochs_completed == 2
    assert set(result.history) == {0, 1}

    resumed = _load(last)
    assert resumed["epoch"] == 1
    assert resumed["global_step"] == 2 * steps_per_epoch
    schedulers = resumed["lr_schedulers"][0]
    assert schedulers["last_epoch"] == 2 * steps_per_epoch
    assert result.best_checkpoint is not None and result.best_checkpoint.is_file()
    assert len(list((tmp_path / "checkpoints").glob("wake-epoch=*.ckpt"))) == 1


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
                tiny_dir, tmp_path / f"run{index}", seed=7, deterministic=True,
                logger="none",
            )
        )
        for index in range(2)
    ]
    assert results[0].history == results[1].history
    assert len(results[0].history) == 1
    assert all(
        not math.isnan(metrics["val/loss"]) for metrics in results[0].history.values()
    )


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


def test_wandb_mode_without_key_is_offline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
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


def test_auto_augments_on_gpus_only() -> None:
    assert [wants_device_augmentation("auto", device) for device in ("cpu", "cuda", "mps")] == [
        False, True, True,
    ]
    assert wants_device_augmentation("device", "cpu") is True
    assert wants_device_augmentation("workers", "cuda") is False
    with pytest.raises(InputError, match="--augment-on 'gpu'"):
        wants_device_augmentation("gpu", "cuda")


def test_cli_defaults_match_train_config() -> None:
    command = main.commands["train"]
    defaults = TrainConfig()
    checked = 0
    for param in command.params:
        name = "logger" if param.name == "logger_name" else param.name
        if isinstance(param.default, (bool, int, float, str, Path)) and hasattr(defaults, name):
            assert param.default == getattr(defaults, name), name
            checked += 1
    assert checked >= 12


@pytest.mark.slow
def test_issue_command_epochs_2_on_cpu(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        main, ["train", "--data", str(tiny_dir), "--epochs", "2", "--accelerator", "cpu"]
    )
    assert result.exit_code == 0, result.output
    best = [p for p in (tmp_path / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt"]
    assert len(best) == 1 and BEST_NAME.fullmatch(best[0].name)
    assert str(best[0].relative_to(tmp_path)) in result.output
    assert len(list((tmp_path / "runs").glob("*/metrics.csv"))) == 1


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
