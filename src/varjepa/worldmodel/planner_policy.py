"""A trained world model's planner as a behaviour policy: data from the paths the planner flies.

A world model fitted on a behaviour policy's rollouts is accurate where that policy went; a planner
then flies elsewhere (on the windy point mass, an arc over the hazard along which the imagined mass
drifts south, README "What the learned planners do differently"). Collecting episodes with the
planner itself and refitting on them, as model-based RL does, is the remedy. Registered as the
``planner`` policy of :data:`~varjepa.worldmodel.rollouts.POLICIES`, so a data module can collect
with it like with any policy, e.g. in ``data.extra_data``::

    extra_data:
      - policy: {name: planner, ckpt_path: runs/windy_point/version_0/checkpoints/last.ckpt,
                 objective: {name: cvar, alpha: 0.2}, cost: {name: goal_hazard, hazard_weight: 30}}
        episodes: 100
        seed: 6000

The checkpoint's content hash is part of the rollouts' cache key (:meth:`PlannerPolicy.fingerprint`),
so a retrained checkpoint at the same path collects afresh.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..registry import ConfigError
from .rollouts import POLICIES, Policy


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


#: the planning budget a planner policy accepts (as in ``plan:``)
BUDGET_KEYS = frozenset(
    {
        "horizon",
        "candidates",
        "particles",
        "iterations",
        "first_iterations",
        "noise",
        "discount",
        "common_noise",
        "elites",
        "momentum",
        "temperature",
    }
)


@POLICIES.register("planner")
class PlannerPolicy(Policy):
    """Act with a planner on a trained :class:`~varjepa.worldmodel.LatentWorldModel`.

    Args:
        ckpt_path: the world model's checkpoint (its observation and action sizes must match the
            environment's).
        planner: ``cem`` or ``mppi``.
        objective: the risk measure (``expected``, ``{name: cvar, alpha}``, ...).
        cost: the planning cost (as ``plan.cost``).
        exploration: std of Gaussian noise added to each planned action, as a share of half the
            action range (clipped to the action space); the belief is told the executed action.
        budget: ``horizon``, ``candidates``, ``particles``, ``iterations``, ... as in
            :class:`~varjepa.worldmodel.plan.PlanSettings`.

    Each episode seeds torch from the episode's policy generator, so collections are reproducible;
    :func:`~varjepa.worldmodel.rollouts.collect_rollouts` restores torch's global generator after
    collecting, so a fit's initial weights do not depend on whether the rollouts were cached.
    """

    def __init__(
        self,
        action_space,
        observation_space,
        env,
        ckpt_path: str,
        planner: str = "cem",
        objective: Any = "expected",
        cost: Any = None,
        exploration: float = 0.0,
        **budget: Any,
    ):
        super().__init__(action_space, observation_space, env)
        from .plan import PlanSettings, build_planner, load_world_model

        if exploration < 0:
            raise ConfigError(f"data.policy (planner): exploration = {exploration}; must be >= 0")
        if not Path(ckpt_path).is_file():
            raise ConfigError(f"data.policy (planner): ckpt_path = '{ckpt_path}' is not a file")
        unknown = set(budget) - BUDGET_KEYS
        if unknown:
            raise ConfigError(
                f"data.policy (planner): unknown option(s) {sorted(unknown)}; the budget options are "
                f"{sorted(BUDGET_KEYS)}"
            )
        try:
            settings = PlanSettings(
                planners=[planner], objectives=[objective], cost=cost or {"name": "goal_hazard"}, **budget
            )
        except ConfigError as e:  # name the option where the user wrote it
            raise ConfigError(f"data.policy (planner): {e}") from None
        self.model = load_world_model(ckpt_path)
        sizes = (self.model.obs_dim, self.model.action_dim)
        if sizes != (observation_space.shape[0], action_space.shape[0]):
            raise ConfigError(
                f"data.policy (planner): the checkpoint's observation/action sizes {sizes} differ from "
                f"the environment's {(observation_space.shape[0], action_space.shape[0])}"
            )
        try:
            self.planner = build_planner(self.model, settings, planner, objective, env)
        except ConfigError as e:
            raise ConfigError(f"data.policy (planner): {e}") from None
        self.exploration = float(exploration)
        self._half = (action_space.high - action_space.low) / 2.0

    @classmethod
    def fingerprint(cls, opts: dict[str, Any]) -> dict[str, Any]:
        """What the cache key must hold beyond the spec: the checkpoint's content hash."""
        path = opts.get("ckpt_path")
        if path is None or not Path(path).is_file():
            raise ConfigError(f"data.policy (planner): ckpt_path = '{path}' is not a file")
        return {"ckpt_sha256": file_sha256(path)}

    def reset(self, rng: np.random.Generator) -> None:
        super().reset(rng)
        torch.manual_seed(int(rng.integers(2**31)))
        self.planner.reset()

    def act(self, obs: np.ndarray) -> np.ndarray:
        a = self.planner.act(obs)
        if self.exploration > 0:
            a = a + self.rng.normal(0.0, 1.0, a.shape) * self.exploration * self._half
            a = np.clip(a, self.action_space.low, self.action_space.high).astype(np.float32)
            with torch.no_grad():  # the belief reads the action that was executed
                self.planner.prev = self.model.normalize_action(torch.as_tensor(a))[None].clamp(-1, 1)
        return a
