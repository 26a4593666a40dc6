"""The two bundled colour datasets: tiles of scikit-learn's and of scikit-image's sample photographs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lit_attr.data import DiffusionDataModule, build_dataset
from lit_attr.data import photos as photos_module
from lit_attr.data.patches import sample_photograph_tiles
from lit_attr.errors import ConfigError


def test_patches_are_block_averaged_tiles_of_the_sample_photographs():
    from sklearn.datasets import load_sample_images

    tiles = sample_photograph_tiles()
    assert tiles.shape == (2080, 3, 8, 8)
    china = torch.tensor(load_sample_images().images[0], dtype=torch.float32).permute(2, 0, 1)
    # tile 41 is row 1, column 1 of china's 26 x 40 grid of 16-pixel tiles: 2 x 2 blocks averaged
    block = china[:, 16:32, 16:32].reshape(3, 8, 2, 8, 2).mean(dim=(2, 4))
    torch.testing.assert_close(tiles[41], block)


def test_photos_are_tiles_of_eight_resized_photographs():
    dataset = build_dataset("photos")
    assert len(dataset) == 2048
    items = [dataset[i] for i in (0, 255, 256, 2047)]
    assert [item["index"] for item in items] == [0, 255, 256, 2047]
    assert [item["label"] for item in items] == [0, 0, 1, 7]
    for item in items:
        assert item["image"].shape == (3, 8, 8) and -1.0 <= item["image"].min() <= item["image"].max() <= 1.0
    # tile 256 + 16 + 3 is row 1, column 3 of the second photograph's 16 x 16 grid
    name, keep = photos_module.PHOTOGRAPHS[1]
    with Image.open(photos_module.scikit_image_data_dir() / name) as photo:
        rgb = photo.convert("RGB")
        crop = int(min(rgb.size) * keep)
        left, top = (rgb.size[0] - crop) // 2, (rgb.size[1] - crop) // 2
        square = np.asarray(rgb.crop((left, top, left + crop, top + crop)).resize((128, 128), Image.Resampling.BOX))
    expected = torch.tensor(square[8:16, 24:32], dtype=torch.float32).permute(2, 0, 1) / 127.5 - 1.0
    torch.testing.assert_close(dataset[256 + 16 + 3]["image"], expected)
    # the photographs differ: their tiles' mean colours are not all alike
    means = torch.stack([dataset[i]["image"].mean() for i in range(0, 2048, 256)])
    assert means.std() > 0.1


def test_photos_datamodule_serves_the_dataset():
    module = DiffusionDataModule(dataset="photos", batch_size=512)
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].shape == (512, 3, 8, 8)


def test_photos_without_scikit_image_names_the_install(monkeypatch):
    monkeypatch.setattr(photos_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="pip install scikit-image"):
        build_dataset("photos")


def test_photos_tile_size_must_divide_the_side():
    with pytest.raises(ConfigError, match="multiple of the tile size"):
        photos_module.photograph_tiles(side=100, size=8)
