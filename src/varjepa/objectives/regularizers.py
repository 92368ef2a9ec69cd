"""Anti-collapse regularisers, composable with any preset (``model.regularizers``).

A KL toward a fixed prior shapes the *predictive* distribution but does not stop the target
encoder from drifting to a constant (DESIGN §2, "What actually prevents collapse"). These terms
act on the per-image embeddings of the context encoder (mean over its visible tokens); the EMA
target inherits their spread.

Both reduce across data-parallel ranks with autograd-aware collectives, so under DDP they see
the global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from ..registry import ConfigError, Registry
from .outputs import JEPAOutputs
from .terms import Term

REGULARIZERS: Registry[Term] = Registry("regulariser", "model.regularizers")


def _global_mean(x: Tensor) -> Tensor:
    """Mean over dim 0, across all ranks when torch.distributed is initialised (differentiable)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from torch.distributed.nn.functional import all_reduce

        n = torch.tensor([x.shape[0]], device=x.device, dtype=x.dtype)
        return all_reduce(x.sum(0)) / all_reduce(n)
    return x.mean(0)


def pooled_context(out: JEPAOutputs) -> Tensor:
    """Per-image context embedding ``[B, D]`` (fp32): mean of the context encoder's tokens."""
    return out.extras["context_tokens"].float().mean(1)


def epps_pulley(proj: Tensor, num_points: int = 17, t_max: float = 5.0) -> Tensor:
    """Epps–Pulley statistic of each column of ``proj`` ``[N, S]`` against N(0, 1), ``[S]``.

    ``N · ∫ |φ̂(t) − e^{−t²/2}|² e^{−t²/2} dt`` by the trapezoid rule on ``[−t_max, t_max]``,
    where φ̂ is the empirical characteristic function (global over ranks).
    """
    t = torch.linspace(0, t_max, num_points, device=proj.device, dtype=proj.dtype)
    x = proj.unsqueeze(-1) * t  # [N, S, K]
    re, im = _global_mean(torch.cos(x)), _global_mean(torch.sin(x))  # [S, K]
    gauss = torch.exp(-0.5 * t.square())
    err = (re - gauss).square() + im.square()
    integrand = err * gauss
    # symmetric integrand: twice the integral over [0, t_max]
    integral = 2 * torch.trapezoid(integrand, t, dim=-1)
    n = proj.shape[0] * (dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1)
    return n * integral


@REGULARIZERS.register("sigreg")
class SIGReg(Term):
    """LeJEPA's sketched isotropic Gaussian regulariser: mean Epps–Pulley statistic of
    ``num_slices`` random 1-D projections of the pooled context embeddings. Directions are
    redrawn every step from a generator seeded by the step, identically on every rank."""

    def __init__(self, name: str = "sigreg", weight=None, num_slices: int = 256, num_points: int = 17):
        super().__init__(name, weight)
        if num_slices < 1:
            raise ConfigError(f"model.regularizers: sigreg num_slices = {num_slices}; must be >= 1")
        self.num_slices, self.num_points = num_slices, num_points
        self._calls = 0

    def forward(self, out: JEPAOutputs) -> Tensor:
        x = pooled_context(out)
        step = int(out.extras.get("step", self._calls))
        self._calls += 1
        g = torch.Generator().manual_seed(step)
        a = torch.randn(x.shape[1], self.num_slices, generator=g).to(x.device)
        a = a / a.norm(dim=0, keepdim=True)
        return epps_pulley(x @ a, self.num_points).mean()


@REGULARIZERS.register("vicreg")
class VICRegVarCov(Term):
    """VICReg's variance hinge ``mean_j relu(γ − std_j)`` plus ``cov_weight`` × the mean squared
    off-diagonal covariance of the pooled context embeddings (global batch under DDP)."""

    def __init__(
        self,
        name: str = "vicreg",
        weight=None,
        gamma: float = 1.0,
        cov_weight: float = 0.04,
        eps: float = 1e-4,
    ):
        super().__init__(name, weight)
        self.gamma, self.cov_weight, self.eps = gamma, cov_weight, eps

    def forward(self, out: JEPAOutputs) -> Tensor:
        x = pooled_context(out)
        mean = _global_mean(x)
        xc = x - mean
        cov = _global_mean(xc.unsqueeze(2) * xc.unsqueeze(1))  # [D, D]
        d = x.shape[1]
        std = torch.sqrt(torch.diagonal(cov) + self.eps)
        var_loss = torch.relu(self.gamma - std).mean()
        off = cov - torch.diag(torch.diagonal(cov))
        return var_loss + self.cov_weight * off.square().sum() / d
