"""Base DataModule for JEPA training: datasets yield ``(image, label, index)``; masks are added
by a collate function that the model provides (it knows the patch grid)."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..masking import MultiBlockMasking
from ..registry import ConfigError
from .collate import MaskCollator, stack_samples


class IndexedDataset(Dataset):
    """Wraps a ``(x, y)`` dataset so that items are ``(x, y, index)``."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        x, y = self.base[i]
        return x, int(y), i


class JEPADataModule(L.LightningDataModule):
    """Shared loader logic. Subclasses set ``self.train_set``, ``val_set``, ``test_set`` in
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
        )

    def train_dataloader(self) -> DataLoader:
        drop = len(self.train_set) > self.batch_size
        return self._loader(self.train_set, True, self._collate(True), drop_last=drop)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False, self._collate(False))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False, self._collate(False))

    def predict_dataloader(self) -> DataLoader:
        ds = {"train": self.train_set, "val": self.val_set, "test": self.test_set}[self.predict_split]
        return self._loader(ds, False, stack_samples)

    def plain_dataloader(self, split: str) -> DataLoader:
        """A loader of ``split`` without masks (for probes and feature extraction)."""
        ds = {"train": self.train_set, "val": self.val_set, "test": self.test_set}[split]
        return self._loader(ds, False, stack_samples)
