"""Datasets keep stable indices; loaders, subsets and shard samplers serve each example exactly once."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from PIL import Image
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader

from lit_attr.data import (
    AttributionDataModule,
    ContiguousShardSampler,
    DiffusionDataModule,
    SubsetDataset,
    build_dataset,
    image_shape_for,
    read_index_file,
    write_index_file,
)
from lit_attr.data.cifar import CIFAR_FILES, CIFAR_FOLDER
from lit_attr.errors import ConfigError, DataError

# ---------------------------------------------------------------- helpers


def write_fake_cifar(folder: Path, rows_per_batch: int = 20, seed: int = 0) -> dict[str, tuple]:
    """Write CIFAR-10 python batches with a few random rows; labels cycle through 0..9."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in CIFAR_FILES[:-1]:
        data = rng.integers(0, 256, size=(rows_per_batch, 3072), dtype=np.uint8)
        labels = [int(label) for label in rng.permutation(np.arange(rows_per_batch) % 10)]
        with (folder / name).open("wb") as file:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode()}, file)
        written[name] = (data, labels)
    with (folder / CIFAR_FILES[-1]).open("wb") as file:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)]}, file)
    return written


def as_expected_image(row: np.ndarray) -> torch.Tensor:
    """A CIFAR row (3072,) as the (3, 32, 32) image in [-1, 1] that the dataset must return."""
    return torch.from_numpy(row.reshape(3, 32, 32).astype(np.float32)) / 127.5 - 1.0


def collect(loader: DataLoader) -> dict[int, torch.Tensor]:
    """Map stable index -> image over one pass of a loader."""
    images = {}
    for batch in loader:
        for index, image in zip(batch["index"].tolist(), batch["image"]):
            assert index not in images, f"index {index} served twice"
            images[index] = image
    return images


# ---------------------------------------------------------------- digits


def test_digits_shape_range_and_values():
    dataset = build_dataset("digits")
    assert len(dataset) == 1797
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    assert images.shape == (1797, 1, 8, 8) and images.dtype == torch.float32
    assert images.min() == -1.0 and images.max() == 1.0
    expected = torch.from_numpy(load_digits().images).float().unsqueeze(1) / 8 - 1
    torch.testing.assert_close(images, expected, rtol=0, atol=0)
    assert [dataset[i]["index"] for i in range(len(dataset))] == list(range(1797))


def test_digits_stable_across_builds_and_batch_sizes():
    first, second = build_dataset("digits"), build_dataset("digits")
    for index in (0, 17, 1796):
        assert torch.equal(first[index]["image"], second[index]["image"])
    seen = [
        collect(DataLoader(first, batch_size=size, shuffle=True, generator=torch.Generator().manual_seed(size)))
        for size in (7, 256)
    ]
    assert set(seen[0]) == set(seen[1]) == set(range(1797))
    for index in range(1797):
        assert torch.equal(seen[0][index], seen[1][index])
        assert torch.equal(seen[0][index], first[index]["image"])


def test_random_flip_is_a_seeded_left_right_flip():
    plain, flipped = build_dataset("digits"), build_dataset("digits", random_flip=True)
    torch.manual_seed(0)
    draws = [flipped[3]["image"] for _ in range(40)]
    original = plain[3]["image"]
    assert all(torch.equal(d, original) or torch.equal(d, original.flip(-1)) for d in draws)
    assert sum(torch.equal(d, original) for d in draws) not in (0, 40)
    torch.manual_seed(0)
    assert all(torch.equal(a, flipped[3]["image"]) for a in draws)


# ---------------------------------------------------------------- CIFAR-10 and CIFAR-2


@pytest.mark.parametrize("layout", ["folder", "parent"])
def test_cifar10_reads_both_layouts_and_splits(tmp_path, layout):
    written = write_fake_cifar(tmp_path / CIFAR_FOLDER, rows_per_batch=4)
    data_dir = tmp_path / CIFAR_FOLDER if layout == "folder" else tmp_path
    train = build_dataset("cifar10", data_dir=str(data_dir))
    assert len(train) == 20
    item = train[6]  # data_batch_2, row 2
    assert item["index"] == 6 and item["label"] == written["data_batch_2"][1][2]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    torch.testing.assert_close(item["image"], as_expected_image(written["data_batch_2"][0][2]))
    test = build_dataset("cifar10", data_dir=str(data_dir), train=False)
    assert len(test) == 4 and test[3]["label"] == written["test_batch"][1][3]


def test_cifar10_missing_or_incomplete_folder_names_files_and_fix(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="nowhere") as error:
        build_dataset("cifar10", data_dir=str(missing))
    for text in ("data_batch_1", "data_batch_5", "test_batch", "batches.meta", "--data.data_dir"):
        assert text in str(error.value)
    write_fake_cifar(tmp_path / CIFAR_FOLDER, rows_per_batch=2)
    (tmp_path / CIFAR_FOLDER / "data_batch_3").unlink()
    with pytest.raises(DataError, match="lacks data_batch_3"):
        build_dataset("cifar10", data_dir=str(tmp_path))


