"""Self-training on unlabelled chips with a consistency reward (ReST-EM, adapted to keypoints).

Expectation-maximisation after Singh et al. 2023 ("Beyond Human Data: Scaling
Self-Training for Problem-Solving with Language Models"):

- **Round 0** trains on the labelled chips alone (the supervised baseline).
- **E-step** of round ``k >= 1``: round ``k - 1``'s model predicts every
  unlabelled chip under the 8 dihedral views of its network input
  (:func:`wakemodel.tta.predict_views`). A binary reward (:func:`agreement`) keeps a chip
  only when the views agree: the vertices' spread and the headings' spread are
  under thresholds (scaled up when fewer than ``min_kept_fraction`` of the chips
  pass; :attr:`Reward.evidence_weight` also ranks them by the image's line
  contrast where the wake should be, :func:`wakemodel.evidence.wake_contrast`)
  and the mean wake score is high. The pseudo-label is the
  views' consensus (their per-coordinate median, arm order matched to the plain
  view).
- **M-step**: training starts again from the same starting weights (the
  :class:`~wakemodel.config.TrainConfig`'s ``pretrained``/``weights_path`` and
  ``seed``), never from the previous round's model, on the labelled training
  chips (repeated ``labeled_repeats`` times, so they weigh more) plus the kept
  pseudo-labelled chips. Validation uses labelled chips only, the same ones every
  round: a split of the labelled chips, or a labelled dataset of its own
  (``val_dir``, ``--val``: a few chips of the imagery to be read, when it differs
  from the labelled chips). The best round is the one with the lowest
  ``select_metric`` there (by default the mean heading error with the 8 views
  combined, :func:`validate_views`).

Layout of ``OUT`` (``--out``)::

    OUT/settings.json                 the settings; a rerun must match them
    OUT/round_K/pseudo/imgs/          kept chips (hard links, else copies; round K >= 1)
    OUT/round_K/pseudo/annotations/   {"tooltips": [...], "agreement": {...}} in chip pixels
    OUT/round_K/agreement.json        every unlabelled chip's agreement and verdict
    OUT/round_K/train_data/           the round's training set (links) and splits/*.txt
    OUT/round_K/run/                  the training run (config.yaml, metrics.csv, checkpoints/)
    OUT/round_K/round.json            the round's summary, written last: the round is done

``pseudo/`` is an ordinary dataset: ``python cli.py plot dataset OUT/round_1/pseudo``
shows it, and ``train --data`` trains on it. Rerunning the same command skips the
finished rounds (those with a ``round.json``) and redoes an unfinished one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wakemodel import keypoints as kp
from wakemodel._io import atomic_write_text, json_float
from wakemodel.calibration import DEFAULT_MIN_WAKE_SCORE, WakeScorePlatt, apply_wake_score_platt
from wakemodel.config import TrainConfig, config_to_dict
from wakemodel.errors import InputError, WakeModelError
from wakemodel.evidence import wake_contrast
from wakemodel.predictors import wake_score_platt
from wakemodel.tta import consensus, predict_views

if TYPE_CHECKING:
    from wakemodel.predictors import KeypointPredictor
    from wakemodel.records import WakeRecord

logger = logging.getLogger(__name__)

__all__ = [
    "ROUND_CHECKPOINTS",
    "VIEW_METRICS_PREFIX",
    "ChipAgreement",
    "Reward",
    "RoundResult",
    "SelfTrainConfig",
    "SelfTrainResult",
    "agreement",
    "choose_round",
    "format_rounds",
    "keep_most_agreeing",
    "pseudo_label",
    "selftrain",
    "train_round",
    "validate_views",
    "write_pseudo_dataset",
    "write_training_set",
]

VIEW_METRICS_PREFIX = "val_views/"
"""Prefix of the validation metrics measured with the 8 views combined (:func:`validate_views`)."""


ROUND_FILE = "round.json"
"""A round's summary; its presence marks the round as finished."""

SETTINGS_FILE = "settings.json"
"""The settings of a self-training folder, checked on a rerun."""

LABELED_PREFIX = "l"
"""Names of labelled chips in a round's training set: ``l0-NAME`` (``l1-NAME`` ... repeats)."""

VAL_PREFIX = "v-"
"""Names of the validation chips in a round's training set: ``v-NAME``."""

ROUND_CHECKPOINTS = ("best", "last")
"""Choices of :attr:`SelfTrainConfig.round_checkpoint`."""

PSEUDO_PREFIX = "p-"
"""Names of pseudo-labelled chips in a round's training set: ``p-NAME``."""

_RUN_SETTINGS_IGNORED = (
    "data_dir",
    "split_dir",
    "run_dir",
    "run_name",
    "checkpoint_dir",
    "resume",
    "progress_bar",
    "logger",
    "wandb_project",
    "workers",
    "fast_dev_run",
)
"""TrainConfig fields that do not change what a round learns (left out of the rerun check)."""


