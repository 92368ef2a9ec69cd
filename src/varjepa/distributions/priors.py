"""Priors ``p(z)`` over ``R^dim``: modules whose ``forward()`` returns a distribution with
``batch_shape == ()`` and ``event_shape == (dim,)`` that broadcasts against any posterior."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, MixtureSameFamily, Normal

from ..registry import ConfigError, Registry
from .diag_normal import DiagNormal
from .posteriors import bounded_std, inverse_bounded_std

PRIORS: Registry[nn.Module] = Registry("prior", "model.prior")


class Prior(nn.Module):
    """Base class: ``prior() -> Distribution`` with event ``[dim]``."""

    def __init__(self, dim: int):
        super().__init__()
        if dim < 1:
            raise ConfigError(f"model.prior: latent size dim = {dim}; must be >= 1")
        self.dim = dim

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


@PRIORS.register("standard_normal")
class StandardNormal(Prior):
    """``N(0, I)``; KL to it is analytic for Gaussian posteriors."""

    def __init__(self, dim: int):
        super().__init__(dim)
        self.register_buffer("loc", torch.zeros(dim), persistent=False)
        self.register_buffer("scale", torch.ones(dim), persistent=False)

    def forward(self) -> Distribution:
        return DiagNormal(self.loc.float(), self.scale.float())


@PRIORS.register("learned_diagonal")
class LearnedDiagonal(Prior):
    """``N(μ, diag σ²)`` with learned μ and σ (σ bounded below by ``min_std``)."""

    def __init__(self, dim: int, min_std: float = 1e-2):
        super().__init__(dim)
        self.min_std = min_std
        self.loc = nn.Parameter(torch.zeros(dim))
        self.raw_scale = nn.Parameter(torch.full((dim,), inverse_bounded_std(1.0, min_std)))

    def forward(self) -> Distribution:
        return DiagNormal(self.loc.float(), bounded_std(self.raw_scale.float(), self.min_std, 1e3))


@PRIORS.register("mixture_of_gaussians")
class MixtureOfGaussians(Prior):
    """Learned mixture of ``components`` diagonal Gaussians (VampPrior-style flexibility);
    KL to it is Monte Carlo."""

    def __init__(self, dim: int, components: int = 10, init_spread: float = 1.0, min_std: float = 1e-2):
        super().__init__(dim)
        if components < 1:
            raise ConfigError(f"model.prior.components = {components}; must be >= 1")
        self.min_std = min_std
        g = torch.Generator().manual_seed(0)
        self.locs = nn.Parameter(init_spread * torch.randn(components, dim, generator=g))
        self.raw_scales = nn.Parameter(torch.full((components, dim), inverse_bounded_std(1.0, min_std)))
        self.logits = nn.Parameter(torch.zeros(components))

    def forward(self) -> Distribution:
        comp = Independent(
            Normal(
                self.locs.float(),
                bounded_std(self.raw_scales.float(), self.min_std, 1e3),
                validate_args=False,
            ),
            1,
            validate_args=False,
        )
        return MixtureSameFamily(
            Categorical(logits=self.logits.float(), validate_args=False), comp, validate_args=False
        )
