"""Keypoint-true augmentation of wake chips with torchvision.transforms.v2.

Geometry (flips, rotation by any angle, scale, translation) moves the image and a
``tv_tensors.KeyPoints`` together through the same v2 transforms; photometry
(gamma, brightness, contrast, blur, Gaussian noise) touches the image only.
Keypoints that leave the canvas become invisible (coordinate 0.0). Random
parameters never depend on the keypoints, and every slot is transformed the same
way, so swapping the two far-end slots in the input swaps them in the output.

Coordinates are continuous pixels of the S x S network image (pixel ``(i, j)``
covers ``[i, i+1) x [j, j+1)``), the convention under which v2's affine kernel is
exact. v2 flips keypoints as pixel indices (``x -> W - 1 - x``); the flips here
shift by half a pixel around v2's kernel so that ``x -> W - x`` as the image flips.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from wakemodel.errors import InputError


class _PixelAreaKeyPointFlip:
    """Mixin: apply a v2 flip to keypoints in continuous pixel coordinates."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        """Flip ``inpt``; keypoints are shifted to pixel indices and back around v2's kernel."""
        if not isinstance(inpt, tv_tensors.KeyPoints):
            return super().transform(inpt, params)  # type: ignore[misc]
        as_indices = tv_tensors.wrap(inpt.as_subclass(torch.Tensor) - 0.5, like=inpt)
        flipped = super().transform(as_indices, params)  # type: ignore[misc]
        return tv_tensors.wrap(flipped.as_subclass(torch.Tensor) + 0.5, like=flipped)


class _RandomHorizontalFlip(_PixelAreaKeyPointFlip, v2.RandomHorizontalFlip):
    """``v2.RandomHorizontalFlip`` mapping keypoint x to ``W - x``."""


class _RandomVerticalFlip(_PixelAreaKeyPointFlip, v2.RandomVerticalFlip):
    """``v2.RandomVerticalFlip`` mapping keypoint y to ``H - y``."""


class RandomGamma(v2.Transform):
    """Random gamma correction ``image ** gamma`` of float images in [0, 1].

    Args:
        gamma_range: (low, high) gamma; drawn log-uniformly, so dimming and
            brightening are equally likely.
    """

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, gamma_range: tuple[float, float] = (0.8, 1.25)) -> None:
        super().__init__()
        low, high = gamma_range
        if not 0 < low <= high:
            raise InputError(f"gamma_range {gamma_range}: need 0 < low <= high.")
        self.gamma_range = (float(low), float(high))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        """Draw the gamma of one call."""
        low, high = (math.log(value) for value in self.gamma_range)
        return {"gamma": math.exp(float(torch.empty(()).uniform_(low, high)))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        """Apply the drawn gamma to an image."""
        return self._call_kernel(v2.functional.adjust_gamma, inpt, gamma=params["gamma"])


class WakeAugmentation:
    """Random, keypoint-true augmentation of one network-size chip.

    Draws, in order: horizontal and vertical flips, an affine transform (rotation
    by any angle in ``[-degrees, degrees]``, isotropic scale, translation;
    bilinear, corners filled with 0), gamma, brightness and contrast, Gaussian
    blur, Gaussian noise. Randomness comes from torch's global generator (seeded
    per data loader worker by Lightning / PyTorch).

    Args:
        image_size: Network input side S (pixels); images must be ``[1, S, S]``.
        p_flip: Probability of each flip.
        degrees: Maximum absolute rotation (degrees).
        translate: Maximum shift as a fraction of S, in x and in y.
        scale: (min, max) zoom factor.
        gamma: (min, max) gamma.
        brightness: Brightness jitter (factor in ``[1 - b, 1 + b]``).
        contrast: Contrast jitter (factor in ``[1 - c, 1 + c]``).
        p_blur: Probability of a Gaussian blur.
        blur_sigma: (min, max) blur sigma (pixels).
        p_noise: Probability of additive Gaussian noise.
        noise_sigma: Noise standard deviation (image units, image in [0, 1]).
    """

    def __init__(
        self,
        image_size: int,
        p_flip: float = 0.5,
        degrees: float = 180.0,
        translate: float = 0.1,
        scale: tuple[float, float] = (0.85, 1.15),
        gamma: tuple[float, float] = (0.8, 1.25),
        brightness: float = 0.2,
        contrast: float = 0.2,
        p_blur: float = 0.3,
        blur_sigma: tuple[float, float] = (0.1, 1.0),
        p_noise: float = 0.5,
        noise_sigma: float = 0.02,
    ) -> None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise InputError(f"image_size {image_size!r}: must be a positive integer.")
        self.image_size = image_size
        self.geometric = v2.Compose(
            [
                _RandomHorizontalFlip(p=p_flip),
                _RandomVerticalFlip(p=p_flip),
                v2.RandomAffine(
                    degrees=degrees,
                    translate=(translate, translate),
                    scale=scale,
                    interpolation=v2.InterpolationMode.BILINEAR,
                    fill=0.0,
                ),
            ]
        )
        self.photometric = v2.Compose(
            [
                RandomGamma(gamma),
                v2.ColorJitter(brightness=brightness, contrast=contrast),
                v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=blur_sigma)], p=p_blur),
                v2.RandomApply([v2.GaussianNoise(sigma=noise_sigma, clip=True)], p=p_noise),
            ]
        )

    def __call__(
        self, image: torch.Tensor, keypoints_px: torch.Tensor, visible: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Augment one sample.

        Args:
            image: float32 ``[1, S, S]`` in [0, 1].
            keypoints_px: float32 ``[3, 2]`` (x, y) in pixels of the S x S image.
            visible: bool ``[3]``.

        Returns:
            ``(image float32 [1, S, S] in [0, 1], keypoints_px float32 [3, 2],
            visible bool [3])``; a slot that was invisible, or whose point left
            the canvas ``[0, S] x [0, S]``, is invisible with coordinate 0.0.

        Raises:
            InputError: The image is not ``[1, S, S]``.
        """
        size = self.image_size
        if tuple(image.shape) != (1, size, size):
            raise InputError(f"image of shape {tuple(image.shape)}: expected (1, {size}, {size}).")
        points = tv_tensors.KeyPoints(keypoints_px, canvas_size=(size, size))
        moved_image, moved_points = self.geometric(tv_tensors.Image(image), points)
        moved_image = self.photometric(moved_image).as_subclass(torch.Tensor)
        moved_points = moved_points.as_subclass(torch.Tensor).to(torch.float32)
        inside = (
            torch.isfinite(moved_points).all(dim=-1)
            & (moved_points >= 0).all(dim=-1)
            & (moved_points <= size).all(dim=-1)
        )
        moved_visible = visible.to(torch.bool) & inside
        moved_points = torch.where(moved_visible[:, None], moved_points, 0.0)
        return moved_image.clamp(0.0, 1.0), moved_points, moved_visible

