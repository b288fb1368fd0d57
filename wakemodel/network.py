"""EfficientNet-B0 keypoint detector: the network alone (torch and torchvision only).

:class:`EfficientNetB0KeypointDetector` is a torchvision EfficientNet-B0 with a
1-channel stem and a head that regresses 3 keypoints (normalised x, y in
[0, 1]) plus one visibility logit per keypoint. The keypoints come from
integral regression (a soft-argmax over stride-8 heatmaps of a small feature
pyramid), which keeps the spatial layout that global pooling would discard and
learns far faster than a fully connected regressor. Training reads each
heatmap whole; predictions read it in a small window around its highest cell
(:func:`decode_heatmaps`), so mass elsewhere on the heatmap (along a fading
arm, on a second candidate) does not pull the keypoint off its peak. The grey
ImageNet normalisation lives inside the network (buffers), so checkpoints and
ONNX exports carry it.

The training wrapper is :class:`wakemodel.model.WakeKeypointModule` (Lightning);
this module does not import Lightning, so loading a checkpoint for inference
stays lean (:func:`detector_from_checkpoint`).
"""

from __future__ import annotations

import contextlib
import http.client
import io
import logging
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torchvision.models import EfficientNet_B0_Weights, efficientnet_b0

from wakemodel.config import MODEL_DEFAULTS
from wakemodel.errors import InputError, WakeModelError
from wakemodel.keypoints import NUM_KEYPOINTS

logger = logging.getLogger(__name__)

GREY_MEAN = 0.449
GREY_STD = 0.226
DOWNLOAD_TIMEOUT_S = 10.0
FEATURE_CHANNELS = 1280
DECODE_RADIUS_CELLS = 2
"""Default half-width of the prediction window around each heatmap's mode, in cells.

Measured on a 15-minute CPU model, 200 held-out chips (``benchmarks/bench_decode.py``):
the whole-heatmap soft-argmax gave a median heading error of 4.4 degrees, a window of
radius 1, 2, 3, 4 and 6 cells 1.7, 1.6, 1.7, 1.7 and 1.9 degrees; 2 also gave the
smallest vertex error."""


class KeypointOutput(NamedTuple):
    """Network output.

    Attributes:
        keypoints: ``[B, 3, 2]`` normalised (x, y) in [0, 1] (soft-argmax of heatmaps).
        visibility_logits: ``[B, 3]`` visibility logits (sigmoid gives probabilities).
            Slot 0, the vertex, is the wake score: the chip holds a readable wake.
        keypoint_std: ``[B, 3, 2]`` calibrated standard deviation of each
            keypoint's x and y, normalised like ``keypoints`` (the spread of its
            heatmap times the network's ``std_scale``).
    """

    keypoints: Tensor
    visibility_logits: Tensor
    keypoint_std: Tensor


def _download_imagenet_state_dict() -> dict[str, Tensor] | None:
    """Fetch torchvision's ImageNet EfficientNet-B0 weights, or None when offline.

    Uses the torch hub cache when the file is already there. Network failures
    are logged as one warning line, never raised; the socket timeout is short
    so an unreachable host cannot hang training.

    Returns:
        The torchvision ``efficientnet_b0`` state dict, or None if unavailable.
    """
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return EfficientNet_B0_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
    except (OSError, RuntimeError, http.client.HTTPException) as error:
        reason = " ".join(str(error).split())
        logger.warning(
            "Could not download the ImageNet EfficientNet-B0 weights (%s); training starts "
            "from random weights. Supply a torchvision efficientnet_b0 state dict with "
            "--weights PATH.",
            reason,
        )
        return None
    finally:
        socket.setdefaulttimeout(previous_timeout)


