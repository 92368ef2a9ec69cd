"""A trained planner as a behaviour policy, and extra collections for training: the policy's
episodes are the planner's own (replayed by hand), reproducible and cached by the checkpoint's
content; exploration tells the belief the executed action; extra episodes join the training split
only; bad specs fail with what is allowed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from varjepa.registry import ConfigError
from varjepa.worldmodel import (
    CEMPlanner,
    GoalHazardCost,
    LatentWorldModel,
    Rollouts,
    TrajectoryDataModule,
    collect_rollouts,
    make_env,
)
from varjepa.worldmodel.rollouts import policy_fingerprint, rollout_key
from worldmodel_helpers import tiny_world_model

ENV = "varjepa/WindyPointMass-v0"
BUDGET = {"horizon": 3, "candidates": 8, "particles": 2, "iterations": 1, "elites": 2}


def _save_model(path, seed: int = 0) -> LatentWorldModel:
    torch.manual_seed(seed)
    m = tiny_world_model(hidden=16)
    with torch.no_grad():  # a predictor that moves (its last layer starts at zero)
        m.head[-1].weight.normal_(0, 0.3)
    torch.save({"hyper_parameters": dict(m.hparams), "state_dict": m.state_dict()}, path)
    return m.eval()


def _spec(ckpt, **kw):
    return {
        "name": "planner",
        "ckpt_path": str(ckpt),
        "cost": {"name": "goal_hazard", "hazard_weight": 5.0},
        **BUDGET,
        **kw,
    }


def test_planner_policy_episodes_are_the_planners_own_and_reproducible(tmp_path):
    ckpt = tmp_path / "m.ckpt"
    m = _save_model(ckpt)
    roll = collect_rollouts(ENV, _spec(ckpt), episodes=2, steps=6, seed=3)
    again = collect_rollouts(ENV, _spec(ckpt), episodes=2, steps=6, seed=3)
    for k, v in roll.arrays().items():
        np.testing.assert_array_equal(v, getattr(again, k))
    # replay episode 1 by hand with a CEM planner on the same model
    env = make_env(ENV)
    cost = GoalHazardCost(hazard_weight=5.0)
    cost.bind(m, env)
    planner = CEMPlanner(m, cost, "expected", **BUDGET)
    obs, _ = env.reset(seed=3 + 1)
    rng = np.random.default_rng([3, 1, 0x706F6C])  # collect_rollouts' policy generator for episode 1
    torch.manual_seed(int(rng.integers(2**31)))
    planner.reset()
    for t in range(int(roll.length[1])):
        a = planner.act(obs)
        np.testing.assert_allclose(roll.action[1, t], a, atol=1e-6)
        obs = env.step(a)[0]
    assert np.abs(roll.action[1, : roll.length[1]]).max() > 0.05  # it did act


def test_cache_key_follows_the_checkpoints_content_not_its_path(tmp_path):
    ckpt = tmp_path / "m.ckpt"
    _save_model(ckpt, seed=0)
    k0 = rollout_key(ENV, _spec(ckpt), 2, 6, 0)
    assert rollout_key(ENV, _spec(ckpt), 2, 6, 0) == k0
    _save_model(ckpt, seed=1)  # retrained in place
    assert rollout_key(ENV, _spec(ckpt), 2, 6, 0) != k0
    assert policy_fingerprint("waypoint") == {}  # other policies keep their keys


def test_exploration_noise_is_executed_and_the_belief_reads_it(tmp_path):
    ckpt = tmp_path / "m.ckpt"
    _save_model(ckpt)
    from varjepa.worldmodel.planner_policy import PlannerPolicy

    env = make_env(ENV)
    plain = PlannerPolicy(
        env.action_space, env.observation_space, env, str(ckpt), cost={"name": "goal_hazard"}, **BUDGET
    )
    noisy = PlannerPolicy(
        env.action_space,
        env.observation_space,
        env,
        str(ckpt),
        cost={"name": "goal_hazard"},
        exploration=0.5,
        **BUDGET,
    )
    for p in (plain, noisy):
        p.reset(np.random.default_rng(0))
    obs, _ = env.reset(seed=0)
    a, b = plain.act(obs), noisy.act(obs)
    assert not np.allclose(a, b) and np.all(np.abs(b) <= 1.0)
    torch.testing.assert_close(noisy.planner.prev, torch.as_tensor(b)[None])  # actions in [-1, 1] already


@pytest.mark.parametrize(
    "change, words",
    [
        ({"ckpt_path": "/nonexistent/m.ckpt"}, r"ckpt_path = '/nonexistent/m.ckpt' is not a file"),
        ({"exploration": -1.0}, r"exploration = -1.0; must be >= 0"),
        ({"planner": "ilqr"}, r"data\.policy \(planner\): plan\.planners: unknown planner 'ilqr'"),
        ({"horizon": 0}, r"data\.policy \(planner\): plan\.horizon = 0; must be >= 1"),
        (
            {"budget_typo": 3, "episodes": 5},
            r"unknown option\(s\) \['budget_typo', 'episodes'\]; the budget options are",
        ),
    ],
)
def test_bad_planner_policy_specs_say_what_is_wrong(tmp_path, change, words):
    ckpt = tmp_path / "m.ckpt"
    _save_model(ckpt)
    with pytest.raises(ConfigError, match=words):
        collect_rollouts(ENV, {**_spec(ckpt), **change}, episodes=1, steps=2)


def test_planner_policy_refuses_a_model_of_other_sizes(tmp_path):
    ckpt = tmp_path / "m.ckpt"
    _save_model(ckpt)
    with pytest.raises(
        ConfigError, match=r"observation/action sizes \(2, 2\) differ from the environment's \(3, 1\)"
    ):
        collect_rollouts("Pendulum-v1", _spec(ckpt), episodes=1, steps=2)


def test_rollouts_concat_pads_and_drops_positions_unless_all_have_them():
    def part(e, t, pos=True):
        return Rollouts(
            obs=np.ones((e, t + 1, 2), np.float32) * t,
            action=np.ones((e, t, 2), np.float32),
            reward=np.ones((e, t), np.float32),
            hazard=np.ones((e, t + 1), bool),
            position=np.ones((e, t + 1 if pos else 0, 2), np.float32),
            length=np.full(e, t),
        )

    r = Rollouts.concat([part(2, 5), part(1, 3)])
    assert r.obs.shape == (3, 6, 2) and r.action.shape == (3, 5, 2) and r.position.shape == (3, 6, 2)
    np.testing.assert_array_equal(r.length, [5, 5, 3])
    assert np.all(r.obs[2, :4] == 3) and np.all(r.obs[2, 4:] == 0) and not r.hazard[2, 4:].any()
    assert Rollouts.concat([part(1, 3), part(1, 3, pos=False)]).position.shape == (2, 0, 2)


def _dm(tmp_path, extra=None, **kw):
    return TrajectoryDataModule(
        env=ENV,
        policy="random",
        episodes=20,
        steps=8,
        window=4,
        cache_dir=str(tmp_path),
        extra_data=extra,
        **kw,
    )


def test_extra_episodes_join_the_training_split_only(tmp_path):
    base = _dm(tmp_path)
    base.setup("fit")
    extra = _dm(
        tmp_path, [{"policy": "waypoint", "episodes": 5}, {"policy": "random", "episodes": 3, "steps": 6}]
    )
    extra.setup("fit")
    assert extra.rollouts.num_episodes == 28
    for split in ("val", "test"):
        np.testing.assert_array_equal(extra.split_episodes[split], base.split_episodes[split])
    np.testing.assert_array_equal(extra.split_episodes["train"][-8:], np.arange(20, 28))
    np.testing.assert_array_equal(extra.rollouts.obs[:20], base.rollouts.obs)
    # the extra collections are the ones collect_rollouts makes with the documented default seeds,
    # a million episodes away from the main collection and from plan: seeds (1000, 2000, ...)
    way = collect_rollouts(ENV, "waypoint", 5, 8, seed=1_000_000)
    np.testing.assert_array_equal(extra.rollouts.obs[20:25], way.obs)
    rnd = collect_rollouts(ENV, "random", 3, 6, seed=2_000_000)
    np.testing.assert_array_equal(extra.rollouts.obs[25:28, :7], rnd.obs)
    assert len(extra.train_set) > len(base.train_set)


@pytest.mark.parametrize(
    "extra, words",
    [
        ([{"policy": "random"}], r"data\.extra_data\[0\] = .*at least 'policy' and 'episodes'"),
        (
            [{"policy": "random", "episodes": 2, "policies": 1}],
            r"data\.extra_data\[0\]: unknown key\(s\) \['policies'\]",
        ),
        ([{"policy": "random", "episodes": 0}], r"data\.extra_data\[0\]: episodes = 0"),
        (
            [{"policy": "random", "episodes": "x"}],
            r"data\.extra_data\[0\]: episodes, seed and steps must be integers",
        ),
        (
            [{"policy": "random", "episodes": 2, "seed": None}],
            r"data\.extra_data\[0\]: episodes, seed and steps",
        ),
    ],
)
def test_bad_extra_data_names_the_entry_and_what_is_allowed(tmp_path, extra, words):
    with pytest.raises(ConfigError, match=words):
        _dm(tmp_path, extra)


def test_collecting_with_a_planner_leaves_torchs_generator_as_it_was(tmp_path):
    ckpt = tmp_path / "m.ckpt"
    _save_model(ckpt)
    torch.manual_seed(123)
    expected = torch.rand(3)  # what the stream gives without a collection in between
    torch.manual_seed(123)
    collect_rollouts(ENV, _spec(ckpt), episodes=2, steps=3)
    torch.testing.assert_close(torch.rand(3), expected)
