"""Uncertainty-aware latent world models and risk-sensitive planning.

Environments (:mod:`.envs`), cached behaviour-policy rollouts (:mod:`.rollouts`, :mod:`.data`; a trained planner as a behaviour
policy, :mod:`.planner_policy`), the
action-conditioned Var-JEPA :class:`LatentWorldModel` (:mod:`.model`), k-step calibration
(:mod:`.evaluate`), risk measures, costs and CEM/MPPI planners (:mod:`.risk`, :mod:`.costs`,
:mod:`.planners`) and the ``varjepa plan`` command (:mod:`.plan`).
"""

from .costs import COSTS, GoalHazardCost, build_cost
from .data import TrajectoryDataModule, WindowDataset, collate_windows
from .envs import WINDY_POINT_ID, ActionNoise, WindyPointMass, make_env
from .evaluate import RankCoverage, k_step_calibration, rollout_samples
from .model import LatentWorldModel
from .planner_policy import PlannerPolicy
from .planners import PLANNERS, CEMPlanner, LatentPlanner, MPPIPlanner
from .risk import RISKS, CVaR, Expected, MeanStd
from .rollouts import POLICIES, Rollouts, collect_rollouts, load_or_collect

__all__ = [
    "COSTS",
    "PLANNERS",
    "POLICIES",
    "RISKS",
    "WINDY_POINT_ID",
    "ActionNoise",
    "CEMPlanner",
    "CVaR",
    "Expected",
    "GoalHazardCost",
    "LatentPlanner",
    "LatentWorldModel",
    "MPPIPlanner",
    "MeanStd",
    "PlannerPolicy",
    "RankCoverage",
    "Rollouts",
    "TrajectoryDataModule",
    "WindowDataset",
    "WindyPointMass",
    "build_cost",
    "collate_windows",
    "collect_rollouts",
    "k_step_calibration",
    "load_or_collect",
    "make_env",
    "rollout_samples",
]
