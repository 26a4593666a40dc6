"""Datasets with stable indices and the Lightning data modules that serve them."""

from lit_attr.data.datamodules import (
    AttributionDataModule,
    ContiguousShardSampler,
    DiffusionDataModule,
    shard_bounds,
)
from lit_attr.data.datasets import DATASET_NAMES, DatasetConfig, build_dataset, image_shape_for
from lit_attr.data.folders import ImageFolderDataset
from lit_attr.data.index_files import read_index_file, write_index_file
from lit_attr.data.indexed import IndexedDataset, SubsetDataset

__all__ = [
    "DATASET_NAMES",
    "AttributionDataModule",
    "ContiguousShardSampler",
    "DatasetConfig",
    "DiffusionDataModule",
    "ImageFolderDataset",
    "IndexedDataset",
    "SubsetDataset",
    "build_dataset",
    "image_shape_for",
    "read_index_file",
    "shard_bounds",
    "write_index_file",
]
