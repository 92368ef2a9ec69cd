"""Multi-block masking for image patch grids (I-JEPA), sampled in the collate function.

One call returns index tensors into the row-major patch grid:

* ``context_idx`` ``[B, Nc]`` (sorted) — visible patches given to the context encoder;
* ``target_idx`` ``[B, M, Nt]`` — M target blocks whose latents the predictor predicts.

Differences from the reference I-JEPA collator (its known bugs are avoided):

* block positions are drawn from ``0..H-h`` *inclusive*, so the last row and column are
  reachable;
* scale and aspect ratio are drawn from independent random numbers (aspect log-uniform);
* the context block is placed uniformly (not centre-biased), and when samples of a batch
  end with different context sizes they are cut to the smallest by a *random* subset, not
  by keeping the first (top-left) indices.

Block sizes are shared by the batch (so tensors are rectangular); positions differ per sample.
Randomness comes from the given ``torch.Generator`` or from the global torch RNG, which
differs in every DataLoader worker, so workers never repeat each other's masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .registry import ConfigError


def _check_range(name: str, r: tuple[float, float], lo: float, hi: float) -> None:
    if len(r) != 2 or not (lo <= r[0] <= r[1] <= hi):
        raise ConfigError(f"model.masking.{name} = {tuple(r)}; need {lo} <= low <= high <= {hi}")


@dataclass
class MultiBlockMasking:
    """I-JEPA multi-block mask sampler (paper values by default).

    Args:
        num_targets: number of target blocks M.
        target_scale: range of each target block's area as a fraction of the grid.
        target_aspect: range of target aspect ratios (height / width), drawn log-uniformly.
        context_scale: range of the context block's area fraction.
        context_aspect: range of the context block's aspect ratio.
        min_context: fewest context patches a sample may keep; positions are redrawn otherwise.
        max_tries: redraws before falling back to all non-target patches as context.
    """

    num_targets: int = 4
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_aspect: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    context_aspect: tuple[float, float] = (1.0, 1.0)
    min_context: int = 4
    max_tries: int = 20

    def __post_init__(self):
        self.target_scale = tuple(self.target_scale)
        self.target_aspect = tuple(self.target_aspect)
        self.context_scale = tuple(self.context_scale)
        self.context_aspect = tuple(self.context_aspect)
        if self.num_targets < 1:
            raise ConfigError(f"model.masking.num_targets = {self.num_targets}; must be >= 1")
        _check_range("target_scale", self.target_scale, 0.0, 1.0)
        _check_range("context_scale", self.context_scale, 0.0, 1.0)
        _check_range("target_aspect", self.target_aspect, 1e-3, 1e3)
        _check_range("context_aspect", self.context_aspect, 1e-3, 1e3)
        if self.min_context < 1:
            raise ConfigError(f"model.masking.min_context = {self.min_context}; must be >= 1")

    @staticmethod
    def _uniform(r: tuple[float, float], g: torch.Generator | None) -> float:
        return r[0] + (r[1] - r[0]) * torch.rand((), generator=g).item()

    def block_size(
        self, grid: tuple[int, int], scale: tuple[float, float], aspect: tuple[float, float], g
    ) -> tuple[int, int]:
        """Draw a block (h, w) inside ``grid`` with independent scale and aspect draws."""
        H, W = grid
        s = self._uniform(scale, g)
        a = math.exp(self._uniform((math.log(aspect[0]), math.log(aspect[1])), g))
        area = s * H * W
        h = min(max(round(math.sqrt(area * a)), 1), H)
        w = min(max(round(math.sqrt(area / a)), 1), W)
        return h, w

    @staticmethod
    def _blocks(grid: tuple[int, int], h: int, w: int, shape: tuple[int, ...], g) -> Tensor:
        """Boolean masks ``[*shape, H, W]`` of h×w blocks at uniform positions (inclusive bounds)."""
        H, W = grid
        top = torch.randint(0, H - h + 1, shape, generator=g)
        left = torch.randint(0, W - w + 1, shape, generator=g)
        rows = torch.arange(H).view(*([1] * len(shape)), H, 1)
        cols = torch.arange(W).view(*([1] * len(shape)), 1, W)
        top, left = top[..., None, None], left[..., None, None]
        return (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)

    def __call__(
        self, batch_size: int, grid: tuple[int, int], generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Sample masks for a batch on a ``grid`` = (H, W) patch grid.

        Returns:
            ``context_idx`` long ``[B, Nc]`` and ``target_idx`` long ``[B, M, Nt]``.
        """
        g, B, M = generator, batch_size, self.num_targets
        H, W = grid
        th, tw = self.block_size(grid, self.target_scale, self.target_aspect, g)
        ch, cw = self.block_size(grid, self.context_scale, self.context_aspect, g)
        targets = self._blocks(grid, th, tw, (B, M), g)  # [B, M, H, W]
        context = self._blocks(grid, ch, cw, (B,), g) & ~targets.any(1)
        for _ in range(self.max_tries):
            short = context.flatten(1).sum(1) < self.min_context
            if not short.any():
                break
            n = int(short.sum())
            targets[short] = self._blocks(grid, th, tw, (n, M), g)
            context[short] = self._blocks(grid, ch, cw, (n,), g) & ~targets[short].any(1)
        else:
            short = context.flatten(1).sum(1) < self.min_context
            context[short] = ~targets[short].any(1)
            if (context.flatten(1).sum(1) < 1).any():
                raise RuntimeError(
                    f"masking: target blocks of {th}x{tw} x{M} cover the whole {H}x{W} grid; "
                    "lower model.masking.num_targets or target_scale"
                )
        target_idx = targets.flatten(2).nonzero()[:, 2].view(B, M, th * tw)
        # cut every sample's context to the batch minimum by a random subset (keeps order)
        ctx = context.flatten(1)
        keep = int(ctx.sum(1).min())
        score = torch.rand(ctx.shape, generator=g).masked_fill(~ctx, 2.0)
        context_idx = score.topk(keep, dim=1, largest=False).indices.sort(1).values
        return context_idx, target_idx
