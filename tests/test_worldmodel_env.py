"""World-model environments and data: dynamics, noise statistics, paired randomness, termination,
the action-noise wrapper, rollout collection, the content-hash cache and the trajectory windows."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env

from varjepa.registry import ConfigError
from varjepa.worldmodel import (
    ActionNoise,
    TrajectoryDataModule,
    WindyPointMass,
    collect_rollouts,
    load_or_collect,
    make_env,
)
from varjepa.worldmodel.rollouts import rollout_key

NO_TERM = {"terminate_on_hazard": False, "terminate_on_goal": False}


def test_env_passes_gymnasium_checker():
    check_env(WindyPointMass(render_mode="rgb_array"), skip_render_check=False)
    img = WindyPointMass(render_mode="rgb_array")
    img.reset(seed=0)
    frame = img.render()
    assert frame.ndim == 3 and frame.shape[-1] == 3 and frame.dtype == np.uint8


def test_noise_free_dynamics_follow_the_equations():
    env = WindyPointMass(wind_std=0, gust_prob=0, obs_noise=0, start_noise=0, damping=0.5, accel=0.1)
    obs, info = env.reset(seed=0)
    np.testing.assert_allclose(obs, [-1.4, 0.0])
    p, v = np.array([-1.4, 0.0]), np.zeros(2)
    for a in ([1, 0], [0.5, -1], [2.0, 0.3]):  # 2.0 is clipped to 1
        obs, r, term, trunc, info = env.step(np.array(a, dtype=np.float32))
        v = 0.5 * v + 0.1 * np.clip(a, -1, 1)
        p = p + v
        np.testing.assert_allclose(info["position"], p, atol=1e-12)
        np.testing.assert_allclose(info["velocity"], v, atol=1e-12)
        np.testing.assert_allclose(obs, p, atol=1e-6)
        assert r == -1.0 and not term and not trunc


def test_gusts_and_observation_noise_have_the_configured_statistics():
    env = WindyPointMass(
        gust_prob=0.25,
        gust_strength=0.2,
        gust_spread=0.0,
        wind_std=0.0,
        obs_noise=0.05,
        **NO_TERM,
        max_steps=100_000,
    )
    env.reset(seed=3)
    gusts, dv, obs_err = [], [], []
    v_prev = env.vel.copy()
    for _ in range(4000):
        obs, _, _, _, info = env.step(np.zeros(2))
        gusts.append(info["gust"])
        dv.append(info["velocity"] - env.damping * v_prev)
        v_prev = info["velocity"]
        obs_err.append(obs - info["position"])
    gusts, dv, obs_err = np.array(gusts), np.array(dv), np.array(obs_err)
    # frequency: binomial, 4000 draws, p = 0.25 -> std 0.0068
    assert abs(gusts.mean() - 0.25) < 0.03
    # a gust is g * (0, -1) with g ~ U(0.5, 1) * 0.2 (no spread): mean 0.15 south
    np.testing.assert_allclose(dv[gusts].mean(0), [0.0, -0.15], atol=0.005)
    np.testing.assert_allclose(dv[~gusts], 0.0, atol=1e-12)
    # observation noise: std 0.05 per coordinate
    np.testing.assert_allclose(obs_err.std(0), [0.05, 0.05], rtol=0.05)


def test_same_seed_same_wind_whatever_the_actions():
    runs = []
    for action in ([1.0, 0.0], [-1.0, 1.0]):
        env = WindyPointMass(**NO_TERM, gust_prob=0.2)
        env.reset(seed=11)
        runs.append([env.step(np.array(action))[-1]["gust"] for _ in range(50)])
    assert runs[0] == runs[1] and any(runs[0])


def test_hazard_and_goal_terminate_with_their_rewards():
    env = WindyPointMass(start=(0.0, 0.05), gust_prob=0, wind_std=0, start_noise=0, hazard_penalty=50.0)
    env.reset(seed=0)
    for _ in range(20):
        obs, r, term, trunc, info = env.step(np.array([0.0, -1.0]))
        if term:
            break
    assert term and info["hazard"] and not info["success"] and r == -51.0
    env = WindyPointMass(start=(1.25, 0.0), gust_prob=0, wind_std=0, start_noise=0)
    env.reset(seed=0)
    obs, r, term, trunc, info = env.step(np.array([1.0, 0.0]))
    assert term and info["success"] and r == -1.0
    env = WindyPointMass(max_steps=3, **NO_TERM)
    env.reset(seed=0)
    outs = [env.step(np.zeros(2)) for _ in range(3)]
    assert [o[3] for o in outs] == [False, False, True]


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"damping": 1.5}, "damping"),
        ({"hazard": (0.0, 1.0, 0.5, 0.2)}, "hazard"),
        ({"start": (0.0, -0.5)}, "outside the hazard"),
        ({"obs_noise": -1}, "obs_noise"),
    ],
)
def test_bad_env_options_name_the_option(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        WindyPointMass(**kwargs)


class _Recorder(gym.Env):
    """Records the action the environment receives."""

    observation_space = spaces.Box(-1, 1, (1,), np.float32)
    action_space = spaces.Box(-2.0, 2.0, (1,), np.float32)

    def __init__(self):
        self.applied = []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.applied.append(float(action[0]))
        return np.zeros(1, np.float32), 0.0, False, False, {}


def test_action_noise_adds_gaussian_noise_scaled_to_the_half_range():
    env = ActionNoise(_Recorder(), std=0.1)
    env.reset(seed=0)
    for _ in range(5000):
        env.step(np.array([0.5], np.float32))
    applied = np.array(env.unwrapped.applied)
    # N(0.5, (0.1 * 2)^2), clipping at ±2 is 7.5 sigma away
    assert abs(applied.mean() - 0.5) < 0.01
    assert abs(applied.std() - 0.2) < 0.01
    with pytest.raises(ConfigError, match="action_noise"):
        ActionNoise(_Recorder(), std=-0.1)


def test_make_env_specs_and_errors():
    env = make_env({"id": "Pendulum-v1", "action_noise": 0.2})
    assert isinstance(env, ActionNoise) and env.std == 0.2
    with pytest.raises(ConfigError, match="not a registered gymnasium environment"):
        make_env("NoSuchEnv-v9")
    with pytest.raises(ConfigError, match="unknown key"):
        make_env({"id": "Pendulum-v1", "noise": 1})
    with pytest.raises(ConfigError, match="bad kwargs"):
        make_env({"id": "varjepa/WindyPointMass-v0", "kwargs": {"wind": 1}})
    with pytest.raises(ConfigError, match="flat Box"):
        make_env("CartPole-v1")


def test_rollouts_align_observations_and_actions():
    env = {"id": "varjepa/WindyPointMass-v0", "kwargs": {"wind_std": 0, "gust_prob": 0, "obs_noise": 0}}
    r = collect_rollouts(env, "random", episodes=3, steps=10, seed=5, overrides=NO_TERM)
    assert r.obs.shape == (3, 11, 2) and r.action.shape == (3, 10, 2) and r.position.shape == (3, 11, 2)
    np.testing.assert_array_equal(r.length, [10, 10, 10])
    # replay episode 1 in a fresh environment: the recorded actions give the recorded observations
    e = make_env(env, **NO_TERM)
    obs, _ = e.reset(seed=6)
    np.testing.assert_allclose(obs, r.obs[1, 0])
    for t in range(10):
        obs, *_ = e.step(r.action[1, t])
        np.testing.assert_allclose(obs, r.obs[1, t + 1], atol=1e-6)
    assert np.all(np.abs(r.action) <= 1.0)


def test_terminating_episodes_are_padded_and_windows_stay_inside():
    env = {"id": "varjepa/WindyPointMass-v0", "kwargs": {"start": (-0.8, -0.05)}}
    r = collect_rollouts(env, {"name": "random", "scale": 3.0}, episodes=12, steps=30, seed=0)
    assert (r.length < 30).any(), "some random episodes should hit the hazard or the goal"
    from varjepa.worldmodel.data import WindowDataset

    ds = WindowDataset(r, list(range(12)), window=5)
    assert len(ds) == sum(max(0, int(n) + 2 - 5) for n in r.length)
    for i in range(len(ds)):
        e, s = (int(v) for v in ds.index[i])
        assert s + 4 <= r.length[e]


def test_cache_is_keyed_by_content_and_survives_corruption(tmp_path):
    args = ("varjepa/WindyPointMass-v0", "random", 4, 8, 0, NO_TERM)
    r1, path, cached = load_or_collect(*args, cache_dir=tmp_path)
    assert not cached and path.is_file() and not list(tmp_path.glob(".tmp-*"))
    r2, path2, cached2 = load_or_collect(*args, cache_dir=tmp_path)
    assert cached2 and path2 == path
    for k, v in r1.arrays().items():
        np.testing.assert_array_equal(v, getattr(r2, k))
    # every input is part of the key
    keys = {
        rollout_key(*args),
        rollout_key("varjepa/WindyPointMass-v0", "random", 4, 8, 1, NO_TERM),
        rollout_key("varjepa/WindyPointMass-v0", "waypoint", 4, 8, 0, NO_TERM),
        rollout_key(
            {"id": "varjepa/WindyPointMass-v0", "kwargs": {"gust_prob": 0.3}}, "random", 4, 8, 0, NO_TERM
        ),
        rollout_key("varjepa/WindyPointMass-v0", "random", 4, 8, 0, None),
    }
    assert len(keys) == 5
    path.write_bytes(b"not a zip file")
    with pytest.warns(UserWarning, match="unreadable"):
        r3, _, cached3 = load_or_collect(*args, cache_dir=tmp_path)
    assert not cached3
    np.testing.assert_array_equal(r3.obs, r1.obs)


def test_datamodule_splits_episodes_and_computes_statistics(tmp_path):
    dm = TrajectoryDataModule(
        episodes=20, steps=12, window=6, collect_overrides=NO_TERM, cache_dir=str(tmp_path), batch_size=8
    )
    dm.setup("fit")
    sp = dm.split_episodes
    assert len(sp["val"]) == 2 and len(sp["test"]) == 2 and len(sp["train"]) == 16
    assert set(sp["val"]) | set(sp["test"]) | set(sp["train"]) == set(range(20))
    assert not (set(sp["val"]) & set(sp["train"]))
    assert len(dm.train_set) == 16 * (12 + 2 - 6)
    spaces_ = dm.spaces()
    train_obs = dm.rollouts.obs[sp["train"]].reshape(-1, 2)
    np.testing.assert_allclose(spaces_["obs_mean"], train_obs.mean(0), rtol=1e-5)
    np.testing.assert_allclose(spaces_["obs_std"], train_obs.std(0), rtol=1e-5)
    assert spaces_["action_low"] == [-1.0, -1.0] and spaces_["action_high"] == [1.0, 1.0]
    batch = next(iter(dm.train_dataloader()))
    assert (
        batch["obs"].shape == (8, 6, 2)
        and batch["action"].shape == (8, 5, 2)
        and batch["hazard"].shape == (8, 6)
    )
    # a window is a slice of its episode
    e, s = (int(v) for v in dm.train_set.base.index[int(batch["index"][0])])
    torch.testing.assert_close(batch["obs"][0], torch.from_numpy(dm.rollouts.obs[e, s : s + 6]))


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"window": 1}, "window"),
        ({"window": 50, "steps": 10}, "exceeds"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, "fraction"),
        ({"env": "NoSuchEnv-v0"}, "not a registered"),
        ({"policy": "teleport"}, "unknown behaviour policy 'teleport'"),
    ],
)
def test_datamodule_bad_options(kwargs, words, tmp_path):
    with pytest.raises(ConfigError, match=words):
        dm = TrajectoryDataModule(cache_dir=str(tmp_path), episodes=2, **{"steps": 10, "window": 4, **kwargs})
        dm.setup("fit")


def test_pendulum_rollouts_with_action_noise(tmp_path):
    r, _, _ = load_or_collect({"id": "Pendulum-v1", "action_noise": 0.3}, "random", 2, 20, 0, None, tmp_path)
    assert r.obs.shape == (2, 21, 3) and r.position.shape == (2, 0, 2)
    np.testing.assert_allclose(r.obs[..., 0] ** 2 + r.obs[..., 1] ** 2, 1.0, atol=1e-5)  # cos² + sin²
    assert np.abs(r.action).max() <= 2.0
