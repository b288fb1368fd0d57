"""Calibration measures of the heading std and wake score, and the calibration figure."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import special, stats

from wakemodel.calibration import (
    DEFAULT_MIN_WAKE_SCORE,
    INTERVAL_Z90,
    apply_wake_score_platt,
    calibration_summary,
    fit_std_scale,
    fit_wake_score_platt,
    format_calibration,
    heading_calibration,
    interval_z,
    invert_wake_score_platt,
    meets_target,
    observed_coverage,
    wake_detection,
)
from wakemodel.errors import InputError
from wakemodel.plots import plot_calibration

SAMPLES = 5000


def _gaussian_chips(seed: int, sigma_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Errors |N(0, sigma_scale * sigma)| with known per-chip sigma in [0.5, 20] degrees."""
    rng = np.random.default_rng(seed)
    sigma = rng.uniform(0.5, 20.0, SAMPLES)
    error = np.abs(rng.normal(0.0, sigma_scale * sigma))
    return error, sigma


def test_constants() -> None:
    assert abs(INTERVAL_Z90 - 1.6448536) < 1e-6
    assert interval_z(0.9) == pytest.approx(INTERVAL_Z90)
    assert DEFAULT_MIN_WAKE_SCORE == 0.5
    with pytest.raises(InputError):
        interval_z(1.0)


