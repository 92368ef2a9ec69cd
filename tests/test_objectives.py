"""ELBO terms and presets: the deterministic limit, weighting, validation, NaN reporting."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from varjepa import VarJEPA
from varjepa.data.collate import MaskCollator
from varjepa.distributions import POSTERIORS, Gaussian, StandardNormal
from varjepa.objectives import ELBO, JEPAOutputs, NonFiniteLossError, check_finite, jepa, predictive
from varjepa.registry import ConfigError
from varjepa.schedules import Constant, LinearWarmup


def _outputs(family_name: str, d: int = 8, B: int = 3, T: int = 5, **opts) -> JEPAOutputs:
    fam = POSTERIORS.build({"name": family_name, **opts}, dim=d)
    params = torch.randn(B, T, fam.num_params, requires_grad=True)
    return JEPAOutputs(pred=fam(params), family=fam, target=torch.randn(B, T, d))


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_deterministic_limit_is_ijepa_l2(sigma):
    """Dirac posterior + beta=0 + fixed-sigma Gaussian: loss = ||z_hat - z_bar||^2 / (2 sigma^2) + const."""
    d = 8
    out = _outputs("dirac", d=d)
    z_hat, z_bar = out.pred.v, out.target
    elbo = ELBO(predictive(StandardNormal(d), Gaussian(d, sigma=sigma), Constant(0.0)))
    res = elbo(out, step=0, total=10)
    const = 0.5 * d * math.log(2 * math.pi * sigma**2)
    sq = ((z_hat - z_bar) ** 2).sum(-1).mean() / (2 * sigma**2)
    torch.testing.assert_close(res.loss, sq + const, rtol=1e-6, atol=1e-5)
    # the same number through I-JEPA's element-mean MSE: d / (2 sigma^2) * mse
    mse = ELBO(jepa(None, None, Constant(0.0)))(out, 0, 10).loss
    torch.testing.assert_close(mse, F.mse_loss(z_hat, z_bar))
    torch.testing.assert_close(res.loss - const, d / (2 * sigma**2) * mse, rtol=1e-6, atol=1e-6)
    # gradients agree too (same minimiser, same direction)
    (g1,) = torch.autograd.grad(res.loss, z_hat, retain_graph=True)
    (g2,) = torch.autograd.grad(d / (2 * sigma**2) * mse, z_hat)
    torch.testing.assert_close(g1, g2)
    assert "kl" not in res.values  # undefined for a point mass, skipped


def test_predictive_elbo_matches_closed_form_for_diag_gaussian():
    """With many samples the expected NLL approaches its closed form; KL is the analytic Gaussian KL."""
    d = 4
    fam = POSTERIORS.build("diag_gaussian", dim=d)
    params = torch.randn(2, 3, fam.num_params)
    q = fam(params)
    target = torch.randn(2, 3, d)
    out = JEPAOutputs(pred=q, family=fam, target=target)
    beta, sigma = 0.3, 1.5
    elbo = ELBO(predictive(StandardNormal(d), Gaussian(d, sigma), Constant(beta), num_samples=20000))
    res = elbo(out, 0, 1)
    mu, s = q.mean, q.stddev
    nll = (
        (((mu - target) ** 2 + s**2) / (2 * sigma**2) + 0.5 * math.log(2 * math.pi * sigma**2)).sum(-1).mean()
    )
    kl = (0.5 * (s**2 + mu**2 - 1) - s.log()).sum(-1).mean()
    torch.testing.assert_close(res.values["nll"], nll, rtol=2e-2, atol=0)
    torch.testing.assert_close(res.values["kl"], kl, rtol=1e-5, atol=1e-5)
    assert res.methods["kl"] == "analytic"
    torch.testing.assert_close(res.loss, res.values["nll"] + beta * res.values["kl"])


def test_weights_follow_schedule_and_zero_weight_has_no_grad():
    d = 4
    out = _outputs("diag_gaussian", d=d)
    terms = predictive(StandardNormal(d), Gaussian(d), LinearWarmup(value=2.0, warmup=10))
    elbo = ELBO(terms)
    r0 = elbo(out, step=0, total=100)
    assert r0.weights == {"nll": 1.0, "kl": 0.0}
    assert not r0.values["kl"].requires_grad  # evaluated for the logs only
    torch.testing.assert_close(r0.loss, r0.values["nll"])
    r5 = elbo(out, step=5, total=100)
    assert r5.weights["kl"] == pytest.approx(1.0)
    r50 = elbo(out, step=50, total=100)
    assert r50.weights["kl"] == pytest.approx(2.0)


def test_mixture_kl_is_monte_carlo_and_reported():
    out = _outputs("mixture", d=4, components=3)
    res = ELBO(predictive(StandardNormal(4), Gaussian(4), Constant(1.0), kl_samples=8))(out, 0, 1)
    assert res.methods == {"nll": "analytic", "kl": "monte_carlo"}
    assert torch.isfinite(res.loss)


@pytest.mark.parametrize(
    ("family", "opts"),
    [("diag_gaussian", {}), ("lowrank_gaussian", {"rank": 2}), ("mixture", {"components": 3}), ("dirac", {})],
)
@pytest.mark.parametrize("likelihood", ["gaussian", "gaussian_learned"])
def test_closed_form_expected_nll_matches_monte_carlo(family, opts, likelihood):
    """The closed-form E_q[-log p(z_bar|z)] equals a 40k-sample Monte Carlo estimate (within 5 s.e.)."""
    from varjepa.distributions import LIKELIHOODS
    from varjepa.objectives import ExpectedNLL

    d = 5
    torch.manual_seed(3)
    out = _outputs(family, d=d, B=2, T=3, **opts)
    lik = LIKELIHOODS.build(
        {"name": likelihood, **({"sigma": 0.8} if likelihood == "gaussian" else {})}, dim=d
    )
    if likelihood == "gaussian_learned":
        with torch.no_grad():
            lik.raw_sigma.uniform_(-1, 1)
    analytic = ExpectedNLL(lik)
    closed = analytic(out)
    assert analytic.method == "analytic"
    with torch.no_grad():
        z = out.pred.rsample((40000,)) if out.family.stochastic else out.pred.mean.unsqueeze(0)
        per = -lik(z).log_prob(out.target).mean((1, 2))  # [S]
    mc = per.mean()
    se = per.std() / per.numel() ** 0.5 if per.numel() > 1 else torch.tensor(0.0)
    assert abs(float(closed) - float(mc)) <= 5 * float(se) + 1e-4
    # the forced-sampling path reports itself
    sampled = ExpectedNLL(lik, analytic=False)
    sampled(out)
    assert sampled.method == "monte_carlo"


def test_flow_expected_nll_is_sampled():
    from varjepa.objectives import ExpectedNLL

    out = _outputs("flow", d=4)
    term = ExpectedNLL(Gaussian(4))
    assert torch.isfinite(term(out)) and term.method == "monte_carlo"


def test_nonfinite_loss_names_step_and_term():
    out = _outputs("diag_gaussian", d=4)
    out.target[0, 0, 0] = float("nan")
    res = ELBO(predictive(StandardNormal(4), Gaussian(4), Constant(1.0)))(out, 0, 1)
    with pytest.raises(NonFiniteLossError, match=r"step 17: 'nll' = nan"):
        check_finite(res, 17)


def test_duplicate_term_names_rejected():
    terms = predictive(StandardNormal(4), Gaussian(4), Constant(1.0))
    terms[1].name = "nll"
    with pytest.raises(ConfigError, match="unique"):
        ELBO(terms)


# ----------------------------------------------------------------------------- the module
def _batch(model: VarJEPA, B: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(B, 1, 8, 8, generator=g)
    collate = MaskCollator(model.masking, model.encoder.grid_size, seed=seed)
    return collate([(images[i], 0, i) for i in range(B)])


def test_module_dirac_beta0_equals_jepa_preset(tiny):
    """Same weights, same batch: predictive(dirac, beta=0) - const == d/(2 sigma^2) * jepa(mse)."""
    torch.manual_seed(1)
    a = VarJEPA(**tiny, posterior="dirac", beta=0.0, likelihood={"name": "gaussian", "sigma": 0.7})
    torch.manual_seed(1)
    b = VarJEPA(**tiny, posterior="dirac", objective="jepa")
    batch = _batch(a)
    la = a.elbo(a(batch), 0, 1).loss
    lb = b.elbo(b(batch), 0, 1).loss
    d = a.latent_dim
    torch.testing.assert_close(
        la - 0.5 * d * math.log(2 * math.pi * 0.49), d / (2 * 0.49) * lb, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (
            {"posterior": "gaussian_process"},
            r"model\.posterior: unknown posterior family 'gaussian_process'.*diag_gaussian",
        ),
        ({"prior": "cauchy"}, r"model\.prior: unknown prior 'cauchy'.*standard_normal"),
        ({"likelihood": "poisson"}, r"model\.likelihood: unknown likelihood 'poisson'.*laplace"),
        ({"objective": "byol"}, r"model\.objective: unknown objective preset 'byol'.*predictive"),
        ({"beta": -0.5}, r"model\.beta: value = -0\.5 is negative"),
        ({"beta": {"name": "linear_warmup", "value": -1.0}}, r"model\.beta: value = -1\.0 is negative"),
        (
            {"posterior": {"name": "lowrank_gaussian", "rank": 32}},
            r"rank = 32; must satisfy 1 <= rank < dim = 32",
        ),
        ({"posterior": {"name": "mixture", "components": 0}}, r"components = 0; must be >= 1"),
        ({"posterior": "dirac", "beta": 1.0}, r"model\.beta.*dirac.*undefined.*beta: 0"),
        ({"posterior": {"name": "diag_gaussian", "dim": 16}}, r"set by varjepa.*latent size"),
        ({"prior": {"name": "learned_diagonal", "dim": 16}}, r"model\.prior.*set by varjepa"),
        ({"posterior": {"name": "flow", "transform": "radial"}}, r"transform = 'radial'; allowed"),
        ({"target_posterior": "diag_gaussian"}, r"only used by the 'target_posterior' objective"),
        ({"objective": {"name": "predictive", "num_samples": 0}}, r"num_samples = 0"),
        ({"lr": 0.0}, r"model\.lr = 0\.0"),
        ({"ema": {"name": "linear", "start": 0.99, "end": 1.2}}, r"model\.ema.*outside \[0, 1\]"),
    ],
)
def test_bad_config_errors_name_option_value_and_allowed(tiny, kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        VarJEPA(**tiny, **kwargs)


def test_target_posterior_preset_builds_target_head_and_trains(tiny):
    model = VarJEPA(**tiny, objective="target_posterior", posterior="diag_gaussian")
    assert model.target_head is not None and model.target_family is not None
    batch = _batch(model)
    res = model.elbo(model(batch), 5, 10)
    assert set(res.values) == {"nll", "kl"} and torch.isfinite(res.loss)
    res.loss.backward()
    assert model.target_head.weight.grad is not None and model.target_head.weight.grad.abs().sum() > 0
    # the EMA target encoder never receives gradients
    assert all(p.grad is None for p in model.target_encoder.parameters())


@pytest.mark.parametrize("kl_weight", [0.0, 1.0])
def test_monte_carlo_terms_share_one_draw(kl_weight):
    """A flow's sampled NLL and KL use one draw of max(num_samples, kl_samples) (one pass of the
    flow per step), each term equals its formula on that draw, and gradients reach the head also
    when the KL (first in order here) is evaluated without gradient."""
    from varjepa.objectives import ExpectedNLL, KLToPrior

    torch.manual_seed(0)
    d, lik, prior = 4, Gaussian(4), StandardNormal(4)
    out = _outputs("flow", d=d)
    calls = []
    rsample = out.pred.rsample
    out.pred.rsample = lambda shape=torch.Size(): calls.append(tuple(shape)) or rsample(shape)
    kl = KLToPrior(prior, "kl", weight=Constant(kl_weight), num_samples=4)
    nll = ExpectedNLL(lik, "nll", num_samples=1)
    res = ELBO([kl, nll])(out, step=0, total=10)
    assert calls == [(4,)]
    z = out._draws["pred"]
    assert z.shape == (4, 3, 5, d)
    with torch.no_grad():
        ref_nll = -lik(z).log_prob(out.target).mean()
        ref_kl = (out.pred.log_prob(z) - prior().log_prob(z)).mean(0).mean()
    torch.testing.assert_close(res.values["nll"].detach(), ref_nll, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(res.values["kl"].detach(), ref_kl, rtol=1e-4, atol=1e-4)
    res.loss.backward()
    grads = [p.grad for p in out.family.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_analytic_terms_reserve_no_draws():
    out = _outputs("diag_gaussian", d=4)
    res = ELBO(predictive(StandardNormal(4), Gaussian(4), Constant(1.0)))(out, 0, 10)
    assert res.methods == {"nll": "analytic", "kl": "analytic"} and out._draws == {}
