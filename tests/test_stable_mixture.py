"""The mixture family's reparameterised sampler: Pyro's pathwise gradient where that is finite,
finite gradients in high dimension where Pyro's underflow to NaN (a ViT-sized latent)."""

from __future__ import annotations

import pytest
import torch
from pyro.distributions.diag_normal_mixture import _MixDiagNormalSample

from varjepa import POSTERIORS, PRIORS
from varjepa.distributions import kl_divergence
from varjepa.distributions.posteriors import mixture_moments
from varjepa.distributions.stable_mixture import StableMixDiagNormalSample


def _problem(d: int, dtype, seed: int = 0, B: int = 5, K: int = 4, S: int = 3):
    g = torch.Generator().manual_seed(seed)
    locs = torch.randn(B, K, d, generator=g, dtype=torch.float64)
    scales = torch.rand(B, K, d, generator=g, dtype=torch.float64) + 0.3
    logits = torch.randn(B, K, generator=g, dtype=torch.float64)
    which = torch.multinomial(torch.softmax(logits, -1), S, replacement=True, generator=g).T  # [S, B]
    noise = torch.randn(S, B, d, generator=g, dtype=torch.float64)
    upstream = torch.randn(S, B, d, generator=g, dtype=torch.float64)
    return [t.to(dtype) for t in (locs, scales, logits)], which, noise.to(dtype), upstream.to(dtype)


def _grads(fn, params, which, noise, upstream, monkeypatch):
    """z and d<z, upstream>/d(locs, scales, logits) with the white noise fixed to ``noise``."""
    locs, scales, logits = (p.clone().requires_grad_() for p in params)
    S, B, d = noise.shape
    K = locs.shape[1]
    monkeypatch.setattr(torch.Tensor, "normal_", lambda self, *a, **k: self.copy_(noise))
    ex = (S, B, K, d)
    lg = logits.expand(S, B, K)
    z = fn.apply(locs.expand(ex), scales.expand(ex), lg, torch.softmax(lg, -1), which, (S, B, d))
    monkeypatch.undo()
    return z, torch.autograd.grad((z * upstream).sum(), (locs, scales, logits))


@pytest.mark.parametrize("d", [2, 5, 16])
def test_matches_pyros_pathwise_gradient(d, monkeypatch):
    prob = _problem(d, torch.float64)
    z0, g0 = _grads(_MixDiagNormalSample, *prob, monkeypatch)
    z1, g1 = _grads(StableMixDiagNormalSample, *prob, monkeypatch)
    assert torch.equal(z0, z1)
    for a, b in zip(g0, g1, strict=True):
        torch.testing.assert_close(b, a, atol=1e-10, rtol=1e-9)


def test_finite_in_high_dimension_where_pyro_is_not(monkeypatch):
    prob32 = _problem(192, torch.float32, seed=3)
    _, pyro32 = _grads(_MixDiagNormalSample, *prob32, monkeypatch)
    assert not all(torch.isfinite(g).all() for g in pyro32)  # the bug this module fixes
    _, ours32 = _grads(StableMixDiagNormalSample, *prob32, monkeypatch)
    _, ours64 = _grads(StableMixDiagNormalSample, *_problem(192, torch.float64, seed=3), monkeypatch)
    for g32, g64, rel in zip(ours32, ours64, (1e-5, 1e-5, 1e-2), strict=True):
        assert torch.isfinite(g32).all()
        err = float((g32.double() - g64).abs().max() / g64.abs().max())
        assert err < rel


def test_samples_follow_the_mixture():
    fam = POSTERIORS.build({"name": "mixture", "components": 3}, dim=4)
    params = torch.randn(2, fam.num_params) * 2
    q = fam(params)
    z = q.rsample((40_000,))
    mean, var = mixture_moments(q)
    torch.testing.assert_close(z.mean(0), mean, atol=0.06, rtol=0)
    torch.testing.assert_close(z.var(0), var, atol=0.2, rtol=0.05)


def test_mixture_kl_gradients_stay_finite_at_vit_width():
    fam = POSTERIORS.build({"name": "mixture", "components": 4}, dim=192)
    head = torch.nn.Linear(16, fam.num_params)
    x = torch.randn(8, 12, 16)
    prior = PRIORS.build("standard_normal", dim=192)()
    for _ in range(3):
        kl, method = kl_divergence(fam(head(x)), prior, num_samples=4)
        assert method == "monte_carlo"
        head.zero_grad()
        kl.mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in head.parameters())
        with torch.no_grad():
            for p in head.parameters():
                p -= 1e-2 * p.grad


