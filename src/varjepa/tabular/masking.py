"""Feature-subset masking for tables (T-JEPA / Var-T-JEPA), sampled in the collate function.

One call returns index tensors into the row's F features:

* ``context_idx`` ``[B, Nc]`` (sorted) — the features the context encoder sees;
* ``target_idx`` ``[B, K, Nt]`` (each block sorted) — K target blocks the predictor predicts.

The sizes ``Nc`` and ``Nt`` are drawn uniformly once per batch (so tensors are rectangular);
which features fall in each set is drawn independently for every row. The context and the K
target blocks never overlap: every row's features are ranked by one random permutation, the
first ``Nc`` form the context and the next ``K·Nt`` are cut into the K blocks. With
``disjoint_targets=False`` each block is drawn from all non-context features independently,
so blocks may share features with each other (never with the context), as I-JEPA's do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..registry import ConfigError


def _check_share(name: str, r: tuple[float, float]) -> tuple[float, float]:
    r = tuple(float(v) for v in r)
    if len(r) != 2 or not (0 < r[0] <= r[1] < 1):
        raise ConfigError(f"model.masking.{name} = {r}; need 0 < low <= high < 1 (shares of the features)")
    return r


@dataclass
class FeatureMasking:
    """Feature-subset mask sampler (the paper's values by default).

    Args:
        num_targets: number of target blocks K.
        context_share: range of the context size as a share of the F features.
        target_share: range of each target block's size as a share of F; the upper end is
            lowered so that the context and K disjoint blocks fit in F features.
        disjoint_targets: target blocks are pairwise disjoint (default) or drawn independently.
    """

    num_targets: int = 4
    context_share: tuple[float, float] = (0.1, 0.3)
    target_share: tuple[float, float] = (0.1, 0.6)
    disjoint_targets: bool = True

    def __post_init__(self):
        if self.num_targets < 1:
            raise ConfigError(f"model.masking.num_targets = {self.num_targets}; must be >= 1")
        self.context_share = _check_share("context_share", self.context_share)
        self.target_share = _check_share("target_share", self.target_share)

    def size_ranges(self, num_features: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Inclusive ranges ``((lo_c, hi_c), (lo_t, hi_t))`` of context and block sizes for F features.

        Sizes are ``round(share · F)``, at least 1. ``hi_t`` is the largest block size that still
        fits next to a context of ``lo_c`` features; a drawn context is shrunk if the drawn block
        size leaves it no room (so every draw is feasible).
        """
        F, K = num_features, self.num_targets
        need = 1 + (K if self.disjoint_targets else 1)
        if need > F:
            raise ConfigError(
                f"model.masking: {F} feature(s) cannot hold a context and {K} "
                f"{'disjoint ' if self.disjoint_targets else ''}target block(s); lower num_targets"
            )
        lo_c = max(1, round(self.context_share[0] * F))
        hi_c = max(lo_c, round(self.context_share[1] * F))
        lo_c, hi_c = min(lo_c, F - (need - 1)), min(hi_c, F - (need - 1))
        room = F - lo_c
        cap = room // K if self.disjoint_targets else room
        lo_t = max(1, round(self.target_share[0] * F))
        hi_t = max(lo_t, round(self.target_share[1] * F))
        lo_t, hi_t = min(lo_t, cap), min(hi_t, cap)
        return (lo_c, hi_c), (lo_t, hi_t)

    def sizes(self, num_features: int, generator: torch.Generator | None = None) -> tuple[int, int]:
        """Draw ``(Nc, Nt)`` for one batch: Nt uniform in its range, then Nc uniform in the range
        that leaves room for the K blocks."""
        (lo_c, hi_c), (lo_t, hi_t) = self.size_ranges(num_features)
        nt = int(torch.randint(lo_t, hi_t + 1, (), generator=generator))
        used = nt * self.num_targets if self.disjoint_targets else nt
        hi_c = min(hi_c, num_features - used)
        nc = int(torch.randint(lo_c, hi_c + 1, (), generator=generator))
        return nc, nt

    def __call__(
        self, batch_size: int, num_features: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Sample masks for ``batch_size`` rows of ``num_features`` features.

        Returns:
            ``context_idx`` long ``[B, Nc]`` and ``target_idx`` long ``[B, K, Nt]``, sorted
            within each set, never overlapping.
        """
        B, F, K = batch_size, num_features, self.num_targets
        nc, nt = self.sizes(F, generator)
        perm = torch.rand(B, F, generator=generator).argsort(1)
        context = perm[:, :nc].sort(1).values
        if self.disjoint_targets:
            targets = perm[:, nc : nc + K * nt].view(B, K, nt)
        else:
            rest = perm[:, nc:]  # [B, F - Nc] non-context features
            pick = torch.rand(B, K, F - nc, generator=generator).argsort(2)[..., :nt]
            targets = rest.unsqueeze(1).expand(B, K, F - nc).gather(2, pick)
        return context, targets.sort(2).values
