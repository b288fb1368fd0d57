"""Training configuration: the one home of every training default.

:class:`TrainConfig` holds every setting of a training run, each with its
default, its help text, and (in ``field(metadata=...)``) its command-line
spelling, choices and range. The CLI's ``train`` options are generated from
it, :class:`wakemodel.model.WakeKeypointModule` takes its hyperparameter
defaults from :data:`MODEL_DEFAULTS`, and every run writes the config it ran
with to ``RUN_DIR/RUN_NAME/config.yaml`` (:func:`save_config`), which
:func:`load_config` (``train --config``) reads back.

This module imports neither torch nor Lightning, so ``--help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from wakemodel._io import atomic_write_text
from wakemodel.devices import ACCELERATORS
from wakemodel.errors import InputError

PRECISION_CHOICES = ("32", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64")
"""``--precision`` values (Lightning precision strings)."""

CONFIG_FILE_NAME = "config.yaml"
"""Name of the config file in a run folder."""

LoggerName = Literal["csv", "wandb", "none"]
AugmentPlace = Literal["auto", "workers", "device"]


@dataclass(frozen=True)
class ModelDefaults:
    """Hyperparameter defaults shared by :class:`TrainConfig` and the Lightning module.

    Attributes:
        image_size: Network input side S in pixels.
        lr: Peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_epochs: Linear learning-rate warm-up in epochs.
        epochs: Training epochs (the length of the learning-rate schedule).
        dropout: Dropout probability before the visibility head.
        heading_weight: Weight of the wake-axis (heading) loss; 0 turns it off.
        visibility_weight: Weight of the keypoint-visibility BCE (which wake ends
            the chip shows; the far end is the mean of the ends deemed visible).
        wake_weight: Weight of the wake-score loss (BCE of the vertex visibility
            against "the chip holds a wake"); it matters on data with chips
            without a wake.
        ema_decay: Decay of the exponential moving average of the weights that
            is validated and checkpointed; 0 turns it off.
        keypoint_visibility: Visibility logits also read at each keypoint's
            heatmap (see :class:`wakemodel.network.EfficientNetB0KeypointDetector`).
        copy_single_end: Train both end slots onto the one visible end of a chip
            (see :func:`wakemodel.keypoints.copy_single_end`).
        single_end_slot: Keep a chip's one visible wake end in the first end slot
            (see :func:`wakemodel.keypoints.single_end_first`).
    """

    image_size: int = 224
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    epochs: int = 100
    dropout: float = 0.2
    heading_weight: float = 0.0
    visibility_weight: float = 0.1
    wake_weight: float = 0.5
    ema_decay: float = 0.99
    keypoint_visibility: bool = True
    copy_single_end: bool = False
    single_end_slot: bool = True


MODEL_DEFAULTS = ModelDefaults()
"""The defaults every layer (CLI, :class:`TrainConfig`, module, network) reads."""

TRAIN_BATCH_SIZE = 8
"""Training chips per batch (per device). Twice the optimizer steps of batch 16 per epoch, and
on a 2-core CPU each chip also costs less (36-40 s an epoch of 480 chips at 224 px against
47-56 s): in a 15-minute CPU budget 1260 steps against 510, and a median held-out heading error
of 1.5° against 11.8° (one view; ``benchmarks/README.md``, "Batch size"). On a GPU raise it
(``--batch-size``, ``--auto-batch-size``) and the learning rate with it."""

DEMO_EPOCHS = 20
"""Training epochs of the demo (7.5-9 minutes on the 2-core CPUs measured, at 160 px)."""

DEMO_IMAGE_SIZE = 160
"""Network input side of the demo: the demo's chips (at most 480 px) are shrunk 3x at most,
so the wakes, a few pixels wide, stay visible (at 96 px they vanish)."""


def _cli(
    help: str,
    *,
    option: str | None = None,
    choices: tuple[str, ...] | None = None,
    min: float | None = None,
    min_open: bool = False,
    max: float | None = None,
    max_open: bool = False,
    negatable: bool = False,
    flag: bool = False,
    default_text: str | None = None,
    cli: bool = True,
) -> dict[str, Any]:
    """The ``metadata`` of a :class:`TrainConfig` field: its help text and CLI description.

    Args:
        help: One-line help text (also the ``--help`` text).
        option: Command-line spelling; ``None``: ``--`` plus the kebab-case name.
        choices: Allowed values.
        min: Smallest allowed value (numbers).
        min_open: ``min`` itself is not allowed.
        max: Largest allowed value (numbers).
        max_open: ``max`` itself is not allowed.
        negatable: A boolean given as ``--x/--no-x`` (else a plain ``--x`` flag).
        flag: A plain on/off flag although the type allows more (``fast_dev_run``).
        default_text: What ``--help`` shows as the default instead of the value.
        cli: False for settings that only the Python API and config files set.
    """
    return {
        "help": help,
        "option": option,
        "choices": choices,
        "min": min,
        "min_open": min_open,
        "max": max,
        "max_open": max_open,
        "negatable": negatable,
        "flag": flag,
        "default_text": default_text,
        "cli": cli,
    }


@dataclass
class TrainConfig:
    """Everything a training run needs; the CLI's ``train`` options are generated from it.

    Each field's help text, command-line spelling, choices and range live in its
    ``metadata`` (see :func:`cli_fields`). Values are checked on construction:
    a value out of range or not among the choices raises :class:`InputError`,
    and strings given for paths become :class:`~pathlib.Path`.

    Run layout: ``RUN_DIR/RUN_NAME/`` holds ``config.yaml``, ``metrics.csv``
    and ``checkpoints/`` (see :mod:`wakemodel.train`).
    """

    data_dir: Path = field(
        default=Path("data/ShipWakes"),
        metadata=_cli("Dataset root with imgs/ and annotations/.", option="--data"),
    )
    epochs: int = field(
        default=MODEL_DEFAULTS.epochs,
        metadata=_cli("Training epochs (also the learning-rate schedule length).", min=1),
    )
    batch_size: int = field(
        default=TRAIN_BATCH_SIZE, metadata=_cli("Chips per batch (per device).", min=1)
    )
    image_size: int = field(
        default=MODEL_DEFAULTS.image_size,
        metadata=_cli("Network input side in pixels (chips are resized to S x S).", min=32),
    )
    lr: float = field(
        default=MODEL_DEFAULTS.lr,
        metadata=_cli("Peak AdamW learning rate.", min=0, min_open=True),
    )
    weight_decay: float = field(
        default=MODEL_DEFAULTS.weight_decay,
        metadata=_cli("AdamW weight decay (not on biases and norm weights).", min=0),
    )
    warmup_epochs: float = field(
        default=MODEL_DEFAULTS.warmup_epochs,
        metadata=_cli("Linear learning-rate warm-up in epochs (may be fractional).", min=0),
    )
    heading_weight: float = field(
        default=MODEL_DEFAULTS.heading_weight,
        metadata=_cli(
            "Weight of the wake-axis loss (1 - cosine between the predicted and true "
            "vertex-minus-far-end directions; 0: off).",
            min=0,
        ),
    )
    visibility_weight: float = field(
        default=MODEL_DEFAULTS.visibility_weight,
        metadata=_cli(
            "Weight of the keypoint-visibility BCE (which wake ends are visible; the heading "
            "points from the mean of the visible ends to the vertex).",
            min=0,
        ),
    )
    wake_weight: float = field(
        default=MODEL_DEFAULTS.wake_weight,
        metadata=_cli(
            "Weight of the wake-score loss (BCE of 'the chip holds a readable wake'; "
            "learned from chips annotated with an empty tooltips list).",
            min=0,
        ),
    )
    ema_decay: float = field(
        default=MODEL_DEFAULTS.ema_decay,
        metadata=_cli(
            "Decay of the exponential moving average of the weights that is validated and "
            "saved (0: off; 0.99 averages about the last 100 steps).",
            min=0,
            max=1,
            max_open=True,
        ),
    )
    keypoint_visibility: bool = field(
        default=MODEL_DEFAULTS.keypoint_visibility,
        metadata=_cli(
            "Also read each keypoint's visibility at its heatmap (False: from globally "
            "pooled features only, as before).",
            cli=False,
        ),
    )
    copy_single_end: bool = field(
        default=MODEL_DEFAULTS.copy_single_end,
        metadata=_cli(
            "On chips with one visible wake end, train both end slots onto it (False: the "
            "second slot's position is not trained, as before).",
            cli=False,
        ),
    )
    single_end_slot: bool = field(
        default=MODEL_DEFAULTS.single_end_slot,
        metadata=_cli(
            "On chips with one visible wake end, keep it in the first end slot, so the "
            "second slot's visibility learns whether the chip shows two ends (False: either "
            "slot, whichever is closer, the way before session 14).",
            cli=False,
        ),
    )
    gradient_clip_val: float | None = field(
        default=1.0,
        metadata=_cli(
            "Gradient norm clipping threshold (None: off).", min=0, min_open=True, cli=False
        ),
    )
    seed: int = field(
        default=0, metadata=_cli("Seed for weights, data split, shuffling and augmentation.")
    )
    accelerator: str = field(
        default="auto",
        metadata=_cli(
            "auto: CUDA, else Apple MPS, else CPU; gpu: CUDA or MPS.",
            choices=ACCELERATORS,
        ),
    )
    precision: str | None = field(
        default=None,
        metadata=_cli(
            "Numeric precision (Lightning).",
            choices=PRECISION_CHOICES,
            default_text="bf16-mixed on CUDA GPUs that support it, else 32",
        ),
    )
    devices: str = field(
        default="auto", metadata=_cli("Devices per machine: auto, a count (2) or ids (0,1).")
    )
    num_nodes: int = field(default=1, metadata=_cli("Machines for multi-node DDP.", min=1))
    strategy: str = field(
        default="auto",
        metadata=_cli("Lightning strategy: auto (DDP for several devices), ddp, ..."),
    )
    workers: int | None = field(
        default=None,
        metadata=_cli(
            "DataLoader worker processes.", min=0, default_text="chosen by the data module"
        ),
    )
    augment_on: AugmentPlace = field(
        default="auto",
        metadata=_cli(
            "Where augmentation runs: per chip in the loader workers, or per batch on the "
            "training device (auto: the device on CUDA/MPS, workers on the CPU)."
        ),
    )
    logger: LoggerName = field(
        default="csv",
        metadata=_cli(
            "csv: metrics.csv in the run folder; wandb: CSV plus Weights & Biases (offline "
            "without an API key); none: no metrics.csv and no W&B (config.yaml and "
            "checkpoints are still written)."
        ),
    )
    wandb_project: str = field(
        default="wakemodel", metadata=_cli("Weights & Biases project name.", cli=False)
    )
    checkpoint_dir: Path | None = field(
        default=None,
        metadata=_cli(
            "Folder for the best checkpoint and last.ckpt.",
            default_text="RUN_DIR/RUN_NAME/checkpoints",
        ),
    )
    run_dir: Path = field(
        default=Path("runs"),
        metadata=_cli(
            "Folder of run folders; RUN_DIR/RUN_NAME/ holds config.yaml, metrics.csv "
            "and checkpoints/."
        ),
    )
    run_name: str | None = field(
        default=None,
        metadata=_cli(
            "Name of this run's folder (a taken name gets a -1, -2 ... suffix).",
            default_text="a timestamp",
        ),
    )
    resume: Path | None = field(
        default=None,
        metadata=_cli(
            "Continue from this checkpoint (e.g. runs/NAME/checkpoints/last.ckpt) with its "
            "epoch, optimizer and scheduler state, in that run's folder."
        ),
    )
    deterministic: bool = field(
        default=False,
        metadata=_cli(
            "Deterministic algorithms (identical reruns with the same seed on CPU).", flag=True
        ),
    )
    fast_dev_run: bool | int = field(
        default=False,
        metadata=_cli(
            "Smoke test: one train and one val batch; no run folder, checkpoints or logs.",
            flag=True,
        ),
    )
    pretrained: bool = field(
        default=True,
        metadata=_cli(
            "Start from ImageNet weights (downloaded; random weights when offline).",
            negatable=True,
        ),
    )
    weights_path: Path | None = field(
        default=None,
        metadata=_cli(
            "Local torchvision efficientnet_b0 state dict to start from.", option="--weights"
        ),
    )
    max_time: str | None = field(
        default=None,
        metadata=_cli(
            "Wall-clock budget DD:HH:MM:SS, data loading included: the epochs (at most "
            "--epochs) and the learning-rate schedule are fitted to it, so the run ends "
            "annealed and checkpointed on time."
        ),
    )
    fit_schedule_to_time: bool = field(
        default=True,
        metadata=_cli(
            "With --max-time, fit epochs and schedule to the budget; --no-fit-schedule-to-time "
            "plans for --epochs and only stops when the time is up.",
            negatable=True,
        ),
    )
    split_dir: Path | None = field(
        default=None,
        metadata=_cli(
            "Folder holding train.txt, val.txt and test.txt, each naming the chips of that "
            "split one a line (None: a seeded 80/10/10 split).",
            cli=False,
        ),
    )
    progress_bar: bool = field(
        default=True,
        metadata=_cli("Show a progress bar with the loss and validation metrics.", cli=False),
    )
    compile: bool = field(
        default=False,
        metadata=_cli(
            "Compile the network with torch.compile (slow start; for GPUs and long runs).",
            flag=True,
        ),
    )
    auto_batch_size: bool = field(
        default=False,
        metadata=_cli(
            "Largest batch that fits the GPU (Lightning's batch-size finder); ignored with "
            "a warning on CPU.",
            flag=True,
        ),
    )

    def __post_init__(self) -> None:
        hints = _type_hints()
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            checked = _check_value(spec, hints[spec.name], value, source=option_name(spec))
            if checked is not value:
                setattr(self, spec.name, checked)


def option_name(spec: dataclasses.Field[Any]) -> str:
    """The command-line spelling of a :class:`TrainConfig` field, e.g. ``--batch-size``."""
    return spec.metadata.get("option") or "--" + spec.name.replace("_", "-")


@functools.cache
def _type_hints() -> dict[str, Any]:
    """The resolved annotations of :class:`TrainConfig`."""
    return typing.get_type_hints(TrainConfig)


def cli_fields() -> list[tuple[dataclasses.Field[Any], Any]]:
    """The user-facing fields of :class:`TrainConfig` with their resolved types, in order."""
    hints = _type_hints()
    return [
        (spec, hints[spec.name])
        for spec in dataclasses.fields(TrainConfig)
        if spec.metadata.get("cli", True)
    ]


def field_choices(spec: dataclasses.Field[Any], hint: Any) -> tuple[str, ...] | None:
    """Allowed values of a field: its ``choices`` metadata or its ``Literal`` type."""
    if spec.metadata.get("choices"):
        return tuple(spec.metadata["choices"])
    literal = [arg for arg in union_members(hint) if typing.get_origin(arg) is Literal]
    return tuple(typing.get_args(literal[0])) if literal else None


def union_members(hint: Any) -> tuple[Any, ...]:
    """The members of a union type (the type itself when it is not a union)."""
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin is typing.Union or type(hint).__name__ == "UnionType":
        return args
    return (hint,)


def _check_value(spec: dataclasses.Field[Any], hint: Any, value: Any, source: str) -> Any:
    """Convert ``value`` to the field's type and check its choices and range.

    Args:
        spec: The :class:`TrainConfig` field.
        hint: Its resolved type.
        value: The value given (Python, or read from YAML).
        source: How the user named the setting (``--epochs`` or ``config.yaml: epochs``).

    Returns:
        The value, converted (a ``str`` for a path becomes a ``Path``; an int
        for a float setting a float; a number for a string setting a string).

    Raises:
        InputError: The value has the wrong type, is not a choice or is out of range.
    """
    members = union_members(hint)
    if value is None:
        if type(None) in members:
            return None
        raise InputError(f"{source}: a value is required.")
    kinds = [m for m in members if m is not type(None)]
    choices = field_choices(spec, hint)
    if isinstance(value, bool):
        if bool not in kinds:
            raise InputError(f"{source} {value!r}: expected {_kind_names(kinds)}.")
        return value
    if Path in kinds and isinstance(value, (str, os.PathLike)):
        return value if isinstance(value, Path) else Path(value)
    if int in kinds and isinstance(value, int):
        converted: Any = value
    elif float in kinds and isinstance(value, (int, float)):
        converted = value if isinstance(value, float) else float(value)
    elif float in kinds and isinstance(value, str) and _is_float(value):
        converted = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
    elif (str in kinds or choices) and isinstance(value, (str, int, float)):
        converted = value if isinstance(value, str) else str(value)
    else:
        raise InputError(f"{source} {value!r}: expected {_kind_names(kinds)}.")
    if choices is not None and converted not in choices:
        raise InputError(f"{source} {value!r}: choose one of {', '.join(choices)}.")
    if isinstance(converted, (int, float)):
        _check_range(converted, spec.metadata, source, value)
    return converted


def _check_range(number: float, metadata: Mapping[str, Any], source: str, value: Any) -> None:
    """Raise :class:`InputError` when ``number`` is outside the field's ``min``/``max``."""
    low, open_low = metadata.get("min"), bool(metadata.get("min_open"))
    if low is not None and (number < low or (open_low and number == low)):
        bound = f"more than {low:g}" if open_low else f"at least {low:g}"
        raise InputError(f"{source} {value!r}: must be {bound}.")
    high, open_high = metadata.get("max"), bool(metadata.get("max_open"))
    if high is not None and (number > high or (open_high and number == high)):
        bound = f"less than {high:g}" if open_high else f"at most {high:g}"
        raise InputError(f"{source} {value!r}: must be {bound}.")


