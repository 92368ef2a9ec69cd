"""Likelihoods ``p(z̄ | z)`` of the observed target latent given a latent sample.

A likelihood module maps ``z`` of shape ``[*batch, dim]`` to a distribution over ``z̄`` with
the same batch shape and event ``[dim]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Laplace

from ..registry import ConfigError, Registry
from .diag_normal import DiagNormal
from .posteriors import bounded_std, inverse_bounded_std

LIKELIHOODS: Registry[nn.Module] = Registry("likelihood", "model.likelihood")


def gaussian_expected_nll(mean: Tensor, var: Tensor, target: Tensor, sigma2: Tensor) -> Tensor:
    """``E_{z~q}[−log N(z̄; z, σ²)] = Σ_d [((μ_d − z̄_d)² + v_d) / (2σ_d²) + ½ log(2πσ_d²)]`` for any q
    with mean μ and marginal variance v (exact: no sampling noise). Shapes ``[*batch, d]`` → ``[*batch]``."""
    return (0.5 * ((mean - target).square() + var) / sigma2 + 0.5 * torch.log(2 * math.pi * sigma2)).sum(-1)


def _positive(option: str, name: str, value: float) -> float:
    if not value > 0:
        raise ConfigError(f"{option}.{name} = {value}; must be > 0")
    return float(value)


@LIKELIHOODS.register("gaussian")
class Gaussian(nn.Module):
    """``N(z̄; z, σ² I)`` with fixed ``sigma``. With a Dirac posterior and β = 0 the loss is
    ``‖ẑ − z̄‖² / (2σ²) + (d/2)·log(2πσ²)``: I-JEPA's L2 loss."""

    def __init__(self, dim: int, sigma: float = 1.0):
        super().__init__()
        self.dim = dim
        self.sigma = _positive("model.likelihood", "sigma", sigma)

    def forward(self, z: Tensor) -> Distribution:
        return DiagNormal(z.float(), self.sigma)

    def expected_nll(self, mean: Tensor, var: Tensor, target: Tensor) -> Tensor:
        """Closed form of ``E_{z~q}[−log p(z̄ | z)]`` from q's mean and marginal variance ``[*batch, d]``;
        returns ``[*batch]``."""
        return gaussian_expected_nll(mean, var, target, torch.as_tensor(self.sigma**2, device=mean.device))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, sigma={self.sigma}"


@LIKELIHOODS.register("gaussian_learned")
class GaussianLearned(nn.Module):
    """``N(z̄; z, diag σ²)`` with a learned σ per dimension, bounded below by ``min_std``."""

    def __init__(self, dim: int, init_sigma: float = 1.0, min_std: float = 1e-2):
        super().__init__()
        _positive("model.likelihood", "init_sigma", init_sigma)
        if not 0 < min_std < init_sigma:
            raise ConfigError(
                f"model.likelihood.min_std = {min_std}; must be in (0, init_sigma={init_sigma})"
            )
        self.dim, self.min_std = dim, min_std
        self.raw_sigma = nn.Parameter(torch.full((dim,), inverse_bounded_std(init_sigma, min_std)))

    @property
    def sigma(self) -> Tensor:
        """Current per-dimension σ ``[dim]``."""
        return bounded_std(self.raw_sigma.float(), self.min_std, 1e3)

    def forward(self, z: Tensor) -> Distribution:
        return DiagNormal(z.float(), self.sigma)

    def expected_nll(self, mean: Tensor, var: Tensor, target: Tensor) -> Tensor:
        """Closed form of ``E_{z~q}[−log p(z̄ | z)]`` (see :func:`gaussian_expected_nll`)."""
        return gaussian_expected_nll(mean, var, target, self.sigma.square())


@LIKELIHOODS.register("laplace")
class LaplaceLikelihood(nn.Module):
    """``Laplace(z̄; z, b)`` per dimension with fixed ``scale`` b (robust, L1-like)."""

    def __init__(self, dim: int, scale: float = 1.0):
        super().__init__()
        self.dim = dim
        self.scale = _positive("model.likelihood", "scale", scale)

    def forward(self, z: Tensor) -> Distribution:
        return Independent(Laplace(z.float(), self.scale, validate_args=False), 1, validate_args=False)
