"""Keypoint-true augmentation of wake chips, per sample or per batch on the device.

Geometry (flips, rotation by any angle, scale, translation) moves the image and
the keypoints together; photometry (gamma, brightness, contrast, blur, Gaussian
noise) touches the image only. Keypoints that leave the canvas become invisible
(coordinate 0.0). Random parameters never depend on the keypoints, and every slot
is transformed the same way, so swapping the two far-end slots in the input swaps
them in the output.

Two implementations draw from the same distributions, set by one
:class:`AugmentationSettings`:

- :class:`WakeAugmentation`: one ``[1, S, S]`` chip at a time with
  torchvision.transforms.v2 and ``tv_tensors.KeyPoints`` (CPU, in data loader
  workers). Coordinates are continuous pixels of the S x S image (pixel
  ``(i, j)`` covers ``[i, i+1) x [j, j+1)``), the convention under which v2's
  affine kernel is exact. v2 flips keypoints as pixel indices
  (``x -> W - 1 - x``); the flips here shift by half a pixel around v2's kernel
  so that ``x -> W - x`` as the image flips.
- :class:`BatchWakeAugmentation`: a whole ``[B, 1, S, S]`` batch in one go on
  its device (GPU), with independent parameters per sample, keypoints
  normalised to [0, 1] (the same continuous-pixel convention divided by S).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torchvision import tv_tensors
from torchvision.transforms import v2

from wakemodel.errors import InputError
from wakemodel.preprocess import check_image_size

BLUR_KERNEL_SIZE = 5
"""Side (pixels) of the Gaussian blur kernel of both augmentations."""


def _finite_number(name: str, value: Any) -> float:
    """``value`` as a float, or InputError naming the setting."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"Augmentation setting {name}={value!r}: must be a finite number.")
    return float(value)


def _bounded(name: str, value: Any, upper: float = math.inf) -> float:
    """A number in ``[0, upper]``, or InputError naming the setting."""
    number = _finite_number(name, value)
    if not 0.0 <= number <= upper:
        bound = "0 or more" if upper == math.inf else f"in [0, {upper:g}]"
        raise InputError(f"Augmentation setting {name}={value!r}: must be {bound}.")
    return number


