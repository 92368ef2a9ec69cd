"""LatentWorldModel, k-step calibration metric, risk measures, common random numbers and the CEM/MPPI
planners (on analytic toy models whose optimal actions are known)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from scipy import stats

from varjepa.distributions import POSTERIORS
from varjepa.registry import ConfigError
from varjepa.worldmodel import (
    CEMPlanner,
    CVaR,
    Expected,
    LatentWorldModel,
    MeanStd,
    MPPIPlanner,
    RankCoverage,
    TrajectoryDataModule,
    k_step_calibration,
)
from varjepa.worldmodel.data import windows_of
from varjepa.worldmodel.evaluate import expected_rank_coverage, rank_interval
from varjepa.worldmodel.plan import load_world_model
from varjepa.worldmodel.sampling import sample_from_noise

NO_TERM = {"terminate_on_hazard": False, "terminate_on_goal": False}
SPACES = {
    "obs_dim": 2,
    "action_dim": 2,
    "obs_mean": [0.1, -0.2],
    "obs_std": [0.5, 2.0],
    "action_low": [-1.0, -2.0],
    "action_high": [1.0, 2.0],
    "env": {"id": "varjepa/WindyPointMass-v0", "kwargs": {}, "action_noise": 0.0, "max_episode_steps": None},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(B: int, W: int) -> dict[str, torch.Tensor]:
    """Random windows of ``W`` observations and the ``W − 1`` actions between them."""
    return {
        "obs": torch.randn(B, W, 2),
        "action": torch.rand(B, W - 1, 2) * 2 - 1,
        "hazard": torch.zeros(B, W),
    }


def _tiny(**kw) -> LatentWorldModel:
    args = {"latent_dim": 4, "hidden": 16, "belief_dim": 8, "horizon": 3, "burn_in": 2, "spaces": SPACES}
    return LatentWorldModel(**{**args, **kw})


# ------------------------------------------------------------------------ metrics
def test_rank_interval_is_exact_for_199_samples():
    assert rank_interval(199, 0.9) == (10, 189)
    assert expected_rank_coverage(199, 0.9) == pytest.approx(0.9)
    assert expected_rank_coverage(199, 0.5) == pytest.approx(0.5)


def test_rank_coverage_of_calibrated_and_overconfident_predictions():
    g = torch.Generator().manual_seed(0)
    n, m = 199, 20000
    target = torch.randn(m, generator=g)
    calibrated = torch.randn(n, m, generator=g)
    cov = RankCoverage((0.5, 0.9))
    cov.update(calibrated, target)
    # binomial std with 20000 targets: 0.0035 / 0.0021
    np.testing.assert_allclose(cov.compute().numpy(), [0.5, 0.9], atol=0.015)
    # predictions half as wide as the truth: coverage 2 Φ(z_p / 2) − 1 (independent formula)
    narrow = RankCoverage((0.5, 0.9))
    narrow.update(0.5 * torch.randn(n, m, generator=g), target)
    expect = [2 * stats.norm.cdf(0.5 * stats.norm.ppf((1 + p) / 2)) - 1 for p in (0.5, 0.9)]
    np.testing.assert_allclose(narrow.compute().numpy(), expect, atol=0.02)
    with pytest.raises(ValueError, match="do not fit"):
        cov.update(calibrated, target[:5])


# ---------------------------------------------------------------------- risk measures
def test_risk_measures_match_numpy():
    costs = torch.tensor([[1.0, 5.0, 2.0, 9.0, 3.0], [4.0, 4.0, 4.0, 4.0, 4.0]])
    np.testing.assert_allclose(Expected()(costs).numpy(), [4.0, 4.0])
    # worst ceil(0.4 * 5) = 2 costs: (9 + 5) / 2
    np.testing.assert_allclose(CVaR(alpha=0.4)(costs).numpy(), [7.0, 4.0])
    np.testing.assert_allclose(CVaR(alpha=1.0)(costs).numpy(), [4.0, 4.0])
    np.testing.assert_allclose(CVaR(alpha=0.01)(costs).numpy(), [9.0, 4.0])
    np.testing.assert_allclose(
        MeanStd(lam=2.0)(costs).numpy(), [4.0 + 2 * np.std([1, 5, 2, 9, 3]), 4.0], rtol=1e-6
    )
    with pytest.raises(ConfigError, match="alpha"):
        CVaR(alpha=0.0)
    with pytest.raises(ConfigError, match="lam"):
        MeanStd(lam=-1)


# ------------------------------------------------------------- common random numbers
def test_sample_from_noise_diag_gaussian_is_the_reparameterisation():
    fam = POSTERIORS.build("diag_gaussian", dim=3)
    d = fam(torch.randn(5, fam.num_params))
    eps = torch.randn(5, 3)
    z = sample_from_noise(d, eps, torch.rand(5))
    torch.testing.assert_close(z, d.base_dist.loc + d.base_dist.scale * eps)


def test_sample_from_noise_mixture_has_the_mixture_distribution():
    fam = POSTERIORS.build({"name": "mixture", "components": 3}, dim=2)
    params = torch.randn(1, fam.num_params).expand(40000, -1)
    d = fam(params)
    g = torch.Generator().manual_seed(1)
    z = sample_from_noise(d, torch.randn(40000, 2, generator=g), torch.rand(40000, generator=g))
    # component frequencies: which component is nearest in the standardised sense is not needed;
    # compare moments with the closed form of the mixture
    mean, var = fam.mean(d)[0], fam.marginal_variance(d)[0]
    torch.testing.assert_close(z.mean(0), mean, atol=4 * float(var.max().sqrt()) / 200, rtol=0)
    torch.testing.assert_close(z.var(0), var, rtol=0.05, atol=1e-3)
    # u selects components by the weights' CDF: u below the first weight gives component 0
    w0 = torch.softmax(d.component_logits[0], -1)[0]
    z0 = sample_from_noise(fam(params[:1]), torch.zeros(1, 2), w0.reshape(1) * 0.5)
    torch.testing.assert_close(z0[0], d.locs[0, 0])
    flow = POSTERIORS.build("flow", dim=2)
    assert sample_from_noise(flow(torch.zeros(1, flow.num_params)), torch.zeros(1, 2), torch.zeros(1)) is None


@pytest.mark.parametrize(
    "spec",
    ["diag_gaussian", {"name": "mixture", "components": 4}, {"name": "anchored_mixture", "components": 5}],
)
def test_sample_from_params_equals_sampling_the_built_distribution(spec):
    """The planner's fast path (no distribution built) draws exactly what sample_from_noise draws."""
    fam = POSTERIORS.build(spec, dim=6)
    g = torch.Generator().manual_seed(0)
    params = torch.randn(300, fam.num_params, generator=g) * 2
    eps, u = torch.randn(300, 6, generator=g), torch.rand(300, generator=g)
    fast = fam.sample_from_params(params, eps, u)
    assert torch.equal(fast, sample_from_noise(fam(params), eps, u))  # bitwise: planning is unchanged
    if spec != "diag_gaussian":
        # different u pick different components
        other = fam.sample_from_params(params, eps, (u + 0.5) % 1)
        assert (fast - other).abs().amax(-1).gt(1e-3).float().mean() > 0.3
    # the same parameters get gradient (anchored_mixture: the anchor is detached in both)
    grads = []
    for draw in (lambda q: fam.sample_from_params(q, eps, u), lambda q: sample_from_noise(fam(q), eps, u)):
        q = params.clone().requires_grad_(True)
        draw(q).sum().backward()
        grads.append(q.grad)
    torch.testing.assert_close(grads[0], grads[1])
    if spec != "diag_gaussian" and spec["name"] == "anchored_mixture":
        assert grads[0][:, :6].abs().sum() == 0 and grads[0][:, 6:].abs().sum() > 0
    flow = POSTERIORS.build("flow", dim=2)
    assert flow.sample_from_params(torch.zeros(1, flow.num_params), torch.zeros(1, 2), torch.zeros(1)) is None