@pytest.mark.parametrize("num_samples", [1, 2, 3, 6])
def test_stratified_kl_is_unbiased_and_differentiable(num_samples):
    """Full stratification (num_samples >= K = 3) and uniform component subsampling (< K)."""
    fam = POSTERIORS.build({"name": "mixture", "components": 3}, dim=6)
    params = (
        torch.randn(4, fam.num_params, generator=torch.Generator().manual_seed(1)) * 1.5
    ).requires_grad_()
    q = fam(params)
    prior = PRIORS.build("standard_normal", dim=6)()
    torch.manual_seed(0)
    with torch.no_grad():
        z = q.rsample((100_000,))
        naive = q.log_prob(z) - prior.log_prob(z)  # [n, 4]
        want, se = naive.mean(0), naive.std(0) / naive.shape[0] ** 0.5
        m = 20_000  # independent estimates at once: the same mixture repeated along a batch dim
        strat = fam(params.detach().expand(m, *params.shape)).stratified_kl(prior, num_samples)  # [m, 4]
        got, se2 = strat.mean(0), strat.std(0) / m**0.5
    assert strat.shape == (m, 4)
    assert ((got - want).abs() <= 5 * (se + se2) + 1e-4).all(), (got, want)
    if num_samples >= 3:  # stratification lowers the variance of a single-draw-per-token estimate
        assert (strat.std(0) < naive.std(0)).all()
    # the per-draw density is the mixture's own log_prob
    zz = torch.randn(2, 4, 5, 6)
    torch.testing.assert_close(
        q.log_prob_per_draw(zz), q.log_prob(zz.transpose(-2, -3)).transpose(-1, -2), atol=1e-5, rtol=1e-5
    )
    kl, method = kl_divergence(q, prior, num_samples=num_samples)
    assert method == "monte_carlo" and kl.shape == (4,)
    kl.sum().backward()
    assert torch.isfinite(params.grad).all() and params.grad.abs().sum() > 0


@pytest.mark.parametrize("num_samples", [2, 6])
def test_stratified_kl_against_a_batch_shaped_prior(num_samples):
    """A conditional prior with its own batch shape [4] (one Gaussian per row) broadcasts with the
    stratified draws: the estimate is unbiased for each row's own prior."""
    fam = POSTERIORS.build({"name": "mixture", "components": 3}, dim=5)
    g = torch.Generator().manual_seed(2)
    params = torch.randn(4, fam.num_params, generator=g)
    loc, scale = torch.randn(4, 5, generator=g), torch.rand(4, 5, generator=g) + 0.5
    prior = torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1)  # batch [4]
    q = fam(params)
    torch.manual_seed(0)
    z = q.rsample((100_000,))
    naive = q.log_prob(z) - prior.log_prob(z)  # [n, 4]
    want, se = naive.mean(0), naive.std(0) / naive.shape[0] ** 0.5
    m = 20_000
    big = torch.distributions.Independent(
        torch.distributions.Normal(loc.expand(m, 4, 5), scale.expand(m, 4, 5)), 1
    )
    strat = fam(params.expand(m, *params.shape)).stratified_kl(big, num_samples)  # [m, 4]
    got, se2 = strat.mean(0), strat.std(0) / m**0.5
    assert ((got - want).abs() <= 5 * (se + se2) + 1e-4).all(), (got, want)
    kl, method = kl_divergence(q, prior, num_samples=num_samples)  # the dispatcher takes it too
    assert method == "monte_carlo" and kl.shape == (4,) and torch.isfinite(kl).all()


def test_mixture_log_density_gradient():
    from varjepa.distributions.stable_mixture import MixtureLogDensity

    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 4, 5, dtype=torch.float64, generator=g).requires_grad_()
    locs = torch.randn(3, 2, 5, dtype=torch.float64, generator=g).requires_grad_()
    scales = (torch.rand(3, 2, 5, dtype=torch.float64, generator=g) + 0.5).requires_grad_()
    log_w = torch.log_softmax(torch.randn(3, 2, dtype=torch.float64, generator=g), -1).requires_grad_()
    assert torch.autograd.gradcheck(MixtureLogDensity.apply, (z, locs, scales, log_w))
    normal = torch.distributions.Normal(locs.unsqueeze(1), scales.unsqueeze(1))
    ref = torch.logsumexp(log_w.unsqueeze(1) + normal.log_prob(z.unsqueeze(2)).sum(-1), -1)
    torch.testing.assert_close(MixtureLogDensity.apply(z, locs, scales, log_w), ref)
