import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from wakemodel.cli import main
from wakemodel.data import WakeDataset
from wakemodel.errors import InputError
from wakemodel.evaluate import evaluate
from wakemodel.evidence import wake_contrast
from wakemodel.records import scan_dataset
from wakemodel.selftrain import (
    ROUND_FILE,
    VIEW_METRICS_PREFIX,
    ChipAgreement,
    Reward,
    RoundResult,
    SelfTrainConfig,
    agreement,
    choose_round,
    keep_most_agreeing,
    pseudo_label,
    selftrain,
    validate_views,
    write_pseudo_dataset,
)
from wakemodel.synthetic import generate_dataset, render_chip
from wakemodel.train import TrainConfig
from wakemodel.tta import predict_views

SIZE = 64
"""Side of the hand-drawn network inputs."""

PRIOR = np.array([[0.2, 0.3], [0.8, 0.7], [0.7, 0.9]])
"""The fixed guess of the fake reader where nothing stands out, in the view's own frame."""


class _ClearWakeReader:
    """A fake model: reads a hand-drawn wake exactly, guesses a fixed answer on noise.

    Where one pixel stands out it returns that pixel as the vertex and the
    farthest line pixel as both wake ends: a reading that follows the chip under
    any flip or rotation, so the 8 views agree. Elsewhere (noise) it returns
    :data:`PRIOR` in the view's own frame, as a model falls back on its prior,
    so the views disagree.
    """

    image_size = SIZE

    def __init__(self, wake_score: float = 0.9) -> None:
        self.wake_score = wake_score

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keypoints = np.empty((len(images), 3, 2))
        for i, image in enumerate(images[:, 0]):
            if image.max() - np.percentile(image, 99) > 0.25:
                row, col = np.unravel_index(int(image.argmax()), image.shape)
                rows, cols = np.nonzero((image > 0.5) & (image < 0.95))
                far = int(np.argmax((cols - col) ** 2 + (rows - row) ** 2))
                vertex, end = (col + 0.5, row + 0.5), (cols[far] + 0.5, rows[far] + 0.5)
                keypoints[i] = np.array([vertex, end, end]) / SIZE
            else:
                keypoints[i] = PRIOR
        return keypoints, np.full((len(images), 3), self.wake_score)


def _wake_and_noise() -> np.ndarray:
    """float32 [2, 1, S, S]: a clean drawn wake (vertex at pixel (20, 40)) and pure noise."""
    clean = np.full((SIZE, SIZE), 0.2, dtype=np.float32)
    for t in np.linspace(0.0, 1.0, 80):
        clean[round(40 - 28 * t), round(20 + 32 * t)] = 0.7
    clean[40, 20] = 1.0
    noise = np.random.default_rng(0).normal(0.5, 0.05, (SIZE, SIZE)).astype(np.float32)
    return np.stack([clean, noise])[:, None]


def test_reward_keeps_a_clean_wake_and_rejects_noise_whose_views_disagree() -> None:
    images = _wake_and_noise()
    keypoints, visibility, spread = predict_views(_ClearWakeReader(), images)
    assert keypoints.shape == (8, 2, 3, 2) and visibility.shape == (8, 2, 3)
    assert np.isnan(spread).all()  # the reader gives no keypoint std
    sizes = np.array([[320.0, 320.0], [320.0, 320.0]])
    clean, noise = agreement(keypoints, visibility, sizes, [Path("a.png"), Path("b.png")], Reward())
    assert clean.kept and not noise.kept
    # The clean chip's views map back onto one reading: the vertex pixel's centre.
    assert clean.vertex_spread_px < 1e-6 and clean.heading_spread_deg < 1e-6
    np.testing.assert_allclose(clean.keypoints_px[0], np.array([20.5, 40.5]) * 320 / SIZE)
    assert noise.vertex_spread > 0.1 and noise.heading_spread_deg > 30.0


def test_pseudo_label_is_the_median_of_the_views() -> None:
    images = _wake_and_noise()[:1]
    keypoints, visibility, _ = predict_views(_ClearWakeReader(), images)
    stray = keypoints.copy()
    stray[5, 0, 0] += 0.3  # one view puts the vertex elsewhere
    sizes = np.array([[320.0, 320.0]])
    (agreed,) = agreement(keypoints, visibility, sizes, [Path("a.png")], Reward())
    (with_stray,) = agreement(stray, visibility, sizes, [Path("a.png")], Reward())
    np.testing.assert_allclose(with_stray.keypoints_px, agreed.keypoints_px)
    assert with_stray.vertex_spread_px > 30.0  # the stray view still counts as disagreement