@dataclass(frozen=True)
class Reward:
    """The binary reward of the E-step: when the views of a chip agree.

    Attributes:
        max_vertex_spread: Largest root-mean-square distance of the views'
            vertices from their consensus (:func:`wakemodel.tta.consensus`),
            as a fraction of the chip diagonal.
        max_heading_spread_deg: Largest root-mean-square difference of the
            views' headings from the consensus heading (degrees).
        min_wake_score: Smallest wake score: the views' mean, Platt-scaled as
            ``infer`` reports it when the model has a scaling (probability).
        min_kept_fraction: Share of the chips to keep at least: when fewer pass
            the two spread thresholds, both are scaled up by the same factor until
            this share does (:func:`keep_most_agreeing`; the wake score stays a hard
            limit). 0 keeps the thresholds fixed.
        evidence_weight: Weight of the image's own evidence in the order that
            fills up ``min_kept_fraction``: chips rank by the rank of their
            :meth:`disagreement` plus this times the rank of their
            :attr:`ChipAgreement.wake_contrast`, highest first
            (:func:`keep_most_agreeing`). 0 ranks by the disagreement alone.
    """

    max_vertex_spread: float = 0.04
    max_heading_spread_deg: float = 5.0
    min_wake_score: float = DEFAULT_MIN_WAKE_SCORE
    min_kept_fraction: float = 0.0
    evidence_weight: float = 0.0

    def __post_init__(self) -> None:
        if not self.max_vertex_spread > 0 or not self.max_heading_spread_deg > 0:
            raise InputError(
                f"reward thresholds {self.max_vertex_spread!r}, {self.max_heading_spread_deg!r}: "
                "the vertex and heading spreads must be positive."
            )
        if not 0.0 <= self.min_wake_score <= 1.0:
            raise InputError(f"min_wake_score {self.min_wake_score!r}: must be in [0, 1].")
        if not 0.0 <= self.min_kept_fraction <= 1.0:
            raise InputError(f"min_kept_fraction {self.min_kept_fraction!r}: must be in [0, 1].")
        if not 0.0 <= self.evidence_weight < math.inf:
            raise InputError(
                f"evidence_weight {self.evidence_weight!r}: must be a finite number >= 0."
            )

    def disagreement(self, vertex_spread: np.ndarray, heading_spread_deg: np.ndarray) -> np.ndarray:
        """How far the views' spreads are past the thresholds (<= 1: within both).

        Args:
            vertex_spread: ``[B]`` vertex spreads, fractions of the chip diagonal.
            heading_spread_deg: ``[B]`` heading spreads (degrees).

        Returns:
            ``[B]`` the larger of the two spreads over its threshold; inf where NaN.
        """
        ratio = np.maximum(
            np.asarray(vertex_spread, dtype=np.float64) / self.max_vertex_spread,
            np.asarray(heading_spread_deg, dtype=np.float64) / self.max_heading_spread_deg,
        )
        return np.where(np.isnan(ratio), np.inf, ratio)


@dataclass
class SelfTrainConfig:
    """Settings of a self-training run.

    Attributes:
        labeled_dir: Labelled dataset (``imgs/`` and ``annotations/``).
        unlabeled_dir: Folder of chip images (PNG or TIFF), no annotations.
        out_dir: Output folder (see the module docstring).
        rounds: Self-training rounds after round 0 (the supervised baseline).
        train: Training settings of every round (epochs, image size, time budget,
            seed, starting weights ...); its data, split and run folders are set
            per round.
        reward: When a chip's views agree.
        labeled_repeats: Times each labelled training chip appears in the
            training set of a round with pseudo-labels (its weight).
        val_fraction: Share of the labelled chips held out for validation
            (the same chips every round; they select the best round). Unused
            with ``val_dir``.
        val_dir: A labelled dataset that validates every round instead (its
            checkpoint and the best round); all of ``labeled_dir`` then trains.
            For a few labelled chips of the imagery the unlabelled chips come from.
        round_checkpoint: Which checkpoint of a round's training is the round's
            model (the next round's teacher, the one validated and reported):
            ``"best"``, the lowest validation loss, or ``"last"``, the last
            (annealed) epoch.
        select_metric: Validation metric (lower is better) choosing the best round:
            a ``val/`` metric of the training run's best epoch (single view) or a
            ``val_views/`` one (:func:`validate_views`, the 8 views combined).
        batch_size: Chips per network call in the E-step.
    """

    labeled_dir: Path
    unlabeled_dir: Path
    out_dir: Path = Path("runs/selftrain")
    rounds: int = 3
    train: TrainConfig = field(default_factory=TrainConfig)
    reward: Reward = field(default_factory=Reward)
    labeled_repeats: int = 3
    val_fraction: float = 0.2
    val_dir: Path | None = None
    round_checkpoint: str = "best"
    select_metric: str = f"{VIEW_METRICS_PREFIX}heading_error_mean_deg"
    batch_size: int = 32

    def __post_init__(self) -> None:
        self.labeled_dir = Path(self.labeled_dir)
        self.unlabeled_dir = Path(self.unlabeled_dir)
        self.out_dir = Path(self.out_dir)
        self.val_dir = None if self.val_dir is None else Path(self.val_dir)
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 0:
            raise InputError(f"--rounds {self.rounds!r}: must be 0 or more.")
        if self.round_checkpoint not in ROUND_CHECKPOINTS:
            raise InputError(
                f"--round-checkpoint {self.round_checkpoint!r}: must be one of "
                f"{', '.join(ROUND_CHECKPOINTS)}."
            )
        if self.labeled_repeats < 1:
            raise InputError(f"labeled_repeats {self.labeled_repeats!r}: must be at least 1.")
        if not 0.0 < self.val_fraction < 1.0:
            raise InputError(f"val_fraction {self.val_fraction!r}: must be between 0 and 1.")
        if self.batch_size < 1:
            raise InputError(f"batch_size {self.batch_size!r}: must be at least 1.")