def test_import_needs_no_torch_or_matplotlib() -> None:
    code = (
        "import sys, wakemodel.calibration; "
        "assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_spearman_one_when_error_proportional_to_std() -> None:
    std = np.random.default_rng(0).uniform(1.0, 30.0, 200)
    result = heading_calibration(2.0 * std, std)
    assert result["spearman"] == pytest.approx(1.0)
    assert result["count"] == 200.0


def test_spearman_near_zero_when_independent() -> None:
    rng = np.random.default_rng(1)
    result = heading_calibration(rng.uniform(0, 90, SAMPLES), rng.uniform(1, 30, SAMPLES))
    assert abs(result["spearman"]) < 0.05


def test_confident_p90_smaller_when_error_scales_with_std() -> None:
    error, sigma = _gaussian_chips(2)
    result = heading_calibration(error, sigma)
    assert result["p90_error_confident_deg"] < result["p90_error_deg"]
    assert result["confident_p90_ratio"] == pytest.approx(
        result["p90_error_confident_deg"] / result["p90_error_deg"]
    )
    assert result["confident_p90_ratio"] < 0.9
    # Independent errors: the confident chips are no better.
    rng = np.random.default_rng(3)
    flat = heading_calibration(np.abs(rng.normal(0, 5, SAMPLES)), sigma)
    assert flat["confident_p90_ratio"] == pytest.approx(1.0, abs=0.05)


def test_coverage_and_median_on_known_gaussian() -> None:
    error, sigma = _gaussian_chips(4)
    result = heading_calibration(error, sigma)
    assert result["interval_coverage"] == pytest.approx(0.9, abs=0.02)
    assert result["median_std_deg"] == pytest.approx(np.median(sigma))
    # Stds twice too small cover far less than promised.
    assert heading_calibration(error, sigma / 2)["interval_coverage"] < 0.7
    assert heading_calibration(error, sigma, interval=0.5)["interval_coverage"] == pytest.approx(
        0.5, abs=0.02
    )


def test_fit_std_scale_true_sigma_gives_scale_one() -> None:
    error, sigma = _gaussian_chips(5)
    assert fit_std_scale(error, sigma) == pytest.approx(1.0, abs=0.02)


def test_fit_std_scale_then_coverage_is_nominal() -> None:
    error, raw = _gaussian_chips(6, sigma_scale=3.0)
    assert heading_calibration(error, raw)["interval_coverage"] < 0.5
    scale = fit_std_scale(error, raw)
    assert scale == pytest.approx(3.0, abs=0.1)
    assert heading_calibration(error, scale * raw)["interval_coverage"] == pytest.approx(
        0.9, abs=0.005
    )
    # Fitted on one split, it holds on fresh draws from the same model.
    fresh_error, fresh_raw = _gaussian_chips(7, sigma_scale=3.0)
    coverage = heading_calibration(fresh_error, scale * fresh_raw)["interval_coverage"]
    assert coverage == pytest.approx(0.9, abs=0.02)


def test_fit_std_scale_ignores_bad_pairs_and_needs_three() -> None:
    error = np.array([1.0, 2.0, np.nan, 5.0, 4.0, 7.0])
    raw = np.array([1.0, 2.0, 3.0, 0.0, -1.0, np.inf])
    assert fit_std_scale(error, raw) == 1.0  # only 2 usable pairs
    error = np.array([1.0, 2.0, 3.0, np.nan, 100.0])
    raw = np.array([1.0, 1.0, 1.0, 1.0, 0.0])
    # 3 pairs: ceil(4 * 0.9) = 4 > 3, so the largest ratio.
    assert fit_std_scale(error, raw) == pytest.approx(3.0 / INTERVAL_Z90)
    assert fit_std_scale(np.zeros(5), np.ones(5)) == 1.0
    # 20 pairs 1..20: the ceil(21 * 0.9) = 19th smallest ratio.
    assert fit_std_scale(np.arange(1.0, 21.0), np.ones(20)) == pytest.approx(19.0 / INTERVAL_Z90)


def test_fit_std_scale_covers_at_least_nominal_on_small_splits() -> None:
    """Fitted on 60 chips, the intervals hold >= 90 % on average (the plain quantile: less)."""
    rng = np.random.default_rng(9)
    ratios = np.abs(rng.normal(size=(4000, 60)))  # error / true sigma on 4000 splits of 60
    scales = np.array([fit_std_scale(split, np.ones(60)) for split in ratios])
    coverage = special.erf(INTERVAL_Z90 * scales / math.sqrt(2.0))  # P(|N(0,1)| <= z k)
    assert coverage.mean() >= 0.898
    plain = special.erf(np.quantile(ratios, 0.9, axis=1) / math.sqrt(2.0))
    assert plain.mean() < 0.892


def test_heading_calibration_nan_handling() -> None:
    result = heading_calibration([1.0, np.nan, 3.0], [1.0, 2.0, np.nan])
    assert result["count"] == 1.0
    assert all(math.isnan(value) for key, value in result.items() if key != "count")
    error = np.array([1.0, np.nan, 2.0, 3.0, 4.0, 5.0])
    std = np.array([1.0, 1.0, np.nan, 3.0, 4.0, 5.0])
    result = heading_calibration(error, std)
    assert result["count"] == 4.0
    assert result["spearman"] == pytest.approx(1.0)
    assert math.isnan(heading_calibration([1, 2, 3], [2, 2, 2])["spearman"])  # constant std
    with pytest.raises(InputError):
        heading_calibration([1.0, 2.0], [1.0])


def test_observed_coverage_curve() -> None:
    error, sigma = _gaussian_chips(8)
    nominal = np.linspace(0.1, 0.99, 20)
    observed = observed_coverage(error, sigma, nominal)
    assert observed.shape == (20,)
    assert np.all(np.diff(observed) >= 0)
    np.testing.assert_allclose(observed, nominal, atol=0.03)
    assert np.all(np.isnan(observed_coverage([1.0], [1.0], nominal)))


def test_wake_detection_perfect_separation() -> None:
    score = np.array([0.9, 0.8, 0.7, 0.2, 0.1])
    result = wake_detection(score, [True, True, True, False, False])
    assert result == {
        "wake_recall": 1.0,
        "negative_rejection": 1.0,
        "roc_auc": 1.0,
        "positives": 3.0,
        "negatives": 2.0,
        "threshold": 0.5,
    }


def test_wake_detection_reversed_and_ties() -> None:
    has_wake = np.array([True, True, False, False])
    reversed_ = wake_detection([0.1, 0.2, 0.8, 0.9], has_wake)
    assert reversed_["roc_auc"] == 0.0
    assert reversed_["wake_recall"] == 0.0
    assert reversed_["negative_rejection"] == 0.0
    assert wake_detection(np.full(4, 0.5), has_wake)["roc_auc"] == 0.5


def test_wake_detection_auc_matches_mann_whitney() -> None:
    rng = np.random.default_rng(9)
    score = np.round(rng.uniform(size=300), 1)  # many ties
    has_wake = rng.uniform(size=300) < np.clip(score + 0.2, 0, 1)
    result = wake_detection(score, has_wake, threshold=0.3)
    u = stats.mannwhitneyu(score[has_wake], score[~has_wake]).statistic
    assert result["roc_auc"] == pytest.approx(u / (has_wake.sum() * (~has_wake).sum()))
    assert result["wake_recall"] == pytest.approx(np.mean(score[has_wake] >= 0.3))
    assert result["negative_rejection"] == pytest.approx(np.mean(score[~has_wake] < 0.3))
    assert result["threshold"] == 0.3


def test_wake_detection_undefined_parts_and_nan_scores() -> None:
    only_wakes = wake_detection([0.9, 0.4], [True, True])
    assert only_wakes["wake_recall"] == 0.5
    assert math.isnan(only_wakes["negative_rejection"])
    assert math.isnan(only_wakes["roc_auc"])
    assert only_wakes["negatives"] == 0.0
    only_negatives = wake_detection([0.1], [False])
    assert math.isnan(only_negatives["wake_recall"])
    assert only_negatives["negative_rejection"] == 1.0
    with_nan = wake_detection([0.9, np.nan, 0.1], [True, True, False])
    assert with_nan["positives"] == 1.0
    assert with_nan["roc_auc"] == 1.0
    with pytest.raises(InputError):
        wake_detection([0.1, 0.2], [True])


def _logistic_chips(slope: float, intercept: float, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw scores whose true wake probability is ``sigmoid(slope * logit(score) + intercept)``."""
    rng = np.random.default_rng(4)
    raw_logit = rng.normal(-1.0, 2.0, count)
    has_wake = rng.random(count) < special.expit(slope * raw_logit + intercept)
    return special.expit(raw_logit), has_wake


def test_platt_scaling_recovers_a_known_miscalibration() -> None:
    # Scores too low and too flat, as the network's: the truth is sigmoid(2.5 logit + 3).
    score, has_wake = _logistic_chips(2.5, 3.0, SAMPLES)
    platt = fit_wake_score_platt(score, has_wake)
    assert platt is not None
    assert platt == pytest.approx((2.5, 3.0), rel=0.1)
    calibrated = apply_wake_score_platt(score, platt)
    # Maximum likelihood with an intercept: the mean probability is the (smoothed) wake share.
    assert calibrated.mean() == pytest.approx(has_wake.mean(), abs=2e-3)
    assert np.mean(calibrated[has_wake] >= 0.5) > np.mean(score[has_wake] >= 0.5) + 0.1
    # A monotone map: the ranking (and the ROC AUC) is unchanged.
    assert wake_detection(calibrated, has_wake)["roc_auc"] == pytest.approx(
        wake_detection(score, has_wake)["roc_auc"]
    )
    inside = (calibrated > 1e-4) & (calibrated < 1 - 1e-4)  # not clipped before the logit
    assert inside.mean() > 0.9
    np.testing.assert_allclose(
        invert_wake_score_platt(calibrated, platt)[inside], score[inside], rtol=1e-6
    )


def test_platt_scaling_edge_cases() -> None:
    score, has_wake = _logistic_chips(1.0, 0.0, 40)
    assert fit_wake_score_platt(score, np.ones(40, dtype=bool)) is None  # real data: no negatives
    few = has_wake.copy()
    few[np.flatnonzero(~few)[4:]] = True  # 4 negatives are too few
    assert fit_wake_score_platt(score, few) is None
    # Perfectly separated chips: finite thanks to the smoothed targets, increasing.
    separated = fit_wake_score_platt(
        [0.1, 0.2, 0.15, 0.05, 0.12, 0.6, 0.7, 0.9, 0.8, 0.65], [0] * 5 + [1] * 5
    )
    assert separated is not None and all(math.isfinite(v) for v in separated) and separated[0] > 0
    # Scores that fall as wakes get likelier: no fit rather than a reversed score.
    forward = fit_wake_score_platt(score, has_wake)
    assert forward is not None and forward[0] > 0
    assert fit_wake_score_platt(1.0 - score, has_wake) is None
    nan_score = np.r_[score, np.nan]
    assert fit_wake_score_platt(nan_score, np.r_[has_wake, True]) == fit_wake_score_platt(
        score, has_wake
    )
    np.testing.assert_array_equal(apply_wake_score_platt([0.2, np.nan], None), [0.2, np.nan])
    assert np.isnan(apply_wake_score_platt([np.nan], (2.0, 1.0))[0])
    with pytest.raises(InputError, match="one value per chip"):
        fit_wake_score_platt([0.5, 0.6], [True])


def test_calibration_summary_uses_wakes_only() -> None:
    error, sigma = _gaussian_chips(10)
    has_wake = np.ones(SAMPLES + 100, dtype=bool)
    has_wake[SAMPLES:] = False
    errors = np.concatenate([error, np.full(100, np.nan)])
    # Negatives' std is huge and their (fake) errors must not count.
    stds = np.concatenate([sigma, np.full(100, 1e6)])
    errors_with_junk = errors.copy()
    errors_with_junk[SAMPLES:] = 0.0
    scores = np.concatenate([np.full(SAMPLES, 0.9), np.full(100, 0.1)])
    summary = calibration_summary(errors_with_junk, stds, scores, has_wake)
    assert summary["count"] == float(SAMPLES)
    assert summary["interval_coverage"] == pytest.approx(0.9, abs=0.02)
    assert summary["median_std_deg"] < 20.0
    assert summary["wake_recall"] == 1.0
    assert summary["negative_rejection"] == 1.0
    assert summary["negatives"] == 100.0
    assert all(type(value) is float for value in summary.values())
    assert set(json.loads(json.dumps(summary))) == set(summary)
    strict = calibration_summary(errors, stds, scores, has_wake, min_wake_score=0.95)
    assert strict["wake_recall"] == 0.0
    assert strict["threshold"] == 0.95


def test_format_calibration_shows_targets_and_na() -> None:
    error, sigma = _gaussian_chips(11)
    summary = calibration_summary(error, sigma, np.full(SAMPLES, 0.9), np.ones(SAMPLES, bool))
    text = format_calibration(summary)
    lines = text.splitlines()
    assert len(lines) == 6
    assert "target > 0.5" in lines[0] and "[met]" in lines[0]
    assert "target < 0.5" in lines[1]
    assert f"{summary['interval_coverage']:.1%}" in lines[2] and "85–95%" in lines[2]
    assert "100.0%" in lines[3] and ">= 95%" in lines[3]
    assert "n/a" in lines[4] and ">= 90%" in lines[4]
    assert "n/a" in lines[5]
    assert "nan" not in text.lower()
    assert "nan" not in format_calibration({}).lower()


@pytest.mark.parametrize(
    ("key", "value", "met"),
    [
        ("interval_coverage", 0.85, True),
        ("interval_coverage", 0.95, True),
        ("interval_coverage", 0.951, False),
        ("interval_coverage", 0.849, False),
        ("confident_p90_ratio", 0.5, False),
        ("confident_p90_ratio", 0.49, True),
        ("spearman", 0.5, False),
        ("wake_recall", 0.95, True),
        ("negative_rejection", 0.899, False),
        ("spearman", math.nan, None),
        ("roc_auc", 0.99, None),
    ],
)
def test_meets_target_checks_the_issue_targets_at_their_bounds(
    key: str, value: float, met: bool | None
) -> None:
    assert meets_target(key, value) is met


def _png_size(path: Path) -> tuple[int, int]:
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


@pytest.mark.parametrize("negatives", [40, 0])
def test_plot_calibration_writes_png(tmp_path: Path, negatives: int) -> None:
    rng = np.random.default_rng(12)
    error, sigma = _gaussian_chips(12)
    error, sigma = error[:300], sigma[:300]
    error[0] = 0.0  # clipped on the log axes
    errors = np.concatenate([error, np.full(negatives, np.nan)])
    stds = np.concatenate([sigma, rng.uniform(1, 5, negatives)])
    scores = np.concatenate([rng.uniform(0.4, 1.0, 300), rng.uniform(0.0, 0.6, negatives)])
    has_wake = np.arange(300 + negatives) < 300
    out = plot_calibration(errors, stds, scores, has_wake, tmp_path / "sub" / "calibration.png")
    assert out == tmp_path / "sub" / "calibration.png"
    assert _png_size(out) == (1500, 450)
    assert list(out.parent.iterdir()) == [out]  # no temporary file left


def test_plot_calibration_without_heading_data(tmp_path: Path) -> None:
    out = plot_calibration(
        [np.nan, np.nan], [1.0, 2.0], [0.2, 0.3], [False, False], tmp_path / "empty.png"
    )
    assert _png_size(out) == (1500, 450)
    with pytest.raises(InputError):
        plot_calibration([1.0], [1.0, 2.0], [0.5], [True], tmp_path / "bad.png")


def test_checkpoints_with_the_same_weights_are_calibrated_once(
    tiny_checkpoint: Path, synthetic_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The best and last checkpoint of one epoch share one fit; other weights get their own."""
    import shutil

    import torch

    from wakemodel import train
    from wakemodel.predictors import TTA_STD_SCALE_KEY
    from wakemodel.records import scan_dataset

    records = scan_dataset(synthetic_dir)
    best = Path(shutil.copy(tiny_checkpoint, tmp_path / "best.ckpt"))
    last = Path(shutil.copy(tiny_checkpoint, tmp_path / "last.ckpt"))
    other = tmp_path / "other.ckpt"
    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    name = next(key for key, value in checkpoint["state_dict"].items() if value.is_floating_point())
    checkpoint["state_dict"][name] = checkpoint["state_dict"][name] + 1.0
    torch.save(checkpoint, other)
    fitted_paths: list[Path] = []
    real_fit = train.fit_tta_calibration

    def counting_fit(path: Path, *args: object, **kwargs: object) -> object:
        fitted_paths.append(Path(path))
        return real_fit(path, *args, **kwargs)

    monkeypatch.setattr(train, "fit_tta_calibration", counting_fit)
    fitted = train.calibrate_tta([best, last, other], records, "cpu")
    assert fitted_paths == [best, other]
    assert fitted[last] == fitted[best]
    for path in (best, last, other):
        stored = torch.load(path, weights_only=True)[TTA_STD_SCALE_KEY]
        assert stored == pytest.approx(fitted[path].std_scale)


def test_8_view_calibration_is_stored_read_and_applied(
    tiny_checkpoint: Path, synthetic_dir: Path, tmp_path: Path
) -> None:
    """calibrate_tta writes the factor, load_predictor reads it and TTA std uses it."""
    import shutil

    import torch

    from wakemodel.evaluate import evaluate_records
    from wakemodel.infer import as_predictor
    from wakemodel.model import WakeKeypointModule
    from wakemodel.predictors import TTA_STD_SCALE_KEY, load_predictor, tta_std_scale
    from wakemodel.records import scan_dataset
    from wakemodel.train import calibrate_tta

    records = scan_dataset(synthetic_dir)
    model = shutil.copy(tiny_checkpoint, tmp_path / "model.ckpt")
    scale = calibrate_tta([model, model], records, "cpu")[Path(model)].std_scale
    assert scale != pytest.approx(1.0)
    assert tta_std_scale(load_predictor(model, accelerator="cpu")) == pytest.approx(scale)
    # A module loaded in Python keeps the factor too.
    module = WakeKeypointModule.load_from_checkpoint(model, map_location="cpu")
    assert tta_std_scale(as_predictor(module)) == pytest.approx(scale)
    assert tta_std_scale(as_predictor(WakeKeypointModule(image_size=64))) == 1.0

    def run() -> tuple[np.ndarray, float]:
        report = evaluate_records(model, records, tta=True, accelerator="cpu")
        vertex_std_px = np.array([p.vertex_std_px for p in report.predictions])
        return vertex_std_px, report.summary["calibration"]["interval_coverage"]

    calibrated_std_px, coverage = run()
    # Fitted on these chips: split-conformal, so at least the nominal 90 % is covered.
    assert coverage >= 0.9
    checkpoint = torch.load(model, weights_only=True)
    checkpoint[TTA_STD_SCALE_KEY] = scale / 4.0
    torch.save(checkpoint, model)
    narrowed_std_px, narrowed_coverage = run()
    np.testing.assert_allclose(narrowed_std_px, calibrated_std_px / 4.0, rtol=1e-5)
    assert narrowed_coverage <= coverage
