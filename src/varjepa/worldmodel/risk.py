"""Risk measures: the planner's objective over sampled rollout costs.

Each maps costs ``[N, P]`` (N candidate action sequences × P sampled rollouts) to one score per
candidate ``[N]``; lower is better. Registered in :data:`RISKS` for configs:
``expected``, ``{name: cvar, alpha: 0.1}``, ``{name: mean_std, lam: 1.0}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from ..registry import ConfigError, Registry

RISKS: Registry = Registry("risk measure", "plan.objectives")


class RiskMeasure:
    """Base class: ``risk(costs [N, P]) -> [N]``."""

    name = "risk"

    def __call__(self, costs: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


@RISKS.register("expected")
@dataclass(frozen=True)
class Expected(RiskMeasure):
    """Risk-neutral: the mean cost over rollouts."""

    name = "expected"

    def __call__(self, costs: Tensor) -> Tensor:
        return costs.mean(-1)


@RISKS.register("cvar")
@dataclass(frozen=True)
class CVaR(RiskMeasure):
    """Conditional value at risk: the mean of the worst ``alpha`` share of the rollouts' costs (at
    least one rollout, ``⌈alpha·P⌉`` of them). ``alpha = 1`` is the mean; small ``alpha`` looks only
    at the tail."""

    alpha: float = 0.1
    name = "cvar"

    def __post_init__(self):
        if not 0 < self.alpha <= 1:
            raise ConfigError(f"plan.objectives: cvar alpha = {self.alpha}; must be in (0, 1]")

    def __call__(self, costs: Tensor) -> Tensor:
        m = max(1, math.ceil(self.alpha * costs.shape[-1] - 1e-9))
        return costs.topk(m, dim=-1).values.mean(-1)


@RISKS.register("mean_std")
@dataclass(frozen=True)
class MeanStd(RiskMeasure):
    """Mean plus ``lam`` standard deviations (population std over rollouts)."""

    lam: float = 1.0
    name = "mean_std"

    def __post_init__(self):
        if self.lam < 0:
            raise ConfigError(f"plan.objectives: mean_std lam = {self.lam}; must be >= 0")

    def __call__(self, costs: Tensor) -> Tensor:
        return costs.mean(-1) + self.lam * costs.std(-1, correction=0)


def risk_label(risk: RiskMeasure) -> str:
    """A short label for tables: ``expected``, ``cvar0.1``, ``mean_std1``."""
    if isinstance(risk, CVaR):
        return f"cvar{risk.alpha:g}"
    if isinstance(risk, MeanStd):
        return f"mean_std{risk.lam:g}"
    return getattr(risk, "name", type(risk).__name__)
