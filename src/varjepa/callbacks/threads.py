"""Torch's intra-op thread count for a run."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from ..registry import ConfigError


class TorchThreads(Callback):
    """Sets ``torch.set_num_threads(threads)`` for the run and restores the previous value at the end.

    Small models (the world model's MLPs and GRU, tiny encoders) run fastest on one thread per
    process; more threads only add synchronisation, and on a machine whose cores are busy with
    other work the spinning threads can slow a step down by an order of magnitude.

    Args:
        threads: intra-op threads (>= 1).
    """

    def __init__(self, threads: int = 1):
        super().__init__()
        if threads < 1:
            raise ConfigError(f"TorchThreads: threads = {threads}; must be >= 1")
        self.threads = threads
        self._previous: int | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._previous is None:
            self._previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._previous is not None:
            torch.set_num_threads(self._previous)
            self._previous = None
