"""Tests of wakemodel.augment: keypoint-true augmentation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torchvision.transforms import v2

from wakemodel.augment import WakeAugmentation
from wakemodel.errors import InputError

SIZE = 48
TOLERANCE_PX = 2.0


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
    augmentation = WakeAugmentation(
        SIZE, p_flip=1.0, degrees=0.0, translate=0.0, scale=(1.0, 1.0), gamma=(1.0, 1.0),
        brightness=0.0, contrast=0.0, p_blur=0.0, p_noise=0.0,
    )
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
    augmentation = WakeAugmentation(SIZE, translate=0.4, scale=(1.2, 1.8))
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
