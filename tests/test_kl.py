"""Tests of the KL dispatcher: analytic vs Monte Carlo values, the method chosen, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.special import log_softmax, logsumexp
from torch.distributions import (
    Independent,
    LowRankMultivariateNormal,
    MultivariateNormal,
    Normal,
)
from torch.distributions import kl_divergence as torch_kl

from varjepa.distributions import (
    ANALYTIC,
    MONTE_CARLO,
    POSTERIORS,
    PRIORS,
    is_analytic,
    kl_divergence,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def np64(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def kl_gauss(mu_q, cov_q, mu_p, cov_p):
    """KL(N(mu_q, cov_q) || N(mu_p, cov_p)) in float64, batched over leading dims."""
    d = mu_q.shape[-1]
    inv_p = np.linalg.inv(cov_p)
    diff = (mu_p - mu_q)[..., None]
    trace = np.trace(inv_p @ cov_q, axis1=-2, axis2=-1)
    maha = (np.swapaxes(diff, -1, -2) @ inv_p @ diff)[..., 0, 0]
    logdet = np.linalg.slogdet(cov_p)[1] - np.linalg.slogdet(cov_q)[1]
    return 0.5 * (trace + maha - d + logdet)


def kl_diag(mu_q, s_q, mu_p, s_p):
    return 0.5 * (s_q**2 / s_p**2 + (mu_q - mu_p) ** 2 / s_p**2 - 1 + 2 * np.log(s_p) - 2 * np.log(s_q)).sum(
        -1
    )


def mc_kl(q, p, n):
    """Our own MC estimate mean[log q - log p] over n samples, with its standard error."""
    with torch.no_grad():
        z = q.sample((n,))
        ratio = (q.log_prob(z) - p.log_prob(z)).double()
    return ratio.mean(0), ratio.std(0) / n**0.5


def assert_within_mc(estimate, reference, se, k=5.0, floor=1e-3):
    estimate, reference, se = (torch.as_tensor(x, dtype=torch.float64) for x in (estimate, reference, se))
    assert ((estimate - reference).abs() <= k * se + floor).all(), (estimate, reference, se)


def diag_q(dim=4, batch=(3,), scale=1.0, **opts):
    fam = POSTERIORS.build({"name": "diag_gaussian", **opts}, dim=dim)
    return fam, fam(scale * torch.randn(*batch, fam.num_params))


def perturbed_learned_diagonal(dim):
    module = PRIORS.build("learned_diagonal", dim=dim)
    with torch.no_grad():
        module.loc.copy_(torch.randn(dim))
        module.raw_scale.copy_(torch.randn(dim))
    return module


# ---------------------------------------------------------------- diagonal Gaussian


def test_diag_vs_standard_normal():
    _, q = diag_q(dim=4, batch=(5,))
    p = PRIORS.build("standard_normal", dim=4)()
    kl, method = kl_divergence(q, p, num_samples=3)
    assert method == ANALYTIC and kl.shape == (5,)
    mu, s = np64(q.mean), np64(q.stddev)
    expected = 0.5 * (s**2 + mu**2 - 1 - np.log(s**2)).sum(-1)
    np.testing.assert_allclose(np64(kl), expected, rtol=1e-5, atol=1e-5)
    mc, se = mc_kl(q, p, 20_000)
    assert_within_mc(mc, kl, se)


def test_diag_vs_learned_diagonal():
    _, q = diag_q(dim=4, batch=(2, 3))
    module = perturbed_learned_diagonal(4)
    p = module()
    kl, method = kl_divergence(q, p)
    assert method == ANALYTIC and kl.shape == (2, 3)
    expected = kl_diag(np64(q.mean), np64(q.stddev), np64(p.mean), np64(p.stddev))
    np.testing.assert_allclose(np64(kl), expected, rtol=1e-5, atol=1e-5)
    mc, se = mc_kl(q, p, 20_000)
    assert_within_mc(mc, kl, se)
    # differentiable w.r.t. the prior's parameters
    kl.sum().backward()
    assert torch.isfinite(module.loc.grad).all() and module.loc.grad.abs().sum() > 0
    assert torch.isfinite(module.raw_scale.grad).all() and module.raw_scale.grad.abs().sum() > 0


def test_kl_of_distribution_with_itself_is_zero():
    _, q = diag_q(dim=3, batch=(4,))
    kl, _ = kl_divergence(q, q)
    torch.testing.assert_close(kl, torch.zeros(4), atol=1e-6, rtol=0)
    prior = PRIORS.build("learned_diagonal", dim=3)()
    zero = POSTERIORS.build("diag_gaussian", dim=3)(torch.zeros(2, 6))  # N(0, I) at init
    torch.testing.assert_close(kl_divergence(zero, prior)[0], torch.zeros(2), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- low-rank Gaussian


def lowrank_q(dim=5, rank=2, batch=(3,), factor_scale=0.5):
    fam = POSTERIORS.build({"name": "lowrank_gaussian", "rank": rank, "factor_scale": factor_scale}, dim=dim)
    return fam(torch.randn(*batch, fam.num_params))


def test_lowrank_vs_standard_normal():
    q = lowrank_q(dim=5, rank=2, batch=(4,))
    p = PRIORS.build("standard_normal", dim=5)()
    kl, method = kl_divergence(q, p)
    assert method == ANALYTIC and kl.shape == (4,)
    # hand-written Gaussian KL from the dense covariance built from the same parameters
    w, s2 = np64(q.cov_factor), np64(q.cov_diag)
    cov = w @ np.swapaxes(w, -1, -2) + np.einsum("bi,ij->bij", s2, np.eye(5))
    expected = kl_gauss(np64(q.loc), cov, np.zeros(5), np.eye(5))
    np.testing.assert_allclose(np64(kl), expected, rtol=1e-4, atol=1e-4)
    # torch's own KL(LowRankMVN || LowRankMVN) with the prior written as a zero-factor low-rank MVN
    p_lr = LowRankMultivariateNormal(torch.zeros(5), torch.zeros(5, 1), torch.ones(5))
    torch.testing.assert_close(kl, torch_kl(q, p_lr), rtol=1e-4, atol=1e-4)
    mc, se = mc_kl(q, p, 20_000)
    assert_within_mc(mc, kl, se)


def test_lowrank_vs_learned_diagonal():
    q = lowrank_q(dim=4, rank=3, batch=(2, 2), factor_scale=1.0)
    p = perturbed_learned_diagonal(4)()
    kl, method = kl_divergence(q, p)
    assert method == ANALYTIC and kl.shape == (2, 2)
    p_lr = LowRankMultivariateNormal(p.mean, torch.zeros(4, 1), p.variance)
    torch.testing.assert_close(kl, torch_kl(q, p_lr), rtol=1e-4, atol=1e-4)
    expected = kl_gauss(np64(q.loc), np64(q.covariance_matrix), np64(p.mean), np.diag(np64(p.variance)))
    np.testing.assert_allclose(np64(kl), expected, rtol=1e-4, atol=1e-4)
    mc, se = mc_kl(q, p, 20_000)
    assert_within_mc(mc, kl, se)


def test_fullrank_mvn_vs_diagonal_registered():
    a = torch.randn(3, 4, 4)
    q = MultivariateNormal(torch.randn(3, 4), covariance_matrix=a @ a.mT + 0.5 * torch.eye(4))
    p = Independent(Normal(torch.randn(4), torch.rand(4) + 0.5), 1)
    kl, method = kl_divergence(q, p)
    assert method == ANALYTIC
    p_mvn = MultivariateNormal(p.mean, covariance_matrix=torch.diag(p.variance))
    torch.testing.assert_close(kl, torch_kl(q, p_mvn), rtol=1e-4, atol=1e-4)


def test_lowrank_analytic_kl_under_autocast_is_fp32_exact():
    fam = POSTERIORS.build({"name": "lowrank_gaussian", "rank": 2}, dim=6)
    params = torch.randn(4, fam.num_params).bfloat16()
    p = PRIORS.build("standard_normal", dim=6)()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kl, method = kl_divergence(fam(params), p)
    assert method == ANALYTIC and kl.dtype == torch.float32
    torch.testing.assert_close(kl, kl_divergence(fam(params.float()), p)[0], rtol=1e-6, atol=1e-6)


def test_kl_to_non_diagonal_independent_falls_back_to_mc():
    q = lowrank_q(dim=4, rank=1, batch=(2,))
    # Independent over a 2-d batch of Normals: not the diagonal Gaussian the closed form needs
    from torch.distributions import Laplace

    p = Independent(Laplace(torch.zeros(4), torch.ones(4)), 1)
    kl, method = kl_divergence(q, p, num_samples=20_000)
    assert method == MONTE_CARLO
    mc, se = mc_kl(q, p, 20_000)
    assert_within_mc(kl, mc, se * 2**0.5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), dim=st.integers(2, 6), data=st.data())
def test_analytic_kl_nonnegative(seed, dim, data):
    rank = data.draw(st.integers(1, dim - 1))
    g = torch.Generator().manual_seed(seed)
    p = Independent(Normal(torch.randn(dim, generator=g), torch.rand(dim, generator=g) + 0.1), 1)
    diag = POSTERIORS.build("diag_gaussian", dim=dim)
    lowrank = POSTERIORS.build({"name": "lowrank_gaussian", "rank": rank}, dim=dim)
    for fam in (diag, lowrank):
        q = fam(2 * torch.randn(4, fam.num_params, generator=g))
        kl, method = kl_divergence(q, p)
        assert method == ANALYTIC
        assert torch.isfinite(kl).all() and (kl >= -1e-4).all()
        # KL to the prior's own mean/variance rewritten as a dense MVN: same number
        p_mvn = MultivariateNormal(p.mean, covariance_matrix=torch.diag(p.variance))
        q_mvn = MultivariateNormal(q.mean, covariance_matrix=torch.diag_embed(q.variance))
        if fam is diag:
            torch.testing.assert_close(kl, torch_kl(q_mvn, p_mvn), rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------- Monte Carlo families / priors


def test_method_selection():
    d = 6
    std = PRIORS.build("standard_normal", dim=d)()
    learned = PRIORS.build("learned_diagonal", dim=d)()
    mog = PRIORS.build({"name": "mixture_of_gaussians", "components": 3}, dim=d)()
    cases = {
        "diag_gaussian": {std: ANALYTIC, learned: ANALYTIC, mog: MONTE_CARLO},
        "lowrank_gaussian": {std: ANALYTIC, learned: ANALYTIC, mog: MONTE_CARLO},
        "mixture": {std: MONTE_CARLO, learned: MONTE_CARLO, mog: MONTE_CARLO},
        "flow": {std: MONTE_CARLO, learned: MONTE_CARLO, mog: MONTE_CARLO},
        "dirac": {std: MONTE_CARLO, learned: MONTE_CARLO, mog: MONTE_CARLO},
    }
    for name, expected in cases.items():
        fam = POSTERIORS.build(name, dim=d)
        assert fam.analytic_kl == (name in ("diag_gaussian", "lowrank_gaussian"))
        q = fam(torch.randn(fam.num_params))
        for p, method in expected.items():
            kl, got = kl_divergence(q, p, num_samples=2)
            assert got == method, (name, type(p).__name__)
            assert is_analytic(q, p) == (method == ANALYTIC)
            assert kl.shape == () and torch.isfinite(kl)


def test_dirac_mc_kl_is_negative_prior_log_density():
    fam = POSTERIORS.build("dirac", dim=3)
    v = torch.randn(5, 3)
    p = PRIORS.build("standard_normal", dim=3)()
    kl, method = kl_divergence(fam(v), p, num_samples=4)
    assert method == MONTE_CARLO
    np.testing.assert_allclose(np64(kl), -stats.norm.logpdf(np64(v)).sum(-1), rtol=1e-5, atol=1e-5)


def test_mc_needs_a_sample():
    fam = POSTERIORS.build("mixture", dim=3)
    q = fam(torch.randn(fam.num_params))
    p = PRIORS.build("standard_normal", dim=3)()
    with pytest.raises(ValueError, match="num_samples"):
        kl_divergence(q, p, num_samples=0)


def test_mixture_mc_kl_vs_independent_reference():
    fam = POSTERIORS.build({"name": "mixture", "components": 3}, dim=3)
    params = torch.randn(fam.num_params)
    q = fam(params)
    p = PRIORS.build("standard_normal", dim=3)()
    kl, method = kl_divergence(q, p, num_samples=20_000)
    assert method == MONTE_CARLO and kl.shape == ()
    # reference in numpy: sample the mixture by hand, evaluate log q by logsumexp
    k, d = 3, 3
    locs = np64(q.locs)
    scales = np64(q.coord_scale)
    logw = log_softmax(np64(params[-k:]))
    rng = np.random.default_rng(0)
    n = 200_000
    comp = rng.choice(k, size=n, p=np.exp(logw))
    z = locs[comp] + scales[comp] * rng.standard_normal((n, d))
    log_q = logsumexp(logw + stats.norm.logpdf(z[:, None, :], loc=locs, scale=scales).sum(-1), axis=-1)
    ratio = log_q - stats.norm.logpdf(z).sum(-1)
    reference, se_ref = ratio.mean(), ratio.std() / n**0.5
    assert reference > 0
    assert_within_mc(kl, reference, se_ref * (1 + (n / 20_000) ** 0.5))


def test_single_component_mixture_mc_matches_diag_analytic():
    mix = POSTERIORS.build({"name": "mixture", "components": 1}, dim=4)
    diag = POSTERIORS.build("diag_gaussian", dim=4)
    loc, raw = torch.randn(4), torch.randn(4)
    p = perturbed_learned_diagonal(4)()
    q_mix = mix(torch.cat([loc, raw, torch.zeros(1)]))
    analytic, method = kl_divergence(diag(torch.cat([loc, raw])), p)
    assert method == ANALYTIC
    kl, method = kl_divergence(q_mix, p, num_samples=20_000)
    assert method == MONTE_CARLO
    _, se = mc_kl(q_mix, p, 20_000)
    assert_within_mc(kl, analytic, se)


def test_diag_vs_mixture_prior_mc_vs_reference():
    _, q = diag_q(dim=3, batch=())
    module = PRIORS.build({"name": "mixture_of_gaussians", "components": 4}, dim=3)
    with torch.no_grad():
        module.raw_scales.copy_(torch.randn(4, 3))
        module.logits.copy_(torch.randn(4))
    kl, method = kl_divergence(q, module(), num_samples=20_000)
    assert method == MONTE_CARLO
    # reference: numpy samples of q, scipy densities
    rng = np.random.default_rng(1)
    n = 200_000
    mu, s = np64(q.mean), np64(q.stddev)
    z = mu + s * rng.standard_normal((n, 3))
    log_q = stats.norm.logpdf(z, loc=mu, scale=s).sum(-1)
    scales = np.logaddexp(0.0, np64(module.raw_scales)) + module.min_std
    log_p = logsumexp(
        log_softmax(np64(module.logits))
        + stats.norm.logpdf(z[:, None, :], loc=np64(module.locs), scale=scales).sum(-1),
        axis=-1,
    )
    ratio = log_q - log_p
    assert_within_mc(kl, ratio.mean(), ratio.std() / n**0.5 * (1 + (n / 20_000) ** 0.5))
    # the MC estimate is differentiable w.r.t. both sides
    params = torch.randn(6, requires_grad=True)
    q2 = POSTERIORS.build("diag_gaussian", dim=3)(params)
    kl2, _ = kl_divergence(q2, module(), num_samples=16)
    kl2.backward()
    assert params.grad is not None and torch.isfinite(params.grad).all() and params.grad.abs().sum() > 0
    for prm in (module.locs, module.raw_scales, module.logits):
        assert prm.grad is not None and torch.isfinite(prm.grad).all() and prm.grad.abs().sum() > 0


@pytest.mark.parametrize("transform", ["affine_autoregressive", "spline"])
def test_flow_mc_kl(transform):
    fam = POSTERIORS.build(
        {"name": "flow", "transform": transform, "context_dim": 3, "hidden_dims": [16]}, dim=3
    )
    params = torch.randn(fam.num_params, requires_grad=True)
    q = fam(params)
    p = PRIORS.build("standard_normal", dim=3)()
    kl, method = kl_divergence(q, p, num_samples=10_000)
    assert method == MONTE_CARLO and kl.shape == ()
    # a larger independent estimate, evaluating log q through the inverse transforms
    with torch.no_grad():
        chunks = []
        for _ in range(3):
            z = q.sample((10_000,)).clone()
            chunks.append((q.log_prob(z) - p.log_prob(z)).double())
        ratio = torch.cat(chunks)
    reference, se = ratio.mean(), ratio.std() / ratio.numel() ** 0.5
    assert reference > 0
    assert_within_mc(kl.detach(), reference, se * (1 + 3**0.5))
    kl.backward()
    assert params.grad is not None and torch.isfinite(params.grad).all() and params.grad.abs().sum() > 0
    for prm in fam.parameters():
        assert prm.grad is not None and torch.isfinite(prm.grad).all()


@pytest.mark.parametrize(
    "spec",
    [{"name": "mixture", "components": 2}, {"name": "flow", "context_dim": 2, "hidden_dims": [8]}],
    ids=["mixture", "flow"],
)
def test_mc_kl_on_token_batch(spec):
    """The objective computes KL for posteriors of shape [batch, tokens] with K > 1 samples."""
    fam = POSTERIORS.build(spec, dim=3)
    params = torch.randn(2, 3, fam.num_params)
    p = PRIORS.build("standard_normal", dim=3)()
    with torch.no_grad():
        kl, method = kl_divergence(fam(params), p, num_samples=4000)
    assert method == MONTE_CARLO and kl.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            ref, se = mc_kl(fam(params[i, j]), p, 4000)
            assert_within_mc(kl[i, j], ref, se * 2**0.5)


def test_mc_kl_nonnegative_up_to_noise():
    p = PRIORS.build({"name": "mixture_of_gaussians", "components": 3}, dim=3)()
    fam = POSTERIORS.build({"name": "mixture", "components": 2}, dim=3)
    for _ in range(5):
        q = fam(torch.randn(fam.num_params))
        kl, _ = kl_divergence(q, p, num_samples=5000)
        _, se = mc_kl(q, p, 5000)
        assert kl >= -5 * se - 1e-3


def test_mc_estimator_unbiased_with_one_sample():
    """num_samples=1 is noisy but unbiased: averaging many single-sample estimates gives the KL."""
    _, q = diag_q(dim=3, batch=())
    p = PRIORS.build({"name": "mixture_of_gaussians", "components": 1}, dim=3)()  # forces MC
    n = 20_000
    q_batch = POSTERIORS.build("diag_gaussian", dim=3)(
        torch.cat([q.mean, torch.zeros(3)]).expand(n, -1)
    )  # n copies of N(mean, I)
    est, method = kl_divergence(q_batch, p, num_samples=1)
    assert method == MONTE_CARLO and est.shape == (n,)
    # the single-component mixture prior is N(locs[0], softplus-bounded 1) = N(locs[0], I) at init
    comp = p.component_distribution.base_dist
    expected = kl_diag(np64(q.mean), np.ones(3), np64(comp.loc[0]), np64(comp.scale[0]))
    assert_within_mc(est.double().mean(), expected, est.double().std() / n**0.5)