def _positive_range(name: str, value: Any) -> tuple[float, float]:
    """A pair ``(low, high)`` with ``0 < low <= high``, or InputError naming the setting."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise InputError(f"Augmentation setting {name}={value!r}: must be a pair (low, high).")
    low, high = (_finite_number(name, item) for item in value)
    if not 0.0 < low <= high:
        raise InputError(f"Augmentation setting {name}={value!r}: need 0 < low <= high.")
    return low, high


@dataclass(frozen=True)
class AugmentationSettings:
    """Distributions of the random augmentation (shared by both implementations).

    Lists are accepted for the pairs and stored as tuples of floats.

    Attributes:
        p_flip: Probability of each flip (horizontal, vertical).
        degrees: Maximum absolute rotation (degrees), drawn uniformly.
        translate: Maximum shift as a fraction of S, in x and in y (in [0, 1]);
            drawn uniformly and rounded to whole pixels.
        scale: (min, max) isotropic zoom factor, drawn uniformly.
        gamma: (min, max) gamma, drawn log-uniformly.
        brightness: Brightness jitter: factor uniform in ``[1 - b, 1 + b]``
            (low end clipped at 0).
        contrast: Contrast jitter: factor uniform in ``[1 - c, 1 + c]`` (low end
            clipped at 0); brightness and contrast come in random order.
        p_blur: Probability of a Gaussian blur (kernel ``BLUR_KERNEL_SIZE``).
        blur_sigma: (min, max) blur sigma (pixels), drawn uniformly.
        p_noise: Probability of additive Gaussian noise.
        noise_sigma: Noise standard deviation (image units, image in [0, 1]).

    Raises:
        InputError: A value is out of range (the message names it).
    """

    p_flip: float = 0.5
    degrees: float = 180.0
    translate: float = 0.1
    scale: tuple[float, float] = (0.85, 1.15)
    gamma: tuple[float, float] = (0.8, 1.25)
    brightness: float = 0.2
    contrast: float = 0.2
    p_blur: float = 0.3
    blur_sigma: tuple[float, float] = (0.1, 1.0)
    p_noise: float = 0.5
    noise_sigma: float = 0.02

    def __post_init__(self) -> None:
        checked: dict[str, float | tuple[float, float]] = {
            "p_flip": _bounded("p_flip", self.p_flip, 1.0),
            "degrees": _bounded("degrees", self.degrees),
            "translate": _bounded("translate", self.translate, 1.0),
            "scale": _positive_range("scale", self.scale),
            "gamma": _positive_range("gamma", self.gamma),
            "brightness": _bounded("brightness", self.brightness),
            "contrast": _bounded("contrast", self.contrast),
            "p_blur": _bounded("p_blur", self.p_blur, 1.0),
            "blur_sigma": _positive_range("blur_sigma", self.blur_sigma),
            "p_noise": _bounded("p_noise", self.p_noise, 1.0),
            "noise_sigma": _bounded("noise_sigma", self.noise_sigma),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)


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
    """Random, keypoint-true augmentation of one network-size chip (v2 transforms).

    Draws, in order: horizontal and vertical flips, an affine transform (rotation
    by any angle in ``[-degrees, degrees]``, isotropic scale, translation;
    bilinear, corners filled with 0), gamma, brightness and contrast, Gaussian
    blur, Gaussian noise. Randomness comes from torch's global generator (seeded
    per data loader worker by Lightning / PyTorch).

    Args:
        image_size: Network input side S (pixels); images must be ``[1, S, S]``.
        settings: The distributions; None for the defaults of
            :class:`AugmentationSettings`.
    """

    def __init__(self, image_size: int, settings: AugmentationSettings | None = None) -> None:
        check_image_size(image_size)
        self.image_size = image_size
        self.settings = AugmentationSettings() if settings is None else settings
        s = self.settings
        self.geometric = v2.Compose(
            [
                _RandomHorizontalFlip(p=s.p_flip),
                _RandomVerticalFlip(p=s.p_flip),
                v2.RandomAffine(
                    degrees=s.degrees,
                    translate=(s.translate, s.translate),
                    scale=s.scale,
                    interpolation=v2.InterpolationMode.BILINEAR,
                    fill=0.0,
                ),
            ]
        )
        self.photometric = v2.Compose(
            [
                RandomGamma(s.gamma),
                v2.ColorJitter(brightness=s.brightness, contrast=s.contrast),
                v2.RandomApply(
                    [v2.GaussianBlur(kernel_size=BLUR_KERNEL_SIZE, sigma=s.blur_sigma)],
                    p=s.p_blur,
                ),
                v2.RandomApply([v2.GaussianNoise(sigma=s.noise_sigma, clip=True)], p=s.p_noise),
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


def _uniform(unit: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Map uniform [0, 1) draws to uniform [low, high)."""
    return low + (high - low) * unit


Affine = tuple[torch.Tensor, torch.Tensor]
"""Per-sample affine maps ``k -> linear @ k + offset``: linear ``[B, 2, 2]``, offset ``[B, 2]``."""


