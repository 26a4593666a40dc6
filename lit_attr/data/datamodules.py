"""Lightning data modules: shuffled training batches and unshuffled, sharded attribution batches.

Batches are dicts collated from ``lit_attr.data.datasets`` items: ``"index"`` int64 (B,) of
stable dataset indices, ``"image"`` float32 (B, C, H, W) in [-1, 1], and for CIFAR ``"label"``
int64 (B,).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, DistributedSampler

from lit_attr.data.datasets import DatasetConfig
from lit_attr.data.indexed import IndexedDataset
from lit_attr.data.resumable import ResumableDataLoader
from lit_attr.errors import ConfigError, DataError

DatasetName = Literal["digits", "patches", "photos", "cifar10", "cifar2", "folder"]


def shard_bounds(num_items: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s contiguous block of ``num_items`` items.

    The first ``num_items % world_size`` ranks get one item more than the others.
    """
    base, extra = divmod(num_items, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + int(rank < extra)


class ContiguousShardSampler(DistributedSampler):
    """Yields one rank's contiguous block of dataset positions: no shuffling, padding or duplicates.

    The positions not in ``exclude`` are split into ``world_size`` contiguous blocks whose sizes
    differ by at most one; rank r gets block r, so the union over ranks is every kept position
    exactly once. Ranks may get different lengths (fine for ``Trainer.predict``, which does not
    synchronise per step).

    Subclassing ``DistributedSampler`` (without its ``__init__``) makes Lightning 2.6 keep this
    sampler under DDP even with ``use_distributed_sampler=True``: ``_requires_distributed_sampler``
    is false for a ``DistributedSampler``, so it is not wrapped in
    ``UnrepeatedDistributedSamplerWrapper`` (which would split each block again and drop examples).
    For predict, Lightning only wraps the batch sampler to record ``batch_indices``, which are
    dataset *positions*; use ``batch["index"]`` for stable indices.

    Args:
        positions: the number of examples ``n`` (positions ``0..n-1``) or the positions themselves.
        rank: this process's global rank, in ``[0, world_size)``.
        world_size: the number of processes.
        exclude: positions to skip (e.g. already scored when resuming).
    """

    def __init__(
        self,
        positions: int | Sequence[int],
        rank: int = 0,
        world_size: int = 1,
        exclude: Iterable[int] | None = None,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"Invalid rank={rank} for world_size={world_size}; need 0 <= rank < world_size.")
        items = range(positions) if isinstance(positions, int) else [int(p) for p in positions]
        skip = set() if exclude is None else {int(p) for p in exclude}
        kept = [p for p in items if p not in skip]
        start, stop = shard_bounds(len(kept), rank, world_size)
        self.shard = kept[start:stop]
        self.num_replicas, self.rank, self.epoch, self.seed = world_size, rank, 0, 0
        self.shuffle, self.drop_last, self.dataset = False, False, None
        self.total_size, self.num_samples = len(kept), len(self.shard)

    def __iter__(self) -> Iterator[int]:
        return iter(self.shard)

    def __len__(self) -> int:
        return len(self.shard)


def _check_loader_args(batch_size: int, num_workers: int) -> None:
    if batch_size < 1:
        raise ConfigError(f"--data.batch_size must be >= 1, got {batch_size}.")
    if num_workers < 0:
        raise ConfigError(f"--data.num_workers must be >= 0, got {num_workers}.")


class _IndexedDataModule(LightningDataModule):
    """Shared state: the dataset config, loader settings and the dataset built in ``setup``."""

    def _configure(self, config: DatasetConfig, batch_size: int, num_workers: int) -> None:
        _check_loader_args(batch_size, num_workers)
        self.config, self.batch_size, self.num_workers = config, batch_size, num_workers
        self._dataset: IndexedDataset | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The (C, H, W) shape of every image, known from the arguments alone."""
        return self.config.image_shape

    @property
    def dataset(self) -> IndexedDataset:
        """The dataset built by ``setup``."""
        if self._dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not run yet; call it before using the data.")
        return self._dataset

    @property
    def num_train(self) -> int:
        """The number of training examples (after ``setup``)."""
        return len(self.dataset)

    def setup(self, stage: str | None = None) -> None:
        """Build the dataset once (reads the data)."""
        if self._dataset is None:
            self._dataset = self.config.build()

    def use_dataset(self, dataset: IndexedDataset) -> None:
        """Serve ``dataset`` (the same examples in another form, e.g. cached latents) instead of the built one."""
        if list(dataset.indices) != list(self.dataset.indices):
            raise DataError("use_dataset needs the same examples (stable indices, in order) as the built dataset.")
        self._dataset = dataset

    def _loader(self, **kwargs: object) -> DataLoader:
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            **kwargs,
        )


class DiffusionDataModule(_IndexedDataModule):
    """Training data for the DDPM: shuffled batches of ``{"index", "image"}``.

    Under DDP, Lightning replaces the shuffling with a ``DistributedSampler``.

    Args:
        dataset: which dataset to train on.
        data_dir: CIFAR-10 python folder (or its parent) for cifar10/cifar2; image folder for folder.
        image_size: side of the square images; required for folder, optional (must match) otherwise.
        channels: 1 (grey) or 3 (RGB); required for folder, optional (must match) otherwise.
        subset_file: index file of stable indices to train on (e.g. an LDS subset); items keep their
            original indices.
        batch_size: examples per batch (per device).
        num_workers: data-loader worker processes.
        random_flip: random horizontal flips (App. G.8 of the paper).
        cifar2_seed: seed of the CIFAR-2 subsampling.
        num_per_class: CIFAR-2 examples per class (automobile, horse).
        example_keyed: order each epoch by a keyed hash of the examples' stable indices and draw each example's
            timestep and noise from its own key (``lit_attr.data.resumable``): runs with the same seed on
            overlapping subsets then train their shared examples in the same relative order with the same draws
            (common random numbers for LDS retraining; one process only).
    """

    def __init__(
        self,
        dataset: DatasetName = "digits",
        data_dir: str | None = None,
        image_size: int | None = None,
        channels: int | None = None,
        subset_file: str | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        random_flip: bool = False,
        cifar2_seed: int = 0,
        num_per_class: int = 2500,
        example_keyed: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.example_keyed = example_keyed
        config = DatasetConfig(
            dataset, data_dir, image_size, channels, subset_file, True, random_flip, cifar2_seed, num_per_class
        )
        self._configure(config, batch_size, num_workers)

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches: index (B,), image (B, C, H, W).

        On one process the loader is a ``ResumableDataLoader`` (same orders as ``shuffle=True``, and
        ``--ckpt_path`` continues an interrupted epoch exactly); under DDP Lightning's
        ``DistributedSampler`` shuffles (a resumed run restarts the interrupted epoch's order).
        """
        if self.trainer is not None and self.trainer.world_size > 1:
            if self.example_keyed:
                raise ConfigError("--data.example_keyed true orders the examples on one process; drop it or train "
                                  "with --trainer.devices 1.")
            return self._loader(shuffle=True, drop_last=False)
        return ResumableDataLoader(self.dataset, self._batches_done, example_keyed=self.example_keyed,
                                   batch_size=self.batch_size, num_workers=self.num_workers,
                                   persistent_workers=self.num_workers > 0)

    def _batches_done(self) -> int:
        """Batches of the current epoch already trained on (saved with a checkpoint)."""
        if self.trainer is None:
            return 0
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed


class AttributionDataModule(_IndexedDataModule):
    """Training examples to score: unshuffled, unaugmented, each exactly once across devices.

    ``predict_dataloader`` uses a ``ContiguousShardSampler``: rank r of the attached trainer gets
    the r-th contiguous block of the examples not in ``exclude_indices``. The trainer may keep
    Lightning's default ``use_distributed_sampler=True``; see ``ContiguousShardSampler`` for why the
    sampler survives DDP unchanged.

    Args:
        dataset: which dataset to attribute to.
        data_dir: CIFAR-10 python folder (or its parent) for cifar10/cifar2; image folder for folder.
        image_size: side of the square images; required for folder, optional (must match) otherwise.
        channels: 1 (grey) or 3 (RGB); required for folder, optional (must match) otherwise.
        subset_file: index file of stable indices the model was trained on; items keep their
            original indices.
        batch_size: examples per batch (per device).
        num_workers: data-loader worker processes.
        cifar2_seed: seed of the CIFAR-2 subsampling (must match training).
        num_per_class: CIFAR-2 examples per class (must match training).
    """

    def __init__(
        self,
        dataset: DatasetName = "digits",
        data_dir: str | None = None,
        image_size: int | None = None,
        channels: int | None = None,
        subset_file: str | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        cifar2_seed: int = 0,
        num_per_class: int = 2500,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        config = DatasetConfig(
            dataset, data_dir, image_size, channels, subset_file, True, False, cifar2_seed, num_per_class
        )
        self._configure(config, batch_size, num_workers)
        self._exclude_indices: frozenset[int] = frozenset()

    @property
    def exclude_indices(self) -> frozenset[int]:
        """Stable dataset indices to skip (already scored, for resuming)."""
        return self._exclude_indices

    @exclude_indices.setter
    def exclude_indices(self, indices: Iterable[int]) -> None:
        self._exclude_indices = frozenset(int(index) for index in indices)

    def _excluded_positions(self) -> list[int]:
        position_of = {index: position for position, index in enumerate(self.dataset.indices)}
        unknown = sorted(self._exclude_indices - position_of.keys())
        if unknown:
            raise DataError(
                f"exclude_indices has {len(unknown)} indices not in the dataset (first: {unknown[:5]}); "
                "the store being resumed was made for another dataset or subset."
            )
        return [position_of[index] for index in self._exclude_indices]

    def _rank_and_world_size(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def predict_dataloader(self) -> DataLoader:
        """This rank's block in dataset order: index (B,), image (B, C, H, W)."""
        rank, world_size = self._rank_and_world_size()
        sampler = ContiguousShardSampler(len(self.dataset), rank, world_size, self._excluded_positions())
        return self._loader(sampler=sampler, shuffle=False, drop_last=False)

    def curvature_dataloader(self) -> DataLoader:
        """This rank's block of *all* examples (exclusions ignored), for the curvature pass."""
        rank, world_size = self._rank_and_world_size()
        sampler = ContiguousShardSampler(len(self.dataset), rank, world_size)
        return self._loader(sampler=sampler, shuffle=False, drop_last=False)