def test_cifar2_reproducible_balanced_and_indexed(tmp_path):
    written = write_fake_cifar(tmp_path, rows_per_batch=20)
    all_rows = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    kwargs = {"data_dir": str(tmp_path), "num_per_class": 3}
    first = build_dataset("cifar2", cifar2_seed=5, **kwargs)
    again = build_dataset("cifar2", cifar2_seed=5, **kwargs)
    other = build_dataset("cifar2", cifar2_seed=6, **kwargs)
    assert first.source_indices == again.source_indices == sorted(first.source_indices)
    assert first.source_indices != other.source_indices
    labels = [first[i]["label"] for i in range(len(first))]
    assert sorted(labels) == [1, 1, 1, 7, 7, 7]
    assert [first[i]["index"] for i in range(6)] == list(range(6))
    images = torch.stack([first[i]["image"] for i in range(6)])
    assert images.min() >= -1.0 and images.max() <= 1.0
    for position, source in enumerate(first.source_indices):
        torch.testing.assert_close(first[position]["image"], as_expected_image(all_rows[source]))
    with pytest.raises(DataError, match="num_per_class=50"):
        build_dataset("cifar2", data_dir=str(tmp_path), num_per_class=50)


# ---------------------------------------------------------------- image folders


def test_folder_dataset_grey_rgb_resize_and_order(tmp_path):
    strip = np.zeros((6, 10), dtype=np.uint8)
    strip[:, 2:8] = 255  # the center 6x6 square is white, the side columns black
    (tmp_path / "sub").mkdir()
    Image.fromarray(strip, mode="L").save(tmp_path / "sub" / "b.png")
    Image.new("RGB", (12, 12), (0, 0, 0)).save(tmp_path / "a.JPG")
    (tmp_path / "notes.txt").write_text("not an image")
    grey = build_dataset("folder", data_dir=str(tmp_path), image_size=3, channels=1)
    assert grey.files == ["a.JPG", "sub/b.png"] and len(grey) == 2
    assert grey[1]["index"] == 1 and grey[1]["image"].shape == (1, 3, 3)
    torch.testing.assert_close(grey[1]["image"], torch.ones(1, 3, 3))
    rgb = build_dataset("folder", data_dir=str(tmp_path), image_size=5, channels=3)
    assert rgb[0]["image"].shape == (3, 5, 5) and rgb[0]["image"].dtype == torch.float32
    assert rgb[0]["image"].max() <= -0.9  # black JPEG, up to compression noise
    assert image_shape_for("folder", 5, 3) == (3, 5, 5)


def test_folder_dataset_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist.*--data.data_dir"):
        build_dataset("folder", data_dir=str(tmp_path / "missing"), image_size=4, channels=1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no images.*\.png, \.jpg, \.jpeg"):
        build_dataset("folder", data_dir=str(tmp_path / "empty"), image_size=4, channels=1)


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"name": "folder", "data_dir": "x", "channels": 1}, "--data.image_size"),
        ({"name": "folder", "data_dir": "x", "image_size": 8, "channels": 2}, "--data.channels"),
        ({"name": "folder", "image_size": 8, "channels": 1}, "--data.data_dir"),
        ({"name": "cifar10"}, "--data.data_dir"),
        ({"name": "digits", "image_size": 32}, "--data.image_size=32"),
        ({"name": "mnist"}, "choose one of digits, patches, photos, cifar10, cifar2, folder"),
    ],
)
def test_bad_dataset_arguments_name_the_flag(kwargs, flag):
    with pytest.raises(ConfigError, match=flag.replace(".", r"\.")):
        build_dataset(**kwargs)


# ---------------------------------------------------------------- index files and subsets


def test_index_file_round_trip_and_comments(tmp_path):
    path = tmp_path / "deep" / "subset.txt"
    write_index_file(path, [5, 0, 3])
    assert read_index_file(path, num_examples=6) == [5, 0, 3]
    path.write_text("# header\n\n4  # trailing comment\n  2\n")
    assert read_index_file(path) == [4, 2]


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("1\nabc\n", r"subset.txt:2: 'abc' is not an integer"),
        ("1\n# c\n1\n", r"subset.txt:3: index 1 repeats line 1"),
        ("0\n10\n", r"subset.txt:2: index 10 is out of range.*below 10"),
        ("-1\n", r"subset.txt:1: index -1 is out of range"),
        ("# nothing\n\n", "lists no indices"),
    ],
)
def test_index_file_errors_name_the_line(tmp_path, text, pattern):
    path = tmp_path / "subset.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=pattern):
        read_index_file(path, num_examples=10)


def test_index_file_missing_and_bad_write(tmp_path):
    with pytest.raises(DataError, match="does not exist.*--data.subset_file"):
        read_index_file(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="distinct and non-negative"):
        write_index_file(tmp_path / "x.txt", [1, 1])


