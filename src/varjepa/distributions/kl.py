"""KL divergence: analytic where torch/Pyro registers the pair, Monte Carlo otherwise.

Also registers the analytic KL of a (low-rank) multivariate normal against a diagonal
Gaussian, so low-rank posteriors get an exact KL to the standard-normal and learned
diagonal priors.
"""

from __future__ import annotations

import math

from torch import Tensor
from torch.distributions import (
    Distribution,
    Independent,
    LowRankMultivariateNormal,
    MultivariateNormal,
    Normal,
    register_kl,
)
from torch.distributions import kl_divergence as _torch_kl
from torch.distributions.kl import _dispatch_kl

ANALYTIC = "analytic"
MONTE_CARLO = "monte_carlo"


def _diag_normal(p: Independent) -> Normal:
    base = p.base_dist
    if not isinstance(base, Normal) or p.reinterpreted_batch_ndims != 1:
        raise NotImplementedError
    return base


def _kl_mvn_diag(q: Distribution, p: Independent) -> Tensor:
    # KL(q || p) = -H(q) + CE(q, p); the cross-entropy against a diagonal Gaussian needs only
    # q's mean and marginal variances.
    base = _diag_normal(p)
    var_p = base.scale.square()
    ce = 0.5 * ((2 * math.pi * var_p).log() + ((q.mean - base.loc).square() + q.variance) / var_p).sum(-1)
    return ce - q.entropy()


@register_kl(LowRankMultivariateNormal, Independent)
def _kl_lowrank_diag(q: LowRankMultivariateNormal, p: Independent) -> Tensor:
    return _kl_mvn_diag(q, p)


@register_kl(MultivariateNormal, Independent)
def _kl_fullrank_diag(q: MultivariateNormal, p: Independent) -> Tensor:
    return _kl_mvn_diag(q, p)


def is_analytic(q: Distribution, p: Distribution) -> bool:
    """Whether ``KL(q‖p)`` has a registered closed form (tried on the actual objects)."""
    try:
        _torch_kl(q, p)
    except NotImplementedError:
        return False
    return True


def has_registered_kl(q: Distribution, p: Distribution) -> bool:
    """Whether torch/Pyro dispatch finds a closed form for the *types* of ``q`` and ``p`` (cheap;
    the closed form may still decline the actual objects, which :func:`kl_divergence` handles)."""
    return _dispatch_kl(type(q), type(p)) is not NotImplemented


def kl_divergence(q: Distribution, p: Distribution, num_samples: int = 1, sampler=None) -> tuple[Tensor, str]:
    """``KL(q‖p)`` with shape ``q.batch_shape`` (broadcast with p's) and the method used.

    Analytic when a closed form is registered, else ``mean_k[log q(z_k) − log p(z_k)]`` with
    ``num_samples`` reparameterised samples ``z_k ~ q`` (unbiased, differentiable). A ``q`` with a
    ``stratified_kl(p, num_samples)`` method (mixtures) computes its own unbiased estimate.
    ``sampler(num_samples) -> [S, ...]`` supplies the draws instead (shared with other terms).
    """
    try:
        return _torch_kl(q, p), ANALYTIC
    except NotImplementedError:
        pass
    if num_samples < 1:
        raise ValueError(f"num_samples = {num_samples}; must be >= 1")
    stratified = getattr(q, "stratified_kl", None)
    if stratified is not None:  # mixtures: draws spread over the components (lower variance, cheaper)
        return stratified(p, num_samples), MONTE_CARLO
    z = sampler(num_samples) if sampler is not None else q.rsample((num_samples,))
    return (q.log_prob(z) - p.log_prob(z)).mean(0), MONTE_CARLO
