import inspect
import itertools
import logging
import time
import urllib.error
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.models import EfficientNet_B0_Weights, efficientnet_b0

from wakemodel.config import MODEL_DEFAULTS
from wakemodel.errors import InputError, WakeModelError
from wakemodel.losses import keypoint_loss
from wakemodel.model import WakeKeypointModule, warmup_cosine_factor
from wakemodel.network import (
    DECODER_CHANNELS,
    DETECTOR_PREFIX,
    GREY_MEAN,
    GREY_STD,
    EfficientNetB0KeypointDetector,
    KeypointOutput,
    _attended_visibility,
    _attended_visibility_head,
    decode_heatmaps,
    detector_from_checkpoint,
    mode_window,
    soft_argmax,
    soft_argmax_with_spread,
)
from wakemodel.train import TrainConfig

IMAGE_SIZE = 32


class _RandomWakes(Dataset):
    def __init__(self, count: int = 4) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.rand(count, 1, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
        self.keypoints = torch.rand(count, 3, 2, generator=generator)
        self.visible = torch.tensor([[True, True, True], [True, True, False]] * (count // 2))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "image": self.images[index],
            "keypoints": self.keypoints[index],
            "visible": self.visible[index],
            "orig_size": torch.tensor([120.0, 80.0]),
            "index": torch.tensor(index),
        }


@pytest.fixture(scope="module")
def rgb_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    rgb = efficientnet_b0(weights=None).eval()
    with torch.no_grad():  # non-trivial BN statistics so the comparison checks them too
        bn = rgb.features[0][1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("weights") / "efficientnet_b0.pth"
    torch.save(rgb.state_dict(), path)
    return path, rgb


def test_forward_shapes_and_ranges() -> None:
    detector = EfficientNetB0KeypointDetector().eval()
    output = detector(torch.rand(2, 1, IMAGE_SIZE, IMAGE_SIZE))
    assert isinstance(output, KeypointOutput)
    assert output.keypoints.shape == (2, 3, 2)
    assert output.visibility_logits.shape == (2, 3)
    assert ((output.keypoints >= 0) & (output.keypoints <= 1)).all()


def test_channels_last_gives_same_output() -> None:
    detector = EfficientNetB0KeypointDetector().eval()
    images = torch.rand(2, 1, 48, 48)
    expected = detector(images)
    detector = detector.to(memory_format=torch.channels_last)
    output = detector(images.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(output.keypoints, expected.keypoints, atol=1e-5)
    assert torch.allclose(output.visibility_logits, expected.visibility_logits, atol=1e-4)


def test_normalisation_buffers_are_in_state_dict() -> None:
    state = EfficientNetB0KeypointDetector().state_dict()
    assert state["mean"].item() == pytest.approx(GREY_MEAN)
    assert state["std"].item() == pytest.approx(GREY_STD)


def test_stem_adapted_by_summing_rgb_kernels(rgb_weights) -> None:
    path, rgb = rgb_weights
    detector = EfficientNetB0KeypointDetector(weights_path=str(path)).eval()
    for image in (torch.full((1, 1, 40, 40), 0.7), torch.rand(1, 1, 40, 40)):
        # Raw conv level: the grey kernel on x equals the RGB kernels on x repeated.
        grey_conv = detector.features[0][0](image)
        rgb_conv = rgb.features[0][0](image.repeat(1, 3, 1, 1))
        assert torch.allclose(grey_conv, rgb_conv, atol=1e-5)
        # Whole stem (conv + BN + SiLU) on the same normalised input.
        normalised = (image - GREY_MEAN) / GREY_STD
        with torch.no_grad():
            grey_stem = detector.features[0](normalised)
            rgb_stem = rgb.features[0](normalised.repeat(1, 3, 1, 1))
        assert torch.allclose(grey_stem, rgb_stem, atol=1e-5)
    deep = "features.7.0.block.3.0.weight"
    assert torch.equal(detector.state_dict()[deep], rgb.state_dict()[deep])


def test_missing_weights_path_raises(tmp_path: Path) -> None:
    with pytest.raises(WakeModelError, match="not found"):
        EfficientNetB0KeypointDetector(weights_path=str(tmp_path / "missing.pth"))


def test_wrong_weights_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(WakeModelError, match="efficientnet_b0"):
        EfficientNetB0KeypointDetector(weights_path=str(path))


def test_unsupported_num_keypoints_raises() -> None:
    with pytest.raises(InputError, match="num_keypoints"):
        EfficientNetB0KeypointDetector(num_keypoints=4)


def test_offline_pretrained_warns_once_and_uses_random_weights(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = []

    def offline(self, *args, **kwargs):
        calls.append(kwargs)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(EfficientNet_B0_Weights, "get_state_dict", offline)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="wakemodel.model"):
        detector = EfficientNetB0KeypointDetector(pretrained=True)
    assert time.monotonic() - start < 10
    assert len(calls) == 1
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "random weights" in message and "--weights PATH" in message
    assert "\n" not in message
    assert detector(torch.rand(2, 1, IMAGE_SIZE, IMAGE_SIZE)).keypoints.shape == (2, 3, 2)


def test_soft_argmax_finds_peaks_at_centre_and_borders() -> None:
    logits = torch.full((1, 3, 5, 9), -1e4)
    logits[0, 0, 2, 4] = 0.0  # centre cell
    logits[0, 1, 0, 0] = 0.0  # top-left corner
    logits[0, 2, 4, 8] = 0.0  # bottom-right corner
    keypoints = soft_argmax(logits)
    expected = torch.tensor([[[0.5, 0.5], [0.0, 0.0], [1.0, 1.0]]])
    torch.testing.assert_close(keypoints, expected)
    two_peaks = torch.full((1, 1, 5, 9), -1e4)
    two_peaks[0, 0, 2, 2] = two_peaks[0, 0, 2, 6] = 0.0
    torch.testing.assert_close(soft_argmax(two_peaks), torch.tensor([[[0.5, 0.5]]]))


def test_heatmap_spread_is_small_for_one_peak_and_large_for_two() -> None:
    one_peak = torch.full((1, 1, 5, 9), -1e4)
    one_peak[0, 0, 2, 4] = 0.0
    two_peaks = torch.full((1, 1, 5, 9), -1e4)
    two_peaks[0, 0, 2, 2] = two_peaks[0, 0, 2, 6] = 0.0
    _, one_spread = soft_argmax_with_spread(one_peak)
    centre, two_spread = soft_argmax_with_spread(two_peaks)
    torch.testing.assert_close(one_spread, torch.zeros(1, 1, 2), atol=1e-6, rtol=0)
    # Peaks at x = 2/8 and 6/8: the mean is between them and the std half their distance.
    torch.testing.assert_close(centre, torch.tensor([[[0.5, 0.5]]]))
    torch.testing.assert_close(two_spread, torch.tensor([[[0.25, 0.0]]]), atol=1e-6, rtol=0)


def test_decoding_reads_the_peak_not_the_mean_of_a_split_or_smeared_heatmap() -> None:
    logits = torch.full((1, 2, 9, 17), -1e4)
    # Slot 0: a peak at (3, 4) and a weaker second candidate at (13, 4); the mean lies between.
    logits[0, 0, 4, 3] = 0.0
    logits[0, 0, 4, 13] = -0.5
    # Slot 1: a peak at (16, 0), the corner, with mass smeared along a row towards the left.
    logits[0, 1, 0, 16] = 2.0
    logits[0, 1, 0, :10] = 0.0
    keypoints, spread = decode_heatmaps(logits, radius_cells=2)
    torch.testing.assert_close(keypoints[0, 0], torch.tensor([3 / 16, 0.5]), atol=1e-6, rtol=0)
    torch.testing.assert_close(keypoints[0, 1], torch.tensor([1.0, 0.0]), atol=1e-6, rtol=0)
    whole, whole_spread = soft_argmax_with_spread(logits)
    assert whole[0, 0, 0] > 0.3  # pulled towards the second candidate
    assert whole[0, 1, 0] < 0.6  # pulled along the smear
    # The spread is the heatmap's RMS distance from the keypoint, so a split heatmap still
    # reports its doubt, more than about its own mean.
    torch.testing.assert_close(spread, torch.sqrt(whole_spread**2 + (whole - keypoints) ** 2))
    assert spread[0, 0, 0] > whole_spread[0, 0, 0] > 0.2
    keypoints_whole, _ = decode_heatmaps(logits, radius_cells=0)
    torch.testing.assert_close(keypoints_whole, whole)


def test_decoding_window_keeps_sub_cell_precision_at_the_peak() -> None:
    logits = torch.full((1, 1, 7, 7), -1e4)
    logits[0, 0, 3, 3] = 0.0
    logits[0, 0, 3, 4] = 0.0  # two equal neighbours: the keypoint lies halfway, at x = 3.5 / 6
    window = mode_window(logits, 1)
    assert window.sum() == 9 and window[0, 0, 3, 3] and not window[0, 0, 3, 5]
    keypoints, _ = decode_heatmaps(logits, radius_cells=1)
    torch.testing.assert_close(keypoints[0, 0], torch.tensor([3.5 / 6, 0.5]), atol=1e-6, rtol=0)
    corner = torch.full((1, 1, 7, 7), -1e4)
    corner[0, 0, 0, 0] = 0.0
    assert mode_window(corner, 2).sum() == 9  # clipped at the border


def test_detector_decodes_in_the_window_unless_told_otherwise() -> None:
    torch.manual_seed(0)
    detector = EfficientNetB0KeypointDetector().eval()
    images = torch.rand(2, 1, IMAGE_SIZE * 2, IMAGE_SIZE * 2)
    with torch.no_grad():
        heatmaps, _ = detector.heatmaps(images)
        windowed = detector(images).keypoints
        detector.decode_radius_cells = 0
        whole = detector(images).keypoints
    torch.testing.assert_close(windowed, decode_heatmaps(heatmaps)[0])
    torch.testing.assert_close(whole, soft_argmax(heatmaps))
    assert not torch.allclose(windowed, whole)
    with pytest.raises(InputError, match="decode_radius_cells=-1"):
        EfficientNetB0KeypointDetector(decode_radius_cells=-1)


def test_forward_scales_the_spread_by_the_calibration_buffer() -> None:
    detector = EfficientNetB0KeypointDetector().eval()
    images = torch.rand(2, 1, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        raw = detector(images).keypoint_std
        detector.std_scale.fill_(3.0)
        scaled = detector(images).keypoint_std
    assert raw.shape == (2, 3, 2) and (raw > 0).all()
    torch.testing.assert_close(scaled, 3.0 * raw)
    assert "std_scale" in detector.state_dict()


def test_warmup_cosine_factor() -> None:
    factors = [
        warmup_cosine_factor(step, warmup_steps=4, total_steps=20, min_lr_ratio=0.1)
        for step in range(21)
    ]
    assert factors[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert factors[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[4:]))
    assert factors[20] == pytest.approx(0.1)


def test_module_defaults_are_the_training_defaults() -> None:
    parameters = inspect.signature(WakeKeypointModule).parameters
    config = TrainConfig()
    for module_name, config_name in [
        ("image_size", "image_size"),
        ("lr", "lr"),
        ("weight_decay", "weight_decay"),
        ("warmup_epochs", "warmup_epochs"),
        ("max_epochs", "epochs"),
    ]:
        assert parameters[module_name].default == getattr(config, config_name), module_name
    assert parameters["dropout"].default == MODEL_DEFAULTS.dropout
    assert inspect.signature(EfficientNetB0KeypointDetector).parameters["dropout"].default == (
        MODEL_DEFAULTS.dropout
    )
    assert parameters["pretrained"].default is False
    assert (WakeKeypointModule.monitor, WakeKeypointModule.mode) == ("val/loss", "min")


def test_tiny_fit_logs_metrics(tmp_path: Path) -> None:
    pl.seed_everything(0)
    module = WakeKeypointModule(
        image_size=IMAGE_SIZE, pretrained=False, warmup_epochs=0.5, max_epochs=1
    )
    loader = DataLoader(_RandomWakes(), batch_size=4)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    metrics = trainer.callback_metrics
    expected = {
        "train/loss",
        "val/loss",
        "val/vertex_error_px",
        "val/vertex_error_m",
        "val/vertex_error_frac",
        "val/heading_error_deg",
        "val/pck@0.05",
    }
    assert expected <= set(metrics)
    assert all(torch.isfinite(metrics[name]) for name in expected)
    assert metrics["val/vertex_error_m"] == pytest.approx(10 * metrics["val/vertex_error_px"])
    assert 0 <= metrics["val/pck@0.05"] <= 1
    # Validation calibrated the uncertainty scale, and the checkpointed buffer holds it.
    assert float(metrics["val/std_scale"]) == pytest.approx(float(module.detector.std_scale))
    assert float(module.detector.std_scale) != 1.0
    assert next(module.detector.parameters()).is_contiguous(memory_format=torch.channels_last)
    test_metrics = trainer.test(module, dataloaders=loader, verbose=False)[0]
    assert {"test/loss", "test/vertex_error_px", "test/pck@0.05"} <= set(test_metrics)


def test_fast_dev_run_and_checkpoint_round_trip(tmp_path: Path, rgb_weights) -> None:
    weights_path, _ = rgb_weights
    module = WakeKeypointModule(
        image_size=IMAGE_SIZE, pretrained=True, weights_path=str(weights_path)
    )
    trainer = pl.Trainer(
        fast_dev_run=True,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    loader = DataLoader(_RandomWakes(), batch_size=2)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    hyper_parameters = checkpoint["hyper_parameters"]
    assert "pretrained" not in hyper_parameters and "weights_path" not in hyper_parameters
    assert hyper_parameters["image_size"] == IMAGE_SIZE
    # Checkpoints written before save_hyperparameters(ignore=...) stored the two as below.
    old_path = tmp_path / "old.ckpt"
    torch.save(
        {
            **checkpoint,
            "hyper_parameters": {
                **hyper_parameters,
                "pretrained": False,
                "weights_path": None,
            },
        },
        old_path,
    )
    # Checkpoints written before the calibrated uncertainty had no std_scale buffer, and
    # before the per-keypoint visibility head had no such head (it does not move keypoints).
    uncalibrated_path = tmp_path / "uncalibrated.ckpt"
    state_dict = dict(checkpoint["state_dict"])
    del state_dict["detector.std_scale"]
    del state_dict["detector.keypoint_visibility_head.weight"]
    del state_dict["detector.keypoint_visibility_head.bias"]
    torch.save({**checkpoint, "state_dict": state_dict}, uncalibrated_path)
    old_detector = detector_from_checkpoint(
        torch.load(uncalibrated_path, map_location="cpu", weights_only=True)
    )
    assert float(old_detector.std_scale) == 1.0
    module.eval()
    images = torch.rand(2, 1, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        expected = module(images).keypoints
        for saved in (path, old_path, uncalibrated_path):
            restored = WakeKeypointModule.load_from_checkpoint(saved).eval()
            assert torch.allclose(restored(images).keypoints, expected)
            detector = detector_from_checkpoint(
                torch.load(saved, map_location="cpu", weights_only=False)
            )
            assert torch.allclose(detector(images).keypoints, expected)


def test_loss_gradients_reach_the_stem() -> None:
    module = WakeKeypointModule(image_size=IMAGE_SIZE, pretrained=False)
    batch = next(iter(DataLoader(_RandomWakes(), batch_size=4)))
    output = module(batch["image"])
    keypoint_loss(
        output.keypoints, output.visibility_logits, batch["keypoints"], batch["visible"]
    ).backward()
    stem_grad = module.detector.features[0][0].weight.grad
    assert stem_grad is not None and torch.isfinite(stem_grad).all()
    assert stem_grad.abs().sum() > 0


@pytest.mark.slow
def test_onnx_export_matches_torch(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    detector = EfficientNetB0KeypointDetector()
    with torch.no_grad():  # calibrate BN statistics and spread the outputs away from 0.5
        for module in detector.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None
        detector(torch.rand(8, 1, IMAGE_SIZE, IMAGE_SIZE))
        detector.eval()
        detector.visibility_head.weight.normal_()
        detector.decoder.fuse[-1].weight.normal_()
        scale = detector(torch.rand(8, 1, IMAGE_SIZE, IMAGE_SIZE)).visibility_logits.abs().max()
        detector.visibility_head.weight.div_(scale / 2)
    path = tmp_path / "detector.onnx"
    torch.onnx.export(
        detector,
        (torch.rand(2, 1, IMAGE_SIZE, IMAGE_SIZE),),
        str(path),
        input_names=["images"],
        output_names=["keypoints", "visibility_logits", "keypoint_std"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    images = torch.rand(3, 1, IMAGE_SIZE, IMAGE_SIZE)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    keypoints, logits, keypoint_std = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        expected = detector(images)
    assert keypoints.shape == (3, 3, 2)
    assert expected.keypoints.std() > 0.01
    # The heatmaps here are far sharper than a trained network's (random N(0, 1) weights over
    # 96 channels), so float32 reordering in ONNX Runtime moves a soft-argmax by up to ~3e-4
    # of the chip (0.07 px at 224 px), and a spread by up to ~6e-4; test_export holds trained
    # checkpoints to FP32_TOLERANCE_PX.
    torch.testing.assert_close(torch.from_numpy(keypoints), expected.keypoints, atol=5e-4, rtol=0)
    torch.testing.assert_close(
        torch.from_numpy(logits), expected.visibility_logits, atol=1e-3, rtol=1e-3
    )
    torch.testing.assert_close(
        torch.from_numpy(keypoint_std), expected.keypoint_std, atol=1e-3, rtol=1e-3
    )


def test_wake_loss_only_where_a_chip_has_no_wake() -> None:
    torch.manual_seed(0)
    with_wake_loss = WakeKeypointModule(image_size=IMAGE_SIZE, wake_weight=0.5).eval()
    without = WakeKeypointModule(image_size=IMAGE_SIZE, wake_weight=0.0).eval()
    without.load_state_dict(with_wake_loss.state_dict())
    batch = next(iter(DataLoader(_RandomWakes(), batch_size=4)))
    with torch.no_grad():
        # All chips hold a wake (the real data): the wake loss adds nothing.
        assert with_wake_loss._forward_with_loss(batch)[1] == without._forward_with_loss(batch)[1]
        negative = {**batch, "visible": batch["visible"].clone()}
        negative["visible"][0] = False
        assert (
            with_wake_loss._forward_with_loss(negative)[1] > without._forward_with_loss(negative)[1]
        )


def test_checkpoint_without_keypoint_visibility_head_keeps_its_outputs() -> None:
    torch.manual_seed(0)
    old = EfficientNetB0KeypointDetector(keypoint_visibility=False).eval()
    checkpoint = {
        "hyper_parameters": {"image_size": IMAGE_SIZE},
        "state_dict": {DETECTOR_PREFIX + name: value for name, value in old.state_dict().items()},
    }
    restored = detector_from_checkpoint(checkpoint)
    assert restored.keypoint_visibility_head is not None
    images = torch.rand(2, 1, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        before, after = old(images), restored(images)
    assert torch.equal(after.keypoints, before.keypoints)
    assert torch.allclose(after.visibility_logits, before.visibility_logits)


def test_keypoint_visibility_is_read_where_each_heatmap_points() -> None:
    head = _attended_visibility_head()
    with torch.no_grad():
        head.weight[:, 0] = torch.tensor([2.0, 1.0])  # vertex, wake ends: channel 0
    features = torch.zeros(1, DECODER_CHANNELS, 4, 4)
    features[0, 0, 1, 2] = 1.0  # a wake end at cell (row 1, column 2), nothing at (3, 0)
    heatmaps = torch.full((1, 3, 4, 4), -50.0)
    heatmaps[0, 0, 1, 2] = heatmaps[0, 1, 1, 2] = heatmaps[0, 2, 3, 0] = 50.0
    logits = _attended_visibility(head, heatmaps, features)
    assert torch.allclose(logits, torch.tensor([[2.0, 1.0, 0.0]]), atol=1e-4)
    # Swapping the end slots' heatmaps swaps their visibility.
    swapped = _attended_visibility(head, heatmaps[:, [0, 2, 1]], features)
    assert torch.allclose(swapped, torch.tensor([[2.0, 0.0, 1.0]]), atol=1e-4)
    # The head does not pull the heatmaps: no gradient reaches them.
    heatmaps.requires_grad_(True)
    _attended_visibility(head, heatmaps, features).sum().backward()
    assert heatmaps.grad is None or not heatmaps.grad.any()