def test_reward_rejects_agreeing_views_with_a_low_wake_score() -> None:
    images = _wake_and_noise()[:1]
    keypoints, visibility, _ = predict_views(_ClearWakeReader(wake_score=0.2), images)
    (chip,) = agreement(keypoints, visibility, np.array([[64.0, 64.0]]), [Path("a.png")], Reward())
    assert chip.heading_spread_deg < 1e-6 and chip.wake_score == pytest.approx(0.2)
    assert not chip.kept
    assert agreement(
        keypoints, visibility, np.array([[64.0, 64.0]]), [Path("a.png")], Reward(min_wake_score=0.1)
    )[0].kept


def _chip(
    name: str,
    vertex_spread_px: float,
    heading_spread_deg: float,
    wake_score: float = 0.9,
    wake_contrast: float = float("nan"),
) -> ChipAgreement:
    """A 300 x 400 px chip (diagonal 500 px) with these spreads, judged as `agreement` does."""
    reward = Reward()
    kept = (
        vertex_spread_px <= reward.max_vertex_spread * 500
        and heading_spread_deg <= reward.max_heading_spread_deg
        and wake_score >= reward.min_wake_score
    )
    return ChipAgreement(
        source=Path(name),
        width=300,
        height=400,
        keypoints_px=np.array([[10.0, 20.0], [200.0, 300.0], [250.0, 350.0]]),
        visible=np.ones(3, dtype=bool),
        wake_score=wake_score,
        vertex_spread_px=vertex_spread_px,
        heading_deg=45.0,
        heading_spread_deg=heading_spread_deg,
        kept=kept,
        wake_contrast=wake_contrast,
    )


def test_min_kept_fraction_keeps_the_most_agreeing_chips_first() -> None:
    chips = [
        _chip("vertex-2x.png", vertex_spread_px=40.0, heading_spread_deg=1.0),  # 2x the limit
        _chip("heading-3x.png", vertex_spread_px=1.0, heading_spread_deg=15.0),  # 3x
        _chip("within.png", vertex_spread_px=5.0, heading_spread_deg=2.0),
        _chip("both-1.5x.png", vertex_spread_px=30.0, heading_spread_deg=7.5),  # 1.5x
        _chip("faint.png", vertex_spread_px=0.0, heading_spread_deg=0.0, wake_score=0.1),
        _chip("unread.png", vertex_spread_px=float("nan"), heading_spread_deg=float("nan")),
    ]
    assert [c.kept for c in chips] == [False, False, True, False, False, False]
    fixed = keep_most_agreeing(chips, Reward())  # 0: the thresholds stay fixed
    assert [c.kept for c in fixed] == [c.kept for c in chips]

    half = keep_most_agreeing(chips, Reward(min_kept_fraction=0.5))  # 3 of 6
    kept_names = [c.source.name for c in half if c.kept]
    assert kept_names == ["vertex-2x.png", "within.png", "both-1.5x.png"]
    assert [c.source for c in half] == [c.source for c in chips]  # order and fields kept
    assert half[0].vertex_spread_px == 40.0 and not chips[0].kept  # the input is not changed

    # 0.4 x 6 = 2.4: three chips. 0.7 x 10 is 7.000000000000001 in floating point: seven, not eight.
    assert sum(c.kept for c in keep_most_agreeing(chips, Reward(min_kept_fraction=0.4))) == 3
    ten = chips[:4] * 2 + chips[4:]  # eight eligible chips
    assert sum(c.kept for c in keep_most_agreeing(ten, Reward(min_kept_fraction=0.7))) == 7

    everything = keep_most_agreeing(chips, Reward(min_kept_fraction=1.0))
    # The faint chip and the one without spreads are never kept.
    assert [c.kept for c in everything] == [True, True, True, True, False, False]