def test_subset_keeps_original_indices(tmp_path):
    base = build_dataset("digits")
    path = tmp_path / "subset.txt"
    write_index_file(path, [1700, 3, 42])
    subset = build_dataset("digits", subset_file=str(path))
    assert isinstance(subset, SubsetDataset) and len(subset) == 3
    for position, index in enumerate([1700, 3, 42]):
        assert subset[position]["index"] == index
        assert torch.equal(subset[position]["image"], base[index]["image"])
    write_index_file(path, [1797])
    with pytest.raises(DataError, match="index 1797 is out of range"):
        build_dataset("digits", subset_file=str(path))
    with pytest.raises(DataError, match=r"\[99\] are not in the dataset"):
        SubsetDataset(subset, [3, 99])


# ---------------------------------------------------------------- shard sampler


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("num_examples", [0, 1, 5, 13])
@pytest.mark.parametrize("exclude", [set(), {0, 2, 3}, {12}])
def test_shard_sampler_covers_each_position_once(world_size, num_examples, exclude):
    kept = [p for p in range(num_examples) if p not in exclude]
    shards = [list(ContiguousShardSampler(num_examples, r, world_size, exclude)) for r in range(world_size)]
    assert [p for shard in shards for p in shard] == kept  # contiguous, in order, no duplicates
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert [len(ContiguousShardSampler(num_examples, r, world_size, exclude)) for r in range(world_size)] == [
        len(s) for s in shards
    ]


def test_shard_sampler_accepts_positions_and_checks_rank():
    assert list(ContiguousShardSampler([9, 4, 7], 1, 2, exclude={4})) == [7]
    with pytest.raises(ConfigError, match="rank=2 for world_size=2"):
        ContiguousShardSampler(5, 2, 2)


# ---------------------------------------------------------------- data modules


def test_diffusion_datamodule_batches():
    module = DiffusionDataModule(batch_size=64)
    assert module.image_shape == (1, 8, 8)
    with pytest.raises(RuntimeError, match="setup"):
        module.num_train
    module.setup("fit")
    assert module.num_train == 1797
    batch = next(iter(module.train_dataloader()))
    assert set(batch) == {"index", "image", "label"} and batch["label"].max() == 9
    assert batch["image"].shape == (64, 1, 8, 8) and batch["image"].dtype == torch.float32
    assert batch["index"].shape == (64,) and batch["index"].dtype == torch.int64
    assert batch["index"].tolist() != list(range(64))  # shuffled


def test_datamodules_validate_at_construction_without_reading(tmp_path):
    module = DiffusionDataModule(dataset="folder", data_dir=str(tmp_path / "later"), image_size=16, channels=3)
    assert module.image_shape == (3, 16, 16)
    with pytest.raises(DataError, match="does not exist"):
        module.setup("fit")
    with pytest.raises(ConfigError, match="choose one of"):
        DiffusionDataModule(dataset="svhn")
    with pytest.raises(ConfigError, match="--data.batch_size"):
        AttributionDataModule(batch_size=0)


def test_attribution_datamodule_order_exclusions_and_subsets(tmp_path):
    module = AttributionDataModule(batch_size=500)
    module.setup("predict")
    batches = list(module.predict_dataloader())
    assert [len(b["index"]) for b in batches] == [500, 500, 500, 297]
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(1797))
    module.exclude_indices = range(100, 1797)
    assert torch.cat([b["index"] for b in module.predict_dataloader()]).tolist() == list(range(100))
    write_index_file(tmp_path / "subset.txt", [30, 10, 20])
    subset = AttributionDataModule(subset_file=str(tmp_path / "subset.txt"))
    subset.setup("predict")
    subset.exclude_indices = {10}
    assert next(iter(subset.predict_dataloader()))["index"].tolist() == [30, 20]
    subset.exclude_indices = {11}
    with pytest.raises(DataError, match=r"not in the dataset \(first: \[11\]\)"):
        subset.predict_dataloader()


class _IndexEcho(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return batch["index"]


def test_attribution_datamodule_under_trainer_predict():
    module = AttributionDataModule(batch_size=400)
    module.exclude_indices = range(0, 1797, 2)
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    outputs = trainer.predict(_IndexEcho(), datamodule=module)
    assert torch.cat(outputs).tolist() == list(range(1, 1797, 2))


def test_shard_sampler_survives_lightning_ddp_injection():
    """Lightning must keep the sampler under DDP (else it would split each block again)."""
    from lightning.pytorch.trainer.states import RunningStage

    trainer = Trainer(accelerator="cpu", strategy="ddp", devices=2, logger=False, enable_progress_bar=False)
    module = AttributionDataModule(batch_size=100)
    module.setup("predict")
    module.trainer = trainer  # rank 0 of 2; nothing is launched
    loader = module.predict_dataloader()
    prepared = trainer._data_connector._prepare_dataloader(loader, shuffle=False, mode=RunningStage.PREDICTING)
    assert [p for batch in prepared.batch_sampler for p in batch] == list(range(899))


def test_datamodule_signature_parses_as_cli_flags():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(DiffusionDataModule, "data")
    config = parser.parse_args(["--data.dataset", "folder", "--data.image_size", "16", "--data.channels", "1"])
    assert config.data.dataset == "folder" and config.data.image_size == 16
    with pytest.raises(SystemExit):
        parser.parse_args(["--data.dataset", "svhn"])