class BatchWakeAugmentation(torch.nn.Module):
    """Random, keypoint-true augmentation of a whole batch on its device.

    The same distributions as :class:`WakeAugmentation`, with independent
    parameters per sample, vectorised over the batch: one affine matrix per
    sample in normalised coordinates (flip x, flip y, then rotation about the
    centre, isotropic scale and a whole-pixel translation), applied to the images
    by one ``affine_grid`` + ``grid_sample`` call (bilinear, zeros outside;
    ``align_corners=False`` maps normalised ``k`` to grid ``2 k - 1`` exactly) and
    to the keypoints by the same matrix; then gamma, brightness and contrast (in
    random order, per sample), a Gaussian blur (depthwise separable convolution,
    reflect padding) and Gaussian noise where each sample's coins say so, clamped
    to [0, 1].

    Randomness is drawn on the images' device: from that device's global torch
    generator, or from ``generator`` (which must live on the same device, e.g.
    ``torch.Generator(device=images.device).manual_seed(0)``) for
    reproducibility. Computation is float32 with autocast disabled; outputs have
    the input dtypes. The only difference from :class:`WakeAugmentation` is at
    the border: v2 additionally darkens the outermost interpolated pixels by
    their coverage.

    Args:
        settings: The distributions; None for the defaults of
            :class:`AugmentationSettings`.
    """

    def __init__(self, settings: AugmentationSettings | None = None) -> None:
        super().__init__()
        self.settings = AugmentationSettings() if settings is None else settings

    def forward(
        self,
        images: torch.Tensor,
        keypoints: torch.Tensor,
        visible: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Augment a batch, each sample with its own random parameters.

        Args:
            images: float ``[B, 1, S, S]`` in [0, 1] (any float dtype).
            keypoints: float ``[B, K, 2]`` (x, y) normalised by S to [0, 1].
            visible: bool ``[B, K]``.
            generator: Optional generator on the images' device.

        Returns:
            ``(images [B, 1, S, S] in [0, 1], keypoints [B, K, 2] normalised,
            visible bool [B, K])`` on the input device with the input dtypes; a
            slot that was invisible, or whose point left the canvas
            ``[0, 1] x [0, 1]``, is invisible with coordinate 0.0.

        Raises:
            InputError: Shapes disagree, the images are not float, square and
                at least 3 pixels wide, or the generator is on another device.
        """
        _check_batch(images, keypoints, visible, generator)
        with torch.autocast(device_type=images.device.type, enabled=False):
            forward, inverse = self._draw_geometry(images, generator)
            moved_images = _warp(images.float(), inverse)
            moved_images = self._photometry(moved_images, generator)
            moved_keypoints, moved_visible = _move_keypoints(
                keypoints.float(), visible.to(torch.bool), forward
            )
        return (
            moved_images.to(images.dtype),
            moved_keypoints.to(keypoints.dtype),
            moved_visible,
        )

    def _draw_geometry(
        self, images: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[Affine, Affine]:
        """Forward (input -> output) and inverse float32 maps in normalised coordinates."""
        s = self.settings
        batch, size = images.shape[0], images.shape[-1]
        unit = torch.rand(batch, 6, generator=generator, device=images.device)
        flip_x = torch.where(unit[:, 0] < s.p_flip, -1.0, 1.0)
        flip_y = torch.where(unit[:, 1] < s.p_flip, -1.0, 1.0)
        angle = torch.deg2rad(_uniform(unit[:, 2], -s.degrees, s.degrees))
        max_shift_px = s.translate * size
        shift = torch.round(_uniform(unit[:, 3:5], -max_shift_px, max_shift_px)) / size
        zoom = _uniform(unit[:, 5], *s.scale)
        cos, sin = torch.cos(angle), torch.sin(angle)
        rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
        flips = torch.diag_embed(torch.stack([flip_x, flip_y], dim=-1))
        centre = torch.full_like(shift, 0.5)
        # k' = zoom R D (k - c) + c + t;  k = D R^T (k' - c - t) / zoom + c  (D = D^-1).
        linear = zoom[:, None, None] * rotation @ flips
        inverse_linear = flips @ rotation.transpose(1, 2) / zoom[:, None, None]
        offset = centre + shift - (linear @ centre[:, :, None])[..., 0]
        inverse_offset = centre - (inverse_linear @ (centre + shift)[:, :, None])[..., 0]
        return (linear, offset), (inverse_linear, inverse_offset)

    def _photometry(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Gamma, brightness/contrast, blur and noise on float32 ``[B, 1, S, S]`` in [0, 1]."""
        s = self.settings
        batch = images.shape[0]
        unit = torch.rand(batch, 7, generator=generator, device=images.device)
        per_image = (batch, 1, 1, 1)
        log_gamma = _uniform(unit[:, 0], math.log(s.gamma[0]), math.log(s.gamma[1]))
        images = images.pow(torch.exp(log_gamma).view(per_image)).clamp(0.0, 1.0)

        brightness = _uniform(unit[:, 1], max(0.0, 1.0 - s.brightness), 1.0 + s.brightness)
        contrast = _uniform(unit[:, 2], max(0.0, 1.0 - s.contrast), 1.0 + s.contrast)
        brightness, contrast = brightness.view(per_image), contrast.view(per_image)

        def adjust_brightness(pixels: torch.Tensor) -> torch.Tensor:
            return (pixels * brightness).clamp(0.0, 1.0)

        def adjust_contrast(pixels: torch.Tensor) -> torch.Tensor:
            mean = pixels.mean(dim=(1, 2, 3), keepdim=True)
            return (pixels * contrast + mean * (1.0 - contrast)).clamp(0.0, 1.0)

        brightness_first = (unit[:, 3] < 0.5).view(per_image)
        images = torch.where(
            brightness_first,
            adjust_contrast(adjust_brightness(images)),
            adjust_brightness(adjust_contrast(images)),
        )

        sigma = _uniform(unit[:, 4], *s.blur_sigma)
        blur = (unit[:, 5] < s.p_blur).view(per_image)
        images = torch.where(blur, _gaussian_blur(images, sigma), images)

        noise = torch.randn(images.shape, generator=generator, device=images.device)
        noisy = (unit[:, 6] < s.p_noise).view(per_image)
        images = torch.where(noisy, images + s.noise_sigma * noise, images)
        return images.clamp(0.0, 1.0)


def _gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur float ``[B, 1, S, S]`` with a per-sample sigma ``[B]`` (pixels).

    The ``BLUR_KERNEL_SIZE`` kernel is v2's (normalised Gaussian weights at
    integer offsets) with reflect padding, as a depthwise separable convolution:
    the batch becomes the channels of one image (``groups=B``).
    """
    batch, _, height, width = images.shape
    half = BLUR_KERNEL_SIZE // 2
    offsets = torch.arange(-half, half + 1, device=images.device, dtype=images.dtype)
    kernel = torch.softmax(-(offsets**2) / (2.0 * sigma[:, None] ** 2), dim=1)
    channels = F.pad(images.reshape(1, batch, height, width), (half,) * 4, mode="reflect")
    channels = F.conv2d(channels, kernel.view(batch, 1, 1, BLUR_KERNEL_SIZE), groups=batch)
    channels = F.conv2d(channels, kernel.view(batch, 1, BLUR_KERNEL_SIZE, 1), groups=batch)
    return channels.view(batch, 1, height, width)


def _warp(images: torch.Tensor, inverse: Affine) -> torch.Tensor:
    """Resample float32 ``[B, 1, S, S]`` through the inverse (output -> input) maps.

    ``grid_sample`` works in ``u = 2 k - 1``; there ``k_in = L k_out + t`` reads
    ``u_in = L u_out + (L 1 + 2 t - 1)``.
    """
    linear, offset = inverse
    grid_offset = linear.sum(dim=-1) + 2.0 * offset - 1.0
    theta = torch.cat([linear, grid_offset[:, :, None]], dim=2)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _move_keypoints(
    keypoints: torch.Tensor, visible: torch.Tensor, forward: Affine
) -> tuple[torch.Tensor, torch.Tensor]:
    """Map normalised keypoints ``[B, K, 2]`` by the ``forward`` maps; drop those outside."""
    linear, offset = forward
    moved = keypoints @ linear.transpose(1, 2) + offset[:, None, :]
    inside = torch.isfinite(moved).all(dim=-1) & ((moved >= 0) & (moved <= 1)).all(dim=-1)
    moved_visible = visible & inside
    return torch.where(moved_visible[..., None], moved, 0.0), moved_visible


def _check_batch(
    images: torch.Tensor,
    keypoints: torch.Tensor,
    visible: torch.Tensor,
    generator: torch.Generator | None,
) -> None:
    """Raise InputError unless the batch fits :meth:`BatchWakeAugmentation.forward`."""
    shape = tuple(images.shape)
    if len(shape) != 4 or shape[1] != 1 or shape[2] != shape[3] or shape[2] < 3 or shape[0] < 1:
        raise InputError(f"images of shape {shape}: expected (B, 1, S, S) with B >= 1, S >= 3.")
    if not images.is_floating_point():
        raise InputError(f"images of dtype {images.dtype}: expected a float tensor in [0, 1].")
    batch = shape[0]
    if keypoints.ndim != 3 or keypoints.shape[0] != batch or keypoints.shape[2] != 2:
        raise InputError(
            f"keypoints of shape {tuple(keypoints.shape)}: expected ({batch}, K, 2) normalised."
        )
    if tuple(visible.shape) != tuple(keypoints.shape[:2]):
        raise InputError(
            f"visible of shape {tuple(visible.shape)}: expected {tuple(keypoints.shape[:2])}."
        )
    if generator is not None and generator.device != images.device:
        raise InputError(
            f"generator on {generator.device} but images on {images.device}: "
            "create it with torch.Generator(device=images.device)."
        )