def test_evidence_weight_ranks_the_kept_share_by_the_image_contrast_too() -> None:
    def chips_with(contrasts: list[float]) -> list[ChipAgreement]:
        spreads = [(40.0, 1.0), (1.0, 15.0), (5.0, 2.0), (30.0, 7.5), (60.0, 1.0), (1.0, 30.0)]
        return [  # disagreement 2x, 3x, within, 1.5x, 3x, 6x: ranks 3, 4.5, 1, 2, 4.5, 6
            _chip(f"c{i}.png", v, h, wake_contrast=c)
            for i, ((v, h), c) in enumerate(zip(spreads, contrasts, strict=True))
        ]

    def kept(chips: list[ChipAgreement], weight: float) -> list[str]:
        reward = Reward(min_kept_fraction=0.5, evidence_weight=weight)
        return [c.source.name for c in keep_most_agreeing(chips, reward) if c.kept]

    chips = chips_with([1.0, 9.0, 2.0, 0.5, 8.0, float("nan")])
    assert kept(chips, 0.0) == ["c0.png", "c2.png", "c3.png"]  # agreement alone
    # Contrast ranks 4, 1, 3, 5, 2, 6 (NaN last): sums with weight 2 are 11, 6.5, 7, 12, 8.5, 18.
    assert kept(chips, 2.0) == ["c1.png", "c2.png", "c4.png"]
    # The chip within the thresholds is kept whatever its contrast; the wake score stays a limit.
    faint = chips_with([1.0, 9.0, 0.0, 0.5, 8.0, 10.0])
    faint[5] = replace(faint[5], wake_score=0.1)
    assert kept(faint, 100.0) == ["c1.png", "c2.png", "c4.png"]
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(InputError, match="evidence_weight"):
            Reward(evidence_weight=bad)


class _ConstantReader:
    """A fake model: the same keypoints in every view's frame; wake score 0.9 unless the
    input is flat (0.1)."""

    image_size = 32

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keypoints = np.broadcast_to([[0.3, 0.6], [0.9, 0.2], [0.7, 0.95]], (len(images), 3, 2))
        flat = images.reshape(len(images), -1).std(axis=1) < 0.01
        return keypoints, np.where(flat[:, None], 0.1, 0.9) * np.ones((1, 3))


def test_pseudo_labels_round_trip_through_the_dataset_loader(tmp_path: Path) -> None:
    folder = tmp_path / "unlabeled"
    folder.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (64, 96), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 255, (120, 80), dtype=np.uint8)).save(folder / "b.tif")
    Image.fromarray(np.full((50, 70), 90, dtype=np.uint8)).save(folder / "flat.png")
    paths = sorted(folder.iterdir())
    chips = pseudo_label(_ConstantReader(), paths, Reward(1.0, 180.0, 0.5))
    assert [(c.source.name, c.kept) for c in chips] == [
        ("a.png", True),
        ("b.tif", True),
        ("flat.png", False),
    ]
    write_pseudo_dataset(chips, tmp_path / "pseudo")

    records = scan_dataset(tmp_path / "pseudo")
    assert [r.image_path.name for r in records] == ["a.png", "b.tif"]
    dataset = WakeDataset(records, image_size=32)
    for row, (record, chip) in enumerate(zip(records, chips[:2], strict=True)):
        assert (record.width, record.height) == (chip.width, chip.height)
        assert record.image_path.read_bytes() == chip.source.read_bytes()
        np.testing.assert_array_equal(record.visible, chip.visible)
        np.testing.assert_allclose(
            record.keypoints_px[record.visible], chip.keypoints_px[chip.visible], atol=0.006
        )
        expected = chip.keypoints_px / [chip.width, chip.height]
        np.testing.assert_allclose(
            dataset.keypoints[row][chip.visible], expected[chip.visible], atol=1e-4
        )
        stored = json.loads(record.annotation_path.read_text())["agreement"]
        assert stored["kept"] is True
        assert stored["heading_spread_deg"] == pytest.approx(chip.heading_spread_deg, abs=1e-3)
        # The image's own evidence, measured on the chip as read, at the consensus reading.
        as_read = np.asarray(Image.open(record.image_path), dtype=np.float32)
        measured = wake_contrast(as_read, chip.keypoints_px[0], chip.heading_deg)
        assert np.isfinite(measured) and chip.wake_contrast == pytest.approx(measured, rel=1e-5)
        assert stored["wake_contrast"] == pytest.approx(chip.wake_contrast, abs=1e-3)
    assert chips[2].wake_contrast == 0.0  # the flat chip: no line anywhere