# ------------------------------------------------------------------------- the model
def test_forward_rolls_out_every_start_and_aligns_targets():
    torch.manual_seed(0)
    m = _tiny()
    B, W = 3, 8
    batch = _batch(B, W)
    out = m(batch)
    S, k = W - 3 - 1 + 1 - 1, 3  # starts t = burn_in-1 .. W-1-k  -> 1..4
    assert S == 4
    assert out.pred.batch_shape == (B, S * k) and out.target.shape == (B, S * k, 4)
    zbar = m.encode(batch["obs"], target=True)
    for s_i, t in enumerate(range(1, 5)):
        for j in range(k):
            torch.testing.assert_close(out.target[:, s_i * k + j], zbar[:, t + j + 1])
    # the first horizon of start t is the predictor at belief h_t and action a_t
    z = m.encode(batch["obs"])
    h = m.filter(z, m.normalize_action(batch["action"]))
    d = m.predict(h[:, 2], m.normalize_action(batch["action"])[:, 2])
    torch.testing.assert_close(m.family.mean(out.pred)[:, 1 * k], m.family.mean(d))
    # the loss is finite and every term is present
    res = m.elbo(out, 0, 10)
    assert set(res.values) == {"nll", "kl", "rec", "hazard"} and torch.isfinite(res.loss)


