"""Large inference jobs: streaming in batches, progress, and --devices through Lightning."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import wakemodel.cli
import wakemodel.infer
from wakemodel import preprocess
from wakemodel.cli import main
from wakemodel.errors import InputError, WakeModelError
from wakemodel.infer import find_images, iter_predictions, predict, run

REPO_ROOT = Path(__file__).resolve().parents[1]


class RecordingPredictor:
    """Fixed keypoints; records the batch size of every network call."""

    image_size = 16

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.batch_sizes.append(len(images))
        keypoints = np.array([[0.5, 0.5], [0.2, 0.9], [0.8, 0.9]])
        return np.tile(keypoints, (len(images), 1, 1)), np.full((len(images), 3), 0.9)


def _chips(count: int) -> list[np.ndarray]:
    return [np.full((20 + i, 30), i, dtype=np.float32) for i in range(count)]


@pytest.mark.parametrize("prefetch", [True, False])
def test_progress_counts_increase_to_the_total(
    prefetch: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wakemodel.infer, "PREFETCH", prefetch)
    calls: list[tuple[int, int]] = []
    predictor = RecordingPredictor()
    predictions = predict(
        predictor, _chips(10), batch_size=4, tta=False, progress=lambda *a: calls.append(a)
    )
    assert calls == [(4, 10), (8, 10), (10, 10)]
    assert predictor.batch_sizes == [4, 4, 2]
    assert [p.height for p in predictions] == [20 + i for i in range(10)]


def test_unreadable_chips_count_towards_progress(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(np.full((24, 32), 90, np.uint8)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    calls: list[tuple[int, int]] = []
    skipped: list[str] = []
    predictor = RecordingPredictor()
    report = run(
        predictor,
        [good, bad, good, bad, good],
        batch_size=2,
        tta=False,
        on_unreadable=lambda source, error: skipped.append(source),
        progress=lambda *a: calls.append(a),
    )
    assert calls == [(2, 5), (4, 5), (5, 5)]
    assert skipped == [str(bad), str(bad)]
    assert predictor.batch_sizes == [1, 1, 1]
    # The report keeps paths for files, never pixels.
    assert report.inputs == [good, good, good]


def test_iter_predictions_streams_batch_by_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Taking the first prediction reads at most two batches (the current one and the next)."""
    reads: list[int] = []
    original = preprocess.preprocess_image

    def counting(image: np.ndarray, image_size: int) -> np.ndarray:
        reads.append(image.shape[0])
        return original(image, image_size)

    monkeypatch.setattr(preprocess, "preprocess_image", counting)
    predictor = RecordingPredictor()
    stream = iter_predictions(predictor, _chips(40), batch_size=5, tta=False)
    assert reads == [] and predictor.batch_sizes == []  # nothing is read before iterating
    first = next(stream)
    assert first.height == 20
    assert predictor.batch_sizes == [5]
    assert 5 <= len(reads) <= 10
    rest = list(stream)
    assert len(rest) == 39 and predictor.batch_sizes == [5] * 8 and len(reads) == 40


def test_prefetch_gives_the_same_predictions(monkeypatch: pytest.MonkeyPatch) -> None:
    chips = [np.random.default_rng(i).random((30, 40)).astype(np.float32) for i in range(9)]

    class MeanPredictor:
        image_size = 8

        def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            mean = images.mean(axis=(1, 2, 3))[:, None, None]
            keypoints = mean + np.array([[0.0, 0.0], [0.3, 0.1], [0.1, 0.3]])
            return keypoints, np.full((len(images), 3), 0.9)

    with_prefetch = predict(MeanPredictor(), chips, batch_size=2, tta=False)
    monkeypatch.setattr(wakemodel.infer, "PREFETCH", False)
    without = predict(MeanPredictor(), chips, batch_size=2, tta=False)
    for a, b in zip(with_prefetch, without, strict=True):
        np.testing.assert_array_equal(a.keypoints_px, b.keypoints_px)