def _load_weights_file(weights_path: str | Path) -> dict[str, Tensor]:
    """Read a torchvision ``efficientnet_b0`` state dict from a local file.

    Args:
        weights_path: Path to a ``.pth`` file saved with ``torch.save(model.state_dict())``.

    Returns:
        The state dict.

    Raises:
        WakeModelError: If the file is missing or not a readable state dict.
    """
    path = Path(weights_path)
    if not path.is_file():
        raise WakeModelError(
            f"weights file not found: {path}; pass a torchvision efficientnet_b0 state dict (.pth)"
        )
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise WakeModelError(
            f"cannot read weights file {path} ({type(error).__name__}); "
            "pass a torchvision efficientnet_b0 state dict saved with torch.save"
        ) from error
    if not isinstance(state_dict, Mapping):
        raise WakeModelError(
            f"weights file {path} holds a {type(state_dict).__name__}, not a state dict; "
            "save it with torch.save(model.state_dict(), PATH)"
        )
    return dict(state_dict)


class EfficientNetB0KeypointDetector(nn.Module):
    """EfficientNet-B0 regressing wake keypoints from a grey chip.

    With pretrained weights (a local ``weights_path``, or the torchvision
    ImageNet download when ``pretrained``), the RGB stem kernels are summed into
    one input channel, so a grey image gives the stem output the RGB network
    gives on that image repeated over 3 channels. Offline, the download fails
    with one logged warning and the network starts from random weights.

    Args:
        num_keypoints: Number of keypoint slots; must be 3 (vertex + 2 far ends).
        pretrained: Try to download torchvision's ImageNet weights.
        weights_path: Local torchvision ``efficientnet_b0`` state dict; takes
            precedence over (and implies) ``pretrained``.
        dropout: Dropout probability before the visibility head.
        keypoint_visibility: Add visibility logits read at each keypoint (decoder
            features pooled under its heatmap) to the pooled head's; without it
            only globally pooled features decide which wake end is visible.
        decode_radius_cells: Half-width, in heatmap cells, of the window around
            each heatmap's highest cell that :meth:`forward` reads the keypoint in
            (:func:`decode_heatmaps`); 0 reads the whole heatmap (the training
            soft-argmax). An inference setting: it changes no weight.

    Raises:
        InputError: If ``num_keypoints`` is not 3.
        WakeModelError: If ``weights_path`` is missing or unreadable.
    """

    def __init__(
        self,
        num_keypoints: int = NUM_KEYPOINTS,
        pretrained: bool = False,
        weights_path: str | Path | None = None,
        dropout: float = MODEL_DEFAULTS.dropout,
        keypoint_visibility: bool = MODEL_DEFAULTS.keypoint_visibility,
        decode_radius_cells: int = DECODE_RADIUS_CELLS,
    ) -> None:
        super().__init__()
        if decode_radius_cells < 0:
            raise InputError(
                f"decode_radius_cells={decode_radius_cells} is negative; use 0 (whole heatmap) "
                "or a window half-width in heatmap cells"
            )
        self.decode_radius_cells = decode_radius_cells
        if num_keypoints != NUM_KEYPOINTS:
            raise InputError(
                f"num_keypoints={num_keypoints} is not supported; use {NUM_KEYPOINTS} "
                "(vertex + two far ends)"
            )
        self.num_keypoints = num_keypoints
        backbone = efficientnet_b0(weights=None)
        if weights_path is not None:
            state_dict = _load_weights_file(weights_path)
        elif pretrained:
            state_dict = _download_imagenet_state_dict()
        else:
            state_dict = None
        if state_dict is not None:
            try:
                backbone.load_state_dict(state_dict)
            except RuntimeError as error:
                raise WakeModelError(
                    f"weights {weights_path or 'download'} do not match torchvision "
                    "efficientnet_b0; pass an efficientnet_b0 state dict"
                ) from error
        rgb_stem = backbone.features[0][0]
        grey_stem = nn.Conv2d(
            1,
            rgb_stem.out_channels,
            kernel_size=rgb_stem.kernel_size,
            stride=rgb_stem.stride,
            padding=rgb_stem.padding,
            bias=False,
        )
        with torch.no_grad():
            grey_stem.weight.copy_(rgb_stem.weight.sum(dim=1, keepdim=True))
        backbone.features[0][0] = grey_stem
        self.features = backbone.features
        self.decoder = _HeatmapDecoder(num_keypoints)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.visibility_head = nn.Linear(FEATURE_CHANNELS, num_keypoints)
        nn.init.normal_(self.visibility_head.weight, std=0.01)
        nn.init.zeros_(self.visibility_head.bias)
        self.keypoint_visibility_head = _attended_visibility_head() if keypoint_visibility else None
        self.register_buffer("mean", torch.tensor(GREY_MEAN).reshape(1, 1, 1, 1))
        self.register_buffer("std", torch.tensor(GREY_STD).reshape(1, 1, 1, 1))
        self.register_buffer("std_scale", torch.tensor(1.0))

    def forward(self, images: Tensor) -> KeypointOutput:
        """Predict keypoints and visibility logits.

        Args:
            images: Float ``[B, 1, S, S]`` grey chips in [0, 1] (any memory format).

        Returns:
            :class:`KeypointOutput` with keypoints ``[B, 3, 2]`` in [0, 1],
            visibility logits ``[B, 3]`` and keypoint std ``[B, 3, 2]``.
        """
        heatmap_logits, visibility_logits = self.heatmaps(images)
        keypoints, spread = decode_heatmaps(heatmap_logits, self.decode_radius_cells)
        return KeypointOutput(keypoints, visibility_logits, spread * self.std_scale)

    def heatmaps(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Keypoint heatmap logits and visibility logits (what ``forward`` is built on).

        Args:
            images: Float ``[B, 1, S, S]`` grey chips in [0, 1].

        Returns:
            Heatmap logits ``[B, 3, S/8, S/8]`` (rounded up) and visibility logits ``[B, 3]``.
        """
        features = (images - self.mean) / self.std
        pyramid: list[Tensor] = []
        for index, stage in enumerate(self.features):
            features = stage(features)
            if index in PYRAMID_STAGES:
                pyramid.append(features)
        pooled = self.pool(features).flatten(1)
        heatmap_logits, decoder_features = self.decoder(pyramid)
        visibility_logits = self.visibility_head(self.dropout(pooled))
        if self.keypoint_visibility_head is not None:
            visibility_logits = visibility_logits + _attended_visibility(
                self.keypoint_visibility_head, heatmap_logits, decoder_features
            )
        return heatmap_logits, visibility_logits


PYRAMID_STAGES = (3, 5, 8)
"""EfficientNet-B0 ``features`` stages feeding the decoder: strides 8, 16, 32."""
PYRAMID_CHANNELS = (40, 112, FEATURE_CHANNELS)
DECODER_CHANNELS = 96


class _HeatmapDecoder(nn.Module):
    """A small top-down feature pyramid giving one heatmap per keypoint at stride 8.

    Args:
        num_keypoints: Number of heatmaps.
    """

    def __init__(self, num_keypoints: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(
            nn.Conv2d(channels, DECODER_CHANNELS, kernel_size=1) for channels in PYRAMID_CHANNELS
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(DECODER_CHANNELS, DECODER_CHANNELS, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(DECODER_CHANNELS),
            nn.SiLU(inplace=True),
            nn.Conv2d(DECODER_CHANNELS, num_keypoints, kernel_size=1),
        )

    def forward(self, pyramid: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Fuse stride-8/16/32 features top-down into heatmap logits.

        Args:
            pyramid: Feature maps ``[B, C_i, H_i, W_i]`` from fine to coarse.

        Returns:
            Heatmap logits ``[B, K, H_0, W_0]`` at the finest level (stride 8) and
            the fused features they are read from, ``[B, DECODER_CHANNELS, H_0, W_0]``.
        """
        fused = self.lateral[-1](pyramid[-1])
        for level in range(len(pyramid) - 2, -1, -1):
            finer = self.lateral[level](pyramid[level])
            fused = finer + nn.functional.interpolate(
                fused, size=finer.shape[-2:], mode="bilinear", align_corners=False
            )
        features = self.fuse[:-1](fused)
        return self.fuse[-1](features), features


def _attended_visibility_head() -> nn.Linear:
    """The per-keypoint visibility head, zero at the start (adds nothing until trained).

    Output 0 scores the vertex, output 1 either wake end (the ends share it, since
    their slot order carries no meaning).
    """
    head = nn.Linear(DECODER_CHANNELS, 2)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def _attended_visibility(head: nn.Linear, heatmap_logits: Tensor, features: Tensor) -> Tensor:
    """Visibility logits read at each keypoint: decoder features pooled under its heatmap.

    Whether a wake end is visible is a property of the place the heatmap points
    to, and which of the two end slots holds the visible end is only known from
    the heatmaps, not from globally pooled features. The heatmap weights are
    detached so this head does not move the keypoints.

    Args:
        head: :func:`_attended_visibility_head`.
        heatmap_logits: ``[B, K, H, W]`` logits (slot 0 the vertex).
        features: ``[B, C, H, W]`` decoder features.

    Returns:
        ``[B, K]`` visibility logits to add to the pooled head's.
    """
    weights = heatmap_logits.detach().flatten(2).softmax(dim=-1)
    attended = torch.matmul(weights, features.flatten(2).transpose(1, 2))
    scores = head(attended)
    return torch.cat((scores[:, :1, 0], scores[:, 1:, 1]), dim=1)


def soft_argmax(heatmap_logits: Tensor) -> Tensor:
    """Differentiable arg-max (integral regression) of heatmaps in normalised coordinates.

    Each heatmap is a softmax over its cells; the keypoint is the expected
    position with cell coordinates spread evenly over [0, 1] (first cell 0,
    last cell 1), so chip borders are reachable.

    Args:
        heatmap_logits: ``[B, K, H, W]`` logits.

    Returns:
        ``[B, K, 2]`` normalised (x, y) in [0, 1].
    """
    return soft_argmax_with_spread(heatmap_logits)[0]


def soft_argmax_with_spread(heatmap_logits: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`soft_argmax` and the standard deviation of each heatmap's distribution.

    A heatmap whose mass sits in one tight peak gives a small spread; one split
    between two places (e.g. the vertex and a wake end) or smeared along the
    wake gives a large one. The spread is the model's raw positional
    uncertainty; the network scales it to calibrated units (``std_scale``).

    Args:
        heatmap_logits: ``[B, K, H, W]`` logits.

    Returns:
        ``[B, K, 2]`` expected (x, y) and ``[B, K, 2]`` std of x and y, both normalised.
    """
    height, width = heatmap_logits.shape[-2:]
    probabilities = heatmap_logits.flatten(2).softmax(dim=-1).unflatten(2, (height, width))
    xs = torch.linspace(0.0, 1.0, width, dtype=probabilities.dtype, device=probabilities.device)
    ys = torch.linspace(0.0, 1.0, height, dtype=probabilities.dtype, device=probabilities.device)
    marginal_x = probabilities.sum(dim=2)
    marginal_y = probabilities.sum(dim=3)
    x = (marginal_x * xs).sum(dim=-1)
    y = (marginal_y * ys).sum(dim=-1)
    variance_x = (marginal_x * (xs - x[..., None]) ** 2).sum(dim=-1)
    variance_y = (marginal_y * (ys - y[..., None]) ** 2).sum(dim=-1)
    spread = torch.stack((variance_x, variance_y), dim=-1).clamp_min(0.0).sqrt()
    return torch.stack((x, y), dim=-1), spread


def mode_window(heatmap_logits: Tensor, radius_cells: int) -> Tensor:
    """The cells within ``radius_cells`` (Chebyshev distance) of each heatmap's highest cell.

    Args:
        heatmap_logits: ``[B, K, H, W]`` logits.
        radius_cells: Window half-width in cells (the window is at most
            ``2 r + 1`` cells wide, less at the heatmap's border).

    Returns:
        Bool ``[B, K, H, W]``, True inside each heatmap's window.
    """
    height, width = heatmap_logits.shape[-2:]
    mode = heatmap_logits.flatten(2).argmax(dim=-1)
    mode_y = torch.div(mode, width, rounding_mode="floor")
    mode_x = mode - mode_y * width
    rows = torch.arange(height, device=heatmap_logits.device)
    cols = torch.arange(width, device=heatmap_logits.device)
    near_y = (rows - mode_y[..., None]).abs() <= radius_cells
    near_x = (cols - mode_x[..., None]).abs() <= radius_cells
    return near_y[..., :, None] & near_x[..., None, :]


def decode_heatmaps(
    heatmap_logits: Tensor, radius_cells: int = DECODE_RADIUS_CELLS
) -> tuple[Tensor, Tensor]:
    """Keypoints read around each heatmap's mode, and the heatmap's spread about them.

    The whole-heatmap soft-argmax (:func:`soft_argmax_with_spread`, what training
    optimises) is the mean of the heatmap's mass: mass smeared along a fading
    wake arm pulls an end towards the vertex, and mass split between two
    candidates puts the keypoint between them, where no wake is. The soft-argmax
    over a window around the highest cell keeps the sub-cell precision of
    integral regression at the peak. The spread is the root-mean-square distance
    of the whole heatmap's mass from that keypoint (its std about its own mean,
    plus the distance of that mean from the keypoint): what the keypoint's error
    would be if the truth lay where the heatmap puts its mass. A split, smeared
    or flat heatmap (no wake to see) still says it is unsure.

    Args:
        heatmap_logits: ``[B, K, H, W]`` logits.
        radius_cells: Window half-width in cells; 0 reads the whole heatmap.

    Returns:
        ``[B, K, 2]`` normalised (x, y) in [0, 1] and ``[B, K, 2]`` root-mean-square
        x and y distance of the heatmap's mass from them, normalised.
    """
    mean, spread = soft_argmax_with_spread(heatmap_logits)
    if radius_cells <= 0:
        return mean, spread
    window = mode_window(heatmap_logits, radius_cells)
    keypoints = soft_argmax_with_spread(heatmap_logits.masked_fill(~window, float("-inf")))[0]
    return keypoints, torch.sqrt(spread**2 + (mean - keypoints) ** 2)


DETECTOR_PREFIX = "detector."
"""Prefix of the detector's weights in a ``WakeKeypointModule`` state dict."""


def detector_from_checkpoint(checkpoint: Mapping[str, Any]) -> EfficientNetB0KeypointDetector:
    """Rebuild the trained detector from a loaded ``WakeKeypointModule`` checkpoint.

    Args:
        checkpoint: The dict ``torch.load`` returns for a checkpoint written by
            ``train`` (``hyper_parameters`` and ``state_dict``).

    Returns:
        The detector with the trained weights, in eval mode, on the device the
        checkpoint tensors were loaded to.

    Raises:
        KeyError: An entry is missing.
        RuntimeError: The weights do not fit the network.
    """
    hparams = checkpoint["hyper_parameters"]
    detector = EfficientNetB0KeypointDetector(
        num_keypoints=hparams.get("num_keypoints", NUM_KEYPOINTS),
        dropout=hparams.get("dropout", MODEL_DEFAULTS.dropout),
        keypoint_visibility=hparams.get("keypoint_visibility", MODEL_DEFAULTS.keypoint_visibility),
    )
    weights = {
        name.removeprefix(DETECTOR_PREFIX): tensor
        for name, tensor in checkpoint["state_dict"].items()
        if name.startswith(DETECTOR_PREFIX)
    }
    fill_missing_weights(weights, detector)
    detector.load_state_dict(weights)
    device = next(iter(weights.values())).device
    return detector.to(device).eval()


def fill_missing_weights(
    state_dict: dict[str, Tensor], detector: nn.Module, prefix: str = ""
) -> None:
    """Complete a detector state dict written before some of its weights existed.

    ``std_scale`` (from before calibrated uncertainties) becomes 1.0, with a
    warning; the per-keypoint visibility head (added later) becomes zeros, which
    adds nothing to the visibility logits, so the old network's outputs are kept.

    Args:
        state_dict: Detector weights (edited in place).
        detector: The network they are for.
        prefix: Prefix of the detector's keys (e.g. :data:`DETECTOR_PREFIX`).
    """
    if not state_dict:
        return
    for name, tensor in detector.state_dict().items():
        key = f"{prefix}{name}"
        if key in state_dict:
            continue
        if name == "std_scale":
            logger.warning(
                "The checkpoint predates calibrated uncertainties: its heading_std_deg is the "
                "raw heatmap spread; retrain to calibrate it."
            )
            state_dict[key] = torch.tensor(1.0)
        elif name.startswith("keypoint_visibility_head."):
            state_dict[key] = torch.zeros_like(tensor)
