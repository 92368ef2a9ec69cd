"""Environments for latent world models, with the gymnasium API.

* ``varjepa/WindyPointMass-v0`` (:class:`WindyPointMass`): a stochastic, partially observed 2-D
  point mass. Random wind gusts push it south, it sees only a noisy position (no velocity, no
  wind), and a hazard region lies just south of the straight line from start to goal. A planner
  that sees only the mean outcome walks along the hazard's edge; a risk-aware one keeps a margin.
* ``Pendulum-v1`` with :class:`ActionNoise`: gymnasium's pendulum whose applied torque is the
  commanded one plus Gaussian noise.

:func:`make_env` builds either from a plain spec ``{id, kwargs, action_noise, max_episode_steps}``
so that configs, caches and checkpoints can name an environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ..registry import ConfigError

WINDY_POINT_ID = "varjepa/WindyPointMass-v0"


@dataclass(frozen=True)
class Rect:
    """Axis-aligned rectangle ``[x0, x1] × [y0, y1]``."""

    x0: float
    x1: float
    y0: float
    y1: float

    def contains(self, p: np.ndarray) -> np.ndarray:
        """Whether points ``[..., 2]`` lie inside (boundary included); shape ``[...]``."""
        p = np.asarray(p)
        return (
            (p[..., 0] >= self.x0) & (p[..., 0] <= self.x1) & (p[..., 1] >= self.y0) & (p[..., 1] <= self.y1)
        )


class WindyPointMass(gym.Env):
    """A point mass on a plane with southward wind gusts, noisy position observations, a goal and a
    hazard beside the shortest path.

    Dynamics per step (``a`` clipped to ``[-1, 1]²``)::

        v' = damping·v + accel·a + w,    p' = p + v'
        w  = N(0, wind_std²·I) + g·(sin φ, −cos φ)   with probability gust_prob, else the first part only
        g ~ U(0.5, 1)·gust_strength,  φ ~ N(0, gust_spread²)

    Observation: ``p' + N(0, obs_noise²·I)`` (position only: velocity and wind are hidden).
    Reward: −1 per step, −``hazard_penalty`` on entering the hazard rectangle. The episode ends
    (``terminated``) on entering the hazard or coming within ``goal_radius`` of the goal, and is
    truncated after ``max_steps``. ``info`` holds ``position``, ``velocity``, ``hazard``,
    ``success``, ``gust`` and ``distance`` (to the goal).

    Args:
        start / goal: start and goal positions.
        hazard: the hazard rectangle ``(x0, x1, y0, y1)``.
        terminate_on_hazard / terminate_on_goal: set False to collect fixed-length rollouts.
        start_noise: std of the start position.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        start: tuple[float, float] = (-1.4, 0.0),
        goal: tuple[float, float] = (1.4, 0.0),
        hazard: tuple[float, float, float, float] = (-0.7, 0.7, -1.0, -0.12),
        damping: float = 0.6,
        accel: float = 0.05,
        wind_std: float = 0.004,
        gust_prob: float = 0.03,
        gust_strength: float = 0.3,
        gust_spread: float = 0.3,
        obs_noise: float = 0.03,
        start_noise: float = 0.02,
        goal_radius: float = 0.1,
        hazard_penalty: float = 50.0,
        max_steps: int = 60,
        terminate_on_hazard: bool = True,
        terminate_on_goal: bool = True,
        bounds: float = 2.0,
        render_mode: str | None = None,
    ):
        super().__init__()
        for name, v in (("damping", damping), ("gust_prob", gust_prob)):
            if not 0 <= v <= 1:
                raise ConfigError(f"WindyPointMass: {name} = {v}; must be in [0, 1]")
        for name, v in (
            ("accel", accel),
            ("wind_std", wind_std),
            ("gust_strength", gust_strength),
            ("obs_noise", obs_noise),
            ("start_noise", start_noise),
            ("goal_radius", goal_radius),
        ):
            if v < 0:
                raise ConfigError(f"WindyPointMass: {name} = {v}; must be >= 0")
        if max_steps < 1:
            raise ConfigError(f"WindyPointMass: max_steps = {max_steps}; must be >= 1")
        x0, x1, y0, y1 = hazard
        if not (x0 < x1 and y0 < y1):
            raise ConfigError(f"WindyPointMass: hazard = {hazard}; need x0 < x1 and y0 < y1")
        self.start = np.asarray(start, dtype=np.float64)
        self.goal = np.asarray(goal, dtype=np.float64)
        self.hazard = Rect(*map(float, hazard))
        if self.hazard.contains(self.start) or self.hazard.contains(self.goal):
            raise ConfigError("WindyPointMass: start and goal must lie outside the hazard")
        self.damping, self.accel = damping, accel
        self.wind_std, self.gust_prob = wind_std, gust_prob
        self.gust_strength, self.gust_spread = gust_strength, gust_spread
        self.obs_noise, self.start_noise = obs_noise, start_noise
        self.goal_radius, self.hazard_penalty = goal_radius, hazard_penalty
        self.max_steps = max_steps
        self.terminate_on_hazard, self.terminate_on_goal = terminate_on_hazard, terminate_on_goal
        self.bounds = bounds
        self.render_mode = render_mode
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        lim = bounds + 1.0  # positions are clipped to ±bounds; the noise may take them a little further
        self.observation_space = spaces.Box(-lim, lim, shape=(2,), dtype=np.float32)
        self.pos = self.start.copy()
        self.vel = np.zeros(2)
        self.t = 0

    def _observe(self) -> np.ndarray:
        noise = self.np_random.normal(0.0, 1.0, 2) * self.obs_noise
        return (self.pos + noise).astype(np.float32)

    def _info(self, gust: bool = False) -> dict[str, Any]:
        return {
            "position": self.pos.copy(),
            "velocity": self.vel.copy(),
            "hazard": bool(self.hazard.contains(self.pos)),
            "success": bool(np.linalg.norm(self.pos - self.goal) <= self.goal_radius),
            "gust": gust,
            "distance": float(np.linalg.norm(self.pos - self.goal)),
        }

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.pos = self.start + self.np_random.normal(0.0, self.start_noise, 2)
        self.vel = np.zeros(2)
        self.t = 0
        return self._observe(), self._info()

    def step(self, action):
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        # every random number is drawn on every step, whatever happens, so that two policies run
        # on the same seed meet the same wind (paired comparisons)
        rng = self.np_random
        wind = rng.normal(0.0, self.wind_std, 2)
        u, g, phi = rng.random(), rng.uniform(0.5, 1.0), rng.normal(0.0, self.gust_spread)
        gust = bool(u < self.gust_prob)
        if gust:
            wind = wind + g * self.gust_strength * np.array([np.sin(phi), -np.cos(phi)])
        self.vel = self.damping * self.vel + self.accel * a + wind
        self.pos = np.clip(self.pos + self.vel, -self.bounds, self.bounds)
        self.t += 1
        info = self._info(gust)
        reward = -1.0 - (self.hazard_penalty if info["hazard"] else 0.0)
        terminated = (self.terminate_on_hazard and info["hazard"]) or (
            self.terminate_on_goal and info["success"]
        )
        truncated = self.t >= self.max_steps and not terminated
        return self._observe(), float(reward), bool(terminated), bool(truncated), info

    def render(self):
        """An RGB picture ``[H, W, 3]`` of the arena (``render_mode="rgb_array"``)."""
        if self.render_mode != "rgb_array":
            return None
        from .plots import arena_figure, figure_to_array

        fig, _ = arena_figure(self, [np.asarray([self.pos])])
        return figure_to_array(fig)


