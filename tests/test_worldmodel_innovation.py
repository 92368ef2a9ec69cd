"""The innovation belief: what it stores, that it equals the prediction error computed by hand on
observed latents, that in an imagined rollout it is exactly the noise the sample was drawn with,
that training does not let a time step's batch set the input statistics, and its config errors."""

from __future__ import annotations

import math

import pytest
import torch

from varjepa.registry import ConfigError
from varjepa.worldmodel import LatentWorldModel
from varjepa.worldmodel.beliefs import InnovationBelief, WindowBelief, build_belief
from worldmodel_helpers import WINDY_SPACES

SPACES = WINDY_SPACES
INNOVATION = {"name": "window", "length": 2, "innovation": True}


def _model(**kw) -> LatentWorldModel:
    torch.manual_seed(0)
    args = {"latent_dim": 3, "hidden": 16, "horizon": 1, "burn_in": 1, "spaces": SPACES, "ema": 0.0}
    m = LatentWorldModel(belief=INNOVATION, **{**args, **kw})
    with torch.no_grad():  # a non-trivial predictor (its last layers start at zero)
        for head in (m.head, m.anchor_head):
            if head is not None:
                for p in head.parameters():
                    p.normal_(0, 0.3)
    return m.eval()


def test_innovation_belief_layout_and_first_observation():
    b = build_belief(INNOVATION, latent_dim=2, action_dim=1, default_dim=9)
    assert isinstance(b, InnovationBelief) and isinstance(b.base, WindowBelief)
    assert b.size == 2 * (2 + 1 + 1) + 2 + 3 and b.keeps_latest and b.needs_prediction
    h0 = b.initial(2)
    z0, z1 = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[5.0, 6.0], [7.0, 8.0]])
    feat = torch.tensor([[0.5, -0.5, 2.0], [1.5, 1.0, 3.0]])
    # the first observation: nothing predicted it, so the innovation is dropped (valid = 0)
    h1 = b.update(h0, z0, torch.zeros(2, 1), feat)
    torch.testing.assert_close(h1[:, :8], b.base.update(h0[:, :8], z0, torch.zeros(2, 1)))
    torch.testing.assert_close(h1[:, 8:], torch.tensor([[0, 0, 0, 0, 1.0], [0, 0, 0, 0, 1.0]]))
    h2 = b.update(h1, z1, torch.ones(2, 1), feat)
    torch.testing.assert_close(h2[:, 8:11], feat)
    torch.testing.assert_close(h2[:, 11:], torch.ones(2, 2))
    torch.testing.assert_close(b.latest(h2), z1)


@pytest.mark.parametrize("posterior", ["diag_gaussian", {"name": "anchored_mixture", "components": 3}])
def test_innovation_of_observed_latents_is_the_prediction_error(posterior):
    kw = {"objective": {"name": "heteroscedastic", "beta_nll": 0.0, "mean_weight": 1.0}}
    m = _model(posterior=posterior, residual=True, **(kw if "anchored" in str(posterior) else {}))
    torch.manual_seed(1)
    z = torch.randn(4, 3, 3)
    act = torch.rand(4, 2, 2) * 2 - 1
    h = m.filter(z, act)
    d = m.hparams.latent_dim
    for t in (1, 2):
        pred = m.predict(h[:, t - 1], act[:, t - 1])
        mean = m.family.mean(pred)
        torch.testing.assert_close(h[:, t, -(d + 3) : -3], z[:, t] - mean)
        torch.testing.assert_close(h[:, t, -3], -pred.log_prob(z[:, t]) / d)
    if posterior == "diag_gaussian":  # an independent Gaussian log density
        p = m.predict_params(h[:, 1], act[:, 1])
        loc, std = p[:, :d], m.family.std(p[:, d:])
        nll = 0.5 * (((z[:, 2] - loc) / std) ** 2 + 2 * std.log() + math.log(2 * math.pi)).sum(-1)
        torch.testing.assert_close(h[:, 2, -3], nll / d)
    assert torch.all(h[:, 0, -(d + 3) :] == torch.tensor([0.0] * (d + 2) + [1.0]))


