"""Collapse statistics of embeddings."""

from __future__ import annotations

import torch
from torch import Tensor


def effective_rank(x: Tensor, eps: float = 1e-7) -> Tensor:
    """RankMe (Garrido et al. 2023): ``exp(H(p))`` with ``p = σ / Σσ`` the normalised singular values
    of ``x`` ``[N, D]``; between 1 (collapse) and ``min(N, D)``. Scalar, fp32."""
    s = torch.linalg.svdvals(x.detach().float())
    p = s / s.sum().clamp_min(eps) + eps
    return torch.exp(-(p * p.log()).sum())
