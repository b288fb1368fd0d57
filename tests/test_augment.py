"""Tests of wakemodel.augment: keypoint-true augmentation."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from scipy import stats
from torchvision.transforms import v2

from wakemodel.augment import AugmentationSettings, BatchWakeAugmentation, WakeAugmentation
from wakemodel.datamodule import WakeDataModule
from wakemodel.errors import InputError

SIZE = 48
TOLERANCE_PX = 2.0
FLIPS_ONLY = AugmentationSettings(
    p_flip=1.0,
    degrees=0.0,
    translate=0.0,
    scale=(1.0, 1.0),
    gamma=(1.0, 1.0),
    brightness=0.0,
    contrast=0.0,
    p_blur=0.0,
    p_noise=0.0,
)
GEOMETRY_ONLY = AugmentationSettings(
    gamma=(1.0, 1.0), brightness=0.0, contrast=0.0, p_blur=0.0, p_noise=0.0
)
PHOTOMETRY_ONLY = AugmentationSettings(p_flip=0.0, degrees=0.0, translate=0.0, scale=(1.0, 1.0))


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """Run the many tiny transforms on one thread (much faster on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pixel_centres() -> torch.Tensor:
    """float [S, S, 2] (x, y) centres of the pixels."""
    centres = torch.arange(SIZE, dtype=torch.float32) + 0.5
    return torch.stack(torch.meshgrid(centres, centres, indexing="xy"), dim=-1)


def blob(center: torch.Tensor, amplitude: float = 1.0, sigma: float = 1.2) -> torch.Tensor:
    """float [S, S] Gaussian spot centred on continuous pixel coordinates (x, y)."""
    squared = ((pixel_centres() - center) ** 2).sum(dim=-1)
    return amplitude * torch.exp(-squared / (2 * sigma**2))


def line(start: torch.Tensor, end: torch.Tensor, amplitude: float = 0.4) -> torch.Tensor:
    """float [S, S] faint line (Gaussian profile, sigma 0.7 px) from start to end (x, y)."""
    offsets = pixel_centres() - start
    direction = end - start
    t = ((offsets * direction).sum(dim=-1) / direction.square().sum().clamp(min=1e-6)).clamp(0, 1)
    squared = (offsets - t[..., None] * direction).square().sum(dim=-1)
    return amplitude * torch.exp(-squared / (2 * 0.7**2))


def draw_wake(keypoints_px: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """float [1, S, S]: dim sea, faint lines from the vertex to each far end, bright vertex."""
    image = torch.full((SIZE, SIZE), 0.15)
    for end, end_visible in zip(keypoints_px[1:], visible[1:], strict=True):
        if end_visible:
            image = torch.maximum(image, line(keypoints_px[0], end))
    return torch.maximum(image, blob(keypoints_px[0]))[None]


def brightest_location(image: torch.Tensor) -> torch.Tensor:
    """(x, y) centre of the brightest pixel of a lightly smoothed [1, S, S] image."""
    smoothed = v2.functional.gaussian_blur(image, kernel_size=5, sigma=1.0)[0]
    row, col = divmod(int(smoothed.argmax()), SIZE)
    return torch.tensor([col + 0.5, row + 0.5])


def random_sample(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Keypoints [3, 2] in pixels (vertex central, far ends anywhere) and visibility [3]."""
    keypoints = torch.rand(3, 2, generator=generator) * (SIZE - 2) + 1
    keypoints[0] = torch.rand(2, generator=generator) * SIZE * 0.5 + SIZE * 0.25
    visible = torch.tensor([True, True, bool(torch.rand(1, generator=generator) < 0.5)])
    keypoints[~visible] = 0.0
    return keypoints, visible


def test_vertex_stays_on_the_bright_vessel() -> None:
    generator = torch.Generator().manual_seed(0)
    augmentation = WakeAugmentation(SIZE)
    torch.manual_seed(0)
    checked = 0
    for _ in range(60):
        keypoints, visible = random_sample(generator)
        wake = draw_wake(keypoints, visible)
        image, moved, moved_visible = augmentation(wake, keypoints, visible)
        assert image.shape == (1, SIZE, SIZE)
        assert image.dtype == torch.float32
        assert image.min() >= 0.0 and image.max() <= 1.0
        if moved_visible[0]:
            distance = torch.linalg.vector_norm(moved[0] - brightest_location(image))
            assert distance <= TOLERANCE_PX
            checked += 1
    assert checked >= 50


def test_every_slot_follows_its_marker() -> None:
    generator = torch.Generator().manual_seed(1)
    augmentation = WakeAugmentation(SIZE)
    checked = 0
    for trial in range(50):
        keypoints, visible = random_sample(generator)
        visible[2] = True
        keypoints[2] = torch.rand(2, generator=generator) * (SIZE - 2) + 1
        for slot in range(3):
            torch.manual_seed(trial)
            image, moved, moved_visible = augmentation(
                blob(keypoints[slot])[None], keypoints, visible
            )
            if moved_visible[slot]:
                distance = torch.linalg.vector_norm(moved[slot] - brightest_location(image))
                assert distance <= TOLERANCE_PX, (trial, slot)
                checked += 1
    assert checked >= 100


def test_flips_are_exact_in_continuous_pixels() -> None:
    augmentation = WakeAugmentation(SIZE, FLIPS_ONLY)
    image = torch.zeros(1, SIZE, SIZE)
    image[0, 5, 3] = 1.0
    keypoints = torch.tensor([[3.5, 5.5], [0.0, 0.0], [SIZE, SIZE]])
    flipped, moved, moved_visible = augmentation(image, keypoints, torch.ones(3, dtype=torch.bool))
    assert flipped[0, SIZE - 6, SIZE - 4] == 1.0
    expected = torch.tensor([[SIZE - 3.5, SIZE - 5.5], [SIZE, SIZE], [0.0, 0.0]])
    torch.testing.assert_close(moved, expected)
    assert moved_visible.all()


def test_points_leaving_the_canvas_become_invisible() -> None:
    generator = torch.Generator().manual_seed(2)
    augmentation = WakeAugmentation(SIZE, AugmentationSettings(translate=0.4, scale=(1.2, 1.8)))
    torch.manual_seed(2)
    lost = 0
    for _ in range(60):
        keypoints, visible = random_sample(generator)
        image = draw_wake(keypoints, visible)
        _, moved, moved_visible = augmentation(image, keypoints, visible)
        assert not (moved_visible & ~visible).any()
        inside = ((moved >= 0) & (moved <= SIZE)).all(dim=-1)
        assert inside[moved_visible].all()
        assert (moved[~moved_visible] == 0).all()
        lost += int((visible & ~moved_visible).sum())
    assert lost >= 10


def test_invisible_slot_stays_invisible_and_zero() -> None:
    augmentation = WakeAugmentation(SIZE)
    keypoints = torch.tensor([[24.0, 24.0], [30.0, 20.0], [0.0, 0.0]])
    visible = torch.tensor([True, True, False])
    torch.manual_seed(3)
    for _ in range(10):
        _, moved, moved_visible = augmentation(draw_wake(keypoints, visible), keypoints, visible)
        assert not moved_visible[2]
        assert (moved[2] == 0).all()


def test_chip_without_a_wake_stays_without_keypoints() -> None:
    """A negative (every slot invisible) augments like any chip and keeps no keypoint."""
    image = torch.full((1, SIZE, SIZE), 0.15) + blob(torch.tensor([20.0, 30.0]))[None]
    keypoints, visible = torch.zeros(3, 2), torch.zeros(3, dtype=torch.bool)
    augmentation = WakeAugmentation(SIZE)
    torch.manual_seed(5)
    changed = 0
    for _ in range(10):
        moved_image, moved, moved_visible = augmentation(image, keypoints, visible)
        assert moved_image.shape == (1, SIZE, SIZE)
        assert not moved_visible.any() and (moved == 0).all()
        changed += not torch.equal(moved_image, image)
    assert changed == 10

    images, batch_keypoints, batch_visible = random_batch(6, torch.Generator().manual_seed(12))
    batch_keypoints[::2] = 0.0
    batch_visible[::2] = False
    generator = torch.Generator().manual_seed(13)
    moved_images, moved, moved_visible = BatchWakeAugmentation()(
        images, batch_keypoints, batch_visible, generator
    )
    assert moved_images.shape == images.shape
    assert not moved_visible[::2].any() and (moved[::2] == 0).all()
    assert moved_visible[1::2].any()


def test_swapping_arms_swaps_the_output() -> None:
    generator = torch.Generator().manual_seed(4)
    augmentation = WakeAugmentation(SIZE)
    swap = [0, 2, 1]
    for seed in range(20):
        keypoints, visible = random_sample(generator)
        image = draw_wake(keypoints, visible)
        torch.manual_seed(seed)
        image_a, moved_a, visible_a = augmentation(image, keypoints, visible)
        torch.manual_seed(seed)
        image_b, moved_b, visible_b = augmentation(image, keypoints[swap], visible[swap])
        torch.testing.assert_close(image_b, image_a)
        torch.testing.assert_close(moved_b, moved_a[swap])
        assert torch.equal(visible_b, visible_a[swap])


def test_rejects_images_of_the_wrong_size() -> None:
    with pytest.raises(InputError, match="expected"):
        WakeAugmentation(SIZE)(torch.zeros(1, SIZE, SIZE + 1), torch.zeros(3, 2), torch.ones(3))


def test_default_settings_keep_the_per_sample_defaults() -> None:
    augmentation = WakeAugmentation(SIZE)
    affine = augmentation.geometric.transforms[2]
    assert augmentation.settings == AugmentationSettings()
    assert affine.degrees == [-180.0, 180.0]
    assert affine.translate == (0.1, 0.1)
    assert tuple(affine.scale) == (0.85, 1.15)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("p_flip", 1.5),
        ("degrees", -1.0),
        ("translate", float("nan")),
        ("scale", (1.2, 0.9)),
        ("gamma", (0.0, 1.0)),
        ("brightness", -0.1),
        ("blur_sigma", (1.0,)),
        ("noise_sigma", "x"),
    ],
)
def test_settings_reject_bad_values(field: str, value: object) -> None:
    with pytest.raises(InputError, match=f"{field}="):
        AugmentationSettings(**{field: value})


def test_settings_store_pairs_as_float_tuples() -> None:
    settings = AugmentationSettings(scale=[1, 2])  # type: ignore[arg-type]
    assert settings.scale == (1.0, 2.0)
    assert hash(settings) == hash(AugmentationSettings(scale=(1.0, 2.0)))


def random_batch(
    batch: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Wake images [B, 1, S, S], normalised keypoints [B, 3, 2] and visibility [B, 3]."""
    samples = [random_sample(generator) for _ in range(batch)]
    keypoints = torch.stack([keypoints for keypoints, _ in samples])
    visible = torch.stack([visible for _, visible in samples])
    images = torch.stack([draw_wake(k, v) for k, v in samples])
    return images, keypoints / SIZE, visible


def blob_centroid(image: torch.Tensor) -> torch.Tensor:
    """(x, y) intensity centroid (continuous pixels) in a 7 x 7 window around the maximum."""
    row, col = divmod(int(image[0].argmax()), SIZE)
    rows = slice(max(row - 3, 0), row + 4)
    cols = slice(max(col - 3, 0), col + 4)
    window = image[0, rows, cols]
    centres = pixel_centres()[rows, cols]
    return (centres * window[..., None]).sum(dim=(0, 1)) / window.sum()


def test_batch_keypoints_follow_their_blobs() -> None:
    generator = torch.Generator().manual_seed(5)
    augmentation = BatchWakeAugmentation(GEOMETRY_ONLY)
    checked = 0
    for seed in range(3):
        _, keypoints, visible = random_batch(8, generator)
        visible[:, 2] = True
        keypoints[:, 2] = torch.rand(8, 2, generator=generator) * 0.8 + 0.1
        for slot in range(3):
            images = torch.stack([blob(point * SIZE)[None] for point in keypoints[:, slot]])
            draws = torch.Generator().manual_seed(seed)
            moved_images, moved, moved_visible = augmentation(images, keypoints, visible, draws)
            for sample in range(8):
                point_px = moved[sample, slot] * SIZE
                clear_of_border = bool(((point_px > 4) & (point_px < SIZE - 4)).all())
                if moved_visible[sample, slot] and clear_of_border:
                    error_px = torch.linalg.vector_norm(
                        blob_centroid(moved_images[sample]) - point_px
                    )
                    assert error_px <= 0.5, (seed, slot, sample)
                    checked += 1
    assert checked >= 50


def test_batch_samples_get_independent_parameters() -> None:
    image = draw_wake(torch.tensor([[20.0, 24.0], [40.0, 10.0], [40.0, 38.0]]), torch.ones(3))
    images = image.expand(8, -1, -1, -1)
    keypoints = torch.tensor([[20.0, 24.0], [40.0, 10.0], [40.0, 38.0]]).expand(8, -1, -1) / SIZE
    visible = torch.ones(8, 3, dtype=torch.bool)
    generator = torch.Generator().manual_seed(6)
    moved_images, moved, _ = BatchWakeAugmentation(GEOMETRY_ONLY)(
        images, keypoints, visible, generator
    )
    assert len(torch.unique(moved[:, 0], dim=0)) == 8
    assert len(torch.unique(moved_images.flatten(1), dim=0)) == 8
    photometric, _, _ = BatchWakeAugmentation(
        AugmentationSettings(p_flip=0.0, degrees=0.0, translate=0.0, scale=(1.0, 1.0), p_noise=0.0)
    )(images, keypoints, visible, generator)
    assert len(torch.unique(photometric.mean(dim=(1, 2, 3)))) == 8


def test_batch_flips_are_exact_in_continuous_pixels() -> None:
    images = torch.rand(4, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    keypoints = torch.tensor([[3.5 / SIZE, 5.5 / SIZE], [0.0, 0.0], [1.0, 1.0]]).expand(4, -1, -1)
    visible = torch.ones(4, 3, dtype=torch.bool)
    flipped, moved, moved_visible = BatchWakeAugmentation(FLIPS_ONLY)(images, keypoints, visible)
    torch.testing.assert_close(flipped, torch.flip(images, dims=(-2, -1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(moved, 1.0 - keypoints)
    assert moved_visible.all()


def test_batch_points_leaving_the_canvas_become_invisible() -> None:
    generator = torch.Generator().manual_seed(8)
    images, keypoints, visible = random_batch(32, generator)
    augmentation = BatchWakeAugmentation(AugmentationSettings(translate=0.4, scale=(1.2, 1.8)))
    _, moved, moved_visible = augmentation(images, keypoints, visible, generator)
    assert not (moved_visible & ~visible).any()
    assert ((moved >= 0) & (moved <= 1)).all(dim=-1)[moved_visible].all()
    assert (moved[~moved_visible] == 0).all()
    assert int((visible & ~moved_visible).sum()) >= 10
    assert (~visible).any()


def test_batch_is_reproducible_and_keeps_dtype_range_and_device() -> None:
    images, keypoints, visible = random_batch(6, torch.Generator().manual_seed(9))
    augmentation = BatchWakeAugmentation()
    first = augmentation(images, keypoints, visible, torch.Generator().manual_seed(10))
    again = augmentation(images, keypoints, visible, torch.Generator().manual_seed(10))
    other = augmentation(images, keypoints, visible, torch.Generator().manual_seed(11))
    for expected, actual in zip(first, again, strict=True):
        assert torch.equal(expected, actual)
    assert not torch.equal(first[0], other[0])
    assert first[0].min() >= 0.0 and first[0].max() <= 1.0
    assert [t.dtype for t in first] == [torch.float32, torch.float32, torch.bool]
    assert all(t.device == images.device for t in first)

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        half = augmentation(images.bfloat16(), keypoints, visible)
    assert half[0].dtype == torch.bfloat16 and half[1].dtype == torch.float32
    assert half[0].shape == images.shape
    assert half[0].min() >= 0.0 and half[0].max() <= 1.0


def test_batch_rejects_bad_shapes() -> None:
    augmentation = BatchWakeAugmentation()
    with pytest.raises(InputError, match="images of shape"):
        augmentation(torch.zeros(2, 1, SIZE, SIZE + 1), torch.zeros(2, 3, 2), torch.ones(2, 3))
    with pytest.raises(InputError, match="visible of shape"):
        augmentation(torch.zeros(2, 1, SIZE, SIZE), torch.zeros(2, 3, 2), torch.ones(2, 2))


def ks_pvalue(reference: torch.Tensor, batched: torch.Tensor) -> float:
    """p-value of the two-sample Kolmogorov-Smirnov test of two 1-D samples."""
    return float(stats.ks_2samp(reference.numpy(), batched.numpy()).pvalue)


def test_batch_photometry_matches_the_per_sample_distribution() -> None:
    count = 1000
    keypoints, visible = random_sample(torch.Generator().manual_seed(12))
    image = draw_wake(keypoints, visible)
    per_sample = WakeAugmentation(SIZE, PHOTOMETRY_ONLY)
    torch.manual_seed(12)
    reference = torch.stack([per_sample(image, keypoints, visible)[0] for _ in range(count)])
    batched, _, _ = BatchWakeAugmentation(PHOTOMETRY_ONLY)(
        image.expand(count, -1, -1, -1),
        (keypoints / SIZE).expand(count, -1, -1),
        visible.expand(count, -1),
        torch.Generator().manual_seed(13),
    )
    statistics = {
        "mean": lambda x: x.mean(dim=(1, 2, 3)),
        "std": lambda x: x.std(dim=(1, 2, 3)),
        "max": lambda x: x.amax(dim=(1, 2, 3)),
        "roughness": lambda x: (x[..., 1:] - x[..., :-1]).abs().mean(dim=(1, 2, 3)),
    }
    # Any one of brightness 0.3, contrast 0.3, gamma (0.75, 1.25), p_blur 0.5,
    # blur_sigma (0.1, 1.5) or p_noise 0.3 in the batch gives some p < 1e-3 here.
    for name, statistic in statistics.items():
        assert ks_pvalue(statistic(reference), statistic(batched)) > 1e-3, name


def test_batch_geometry_matches_the_per_sample_distribution() -> None:
    count = 1000
    settings = dataclasses.replace(GEOMETRY_ONLY, p_flip=0.0)
    points_px = torch.tensor([[SIZE * 0.75, SIZE * 0.5], [SIZE * 0.5, SIZE * 0.3], [0.0, 0.0]])
    visible = torch.tensor([True, True, False])
    per_sample = WakeAugmentation(SIZE, settings)
    torch.manual_seed(14)
    reference = (
        torch.stack(
            [per_sample(torch.zeros(1, SIZE, SIZE), points_px, visible)[1] for _ in range(count)]
        )
        / SIZE
    )
    _, batched, batched_visible = BatchWakeAugmentation(settings)(
        torch.zeros(count, 1, SIZE, SIZE),
        (points_px / SIZE).expand(count, -1, -1),
        visible.expand(count, -1),
        torch.Generator().manual_seed(15),
    )
    assert torch.equal(batched_visible, visible.expand(count, -1))
    arm_before = (points_px[1] - points_px[0]) / SIZE
    angle_before = torch.atan2(arm_before[1], arm_before[0])
    zoom, turn, radius = [], [], []
    for points in (reference, batched):
        arm = points[:, 1] - points[:, 0]
        zoom.append(torch.linalg.vector_norm(arm, dim=-1) / torch.linalg.vector_norm(arm_before))
        turn.append(torch.remainder(torch.atan2(arm[:, 1], arm[:, 0]) - angle_before, 2 * torch.pi))
        radius.append(torch.linalg.vector_norm(points[:, 0] - 0.5, dim=-1))
    assert zoom[1].min() >= 0.85 - 1e-5 and zoom[1].max() <= 1.15 + 1e-5
    for reference_values, batched_values in (zoom, turn, radius):
        assert ks_pvalue(reference_values, batched_values) > 1e-3
    assert stats.kstest(turn[1].numpy(), "uniform", args=(0, 2 * torch.pi)).pvalue > 1e-3


def test_datamodule_augments_training_batches_on_the_device(synthetic_dir: Path) -> None:
    module = WakeDataModule(
        synthetic_dir, image_size=32, batch_size=4, num_workers=0, augment_on="device"
    )
    dataset = module.train_dataset
    assert dataset.augment is None
    item = dataset[0]
    assert torch.equal(item["image"], dataset.images[0].float() / 255)
    assert torch.equal(item["keypoints"], dataset.keypoints[0])

    batch = next(iter(module.train_dataloader()))
    assert module.on_after_batch_transfer(batch, 0) is batch
    module.trainer = SimpleNamespace(training=False)  # type: ignore[assignment]
    assert module.on_after_batch_transfer(batch, 0) is batch
    module.trainer = SimpleNamespace(training=True, global_rank=0)  # type: ignore[assignment]
    augmented = module.on_after_batch_transfer(batch, 0)
    assert not torch.equal(augmented["image"], batch["image"])
    assert augmented["image"].shape == batch["image"].shape
    assert augmented["keypoints"].shape == batch["keypoints"].shape
    assert augmented["visible"].dtype == torch.bool
    assert augmented["orig_size"] is batch["orig_size"] and augmented["index"] is batch["index"]


def test_datamodule_augments_per_sample_by_default(synthetic_dir: Path) -> None:
    module = WakeDataModule(synthetic_dir, image_size=32, batch_size=4, num_workers=0)
    assert isinstance(module.train_dataset.augment, WakeAugmentation)
    module.trainer = SimpleNamespace(training=True, world_size=1)  # type: ignore[assignment]
    batch = next(iter(module.train_dataloader()))
    assert module.on_after_batch_transfer(batch, 0) is batch


def test_datamodule_rejects_device_augmentation_with_a_custom_callable(
    synthetic_dir: Path,
) -> None:
    def identity(
        image: torch.Tensor, keypoints_px: torch.Tensor, visible: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return image, keypoints_px, visible

    with pytest.raises(InputError, match="augment_on='device'"):
        WakeDataModule(synthetic_dir, num_workers=0, augment=identity, augment_on="device")