class ActionNoise(gym.ActionWrapper):
    """Adds ``N(0, (std·half-range)²)`` to every action before the environment applies it (clipped to
    the action space). The commanded action is what the agent (and the rollout data) records.

    Args:
        env: an environment with a Box action space.
        std: noise std as a fraction of half the action range (Pendulum: 1.0 = 2 N·m).
    """

    def __init__(self, env: gym.Env, std: float):
        super().__init__(env)
        if not isinstance(env.action_space, spaces.Box):
            raise ConfigError("action_noise needs a continuous (Box) action space")
        if std < 0:
            raise ConfigError(f"action_noise = {std}; must be >= 0")
        self.std = float(std)
        self._half = (env.action_space.high - env.action_space.low) / 2.0

    def action(self, action):
        a = np.asarray(action, dtype=np.float64)
        noisy = a + self.np_random.normal(0.0, 1.0, a.shape) * self.std * self._half
        return np.clip(noisy, self.action_space.low, self.action_space.high).astype(self.action_space.dtype)


gym.register(WINDY_POINT_ID, entry_point=WindyPointMass, disable_env_checker=True)

_ENV_KEYS = {"id", "kwargs", "action_noise", "max_episode_steps"}


def env_spec(spec: str | Mapping[str, Any]) -> dict[str, Any]:
    """Normalise an environment spec to ``{id, kwargs, action_noise, max_episode_steps}`` (plain types,
    for hashing and checkpoints). A string is an environment id."""
    if isinstance(spec, str):
        spec = {"id": spec}
    if not isinstance(spec, Mapping) or "id" not in spec:
        raise ConfigError(f"data.env = {spec!r}: give an environment id or a mapping with 'id'")
    unknown = set(spec) - _ENV_KEYS
    if unknown:
        raise ConfigError(f"data.env: unknown key(s) {sorted(unknown)}; allowed: {sorted(_ENV_KEYS)}")
    out = {
        "id": str(spec["id"]),
        "kwargs": dict(spec.get("kwargs") or {}),
        "action_noise": float(spec.get("action_noise") or 0.0),
        "max_episode_steps": spec.get("max_episode_steps"),
    }
    if out["id"] not in gym.registry:
        known = sorted(k for k in gym.registry if k.startswith(("varjepa/", "Pendulum")))
        raise ConfigError(
            f"data.env.id = '{out['id']}' is not a registered gymnasium environment (e.g. {known})"
        )
    return out


def make_env(spec: str | Mapping[str, Any], **overrides: Any) -> gym.Env:
    """Build the environment a spec names; ``overrides`` update its kwargs (e.g. termination flags).

    A Box observation and action space are required (world models regress continuous latents)."""
    s = env_spec(spec)
    kwargs = {**s["kwargs"], **overrides}
    extra = {"max_episode_steps": int(s["max_episode_steps"])} if s["max_episode_steps"] else {}
    try:
        env = gym.make(s["id"], disable_env_checker=True, **extra, **kwargs)
    except TypeError as e:
        raise ConfigError(f"data.env: bad kwargs {kwargs} for '{s['id']}': {e}") from e
    for name, sp in (("observation", env.observation_space), ("action", env.action_space)):
        if not isinstance(sp, spaces.Box) or len(sp.shape) != 1:
            raise ConfigError(f"data.env.id = '{s['id']}': its {name} space must be a flat Box, got {sp}")
    if s["action_noise"] > 0:
        env = ActionNoise(env, s["action_noise"])
    return env
