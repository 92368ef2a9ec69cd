"""Collate functions: stack samples and attach masks sampled for the batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import default_collate

from ..masking import MultiBlockMasking


def stack_samples(samples: Sequence[tuple[Tensor, int, int]]) -> dict[str, Tensor]:
    """``[(image [C,H,W], label, index), ...]`` → ``{"image": [B,C,H,W], "label": [B], "index": [B]}``."""
    image, label, index = default_collate(list(samples))
    return {"image": image, "label": label, "index": index}


class MaskCollator:
    """Collate function adding multi-block masks for a patch ``grid``.

    Returns the :func:`stack_samples` dict plus ``context_idx`` ``[B, Nc]`` and ``target_idx``
    ``[B, M, Nt]``. With ``seed`` set, every batch's masks are a function of the seed and the
    batch's first sample index (a fixed protocol for validation: identical every epoch, in
    every worker); otherwise from the global torch RNG, which differs per
    DataLoader worker.
    """

    def __init__(self, masking: MultiBlockMasking, grid: tuple[int, int], seed: int | None = None):
        self.masking = masking
        self.grid = tuple(grid)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def __call__(self, samples: Sequence[tuple[Tensor, int, int]]) -> dict[str, Tensor]:
        batch = stack_samples(samples)
        if self.generator is not None:  # a fixed protocol: masks depend on (seed, first index) only
            self.generator.manual_seed(self.seed * 1_000_003 + int(batch["index"][0]))
        ctx, tgt = self.masking(len(samples), self.grid, self.generator)
        batch["context_idx"], batch["target_idx"] = ctx, tgt
        return batch
