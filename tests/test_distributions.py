"""Tests of the posterior families, priors and likelihoods against independent references
(scipy / numpy / hand-written formulas in float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.special import log_softmax, logsumexp
from torch.distributions import MultivariateNormal

from varjepa.distributions import (
    LIKELIHOODS,
    POSTERIORS,
    PRIORS,
    Flow,
    bounded_std,
    mixture_moments,
)
from varjepa.registry import ConfigError


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def ref_std(raw, init_std=1.0, min_std=1e-3, max_std=20.0):
    """Independent float64 reference of a family's std from a raw head output."""
    raw = np.asarray(raw, dtype=np.float64)
    offset = np.log(np.expm1(init_std - min_std))  # softplus(offset) = init_std - min_std
    return np.minimum(np.logaddexp(0.0, raw + offset) + min_std, max_std)


def np64(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


FAMILIES = {
    "dirac": "dirac",
    "diag_gaussian": "diag_gaussian",
    "lowrank_gaussian": {"name": "lowrank_gaussian", "rank": 2},
    "mixture": {"name": "mixture", "components": 3},
    "anchored_mixture": {"name": "anchored_mixture", "components": 3},
    "flow": {"name": "flow", "context_dim": 5, "hidden_dims": [16]},
    "flow_spline": {"name": "flow", "transform": "spline", "context_dim": 5, "hidden_dims": [16]},
}


def build(key, dim=4, **kw):
    spec = FAMILIES[key]
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    return POSTERIORS.build({**spec, **kw}, dim=dim)


# ---------------------------------------------------------------- shapes and head sizes


def test_num_params_formulas():
    d = 6
    assert build("dirac", d).num_params == d
    assert build("diag_gaussian", d).num_params == 2 * d
    assert POSTERIORS.build({"name": "lowrank_gaussian", "rank": 3}, dim=d).num_params == d * 5
    assert POSTERIORS.build({"name": "mixture", "components": 4}, dim=d).num_params == 4 * (2 * d + 1)
    assert POSTERIORS.build({"name": "flow", "context_dim": 7}, dim=d).num_params == 2 * d + 7


@pytest.mark.parametrize("key", sorted(FAMILIES))
@pytest.mark.parametrize("batch", [(), (5,), (2, 3)])
def test_batch_and_event_shape(key, batch):
    fam = build(key, dim=4)
    dist = fam(torch.randn(*batch, fam.num_params))
    assert dist.batch_shape == torch.Size(batch)
    assert dist.event_shape == torch.Size([4])
    z = dist.rsample()
    assert z.shape == (*batch, 4)
    assert dist.log_prob(z).shape == batch
    assert fam.mean(dist).shape == (*batch, 4)
    assert fam.marginal_std(dist).shape == (*batch, 4)
    assert fam.uncertainty(dist).shape == batch


@pytest.mark.parametrize("key", sorted(FAMILIES))
def test_sample_shape_with_token_batch(key):
    """Posteriors are [batch, tokens]; the MC KL draws ``rsample((K,))`` from them. Each
    token's samples must follow that token's own distribution."""
    fam = build(key, dim=3)
    params = torch.randn(2, 3, fam.num_params)
    n, n_ref = 2000, 10_000
    with torch.no_grad():
        dist = fam(params)
        z = dist.rsample((n,))
        assert z.shape == (n, 2, 3, 3)
        lp = dist.log_prob(z)
        assert lp.shape == (n, 2, 3) and torch.isfinite(lp).all()
        for i in range(2):
            for j in range(3):
                alone = fam(params[i, j])
                if key.startswith("flow"):
                    ref, inv_n = alone.sample((n_ref,)).mean(0), 1 / n + 1 / n_ref
                else:
                    ref, inv_n = fam.mean(alone), 1 / n  # exact
                tol = 5 * z[:, i, j].std(0) * inv_n**0.5 + 1e-4
                assert ((z[:, i, j].mean(0) - ref).abs() <= tol).all(), (i, j)


@pytest.mark.parametrize("key", sorted(FAMILIES))
def test_head_size_mismatch_raises(key):
    fam = build(key, dim=4)
    for n in (fam.num_params - 1, fam.num_params + 1):
        with pytest.raises(ValueError, match=str(fam.num_params)):
            fam(torch.zeros(3, n))


# ---------------------------------------------------------------- log_prob vs references


def test_dirac():
    fam = build("dirac", dim=3)
    v = torch.randn(4, 3)
    dist = fam(v)
    torch.testing.assert_close(dist.rsample(), v)
    torch.testing.assert_close(fam.mean(dist), v)
    torch.testing.assert_close(dist.log_prob(v), torch.zeros(4))
    assert torch.isneginf(dist.log_prob(v + 0.1)).all()
    torch.testing.assert_close(fam.uncertainty(dist), torch.zeros(4))
    assert not fam.stochastic and not fam.analytic_kl


def test_diag_gaussian_log_prob_vs_scipy():
    fam = POSTERIORS.build({"name": "diag_gaussian", "init_std": 0.7, "min_std": 0.01, "max_std": 5.0}, dim=5)
    params = 2 * torch.randn(6, 10)
    dist = fam(params)
    loc, raw = np64(params[:, :5]), np64(params[:, 5:])
    sigma = ref_std(raw, 0.7, 0.01, 5.0)
    z = torch.randn(8, 6, 5) * 2
    expected = stats.norm.logpdf(np64(z), loc=loc, scale=sigma).sum(-1)
    np.testing.assert_allclose(np64(dist.log_prob(z)), expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np64(fam.mean(dist)), loc, rtol=0, atol=0)
    np.testing.assert_allclose(np64(fam.marginal_std(dist)), sigma, rtol=1e-5)
    np.testing.assert_allclose(np64(fam.uncertainty(dist)), sigma.mean(-1), rtol=1e-5)


def lowrank_reference(fam, params):
    """Mean and dense covariance (float64) from the head outputs, by hand."""
    d, r = fam.dim, fam.rank
    p = np64(params)
    loc = p[..., :d]
    w = fam.factor_scale * p[..., d : d + d * r].reshape(*p.shape[:-1], d, r)
    sigma = ref_std(p[..., d + d * r :])
    cov = w @ np.swapaxes(w, -1, -2) + np.einsum("...i,ij->...ij", sigma**2, np.eye(d))
    return loc, cov


def test_lowrank_log_prob_vs_dense_mvn():
    fam = POSTERIORS.build({"name": "lowrank_gaussian", "rank": 2, "factor_scale": 0.5}, dim=5)
    params = torch.randn(4, fam.num_params) * 1.5
    dist = fam(params)
    loc, cov = lowrank_reference(fam, params)
    z = torch.randn(6, 4, 5) * 2
    got = np64(dist.log_prob(z))
    for b in range(4):
        expected = stats.multivariate_normal(loc[b], cov[b]).logpdf(np64(z[:, b]))
        np.testing.assert_allclose(got[:, b], expected, rtol=1e-4, atol=1e-3)
        # torch's dense MVN from the same hand-built covariance
        mvn = MultivariateNormal(torch.from_numpy(loc[b]), covariance_matrix=torch.from_numpy(cov[b]))
        np.testing.assert_allclose(got[:, b], np64(mvn.log_prob(z[:, b].double())), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(np64(dist.covariance_matrix), cov, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        np64(fam.marginal_std(dist)), np.sqrt(np.diagonal(cov, axis1=-2, axis2=-1)), rtol=1e-5
    )


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), dim=st.integers(2, 7), data=st.data())
def test_lowrank_with_zero_factor_equals_diag(seed, dim, data):
    rank = data.draw(st.integers(1, dim - 1))
    g = torch.Generator().manual_seed(seed)
    loc, raw = torch.randn(3, dim, generator=g), 3 * torch.randn(3, dim, generator=g)
    lowrank = POSTERIORS.build({"name": "lowrank_gaussian", "rank": rank}, dim=dim)
    diag = POSTERIORS.build("diag_gaussian", dim=dim)
    q_lr = lowrank(torch.cat([loc, torch.zeros(3, dim * rank), raw], -1))
    q_d = diag(torch.cat([loc, raw], -1))
    z = 2 * torch.randn(5, 3, dim, generator=g)
    torch.testing.assert_close(q_lr.log_prob(z), q_d.log_prob(z), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(q_lr.entropy(), q_d.entropy(), rtol=1e-4, atol=1e-3)


def mixture_reference(fam, params):
    k, d = fam.components, fam.dim
    p = np64(params)
    locs = p[..., : k * d].reshape(*p.shape[:-1], k, d)
    scales = ref_std(p[..., k * d : 2 * k * d]).reshape(*p.shape[:-1], k, d)
    logw = log_softmax(p[..., 2 * k * d :], axis=-1)
    return locs, scales, logw


def test_mixture_log_prob_vs_logsumexp():
    fam = POSTERIORS.build({"name": "mixture", "components": 3}, dim=4)
    params = 1.5 * torch.randn(2, 5, fam.num_params)
    dist = fam(params)
    locs, scales, logw = mixture_reference(fam, params)
    z = 2 * torch.randn(7, 2, 5, 4)
    zz = np64(z)[..., None, :]  # [7, 2, 5, 1, 4]
    comp = stats.norm.logpdf(zz, loc=locs, scale=scales).sum(-1)  # [7, 2, 5, K]
    expected = logsumexp(logw + comp, axis=-1)
    np.testing.assert_allclose(np64(dist.log_prob(z)), expected, rtol=1e-5, atol=1e-4)


def test_mixture_with_one_component_equals_diag():
    mix = POSTERIORS.build({"name": "mixture", "components": 1}, dim=3)
    diag = POSTERIORS.build("diag_gaussian", dim=3)
    loc, raw = torch.randn(4, 3), torch.randn(4, 3)
    z = torch.randn(6, 4, 3)
    torch.testing.assert_close(
        mix(torch.cat([loc, raw, torch.randn(4, 1)], -1)).log_prob(z),
        diag(torch.cat([loc, raw], -1)).log_prob(z),
        rtol=1e-5,
        atol=1e-4,
    )


def test_mixture_moments_exact_and_vs_samples():
    fam = POSTERIORS.build({"name": "mixture", "components": 3}, dim=4)
    params = torch.randn(fam.num_params)
    params[-3:] = torch.tensor([0.5, -1.0, 0.2])
    dist = fam(params)
    mean, var = mixture_moments(dist)
    locs, scales, logw = mixture_reference(fam, params)
    w = np.exp(logw)[:, None]
    exp_mean = (w * locs).sum(0)
    exp_var = (w * (scales**2 + locs**2)).sum(0) - exp_mean**2
    np.testing.assert_allclose(np64(mean), exp_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np64(var), exp_var, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np64(fam.mean(dist)), exp_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np64(fam.marginal_std(dist)), np.sqrt(exp_var), rtol=1e-5)
    z = np64(dist.sample((200_000,)))
    np.testing.assert_allclose(z.mean(0), exp_mean, atol=0.02)
    np.testing.assert_allclose(z.var(0), exp_var, rtol=0.03)


@pytest.mark.parametrize(
    "transform", ["affine_autoregressive", "affine_coupling", "spline", "spline_autoregressive"]
)
def test_flow_log_prob_change_of_variables(transform):
    fam = POSTERIORS.build(
        {"name": "flow", "transform": transform, "context_dim": 3, "hidden_dims": [16]}, dim=3
    )
    params = torch.randn(fam.num_params)
    with torch.no_grad():
        dist = fam(params)
        base = dist.base_dist
        x = base.sample((6,))
        z = dist.rsample((6,))  # cached own samples
        lp_own = dist.log_prob(z)
    assert torch.isfinite(lp_own).all()

    def forward(v):
        for t in dist.transforms:
            v = t(v)
        return v

    for i in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(forward, x[i].double().float())
        zi = forward(x[i]).detach()
        expected = base.log_prob(x[i]) - torch.linalg.slogdet(jac.double())[1].float()
        # a fresh tensor: no transform cache, log_prob runs the inverse transforms
        got = dist.log_prob(zi.clone())
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=2e-3)


