"""benchmarks/worldmodel_oracle.py: the oracle's rollouts are the environment's dynamics; the exact McNemar test."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from varjepa.worldmodel.envs import WindyPointMass

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "worldmodel_oracle.py"
spec = importlib.util.spec_from_file_location("worldmodel_oracle", PATH)
oracle = importlib.util.module_from_spec(spec)
spec.loader.exec_module(oracle)


def test_rollouts_without_wind_follow_env_step_exactly():
    kw = {"wind_std": 0.0, "gust_prob": 0.0, "terminate_on_hazard": False, "terminate_on_goal": False}
    env = WindyPointMass(**kw)
    _, info = env.reset(seed=3)
    rng = np.random.default_rng(0)
    acts = rng.uniform(-1, 1, (2, oracle.HORIZON, 2))
    pos = oracle.true_rollouts(env, info["position"], info["velocity"], acts, rng)  # [2, P, H, 2]
    assert pos.shape == (2, oracle.PARTICLES, oracle.HORIZON, 2)
    for c in range(2):
        sim = WindyPointMass(**kw)
        sim.reset(seed=3)
        ref = np.array([sim.step(a)[-1]["position"] for a in acts[c]])
        for p in range(oracle.PARTICLES):
            np.testing.assert_allclose(pos[c, p], ref, atol=1e-12)


def test_rollout_gusts_have_the_env_rate_and_mean_push():
    env = WindyPointMass(wind_std=0.0, gust_prob=0.25, gust_strength=0.2, gust_spread=0.0, damping=0.0)
    rng = np.random.default_rng(1)
    acts = np.zeros((400, oracle.HORIZON, 2))
    pos = oracle.true_rollouts(env, np.zeros(2), np.zeros(2), acts, rng)
    # damping 0 and no action: each step moves by that step's gust only, g ~ U(0.5, 1) * 0.2 south
    steps = np.diff(np.concatenate([np.zeros((400, oracle.PARTICLES, 1, 2)), pos], 2), axis=2)[0]
    gust = steps[..., 1] < 0
    assert abs(gust.mean() - 0.25) < 0.06
    np.testing.assert_allclose(steps[gust][:, 1].mean(), -0.15, atol=0.01)


def test_cvar_is_the_mean_of_the_worst_share_and_the_cost_charges_the_hazard_once():
    costs = np.arange(16, dtype=float)[None].repeat(2, 0)
    np.testing.assert_allclose(oracle.risk(costs, "expected"), [7.5, 7.5])
    np.testing.assert_allclose(oracle.risk(costs, "cvar"), [13.5, 13.5])  # ceil(0.2 * 16) = 4 worst
    env = WindyPointMass()
    cost = oracle.TrueCost(env, weight=5.0)
    inside = np.array([0.0, -0.5])  # in the hazard rectangle
    path = np.stack([env.goal, inside, inside])[None, None]  # [1, 1, 3, 2]
    np.testing.assert_allclose(cost(path), [[2 * np.linalg.norm(inside - env.goal) + 5.0]])


def test_exact_mcnemar_matches_scipys_binomial_test():
    from scipy.stats import binomtest

    from varjepa.eval.paired import mcnemar_exact

    for a, b in [(5, 1), (8, 2), (0, 7), (3, 3), (12, 17), (21, 10)]:
        assert mcnemar_exact(a, b) == pytest.approx(binomtest(a, a + b).pvalue)
    assert mcnemar_exact(0, 0) == 1.0


def test_counterfactual_wind_moments_and_momentum():
    """``gaussian_wind`` has the real wind's per-step mean and variance (checked against a large
    sample of the environment's own wind); ``no_momentum`` moves a rollout by a gust's push once."""
    env = WindyPointMass(gust_prob=0.2, gust_strength=0.3, gust_spread=0.4, wind_std=0.01)
    mean, std = oracle.gaussian_wind_moments(env)
    rng = np.random.default_rng(0)
    n = 400_000
    w = rng.normal(0, env.wind_std, (n, 2))
    gust = rng.random(n) < env.gust_prob
    g, phi = rng.uniform(0.5, 1.0, n) * env.gust_strength, rng.normal(0, env.gust_spread, n)
    w += (g * gust)[:, None] * np.stack([np.sin(phi), -np.cos(phi)], -1)
    np.testing.assert_allclose(mean, w.mean(0), atol=1e-3)
    np.testing.assert_allclose(std, w.std(0), rtol=0.01)
    # damping 0, no action: each step of a gaussian_wind rollout is one wind draw
    env0 = WindyPointMass(gust_prob=0.2, gust_strength=0.3, gust_spread=0.4, wind_std=0.01, damping=0.0)
    acts = np.zeros((300, oracle.HORIZON, 2))
    pos = oracle.true_rollouts(env0, np.zeros(2), np.zeros(2), acts, rng, imagined="gaussian_wind")
    steps = np.diff(np.concatenate([np.zeros((300, oracle.PARTICLES, 1, 2)), pos], 2), axis=2)[0]
    np.testing.assert_allclose(steps.reshape(-1, 2).mean(0), mean, atol=0.01)
    # one certain gust straight south, damping 0.6: true momentum carries it on, no_momentum does not
    env1 = WindyPointMass(gust_prob=1.0, gust_strength=0.2, gust_spread=0.0, wind_std=0.0, damping=0.6)
    two = np.zeros((1, 2, 2))
    r_true = oracle.true_rollouts(env1, np.zeros(2), np.zeros(2), two, np.random.default_rng(3), "true")
    r_none = oracle.true_rollouts(
        env1, np.zeros(2), np.zeros(2), two, np.random.default_rng(3), "no_momentum"
    )
    g = -r_true[0, :, 0, 1]  # the first push (the same draws in both)
    np.testing.assert_allclose(r_none[0, :, 0, 1], -g)
    # step two: a second certain gust g2; true also carries 0.6 of the first on, no_momentum does not
    g2_true = -(r_true[0, :, 1, 1] - r_true[0, :, 0, 1]) - 0.6 * g
    g2_none = -(r_none[0, :, 1, 1] - r_none[0, :, 0, 1])
    np.testing.assert_allclose(g2_true, g2_none, atol=1e-12)
    assert (g2_none >= 0.1 - 1e-12).all() and (g2_none <= 0.2 + 1e-12).all()
    with pytest.raises(ValueError, match="allowed"):
        oracle.true_rollouts(env1, np.zeros(2), np.zeros(2), two, np.random.default_rng(3), "nope")


def test_particle_filter_tracks_position_and_infers_velocity_and_gusts():
    env = WindyPointMass(terminate_on_hazard=False, terminate_on_goal=False)
    pos_err, obs_err, vel_err, gust_err = [], [], [], []
    for seed in range(8):
        obs, info = env.reset(seed=seed)
        pf = oracle.ParticleFilter(env, np.random.default_rng(seed), n=1000)
        pf.reset(obs)
        rng = np.random.default_rng(100 + seed)
        for _ in range(60):
            a = rng.uniform(-1, 1, 2)
            obs, _, _, _, info = env.step(a)
            pf.step(a, obs)
            p, v = pf.mean()
            pos_err.append(np.linalg.norm(p - info["position"]))
            obs_err.append(np.linalg.norm(obs - info["position"]))
            vel_err.append(np.linalg.norm(v - info["velocity"]))
            if info["gust"]:
                gust_err.append(np.linalg.norm(v - info["velocity"]))
    rms = lambda e: float(np.sqrt(np.mean(np.square(e))))  # noqa: E731
    # the observations alone are off by obs_noise·√2 ≈ 0.042; the filter halves that
    assert rms(obs_err) == pytest.approx(0.03 * np.sqrt(2), rel=0.1)
    assert rms(pos_err) < 0.65 * rms(obs_err)
    # the velocity is never observed; the filter knows it to a fraction of a gust's push (0.15-0.3)
    assert rms(vel_err) < 0.03
    assert len(gust_err) >= 5 and rms(gust_err) < 0.06
    pos, vel = pf.sample(16)
    assert pos.shape == vel.shape == (16, 2)


def test_oracle_rollouts_accept_one_start_per_particle():
    env = WindyPointMass(wind_std=0.0, gust_prob=0.0)
    rng = np.random.default_rng(0)
    starts = rng.normal(size=(oracle.PARTICLES, 2))
    acts = np.zeros((3, oracle.HORIZON, 2))
    out = oracle.true_rollouts(env, starts, np.zeros((oracle.PARTICLES, 2)), acts, rng)
    np.testing.assert_allclose(
        out[:, :, 0], np.broadcast_to(np.clip(starts, -2, 2), (3, oracle.PARTICLES, 2))
    )
    with pytest.raises(ValueError, match="observe"):
        oracle.episode(env, oracle.TrueCost(env, 1.0), "expected", 0, observe="belief")


def test_particle_filter_keeps_no_particle_where_the_episode_would_have_ended():
    # a mass parked on the hazard's edge: the observations alone leave particles inside it
    env = WindyPointMass(start=(0.0, -0.08), start_noise=0.0, gust_prob=0.5, obs_noise=0.1)
    obs, _ = env.reset(seed=0)
    pf = oracle.ParticleFilter(env, np.random.default_rng(0), n=2000)
    pf.reset(obs)
    inside = []
    for _ in range(5):
        obs, _, terminated, _, _ = env.step(np.zeros(2))
        if terminated:
            break
        pf.step(np.zeros(2), obs)
        inside.append(env.hazard.contains(pf.pos).mean())
    assert inside and max(inside) == 0.0
    # without termination in the hazard, the same filter keeps some there
    env2 = WindyPointMass(
        start=(0.0, -0.08), start_noise=0.0, gust_prob=0.5, obs_noise=0.1, terminate_on_hazard=False
    )
    obs, _ = env2.reset(seed=0)
    pf2 = oracle.ParticleFilter(env2, np.random.default_rng(0), n=2000)
    pf2.reset(obs)
    obs, *_ = env2.step(np.zeros(2))
    pf2.step(np.zeros(2), obs)
    assert env2.hazard.contains(pf2.pos).mean() > 0.05


def test_episode_trail_holds_the_true_position_after_every_step():
    env = WindyPointMass(gust_prob=0.0, wind_std=0.0, max_steps=6)
    trail: list = []
    oracle.episode(env, oracle.TrueCost(env, 1.0), "expected", 3, trail=trail)
    p = np.asarray(trail)
    assert p.shape == (6, 2)
    np.testing.assert_allclose(p[-1], env.pos)
    # windless dynamics from rest at the (noisy) start: v_t = p_t - p_{t-1}, v_t = 0.6 v_{t-1} + 0.05 a_t,
    # so the actions implied by the trail must lie in the action box
    env.reset(seed=3)
    start = env.pos.copy()
    v = np.diff(np.concatenate([start[None], p]), axis=0)
    a = (v - env.damping * np.concatenate([np.zeros((1, 2)), v[:-1]])) / env.accel
    assert np.all(np.abs(a) <= 1 + 1e-6) and np.abs(a).max() > 0.1


def _tiny_model():
    import torch

    from worldmodel_helpers import tiny_world_model

    torch.manual_seed(0)
    return tiny_world_model().eval()


def test_learned_cost_reads_noisy_observations_on_request():
    env = WindyPointMass()
    m = _tiny_model()
    pos = np.zeros((3, 200, 4, 2))
    state = oracle.LearnedCost(m, env, 1.0)
    noisy = oracle.LearnedCost(m, env, 1.0, reads="observation", seed=1)
    assert state.noise == 0.0 and noisy.noise == env.obs_noise
    c0, c1 = state(pos), noisy(pos)
    np.testing.assert_allclose(c0, c0[0, 0])  # the same position everywhere: one cost
    assert np.ptp(c1[0]) > 0 and np.allclose(c1[0], c1[1])  # noise per particle, shared by candidates
    noisy.rng = np.random.default_rng(1)
    np.testing.assert_allclose(noisy(pos), c1)  # reseeded: the same noise
    with pytest.raises(ValueError, match="reads = 'states'"):
        oracle.LearnedCost(m, env, 1.0, reads="states")


def test_cut_is_undefined_without_risk_neutral_violations():
    assert oracle.cut_of(0.0, 0.5) is None and oracle.cut_of(0.08, 0.02) == pytest.approx(0.75)
    assert oracle.pct(None) == "—" and oracle.pct(0.584) == "58 %" and oracle.pct(-0.68) == "-68 %"