def test_normalisation_uses_the_spaces():
    m = _tiny()
    torch.testing.assert_close(m.normalize_obs(torch.tensor([0.6, 1.8])), torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(m.normalize_action(torch.tensor([1.0, -2.0])), torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(m.denormalize_action(torch.tensor([0.5, 0.5])), torch.tensor([0.5, 1.0]))


def test_imagine_with_shared_noise_gives_identical_particles_for_identical_actions():
    m = _tiny()
    h = torch.randn(1, 8).expand(6, -1)
    acts = torch.rand(1, 5, 2).expand(6, -1, -1)
    eps, u = torch.randn(1, 5, 4).expand(6, -1, -1), torch.rand(1, 5).expand(6, -1)
    _, z = m.imagine(h, acts, noise=(eps, u))
    torch.testing.assert_close(z, z[:1].expand_as(z))
    _, z_ind = m.imagine(h, acts)
    assert not torch.allclose(z_ind[0], z_ind[1])


def test_input_norm_standardises_the_predictor_input_with_batch_then_running_statistics():
    torch.manual_seed(0)
    m = _tiny(input_norm=True)
    for p in m.head.parameters():  # a non-trivial head (the last layer starts at zero)
        torch.nn.init.normal_(p, std=0.3)
    h, a = torch.randn(64, m.belief.size), torch.rand(64, 2) * 2 - 1
    x = torch.cat([h, a], -1)
    m.train()
    got = m.predict_params(h, a)
    want = m.head((x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5))
    torch.testing.assert_close(got, want)
    # a shifted and rescaled batch gives the same outputs in training (per-feature standardisation)
    torch.testing.assert_close(m.predict_params(3 * h + 5, a), got, atol=1e-4, rtol=1e-4)
    m.eval()  # planning: the running statistics, so one belief's prediction does not depend on its batch
    mean, var = m.head_norm.running_mean, m.head_norm.running_var
    torch.testing.assert_close(
        m.predict_params(h[:1], a[:1]), m.head((x[:1] - mean) / torch.sqrt(var + 1e-5))
    )
    assert isinstance(_tiny().head_norm, torch.nn.Identity)


def test_detach_belief_keeps_the_predictor_loss_away_from_the_encoder():
    torch.manual_seed(0)
    batch = {"obs": torch.randn(3, 8, 2), "action": torch.rand(3, 7, 2) * 2 - 1, "hazard": torch.zeros(3, 8)}

    def encoder_grad(model, term):
        for p in model.head.parameters():  # the last layer starts at zero, which passes no gradient
            torch.nn.init.normal_(p, std=0.3)
        model.zero_grad()
        out = model(batch)
        next(t for t in model.elbo.terms if t.name == term)(out).backward()
        return sum(float(p.grad.abs().sum()) for p in model.encoder.parameters() if p.grad is not None)

    assert encoder_grad(_tiny(), "nll") > 0
    assert encoder_grad(_tiny(detach_belief=True), "nll") == 0.0
    assert encoder_grad(_tiny(detach_belief=True), "rec") > 0  # the encoder still learns to reconstruct
    with pytest.raises(ConfigError, match="without any gradient"):
        _tiny(detach_belief=True, reconstruction_weight=0.0)


def test_anchored_mixture_fits_its_location_by_least_squares_in_its_own_network():
    """With ``anchored_mixture`` the location ``μ`` comes from a separate MLP (``anchor_head``) that
    only the ``mse`` term trains; the density (``nll``) trains the main head, never the anchor head."""
    torch.manual_seed(0)
    batch = {"obs": torch.randn(3, 8, 2), "action": torch.rand(3, 7, 2) * 2 - 1, "hazard": torch.zeros(3, 8)}
    m = _tiny(
        posterior={"name": "anchored_mixture", "components": 3},
        objective={"name": "heteroscedastic", "beta_nll": 0.0, "mean_weight": 100.0},
        belief={"name": "window", "length": 3},
        residual=True,
        horizon=1,
    )
    assert m.anchor_head is not None and m.head[-1].out_features == m.family.num_params - 4
    for net in (m.head, m.anchor_head):  # the last layers start at zero, which passes no gradient
        for p in net.parameters():
            torch.nn.init.normal_(p, std=0.3)
    h, a = torch.randn(5, m.belief.size), torch.rand(5, 2) * 2 - 1
    params = m.predict_params(h, a)
    x = torch.cat([h, a], -1)
    torch.testing.assert_close(params[:, :4], m.anchor_head(x) + m.belief.latest(h))  # residual: moved by z_t
    torch.testing.assert_close(params[:, 4:], m.head(x))

    def grads(term):
        m.zero_grad()
        next(t for t in m.elbo.terms if t.name == term)(m(batch)).backward()
        return [
            sum(float(p.grad.abs().sum()) for p in net.parameters() if p.grad is not None)
            for net in (m.head, m.anchor_head)
        ]

    head_nll, anchor_nll = grads("nll")
    head_mse, anchor_mse = grads("mse")
    assert head_nll > 0 and anchor_nll == 0.0
    assert anchor_mse > 0 and head_mse == 0.0
    assert _tiny().anchor_head is None  # other families: one head
    with pytest.raises(ConfigError, match="mean_weight"):
        _tiny(posterior={"name": "anchored_mixture", "components": 2}, objective={"name": "heteroscedastic"})


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"horizon": 0}, "horizon"),
        ({"hazard_weight": -1.0}, "hazard_weight"),
        ({"objective": "target_posterior"}, "target posterior"),
        ({"posterior": "gaussian_mixture"}, "unknown posterior family"),
        ({"calibration_horizons": (0,)}, "calibration"),
        ({"spaces": {"obs_dim": 2}}, "spaces"),
    ],
)
def test_bad_model_options(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        _tiny(**kwargs)


@pytest.mark.slow
@pytest.mark.parametrize(
    "belief, horizon", [("gru", 3), ({"name": "window", "length": 3}, 1)], ids=["gru-k3", "window-k1"]
)
def test_training_learns_the_dynamics_and_checkpoints_round_trip(tmp_path, belief, horizon):
    L.seed_everything(0)
    dm = TrajectoryDataModule(
        episodes=40,
        steps=30,
        window=10,
        policy="waypoint",
        collect_overrides=NO_TERM,
        cache_dir=str(tmp_path),
        batch_size=32,
    )
    m = LatentWorldModel(
        latent_dim=8,
        hidden=32,
        belief_dim=32,
        belief=belief,
        horizon=horizon,
        burn_in=3,
        calibration_horizons=(1, 3),
        lr=3e-3,
    )
    dm.setup("fit")
    m.check_data(dm)
    test = windows_of(dm.rollouts, dm.split_episodes["test"].tolist(), 10)
    trainer = L.Trainer(
        max_steps=300,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=2,
        val_check_interval=300,
        check_val_every_n_epoch=None,
    )
    with pytest.warns(UserWarning, match="model.burn_in = 3: the predictor is never trained"):
        trainer.fit(m, dm)  # planners start from one observation: burn_in > 1 is flagged
    m.eval()
    with torch.no_grad():
        before = LatentWorldModel(
            latent_dim=8, hidden=32, belief_dim=32, belief=belief, burn_in=3, spaces=m.hparams.spaces
        )
        before.target_encoder.load_state_dict(m.target_encoder.state_dict())
        before.encoder.load_state_dict(m.encoder.state_dict())
        before.eval()
        cal = k_step_calibration(m, test, horizons=(1, 3), n=99)
        cal0 = k_step_calibration(before, test, horizons=(1, 3), n=99)
    # a trained predictor beats an untrained one (same encoders) by a wide margin at one step
    assert cal0["rmse_k1"] > 0.8 and cal["rmse_k1"] < 0.35 * cal0["rmse_k1"]
    assert 0.8 < cal["coverage90_k1"] <= 1.0
    assert "val/coverage90_k1" in trainer.callback_metrics and "val/coverage90_k3" in trainer.callback_metrics
    path = tmp_path / "wm.ckpt"
    trainer.save_checkpoint(path)
    loaded = load_world_model(str(path))
    torch.testing.assert_close(
        k_step_calibration(loaded, test, horizons=(1,), n=19),
        k_step_calibration(m, test, horizons=(1,), n=19),
    )


def test_burn_in_one_trains_from_the_first_observation_and_calibration_keeps_its_own_start():
    torch.manual_seed(0)
    m = LatentWorldModel(
        latent_dim=4, hidden=16, horizon=1, burn_in=1, belief={"name": "window", "length": 4}, spaces=SPACES
    )
    assert m.hparams.calibration_history == 4
    B, W = 2, 8
    batch = _batch(B, W)
    out = m(batch)
    # starts t = 0 .. W - 2: the first prediction sees a single observation (as a planner's first step does)
    assert out.pred.batch_shape == (B, W - 1)
    torch.testing.assert_close(out.target, m.encode(batch["obs"], target=True)[:, 1:])
    h0 = m.update_belief(m.initial_belief(B), m.encode(batch["obs"][:, 0]), torch.zeros(B, 2))
    torch.testing.assert_close(
        m.family.mean(out.pred)[:, 0], m.family.mean(m.predict(h0, m.normalize_action(batch["action"][:, 0])))
    )
    # coverage is measured from the belief after calibration_history observations, whatever burn_in is
    m.eval()
    assert k_step_calibration(m, batch, horizons=(1, 3), n=9) == k_step_calibration(
        m, batch, horizons=(1, 3), n=9, t0=3
    )
    assert k_step_calibration(m, batch, horizons=(1,), n=9) != k_step_calibration(
        m, batch, horizons=(1,), n=9, t0=0
    )


def test_surprise_weights_up_weight_the_step_after_a_surprising_observation():
    m = _tiny(surprise_weight=3.0, surprise_quantile=0.9)
    B, S, d = 2, 5, 4
    params = torch.zeros(B, S, m.family.num_params)  # every prediction: the same diagonal Gaussian
    target = torch.zeros(B, S, d)
    target[0, 2] = 5.0  # z_{t+1} of start 2 is far off: the prediction made at start 3 follows a surprise
    w = m.surprise_weights(params, target)
    raw = torch.ones(B, S)
    raw[0, 3] = 4.0  # 1 + surprise_weight
    torch.testing.assert_close(w, raw / raw.mean())
    assert w.mean().item() == pytest.approx(1.0)
    # a start's weight depends on the surprise *before* it: the last start's own target moves nothing
    target2 = target.clone()
    target2[1, 4] = 9.0
    torch.testing.assert_close(m.surprise_weights(params, target2), w)


def test_forward_sets_token_weights_only_when_training_with_surprise_weight():
    torch.manual_seed(0)
    B, W = 3, 8
    batch = _batch(B, W)
    m = _tiny(surprise_weight=3.0).train()
    out = m(batch)
    k = 3  # starts t = burn_in - 1 .. W - 1 - k = 1 .. 4
    assert out.token_weights.shape == (B, 4 * k) and out.token_weights.mean().item() == pytest.approx(1.0)
    # the k predictions of one start share its weight
    torch.testing.assert_close(
        out.token_weights.view(B, 4, k), out.token_weights.view(B, 4, k)[..., :1].expand(B, 4, k)
    )
    assert m.eval()(batch).token_weights is None
    assert _tiny().train()(batch).token_weights is None
    with pytest.raises(ConfigError, match="surprise_weight"):
        _tiny(surprise_weight=-1.0)
    with pytest.raises(ConfigError, match="surprise_quantile"):
        _tiny(surprise_quantile=1.0)
    with pytest.raises(ConfigError, match="does not have"):
        _tiny(surprise_weight=1.0, posterior="dirac", objective="jepa")


def test_per_token_terms_average_under_token_weights():
    from varjepa.objectives import JEPAOutputs
    from varjepa.objectives.terms import Regression, TargetNLL

    torch.manual_seed(0)
    fam = POSTERIORS.build("diag_gaussian", dim=3)
    pred = fam(torch.randn(2, 5, fam.num_params))
    target = torch.randn(2, 5, 3)
    w = torch.rand(2, 5) + 0.5
    w = w / w.mean()
    nll_tok = -pred.log_prob(target)  # [2, 5]
    mse_tok = (fam.mean(pred) - target).square().mean(-1)
    for term, per_token in ((TargetNLL("nll"), nll_tok), (Regression("mse"), mse_tok)):
        plain = term(JEPAOutputs(pred=pred, family=fam, target=target))
        weighted = term(JEPAOutputs(pred=pred, family=fam, target=target, token_weights=w))
        torch.testing.assert_close(plain, per_token.mean())
        torch.testing.assert_close(weighted, (w * per_token).sum() / w.numel())
        ones = term(JEPAOutputs(pred=pred, family=fam, target=target, token_weights=torch.ones(2, 5)))
        torch.testing.assert_close(ones, plain)


# -------------------------------------------------------------------------- planners
class ToyModel(torch.nn.Module):
    """A stand-in world model with known optima. Latent ``[x, disaster]``: ``x`` moves by the action
    (``x' = x + a``); with common noise ``u``, a particle suffers a disaster with probability
    ``risk·max(a, 0)`` per step."""

    def __init__(self, risk: float = 0.0):
        super().__init__()
        self.register_buffer("obs_mean", torch.zeros(1))
        self.action_dim, self.obs_dim, self.risk = 1, 1, risk
        self.hparams = SimpleNamespace(latent_dim=2, belief_dim=2)
        self.hazard_head = None

    def initial_belief(self, n):
        return torch.zeros(n, 2)

    def encode(self, obs, target=False):
        return torch.cat([obs, torch.zeros_like(obs)], -1)

    def update_belief(self, h, z, prev_action):
        return z

    def denormalize_action(self, a):
        return a

    def imagine(self, h, actions, sample=True, noise=None, keep_params=True):
        x, zs = h[:, 0], []
        u = noise[1] if noise is not None else torch.rand(actions.shape[:2])
        for j in range(actions.shape[1]):
            a = actions[:, j, 0]
            x = x + a
            disaster = (u[:, j] < self.risk * a.clamp_min(0)).float()
            zs.append(torch.stack([x, disaster], -1))
        return None, torch.stack(zs, 1)


def _reach_cost(model, z):
    """Distance of x to the goal 3, plus a disaster cost."""
    return (z[..., 0] - 3.0).abs() + 20.0 * z[..., 1]


@pytest.mark.parametrize("planner", [CEMPlanner, MPPIPlanner])
def test_planners_steer_a_deterministic_model_to_the_goal(planner):
    torch.manual_seed(0)
    p = planner(ToyModel(), _reach_cost, "expected", horizon=4, candidates=64, particles=2, iterations=6)
    x = 0.0
    for _ in range(5):
        a = float(p.act(np.array([x]))[0])
        x += a
    assert abs(x - 3.0) < 0.3
    assert len(p.step_times) == 5 and all(t > 0 for t in p.step_times)


@pytest.mark.parametrize("planner", [CEMPlanner, MPPIPlanner])
def test_cvar_avoids_the_tail_risk_that_the_expected_cost_accepts(planner):
    # moving right by a costs 20·0.1·a of expected disaster and saves a of distance: risk-neutral
    # moves (expected gain 1 − 2·0.1·20·... per step < 0 only in the tail); CVaR at 0.1 sees the
    # disasters of the worst particles and stays
    def cost(model, z):
        return (z[..., 0] - 3.0).abs() + 4.0 * z[..., 1]

    results = {}
    for risk in ("expected", {"name": "cvar", "alpha": 0.1}):
        torch.manual_seed(0)
        p = planner(ToyModel(risk=0.2), cost, risk, horizon=1, candidates=64, particles=40, iterations=5)
        results[str(risk)] = float(p.act(np.array([0.0]))[0])
    # expected: cost(a) = (3 − a) + 4·0.2·a = 3 − 0.2·a  → a = 1 (the boundary)
    assert results["expected"] > 0.7
    # CVaR_0.1 over 40 particles (4 worst): every disaster-prone particle is in the tail once
    # P(disaster) = 0.2·a ≥ 0.1, i.e. cost 3 − a + 4·min(1, 2a) → best a = 0
    assert results[str({"name": "cvar", "alpha": 0.1})] < 0.2


def test_planner_options_are_checked():
    with pytest.raises(ConfigError, match="horizon"):
        CEMPlanner(ToyModel(), _reach_cost, horizon=0)
    with pytest.raises(ConfigError, match="elites"):
        CEMPlanner(ToyModel(), _reach_cost, candidates=8, elites=9)
    with pytest.raises(ConfigError, match="temperature"):
        MPPIPlanner(ToyModel(), _reach_cost, temperature=0)
    with pytest.raises(ConfigError, match="unknown risk measure 'var'"):
        CEMPlanner(ToyModel(), _reach_cost, risk="var")
    with pytest.raises(ConfigError, match="first_iterations = 0"):
        CEMPlanner(ToyModel(), _reach_cost, first_iterations=0)
    with pytest.raises(ConfigError, match="momentum = 1"):
        CEMPlanner(ToyModel(), _reach_cost, momentum=1.0)


def test_goal_hazard_cost_embeds_the_goal_and_reads_the_hazard_head():
    from varjepa.worldmodel import GoalHazardCost, make_env

    m = _tiny().eval()
    env = make_env("varjepa/WindyPointMass-v0")
    c = GoalHazardCost(distance_weight=2.0, hazard_weight=3.0)
    c.bind(m, env)
    torch.testing.assert_close(c.z_goal, m.encode(torch.tensor([1.4, 0.0]), target=True))
    z = torch.randn(5, 7, 4)  # 5 rollouts of 7 steps
    p = torch.sigmoid(m.hazard_logits(z)).detach().numpy()
    level = np.maximum.accumulate(p, axis=-1)  # the worst hazard reached so far
    step_hazard = np.diff(level, axis=-1, prepend=0.0)
    expect = 2.0 * (z - c.z_goal).norm(dim=-1).detach().numpy() + 3.0 * step_hazard
    np.testing.assert_allclose(c(m, z).detach().numpy(), expect, rtol=1e-5, atol=1e-6)
    # a rollout pays once, for the most hazardous state it reaches
    np.testing.assert_allclose(step_hazard.sum(-1), p.max(-1), rtol=1e-5)
    with pytest.raises(ConfigError, match="goal_obs"):
        GoalHazardCost(goal_obs=[1.0, 0.0, 0.0]).bind(m, env)
    assert math.isfinite(float(c(m, z).sum().detach()))


def test_refit_hazard_head_learns_a_sharp_boundary():
    torch.manual_seed(0)
    m = _tiny(latent_dim=16, hidden=64).eval()  # random encoder: wide enough to keep the position
    obs = torch.rand(4000, 2) * 4 - 2
    hazard = (obs[:, 1] < -0.5).float()  # a half-plane in raw units
    loss = m.refit_hazard_head(obs, hazard, steps=800)
    with torch.no_grad():
        p = torch.sigmoid(m.hazard_logits(m.encode(obs, target=True)))
    far = (obs[:, 1] + 0.5).abs() > 0.3
    assert loss < 0.2
    assert ((p[far] > 0.5).float() == hazard[far]).float().mean() > 0.97
    with pytest.raises(ConfigError, match="hazard_refit_steps"):
        _tiny(hazard_refit_steps=-1)


@pytest.mark.parametrize("planner", [CEMPlanner, MPPIPlanner])
def test_first_step_of_an_episode_gets_its_own_iterations(planner):
    p = planner(
        ToyModel(),
        _reach_cost,
        "expected",
        horizon=2,
        candidates=4,
        particles=2,
        iterations=2,
        first_iterations=5,
    )
    calls = []
    score = p.score
    p.score = lambda h, seqs: calls.append(1) or score(h, seqs)
    p.act(np.array([0.0]))
    p.act(np.array([0.0]))
    assert len(calls) == 5 + 2
    p.reset()
    p.act(np.array([0.0]))
    assert len(calls) == 5 + 2 + 5


def test_calibration_on_test_episodes_can_stop_after_the_first_test_episodes(tmp_path):
    """``max_episodes`` measures coverage on the windows of the first N test episodes only: equal to
    :func:`k_step_calibration` on exactly those windows, different from all of them."""
    from varjepa.worldmodel.evaluate import calibration_on_test_episodes

    data = dict(episodes=30, steps=12, window=6, policy="random", collect_overrides=NO_TERM)
    data["cache_dir"] = str(tmp_path)
    dm = TrajectoryDataModule(**data)
    dm.setup("fit")
    test = dm.split_episodes["test"].tolist()
    assert len(test) >= 2
    torch.manual_seed(0)
    m = LatentWorldModel(
        latent_dim=4, hidden=8, horizon=1, burn_in=1, belief={"name": "window", "length": 2}, spaces=SPACES
    ).eval()
    m.hparams.calibration_history = 2
    first = calibration_on_test_episodes(m, data, horizons=(1, 2), n=9, max_episodes=1)
    assert first == k_step_calibration(m, windows_of(dm.rollouts, test[:1], 6), horizons=(1, 2), n=9)
    every = calibration_on_test_episodes(m, data, horizons=(1, 2), n=9)
    assert every == k_step_calibration(m, windows_of(dm.rollouts, test, 6), horizons=(1, 2), n=9)
    assert first != every
    with pytest.raises(ValueError, match="max_episodes = 0"):
        calibration_on_test_episodes(m, data, max_episodes=0)
