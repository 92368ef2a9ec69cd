"""Importance-sampled rollouts (``plan.tilt``): tilted component draws, their log weights through a
rollout, and the weighted risk measures the planners read them with."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from varjepa.distributions import POSTERIORS
from varjepa.distributions.posteriors import component_index
from varjepa.registry import ConfigError
from varjepa.worldmodel import CEMPlanner, CVaR, Expected, MeanStd
from varjepa.worldmodel.plan import PlanSettings
from varjepa.worldmodel.risk import weighted_cvar
from worldmodel_helpers import tiny_world_model

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------ weighted risk measures
def _replicated_cvar(costs: np.ndarray, counts: np.ndarray, alpha: float) -> float:
    """CVaR of the sample in which cost ``i`` appears ``counts[i]`` times: the mean of its worst
    ``alpha`` share (``alpha · Σcounts`` must be an integer)."""
    sample = np.sort(np.repeat(costs, counts))[::-1]
    m = round(alpha * len(sample))
    assert abs(m - alpha * len(sample)) < 1e-9
    return float(sample[:m].mean())


def test_weighted_cvar_is_the_cvar_of_the_sample_the_weights_stand_for():
    costs = np.array([3.0, 10.0, 1.0, 7.0, 5.0])
    counts = np.array([4, 1, 2, 3, 10])  # 20 draws in all
    w = torch.tensor(counts / counts.sum(), dtype=torch.float32)[None]
    c = torch.tensor(costs, dtype=torch.float32)[None]
    for alpha in (0.05, 0.1, 0.2, 0.25, 0.5, 0.75, 1.0):
        got = float(weighted_cvar(c, w, alpha)[0])
        assert got == pytest.approx(_replicated_cvar(costs, counts, alpha), rel=1e-6), alpha
    # the boundary rollout counts with the share of its weight inside the tail: worst 0.15 of the mass
    # is 10 (0.05) and 0.10 of the 7s (weight 0.15) -> (0.5 + 0.7) / 0.15
    assert float(weighted_cvar(c, w, 0.15)[0]) == pytest.approx((0.05 * 10 + 0.10 * 7) / 0.15, rel=1e-6)


def test_risk_measures_read_log_weights_and_equal_weights_change_nothing():
    g = torch.Generator().manual_seed(0)
    costs = torch.rand(6, 20, generator=g) * 10
    flat = torch.full((6, 20), -3.0)  # equal weights, any constant: self-normalised
    torch.testing.assert_close(Expected()(costs, flat), Expected()(costs))
    torch.testing.assert_close(MeanStd(lam=1.5)(costs, flat), MeanStd(lam=1.5)(costs))
    torch.testing.assert_close(CVaR(alpha=0.25)(costs, flat), CVaR(alpha=0.25)(costs))  # 5 of 20 exactly
    logw = torch.randn(6, 20, generator=g)
    w = torch.softmax(logw, -1).numpy().astype(np.float64)
    c = costs.numpy().astype(np.float64)
    mean = (w * c).sum(-1)
    np.testing.assert_allclose(Expected()(costs, logw).numpy(), mean, rtol=1e-5)
    std = np.sqrt((w * (c - mean[:, None]) ** 2).sum(-1))
    np.testing.assert_allclose(MeanStd(lam=2.0)(costs, logw).numpy(), mean + 2 * std, rtol=1e-5)


# ------------------------------------------------------------------------ tilted draws
@pytest.mark.parametrize(
    "spec", [{"name": "mixture", "components": 3}, {"name": "anchored_mixture", "components": 3}]
)
def test_tilted_draws_pick_components_by_the_tempered_weights_and_weight_them_back(spec):
    fam = POSTERIORS.build(spec, dim=2)
    n = 60000
    g = torch.Generator().manual_seed(1)
    params = torch.zeros(n, fam.num_params)
    params[:, -3:] = torch.tensor([2.0, 1.0, -3.0])  # weights 0.72 / 0.27 / 0.005
    k, d = 3, 2
    offsets = torch.tensor([[0.0, 0.0], [0.0, 1.0], [12.0, 0.0]])  # the rare component sits far east
    start = d if spec["name"] == "anchored_mixture" else 0
    params[:, start : start + k * d] = offsets.flatten()
    eps, u = torch.randn(n, d, generator=g), torch.rand(n, generator=g)
    # tilt 1 is plain sampling, bitwise, with zero log weights
    z1, lr1 = fam.tilted_sample_from_params(params, eps, u, 1.0)
    assert torch.equal(z1, fam.sample_from_params(params, eps, u)) and torch.equal(lr1, torch.zeros(n))
    pi = torch.softmax(torch.tensor([2.0, 1.0, -3.0]), -1)
    for tilt in (0.0, 0.5):
        z, log_ratio = fam.tilted_sample_from_params(params, eps, u, tilt)
        q = pi**tilt / (pi**tilt).sum()
        rare = z[:, 0] > 6.0  # only the rare component reaches x > 6 (σ = init std)
        assert rare.float().mean().item() == pytest.approx(
            float(q[2]), abs=4 * float((q[2] / n) ** 0.5) + 1e-3
        )
        # each draw's component is q's inverse CDF at u, and its log weight log π_k − log q_k
        comp = component_index(torch.log(q).expand(n, -1), u)
        assert torch.equal(rare, comp == 2)
        torch.testing.assert_close(log_ratio, (pi / q).log()[comp])
        # self-normalised: the weighted share of the rare event is its probability under π
        w = torch.softmax(log_ratio, 0)
        assert float((w * rare).sum()) == pytest.approx(float(pi[2]), rel=0.15)


def test_families_without_components_draw_as_before_with_zero_log_weight():
    fam = POSTERIORS.build("diag_gaussian", dim=3)
    params, eps, u = torch.randn(5, fam.num_params), torch.randn(5, 3), torch.rand(5)
    z, lr = fam.tilted_sample_from_params(params, eps, u, 0.0)
    assert torch.equal(z, fam.sample_from_params(params, eps, u)) and torch.equal(lr, torch.zeros(5))
    flow = POSTERIORS.build("flow", dim=2)
    assert (
        flow.tilted_sample_from_params(
            torch.zeros(1, flow.num_params), torch.zeros(1, 2), torch.zeros(1), 0.0
        )
        is None
    )


# ------------------------------------------------------------------------ through a rollout
def _rare_jump_model():
    """A tiny mixture world model whose every step jumps +4 in latent 0 with probability ≈ 0.9 %
    (component 2), else moves little: a rollout's chance of a jump is a rare event."""
    m = tiny_world_model(posterior={"name": "mixture", "components": 3}).eval()
    k, d = 3, 4
    bias = torch.zeros(m.family.num_params)
    locs = torch.zeros(k, d)
    locs[2, 0] = 4.0
    bias[: k * d] = locs.flatten()
    bias[k * d : 2 * k * d] = -10.0  # every spread near the family's minimum
    bias[2 * k * d :] = torch.tensor([0.0, 0.0, -4.7])
    with torch.no_grad():
        m.head[-1].bias.copy_(bias)
    return m


