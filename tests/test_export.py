"""ONNX export: fidelity to PyTorch (fp32, int8), dynamic batch, metadata, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from wakemodel.cli import main
from wakemodel.errors import WakeModelError
from wakemodel.export import METADATA_KEYS, OnnxKeypointPredictor, export_onnx
from wakemodel.infer import find_images, load_model, predict

pytest.importorskip("onnxruntime")

FP32_TOLERANCE_PX = 0.5
INT8_TOLERANCE_PX = 2.0


@pytest.fixture(scope="module")
def onnx_models(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("onnx")
    return {
        "fp32": export_onnx(tiny_checkpoint, folder / "model.onnx"),
        "int8": export_onnx(tiny_checkpoint, folder / "model_int8.onnx", int8=True),
    }


@pytest.fixture(scope="module")
def torch_keypoints_px(tiny_checkpoint: Path, synthetic_dir: Path) -> np.ndarray:
    predictions = predict(
        tiny_checkpoint, find_images([synthetic_dir / "imgs"]), accelerator="cpu", tta=False
    )
    return np.stack([p.keypoints_px for p in predictions])


@pytest.mark.parametrize(
    ("precision", "tolerance_px"),
    [
        ("fp32", FP32_TOLERANCE_PX),
        ("int8", INT8_TOLERANCE_PX),
    ],
)
def test_onnx_reproduces_torch_keypoints_in_original_pixels(
    onnx_models: dict[str, Path],
    torch_keypoints_px: np.ndarray,
    synthetic_dir: Path,
    precision: str,
    tolerance_px: float,
) -> None:
    predictions = predict(onnx_models[precision], find_images([synthetic_dir / "imgs"]), tta=False)
    onnx_keypoints_px = np.stack([p.keypoints_px for p in predictions])
    assert onnx_keypoints_px.shape == torch_keypoints_px.shape == (24, 3, 2)
    error_px = np.abs(onnx_keypoints_px - torch_keypoints_px).max()
    assert error_px < tolerance_px


def test_dynamic_batch_and_metadata(onnx_models: dict[str, Path], tiny_checkpoint: Path) -> None:
    predictor = OnnxKeypointPredictor(onnx_models["fp32"])
    torch_predictor = load_model(tiny_checkpoint, accelerator="cpu")
    assert predictor.image_size == torch_predictor.image_size == 32
    assert predictor.metadata[METADATA_KEYS["precision"]] == "fp32"
    assert float(predictor.metadata[METADATA_KEYS["input_scale"]]) == pytest.approx(1 / 255)
    assert "0.449" in predictor.metadata[METADATA_KEYS["normalization"]]
    assert OnnxKeypointPredictor(onnx_models["int8"]).metadata[METADATA_KEYS["precision"]] == "int8"
    images = np.random.default_rng(0).random((3, 1, 32, 32), dtype=np.float32)
    for batch in (1, 3):
        keypoints, visibility, keypoint_std = predictor(images[:batch])
        assert keypoints.shape == keypoint_std.shape == (batch, 3, 2)
        assert visibility.shape == (batch, 3)
        assert ((visibility >= 0) & (visibility <= 1)).all()
        assert (keypoint_std > 0).all()
    single, *_ = predictor(images[2:3])
    batched, *_ = predictor(images)
    np.testing.assert_allclose(single[0], batched[2], atol=1e-5)


def test_int8_file_is_smaller(onnx_models: dict[str, Path]) -> None:
    assert onnx_models["int8"].stat().st_size < 0.5 * onnx_models["fp32"].stat().st_size


def _infer_json(model: Path, image: Path) -> dict[str, Any]:
    result = CliRunner().invoke(
        main, ["infer", str(model), str(image), "--json", "-", "--accelerator", "cpu"]
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _schema(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _schema(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_schema(item) for item in value]
    return type(value).__name__


def test_infer_cli_with_onnx_matches_checkpoint_schema(
    onnx_models: dict[str, Path], tiny_checkpoint: Path, synthetic_dir: Path
) -> None:
    image = find_images([synthetic_dir / "imgs"])[0]
    from_onnx = _infer_json(onnx_models["fp32"], image)
    from_checkpoint = _infer_json(tiny_checkpoint, image)
    assert _schema(from_onnx["predictions"]) == _schema(from_checkpoint["predictions"])
    onnx_vertex = from_onnx["predictions"][0]["keypoints"][0]
    checkpoint_vertex = from_checkpoint["predictions"][0]["keypoints"][0]
    assert onnx_vertex["x"] == pytest.approx(checkpoint_vertex["x"], abs=FP32_TOLERANCE_PX)
    # The uncertainty and the wake score travel with the ONNX file (calibration included).
    onnx_chip, checkpoint_chip = from_onnx["predictions"][0], from_checkpoint["predictions"][0]
    assert checkpoint_chip["heading_std_deg"] > 0 and checkpoint_chip["vertex_std_px"] > 0
    for key in ("heading_std_deg", "vertex_std_px", "wake_score"):
        assert onnx_chip[key] == pytest.approx(checkpoint_chip[key], rel=1e-3, abs=0.02), key
    assert onnx_chip["wake_found"] == checkpoint_chip["wake_found"]


def _run_cli_without_torch(args: list[str]) -> str:
    """Run the CLI in a fresh interpreter; check that it imported neither torch nor pyproj.

    Returns:
        Its standard output.
    """
    code = (
        "import sys; from wakemodel.cli import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit as stop:\n"
        "    assert stop.code in (0, None), stop.code\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n"
        "print('PYPROJ' if 'pyproj' in sys.modules else 'NO-PYPROJ', file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stderr.strip().splitlines()[-2:] == ["NO-TORCH", "NO-PYPROJ"]
    return result.stdout


@pytest.mark.parametrize(("extra", "tta"), [([], True), (["--no-tta"], False)])
def test_onnx_infer_cli_runs_without_torch(
    onnx_models: dict[str, Path], synthetic_dir: Path, extra: list[str], tta: bool
) -> None:
    image = find_images([synthetic_dir / "imgs"])[0]
    args = ["infer", str(onnx_models["fp32"]), str(image), "--json", "-", *extra]
    document = json.loads(_run_cli_without_torch(args))
    assert document["tta"] is tta
    keypoints = document["predictions"][0]["keypoints"]
    assert [point["name"] for point in keypoints] == ["vertex", "end_1", "end_2"]


def test_onnx_evaluate_cli_runs_without_torch(
    onnx_models: dict[str, Path], synthetic_dir: Path
) -> None:
    args = ["evaluate", str(onnx_models["fp32"]), str(synthetic_dir), "--json", "-"]
    document = json.loads(_run_cli_without_torch(args))
    assert len(document["samples"]) == 24
    assert "calibration" in document["summary"]


def _single_error_line(result: Any) -> str:
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    return lines[0]


def test_cli_export_writes_model(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "exported.onnx"
    result = CliRunner().invoke(
        main, ["export", str(tiny_checkpoint), "--format", "onnx", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "Saved" in result.output and out.is_file()
    assert list(out.parent.iterdir()) == [out]


def test_cli_export_errors(tmp_path: Path, tiny_checkpoint: Path) -> None:
    runner = CliRunner()
    missing = _single_error_line(
        runner.invoke(
            main, ["export", str(tmp_path / "absent.ckpt"), "--out", str(tmp_path / "m.onnx")]
        )
    )
    assert "absent.ckpt" in missing
    assert not (tmp_path / "m.onnx").exists()
    suffix = _single_error_line(
        runner.invoke(main, ["export", str(tiny_checkpoint), "--out", str(tmp_path / "m.txt")])
    )
    assert "m.txt" in suffix and ".onnx" in suffix


def test_missing_onnxruntime_is_one_clear_error(
    onnx_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(WakeModelError, match=r"onnxruntime is not installed.*\[onnx\]"):
        load_model(onnx_models["fp32"])


def test_unreadable_onnx_file(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.onnx"
    bogus.write_text("not a model")
    with pytest.raises(WakeModelError, match=r"bogus\.onnx"):
        load_model(bogus)


def test_onnx_predictor_metadata_and_contract(onnx_models: dict[str, Path]) -> None:
    from wakemodel import export, predictors

    predictor = predictors.load_predictor(onnx_models["int8"])
    assert isinstance(predictor, predictors.OnnxPredictor)
    assert isinstance(predictor, predictors.Predictor)
    assert predictor.metadata["format"] == "onnx" and predictor.metadata["image_size"] == 32
    assert predictor.metadata[METADATA_KEYS["precision"]] == "int8"
    assert export.OnnxKeypointPredictor is predictors.OnnxPredictor
    assert (export.INPUT_NAME, export.OUTPUT_NAMES) == (
        predictors.INPUT_NAME,
        predictors.OUTPUT_NAMES,
    )


def test_onnx_carries_the_8_view_calibration(
    onnx_models: dict[str, Path], tiny_checkpoint: Path
) -> None:
    from wakemodel.predictors import OnnxPredictor, load_predictor, tta_std_scale

    checkpoint = load_predictor(tiny_checkpoint, accelerator="cpu")
    assert checkpoint.metadata["tta_std_scale"] is not None
    for path in onnx_models.values():
        assert tta_std_scale(OnnxPredictor(path)) == pytest.approx(tta_std_scale(checkpoint))


def test_onnx_carries_the_training_chip_extent(
    onnx_models: dict[str, Path], tiny_checkpoint: Path
) -> None:
    from wakemodel.predictors import OnnxPredictor, chip_extent_m, load_predictor

    expected = chip_extent_m(load_predictor(tiny_checkpoint, accelerator="cpu"))
    assert expected is not None
    for path in onnx_models.values():
        assert chip_extent_m(OnnxPredictor(path)) == pytest.approx(expected)


def test_wake_score_platt_scaling_is_applied_the_same_with_ckpt_module_and_onnx(
    tiny_checkpoint: Path, synthetic_dir: Path, tmp_path: Path
) -> None:
    """A checkpoint's Platt scaling reaches every backend's wake score, views or not."""
    import torch

    from wakemodel.calibration import apply_wake_score_platt
    from wakemodel.model import WakeKeypointModule
    from wakemodel.predictors import WAKE_SCORE_PLATT_KEY, OnnxPredictor, wake_score_platt

    images = find_images([synthetic_dir / "imgs"])[:6]
    platt = (2.0, 1.5)
    checkpoint = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    checkpoint[WAKE_SCORE_PLATT_KEY] = list(platt)
    scaled = tmp_path / "platt.ckpt"
    torch.save(checkpoint, scaled)
    onnx_path = export_onnx(scaled, tmp_path / "platt.onnx")
    assert wake_score_platt(OnnxPredictor(onnx_path)) == pytest.approx(platt)
    module = WakeKeypointModule.load_from_checkpoint(scaled, map_location="cpu")
    for tta in (False, True):
        raw = np.array([p.wake_score for p in predict(tiny_checkpoint, images, tta=tta)])
        expected = apply_wake_score_platt(raw, platt)
        assert np.abs(expected - raw).max() > 0.01  # the scaling moves these scores
        for model in (scaled, module, onnx_path):
            predictions = predict(model, images, tta=tta, accelerator="cpu")
            score = np.array([p.wake_score for p in predictions])
            np.testing.assert_allclose(score, expected, atol=1e-4)
            assert [p.wake_found for p in predictions] == list(score >= 0.5)
            vertex_visibility = [p.visibility[0] for p in predictions]
            np.testing.assert_allclose(vertex_visibility, score, atol=1e-6)