@dataclass
class ChipAgreement:
    """How the 8 views of one unlabelled chip agree, and its pseudo-label.

    Attributes:
        source: The chip's image file.
        width: Chip width (pixels).
        height: Chip height (pixels).
        keypoints_px: float ``[3, 2]`` consensus keypoints (original pixels).
        visible: bool ``[3]`` consensus visibility (vertex and at least one end).
        wake_score: Mean wake score of the views (probability).
        vertex_spread_px: RMS distance of the views' vertices from the consensus (pixels).
        heading_deg: Consensus heading (degrees, compass).
        heading_spread_deg: RMS difference of the views' headings from it (degrees).
        kept: Whether the reward keeps the chip.
        wake_contrast: The image's line contrast behind the consensus vertex
            (:func:`wakemodel.evidence.wake_contrast`); NaN where not measured.
    """

    source: Path
    width: int
    height: int
    keypoints_px: np.ndarray
    visible: np.ndarray
    wake_score: float
    vertex_spread_px: float
    heading_deg: float
    heading_spread_deg: float
    kept: bool
    wake_contrast: float = math.nan

    @property
    def vertex_spread(self) -> float:
        """:attr:`vertex_spread_px` as a fraction of the chip diagonal."""
        return self.vertex_spread_px / math.hypot(self.width, self.height)

    def to_dict(self) -> dict[str, Any]:
        """The agreement fields, JSON-ready (NaN becomes None)."""
        return {
            "source": str(self.source),
            "kept": bool(self.kept),
            "vertex_px": [round(float(v), 2) for v in self.keypoints_px[kp.VERTEX_SLOT]],
            "wake_score": json_float(self.wake_score, 4),
            "vertex_spread_px": json_float(self.vertex_spread_px, 3),
            "vertex_spread": json_float(self.vertex_spread, 5),
            "heading_deg": json_float(self.heading_deg, 2),
            "heading_spread_deg": json_float(self.heading_spread_deg, 3),
            "wake_contrast": json_float(self.wake_contrast, 3),
        }

    def annotation(self) -> dict[str, Any]:
        """The pseudo-label in the dataset's schema plus ``agreement``.

        Returns:
            ``{"tooltips": [vertex, visible ends], "agreement": {...}}``, points in
            original pixels (2 decimals) clipped to the chip.
        """
        limit = np.array([self.width, self.height], dtype=np.float64)
        points = np.clip(self.keypoints_px[self.visible], 0.0, limit)
        return {
            "tooltips": [{"x": round(float(x), 2), "y": round(float(y), 2)} for x, y in points],
            "agreement": self.to_dict(),
        }


@dataclass
class RoundResult:
    """One finished round.

    Attributes:
        round: 0 for the supervised baseline, then 1, 2 ...
        checkpoint: The round's best checkpoint.
        val_metrics: Labelled-validation metrics of that checkpoint's epoch
            (``val/heading_error_deg`` in degrees, ``val/vertex_error_px`` in pixels ...),
            and its errors there with the 8 views combined (``val_views/``,
            :func:`validate_views`).
        train_chips: Chips in the round's training set (repeats counted).
        unlabeled_chips: Unlabelled chips predicted (0 in round 0).
        kept_chips: Pseudo-labelled chips kept.
        agreement: Medians over the unlabelled chips: ``wake_score``,
            ``vertex_spread_px``, ``heading_spread_deg`` (empty in round 0).
        pseudo_dir: The kept pseudo-labels as a dataset (None in round 0).
        wall_s: Wall-clock time of the round, E-step and training (seconds).
        resumed: The round was finished by an earlier call and skipped.
    """

    round: int
    checkpoint: Path
    val_metrics: dict[str, float]
    train_chips: int
    unlabeled_chips: int = 0
    kept_chips: int = 0
    agreement: dict[str, float] = field(default_factory=dict)
    pseudo_dir: Path | None = None
    wall_s: float = math.nan
    resumed: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (paths as strings, NaN as None); ``resumed`` is left out."""
        values = dataclasses.asdict(self)
        values.pop("resumed")
        values["checkpoint"] = str(self.checkpoint)
        values["pseudo_dir"] = None if self.pseudo_dir is None else str(self.pseudo_dir)
        values["val_metrics"] = {k: json_float(v, 6) for k, v in self.val_metrics.items()}
        values["agreement"] = {k: json_float(v, 6) for k, v in self.agreement.items()}
        values["wall_s"] = json_float(self.wall_s, 1)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RoundResult:
        """Read :meth:`to_dict`'s output back (``resumed`` True)."""
        return cls(
            round=int(values["round"]),
            checkpoint=Path(values["checkpoint"]),
            val_metrics={k: _float(v) for k, v in values["val_metrics"].items()},
            train_chips=int(values["train_chips"]),
            unlabeled_chips=int(values["unlabeled_chips"]),
            kept_chips=int(values["kept_chips"]),
            agreement={k: _float(v) for k, v in values["agreement"].items()},
            pseudo_dir=None if values["pseudo_dir"] is None else Path(values["pseudo_dir"]),
            wall_s=_float(values.get("wall_s")),
            resumed=True,
        )