def test_tilted_rollouts_estimate_a_rare_event_without_bias_and_with_less_spread():
    torch.manual_seed(0)
    m = _rare_jump_model()
    H = 5
    pi_rare = float(torch.softmax(torch.tensor([0.0, 0.0, -4.7]), -1)[2])
    truth = 1 - (1 - pi_rare) ** H  # at least one jump in H steps
    h = m.update_belief(m.initial_belief(1), torch.zeros(1, 4), torch.zeros(1, 2))
    z0 = float(m.belief.latest(h)[0, 0])

    def estimate(n: int, tilt: float, seed: int) -> float:
        g = torch.Generator().manual_seed(seed)
        noise = (torch.randn(n, H, 4, generator=g), torch.rand(n, H, generator=g))
        acts = torch.zeros(n, H, 2)
        with torch.no_grad():
            z, log_w = m.imagine_tilted(h.expand(n, -1), acts, noise, tilt)
        jumped = (z[:, -1, 0] - z0) > 2.0
        return float((torch.softmax(log_w, 0) * jumped).sum())

    big = estimate(100_000, 0.0, 0)
    assert big == pytest.approx(truth, rel=0.05)
    # 200 rollouts, 40 repeats: tilted estimates spread less around the truth than plain ones
    plain = np.array([estimate(200, 1.0, s) for s in range(1, 41)])
    tilted = np.array([estimate(200, 0.0, s) for s in range(1, 41)])
    assert abs(tilted.mean() - truth) < 3 * tilted.std() / np.sqrt(40) + 1e-3
    assert np.sqrt(((tilted - truth) ** 2).mean()) < 0.75 * np.sqrt(((plain - truth) ** 2).mean())
    # the log weights add over steps: one jump in 5 steps weighs π_rare / (1/3) · ((1 − π_rare)/(2/3))^4
    g = torch.Generator().manual_seed(7)
    noise = (torch.randn(4000, H, 4, generator=g), torch.rand(4000, H, generator=g))
    with torch.no_grad():
        z, log_w = m.imagine_tilted(h.expand(4000, -1), torch.zeros(4000, H, 2), noise, 0.0)
    jumps = torch.round((z[:, -1, 0] - z0) / 4.0)
    one = jumps == 1
    want = np.log(pi_rare * 3) + 4 * np.log((1 - pi_rare) / 2 * 3)
    np.testing.assert_allclose(log_w[one].numpy(), want, rtol=1e-4)
    assert stats.binomtest(int((jumps >= 1).sum()), 4000, 1 - (2 / 3) ** H).pvalue > 1e-4