def test_flow_depth_and_permutation():
    fam = POSTERIORS.build({"name": "flow", "depth": 3, "context_dim": 2, "hidden_dims": [8]}, dim=4)
    dist = fam(torch.randn(fam.num_params))
    # three conditioned transforms with a coordinate reversal between consecutive ones
    assert len(dist.transforms) == 5
    torch.testing.assert_close(dist.transforms[1].permutation, torch.tensor([3, 2, 1, 0]))
    assert isinstance(fam, Flow) and len(list(fam.transforms)) == 3


def test_flow_mean_and_std_by_sampling_match_large_sample():
    fam = POSTERIORS.build(
        {"name": "flow", "context_dim": 3, "hidden_dims": [16], "num_moment_samples": 4000}, dim=3
    )
    with torch.no_grad():
        dist = fam(torch.randn(fam.num_params))
        big = dist.sample((100_000,))
        torch.testing.assert_close(fam.mean(dist), big.mean(0), atol=0.1, rtol=0)
        torch.testing.assert_close(fam.marginal_std(dist), big.std(0), rtol=0.1, atol=0.02)


# ---------------------------------------------------------------- bounded std


def family_stds(key, fam, dist):
    if key == "diag_gaussian":
        return dist.base_dist.scale
    if key == "lowrank_gaussian":
        return dist.cov_diag.sqrt()
    if key in ("mixture", "anchored_mixture"):
        return dist.coord_scale
    return dist.base_dist.base_dist.scale  # flows: diagonal base


