"""Accelerator and precision selection, shared by training and inference.

One function, :func:`select_device`, turns the user's ``--accelerator`` value
(``auto``, ``cpu``, ``gpu``, ``cuda`` or ``mps``) into a :class:`DeviceChoice`:
the torch device type, the name Lightning's ``Trainer(accelerator=...)`` wants,
the numeric precision to train with, and a one-line description for logs.
Asking for a GPU where none exists raises a one-line
:class:`~wakemodel.errors.WakeModelError` suggesting ``--accelerator cpu``.
torch is imported inside the functions, so the CLI can read
:data:`ACCELERATORS` and :func:`available_cores` without it.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Literal

from wakemodel import __version__
from wakemodel.errors import InputError, WakeModelError

TorchDeviceType = Literal["cuda", "mps", "cpu"]
LightningAccelerator = Literal["gpu", "mps", "cpu"]

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
"""Values accepted by :func:`select_device` (and the CLI's ``--accelerator``)."""


@dataclass(frozen=True)
class DeviceChoice:
    """The device a run uses.

    Attributes:
        accelerator: Torch device type: ``"cuda"``, ``"mps"`` or ``"cpu"``
            (``torch.device(choice.accelerator)`` works).
        lightning_accelerator: Lightning's name for it: ``"gpu"`` (CUDA),
            ``"mps"`` or ``"cpu"``.
        precision: Lightning precision string, e.g. ``"bf16-mixed"`` or ``"32"``.
        description: One human-readable line: device name, precision, versions.
    """

    accelerator: TorchDeviceType
    lightning_accelerator: LightningAccelerator
    precision: str
    description: str


def _mps_available() -> bool:
    """Return True when Apple's Metal (MPS) backend can be used."""
    import torch

    return torch.backends.mps.is_available()


def _found_devices() -> str:
    """Describe the accelerators present, for error messages (one short phrase)."""
    import torch

    found = []
    if torch.cuda.is_available():
        found.append(f"{torch.cuda.device_count()} CUDA GPU(s)")
    if _mps_available():
        found.append("Apple MPS")
    if found:
        return " and ".join(found)
    cuda_build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    return f"CPU only (torch {torch.__version__}, {cuda_build}, no GPU visible)"


def default_precision(accelerator: TorchDeviceType) -> str:
    """Return the default training precision for a device type.

    Args:
        accelerator: Torch device type: ``"cuda"``, ``"mps"`` or ``"cpu"``.

    Returns:
        ``"bf16-mixed"`` on CUDA GPUs that support bfloat16 (Ampere and newer),
        otherwise ``"32"`` (full float32; CPU, MPS and older CUDA GPUs).
    """
    import torch

    if accelerator == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32"


def _describe(accelerator: TorchDeviceType, precision: str) -> str:
    """Return a one-line description of the device, precision and versions."""
    import torch

    if accelerator == "cuda":
        device = (
            f"CUDA GPU {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} visible), "
            f"CUDA {torch.version.cuda}"
        )
    elif accelerator == "mps":
        device = "Apple MPS GPU"
    else:
        device = f"CPU ({platform.processor() or platform.machine()})"
    return f"{device}, precision {precision}, torch {torch.__version__}"


def select_device(requested: str = "auto", precision: str | None = None) -> DeviceChoice:
    """Pick the device for a run from the user's ``--accelerator`` value.

    ``auto`` picks CUDA, else Apple MPS, else the CPU. ``gpu`` means CUDA or
    MPS, whichever exists (CUDA first). ``cuda``, ``mps`` and ``cpu`` ask for
    exactly that device.

    Args:
        requested: One of :data:`ACCELERATORS` (case-insensitive).
        precision: Lightning precision string to use instead of the device's
            default (see :func:`default_precision`); ``None`` for the default.

    Returns:
        The chosen device.

    Raises:
        InputError: ``requested`` is not one of :data:`ACCELERATORS`.
        WakeModelError: A GPU was requested but none of that kind exists; the
            one-line message names what was found and suggests
            ``--accelerator cpu``.
    """
    import torch

    wanted = requested.strip().lower()
    if wanted not in ACCELERATORS:
        raise InputError(
            f"Unknown accelerator {requested!r}; use one of {', '.join(ACCELERATORS)}."
        )
    cuda = torch.cuda.is_available()
    mps = _mps_available()
    accelerator: TorchDeviceType
    if cuda and wanted in ("auto", "gpu", "cuda"):
        accelerator = "cuda"
    elif mps and wanted in ("auto", "gpu", "mps"):
        accelerator = "mps"
    elif wanted in ("auto", "cpu"):
        accelerator = "cpu"
    else:
        kind = {"gpu": "a GPU (CUDA or Apple MPS)", "cuda": "a CUDA GPU", "mps": "Apple MPS"}
        raise WakeModelError(
            f"--accelerator {wanted} needs {kind[wanted]}, but found {_found_devices()}; "
            "use --accelerator cpu (or auto)."
        )
    lightning_accelerator: LightningAccelerator = "gpu" if accelerator == "cuda" else accelerator
    chosen_precision = precision or default_precision(accelerator)
    return DeviceChoice(
        accelerator=accelerator,
        lightning_accelerator=lightning_accelerator,
        precision=chosen_precision,
        description=_describe(accelerator, chosen_precision),
    )


def environment_info(choice: DeviceChoice) -> dict[str, str]:
    """Return the software and device facts stored with a checkpoint.

    Args:
        choice: The device the run uses.

    Returns:
        String values: ``accelerator``, ``precision``, ``device``, ``torch``,
        ``cuda`` (torch's CUDA build version, ``"none"`` for CPU builds),
        ``cudnn``, ``lightning``, ``python`` and ``wakemodel`` versions.
    """
    import pytorch_lightning as pl
    import torch

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "accelerator": choice.accelerator,
        "precision": choice.precision,
        "device": choice.description,
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda or "none",
        "cudnn": str(cudnn) if cudnn is not None else "none",
        "lightning": pl.__version__,
        "python": platform.python_version(),
        "wakemodel": __version__,
    }


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
