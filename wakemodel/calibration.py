"""Calibration of the predicted heading uncertainty and of the wake score.

The model reports, per chip, ``heading_std_deg`` (a 1-sigma heading
uncertainty in degrees; the predicted 90 % interval is heading ±
:data:`INTERVAL_Z90` · std) and ``wake_score`` (the probability that the chip
holds a readable wake). Held-out evaluation gives, per chip:

- ``heading_error_deg``: absolute heading error in [0, 180] degrees, NaN for
  chips without a true wake;
- ``heading_std_deg``: the predicted heading std in degrees;
- ``wake_score``: the wake probability in [0, 1];
- ``has_wake``: bool, the annotation has a wake (negatives have no heading error).

This module measures whether those numbers can be trusted (issue #12):

- :func:`heading_calibration`: does the std rank the errors (Spearman), do the
  most confident chips have smaller errors, do the 90 % intervals cover 90 %?
- :func:`fit_std_scale`: the factor that makes the intervals cover as
  promised on a validation split (applied by the training module).
- :func:`wake_detection`: recall, negative rejection and ROC AUC of the score.
- :func:`fit_wake_score_platt` and :func:`apply_wake_score_platt`: Platt
  scaling that turns the network's wake score into a probability fitted on a
  validation split with chips without a wake (applied to every prediction).
- :func:`calibration_summary` merges both; :func:`format_calibration` prints
  it beside the targets.

numpy and scipy only (no torch, no matplotlib; scipy is imported on first use, so
the CLI and ``infer`` start fast); all results are flat dicts of
Python floats, ready for JSON or a logger.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping

import numpy as np
from numpy.typing import ArrayLike

from wakemodel.errors import InputError

__all__ = [
    "CALIBRATION_TARGETS",
    "DEFAULT_MIN_WAKE_SCORE",
    "INTERVAL_Z90",
    "WakeScorePlatt",
    "apply_wake_score_platt",
    "calibration_summary",
    "fit_std_scale",
    "fit_wake_score_platt",
    "format_calibration",
    "heading_calibration",
    "interval_z",
    "invert_wake_score_platt",
    "meets_target",
    "observed_coverage",
    "wake_detection",
]

INTERVAL_Z90 = 1.6448536269514722
"""Half-width of the two-sided 90 % normal interval in stds (``scipy.stats.norm.ppf(0.95)``)."""

DEFAULT_MIN_WAKE_SCORE = 0.5
"""Wake-score threshold: chips scoring at least this are reported as holding a wake.

A chip below it is treated as "no readable wake" (its heading is not trusted).
0.5 is the natural cut of a probability; the targets of issue #12 (recall of
true wakes >= 95 %, rejection of negatives >= 90 %) are checked at this value.
"""

_MIN_PAIRS = 3
"""Fewest finite (error, std) pairs for which the heading measures are computed."""

_MIN_PLATT_CHIPS = 5
"""Fewest validation chips with a wake, and without one, for which Platt scaling is fitted."""

_SCORE_EPS = 1e-6
"""Scores are clipped to [eps, 1 - eps] before their logit is taken."""

CALIBRATION_TARGETS: dict[str, tuple[str, Callable[[float], bool]]] = {
    "spearman": ("> 0.5", lambda value: value > 0.5),
    "confident_p90_ratio": ("< 0.5", lambda value: value < 0.5),
    "interval_coverage": ("85–95%", lambda value: 0.85 <= value <= 0.95),
    "wake_recall": (">= 95%", lambda value: value >= 0.95),
    "negative_rejection": (">= 90%", lambda value: value >= 0.9),
}
"""Issue #12's targets: :func:`calibration_summary` key -> (the target as text, its test)."""

WakeScorePlatt = tuple[float, float]
"""Platt scaling of the wake score: ``(slope, intercept)`` on the logit scale."""


def interval_z(interval: float) -> float:
    """Half-width, in stds, of the two-sided normal interval holding ``interval``.

    Args:
        interval: Nominal coverage in (0, 1), e.g. 0.9.

    Returns:
        ``norm.ppf((1 + interval) / 2)``; 1.645 for 0.9.

    Raises:
        InputError: ``interval`` is not in (0, 1).
    """
    if not 0.0 < interval < 1.0:
        raise InputError(f"interval must be in (0, 1), got {interval}.")
    from scipy import stats

    return float(stats.norm.ppf(0.5 * (1.0 + interval)))


