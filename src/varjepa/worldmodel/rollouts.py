"""Rollouts of a behaviour policy, generated locally and cached under a content hash.

:func:`collect_rollouts` runs ``episodes`` episodes of at most ``steps`` steps and returns a
:class:`Rollouts` (numpy arrays). :func:`load_or_collect` keys the result by a SHA-256 of
everything that determines it (environment spec, collection overrides, policy spec, sizes, seed
and :data:`ROLLOUT_FORMAT`) and stores it as ``<cache_dir>/<env>-<hash>.npz``, written under a
temporary name and renamed, so an interrupted run never leaves a half-written cache file.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from ..registry import ConfigError, Registry
from .envs import env_spec, make_env

#: bump when the arrays or the way they are generated change (old cache files are then ignored)
ROLLOUT_FORMAT = 1

POLICIES: Registry = Registry("behaviour policy", "data.policy")


@dataclass
class Rollouts:
    """Episodes of a behaviour policy, padded to ``steps``.

    Attributes:
        obs: observations ``[E, T+1, O]`` (``obs[:, t+1]`` follows ``action[:, t]``).
        action: commanded actions ``[E, T, A]``.
        reward: ``[E, T]``.
        hazard: whether the state after each observation is in a hazard ``[E, T+1]`` (False where
            the environment reports none).
        position: true positions ``[E, T+1, 2]`` where the environment reports them (else empty).
        length: valid transitions per episode ``[E]`` (``obs[e, :length+1]`` are valid).
    """

    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    hazard: np.ndarray
    position: np.ndarray
    length: np.ndarray

    @property
    def num_episodes(self) -> int:
        return int(self.obs.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in ("obs", "action", "reward", "hazard", "position", "length")}

    @classmethod
    def concat(cls, parts: list[Rollouts]) -> Rollouts:
        """The episodes of ``parts`` in order: ``obs`` ``[ΣE, T+1, O]``, ``action`` ``[ΣE, T, A]`` and so
        on, padded with zeros to the longest part's ``T`` (``length`` says what is valid); positions
        ``[ΣE, T+1, 2]`` are kept only if every part has them (else ``[ΣE, 0, 2]``)."""
        if not parts:
            raise ValueError("Rollouts.concat needs at least one part")
        T = max(r.action.shape[1] for r in parts)
        keep_pos = all(r.position.shape[1] > 0 for r in parts)

        def pad(a: np.ndarray, length: int) -> np.ndarray:
            width = [(0, 0), (0, length - a.shape[1])] + [(0, 0)] * (a.ndim - 2)
            return np.pad(a, width)

        return cls(
            obs=np.concatenate([pad(r.obs, T + 1) for r in parts]),
            action=np.concatenate([pad(r.action, T) for r in parts]),
            reward=np.concatenate([pad(r.reward, T) for r in parts]),
            hazard=np.concatenate([pad(r.hazard, T + 1) for r in parts]),
            position=(
                np.concatenate([pad(r.position, T + 1) for r in parts])
                if keep_pos
                else np.zeros((sum(r.num_episodes for r in parts), 0, 2), np.float32)
            ),
            length=np.concatenate([r.length for r in parts]),
        )


class Policy:
    """A behaviour policy: ``reset(rng)`` at each episode, ``act(obs) -> action`` (in the env's action
    space). Policies see observations only."""

    def __init__(self, action_space: gym.spaces.Box, observation_space: gym.spaces.Box, env: gym.Env):
        self.action_space = action_space
        self.rng = np.random.default_rng(0)

    def reset(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def act(self, obs: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


@POLICIES.register("random")
class SmoothRandomPolicy(Policy):
    """Random actions with persistence: ``a_t = ρ·a_{t−1} + √(1−ρ²)·ε``, ``ε ~ N(0, scale²)`` in units of
    half the action range, clipped (``rho = 0``: i.i.d. Gaussian; large ``scale``: bang-bang)."""

    def __init__(self, action_space, observation_space, env, rho: float = 0.8, scale: float = 0.8):
        super().__init__(action_space, observation_space, env)
        if not 0 <= rho < 1:
            raise ConfigError(f"data.policy.rho = {rho}; must be in [0, 1)")
        self.rho, self.scale = rho, scale
        self.mid = (action_space.high + action_space.low) / 2
        self.half = (action_space.high - action_space.low) / 2
        self.prev = np.zeros(action_space.shape)

    def reset(self, rng):
        super().reset(rng)
        self.prev = self.rng.normal(0, self.scale, self.action_space.shape)

    def act(self, obs):
        eps = self.rng.normal(0, self.scale, self.action_space.shape)
        self.prev = self.rho * self.prev + np.sqrt(1 - self.rho**2) * eps
        a = self.mid + np.clip(self.prev, -1, 1) * self.half
        return a.astype(self.action_space.dtype)


@POLICIES.register("waypoint")
class WaypointPolicy(Policy):
    """For 2-D point masses: a noisy proportional controller towards random waypoints (new one every
    ``switch`` steps on average; the environment's goal with probability ``goal_prob``), from the
    noisy observed position. Covers the arena, the hazard and the paths to the goal.

    Args:
        arena: waypoints are drawn uniformly from ``[x0, x1] × [y0, y1]``.
        gain: controller gain; noise: action noise std.
    """

    def __init__(
        self,
        action_space,
        observation_space,
        env,
        arena: tuple[float, float, float, float] = (-1.7, 1.7, -1.0, 1.0),
        gain: float = 3.0,
        noise: float = 0.5,
        switch: float = 15.0,
        goal_prob: float = 0.3,
    ):
        super().__init__(action_space, observation_space, env)
        if action_space.shape != (2,) or observation_space.shape != (2,):
            raise ConfigError("data.policy = 'waypoint' needs 2-D positions and 2-D actions (WindyPointMass)")
        self.arena, self.gain, self.noise = arena, gain, noise
        self.switch, self.goal_prob = switch, goal_prob
        self.goal = np.asarray(getattr(env.unwrapped, "goal", (0.0, 0.0)), dtype=np.float64)
        self.waypoint = self.goal

    def _new_waypoint(self) -> np.ndarray:
        if self.rng.random() < self.goal_prob:
            return self.goal
        x0, x1, y0, y1 = self.arena
        return np.array([self.rng.uniform(x0, x1), self.rng.uniform(y0, y1)])

    def reset(self, rng):
        super().reset(rng)
        self.waypoint = self._new_waypoint()

    def act(self, obs):
        if self.rng.random() < 1.0 / self.switch:
            self.waypoint = self._new_waypoint()
        a = self.gain * (self.waypoint - obs) + self.rng.normal(0, self.noise, 2)
        return np.clip(a, -1, 1).astype(np.float32)


def collect_rollouts(
    env: str | Mapping[str, Any],
    policy: str | Mapping[str, Any] = "random",
    episodes: int = 100,
    steps: int = 100,
    seed: int = 0,
    overrides: Mapping[str, Any] | None = None,
) -> Rollouts:
    """Run ``episodes`` seeded episodes (episode ``e`` resets with seed ``seed + e``) of at most
    ``steps`` steps; see :class:`Rollouts` for the arrays. ``overrides`` update the environment's
    kwargs for collection (e.g. ``{terminate_on_hazard: false}`` for fixed-length episodes)."""
    if episodes < 1 or steps < 1:
        raise ConfigError(f"data.episodes = {episodes}, data.steps = {steps}; both must be >= 1")
    # a policy may draw from (or seed) torch's global generator, e.g. a planner's sampling: keep the
    # caller's stream as it was, so that what follows (a model's initial weights) does not depend on
    # whether the rollouts came from the cache
    with torch.random.fork_rng():  # the CPU generator and every CUDA device's
        return _collect(env, policy, episodes, steps, seed, overrides)


def _collect(env, policy, episodes: int, steps: int, seed: int, overrides) -> Rollouts:
    e = make_env(env, **dict(overrides or {}))
    builder, opts = POLICIES.resolve(policy, "data.policy")
    pol = builder(e.action_space, e.observation_space, e, **opts)
    n_obs, n_act = e.observation_space.shape[0], e.action_space.shape[0]
    obs = np.zeros((episodes, steps + 1, n_obs), np.float32)
    act = np.zeros((episodes, steps, n_act), np.float32)
    rew = np.zeros((episodes, steps), np.float32)
    haz = np.zeros((episodes, steps + 1), bool)
    pos = np.zeros((episodes, steps + 1, 2), np.float32)
    has_pos = False
    length = np.zeros(episodes, np.int64)
    for ep in range(episodes):
        o, info = e.reset(seed=seed + ep)
        e.action_space.seed(seed + ep)
        pol.reset(np.random.default_rng([seed, ep, 0x706F6C]))
        obs[ep, 0], haz[ep, 0] = o, bool(info.get("hazard", False))
        if "position" in info:
            pos[ep, 0], has_pos = info["position"], True
        t = 0
        for t in range(steps):
            a = pol.act(obs[ep, t])
            o, r, term, trunc, info = e.step(a)
            act[ep, t], obs[ep, t + 1], rew[ep, t] = a, o, r
            haz[ep, t + 1] = bool(info.get("hazard", False))
            if "position" in info:
                pos[ep, t + 1] = info["position"]
            if term or trunc:
                break
        length[ep] = t + 1
    e.close()
    if not np.isfinite(obs).all():
        raise ValueError(f"data.env '{env_spec(env)['id']}' returned non-finite observations")
    return Rollouts(obs, act, rew, haz, pos if has_pos else np.zeros((episodes, 0, 2), np.float32), length)


def env_defaults(env_id: str) -> dict[str, Any]:
    """The default constructor arguments of a registered environment (part of the cache key, so that
    changing an environment's defaults in code does not reuse stale rollouts)."""
    entry = gym.spec(env_id).entry_point
    if isinstance(entry, str):
        entry = gym.envs.registration.load_env_creator(entry)
    try:
        params = inspect.signature(entry).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: repr(p.default) for p in params if p.default is not inspect.Parameter.empty}


def rollout_key(
    env: str | Mapping[str, Any],
    policy: str | Mapping[str, Any],
    episodes: int,
    steps: int,
    seed: int,
    overrides: Mapping[str, Any] | None = None,
) -> str:
    """SHA-256 (hex) of everything that determines a collection."""
    spec = env_spec(env)
    content = {
        "format": ROLLOUT_FORMAT,
        "env": spec,
        "env_defaults": env_defaults(spec["id"]),
        "overrides": dict(overrides or {}),
        "policy": policy,
        **policy_fingerprint(policy),
        "episodes": int(episodes),
        "steps": int(steps),
        "seed": int(seed),
        "gymnasium": gym.__version__,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def policy_fingerprint(policy: str | Mapping[str, Any]) -> dict[str, Any]:
    """What a policy adds to the cache key beyond its spec (e.g. a checkpoint's content hash, from
    the policy class's ``fingerprint(opts)``); empty for policies that need nothing."""
    builder, opts = POLICIES.resolve(policy, "data.policy")
    fingerprint = getattr(builder, "fingerprint", None)
    return {"policy_fingerprint": fingerprint(opts)} if fingerprint is not None else {}


def default_cache_dir() -> Path:
    """``$VARJEPA_CACHE`` or ``~/.cache/varjepa``, plus ``/rollouts``."""
    root = os.environ.get("VARJEPA_CACHE") or Path.home() / ".cache" / "varjepa"
    return Path(root) / "rollouts"


def load_or_collect(
    env: str | Mapping[str, Any],
    policy: str | Mapping[str, Any] = "random",
    episodes: int = 100,
    steps: int = 100,
    seed: int = 0,
    overrides: Mapping[str, Any] | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[Rollouts, Path, bool]:
    """The cached rollouts for these arguments, collecting and caching them first if needed.

    Returns ``(rollouts, path, from_cache)``. A cache file that cannot be read is replaced (with a
    warning)."""
    key = rollout_key(env, policy, episodes, steps, seed, overrides)
    name = env_spec(env)["id"].replace("/", "_")
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / f"{name}-{key[:16]}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                if str(f["key"]) != key:
                    raise ValueError("its content hash differs from its name")
                return Rollouts(**{k: f[k] for k in Rollouts.__dataclass_fields__}), path, True
        except Exception as e:  # a truncated or foreign file: collect again
            warnings.warn(f"rollout cache '{path}' is unreadable ({e}); collecting again", stacklevel=2)
    roll = collect_rollouts(env, policy, episodes, steps, seed, overrides)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, key=np.array(key), **roll.arrays())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return roll, path, False