@dataclass
class SelfTrainResult:
    """All rounds and the best one.

    Attributes:
        rounds: Every round, round 0 first.
        best_round: Index of the round with the lowest ``select_metric``.
        select_metric: The validation metric that chose it.
        out_dir: The self-training folder.
    """

    rounds: list[RoundResult]
    best_round: int
    select_metric: str
    out_dir: Path

    @property
    def best_checkpoint(self) -> Path:
        """The best round's checkpoint."""
        return self.rounds[self.best_round].checkpoint


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def agreement(
    keypoints: np.ndarray,
    visibility: np.ndarray,
    sizes: np.ndarray,
    sources: Sequence[Path],
    reward: Reward,
    platt: WakeScorePlatt | None = None,
) -> list[ChipAgreement]:
    """Score the views of each chip and decide which chips to keep.

    Args:
        keypoints: Normalised keypoints of the views ``[V, B, 3, 2]`` (arms aligned).
        visibility: Visibility probabilities of the views ``[V, B, 3]``.
        sizes: Chip (width, height) in pixels ``[B, 2]``.
        sources: The chips' image files ``[B]``.
        reward: The thresholds.
        platt: The model's Platt scaling of its wake score
            (:func:`wakemodel.predictors.wake_score_platt`), applied to the views'
            mean, as ``infer`` reports it; None: the mean as it is.

    Returns:
        One :class:`ChipAgreement` per chip. The consensus is the views'
        per-coordinate median (:func:`wakemodel.tta.consensus`); its visible ends
        are those with a mean probability above 0.5 (at least one). Each view's
        heading uses the consensus visibility.
    """
    sizes = np.asarray(sizes, dtype=np.float64)
    views_px = keypoints * sizes[None, :, None, :]
    consensus_px = consensus(views_px)
    mean_visibility = visibility.mean(axis=0)
    visible = kp.predicted_visibility(mean_visibility)
    vertex_offsets = views_px[:, :, kp.VERTEX_SLOT] - consensus_px[None, :, kp.VERTEX_SLOT]
    vertex_spread = np.sqrt(np.mean(np.sum(vertex_offsets**2, axis=-1), axis=0))
    heading = kp.heading_deg(consensus_px, visible)
    view_headings = kp.heading_deg(views_px, np.broadcast_to(visible, views_px.shape[:-1]))
    heading_spread = np.sqrt(
        np.mean(kp.angle_difference_deg(view_headings, heading[None]) ** 2, axis=0)
    )
    wake_score = apply_wake_score_platt(mean_visibility[:, kp.VERTEX_SLOT], platt)
    diagonal = np.hypot(sizes[:, 0], sizes[:, 1])
    kept = (reward.disagreement(vertex_spread / diagonal, heading_spread) <= 1.0) & (
        wake_score >= reward.min_wake_score
    )
    return [
        ChipAgreement(
            source=Path(sources[i]),
            width=int(sizes[i, 0]),
            height=int(sizes[i, 1]),
            keypoints_px=consensus_px[i],
            visible=visible[i],
            wake_score=float(wake_score[i]),
            vertex_spread_px=float(vertex_spread[i]),
            heading_deg=float(heading[i]),
            heading_spread_deg=float(heading_spread[i]),
            kept=bool(kept[i]),
        )
        for i in range(len(sources))
    ]


def keep_most_agreeing(chips: Sequence[ChipAgreement], reward: Reward) -> list[ChipAgreement]:
    """Keep at least ``reward.min_kept_fraction`` of the chips, the most agreeing first.

    Args:
        chips: Every unlabelled chip's agreement, as :func:`agreement` judged it.
        reward: The thresholds, the share to keep and the evidence's weight.

    Returns:
        ``chips`` with ``kept`` set also on the chips ranked first until
        ``ceil(min_kept_fraction * len(chips))`` are kept: by the lowest
        :meth:`Reward.disagreement`, or with ``reward.evidence_weight`` by the
        weighted rank sum with the wake contrast (NaN ranks last). Chips under
        ``min_wake_score`` or with NaN spreads stay rejected.
    """
    wanted = math.ceil(round(reward.min_kept_fraction * len(chips), 6))  # 0.7 * 10 is 7, not 8
    already = sum(chip.kept for chip in chips)
    if already >= wanted:
        return list(chips)
    disagreement = reward.disagreement(
        np.array([chip.vertex_spread for chip in chips]),
        np.array([chip.heading_spread_deg for chip in chips]),
    )
    eligible = np.isfinite(disagreement) & np.array(
        [chip.wake_score >= reward.min_wake_score for chip in chips]
    )
    order = disagreement
    if reward.evidence_weight > 0:
        from scipy.stats import rankdata

        contrast = np.nan_to_num([chip.wake_contrast for chip in chips], nan=-np.inf)
        order = rankdata(disagreement) + reward.evidence_weight * rankdata(-contrast)
    ranked = [i for i in np.argsort(order, kind="stable") if eligible[i] and not chips[i].kept][
        : wanted - already
    ]
    if ranked:
        logger.info(
            "Kept %d more chips ranked first (evidence weight %g): disagreement up to %.3g",
            len(ranked),
            reward.evidence_weight,
            max(float(disagreement[i]) for i in ranked),
        )
    chosen = set(ranked)
    return [replace(chip, kept=chip.kept or i in chosen) for i, chip in enumerate(chips)]


