"""Queries from tensor files (exact floats, shape/range checks), labels of class-conditional models."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lit_attr.attribution.queries import QueryConfig, QuerySet, build_queries
from lit_attr.data.datasets import load_digits_dataset
from lit_attr.ddpm_module import DDPMModule
from lit_attr.diffusion.unet import UNetConfig
from lit_attr.errors import ConfigError, DataError
from tests.cases import single_thread  # noqa: F401

SMALL = UNetConfig(block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=4)


@pytest.fixture(scope="module")
def ddpm():
    torch.manual_seed(0)
    return DDPMModule(unet=SMALL, diffusion={"num_timesteps": 20}).eval()


@pytest.fixture(scope="module")
def digits():
    return load_digits_dataset()


def exact_images(num=3):
    """Float images that 8-bit PNGs could not hold."""
    return torch.rand(num, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.mark.parametrize("suffix", [".npy", ".pt", ".safetensors"])
def test_query_files_are_read_exactly(tmp_path, ddpm, digits, suffix):
    images = exact_images()
    path = tmp_path / f"queries{suffix}"
    if suffix == ".npy":
        np.save(path, images.numpy())
    elif suffix == ".pt":
        torch.save(images, path)
    else:
        save_file({"images": images}, str(path))
    queries = build_queries(QueryConfig(file=str(path)), ddpm, digits)
    assert torch.equal(queries.images, images) and queries.source == f"file:{path}"
    assert queries.labels is None and queries.trajectory is None


def test_a_single_image_and_float64_are_accepted(tmp_path, ddpm, digits):
    path = tmp_path / "one.npy"
    np.save(path, exact_images(1)[0].double().numpy())
    assert build_queries(QueryConfig(file=str(path)), ddpm, digits).images.shape == (1, 1, 8, 8)


def test_training_images_from_a_file_equal_train_indices_queries(tmp_path, ddpm, digits):
    indices = [5, 500, 1234]
    path = tmp_path / "train.pt"
    torch.save(torch.stack([digits[i]["image"] for i in indices]), path)
    from_file = build_queries(QueryConfig(file=str(path)), ddpm, digits)
    from_indices = build_queries(QueryConfig(train_indices=indices), ddpm, digits)
    assert from_file.fingerprint() == from_indices.fingerprint()


@pytest.mark.parametrize("content, message", [
    (torch.zeros(2, 3, 8, 8), r"shape \(2, 3, 8, 8\).*\(N, 1, 8, 8\)"),
    (torch.zeros(2, 1, 16, 16), "shape"),
    (torch.zeros(0, 1, 8, 8), "N >= 1"),
    (torch.full((2, 1, 8, 8), 200, dtype=torch.uint8), r"uint8.*p / 127.5 - 1"),
    (torch.full((2, 1, 8, 8), 0.5).index_put_((torch.tensor(0),), torch.tensor(255.0)), r"span \[0.5, 255\]"),
    (torch.full((2, 1, 8, 8), float("nan")), "NaN"),
    ({"a": torch.zeros(2, 1, 8, 8), "b": torch.zeros(2)}, "'images'"),
    ({"images": torch.zeros(2, 1, 8, 8), "labels": torch.zeros(3, dtype=torch.int64)}, "labels"),
])
def test_bad_query_files_are_refused_with_the_problem_named(tmp_path, ddpm, digits, content, message):
    path = tmp_path / "bad.pt"
    torch.save(content, path)
    with pytest.raises(DataError, match=message):
        build_queries(QueryConfig(file=str(path)), ddpm, digits)


def test_missing_or_unknown_files_and_two_sources_are_refused(tmp_path, ddpm, digits):
    with pytest.raises(DataError, match="does not exist"):
        build_queries(QueryConfig(file=str(tmp_path / "nope.npy")), ddpm, digits)
    (tmp_path / "q.png.gz").write_bytes(b"x")
    with pytest.raises(DataError, match="unknown file type"):
        build_queries(QueryConfig(file=str(tmp_path / "q.png.gz")), ddpm, digits)
    with pytest.raises(ConfigError, match="at most one"):
        QueryConfig(folder="a", file="b.npy")
    with pytest.raises(ConfigError, match="not class-conditional"):
        build_queries(QueryConfig(labels=[1]), ddpm, digits)


def test_new_query_options_stay_out_of_old_metadata():
    assert set(QueryConfig().metadata()) == {"num_generated", "seed", "num_sampling_steps", "folder", "train_indices"}
    assert QueryConfig(file="q.npy").metadata()["file"] == "q.npy"


def test_query_set_round_trip_keeps_labels(tmp_path):
    queries = QuerySet(exact_images(), "file:x", labels=torch.tensor([1, 0, 2]))
    queries.save(tmp_path / "q.pt")
    loaded = QuerySet.load(tmp_path / "q.pt")
    assert torch.equal(loaded.labels, queries.labels) and loaded.fingerprint() == queries.fingerprint()
    assert QuerySet(exact_images(), "x").fingerprint() != queries.fingerprint()
