"""What the model hands to the ELBO terms for one batch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor
from torch.distributions import Distribution

from ..distributions import PosteriorFamily


@dataclass
class JEPAOutputs:
    """One forward pass, flattened over target tokens (T = M·Nt target patches per sample).

    Attributes:
        pred: predictor's distribution over target latents, batch ``[B, T]``, event ``[d]``.
        family: the posterior family that built ``pred``.
        target: observed target latents ``z̄`` ``[B, T, d]`` (layer-normed EMA features, no grad).
        target_dist: the target encoder's distribution ``q̄(z_t | x)`` (target-posterior ELBO).
        target_family: the family that built ``target_dist``.
        extras: anything else a custom term needs (images, context tokens, indices, ...).
    """

    pred: Distribution
    family: PosteriorFamily
    target: Tensor
    target_dist: Distribution | None = None
    target_family: PosteriorFamily | None = None
    extras: dict[str, Any] = field(default_factory=dict)
