"""Tests of wakemodel.preprocess: reading chips and making network inputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from chips import chip_pixels
from PIL import Image
from torchvision.transforms import v2

from wakemodel.errors import InputError, WakeModelError
from wakemodel.preprocess import load_image, normalize_image, preprocess_image, read_image

SIZE = 32


def luminance_formats() -> dict[str, Image.Image]:
    """The same chip in every supported storage format."""
    grey = chip_pixels(40, 30, (25, 10))
    rgb = np.repeat(grey[..., None], 3, axis=2)
    alpha = np.full((30, 40, 1), 128, dtype=np.uint8)
    return {
        "L.png": Image.fromarray(grey),
        "I16.png": Image.fromarray(grey.astype(np.uint16) * 257),
        "RGB.png": Image.fromarray(rgb),
        "RGBA.png": Image.fromarray(np.concatenate([rgb, alpha], axis=2)),
        "L.tif": Image.fromarray(grey),
        "I16.tiff": Image.fromarray(grey.astype(np.uint16) * 257),
        "F.tif": Image.fromarray(grey.astype(np.float32) / 255),
    }


@pytest.mark.parametrize("filename", list(luminance_formats()))
def test_every_format_gives_one_normalised_channel(tmp_path: Path, filename: str) -> None:
    path = tmp_path / filename
    luminance_formats()[filename].save(path)
    raw = read_image(path)
    assert raw.dtype == np.float32
    assert raw.shape == (30, 40)
    network_input = load_image(path, SIZE)
    assert network_input.dtype == np.uint8
    assert network_input.shape == (1, SIZE, SIZE)
    reference = preprocess_image(chip_pixels(40, 30, (25, 10)).astype(np.float32), SIZE)
    assert np.abs(network_input.astype(int) - reference.astype(int)).max() <= 1


def test_rgb_becomes_luminance(tmp_path: Path) -> None:
    pixels = np.zeros((2, 3, 3), dtype=np.uint8)
    pixels[0, 0] = (255, 0, 0)
    pixels[0, 1] = (0, 255, 0)
    pixels[0, 2] = (0, 0, 255)
    Image.fromarray(pixels).save(tmp_path / "rgb.png")
    raw = read_image(tmp_path / "rgb.png")
    np.testing.assert_allclose(raw[0], [0.299 * 255, 0.587 * 255, 0.114 * 255], rtol=1e-5)
    np.testing.assert_array_equal(raw[1], 0)


def test_read_image_names_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(b"not an image")
    with pytest.raises(WakeModelError, match=r"broken\.png"):
        read_image(path)
    with pytest.raises(WakeModelError, match=r"missing\.png"):
        read_image(tmp_path / "missing.png")


def test_percentile_stretch_properties() -> None:
    ramp = np.arange(1000, dtype=np.float32).reshape(20, 50)
    low, high = np.percentile(ramp, [1.0, 99.5])
    stretched = normalize_image(ramp)
    assert stretched.dtype == np.float32
    assert stretched.min() == 0.0
    assert stretched.max() == 1.0
    assert np.all(stretched[ramp <= low] == 0.0)
    assert np.all(stretched[ramp >= high] == 1.0)
    assert np.all(np.diff(stretched.ravel()) >= 0)
    np.testing.assert_allclose(normalize_image(3.0 * ramp + 7.0), stretched, atol=1e-6)


def test_normalize_is_nan_safe_and_handles_flat_images() -> None:
    np.testing.assert_array_equal(normalize_image(np.full((8, 8), 42.0)), 0.0)
    np.testing.assert_array_equal(normalize_image(np.full((8, 8), np.nan)), 0.0)
    with_nan = np.arange(64, dtype=np.float32).reshape(8, 8)
    with_nan[0, 0] = np.nan
    with_nan[0, 1] = np.inf
    result = normalize_image(with_nan)
    assert np.isfinite(result).all()
    assert result.min() >= 0.0
    assert result.max() <= 1.0
    assert result[0, 0] == 0.0
    flat_sea = np.full((32, 32), 100.0)
    flat_sea[5, 7] = 300.0
    vessel = normalize_image(flat_sea)
    assert vessel[5, 7] == 1.0
    assert vessel.sum() == 1.0


def test_preprocess_rejects_bad_sizes() -> None:
    with pytest.raises(InputError, match="image_size"):
        preprocess_image(np.zeros((4, 4)), 0)
    with pytest.raises(InputError, match="2-D"):
        preprocess_image(np.zeros((4, 4, 3)), SIZE)


@pytest.mark.parametrize(("height", "width", "size"), [(600, 800, 224), (30, 40, 32), (50, 20, 96)])
def test_resize_matches_torchvision_antialiased_bilinear(
    height: int, width: int, size: int
) -> None:
    rng = np.random.default_rng(height)
    raw = rng.gamma(2.0, 30.0, size=(height, width)).astype(np.float32)
    network_input = preprocess_image(raw, size)
    reference = v2.functional.resize(
        torch.from_numpy(normalize_image(raw))[None],
        [size, size],
        interpolation=v2.InterpolationMode.BILINEAR,
        antialias=True,
    )
    reference_uint8 = reference.clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    difference = np.abs(network_input.astype(int) - reference_uint8.astype(int))
    assert network_input.shape == (1, size, size)
    assert difference.max() <= 1
    assert (difference > 0).mean() < 0.01


def test_preprocessing_does_not_import_torch(tmp_path: Path) -> None:
    path = tmp_path / "chip.png"
    Image.fromarray(chip_pixels(40, 30, (25, 10))).save(path)
    code = (
        "import sys; from wakemodel.preprocess import load_image; "
        f"image = load_image({str(path)!r}, {SIZE}); "
        "print(image.shape, image.dtype, 'torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["(1,", f"{SIZE},", f"{SIZE})", "uint8", "False"]