def _read_batches(
    paths: Sequence[Path], batch_size: int, image_size: int
) -> Iterator[tuple[int, list[Path], np.ndarray, np.ndarray, list[np.ndarray]]]:
    """Read and preprocess chips ``batch_size`` at a time.

    Yields:
        ``(chips tried, readable paths, float32 [B, 1, S, S] in [0, 1], sizes [B, 2],
        the B chips as read [H, W])``; an unreadable chip is skipped with a
        warning (B may be 0).
    """
    from wakemodel.preprocess import preprocess_image, read_chip

    for start in range(0, len(paths), batch_size):
        kept: list[Path] = []
        raws: list[np.ndarray] = []
        images, sizes = [], []
        for path in paths[start : start + batch_size]:
            try:
                _, raw = read_chip(path)
            except WakeModelError as error:
                logger.warning("Skipping %s: %s", path, error)
                continue
            kept.append(path)
            raws.append(raw)
            images.append(preprocess_image(raw, image_size))
            sizes.append(raw.shape[::-1])
        pixels = np.stack(images) if images else np.zeros((0, 1, image_size, image_size))
        yield (
            len(paths[start : start + batch_size]),
            kept,
            pixels.astype(np.float32) / 255.0,
            np.asarray(sizes, dtype=np.float64).reshape(-1, 2),
            raws,
        )


def pseudo_label(
    model: KeypointPredictor | str | os.PathLike[str],
    paths: Sequence[Path],
    reward: Reward,
    *,
    batch_size: int = 32,
    accelerator: str = "auto",
    progress_bar: bool = False,
    description: str = "Pseudo-labelling",
) -> list[ChipAgreement]:
    """The E-step: predict every chip under the 8 views and apply the reward.

    Args:
        model: A ``.ckpt``/``.onnx`` path or a predictor with an ``image_size``.
        paths: The unlabelled chips' image files.
        reward: When the views agree.
        batch_size: Chips per network call (each is run 8 times).
        accelerator: Device choice when ``model`` is a path.
        progress_bar: Show a progress bar on stderr.
        description: Text before the bar.

    Returns:
        One :class:`ChipAgreement` per readable chip, in input order, with its
        wake contrast (:func:`wakemodel.evidence.wake_contrast`) and at least
        ``reward.min_kept_fraction`` of them kept (:func:`keep_most_agreeing`).

    Raises:
        WakeModelError: The model cannot be loaded.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from wakemodel.infer import as_predictor

    predictor = as_predictor(model, accelerator=accelerator)
    image_size = int(predictor.image_size)
    results: list[ChipAgreement] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not progress_bar) as bar:
        task = bar.add_task(description, total=len(paths))
        for tried, sources, images, sizes, raws in _read_batches(paths, batch_size, image_size):
            if sources:
                keypoints, visibility, _ = predict_views(predictor, images)
                chips = agreement(
                    keypoints, visibility, sizes, sources, reward, wake_score_platt(predictor)
                )
                results.extend(
                    replace(
                        chip,
                        wake_contrast=wake_contrast(
                            raw, chip.keypoints_px[kp.VERTEX_SLOT], chip.heading_deg
                        ),
                    )
                    for chip, raw in zip(chips, raws, strict=True)
                )
            bar.advance(task, tried)
    return keep_most_agreeing(results, reward)


def _link(source: Path, target: Path) -> None:
    """Hard-link ``source`` to ``target``, or copy it where links cannot be made."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _unlabeled_images(folder: Path) -> list[Path]:
    """The chip images of ``folder``, one per name (a later duplicate is skipped)."""
    from wakemodel.infer import find_images

    if not folder.is_dir():
        raise InputError(
            f"--unlabeled {folder}: no such folder; pass a folder of chip images (.png, .tif)."
        )
    images: dict[str, Path] = {}
    for path in find_images([folder]):
        if path.stem in images:
            logger.warning("Skipping %s: another image is named %s", path, path.stem)
        else:
            images[path.stem] = path
    return list(images.values())


