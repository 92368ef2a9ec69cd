"""Risk measures: the planner's objective over sampled rollout costs.

Each maps costs ``[N, P]`` (N candidate action sequences × P sampled rollouts) to one score per
candidate ``[N]``; lower is better. Registered in :data:`RISKS` for configs:
``expected``, ``{name: cvar, alpha: 0.1}``, ``{name: mean_std, lam: 1.0}``.

Rollouts drawn by importance sampling (a planner's ``tilt``, which draws rare mixture components
more often) come with log weights ``[N, P]``; every measure then reads the weighted empirical
distribution of the costs (weights self-normalised per candidate) instead of the equal-weight one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..registry import ConfigError, Registry

RISKS: Registry = Registry("risk measure", "plan.objectives")


class RiskMeasure:
    """Base class: ``risk(costs [N, P], log_weights [N, P] | None) -> [N]``."""

    name = "risk"

    def __call__(self, costs: Tensor, log_weights: Tensor | None = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError


def normalized_weights(log_weights: Tensor) -> Tensor:
    """Self-normalised importance weights ``[N, P]`` (each row sums to 1) of log weights ``[N, P]``."""
    return torch.softmax(log_weights.float(), -1)


def weighted_cvar(costs: Tensor, weights: Tensor, alpha: float) -> Tensor:
    """CVaR ``[N]`` of the weighted empirical distribution of costs ``[N, P]`` (``weights`` ``[N,
    P]``, rows summing to 1): the mean cost over the worst ``alpha`` of the probability mass, the
    rollout at the boundary counted with the share of its weight that falls inside."""
    c, order = costs.sort(-1, descending=True)
    w = weights.gather(-1, order)
    before = w.cumsum(-1) - w  # mass of the costlier rollouts
    inside = (alpha - before).clamp_min(0).minimum(w)
    return (inside * c).sum(-1) / alpha


@RISKS.register("expected")
@dataclass(frozen=True)
class Expected(RiskMeasure):
    """Risk-neutral: the mean cost over rollouts (weighted mean with importance weights)."""

    name = "expected"

    def __call__(self, costs: Tensor, log_weights: Tensor | None = None) -> Tensor:
        if log_weights is None:
            return costs.mean(-1)
        return (normalized_weights(log_weights) * costs).sum(-1)


@RISKS.register("cvar")
@dataclass(frozen=True)
class CVaR(RiskMeasure):
    """Conditional value at risk: the mean of the worst ``alpha`` share of the rollouts' costs (at
    least one rollout, ``⌈alpha·P⌉`` of them). ``alpha = 1`` is the mean; small ``alpha`` looks only
    at the tail. With importance weights: the worst ``alpha`` of the weighted mass
    (:func:`weighted_cvar`), the boundary rollout counted in part; with equal weights that is
    ``alpha·P`` rollouts, which reads a little further into the tail than ``⌈alpha·P⌉`` whole ones
    when ``alpha·P`` is not a whole number."""

    alpha: float = 0.1
    name = "cvar"

    def __post_init__(self):
        if not 0 < self.alpha <= 1:
            raise ConfigError(f"plan.objectives: cvar alpha = {self.alpha}; must be in (0, 1]")

    def __call__(self, costs: Tensor, log_weights: Tensor | None = None) -> Tensor:
        if log_weights is not None:
            return weighted_cvar(costs, normalized_weights(log_weights), self.alpha)
        m = max(1, math.ceil(self.alpha * costs.shape[-1] - 1e-9))
        return costs.topk(m, dim=-1).values.mean(-1)


@RISKS.register("mean_std")
@dataclass(frozen=True)
class MeanStd(RiskMeasure):
    """Mean plus ``lam`` standard deviations (population std over rollouts; weighted mean and std
    with importance weights)."""

    lam: float = 1.0
    name = "mean_std"

    def __post_init__(self):
        if self.lam < 0:
            raise ConfigError(f"plan.objectives: mean_std lam = {self.lam}; must be >= 0")

    def __call__(self, costs: Tensor, log_weights: Tensor | None = None) -> Tensor:
        if log_weights is None:
            return costs.mean(-1) + self.lam * costs.std(-1, correction=0)
        w = normalized_weights(log_weights)
        mean = (w * costs).sum(-1)
        var = (w * (costs - mean.unsqueeze(-1)).square()).sum(-1)
        return mean + self.lam * var.sqrt()


def risk_label(risk: RiskMeasure) -> str:
    """A short label for tables: ``expected``, ``cvar0.1``, ``mean_std1``."""
    if isinstance(risk, CVaR):
        return f"cvar{risk.alpha:g}"
    if isinstance(risk, MeanStd):
        return f"mean_std{risk.lam:g}"
    return getattr(risk, "name", type(risk).__name__)
