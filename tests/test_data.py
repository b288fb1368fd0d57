"""Tests of wakemodel.records and wakemodel.data: annotations, scanning, splits, datasets."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from chips import chip_pixels
from PIL import Image
from pytorch_lightning.accelerators import CPUAccelerator, CUDAAccelerator, MPSAccelerator

from wakemodel import datamodule as datamodule_module
from wakemodel import preprocess
from wakemodel.data import WakeDataset
from wakemodel.datamodule import WakeDataModule
from wakemodel.errors import InputError, WakeModelError
from wakemodel.records import WakeRecord, scan_dataset, split_records

SIZE = 32


def write_sample(
    root: Path,
    name: str,
    points: list[tuple[float, float]] | None = None,
    size: tuple[int, int] = (48, 40),
    image: Image.Image | None = None,
    ext: str = ".png",
    annotation: object | None = None,
) -> None:
    """Write ROOT/imgs/NAME.ext and ROOT/annotations/NAME.json."""
    points = [(20, 15), (5, 30), (40, 35)] if points is None else points
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    if image is None:
        image = Image.fromarray(chip_pixels(*size, points[0]))
    image.save(root / "imgs" / f"{name}{ext}")
    if annotation is None:
        annotation = {"tooltips": [{"x": x, "y": y} for x, y in points]}
    text = annotation if isinstance(annotation, str) else json.dumps(annotation)
    (root / "annotations" / f"{name}.json").write_text(text)


def fake_records(count: int) -> list[WakeRecord]:
    """Records with fake paths, for split tests."""
    return [
        WakeRecord(
            Path(f"imgs/chip_{i:03d}.png"),
            Path(f"annotations/chip_{i:03d}.json"),
            100,
            100,
            np.zeros((3, 2), dtype=np.float32),
            np.array([True, True, False]),
        )
        for i in range(count)
    ]


def test_two_point_sample_is_padded_with_invisible_slot(tmp_path: Path) -> None:
    write_sample(tmp_path, "a", points=[(10, 12), (30, 25)])
    write_sample(tmp_path, "b", points=[(11, 13), (2, 3), (40, 35)])
    record_a, record_b = scan_dataset(tmp_path)
    assert (record_a.width, record_a.height) == (48, 40)
    assert record_a.visible.tolist() == [True, True, False]
    np.testing.assert_array_equal(record_a.keypoints_px, [[10, 12], [30, 25], [0, 0]])
    assert record_a.keypoints_px.dtype == np.float32
    assert record_b.visible.tolist() == [True, True, True]
    np.testing.assert_array_equal(record_b.keypoints_px, [[11, 13], [2, 3], [40, 35]])
    assert record_a.name == "a"
    assert record_a.annotation_path == tmp_path / "annotations" / "a.json"


def test_empty_tooltips_is_a_chip_without_a_wake(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_sample(tmp_path, "empty", annotation={"tooltips": []})
    write_sample(tmp_path, "wake", points=[(10, 12), (30, 25)])
    write_sample(tmp_path, "onepoint", points=[(3, 4)])
    with caplog.at_level(logging.INFO, logger="wakemodel.records"):
        empty, wake = scan_dataset(tmp_path)
    assert empty.name == "empty" and not empty.has_wake and wake.has_wake
    assert empty.visible.tolist() == [False, False, False]
    assert empty.keypoints_px.dtype == np.float32
    np.testing.assert_array_equal(empty.keypoints_px, np.zeros((3, 2)))
    np.testing.assert_array_equal(empty.keypoints_norm, np.zeros((3, 2)))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "onepoint.json" in warnings[0] and "1 keypoint" in warnings[0]
    summaries = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert "kept 2 (1 without a wake), skipped 1" in summaries[0]
    sample = WakeDataset([empty], SIZE)[0]
    assert not sample["visible"].any()
    assert torch.equal(sample["keypoints"], torch.zeros(3, 2))


def test_only_chips_without_a_wake_are_usable(tmp_path: Path) -> None:
    for i in range(3):
        write_sample(tmp_path, f"empty{i}", annotation={"tooltips": []})
    assert [record.has_wake for record in scan_dataset(tmp_path)] == [False] * 3


def test_chips_without_a_wake_go_through_training_augmentation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from wakemodel.augment import WakeAugmentation
    from wakemodel.synthetic import generate_dataset, no_wake_indices

    root = generate_dataset(tmp_path / "ds", 12, 2, min_size=64, max_size=96, no_wake_fraction=0.5)
    negatives = no_wake_indices(12, 2, 0.5)
    assert 0 < len(negatives) < 12
    records = scan_dataset(root)
    assert [i for i, record in enumerate(records) if not record.has_wake] == negatives
    dataset = WakeDataset(records, SIZE, augment=WakeAugmentation(SIZE))
    torch.manual_seed(0)
    for _ in range(3):
        for index in range(len(dataset)):
            sample = dataset[index]
            assert sample["image"].shape == (1, SIZE, SIZE)
            if index in negatives:
                assert not sample["visible"].any()
                assert torch.equal(sample["keypoints"], torch.zeros(3, 2))
    assert any(dataset[i]["visible"].any() for i in range(len(dataset)) if i not in negatives)

    with caplog.at_level(logging.INFO, logger="wakemodel.datamodule"):
        module = WakeDataModule(
            root, image_size=SIZE, batch_size=12, num_workers=0, split=(1.0, 0.0, 0.0)
        )
        batch = next(iter(module.train_dataloader()))
    assert isinstance(module.train_dataset.augment, WakeAugmentation)
    assert int((~batch["visible"].any(dim=1)).sum()) == len(negatives)
    assert (batch["keypoints"][~batch["visible"]] == 0).all()
    split_logs = [r.getMessage() for r in caplog.records if "Split" in r.getMessage()]
    assert f"train 12 ({len(negatives)} without a wake), val 0, test 0" in split_logs[0]


def test_targets_are_normalised_by_original_size(tmp_path: Path) -> None:
    points = [(20.0, 15.0), (6.0, 30.0), (40.0, 36.0)]
    write_sample(tmp_path, "small", points=points, size=(48, 40))
    write_sample(tmp_path, "large", points=[(2 * x, 2 * y) for x, y in points], size=(96, 80))
    small, large = WakeDataset(
        sorted(scan_dataset(tmp_path), key=lambda r: r.name == "large"), SIZE
    )
    expected = torch.tensor([[x / 48, y / 40] for x, y in points])
    torch.testing.assert_close(small["keypoints"], expected)
    torch.testing.assert_close(large["keypoints"], expected)
    torch.testing.assert_close(large["orig_size"], torch.tensor([96.0, 80.0]))


def test_bad_samples_are_skipped_with_one_warning_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_sample(tmp_path, "good1")
    write_sample(tmp_path, "good2", points=[(3, 4), (30, 20)])
    write_sample(tmp_path, "truncated")
    truncated = tmp_path / "imgs" / "truncated.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    write_sample(tmp_path, "garbage")
    (tmp_path / "imgs" / "garbage.png").write_bytes(b"\x89PNG nonsense")
    write_sample(tmp_path, "badjson", annotation="{not json")
    write_sample(tmp_path, "notips", annotation={"points": []})
    write_sample(tmp_path, "onepoint", points=[(3, 4)])
    write_sample(tmp_path, "fourpoints", points=[(3, 4), (5, 6), (7, 8), (9, 10)])
    write_sample(tmp_path, "outside", points=[(3, 4), (49, 20)])
    write_sample(tmp_path, "negative", points=[(3, -1), (4, 20)])
    second_point = {"x": 1, "y": 2}
    write_sample(tmp_path, "nan", annotation={"tooltips": [{"x": math.nan, "y": 3}, second_point]})
    write_sample(tmp_path, "stringx", annotation={"tooltips": [{"x": "3", "y": 3}, second_point]})
    write_sample(tmp_path, "noimage")
    (tmp_path / "imgs" / "noimage.png").unlink()
    write_sample(tmp_path, "noannotation")
    (tmp_path / "annotations" / "noannotation.json").unlink()
    (tmp_path / "imgs" / "notes.txt").write_text("not a chip")
    Image.fromarray(chip_pixels(48, 40, (20, 15))).save(tmp_path / "imgs" / "good1.tif")

    with caplog.at_level(logging.INFO, logger="wakemodel.records"):
        records = scan_dataset(tmp_path)

    assert [record.name for record in records] == ["good1", "good2"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    expected = {
        "imgs/truncated.png": "unreadable image",
        "imgs/garbage.png": "unreadable image",
        "annotations/badjson.json": "malformed JSON",
        "annotations/notips.json": "missing 'tooltips'",
        "annotations/onepoint.json": "1 keypoint (use 0 for a chip without a wake, or 2-3)",
        "annotations/fourpoints.json": "more than 3 keypoints",
        "annotations/outside.json": "outside the image",
        "annotations/negative.json": "outside the image",
        "annotations/nan.json": "NaN",
        "annotations/stringx.json": "malformed keypoint",
        "annotations/noimage.json": "no image",
        "imgs/noannotation.png": "no annotation",
        "imgs/good1.tif": "duplicate image name",
    }
    assert len(warnings) == len(expected)
    for filename, reason in expected.items():
        matching = [w for w in warnings if str(tmp_path / filename) in w]
        assert len(matching) == 1, filename
        assert reason in matching[0]
        assert "\n" not in matching[0]
    summaries = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(summaries) == 1
    assert "kept 2, skipped 13" in summaries[0]
    assert "unreadable image: 2" in summaries[0]


def test_missing_directory_is_one_actionable_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(WakeModelError) as raised:
        scan_dataset(missing)
    message = str(raised.value)
    assert str(missing) in message
    assert "python cli.py download" in message
    assert "python cli.py synth" in message
    assert "\n" not in message
    (tmp_path / "imgs").mkdir()
    with pytest.raises(WakeModelError, match="annotations"):
        scan_dataset(tmp_path)


def test_no_usable_samples_is_an_error(tmp_path: Path) -> None:
    write_sample(tmp_path, "onepoint", points=[(3, 4)])
    with pytest.raises(WakeModelError) as raised:
        scan_dataset(tmp_path)
    message = str(raised.value)
    assert str(tmp_path) in message
    assert "kept 0, skipped 1" in message
    assert "python cli.py synth" in message


def test_split_is_deterministic_and_disjoint() -> None:
    records = fake_records(100)
    first = split_records(records, seed=3)
    again = split_records(list(reversed(records)), seed=3)
    other = split_records(records, seed=4)
    names = {split: [r.name for r in part] for split, part in first.items()}
    assert {split: len(part) for split, part in names.items()} == {
        "train": 80,
        "val": 10,
        "test": 10,
    }
    assert names == {split: [r.name for r in part] for split, part in again.items()}
    assert names["val"] != [r.name for r in other["val"]]
    assert set(names["train"]) | set(names["val"]) | set(names["test"]) == {r.name for r in records}
    assert not set(names["train"]) & set(names["val"])
    assert not set(names["train"]) & set(names["test"])
    assert not set(names["val"]) & set(names["test"])
    with pytest.raises(InputError, match="split"):
        split_records(records, split=(0.5, 0.2, 0.2))


def make_dataset(root: Path, count: int) -> None:
    for i in range(count):
        write_sample(root, f"chip_{i:02d}", points=[(10 + i, 12), (30, 25)])


def test_split_files(tmp_path: Path) -> None:
    make_dataset(tmp_path / "ds", 6)
    (tmp_path / "train.txt").write_text("chip_00\nchip_01.png\n\n# comment\nchip_02\nunknown\n")
    (tmp_path / "val.txt").write_text("chip_03\n")
    (tmp_path / "test.txt").write_text("chip_04\nchip_05\n")
    module = WakeDataModule(
        tmp_path / "ds",
        image_size=SIZE,
        batch_size=2,
        num_workers=0,
        split_files={s: tmp_path / f"{s}.txt" for s in ("train", "val", "test")},
    )
    module.setup()
    names = {
        split: [r.name for r in getattr(module, f"{split}_dataset").records]
        for split in ("train", "val", "test")
    }
    assert names == {
        "train": ["chip_00", "chip_01", "chip_02"],
        "val": ["chip_03"],
        "test": ["chip_04", "chip_05"],
    }
    (tmp_path / "val.txt").write_text("chip_00\n")
    overlapping = WakeDataModule(
        tmp_path / "ds",
        image_size=SIZE,
        num_workers=0,
        split_files={"train": tmp_path / "train.txt", "val": tmp_path / "val.txt"},
    )
    with pytest.raises(InputError, match="chip_00"):
        overlapping.setup()


@pytest.mark.parametrize("augment", [False, True])
def test_batches_follow_the_contract(tmp_path: Path, augment: bool) -> None:
    make_dataset(tmp_path, 10)
    write_sample(tmp_path, "three", points=[(20, 15), (5, 30), (40, 35)])
    module = WakeDataModule(
        tmp_path, image_size=SIZE, batch_size=4, num_workers=0, seed=1, augment=augment
    )
    assert (module.data_dir, module.image_size, module.batch_size) == (tmp_path, SIZE, 4)
    module.setup("fit")
    assert set(module.datasets) == {"train", "val"}
    assert len(module.train_dataset) + len(module.val_dataset) + len(module.test_dataset) == 11
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].dtype == torch.float32
    assert batch["image"].shape == (4, 1, SIZE, SIZE)
    assert batch["image"].min() >= 0.0 and batch["image"].max() <= 1.0
    assert batch["keypoints"].dtype == torch.float32
    assert batch["keypoints"].shape == (4, 3, 2)
    assert batch["visible"].dtype == torch.bool
    assert batch["visible"].shape == (4, 3)
    assert batch["orig_size"].dtype == torch.float32
    assert batch["orig_size"].shape == (4, 2)
    assert batch["index"].dtype == torch.int64
    visible_points = batch["keypoints"][batch["visible"]]
    assert ((visible_points >= 0) & (visible_points <= 1)).all()
    assert (batch["keypoints"][~batch["visible"]] == 0).all()
    assert len(next(iter(module.val_dataloader()))["index"]) >= 1


def test_worker_process_loads_augmented_batches(tmp_path: Path) -> None:
    make_dataset(tmp_path, 6)
    module = WakeDataModule(tmp_path, image_size=SIZE, batch_size=2, num_workers=1)
    loader = module.train_dataloader()
    assert loader.persistent_workers
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 1, SIZE, SIZE)
    assert batch["keypoints"].shape == (2, 3, 2)


def test_training_order_is_seeded(tmp_path: Path) -> None:
    make_dataset(tmp_path, 12)

    def first_epoch(seed: int) -> list[int]:
        module = WakeDataModule(
            tmp_path, image_size=SIZE, batch_size=3, num_workers=0, seed=seed, augment=False
        )
        return [int(i) for batch in module.train_dataloader() for i in batch["index"]]

    order = first_epoch(0)
    assert order == first_epoch(0)
    assert order != sorted(order)
    assert len(order) == 9  # 10 training chips, the incomplete last batch of 3 is dropped


def test_images_are_decoded_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_dataset(tmp_path, 8)
    calls: list[Path] = []
    real_read_image = preprocess.read_image

    def counting_read_image(path: Path) -> np.ndarray:
        calls.append(Path(path))
        return real_read_image(path)

    monkeypatch.setattr(preprocess, "read_image", counting_read_image)
    module = WakeDataModule(tmp_path, image_size=SIZE, batch_size=2, num_workers=0)
    module.setup("fit")
    module.setup("validate")
    for _ in range(2):
        for loader in (module.train_dataloader(), module.val_dataloader()):
            for _batch in loader:
                pass
    fit_images = [r.image_path for s in ("train", "val") for r in module.datasets[s].records]
    assert sorted(calls) == sorted(fit_images)  # each once; the test split is not decoded
    assert len(fit_images) == 7


def test_setup_decodes_only_the_stage_splits_and_scans_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_dataset(tmp_path, 10)
    scans: list[Path] = []
    decoded: list[str] = []
    real_scan, real_read_image = datamodule_module.scan_dataset, preprocess.read_image

    def counting_scan(root: Path) -> list[WakeRecord]:
        scans.append(Path(root))
        return real_scan(root)

    def counting_read_image(path: Path) -> np.ndarray:
        decoded.append(Path(path).stem)
        return real_read_image(path)

    monkeypatch.setattr(datamodule_module, "scan_dataset", counting_scan)
    monkeypatch.setattr(preprocess, "read_image", counting_read_image)
    module = WakeDataModule(tmp_path, image_size=SIZE, batch_size=2, num_workers=0)
    module.setup("validate")
    assert set(module.datasets) == {"val"}
    assert sorted(decoded) == sorted(r.name for r in module.val_dataset.records)
    module.setup("fit")
    assert set(module.datasets) == {"train", "val"}
    module.setup("test")
    assert set(module.datasets) == {"train", "val", "test"}
    assert len(scans) == 1
    assert sorted(decoded) == sorted(f"chip_{i:02d}" for i in range(10))


@pytest.mark.parametrize(
    ("augment_on", "accelerator", "expected"),
    [
        ("auto", None, "workers"),
        ("auto", CPUAccelerator(), "workers"),
        ("auto", CUDAAccelerator(), "device"),
        ("auto", MPSAccelerator(), "device"),
        ("workers", CUDAAccelerator(), "workers"),
        ("device", CPUAccelerator(), "device"),
    ],
)
def test_augment_on_resolves_from_the_trainer(
    tmp_path: Path, augment_on: str, accelerator: object, expected: str
) -> None:
    module = WakeDataModule(tmp_path, num_workers=0, augment_on=augment_on)
    if accelerator is not None:
        module.trainer = SimpleNamespace(accelerator=accelerator)  # type: ignore[assignment]
    assert module.resolve_augment_on() == expected
    assert WakeDataModule(tmp_path, num_workers=0, augment=False).resolve_augment_on() == "workers"


def test_augment_on_rejects_unknown_places(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="augment_on 'gpu'"):
        WakeDataModule(tmp_path, num_workers=0, augment_on="gpu")  # type: ignore[arg-type]


def test_fit_setup_resolves_device_augmentation(tmp_path: Path) -> None:
    make_dataset(tmp_path, 6)
    module = WakeDataModule(tmp_path, image_size=SIZE, num_workers=0)
    module.trainer = SimpleNamespace(accelerator=CUDAAccelerator())  # type: ignore[assignment]
    module.setup("fit")
    assert module.device_augmentation is not None
    assert module.train_dataset.augment is None


def _rank_module(root: Path, rank: int, augment_on: str) -> WakeDataModule:
    """A data module as process ``rank`` of a 2-process run sees it (fit set up)."""
    module = WakeDataModule(root, image_size=SIZE, num_workers=0, augment_on=augment_on)
    module.trainer = SimpleNamespace(  # type: ignore[assignment]
        accelerator=CPUAccelerator(), training=True, global_rank=rank, world_size=2
    )
    module.setup("fit")
    return module


def test_device_augmentation_differs_between_processes(tmp_path: Path) -> None:
    make_dataset(tmp_path, 6)
    batch = {
        "image": torch.full((4, 1, SIZE, SIZE), 0.5),
        "keypoints": torch.tensor([[[0.5, 0.3], [0.3, 0.8], [0.7, 0.8]]]).repeat(4, 1, 1),
        "visible": torch.ones(4, 3, dtype=torch.bool),
    }

    def augmented(rank: int) -> torch.Tensor:
        torch.manual_seed(0)  # every process is seeded alike (seed_everything)
        return _rank_module(tmp_path, rank, "device").on_after_batch_transfer(batch, 0)["image"]

    assert torch.equal(augmented(0), augmented(0))
    assert not torch.equal(augmented(0), augmented(1))


def test_main_process_augmentation_differs_between_processes(tmp_path: Path) -> None:
    make_dataset(tmp_path, 6)

    def first_batch(rank: int) -> torch.Tensor:
        torch.manual_seed(0)
        return next(iter(_rank_module(tmp_path, rank, "workers").train_dataloader()))["image"]

    assert torch.equal(first_batch(0), first_batch(0))
    assert not torch.equal(first_batch(0), first_batch(1))


def test_image_failing_at_cache_time_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    make_dataset(tmp_path, 3)
    real_read_image = preprocess.read_image

    def failing_read_image(path: Path) -> np.ndarray:
        if Path(path).stem == "chip_01":
            raise WakeModelError(f"Cannot read image {path}: broken")
        return real_read_image(path)

    monkeypatch.setattr(preprocess, "read_image", failing_read_image)
    with caplog.at_level(logging.WARNING, logger="wakemodel.data"):
        dataset = WakeDataset(scan_dataset(tmp_path), SIZE)
    assert [r.name for r in dataset.records] == ["chip_00", "chip_02"]
    assert len(dataset) == 2
    assert dataset.images.shape == (2, 1, SIZE, SIZE)
    assert any("chip_01.png" in r.getMessage() for r in caplog.records)


def test_dataset_applies_augmentation_in_network_pixels(tmp_path: Path) -> None:
    write_sample(tmp_path, "a", points=[(24, 20), (12, 10)])
    seen: dict[str, torch.Tensor] = {}

    def shift_right(
        image: torch.Tensor, keypoints_px: torch.Tensor, visible: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        seen["keypoints_px"] = keypoints_px.clone()
        return image, keypoints_px + torch.tensor([1.0, 0.0]) * visible[:, None], visible

    sample = WakeDataset(scan_dataset(tmp_path), SIZE, augment=shift_right)[0]
    torch.testing.assert_close(
        seen["keypoints_px"], torch.tensor([[16.0, 16.0], [8.0, 8.0], [0.0, 0.0]])
    )
    torch.testing.assert_close(
        sample["keypoints"], torch.tensor([[17 / SIZE, 0.5], [9 / SIZE, 0.25], [0.0, 0.0]])
    )
    torch.testing.assert_close(sample["orig_size"], torch.tensor([48.0, 40.0]))