def std_slice(key, fam):
    d = fam.dim
    if key == "lowrank_gaussian":
        return slice(d + d * fam.rank, None)
    if key == "mixture":
        k = fam.components
        return slice(k * d, 2 * k * d)
    if key == "anchored_mixture":
        k = fam.components
        return slice(d + k * d, d + 2 * k * d)
    return slice(d, 2 * d)


STOCHASTIC = [k for k in sorted(FAMILIES) if k != "dirac"]


@pytest.mark.parametrize("key", STOCHASTIC)
def test_bounded_std_extremes(key):
    fam = build(key, dim=4, min_std=0.01, max_std=5.0, init_std=0.5)
    sl = std_slice(key, fam)
    for extreme, bound in ((1e4, 5.0), (-1e4, 0.01)):
        params = torch.zeros(3, fam.num_params)
        params[:, sl] = extreme
        std = family_stds(key, fam, fam(params))
        assert torch.isfinite(std).all()
        torch.testing.assert_close(std, torch.full_like(std, bound), rtol=1e-5, atol=0)
    params = 1e4 * torch.randn(3, fam.num_params).sign()
    params[:, : sl.start] = 0.3  # keep locs / factors moderate
    std = family_stds(key, fam, fam(params))
    assert (std >= 0.01 * (1 - 1e-6)).all() and (std <= 5.0 * (1 + 1e-6)).all()


