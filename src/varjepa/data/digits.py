"""scikit-learn's digits (1,797 8×8 grey images, 10 classes): the embedded default, no download."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from ..registry import ConfigError
from .base import IndexedDataset, JEPADataModule


def digits_splits(test_fraction: float = 0.2, val_fraction: float = 0.1, seed: int = 0):
    """Stratified, seeded split of digits pixels scaled to [0, 1].

    Returns ``{"train"|"val"|"test": (X [n, 8, 8] float32, y [n] int64)}``. The test split is the
    DESIGN §5 80/20 split (seed 0); validation is carved from the training part.
    """
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 8, 8)
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=test_fraction, stratify=y, random_state=seed)
    out = {"test": (x[te], y[te])}
    if val_fraction > 0:
        tr, va = train_test_split(tr, test_size=val_fraction, stratify=y[tr], random_state=seed)
        out["val"] = (x[va], y[va])
    else:
        out["val"] = (x[te], y[te])
    out["train"] = (x[tr], y[tr])
    return out


class DigitsDataModule(JEPADataModule):
    """Digits as ``[1, 8, 8]`` images, standardised with the training split's mean and std.

    Args:
        batch_size: images per batch.
        test_fraction: share held out for testing (stratified, seeded).
        val_fraction: share of the remaining images used for validation.
        seed: split seed.
        num_workers: DataLoader workers.
        predict_split: split that ``varjepa predict`` embeds.
    """

    image_size = 8
    in_chans = 1
    num_classes = 10

    def __init__(
        self,
        batch_size: int = 128,
        test_fraction: float = 0.2,
        val_fraction: float = 0.1,
        seed: int = 0,
        num_workers: int = 0,
        predict_split: str = "test",
        val_mask_seed: int = 0,
    ):
        super().__init__(batch_size, num_workers, predict_split, val_mask_seed)
        if not 0 < test_fraction < 1:
            raise ConfigError(f"data.test_fraction = {test_fraction}; must be in (0, 1)")
        if not 0 <= val_fraction < 1:
            raise ConfigError(f"data.val_fraction = {val_fraction}; must be in [0, 1)")
        self.test_fraction, self.val_fraction, self.seed = test_fraction, val_fraction, seed
        self._ready = False

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        splits = digits_splits(self.test_fraction, self.val_fraction, self.seed)
        xtr = splits["train"][0]
        self.mean, self.std = float(xtr.mean()), float(xtr.std())

        def make(x, y):
            t = torch.from_numpy((x - self.mean) / self.std).unsqueeze(1)
            return IndexedDataset(TensorDataset(t, torch.from_numpy(y)))

        self.train_set = make(*splits["train"])
        self.val_set = make(*splits["val"])
        self.test_set = make(*splits["test"])
        self._ready = True
