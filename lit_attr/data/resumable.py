"""A shuffling training loader that resumes mid-epoch exactly where a checkpoint left it.

``ResumableRandomSampler`` draws each epoch's order exactly as ``torch.utils.data.RandomSampler``
does (one int64 seed from the global torch generator, then ``randperm`` with a private generator),
so uninterrupted training is unchanged. ``ResumableDataLoader`` implements Lightning's
``state_dict`` / ``load_state_dict`` loader protocol: the checkpoint stores the epoch's seed and the
number of batches already trained on, and a resumed run skips those batches of the same order
without touching the global generator. With the random states of ``lit_attr.checkpoints`` this makes
``--ckpt_path`` resume bit-identical to an uninterrupted single-process run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class ResumableRandomSampler(Sampler[int]):
    """A random permutation per epoch (as ``RandomSampler``) that can restart inside an epoch.

    Args:
        num_items: dataset length n; every epoch yields a permutation of ``0..n-1``.
    """

    def __init__(self, num_items: int) -> None:
        self.num_items = num_items
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
        **kwargs: ``DataLoader`` arguments (no ``sampler``/``shuffle``).
    """

    def __init__(self, dataset: Dataset, batches_done: Callable[[], int], **kwargs: Any) -> None:
        self.batches_done = batches_done
        super().__init__(dataset, sampler=ResumableRandomSampler(len(dataset)), shuffle=False, **kwargs)

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