def write_pseudo_dataset(chips: Sequence[ChipAgreement], folder: Path) -> None:
    """Write the kept chips to ``folder`` as a dataset (staged, then renamed into place).

    Each kept chip's image is hard-linked (or copied) to ``folder/imgs/`` under
    its own name, and its :meth:`ChipAgreement.annotation` written to
    ``folder/annotations/NAME.json``; an existing ``folder`` is replaced.
    """
    staging = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "imgs").mkdir(parents=True)
    (staging / "annotations").mkdir()
    for chip in chips:
        if chip.kept:
            _link(chip.source, staging / "imgs" / chip.source.name)
            (staging / "annotations" / f"{chip.source.stem}.json").write_text(
                json.dumps(chip.annotation()), encoding="utf-8"
            )
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)


def write_training_set(
    folder: Path,
    labeled_train: Sequence[Any],
    labeled_val: Sequence[Any],
    pseudo_dir: Path | None,
    repeats: int,
) -> int:
    """Build a round's training set of links and its ``splits/*.txt`` (for ``split_dir``).

    Labelled training chips appear ``repeats`` times (``l0-NAME``, ``l1-NAME`` ...)
    and the pseudo-labelled ones once (``p-NAME``) in ``train.txt``; the labelled
    validation chips alone are in ``val.txt`` (``v-NAME``); ``test.txt`` is empty.

    Args:
        folder: The folder to (re)create.
        labeled_train: Labelled training records (:class:`wakemodel.records.WakeRecord`).
        labeled_val: Labelled validation records.
        pseudo_dir: A dataset of pseudo-labelled chips, or None.
        repeats: Times each labelled training chip appears.

    Returns:
        Chips in the training split.
    """
    shutil.rmtree(folder, ignore_errors=True)
    for sub in ("imgs", "annotations", "splits"):
        (folder / sub).mkdir(parents=True)

    def add(name: str, image: Path, annotation: Path) -> str:
        _link(image, folder / "imgs" / f"{name}{image.suffix}")
        _link(annotation, folder / "annotations" / f"{name}.json")
        return name

    train_names = [
        add(f"{LABELED_PREFIX}{r}-{record.name}", record.image_path, record.annotation_path)
        for record in labeled_train
        for r in range(repeats)
    ]
    val_names = [
        add(f"{VAL_PREFIX}{record.name}", record.image_path, record.annotation_path)
        for record in labeled_val
    ]
    if pseudo_dir is not None:
        images = {path.stem: path for path in (pseudo_dir / "imgs").iterdir()}
        for annotation in sorted((pseudo_dir / "annotations").glob("*.json")):
            if annotation.stem in images:
                name = f"{PSEUDO_PREFIX}{annotation.stem}"
                train_names.append(add(name, images[annotation.stem], annotation))
    for split, names in (("train", train_names), ("val", val_names), ("test", [])):
        (folder / "splits" / f"{split}.txt").write_text(
            "".join(f"{name}\n" for name in names), encoding="utf-8"
        )
    return len(train_names)


def _validation_records(folder: Path) -> list[WakeRecord]:
    """The labelled chips of ``--val`` (at least one with a wake).

    Raises:
        InputError: ``folder`` is not a dataset or holds no chip with a wake.
    """
    from wakemodel.records import scan_dataset

    if not folder.is_dir():
        raise InputError(
            f"--val {folder}: no such folder; pass a labelled dataset with imgs/ and annotations/."
        )
    records = scan_dataset(folder)
    if not any(record.has_wake for record in records):
        raise InputError(
            f"--val {folder}: no chip with an annotated wake; the rounds are chosen by their "
            "heading error there, so label at least one wake."
        )
    return records


def _settings(config: SelfTrainConfig) -> dict[str, Any]:
    """What a rerun must share with the first call (``rounds`` may grow)."""
    run = {k: v for k, v in config_to_dict(config.train).items() if k not in _RUN_SETTINGS_IGNORED}
    return {
        "labeled_dir": str(config.labeled_dir.resolve()),
        "unlabeled_dir": str(config.unlabeled_dir.resolve()),
        "reward": dataclasses.asdict(config.reward),
        "labeled_repeats": config.labeled_repeats,
        # With a val folder of its own, nothing is split off: the fraction is unused.
        "val_fraction": config.val_fraction if config.val_dir is None else None,
        "val_dir": None if config.val_dir is None else str(config.val_dir.resolve()),
        "round_checkpoint": config.round_checkpoint,
        "train": run,
    }


def _check_settings(config: SelfTrainConfig) -> None:
    """Write ``OUT/settings.json``, or check that a rerun's settings match it.

    Raises:
        InputError: ``OUT`` holds a self-training run with other settings.
    """
    path = config.out_dir / SETTINGS_FILE
    settings = json.loads(json.dumps(_settings(config)))
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        # Runs from before min_kept_fraction existed kept the thresholds fixed.
        stored.get("reward", {}).setdefault("min_kept_fraction", 0.0)
        stored.get("reward", {}).setdefault("evidence_weight", 0.0)  # and ranked by agreement
        stored.setdefault("val_dir", None)  # runs from before val_dir: a labelled split
        stored.setdefault("round_checkpoint", "best")
        if stored["val_dir"] is not None:  # session-18 runs recorded the unused fraction
            stored["val_fraction"] = None
        if stored != settings:
            changed = sorted(key for key in settings if stored.get(key) != settings[key])
            raise InputError(
                f"--out {config.out_dir} holds a self-training run with other settings "
                f"({', '.join(changed) or 'format'}); pass another --out or delete it."
            )
        return
    atomic_write_text(path, json.dumps(settings, indent=2) + "\n")


