"""Sampling from given noise, for common random numbers in planning.

A planner compares candidate action sequences by their sampled rollouts. If every candidate's
particle ``p`` uses the same standard-normal and uniform draws, the comparison is not blurred by
sampling noise (common random numbers): only the actions differ. :func:`sample_from_noise` turns
draws ``eps ~ N(0, I)`` ``[..., d]`` and ``u ~ U(0, 1)`` ``[...]`` into a sample of a predictive
distribution, for the families whose sampling is a plain transform of such draws (diagonal Gaussian
and mixtures of diagonal Gaussians); for others it returns None and callers draw independently.
"""

from __future__ import annotations

from torch import Tensor
from torch.distributions import Distribution, Independent, Normal

from ..distributions.posteriors import select_component


def sample_from_noise(dist: Distribution, eps: Tensor, u: Tensor) -> Tensor | None:
    """A draw ``[*batch, d]`` of ``dist`` (batch ``[*batch]``, event ``[d]``) made from ``eps`` and ``u``
    (no gradient needed), or None when the family has no such transform.

    * diagonal Gaussian: ``μ + σ·eps``;
    * mixture of diagonal Gaussians: component ``k`` by inverting the weights' CDF at ``u``, then
      ``μ_k + σ_k·eps``.
    """
    if isinstance(dist, Independent) and isinstance(dist.base_dist, Normal):
        return dist.base_dist.loc + dist.base_dist.scale * eps
    locs = getattr(dist, "locs", None)
    scales = getattr(dist, "coord_scale", None)
    logits = getattr(dist, "component_logits", None)
    if locs is not None and scales is not None and logits is not None:
        loc, scale = select_component(logits, u, locs, scales)
        return loc + scale * eps
    return None