def test_imagined_innovation_is_the_drawn_noise():
    m = _model(posterior="diag_gaussian", residual=True)
    torch.manual_seed(2)
    h = m.filter(torch.randn(5, 2, 3), torch.rand(5, 1, 2) * 2 - 1)[:, -1]
    acts = torch.rand(5, 3, 2) * 2 - 1
    eps, u = torch.randn(5, 3, 3), torch.rand(5, 3)
    params, zs = m.imagine(h, acts, noise=(eps, u))
    d = m.hparams.latent_dim
    hh = h
    for j in range(2):
        hh = m.update_belief(hh, zs[:, j], acts[:, j])
        std = m.family.std(params[:, j, d:])
        torch.testing.assert_close(hh[:, -(d + 3) : -3], std * eps[:, j])  # z − E[z] = σ·ε
        torch.testing.assert_close(params[:, j + 1], m.predict_params(hh, acts[:, j + 1]))


def test_training_filter_reads_running_statistics_without_updating_them():
    m = _model(posterior="diag_gaussian", residual=True, input_norm=True).train()
    norm = m.head_norm
    with torch.no_grad():
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
    before = (norm.running_mean.clone(), norm.running_var.clone(), int(norm.num_batches_tracked))
    z, act = torch.randn(6, 3, 3), torch.rand(6, 2, 2) * 2 - 1
    h = m.filter(z, act)
    assert torch.equal(norm.running_mean, before[0]) and torch.equal(norm.running_var, before[1])
    assert int(norm.num_batches_tracked) == before[2]
    # and the innovation is the one the evaluation-mode model computes
    torch.testing.assert_close(h, m.eval().filter(z, act))


def test_a_training_step_fits_with_an_innovation_belief():
    from varjepa.worldmodel import TrajectoryDataModule

    dm = TrajectoryDataModule(env="varjepa/WindyPointMass-v0", episodes=6, steps=12, window=6, batch_size=4)
    dm.setup("fit")
    m = LatentWorldModel(latent_dim=4, hidden=16, belief=INNOVATION, residual=True, horizon=1, ema=0.0)
    m.check_data(dm)
    batch = next(iter(dm.train_dataloader()))
    loss = m.elbo(m(batch), 0, 10).loss
    loss.backward()
    assert torch.isfinite(loss) and m.head[-1].weight.grad.abs().sum() > 0


def test_bad_innovation_option_names_what_is_allowed():
    with pytest.raises(ConfigError, match=r"model\.belief\.innovation = 'yes'; must be true or false"):
        build_belief({"name": "window", "innovation": "yes"}, 2, 1, 8)


def test_training_rollouts_read_innovations_with_the_running_statistics():
    """In training (batch statistics), a multi-step rollout's innovation is recomputed with the running
    statistics, the same innovation the filter gives an observed history."""
    m = _model(posterior="diag_gaussian", residual=True, input_norm=True).train()
    m.head_norm.momentum = 0.0  # keep the running statistics fixed, so that calls can be replayed
    with torch.no_grad():
        m.head_norm.running_mean.uniform_(-1, 1)
        m.head_norm.running_var.uniform_(0.5, 2)
    torch.manual_seed(3)
    h = m.filter(torch.randn(6, 2, 3), torch.rand(6, 1, 2) * 2 - 1)[:, -1]
    acts = torch.rand(6, 2, 2) * 2 - 1
    params, zs = m.imagine(h, acts)
    h1 = m.update_belief(h, zs[:, 0], acts[:, 0])  # computes its own prediction, running statistics
    torch.testing.assert_close(params[:, 1], m.predict_params(h1, acts[:, 1]))
    # and that innovation differs from one read off the batch-statistics prediction
    d = m.hparams.latent_dim
    h_batch = m.update_belief(h, zs[:, 0], acts[:, 0], params[:, 0])
    assert not torch.allclose(h_batch[:, -(d + 3) : -3], h1[:, -(d + 3) : -3])


@pytest.mark.parametrize(
    "spec",
    ["diag_gaussian", {"name": "mixture", "components": 3}, {"name": "anchored_mixture", "components": 3}],
)
def test_mean_and_log_prob_without_building_equals_the_distributions(spec):
    from varjepa.distributions import POSTERIORS

    fam = POSTERIORS.build(spec, dim=4)
    torch.manual_seed(0)
    params, z = torch.randn(6, fam.num_params), torch.randn(6, 4)
    mean, log_prob = fam.mean_and_log_prob(params, z)
    dist = fam(params)
    torch.testing.assert_close(mean, fam.mean(dist))
    torch.testing.assert_close(log_prob, dist.log_prob(z))
    assert mean.shape == (6, 4) and log_prob.shape == (6,)