@pytest.mark.parametrize("key", STOCHASTIC)
@pytest.mark.parametrize("init_std", [1.0, 0.3, 4.0])
def test_zero_head_gives_init_std(key, init_std):
    fam = build(key, dim=4, init_std=init_std)
    dist = fam(torch.zeros(2, fam.num_params))
    std = family_stds(key, fam, dist)
    torch.testing.assert_close(std, torch.full_like(std, init_std), rtol=0, atol=1e-5)
    if key in ("diag_gaussian", "lowrank_gaussian", "mixture"):
        torch.testing.assert_close(fam.marginal_std(dist), torch.full((2, 4), init_std), rtol=0, atol=1e-5)
        torch.testing.assert_close(fam.mean(dist), torch.zeros(2, 4))


@settings(max_examples=25, deadline=None)
@given(
    raw=st.lists(st.floats(-1e4, 1e4), min_size=1, max_size=8),
    min_std=st.floats(1e-4, 0.5),
    span=st.floats(0.1, 50.0),
)
def test_bounded_std_property(raw, min_std, span):
    max_std = min_std + span
    r = torch.tensor(raw, dtype=torch.float64)
    s = bounded_std(r, min_std, max_std)
    assert (s >= min_std).all() and (s <= max_std).all()
    expected = np.minimum(np.logaddexp(0.0, np.asarray(raw)) + min_std, max_std)
    np.testing.assert_allclose(s.numpy(), expected, rtol=1e-9, atol=1e-12)
    # monotone in the raw output
    order = torch.argsort(r)
    assert (s[order].diff() >= 0).all()


# ---------------------------------------------------------------- gradients and precision