def _agreement_medians(chips: Sequence[ChipAgreement]) -> dict[str, float]:
    """Medians over all chips of the wake score, vertex spread and heading spread."""
    if not chips:
        return {}
    return {
        "wake_score": float(np.nanmedian([c.wake_score for c in chips])),
        "vertex_spread_px": float(np.nanmedian([c.vertex_spread_px for c in chips])),
        "heading_spread_deg": float(np.nanmedian([c.heading_spread_deg for c in chips])),
    }


def validate_views(
    checkpoint: Path, records: Sequence[WakeRecord], *, data_dir: Path, accelerator: str
) -> dict[str, float]:
    """A round's errors on the labelled validation chips, the 8 views combined.

    The round is chosen on these chips, as ``evaluate`` and ``infer`` read chips by
    default. The mean heading error reacts to the few chips read far off (a reversed
    heading adds 180° / n), which a median over a dozen chips ignores.

    Args:
        checkpoint: The round's best checkpoint.
        records: The labelled validation chips.
        data_dir: Their dataset root.
        accelerator: Device choice.

    Returns:
        ``val_views/heading_error_deg`` (median), ``val_views/heading_error_mean_deg``
        (degrees) and ``val_views/vertex_error_frac`` (median share of the wake length).
    """
    from wakemodel.evaluate import evaluate_records

    report = evaluate_records(
        checkpoint, records, data_dir=data_dir, tta=True, accelerator=accelerator
    )
    heading_deg = report.errors["heading_error_deg"]
    return {
        f"{VIEW_METRICS_PREFIX}heading_error_deg": float(np.nanmedian(heading_deg)),
        f"{VIEW_METRICS_PREFIX}heading_error_mean_deg": float(np.nanmean(heading_deg)),
        f"{VIEW_METRICS_PREFIX}vertex_error_frac": float(
            np.nanmedian(report.errors["vertex_error_frac"])
        ),
    }


def train_round(
    config: SelfTrainConfig, round_dir: Path, train_data: Path
) -> tuple[Path, dict[str, float]]:
    """The M-step: train from the starting weights on ``train_data``.

    Args:
        config: The settings; ``config.train`` is the training recipe.
        round_dir: The folder the training's run goes in (``round_dir/run``).
        train_data: A dataset folder with its ``splits/`` (:func:`write_training_set`).

    Returns:
        The round's checkpoint (``config.round_checkpoint``) and its epoch's
        validation metrics.
    """
    from wakemodel.train import train

    run_config = replace(
        config.train,
        data_dir=train_data,
        split_dir=train_data / "splits",
        run_dir=round_dir,
        run_name="run",
        checkpoint_dir=None,
        resume=None,
        fast_dev_run=False,
    )
    result = train(run_config)
    if config.round_checkpoint == "last" and result.last_checkpoint is not None:
        last_epoch = max(result.history, default=None)
        metrics = {} if last_epoch is None else dict(result.history[last_epoch])
        return result.last_checkpoint, metrics
    checkpoint = result.best_checkpoint or result.last_checkpoint
    if checkpoint is None:
        raise WakeModelError(f"Round {round_dir.name} wrote no checkpoint in {result.run_dir}.")
    return checkpoint, dict(result.best_metrics)