def test_unreadable_image_raises_from_the_prefetch_thread(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    stream = iter_predictions(
        RecordingPredictor(), [*_chips(3), bad, *_chips(2)], batch_size=2, tta=False
    )
    assert len([next(stream), next(stream)]) == 2  # the first batch comes out
    with pytest.raises(WakeModelError, match=r"bad\.png"):
        list(stream)


def test_options_are_checked_before_iterating(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="batch_size"):
        iter_predictions(RecordingPredictor(), _chips(2), batch_size=0)
    with pytest.raises(InputError, match=r"\.ckpt"):
        iter_predictions(tmp_path / "model.onnx", _chips(2), devices=2)
    with pytest.raises(InputError, match="checkpoint path"):
        iter_predictions(RecordingPredictor(), _chips(2), devices=2)
    with pytest.raises(InputError, match="positive"):
        iter_predictions(RecordingPredictor(), _chips(2), devices=0)


def test_cli_progress_bar_goes_to_stderr_only(
    tiny_checkpoint: Path, synthetic_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["infer", str(tiny_checkpoint), str(synthetic_dir / "imgs"), "--json", "-"]
    args += ["--accelerator", "cpu", "--batch-size", "4"]
    quiet = CliRunner().invoke(main, args)
    assert quiet.exit_code == 0, quiet.output
    assert "Predicting" not in quiet.stderr  # stderr is not a terminal
    monkeypatch.setattr(wakemodel.cli, "_stderr_is_terminal", lambda: True)
    shown = CliRunner().invoke(main, args)
    assert shown.exit_code == 0, shown.output
    # click prints just the label on a stream that is no terminal (the runner's).
    assert "Predicting" in shown.stderr
    assert json.loads(shown.stdout) == json.loads(quiet.stdout)
    # One batch or less: no bar even on a terminal.
    single = CliRunner().invoke(main, [*args[:-1], "32"])
    assert single.exit_code == 0 and "Predicting" not in single.stderr


def test_progress_bar_draws_counts_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with wakemodel.cli._ChipProgress(min_chips=4) as progress:
        for done in (4, 8, 10):
            progress(done, 10)
        progress.echo("Skipping x.png: unreadable")
    text = terminal.getvalue()
    assert "4/10" in text and "10/10" in text and "Skipping x.png" in text
    assert text.endswith("\n")  # the bar's line is finished
    few = Terminal()
    monkeypatch.setattr(sys, "stderr", few)
    with wakemodel.cli._ChipProgress(min_chips=16) as progress:
        progress(10, 10)
    assert few.getvalue() == ""  # one batch or less: no bar


@pytest.mark.parametrize("command", ["infer", "evaluate"])
def test_cli_devices_with_onnx_is_one_error_line(
    command: str, synthetic_dir: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not read")
    target = synthetic_dir / "imgs" if command == "infer" else synthetic_dir
    result = CliRunner().invoke(main, [command, str(model), str(target), "--devices", "2"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --devices 2 is for .ckpt")
    assert result.stdout == ""


def test_lightning_predict_loop_matches_the_streaming_path(
    tiny_checkpoint: Path, synthetic_dir: Path
) -> None:
    """One device through Lightning (in this process): same predictions, same order."""
    from wakemodel.infer import _device_predictions
    from wakemodel.predict_loop import predict_on_devices

    paths = find_images([synthetic_dir / "imgs"])[::-1]
    calls: list[tuple[int, int]] = []
    streamed = predict(tiny_checkpoint, paths, batch_size=5, accelerator="cpu", gsd_m=10.0)
    outputs = predict_on_devices(
        tiny_checkpoint,
        paths,
        devices=1,
        accelerator="cpu",
        batch_size=5,
        progress=lambda *a: calls.append(a),
    )
    looped = _device_predictions(paths, outputs, 10.0, 0.5, None)
    assert [item for _, item in looped] == paths
    assert [p.to_dict() for p, _ in looped] == [p.to_dict() for p in streamed]
    done = [count for count, _ in calls]
    assert calls[-1] == (24, 24) and done == sorted(done)


def test_gather_restores_input_order(tmp_path: Path) -> None:
    from wakemodel.predict_loop import _gather

    def write(rank: int, indices: list[int]) -> None:
        count = len(indices)
        np.savez(
            tmp_path / f"rank{rank}.npz",
            index=np.array(indices),
            size=np.tile([[10, 20]], (count, 1)),
            keypoints=np.array(indices, float)[:, None, None] * np.ones((count, 3, 2)),
            visibility=np.full((count, 3), 0.5),
            keypoint_std=np.full((count, 3, 2), 0.01),
            error=np.array([""] * count),
        )

    write(0, [0, 2, 4])
    write(1, [1, 3])
    gathered = _gather(tmp_path, 5)
    assert gathered["index"].tolist() == [0, 1, 2, 3, 4]
    assert gathered["keypoints"][:, 0, 0].tolist() == [0, 1, 2, 3, 4]
    (tmp_path / "rank1.npz").unlink()
    with pytest.raises(WakeModelError, match="3 results for 5 chips"):
        _gather(tmp_path, 5)


def _cli_json(*args: str) -> tuple[dict[str, Any], str]:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "cli.py"), *args, "--json", "-"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def _numbers(value: Any) -> list[Any]:
    """The leaves of a JSON document in order (numbers, strings, booleans, None)."""
    if isinstance(value, dict):
        return [leaf for key in sorted(value) for leaf in _numbers(value[key])]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _numbers(item)]
    return [value]


@pytest.mark.slow
def test_cli_two_cpu_devices_give_the_same_predictions_in_order(
    tiny_checkpoint: Path, synthetic_dir: Path, tmp_path: Path
) -> None:
    """``--devices 2`` (Lightning ddp_spawn, 2 CPU processes) equals ``--devices 1``."""
    folder = tmp_path / "chips"
    shutil.copytree(synthetic_dir / "imgs", folder)
    (folder / "synth_000005b.png").write_text("not an image")  # skipped, in both
    common = ["infer", str(tiny_checkpoint), str(folder), "--accelerator", "cpu", "--no-tta"]
    one, one_err = _cli_json(*common, "--batch-size", "4")
    two, two_err = _cli_json(*common, "--batch-size", "4", "--devices", "2")
    sources = [p["source"] for p in two["predictions"]]
    assert sources == [p["source"] for p in one["predictions"]] == sorted(sources)
    assert len(sources) == 24
    one_leaves, two_leaves = _numbers(one), _numbers(two)
    assert len(one_leaves) == len(two_leaves)
    for a, b in zip(one_leaves, two_leaves, strict=True):
        if isinstance(a, float) and isinstance(b, float):
            assert b == pytest.approx(a, rel=1e-4, abs=0.011)
        else:
            assert a == b
    # The calling process alone reports: the skip line once, no Lightning chatter.
    assert two_err.count("Skipping") == one_err.count("Skipping") == 1
    assert two_err.strip().splitlines() == one_err.strip().splitlines()
