"""A shuffling training loader that resumes mid-epoch exactly where a checkpoint left it.

``ResumableRandomSampler`` draws each epoch's order exactly as ``torch.utils.data.RandomSampler``
does (one int64 seed from the global torch generator, then ``randperm`` with a private generator),
so uninterrupted training is unchanged. ``ResumableDataLoader`` implements Lightning's
``state_dict`` / ``load_state_dict`` loader protocol: the checkpoint stores the epoch's seed and the
number of batches already trained on, and a resumed run skips those batches of the same order
without touching the global generator. With the random states of ``lit_attr.checkpoints`` this makes
``--ckpt_path`` resume bit-identical to an uninterrupted single-process run.

With ``keys`` (the stable example indices) the sampler is *example-keyed*: each epoch orders the
examples by a keyed hash of (epoch seed, stable index) and yields ``(position, draw_key)`` pairs, the
draw key being another keyed hash of the same pair. Two runs with the same seed on overlapping subsets
(LDS retraining under common seeds) then see their shared examples in the same relative order, each with
the same draw key in every epoch (``KeyedItems`` adds it to the item; ``DDPMModule.training_step`` draws
the example's timestep and noise from it): common random numbers per example rather than per batch
position, so the models differ through the data, not through which draws landed on which example.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lit_attr.seeding import keyed_seeds

ORDER_STREAM = "fit/order"
DRAW_STREAM = "fit/draws"


class ResumableRandomSampler(Sampler):
    """A random permutation per epoch (as ``RandomSampler``) that can restart inside an epoch.

    Args:
        num_items: dataset length n; every epoch yields a permutation of ``0..n-1``.
        keys: the stable index of each position (length n): yield ``(position, draw_key)`` in an example-keyed order
            (see the module docstring); None: positions in ``RandomSampler``'s order.
    """

    def __init__(self, num_items: int, keys: list[int] | None = None) -> None:
        if keys is not None and len(keys) != num_items:
            raise ValueError(f"need one key per item: {len(keys)} keys for {num_items} items.")
        self.num_items = num_items
        self.keys = None if keys is None else np.asarray(keys, dtype=np.int64)
        self.epoch_seed: int | None = None
        self._resume: tuple[int, int] | None = None

    @property
    def resuming(self) -> bool:
        """Whether the next epoch continues a checkpointed one (and draws nothing from the global generator)."""
        return self._resume is not None

    def resume_from(self, seed: int, start: int) -> None:
        """Make the next epoch the permutation of ``seed`` from position ``start`` on."""
        self._resume = (int(seed), int(start))

    def __iter__(self) -> Iterator[int]:
        if self._resume is not None:
            seed, start = self._resume
            self._resume = None
        else:  # RandomSampler's draw, so uninterrupted runs see the same orders as with shuffle=True
            seed, start = int(torch.empty((), dtype=torch.int64).random_().item()), 0
        self.epoch_seed = seed
        if self.keys is not None:
            seed = seed % (2**63)  # the keyed hashes take a non-negative seed
            order = np.argsort(keyed_seeds(seed, self.keys, ORDER_STREAM), kind="stable")
            draw_keys = keyed_seeds(seed, self.keys, DRAW_STREAM)
            yield from ((int(p), int(draw_keys[p])) for p in order[start:])
            return
        generator = torch.Generator()
        generator.manual_seed(seed)
        yield from torch.randperm(self.num_items, generator=generator).tolist()[start:]

    def __len__(self) -> int:
        return self.num_items


class ResumableDataLoader(DataLoader):
    """Shuffled batches whose position in the epoch is saved in Lightning checkpoints.

    Args:
        dataset: the training dataset.
        batches_done: returns the batches of the current epoch already trained on when a
            checkpoint is saved (the trainer's ``batch_progress.current.processed``).
        example_keyed: the example-keyed order and draw keys of the module docstring (``dataset.indices`` are the
            keys); items then carry ``"draw_key"``.
        **kwargs: ``DataLoader`` arguments (no ``sampler``/``shuffle``).
    """

    def __init__(self, dataset: Dataset, batches_done: Callable[[], int], example_keyed: bool = False,
                 **kwargs: Any) -> None:
        self.batches_done = batches_done
        keys = list(dataset.indices) if example_keyed else None
        sampler = ResumableRandomSampler(len(dataset), keys)
        super().__init__(KeyedItems(dataset) if example_keyed else dataset, sampler=sampler, shuffle=False, **kwargs)

    def __iter__(self):  # noqa: ANN204 - DataLoader's iterator type
        if not self.sampler.resuming:
            return super().__iter__()
        # DataLoader draws a base seed from the global generator; an uninterrupted run made that draw
        # at the start of the epoch, so a mid-epoch restart must not make it again.
        with torch.random.fork_rng(devices=[]):
            return super().__iter__()

    def state_dict(self) -> dict[str, Any]:
        """The epoch's seed and the number of batches already trained on."""
        return {"epoch_seed": self.sampler.epoch_seed, "batches_done": int(self.batches_done())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the checkpointed epoch (nothing to do if it had finished)."""
        if state.get("epoch_seed") is not None and 0 < state["batches_done"] < len(self):
            self.sampler.resume_from(state["epoch_seed"], state["batches_done"] * self.batch_size)


class KeyedItems(Dataset):
    """``dataset``'s items with their draw key: ``self[(position, key)] = {**dataset[position], "draw_key": key}``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.indices = dataset.indices

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        position, key = item
        return {**self.dataset[position], "draw_key": key}