def selftrain(config: SelfTrainConfig) -> SelfTrainResult:
    """Run round 0 and ``config.rounds`` self-training rounds; skip finished ones.

    Args:
        config: The settings.

    Returns:
        Every round's summary and the best round by ``config.select_metric``.

    Raises:
        InputError: A folder is missing or empty, too few labelled chips for a
            validation split, or ``out_dir`` holds a run with other settings.
        WakeModelError: The labelled data is unusable or training fails.
    """
    from wakemodel.records import scan_dataset, split_records

    if not config.labeled_dir.is_dir():
        raise InputError(
            f"--labeled {config.labeled_dir}: no such folder; pass a dataset with imgs/ "
            "and annotations/."
        )
    unlabeled = _unlabeled_images(config.unlabeled_dir)
    records = scan_dataset(config.labeled_dir)
    if config.val_dir is None:
        fractions = (1.0 - config.val_fraction, config.val_fraction, 0.0)
        parts = split_records(records, config.train.seed, fractions)
        val_root = config.labeled_dir
        if not parts["val"] or not parts["train"]:
            raise InputError(
                f"--labeled {config.labeled_dir}: {len(records)} usable chips are too few for "
                "a training and a validation split; label more chips or pass --val DIR."
            )
    else:
        parts = {"train": records, "val": _validation_records(config.val_dir)}
        val_root = config.val_dir
    config.out_dir.mkdir(parents=True, exist_ok=True)
    _check_settings(config)
    logger.info(
        "Self-training: %d labelled chips (%d train, %d val), %d unlabelled chips, %d rounds",
        len(records),
        len(parts["train"]),
        len(parts["val"]),
        len(unlabeled),
        config.rounds,
    )

    def view_metrics(checkpoint: Path) -> dict[str, float]:
        return validate_views(
            checkpoint,
            parts["val"],
            data_dir=val_root,
            accelerator=config.train.accelerator,
        )

    rounds: list[RoundResult] = []
    for index in range(config.rounds + 1):
        round_dir = config.out_dir / f"round_{index}"
        summary_path = round_dir / ROUND_FILE
        if summary_path.is_file():
            result = RoundResult.from_dict(json.loads(summary_path.read_text("utf-8")))
            if config.select_metric.startswith(VIEW_METRICS_PREFIX) and (
                config.select_metric not in result.val_metrics
            ):
                result.val_metrics.update(view_metrics(result.checkpoint))
                atomic_write_text(summary_path, json.dumps(result.to_dict(), indent=2) + "\n")
            rounds.append(result)
            logger.info("Round %d: finished earlier, skipped (%s)", index, summary_path)
            continue
        started = time.monotonic()
        shutil.rmtree(round_dir, ignore_errors=True)
        round_dir.mkdir(parents=True)
        chips: list[ChipAgreement] = []
        pseudo_dir = None
        if index > 0:
            chips = pseudo_label(
                rounds[-1].checkpoint,
                unlabeled,
                config.reward,
                batch_size=config.batch_size,
                accelerator=config.train.accelerator,
                progress_bar=config.train.progress_bar,
                description=f"Round {index}: pseudo-labelling",
            )
            pseudo_dir = round_dir / "pseudo"
            write_pseudo_dataset(chips, pseudo_dir)
            atomic_write_text(
                round_dir / "agreement.json",
                json.dumps([chip.to_dict() for chip in chips], indent=1) + "\n",
            )
            kept = sum(chip.kept for chip in chips)
            logger.info("Round %d: kept %d of %d unlabelled chips", index, kept, len(chips))
            if not kept:
                logger.warning("Round %d: no chip kept; it trains on the labelled chips", index)
        train_chips = write_training_set(
            round_dir / "train_data",
            parts["train"],
            parts["val"],
            pseudo_dir,
            config.labeled_repeats if index > 0 else 1,
        )
        checkpoint, metrics = train_round(config, round_dir, round_dir / "train_data")
        metrics.update(view_metrics(checkpoint))
        result = RoundResult(
            round=index,
            checkpoint=checkpoint,
            val_metrics=metrics,
            train_chips=train_chips,
            unlabeled_chips=len(chips),
            kept_chips=sum(chip.kept for chip in chips),
            agreement=_agreement_medians(chips),
            pseudo_dir=pseudo_dir,
            wall_s=time.monotonic() - started,
        )
        atomic_write_text(summary_path, json.dumps(result.to_dict(), indent=2) + "\n")
        logger.info(
            "Round %d: %s %.4g",
            index,
            config.select_metric,
            metrics.get(config.select_metric, math.nan),
        )
        rounds.append(result)
    return SelfTrainResult(
        rounds=rounds,
        best_round=choose_round(rounds, config.select_metric),
        select_metric=config.select_metric,
        out_dir=config.out_dir,
    )


def choose_round(rounds: Sequence[RoundResult], metric: str) -> int:
    """The earliest round with the lowest finite ``metric`` (round 0 when none has it)."""
    scored = [
        (r.val_metrics[metric], i)
        for i, r in enumerate(rounds)
        if not math.isnan(r.val_metrics.get(metric, math.nan))
    ]
    return min(scored)[1] if scored else 0


def format_rounds(result: SelfTrainResult) -> str:
    """A plain-text table of every round: chips, agreement and validation metrics."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Self-training rounds (best: round {result.best_round})")
    for name in (
        "round",
        "train chips",
        "kept / unlabelled",
        "median wake score",
        "median vertex spread (px)",
        "median heading spread (deg)",
        "val heading (deg)",
        "val vertex (px)",
        "val 8 views: heading median / mean (deg)",
        "minutes",
    ):
        table.add_column(name, justify="right")

    def number(value: float | None, spec: str = ".3g") -> str:
        return "-" if value is None or math.isnan(value) else format(value, spec)

    for r in result.rounds:
        marker = " *" if r.round == result.rounds[result.best_round].round else ""
        table.add_row(
            f"{r.round}{marker}",
            str(r.train_chips),
            f"{r.kept_chips} / {r.unlabeled_chips}" if r.round else "-",
            number(r.agreement.get("wake_score")),
            number(r.agreement.get("vertex_spread_px")),
            number(r.agreement.get("heading_spread_deg")),
            number(r.val_metrics.get("val/heading_error_deg")),
            number(r.val_metrics.get("val/vertex_error_px")),
            f"{number(r.val_metrics.get(f'{VIEW_METRICS_PREFIX}heading_error_deg'))} / "
            f"{number(r.val_metrics.get(f'{VIEW_METRICS_PREFIX}heading_error_mean_deg'))}",
            number(r.wall_s / 60.0, ".1f"),
        )
    console = Console(width=160, color_system=None)
    with console.capture() as capture:
        console.print(table)
    return capture.get().rstrip()