def _finite_pairs(
    heading_error_deg: ArrayLike, heading_std_deg: ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    """The (error, std) pairs where both are finite, as float64 ``[M]`` arrays.

    Raises:
        InputError: The two arrays differ in size.
    """
    error = np.asarray(heading_error_deg, dtype=np.float64).ravel()
    std = np.asarray(heading_std_deg, dtype=np.float64).ravel()
    if error.shape != std.shape:
        raise InputError(
            f"heading_error_deg ({error.size} values) and heading_std_deg "
            f"({std.size} values) must have one value per chip."
        )
    keep = np.isfinite(error) & np.isfinite(std)
    return error[keep], std[keep]


def observed_coverage(
    heading_error_deg: ArrayLike, heading_std_deg: ArrayLike, nominal: ArrayLike
) -> np.ndarray:
    """Observed coverage of the predicted intervals at each nominal coverage.

    Args:
        heading_error_deg: Absolute heading errors ``[N]`` in degrees (NaN ignored).
        heading_std_deg: Predicted 1-sigma heading stds ``[N]`` in degrees (NaN ignored).
        nominal: Nominal coverages ``[K]``, each in (0, 1).

    Returns:
        float64 ``[K]``: for each nominal ``p``, the share of the finite pairs with
        ``error <= norm.ppf((1 + p) / 2) * std``; NaN everywhere with fewer than 3 pairs.
        A calibrated model lies on the diagonal.

    Raises:
        InputError: The arrays differ in size, or a nominal value is not in (0, 1).
    """
    error, std = _finite_pairs(heading_error_deg, heading_std_deg)
    nominal = np.asarray(nominal, dtype=np.float64).ravel()
    if nominal.size and not np.all((nominal > 0.0) & (nominal < 1.0)):
        raise InputError("Nominal coverages must lie in (0, 1).")
    if error.size < _MIN_PAIRS:
        return np.full(nominal.shape, np.nan)
    from scipy import stats

    z = stats.norm.ppf(0.5 * (1.0 + nominal))
    return np.mean(error[None, :] <= z[:, None] * std[None, :], axis=1)


def heading_calibration(
    heading_error_deg: ArrayLike,
    heading_std_deg: ArrayLike,
    *,
    confident_fraction: float = 0.8,
    interval: float = 0.9,
) -> dict[str, float]:
    """How well the predicted heading std matches the actual heading error.

    Only pairs where both values are finite are used (chips without a true
    wake have a NaN error and drop out).

    Args:
        heading_error_deg: Absolute heading errors ``[N]`` in degrees, in [0, 180].
        heading_std_deg: Predicted 1-sigma heading stds ``[N]`` in degrees.
        confident_fraction: Share of the chips, those with the smallest std, whose
            p90 error is compared with the p90 of all chips; in (0, 1].
        interval: Nominal two-sided coverage of the checked interval, in (0, 1).

    Returns:
        ``spearman`` (rank correlation of std and error; > 0 when a larger std
        means a larger error), ``p90_error_deg`` (90th percentile of the error over
        all pairs), ``p90_error_confident_deg`` (the same over the
        ``confident_fraction`` pairs with the smallest std), ``confident_p90_ratio``
        (confident / all), ``interval_coverage`` (share of errors <= z·std with
        ``z = norm.ppf((1 + interval) / 2)``), ``median_std_deg`` and ``count``
        (the number of pairs). Every value but ``count`` is NaN with fewer than
        3 pairs; ``spearman`` is also NaN when either array is constant.

    Raises:
        InputError: The arrays differ in size, or a fraction is out of range.
    """
    if not 0.0 < confident_fraction <= 1.0:
        raise InputError(f"confident_fraction must be in (0, 1], got {confident_fraction}.")
    z = interval_z(interval)
    error, std = _finite_pairs(heading_error_deg, heading_std_deg)
    count = error.size
    result = {
        "spearman": math.nan,
        "p90_error_deg": math.nan,
        "p90_error_confident_deg": math.nan,
        "confident_p90_ratio": math.nan,
        "interval_coverage": math.nan,
        "median_std_deg": math.nan,
        "count": float(count),
    }
    if count < _MIN_PAIRS:
        return result
    result["spearman"] = _spearman(std, error)
    p90_all = float(np.quantile(error, 0.9))
    confident_count = max(1, math.ceil(confident_fraction * count - 1e-9))
    confident = error[np.argsort(std, kind="stable")[:confident_count]]
    p90_confident = float(np.quantile(confident, 0.9))
    result["p90_error_deg"] = p90_all
    result["p90_error_confident_deg"] = p90_confident
    result["confident_p90_ratio"] = p90_confident / p90_all if p90_all > 0.0 else math.nan
    result["interval_coverage"] = float(np.mean(error <= z * std))
    result["median_std_deg"] = float(np.median(std))
    return result


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation, NaN (without a warning) when an input is constant."""
    from scipy import stats

    if np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        value = stats.spearmanr(x, y).statistic
    return float(value)


def fit_std_scale(
    heading_error_deg: ArrayLike, raw_std_deg: ArrayLike, *, interval: float = 0.9
) -> float:
    """Factor k that makes the ``interval`` intervals of ``k * raw_std`` cover as promised.

    ``k = q / z`` with ``z = norm.ppf((1 + interval) / 2)`` and ``q`` the
    split-conformal quantile of ``error / raw_std``: its ``ceil((n + 1) *
    interval)``-th smallest value over the ``n`` pairs. On a new chip drawn
    like the validation chips, the error then lies within ``z * k * raw_std``
    with probability at least ``interval`` whatever the error distribution
    (exchangeable chips; with ``n >= interval / (1 - interval)`` pairs, else
    ``n / (n + 1)``), where the plain interpolated quantile falls short on
    small splits: 88.7 % on average with 60 chips, against 90.2 % (see the
    tests). Fitted on a validation split and multiplied into the predicted std.

    Args:
        heading_error_deg: Absolute heading errors ``[N]`` in degrees.
        raw_std_deg: Uncalibrated predicted stds ``[N]`` in degrees; pairs with a
            non-finite value or ``raw_std <= 0`` are ignored.
        interval: Nominal two-sided coverage, in (0, 1).

    Returns:
        k > 0; 1.0 (no rescaling) with fewer than 3 usable pairs or when the
        quantile is 0 (all errors zero), which would collapse the stds. With too
        few pairs for the level (``n < interval / (1 - interval)``) ``q`` is their
        largest ratio.

    Raises:
        InputError: The arrays differ in size, or ``interval`` is not in (0, 1).
    """
    z = interval_z(interval)
    error, std = _finite_pairs(heading_error_deg, raw_std_deg)
    keep = std > 0.0
    count = int(np.count_nonzero(keep))
    if count < _MIN_PAIRS:
        return 1.0
    rank = min(count, math.ceil((count + 1) * interval - 1e-9))  # 1e-9: float round-off
    scale = float(np.sort(error[keep] / std[keep])[rank - 1]) / z
    return scale if math.isfinite(scale) and scale > 0.0 else 1.0


def _scored_chips(
    wake_score: ArrayLike, has_wake: ArrayLike
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The chips with a finite score: float64 scores ``[M]``, bool has-wake ``[M]``, counts.

    Returns:
        ``(score, positive, positives, negatives)``.

    Raises:
        InputError: The two arrays differ in size.
    """
    score = np.asarray(wake_score, dtype=np.float64).ravel()
    positive = np.asarray(has_wake).ravel().astype(bool)
    if score.shape != positive.shape:
        raise InputError(
            f"wake_score ({score.size} values) and has_wake ({positive.size} values) "
            "must have one value per chip."
        )
    keep = np.isfinite(score)
    score, positive = score[keep], positive[keep]
    positives = int(np.count_nonzero(positive))
    return score, positive, positives, positive.size - positives


def _logit(score: ArrayLike) -> np.ndarray:
    """Log-odds of probabilities (float ``[...]``), clipped to ``[eps, 1 - eps]`` first."""
    clipped = np.clip(np.asarray(score, dtype=np.float64), _SCORE_EPS, 1.0 - _SCORE_EPS)
    return np.log(clipped) - np.log1p(-clipped)


def fit_wake_score_platt(wake_score: ArrayLike, has_wake: ArrayLike) -> WakeScorePlatt | None:
    """Platt scaling of the wake score, fitted on validation chips with and without a wake.

    The network's wake score (the sigmoid of its vertex visibility logit) ranks
    chips well but is not a probability: that logit is also trained by the
    keypoint loss on every chip with a wake, and the wake-score loss only sees
    batches holding a negative, so true wakes score too low (a held-out recall
    of 80 % at 0.5 with 98.5 % of the negatives rejected, benchmarks/README.md).
    Platt scaling (Platt 1999) fits ``p = sigmoid(a * logit(score) + b)`` by
    maximum likelihood with Platt's smoothed targets (``(n+ + 1) / (n+ + 2)``
    for wakes, ``1 / (n- + 2)`` for negatives, which keep the fit finite on a
    perfectly separated split). The result is a probability for chips drawn like
    the validation ones, mix of negatives included; ranking (ROC AUC) is unchanged.

    Args:
        wake_score: Uncalibrated wake scores ``[N]`` in [0, 1]; non-finite ones are ignored.
        has_wake: bool ``[N]``, the annotation holds a wake.

    Returns:
        ``(a, b)`` with ``a > 0``; None with fewer than 5 chips of either class (a
        split without negatives, as in the real data, has nothing to fit) or a fit
        that does not increase with the score.

    Raises:
        InputError: The arrays differ in size.
    """
    from scipy import optimize

    score, positive, positives, negatives = _scored_chips(wake_score, has_wake)
    logit = _logit(score)
    if min(positives, negatives) < _MIN_PLATT_CHIPS:
        return None
    target = np.where(positive, (positives + 1.0) / (positives + 2.0), 1.0 / (negatives + 2.0))
    features = np.stack([logit, np.ones_like(logit)], axis=1)

    def loss_and_gradient(weights: np.ndarray) -> tuple[float, np.ndarray]:
        z = features @ weights
        loss = float(np.sum(np.logaddexp(0.0, z) - target * z))
        return loss, features.T @ (1.0 / (1.0 + np.exp(-z)) - target)

    fit = optimize.minimize(loss_and_gradient, np.array([1.0, 0.0]), jac=True, method="BFGS")
    slope, intercept = (float(value) for value in fit.x)
    if not (math.isfinite(slope) and math.isfinite(intercept) and slope > 0.0):
        return None
    return slope, intercept


def apply_wake_score_platt(wake_score: ArrayLike, platt: WakeScorePlatt | None) -> np.ndarray:
    """Calibrated wake scores ``sigmoid(a * logit(score) + b)``, float ``[...]`` in [0, 1].

    Args:
        wake_score: Uncalibrated scores ``[...]`` in [0, 1] (NaN stays NaN).
        platt: ``(a, b)`` from :func:`fit_wake_score_platt`; None returns the scores as they are.

    Returns:
        The scores, same shape.
    """
    score = np.asarray(wake_score, dtype=np.float64)
    if platt is None:
        return score
    slope, intercept = platt
    return 1.0 / (1.0 + np.exp(-(slope * _logit(score) + intercept)))


def invert_wake_score_platt(wake_score: ArrayLike, platt: WakeScorePlatt | None) -> np.ndarray:
    """The uncalibrated scores behind calibrated ones (inverts :func:`apply_wake_score_platt`).

    Exact for scores away from 0 and 1 (both are clipped by ``1e-6`` before the logit).

    Args:
        wake_score: Calibrated scores ``[...]`` in [0, 1].
        platt: The ``(a, b)`` they were calibrated with; None returns them as they are.

    Returns:
        The scores, same shape.
    """
    score = np.asarray(wake_score, dtype=np.float64)
    if platt is None:
        return score
    slope, intercept = platt
    return 1.0 / (1.0 + np.exp(-(_logit(score) - intercept) / slope))


def wake_detection(
    wake_score: ArrayLike, has_wake: ArrayLike, *, threshold: float = DEFAULT_MIN_WAKE_SCORE
) -> dict[str, float]:
    """How well the wake score separates chips with a wake from negatives.

    Chips with a non-finite score are ignored.

    Args:
        wake_score: Wake probabilities ``[N]`` in [0, 1].
        has_wake: bool ``[N]``, the annotation holds a wake.
        threshold: Chips with ``score >= threshold`` are reported as wakes.

    Returns:
        ``wake_recall`` (share of true wakes scoring >= threshold),
        ``negative_rejection`` (share of negatives scoring < threshold),
        ``roc_auc`` (probability that a random wake outscores a random negative,
        ties counting half: the Mann–Whitney statistic), ``positives`` and
        ``negatives`` (counts) and ``threshold``. Recall is NaN without wakes,
        rejection without negatives, AUC without either.

    Raises:
        InputError: The arrays differ in size.
    """
    from scipy import stats

    score, positive, positives, negatives = _scored_chips(wake_score, has_wake)
    recall = float(np.mean(score[positive] >= threshold)) if positives else math.nan
    rejection = float(np.mean(score[~positive] < threshold)) if negatives else math.nan
    if positives and negatives:
        ranks = stats.rankdata(score)
        rank_sum = float(np.sum(ranks[positive]))
        auc = (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)
    else:
        auc = math.nan
    return {
        "wake_recall": recall,
        "negative_rejection": rejection,
        "roc_auc": float(auc),
        "positives": float(positives),
        "negatives": float(negatives),
        "threshold": float(threshold),
    }


def calibration_summary(
    heading_error_deg: ArrayLike,
    heading_std_deg: ArrayLike,
    wake_score: ArrayLike,
    has_wake: ArrayLike,
    *,
    min_wake_score: float = DEFAULT_MIN_WAKE_SCORE,
) -> dict[str, float]:
    """Heading-uncertainty calibration and wake detection in one flat dict.

    Args:
        heading_error_deg: Absolute heading errors ``[N]`` in degrees (NaN for negatives).
        heading_std_deg: Predicted 1-sigma heading stds ``[N]`` in degrees.
        wake_score: Wake probabilities ``[N]`` in [0, 1].
        has_wake: bool ``[N]``, the annotation holds a wake.
        min_wake_score: Wake-score threshold for recall and rejection.

    Returns:
        The keys of :func:`heading_calibration` (computed over the chips with a
        true wake only, with the default 80 % confident share and 90 % interval)
        and of :func:`wake_detection`, all Python floats.

    Raises:
        InputError: The arrays differ in size.
    """
    positive = np.asarray(has_wake).ravel().astype(bool)
    error = np.asarray(heading_error_deg, dtype=np.float64).ravel()
    std = np.asarray(heading_std_deg, dtype=np.float64).ravel()
    if not error.size == std.size == positive.size:
        raise InputError(
            f"heading_error_deg ({error.size}), heading_std_deg ({std.size}) and "
            f"has_wake ({positive.size}) must have one value per chip."
        )
    return {
        **heading_calibration(error[positive], std[positive]),
        **wake_detection(wake_score, positive, threshold=min_wake_score),
    }


def _percent(value: float) -> str:
    """``value`` (a share) as a percentage, or ``n/a`` when NaN."""
    return "n/a" if not math.isfinite(value) else f"{value:.1%}"


def _number(value: float, spec: str = ".2f", unit: str = "") -> str:
    """``value`` formatted with ``spec`` and ``unit``, or ``n/a`` when NaN."""
    return "n/a" if not math.isfinite(value) else f"{value:{spec}}{unit}"


def meets_target(key: str, value: float) -> bool | None:
    """Whether ``value`` of :func:`calibration_summary` key ``key`` meets its target.

    Args:
        key: A key of the summary, e.g. ``"interval_coverage"``.
        value: Its value (a share in [0, 1] for coverage, recall and rejection).

    Returns:
        None when ``value`` is NaN or ``key`` has no target in :data:`CALIBRATION_TARGETS`.
    """
    if key not in CALIBRATION_TARGETS or not math.isfinite(value):
        return None
    return bool(CALIBRATION_TARGETS[key][1](value))


def _verdict(key: str, value: float) -> str:
    """`` (target ...) [met]``/``[not met]`` beside a figure; no verdict when it is NaN."""
    met = meets_target(key, value)
    verdict = "" if met is None else (" [met]" if met else " [not met]")
    return f" (target {CALIBRATION_TARGETS[key][0]}){verdict}"


def format_calibration(summary: Mapping[str, float]) -> str:
    """Human-readable lines of a :func:`calibration_summary`, the targets beside the figures.

    Args:
        summary: A dict as returned by :func:`calibration_summary` (missing keys read as NaN).

    Returns:
        Six lines without a trailing newline; undefined values read ``n/a``.
    """

    def get(key: str) -> float:
        value = summary.get(key, math.nan)
        return math.nan if value is None else float(value)

    spearman = get("spearman")
    ratio = get("confident_p90_ratio")
    coverage = get("interval_coverage")
    recall = get("wake_recall")
    rejection = get("negative_rejection")
    threshold = get("threshold")
    count = get("count")
    count_text = "n/a" if not math.isfinite(count) else f"{count:.0f}"
    threshold_text = _number(threshold, ".2f")
    return "\n".join(
        [
            f"heading std vs error, Spearman: {_number(spearman, '.3f')}"
            f"{_verdict('spearman', spearman)}; {count_text} chips with a wake",
            f"p90 heading error, 80% most confident: "
            f"{_number(get('p90_error_confident_deg'), '.1f', '°')} vs all "
            f"{_number(get('p90_error_deg'), '.1f', '°')}, ratio {_number(ratio, '.3f')}"
            f"{_verdict('confident_p90_ratio', ratio)}",
            f"90% interval coverage (heading ± 1.645·std): {_percent(coverage)}"
            f"{_verdict('interval_coverage', coverage)}; "
            f"median std {_number(get('median_std_deg'), '.1f', '°')}",
            f"wake recall at score >= {threshold_text}: {_percent(recall)} of "
            f"{_number(get('positives'), '.0f')} wakes{_verdict('wake_recall', recall)}",
            f"negative rejection at score < {threshold_text}: {_percent(rejection)} of "
            f"{_number(get('negatives'), '.0f')} negatives"
            f"{_verdict('negative_rejection', rejection)}",
            f"wake score ROC AUC: {_number(get('roc_auc'), '.3f')}",
        ]
    )