@pytest.mark.parametrize("key", sorted(FAMILIES))
def test_rsample_gradients_reach_params(key):
    fam = build(key, dim=4)
    params = torch.randn(5, fam.num_params, requires_grad=True)
    z = fam(params).rsample()
    (z * torch.randn_like(z)).sum().backward()
    assert params.grad is not None
    assert torch.isfinite(params.grad).all()
    assert params.grad.abs().sum() > 0
    if key == "dirac":
        assert params.grad.abs().min() > 0  # every coordinate is the sample itself
    if key.startswith("flow"):
        grads = [p.grad for p in fam.parameters()]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0


def test_rsample_gradient_values_diag():
    """For z = μ + σ ε the gradients are exact: dz/dμ = 1 and dz/draw = ε · softplus'(raw+off)."""
    fam = build("diag_gaussian", dim=3)
    params = torch.randn(4, 6, requires_grad=True)
    dist = fam(params)
    torch.manual_seed(5)
    z = dist.rsample()
    z.sum().backward()
    eps = (z - params[:, :3]).detach() / dist.base_dist.scale.detach()
    torch.testing.assert_close(params.grad[:, :3], torch.ones(4, 3))
    off = np.log(np.expm1(1.0 - 1e-3))
    sig = torch.from_numpy(1 / (1 + np.exp(-(np64(params[:, 3:]) + off)))).float()
    torch.testing.assert_close(params.grad[:, 3:], eps * sig, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("key", sorted(FAMILIES))
def test_autocast_bf16_builds_fp32(key):
    fam = build(key, dim=4)
    params = torch.randn(3, fam.num_params).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dist = fam(params)
        mean = fam.mean(dist)
        z = dist.rsample()
        lp = dist.log_prob(z)
    assert mean.dtype == torch.float32
    assert z.dtype == torch.float32 and lp.dtype == torch.float32
    assert torch.isfinite(lp).all()
    if key in ("dirac", "diag_gaussian", "lowrank_gaussian"):
        assert dist.mean.dtype == torch.float32
    if key != "dirac":
        assert family_stds(key, fam, dist).dtype == torch.float32
    # parameters built under autocast equal the fp32 build from the same (bf16) numbers
    ref = fam(params.float())
    if key in ("dirac", "diag_gaussian", "lowrank_gaussian"):
        torch.testing.assert_close(dist.mean, ref.mean, rtol=0, atol=0)
    if key != "dirac":
        torch.testing.assert_close(family_stds(key, fam, dist), family_stds(key, fam, ref), rtol=0, atol=0)
    if key == "lowrank_gaussian":
        torch.testing.assert_close(dist.cov_factor, ref.cov_factor, rtol=0, atol=0)
        torch.testing.assert_close(dist._capacitance_tril, ref._capacitance_tril, rtol=0, atol=0)


# ---------------------------------------------------------------- priors


def test_standard_normal_prior_vs_scipy():
    prior = PRIORS.build("standard_normal", dim=5)()
    assert prior.batch_shape == torch.Size([]) and prior.event_shape == torch.Size([5])
    z = 3 * torch.randn(4, 2, 5)
    expected = stats.norm.logpdf(np64(z)).sum(-1)
    np.testing.assert_allclose(np64(prior.log_prob(z)), expected, rtol=1e-6, atol=1e-5)


def test_learned_diagonal_prior():
    module = PRIORS.build("learned_diagonal", dim=5)
    prior = module()
    z = 3 * torch.randn(4, 5)
    expected = stats.norm.logpdf(np64(z)).sum(-1)
    np.testing.assert_allclose(np64(prior.log_prob(z)), expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(prior.base_dist.scale, torch.ones(5), rtol=0, atol=1e-5)
    assert {n for n, p in module.named_parameters() if p.requires_grad} == {"loc", "raw_scale"}
    # after moving the parameters, the log-density follows them
    with torch.no_grad():
        module.loc.copy_(torch.randn(5))
        module.raw_scale.copy_(torch.randn(5))
    sigma = np.logaddexp(0.0, np64(module.raw_scale)) + module.min_std
    expected = stats.norm.logpdf(np64(z), loc=np64(module.loc), scale=sigma).sum(-1)
    np.testing.assert_allclose(np64(module().log_prob(z)), expected, rtol=1e-5, atol=1e-4)
    # gradients reach the prior's parameters
    module().log_prob(z).sum().backward()
    assert torch.isfinite(module.loc.grad).all() and module.loc.grad.abs().sum() > 0
    assert torch.isfinite(module.raw_scale.grad).all() and module.raw_scale.grad.abs().sum() > 0


def test_mixture_of_gaussians_prior():
    module = PRIORS.build({"name": "mixture_of_gaussians", "components": 4}, dim=3)
    prior = module()
    assert prior.batch_shape == torch.Size([]) and prior.event_shape == torch.Size([3])
    # deterministic init, unit std, uniform weights
    again = PRIORS.build({"name": "mixture_of_gaussians", "components": 4}, dim=3)
    torch.testing.assert_close(module.locs, again.locs, rtol=0, atol=0)
    torch.testing.assert_close(
        prior.component_distribution.base_dist.scale, torch.ones(4, 3), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(prior.mixture_distribution.probs, torch.full((4,), 0.25))
    with torch.no_grad():
        module.raw_scales.copy_(torch.randn(4, 3))
        module.logits.copy_(torch.randn(4))
    z = 2 * torch.randn(6, 2, 3)
    locs = np64(module.locs)
    scales = np.logaddexp(0.0, np64(module.raw_scales)) + module.min_std
    logw = log_softmax(np64(module.logits))
    comp = stats.norm.logpdf(np64(z)[..., None, :], loc=locs, scale=scales).sum(-1)
    expected = logsumexp(logw + comp, axis=-1)
    np.testing.assert_allclose(np64(module().log_prob(z)), expected, rtol=1e-5, atol=1e-4)


def test_mixture_of_gaussians_init_spread():
    a = PRIORS.build({"name": "mixture_of_gaussians", "components": 4, "init_spread": 1.0}, dim=3)
    b = PRIORS.build({"name": "mixture_of_gaussians", "components": 4, "init_spread": 3.0}, dim=3)
    torch.testing.assert_close(b.locs, 3 * a.locs)


@pytest.mark.parametrize("name", ["standard_normal", "learned_diagonal", "mixture_of_gaussians"])
def test_prior_broadcasts_and_fp32_under_autocast(name):
    module = PRIORS.build(name, dim=4)
    z = torch.randn(7, 2, 3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp = module().log_prob(z)
    assert lp.shape == (7, 2, 3) and lp.dtype == torch.float32
    torch.testing.assert_close(lp, module().log_prob(z))


# ---------------------------------------------------------------- likelihoods


def test_gaussian_likelihood_vs_scipy_and_l2_form():
    lik = LIKELIHOODS.build({"name": "gaussian", "sigma": 0.7}, dim=5)
    z, zbar = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    dist = lik(z)
    assert dist.batch_shape == (3, 4) and dist.event_shape == (5,)
    got = np64(dist.log_prob(zbar))
    expected = stats.norm.logpdf(np64(zbar), loc=np64(z), scale=0.7).sum(-1)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    # the documented L2 form of -log p
    sq = ((np64(z) - np64(zbar)) ** 2).sum(-1)
    np.testing.assert_allclose(-got, sq / (2 * 0.49) + 2.5 * np.log(2 * np.pi * 0.49), rtol=1e-5, atol=1e-4)


def test_gaussian_learned_likelihood():
    lik = LIKELIHOODS.build({"name": "gaussian_learned", "init_sigma": 0.4, "min_std": 0.05}, dim=5)
    torch.testing.assert_close(lik.sigma, torch.full((5,), 0.4), rtol=0, atol=1e-5)
    z, zbar = torch.randn(3, 5), torch.randn(3, 5)
    expected = stats.norm.logpdf(np64(zbar), loc=np64(z), scale=0.4).sum(-1)
    np.testing.assert_allclose(np64(lik(z).log_prob(zbar)), expected, rtol=1e-5, atol=1e-4)
    with torch.no_grad():
        lik.raw_sigma.copy_(torch.randn(5))
    sigma = np.logaddexp(0.0, np64(lik.raw_sigma)) + 0.05
    np.testing.assert_allclose(np64(lik.sigma), sigma, rtol=1e-5)
    expected = stats.norm.logpdf(np64(zbar), loc=np64(z), scale=sigma).sum(-1)
    np.testing.assert_allclose(np64(lik(z).log_prob(zbar)), expected, rtol=1e-5, atol=1e-4)
    lik(z).log_prob(zbar).sum().backward()
    assert torch.isfinite(lik.raw_sigma.grad).all() and lik.raw_sigma.grad.abs().sum() > 0


def test_laplace_likelihood_vs_scipy():
    lik = LIKELIHOODS.build({"name": "laplace", "scale": 0.3}, dim=4)
    z, zbar = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    expected = stats.laplace.logpdf(np64(zbar), loc=np64(z), scale=0.3).sum(-1)
    np.testing.assert_allclose(np64(lik(z).log_prob(zbar)), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", ["gaussian", "gaussian_learned", "laplace"])
def test_likelihood_fp32_and_gradient_to_z(name):
    lik = LIKELIHOODS.build(name, dim=4)
    z = torch.randn(3, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp = lik(z.bfloat16()).log_prob(torch.randn(3, 4))
    assert lp.dtype == torch.float32
    lp.sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "gaussian", "sigma": 0.0},
        {"name": "gaussian", "sigma": -1.0},
        {"name": "laplace", "scale": 0.0},
        {"name": "gaussian_learned", "init_sigma": 0.0},
        {"name": "gaussian_learned", "init_sigma": 0.1, "min_std": 0.2},
    ],
)
def test_likelihood_bad_options(spec):
    with pytest.raises(ConfigError, match="model.likelihood"):
        LIKELIHOODS.build(spec, dim=4)


@pytest.mark.parametrize("mode", ["batch", "sample_and_batch"])
def test_mixture_rsample_gradient_is_unbiased(mode):
    """Pyro's implicit reparameterisation: the average pathwise gradient of E[Σ z²] equals the
    gradient of the exact second moment (from mixture_moments), both for a plain batch and
    for ``rsample(sample_shape)`` of a [batch, tokens] mixture (as the MC KL draws it)."""
    fam = POSTERIORS.build({"name": "mixture", "components": 3}, dim=2)
    base = torch.randn(fam.num_params)
    if mode == "batch":
        units, per_unit = 100_000, 1  # one sample per batch element
        params = base.expand(units, -1).clone().requires_grad_()
        z = fam(params).rsample()
    else:
        units, per_unit = 2_000, 50  # 1000 x 2 tokens, 50 samples each
        params = base.expand(1000, 2, -1).clone().requires_grad_()
        z = fam(params).rsample((per_unit,))
        assert z.shape == (per_unit, 1000, 2, 2)
    total = units * per_unit
    (z.square().sum() / total).backward()
    grads = params.grad.reshape(units, -1) * (total / per_unit)  # mean gradient of each unit
    mc_grad, se = grads.mean(0), grads.std(0) / units**0.5

    exact_params = base.clone().requires_grad_()
    mean, var = mixture_moments(fam(exact_params))
    (var + mean.square()).sum().backward()
    assert ((mc_grad - exact_params.grad).abs() <= 5 * se + 1e-4).all()
    assert exact_params.grad.abs().min() > 0  # every parameter (incl. logits) matters


# ---------------------------------------------------------------- anchored mixture


def anchored_reference(fam, params):
    """float64 components of an anchored mixture: locations anchor + offsets, stds, log weights."""
    k, d = fam.components, fam.dim
    p = np64(params)
    anchor = p[..., :d]
    offsets = p[..., d : d + k * d].reshape(*p.shape[:-1], k, d)
    scales = ref_std(p[..., d + k * d : d + 2 * k * d]).reshape(*p.shape[:-1], k, d)
    logw = log_softmax(p[..., d + 2 * k * d :], axis=-1)
    return anchor[..., None, :] + offsets, scales, logw


def test_anchored_mixture_density_and_mean_vs_reference():
    fam = POSTERIORS.build({"name": "anchored_mixture", "components": 3}, dim=4)
    assert fam.num_params == 4 + 3 * (2 * 4 + 1) and fam.loc_blocks == 1
    params = 1.5 * torch.randn(2, 5, fam.num_params)
    dist = fam(params)
    locs, scales, logw = anchored_reference(fam, params)
    z = 2 * torch.randn(7, 2, 5, 4)
    comp = stats.norm.logpdf(np64(z)[..., None, :], loc=locs, scale=scales).sum(-1)
    np.testing.assert_allclose(np64(dist.log_prob(z)), logsumexp(logw + comp, axis=-1), rtol=1e-5, atol=1e-4)
    exp_mean = (np.exp(logw)[..., None] * locs).sum(-2)
    np.testing.assert_allclose(np64(fam.mean(dist)), exp_mean, rtol=1e-5, atol=1e-5)


def test_anchored_mixture_splits_gradients_between_density_and_mean():
    """The density trains offsets, spreads and weights but not the anchor; the mean trains only the
    anchor, with dmean/danchor = 1 (the exact mean is anchor + Σ π_k m_k)."""
    fam = POSTERIORS.build({"name": "anchored_mixture", "components": 3}, dim=4)
    params = torch.randn(6, fam.num_params, requires_grad=True)
    fam(params).log_prob(torch.randn(6, 4)).sum().backward()
    assert params.grad[:, :4].abs().max() == 0
    assert params.grad[:, 4:].abs().min(0).values.max() > 0
    params.grad = None
    fam.mean(fam(params)).sum().backward()
    torch.testing.assert_close(params.grad[:, :4], torch.ones(6, 4))
    assert params.grad[:, 4:].abs().max() == 0
    # without the detach it is a mixture whose components share one location: both reach it
    shared = POSTERIORS.build({"name": "anchored_mixture", "components": 3, "detach_anchor": False}, dim=4)
    params.grad = None
    shared(params).log_prob(torch.randn(6, 4)).sum().backward()
    assert params.grad[:, :4].abs().min() > 0


def test_anchored_mixture_shift_moves_every_component():
    fam = POSTERIORS.build({"name": "anchored_mixture", "components": 2}, dim=3)
    params, offset = torch.randn(5, fam.num_params), torch.randn(5, 3)
    a, b = fam(params), fam(fam.shift(params, offset))
    torch.testing.assert_close(b.locs, a.locs + offset[:, None, :])
    torch.testing.assert_close(b.coord_scale, a.coord_scale)
    torch.testing.assert_close(fam.mean(b), fam.mean(a) + offset)


def test_anchored_mixture_needs_a_term_that_fits_the_mean():
    from varjepa.objectives import ELBO, build_terms
    from varjepa.schedules import Constant

    fam = POSTERIORS.build({"name": "anchored_mixture", "components": 2}, dim=3)
    prior, lik = PRIORS.build("standard_normal", dim=3), LIKELIHOODS.build("gaussian", dim=3)

    def elbo(objective):
        return ELBO(build_terms(objective, prior, lik, Constant(0.0)))

    with pytest.raises(ConfigError, match="mean_weight.*anchor gets no gradient"):
        elbo({"name": "heteroscedastic", "beta_nll": 0.0}).validate(fam)
    elbo({"name": "heteroscedastic", "beta_nll": 0.0, "mean_weight": 10.0}).validate(fam)
    shared = POSTERIORS.build({"name": "anchored_mixture", "components": 2, "detach_anchor": False}, dim=3)
    elbo({"name": "heteroscedastic", "beta_nll": 0.0}).validate(shared)


def test_softplus_matches_a_float64_reference_in_value_and_gradient():
    from varjepa.distributions.posteriors import softplus

    grid = [-100.0, -30.0, -17.0, -5.0, -1e-3, 0.0, 1e-3, 1.0, 5.0, 17.0, 30.0, 100.0]
    x = torch.tensor(grid + list(np.linspace(-8, 8, 101)), requires_grad=True)
    y = softplus(x)
    y.sum().backward()
    xd = x.detach().double().numpy()
    ref = np.logaddexp(0.0, xd)  # log(1 + e^x) in float64, independently of torch
    np.testing.assert_allclose(y.detach().double().numpy(), ref, rtol=2e-7, atol=1e-7)
    np.testing.assert_allclose(x.grad.double().numpy(), 1 / (1 + np.exp(-xd)), rtol=1e-6, atol=1e-7)
    assert x.grad[grid.index(0.0)] == 0.5  # the kink-free gradient at 0 (relu + log1p(e^−|x|) gives 0 or 1)


def test_bounded_std_is_finite_at_infinite_raw_values():
    from varjepa.distributions.posteriors import bounded_std

    std = bounded_std(torch.tensor([float("inf"), -float("inf"), 0.0, 50.0]), 1e-3, 10.0)
    torch.testing.assert_close(std, torch.tensor([10.0, 1e-3, float(np.log(2)) + 1e-3, 10.0]))
