"""Planning costs in latent space.

A cost is a callable ``cost(model, z) -> [..., H]``: per-step costs of imagined latents ``z``
``[..., H, d]``. It may define ``bind(model, env)``, called once before planning (e.g. to embed the
goal). Configs select one from :data:`COSTS` by name, or any callable by class_path (a class is
instantiated with ``init_args``; a function is called as ``fn(model, z, **init_args)``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..registry import ConfigError, Registry

COSTS: Registry = Registry("planning cost", "plan.cost")


@COSTS.register("goal_hazard")
class GoalHazardCost:
    """Distance to the goal's latent plus the rollout's hazard.

    Per step ``t`` of a rollout: ``distance_weight·‖z_t − z_goal‖ + hazard_weight·(M_t − M_{t−1})``
    with ``M_t = max_{s≤t} p_s`` and ``p_s = P(hazard | z_s)`` from the model's hazard head. The
    hazard part sums to ``hazard_weight·max_t p_t`` over the horizon: a rollout pays once for the
    most hazardous state it reaches, as an episode that ends in the hazard does (a per-step sum
    would charge it for every imagined step inside, and a product of per-step survival
    probabilities would compound the head's small false alarms along correlated steps into a
    large one). So each rollout's hazard is close to 0 or 1 — the spread over rollouts that a risk
    measure such as CVaR reads. ``z_goal`` is the target encoder's latent of ``goal_obs`` (default:
    the environment's ``goal`` attribute, e.g. WindyPointMass's goal position). Models without a
    hazard head pay distance only.

    Args:
        goal_obs: the observation to reach (raw units).
        distance_weight / hazard_weight: weights of the two parts.
    """

    def __init__(
        self,
        goal_obs: Sequence[float] | None = None,
        distance_weight: float = 1.0,
        hazard_weight: float = 10.0,
    ):
        if distance_weight < 0 or hazard_weight < 0:
            raise ConfigError("plan.cost: distance_weight and hazard_weight must be >= 0")
        self.goal_obs = None if goal_obs is None else [float(v) for v in goal_obs]
        self.distance_weight, self.hazard_weight = distance_weight, hazard_weight
        self.z_goal: Tensor | None = None

    def bind(self, model, env=None) -> None:
        """Embed the goal observation with the model's target encoder."""
        goal = self.goal_obs
        if goal is None:
            goal = getattr(getattr(env, "unwrapped", None), "goal", None)
            if goal is None:
                raise ConfigError("plan.cost.goal_obs: the environment has no 'goal'; give goal_obs")
        g = torch.as_tensor([float(v) for v in goal], dtype=torch.float32, device=model.obs_mean.device)
        if g.shape != (model.obs_dim,):
            raise ConfigError(
                f"plan.cost.goal_obs = {list(goal)} has {len(g)} values; observations have {model.obs_dim}"
            )
        self.z_goal = model.encode(g, target=True)

    def hazard_level(self, model, z: Tensor) -> Tensor:
        """``M_t`` ``[..., H]``: the largest hazard probability a rollout has reached by each step."""
        return torch.cummax(torch.sigmoid(model.hazard_logits(z)), dim=-1).values

    def __call__(self, model, z: Tensor) -> Tensor:
        if self.z_goal is None:
            raise RuntimeError("GoalHazardCost: call bind(model, env) before planning")
        cost = self.distance_weight * (z - self.z_goal).norm(dim=-1)
        if self.hazard_weight > 0 and model.hazard_head is not None:
            level = self.hazard_level(model, z)
            cost = cost + self.hazard_weight * torch.diff(
                level, dim=-1, prepend=torch.zeros_like(level[..., :1])
            )
        return cost


def build_cost(spec: Any) -> Callable:
    """A cost callable from a registry name, ``{name, **opts}``, a class_path spec or a callable."""
    if callable(spec) and not isinstance(spec, type):
        return spec
    builder, opts = COSTS.resolve(spec, "plan.cost")
    if builder is None:
        raise ConfigError(f"plan.cost = {spec!r}: give a name ({', '.join(COSTS.names())}) or a class_path")
    if inspect.isclass(builder):
        try:
            return builder(**opts)
        except TypeError as e:
            raise ConfigError(f"plan.cost: bad options {opts} for {builder.__name__}: {e}") from e
    return functools.partial(builder, **opts)