def _hash_folder(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_default_style_is_byte_identical_to_the_generator_before_styles(tmp_path: Path) -> None:
    root = generate_dataset(
        tmp_path / "d", 6, 5, min_size=48, max_size=80, no_wake_fraction=0.5, style="default"
    )
    # sha256 of the same call with the generator of commit 2f0a134 (before --style).
    assert _hash_folder(root) == "09508cdfd88188d55673f1c939dcef4c326621434b96f35fc93aac95c8d9bcb0"


def test_shifted_style_changes_the_look_not_the_annotation() -> None:
    default = render_chip(np.random.default_rng(3), 120, 90)
    shifted = render_chip(np.random.default_rng(3), 120, 90, style="shifted")
    np.testing.assert_array_equal(default.keypoints_px, shifted.keypoints_px)
    assert not np.array_equal(default.image, shifted.image)
    # Heavier grain: neighbouring pixels differ more.
    grain = [np.abs(np.diff(c.image.astype(float), axis=1)).mean() for c in (default, shifted)]
    assert grain[1] > grain[0]
    with pytest.raises(InputError, match="unknown"):
        render_chip(np.random.default_rng(3), 120, 90, style="real")


def test_cli_synth_style(tmp_path: Path) -> None:
    args = ["synth", "--count", "2", "--min-size", "40", "--max-size", "48", "--workers", "1"]
    plain = CliRunner().invoke(main, [*args, str(tmp_path / "a")])
    shifted = CliRunner().invoke(main, [*args, "--style", "shifted", str(tmp_path / "b")])
    assert plain.exit_code == 0 and shifted.exit_code == 0, shifted.output
    for name in ("synth_000000", "synth_000001"):
        assert (tmp_path / "a" / "annotations" / f"{name}.json").read_text() == (
            tmp_path / "b" / "annotations" / f"{name}.json"
        ).read_text()
        assert (tmp_path / "a" / "imgs" / f"{name}.png").read_bytes() != (
            tmp_path / "b" / "imgs" / f"{name}.png"
        ).read_bytes()


@pytest.mark.parametrize(
    "case",
    ["no labelled folder", "no unlabelled folder", "no images", "no val folder", "no val wake"],
)
def test_cli_bad_folders_are_one_line_errors(tmp_path: Path, synthetic_dir: Path, case) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    images = _images_only(synthetic_dir, tmp_path / "images")
    negatives = tmp_path / "negatives"
    (negatives / "annotations").mkdir(parents=True)
    (negatives / "imgs").symlink_to(synthetic_dir / "imgs")
    for image in images.iterdir():
        (negatives / "annotations" / f"{image.stem}.json").write_text('{"tooltips": []}')
    labeled, unlabeled, val, message = {
        "no labelled folder": (tmp_path / "missing", empty, None, "--labeled"),
        "no unlabelled folder": (synthetic_dir, tmp_path / "missing", None, "--unlabeled"),
        "no images": (synthetic_dir, empty, None, "No images"),
        "no val folder": (synthetic_dir, images, tmp_path / "missing", "--val"),
        "no val wake": (synthetic_dir, images, negatives, "no chip with an annotated wake"),
    }[case]
    out = str(tmp_path / "out")
    args = ["selftrain", "--labeled", str(labeled), "--unlabeled", str(unlabeled), "--out", out]
    result = CliRunner().invoke(main, args if val is None else [*args, "--val", str(val)])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: ") and message in line
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def _images_only(dataset: Path, folder: Path) -> Path:
    folder.mkdir()
    for image in (dataset / "imgs").iterdir():
        (folder / image.name).write_bytes(image.read_bytes())
    return folder


def _tiny_train(**overrides) -> TrainConfig:
    settings = {
        "epochs": 1,
        "batch_size": 8,
        "image_size": 32,
        "accelerator": "cpu",
        "workers": 0,
        "pretrained": False,
        "progress_bar": False,
        "logger": "none",
        "warmup_epochs": 0,
    }
    settings.update(overrides)
    return TrainConfig(**settings)


def test_rerun_skips_finished_rounds_and_refuses_other_settings(
    tmp_path: Path, synthetic_dir: Path, make_synthetic_dir
) -> None:
    unlabeled = _images_only(make_synthetic_dir(count=8, seed=9), tmp_path / "unlabeled")
    config = SelfTrainConfig(
        synthetic_dir, unlabeled, tmp_path / "out", rounds=1, train=_tiny_train()
    )
    first = selftrain(config)
    assert [r.round for r in first.rounds] == [0, 1] and not any(r.resumed for r in first.rounds)
    assert first.rounds[1].unlabeled_chips == 8
    assert (tmp_path / "out" / "round_1" / "agreement.json").is_file()
    assert scan_dataset(tmp_path / "out" / "round_1" / "train_data")  # links resolve
    stamps = {r.round: r.checkpoint.stat().st_mtime_ns for r in first.rounds}

    again = selftrain(config)
    assert all(r.resumed for r in again.rounds)
    assert [r.checkpoint for r in again.rounds] == [r.checkpoint for r in first.rounds]
    assert {r.round: r.checkpoint.stat().st_mtime_ns for r in again.rounds} == stamps

    (tmp_path / "out" / "round_1" / ROUND_FILE).unlink()  # an unfinished round is redone
    redone = selftrain(config)
    assert redone.rounds[0].resumed and not redone.rounds[1].resumed

    # A round summary written before the 8-view validation gets it on the next call.
    mean_key = f"{VIEW_METRICS_PREFIX}heading_error_mean_deg"
    assert config.select_metric == mean_key
    measured = redone.rounds[0].val_metrics[mean_key]
    assert np.isfinite(measured)
    summary_path = tmp_path / "out" / "round_0" / ROUND_FILE
    summary = json.loads(summary_path.read_text())
    summary["val_metrics"] = {
        k: v for k, v in summary["val_metrics"].items() if not k.startswith(VIEW_METRICS_PREFIX)
    }
    summary_path.write_text(json.dumps(summary))
    refilled = selftrain(config)
    assert refilled.rounds[0].val_metrics[mean_key] == pytest.approx(measured, rel=1e-5)
    assert mean_key in json.loads(summary_path.read_text())["val_metrics"]

    # A run from before min_kept_fraction, evidence_weight and val_dir existed (fixed
    # thresholds, ranked by agreement, a labelled split) is the same run.
    settings_path = tmp_path / "out" / "settings.json"
    settings = json.loads(settings_path.read_text())
    del settings["reward"]["min_kept_fraction"], settings["reward"]["evidence_weight"]
    del settings["val_dir"]
    settings_path.write_text(json.dumps(settings))
    assert all(r.resumed for r in selftrain(config).rounds)

    for reward in (
        Reward(max_heading_spread_deg=30.0),
        Reward(min_kept_fraction=0.5),
        Reward(evidence_weight=1.0),
    ):
        other = replace(config, reward=reward)
        with pytest.raises(InputError, match="other settings \\(reward\\)"):
            selftrain(other)


def test_val_dir_validates_every_round_and_all_labelled_chips_train(
    tmp_path: Path, synthetic_dir: Path, make_synthetic_dir
) -> None:
    val = make_synthetic_dir(count=6, seed=5)
    unlabeled = _images_only(make_synthetic_dir(count=4, seed=9), tmp_path / "unlabeled")
    config = SelfTrainConfig(
        synthetic_dir, unlabeled, tmp_path / "out", rounds=1, train=_tiny_train(), val_dir=val
    )
    result = selftrain(config)
    labeled, val_records = scan_dataset(synthetic_dir), scan_dataset(val)
    mean_key = f"{VIEW_METRICS_PREFIX}heading_error_mean_deg"
    for r in result.rounds:
        splits = tmp_path / "out" / f"round_{r.round}" / "train_data" / "splits"
        train_names = (splits / "train.txt").read_text().split()
        assert sum(not name.startswith("p-") for name in train_names) == len(labeled) * (
            config.labeled_repeats if r.round else 1
        )
        assert (splits / "val.txt").read_text().split() == [f"v-{v.name}" for v in val_records]
        on_val = validate_views(r.checkpoint, val_records, data_dir=val, accelerator="cpu")
        assert r.val_metrics[mean_key] == pytest.approx(on_val[mean_key], rel=1e-5)
    settings = json.loads((tmp_path / "out" / "settings.json").read_text())
    assert settings["val_dir"] == str(val.resolve())
    assert settings["val_fraction"] is None  # nothing is split off, so it is not a setting
    resumed = selftrain(replace(config, val_fraction=0.5))
    assert [r.checkpoint for r in resumed.rounds] == [r.checkpoint for r in result.rounds]
    with pytest.raises(InputError, match="other settings \\(val_dir, val_fraction\\)"):
        selftrain(replace(config, val_dir=None))


def test_round_checkpoint_last_takes_the_last_epoch(
    tmp_path: Path, synthetic_dir: Path, make_synthetic_dir
) -> None:
    unlabeled = _images_only(make_synthetic_dir(count=4, seed=9), tmp_path / "unlabeled")
    config = SelfTrainConfig(
        synthetic_dir,
        unlabeled,
        tmp_path / "out",
        rounds=0,
        train=_tiny_train(epochs=2),
        round_checkpoint="last",
    )
    (round_0,) = selftrain(config).rounds
    assert round_0.checkpoint.name == "last.ckpt"
    assert np.isfinite(round_0.val_metrics["val/loss"])  # the last epoch's
    with pytest.raises(InputError, match="other settings \\(round_checkpoint\\)"):
        selftrain(replace(config, round_checkpoint="best"))
    with pytest.raises(InputError, match="--round-checkpoint 'first'"):
        replace(config, round_checkpoint="first")


def test_choose_round_takes_the_earliest_lowest_finite_metric() -> None:
    def round_with(index: int, value: float | None) -> RoundResult:
        metrics = {} if value is None else {"m": value}
        return RoundResult(
            round=index, checkpoint=Path(f"r{index}.ckpt"), val_metrics=metrics, train_chips=1
        )

    rounds = [
        round_with(0, 12.0),
        round_with(1, float("nan")),
        round_with(2, 7.5),
        round_with(3, 7.5),
        round_with(4, None),
    ]
    assert choose_round(rounds, "m") == 2
    assert choose_round(rounds, "absent") == 0
    assert choose_round(rounds[:2], "m") == 0


def _easy_dataset(root: Path, count: int, seed: int) -> Path:
    """``count`` easy 64 px chips: a bright vessel and two bright arms on a dim, grainy sea."""
    rng = np.random.default_rng(seed)
    (root / "imgs").mkdir(parents=True)
    (root / "annotations").mkdir()
    for index in range(count):
        image = rng.integers(30, 60, (64, 64)).astype(np.uint8)
        vertex = rng.uniform(18.0, 46.0, 2)
        course = np.radians(rng.uniform(0.0, 360.0))
        points = [vertex]
        for side in (-1.0, 1.0):
            angle = course + np.pi + side * np.radians(20.0)
            direction = np.array([np.sin(angle), -np.cos(angle)])
            end = np.clip(vertex + rng.uniform(16.0, 22.0) * direction, 1.0, 63.0)
            for t in np.linspace(0.0, 1.0, 60):
                x, y = (vertex + t * (end - vertex)).astype(int)
                image[y, x] = 190
            points.append(end)
        x, y = vertex.astype(int)
        image[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2] = 255
        Image.fromarray(image).save(root / "imgs" / f"easy_{index:04d}.png")
        tooltips = [{"x": round(float(px), 2), "y": round(float(py), 2)} for px, py in points]
        (root / "annotations" / f"easy_{index:04d}.json").write_text(
            json.dumps({"tooltips": tooltips})
        )
    return root


@pytest.mark.slow
def test_two_rounds_improve_on_round_0_on_an_easy_set(tmp_path: Path) -> None:
    labeled = _easy_dataset(tmp_path / "labeled", 32, 1)
    truth = _easy_dataset(tmp_path / "truth", 40, 2)
    heldout = _easy_dataset(tmp_path / "heldout", 40, 3)
    unlabeled = _images_only(truth, tmp_path / "unlabeled")
    config = SelfTrainConfig(
        labeled,
        unlabeled,
        tmp_path / "out",
        rounds=2,
        train=_tiny_train(epochs=25, batch_size=4, lr=3e-3, deterministic=True, seed=1),
        reward=Reward(max_vertex_spread=0.05, max_heading_spread_deg=15.0),
    )
    result = selftrain(config)
    assert all(r.kept_chips > 0 for r in result.rounds[1:])
    heading = [
        np.nanmedian(evaluate(r.checkpoint, heldout, accelerator="cpu").errors["heading_error_deg"])
        for r in result.rounds
    ]
    assert min(heading[1:]) < heading[0], heading