def _abs_cost(model, z):
    return z[..., 0].abs()


@pytest.mark.parametrize("posterior", ["diag_gaussian", "flow"])
def test_tilt_is_ignored_for_families_without_components(posterior):
    torch.manual_seed(0)
    m = tiny_world_model(posterior=posterior)
    risk = {"name": "cvar", "alpha": 0.1}  # 0.1 · 6 particles is not whole: weighting would change it
    plain = CEMPlanner(m, _abs_cost, risk, horizon=3, candidates=8, particles=6)
    tilted = CEMPlanner(m, _abs_cost, risk, horizon=3, candidates=8, particles=6, tilt=0.0)
    assert not tilted.tilted
    h = m.update_belief(m.initial_belief(1), torch.zeros(1, 4), torch.zeros(1, 2))
    seqs = torch.rand(8, 3, 2) * 2 - 1
    torch.manual_seed(3)
    plain.draw_noise()
    tilted.noise_draws = plain.noise_draws
    torch.manual_seed(4)
    a = plain.score(h, seqs)
    torch.manual_seed(4)
    assert torch.equal(tilted.score(h, seqs), a)


def test_tilted_planner_scores_the_weighted_rollouts_of_each_candidate():
    """score = risk over each candidate's tilted rollouts (the same draws for every candidate) with
    their log weights, CVaR at a share that is not a whole number of rollouts."""
    torch.manual_seed(0)
    m = _rare_jump_model()
    risk = {"name": "cvar", "alpha": 0.3}
    N, P, H = 5, 7, 4
    p = CEMPlanner(m, _abs_cost, risk, horizon=H, candidates=N, particles=P, tilt=0.0)
    assert p.tilted
    h = m.update_belief(m.initial_belief(1), torch.zeros(1, 4), torch.zeros(1, 2))
    seqs = torch.rand(N, H, 2) * 2 - 1
    p.draw_noise()
    got = p.score(h, seqs)
    eps, u = p.noise_draws
    want, ess = [], []
    for n in range(N):
        with torch.no_grad():
            z, log_w = m.imagine_tilted(h.expand(P, -1), seqs[n].expand(P, H, 2), (eps, u), 0.0)
        c = z[..., 0].abs().sum(-1)  # [P]
        assert log_w.std() > 0  # the rare component was drawn in some rollout and weighs less
        w = torch.softmax(log_w, 0)
        want.append(weighted_cvar(c[None], w[None], 0.3)[0])
        ess.append(float(1 / (w.double() ** 2).sum()))
    torch.testing.assert_close(got, torch.stack(want))
    # the planner logs the effective sample size of each scoring: unequal weights, fewer than P
    assert p.ess == [pytest.approx(float(np.mean(ess)), rel=1e-5)] and 1 <= p.ess[0] < P
    plain = CEMPlanner(m, _abs_cost, risk, horizon=H, candidates=N, particles=P)
    plain.noise_draws = p.noise_draws
    assert not torch.allclose(plain.score(h, seqs), got)
    assert plain.ess == []  # plain rollouts weigh equally: nothing to log


def test_tilt_outside_zero_one_is_refused():
    m = tiny_world_model()
    with pytest.raises(ConfigError, match=r"plan.tilt = 1.5; must be in \[0, 1\]"):
        CEMPlanner(m, lambda model, z: z[..., 0], tilt=1.5)
    with pytest.raises(ConfigError, match=r"plan.tilt = -0.1"):
        PlanSettings(tilt=-0.1)
    assert PlanSettings(tilt=0.25).planner_kwargs("cem")["tilt"] == 0.25
