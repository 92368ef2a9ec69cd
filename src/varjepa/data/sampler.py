"""Deterministic, resumable training order: exact mid-epoch resume and rank sharding.

The training order is a pure function of ``(seed, epoch)`` and every training sample carries a
*key* that is a pure function of ``(seed, epoch, position in the epoch)``. The key seeds the
sample's random transforms (augmentations) and, for the first sample of a batch, the batch's
masks, so masks and augmentations no longer depend on the global RNG, on DataLoader workers or
on how many batches came before in this process. A run stopped mid-epoch and resumed from its
checkpoint therefore sees exactly the batches, masks and augmentations that the uninterrupted
run saw.

* :class:`ResumableSampler` is a ``DistributedSampler`` (so Lightning keeps it under DDP and does
  not inject its own): it shards by rank, yields ``(index, key)`` pairs, and can start an epoch
  at a given batch.
* :class:`ResumableLoader` is a ``DataLoader`` with ``state_dict``/``load_state_dict``; Lightning
  saves its position (epoch, batches consumed) in every checkpoint and restores it on resume.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

_MASK64 = (1 << 64) - 1


def mix_seed(*parts: int) -> int:
    """Hash integers into one seed in ``[0, 2**63)`` (splitmix64 steps; order matters)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = ((h ^ (int(p) & _MASK64)) * 0xBF58476D1CE4E5B9) & _MASK64
        h ^= h >> 31
        h = (h * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 29
    return h & ((1 << 63) - 1)


@contextlib.contextmanager
def seeded_global_rng(seed: int):
    """Run the body with the global CPU torch RNG seeded by ``seed``; restore its state after."""
    gen = torch.default_generator
    state = gen.get_state()
    gen.manual_seed(seed)
    try:
        yield
    finally:
        gen.set_state(state)


class ResumableSampler(DistributedSampler):
    """Shuffled, rank-sharded sampler of ``(index, key)`` pairs; deterministic in ``(seed, epoch)``.

    Epoch ``e`` visits ``randperm(len(dataset), seed=mix(seed, e))`` (padded to a multiple of
    ``num_replicas`` like ``DistributedSampler``); rank ``r`` takes positions ``r, r + R, ...``.
    Sample keys are ``mix(seed, e, position)``, unique within a run.

    ``set_epoch`` selects the epoch (Lightning calls it every epoch); iterating again without
    a ``set_epoch`` in between moves to the next epoch, so plain PyTorch loops get a new order
    every pass, as with ``RandomSampler``. ``resume(epoch, start)`` makes the next pass over
    ``epoch`` begin at this rank's ``start``-th sample.

    Args:
        dataset: a map-style dataset of size N.
        num_replicas / rank: data-parallel world size and this process's rank.
        seed: shuffle seed (identical on every rank).
        shuffle: False keeps the dataset order (keys still vary by epoch).
    """

    def __init__(
        self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True
    ):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self._start = 0
        self._start_epoch: int | None = None
        self._iterated = False
        self._epoch_given = False
        #: ``(epoch, start)`` of the pass in progress (None before the first pass)
        self.current_pass: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._start, self._start_epoch = 0, None
        super().set_epoch(epoch)
        self._epoch_given = True

    def resume(self, epoch: int, start: int) -> None:
        """Next pass: epoch ``epoch`` from this rank's ``start``-th sample."""
        super().set_epoch(epoch)
        self._start, self._start_epoch = int(start), epoch
        self._epoch_given = True

    @property
    def start(self) -> int:
        """This rank's samples skipped at the beginning of the current epoch (resume offset)."""
        return self._start if self._start_epoch == self.epoch else 0

    def order(self, epoch: int) -> list[int]:
        """Dataset indices of the whole epoch (all ranks, padded), before sharding."""
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
            idx = torch.randperm(n, generator=g).tolist()
        else:
            idx = list(range(n))
        pad = self.total_size - n
        if pad > 0:
            idx += (idx * math.ceil(pad / n))[:pad]
        return idx

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self._iterated and not self._epoch_given:
            self.set_epoch(self.epoch + 1)
        self._iterated, self._epoch_given = True, False
        epoch, start = self.epoch, self.start
        self.current_pass = (epoch, start)
        idx = self.order(epoch)
        R, seed = self.num_replicas, self.seed
        return ((idx[p], mix_seed(seed, epoch, p)) for p in range(self.rank + start * R, self.total_size, R))

    def __len__(self) -> int:
        # the full epoch even when resuming: Lightning counts the resumed epoch's batches itself
        # (its progress tracker holds the batches done before the checkpoint)
        return self.num_samples


class ResumableLoader(DataLoader):
    """``DataLoader`` over a :class:`ResumableSampler` whose position survives checkpoints.

    ``state_dict()`` → ``{"epoch", "batches", "seed", "num_replicas"}``: the epoch and how many
    batches of it were handed out. Lightning stores it in every checkpoint and calls
    ``load_state_dict`` when it resumes, before iterating, so the resumed epoch continues with the
    next unseen batch (an epoch that was complete continues with the next epoch).
    """

    sampler: ResumableSampler

    def __init__(self, dataset: Dataset, sampler: ResumableSampler, **kwargs: Any):
        super().__init__(dataset, sampler=sampler, **kwargs)
        self._live: Any = None

    def __iter__(self):
        it = super().__iter__()
        self._live = it
        return it

    def _full_batches(self) -> int:
        n = self.sampler.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def state_dict(self) -> dict[str, int]:
        """Position of the training data stream (plain ints: loads with ``weights_only=True``)."""
        s = self.sampler
        if s.current_pass is None or self._live is None or self._live._num_yielded == 0:
            epoch, batches = s.epoch, s.start // self.batch_size
        else:
            epoch, batches = s.current_pass[0], s.current_pass[1] // self.batch_size + self._live._num_yielded
        return {
            "epoch": int(epoch),
            "batches": int(batches),
            "seed": int(self.sampler.seed),
            "num_replicas": int(self.sampler.num_replicas),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue at the saved position (the next batch the interrupted run would have drawn)."""
        if state.get("num_replicas", 1) != self.sampler.num_replicas:
            rank_zero_warn(
                f"resuming with {self.sampler.num_replicas} data-parallel ranks; the checkpoint was written "
                f"with {state['num_replicas']}: the rest of the epoch is re-sharded, so the data order is not "
                "exactly the uninterrupted run's"
            )
        self.sampler.seed = int(state.get("seed", self.sampler.seed))
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= self._full_batches():
            self.sampler.resume(epoch + 1, 0)
        else:
            self.sampler.resume(epoch, batches * self.batch_size)
