"""Collate functions: stack samples and attach masks sampled for the batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import default_collate

from ..masking import MultiBlockMasking
from .sampler import mix_seed

_MASK_STREAM = 0x6D61736B  # separates mask seeds from the augmentation seeds of the same key


def stack_samples(samples: Sequence[tuple[Tensor, int, int]]) -> dict[str, Tensor]:
    """``[(image [C,H,W], label, index[, key]), ...]`` → ``{"image": [B,C,H,W], "label": [B], "index": [B]}``."""
    image, label, index = default_collate([s[:3] for s in samples])
    return {"image": image, "label": label, "index": index}


class MaskCollator:
    """Collate function adding multi-block masks for a patch ``grid``.

    Returns the :func:`stack_samples` dict plus ``context_idx`` ``[B, Nc]`` and ``target_idx``
    ``[B, M, Nt]``. With ``seed`` set, every batch's masks are a function of the seed and the
    batch's first sample index (a fixed protocol for validation: identical every epoch, in
    every worker). Samples that carry a key (``(image, label, index, key)`` from the resumable
    training sampler) get masks seeded by the first sample's key, i.e. by the batch's position in
    the run. Otherwise masks come from the global torch RNG, which differs per DataLoader worker.
    """

    def __init__(self, masking: MultiBlockMasking, grid: tuple[int, int], seed: int | None = None):
        self.masking = masking
        self.grid = tuple(grid)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def __call__(self, samples: Sequence[tuple[Tensor, int, int]]) -> dict[str, Tensor]:
        batch = stack_samples(samples)
        g = self.generator
        if g is not None:  # a fixed protocol: masks depend on (seed, first index) only
            g.manual_seed(self.seed * 1_000_003 + int(batch["index"][0]))
        elif len(samples[0]) > 3:  # keyed training samples: masks depend on the batch's position
            g = torch.Generator().manual_seed(mix_seed(samples[0][3], _MASK_STREAM))
        ctx, tgt = self.masking(len(samples), self.grid, g)
        batch["context_idx"], batch["target_idx"] = ctx, tgt
        return batch
