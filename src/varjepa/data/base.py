"""Base DataModule for JEPA training: datasets yield ``(image, label, index)``; masks are added
by a collate function that the model provides (it knows the patch grid)."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..masking import MultiBlockMasking
from ..registry import ConfigError
from .collate import MaskCollator, stack_samples
from .sampler import ResumableLoader, ResumableSampler, seeded_global_rng


class UnreadableSampleError(RuntimeError):
    """A sample could not be loaded; the message names the file (when there is one)."""


def sample_path(ds: Dataset, i: int) -> str | None:
    """The file behind item ``i`` of ``ds`` (through ``Subset`` wrappers), if the dataset has files."""
    while isinstance(ds, Subset):
        ds, i = ds.dataset, ds.indices[i]
    samples = getattr(ds, "samples", None) or getattr(ds, "imgs", None)
    return str(samples[i][0]) if samples is not None else None


class IndexedDataset(Dataset):
    """Wraps a ``(x, y)`` dataset so that items are ``(x, y, index)``.

    Given ``(index, key)`` (from :class:`~varjepa.data.sampler.ResumableSampler`) the item is
    ``(x, y, index, key)`` and the sample's random transforms draw from the global RNG seeded by
    ``key``, so augmentations are a function of the training position (exact resume, any worker).
    A sample that fails to load raises :class:`UnreadableSampleError` naming its file.
    """

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def _load(self, i: int):
        try:
            return self.base[i]
        except Exception as e:
            path = sample_path(self.base, i)
            where = f"'{path}'" if path else f"item {i} of {type(self.base).__name__}"
            raise UnreadableSampleError(
                f"cannot read {where}: {type(e).__name__}: {e}. Remove or replace the file, then restart "
                "(resume from the last checkpoint with --ckpt_path)."
            ) from e

    def __getitem__(self, i: int | tuple[int, int]) -> tuple:
        if isinstance(i, tuple):
            i, key = i
            with seeded_global_rng(key):
                x, y = self._load(i)
            return x, int(y), i, key
        x, y = self._load(i)
        return x, int(y), i


class JEPADataModule(L.LightningDataModule):
    """Shared loader logic. Subclasses set ``self.train_set``, ``val_set``, ``test_set`` (and,
    when training images are randomly augmented, ``train_plain_set`` without augmentation) in
    ``setup`` and describe their images by ``image_size`` and ``in_chans``.

    Train batches carry fresh masks every step; validation batches carry masks from a seeded
    generator keyed by the batch, so validation losses are comparable across epochs.
    ``predict`` uses the ``predict_split`` ("train", "val" or "test") without masks.
    """

    image_size: int
    in_chans: int
    num_classes: int

    def __init__(
        self, batch_size: int = 128, num_workers: int = 0, predict_split: str = "test", val_mask_seed: int = 0
    ):
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"data.batch_size = {batch_size}; must be >= 1")
        if predict_split not in ("train", "val", "test"):
            raise ConfigError(f"data.predict_split = '{predict_split}'; allowed: train, val, test")
        self.batch_size, self.num_workers = batch_size, num_workers
        self.predict_split = predict_split
        self.val_mask_seed = val_mask_seed
        self.masking: MultiBlockMasking | None = None
        self.grid: tuple[int, int] | None = None
        self._val_collator: MaskCollator | None = None

    def set_masking(self, masking: MultiBlockMasking, grid: tuple[int, int]) -> None:
        """Called by the model in ``setup``: the mask sampler and the encoder's patch grid."""
        self.masking, self.grid = masking, tuple(grid)
        self._val_collator = MaskCollator(masking, self.grid, seed=self.val_mask_seed)

    def _collate(self, train: bool) -> Callable:
        if self.masking is None:
            raise RuntimeError(
                f"{type(self).__name__}: no masking configured; the VarJEPA model sets it in setup() "
                "(call dm.set_masking(model.masking, model.encoder.grid_size) when using the loaders alone)"
            )
        if train:
            return MaskCollator(self.masking, self.grid)
        return self._val_collator

    def _loader(
        self, ds: Dataset, shuffle: bool, collate_fn: Callable, drop_last: bool = False
    ) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate_fn,
            drop_last=drop_last,
            persistent_workers=self.num_workers > 0,
            # unshuffled loaders draw their worker seeds from their own generator, not the global RNG
            generator=None if shuffle else torch.Generator().manual_seed(0),
        )

    def _shuffle_seed(self) -> int:
        """Seed of the training order: ``torch.initial_seed()`` (set by ``seed_everything``), the same
        on every rank (broadcast from rank 0)."""
        seed = torch.initial_seed() & ((1 << 63) - 1)
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            seed = int(trainer.strategy.broadcast(seed, src=0))
        return seed

    def train_dataloader(self) -> DataLoader:
        """Shuffled, masked training batches. For an :class:`IndexedDataset` the order, masks and
        augmentations are keyed by ``(seed, epoch, position)`` and the loader is resumable mid-epoch
        (:class:`~varjepa.data.sampler.ResumableLoader`); under DDP it shards by rank."""
        drop = len(self.train_set) > self.batch_size
        if not isinstance(self.train_set, IndexedDataset):
            return self._loader(self.train_set, True, self._collate(True), drop_last=drop)
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = ResumableSampler(self.train_set, num_replicas=world, rank=rank, seed=self._shuffle_seed())
        if trainer is not None:
            sampler.set_epoch(trainer.current_epoch)
        return ResumableLoader(
            self.train_set,
            sampler,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=self._collate(True),
            drop_last=drop,
            persistent_workers=self.num_workers > 0,
            # worker seeds from the loader's own generator: iterating never touches the global RNG
            generator=torch.Generator().manual_seed(sampler.seed),
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False, self._collate(False))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False, self._collate(False))

    def predict_dataloader(self) -> DataLoader:
        ds = self._eval_set(self.predict_split)
        return self._loader(ds, False, stack_samples)

    def _eval_set(self, split: str) -> Dataset:
        """The dataset of ``split`` as evaluation sees it: for "train", ``train_plain_set`` (the
        training images without random augmentation) when the subclass sets one."""
        if split == "train":
            plain = getattr(self, "train_plain_set", None)
            return self.train_set if plain is None else plain
        return {"val": self.val_set, "test": self.test_set}[split]

    def plain_dataloader(self, split: str) -> DataLoader:
        """A loader of ``split`` without masks or augmentation (for probes and feature extraction)."""
        ds = self._eval_set(split)
        return self._loader(ds, False, stack_samples)