def _is_float(text: str) -> bool:
    """Whether ``text`` is a finite decimal number such as ``1e-3``."""
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _kind_names(kinds: list[Any]) -> str:
    """Human names of the allowed types, e.g. ``int or bool``."""
    names = []
    for kind in kinds:
        if typing.get_origin(kind) is Literal:
            names.append("one of " + ", ".join(map(str, typing.get_args(kind))))
        else:
            plain = {Path: "a path", str: "a string"}
            names.append(plain.get(kind, getattr(kind, "__name__", "?")))
    return " or ".join(names)


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """The config as plain values (paths as strings), in field order."""
    return {
        spec.name: str(value) if isinstance(value, Path) else value
        for spec in dataclasses.fields(config)
        for value in [getattr(config, spec.name)]
    }


def config_from_dict(values: Any, source: str) -> TrainConfig:
    """Build a :class:`TrainConfig` from plain values (e.g. a parsed config.yaml).

    Args:
        values: A mapping of field names to values; missing fields keep their defaults.
        source: Name of the origin for messages (the file path).

    Raises:
        InputError: ``values`` is not a mapping, has an unknown key, or a bad value.
    """
    if not isinstance(values, dict):
        raise InputError(f"{source}: expected a mapping of settings, got {type(values).__name__}.")
    known = {spec.name: spec for spec in dataclasses.fields(TrainConfig)}
    unknown = sorted(str(key) for key in values if key not in known)
    if unknown:
        raise InputError(f"{source}: unknown setting {unknown[0]!r}; known: {', '.join(known)}.")
    hints = _type_hints()
    checked = {
        name: _check_value(known[name], hints[name], value, source=f"{source}: {name}")
        for name, value in values.items()
    }
    return TrainConfig(**checked)


def save_config(config: TrainConfig, path: str | os.PathLike[str]) -> Path:
    """Write ``config`` to ``path`` as plain YAML, atomically.

    Returns:
        The path written.
    """
    import yaml

    header = "# wakemodel TrainConfig; rerun with: python cli.py train --config THIS_FILE\n"
    body = yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=False)
    return atomic_write_text(path, header + body)


def load_config(path: str | os.PathLike[str]) -> TrainConfig:
    """Read a config file written by :func:`save_config` (or by hand).

    Args:
        path: A YAML mapping of :class:`TrainConfig` field names to values.

    Raises:
        InputError: The file is missing, unreadable, not YAML, not a mapping, or
            holds an unknown key or a bad value (a one-line message).
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise InputError(
            f"--config {path}: no such file; pass the config.yaml of a run folder (runs/NAME/)."
        ) from error
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"--config {path}: cannot read it ({type(error).__name__}).") from error
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"--config {path}: not valid YAML{where}.") from error
    return config_from_dict({} if values is None else values, source=str(path))
