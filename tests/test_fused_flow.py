"""The fused sampling pass of the ``flow`` family (``varjepa.distributions.fused_flow``) against
unfused references: Pyro's own transforms applied one by one (values, log-determinants,
gradients), Pyro's exact inversion for ``log q``, dense masked matmuls for the staircase blocks,
and torch's ``Independent(Normal)`` for :class:`DiagNormal`."""

from __future__ import annotations

import math

import pyro.distributions as pdist
import pytest
import torch
from torch.distributions import Independent, Normal

from varjepa.distributions import LIKELIHOODS, POSTERIORS, PRIORS, kl_divergence
from varjepa.distributions.diag_normal import DiagNormal
from varjepa.distributions.fused_flow import (
    AffineAutoregressiveFlow,
    _grad_input,
    _grad_weight,
    _linear,
    permute,
    staircase_blocks,
)

CONFIGS = [
    # (dim, depth, context_dim, hidden_dims)
    (5, 1, 3, [16]),
    (12, 2, 5, [24]),
    (12, 3, 4, [40, 24]),
    (7, 2, 1, [7]),
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def flow_family(dim, depth, context_dim, hidden, dtype=torch.float32):
    fam = POSTERIORS.build(
        {"name": "flow", "depth": depth, "context_dim": context_dim, "hidden_dims": hidden}, dim=dim
    ).to(dtype)
    with torch.no_grad():  # non-zero biases everywhere, as after training
        for p in fam.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return fam


def reference(dist, eps):
    """Unfused: ``x₀ = μ + σε``, then Pyro's transforms one by one;
    ``log q = log N(x₀; μ, σ) − Σ log|det J|`` with Pyro's own ``log_abs_det_jacobian``."""
    base = dist.base_dist
    x = base.base_dist.loc + base.base_dist.scale * eps
    log_q = base.log_prob(x)
    for t in dist.transforms:
        y = t(x)
        log_q = log_q - t.log_abs_det_jacobian(x, y)
        x = y
    return x, log_q


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("batch,sample", [((), (6,)), ((3,), ()), ((2, 3), (4,))])
def test_draws_and_log_q_match_pyro_transforms(dtype, config, batch, sample):
    fam = flow_family(*config, dtype=dtype)
    params = torch.randn(*batch, fam.num_params, dtype=dtype, requires_grad=True)
    dist = fam(params.float()) if dtype == torch.float32 else fam.build(params)
    assert isinstance(dist, AffineAutoregressiveFlow)
    eps = torch.randn(*sample, *batch, config[0], dtype=dtype)
    z, log_q = dist.rsample_with_log_prob(sample, eps=eps)
    z_ref, log_q_ref = reference(dist, eps)
    assert z.shape == (*sample, *batch, config[0]) and log_q.shape == (*sample, *batch)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
    torch.testing.assert_close(z, z_ref, **tol)
    torch.testing.assert_close(log_q, log_q_ref, **tol)
    # gradients of a function of both outputs, w.r.t. the head outputs and every flow weight
    w = torch.randn_like(z)
    wrt = [params, *fam.parameters()]
    got = torch.autograd.grad((z * w).sum() + log_q.sum(), wrt, retain_graph=True)
    want = torch.autograd.grad((z_ref * w).sum() + log_q_ref.sum(), wrt)
    for g, r in zip(got, want, strict=True):
        torch.testing.assert_close(g, r, **tol)


def test_log_q_matches_exact_inversion_in_float64():
    """An independent route to log q: Pyro inverts a fresh copy of the draw (d network passes)."""
    fam = flow_family(6, 2, 3, [12], dtype=torch.float64)
    dist = fam.build(torch.randn(4, fam.num_params, dtype=torch.float64))
    with torch.no_grad():
        z, log_q = dist.rsample_with_log_prob((5,))
        inverted = pdist.TransformedDistribution.log_prob(dist, z.clone())
    torch.testing.assert_close(log_q, inverted, rtol=1e-9, atol=1e-9)


def test_clamped_log_scales_keep_pyro_values_and_identity_gradient():
    """Large network outputs push log-scales past Pyro's clip [-5, 3]: same clamped values, and the
    gradient passes through the clamp as in ``clamp_preserve_gradients``."""
    fam = flow_family(5, 2, 3, [16])
    with torch.no_grad():
        for t in fam.transforms:
            t.nn.layers[-1].weight.mul_(200.0)
    params = torch.randn(3, fam.num_params, requires_grad=True)
    dist = fam(params)
    eps = torch.randn(4, 3, 5)
    z, log_q = dist.rsample_with_log_prob((4,), eps=eps)
    z_ref, log_q_ref = reference(dist, eps)
    scales = [
        t._cached_log_scale for t in dist.transforms if isinstance(t, pdist.transforms.AffineAutoregressive)
    ]
    assert any((s <= -5).any() for s in scales) and any((s >= 3).any() for s in scales)
    torch.testing.assert_close(z, z_ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(log_q, log_q_ref, rtol=1e-5, atol=1e-4)
    wrt = [params, *fam.parameters()]
    got = torch.autograd.grad(z.sum() + log_q.sum(), wrt, retain_graph=True)
    want = torch.autograd.grad(z_ref.sum() + log_q_ref.sum(), wrt)
    for g, r in zip(got, want, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("num_blocks", [0, 1, 3, 6, 50])
def test_block_count_does_not_change_results(num_blocks):
    fam = flow_family(12, 2, 5, [24])
    params = torch.randn(2, 3, fam.num_params, requires_grad=True)
    eps = torch.randn(4, 2, 3, 12)
    dist = fam(params)
    z0, lq0 = dist.rsample_with_log_prob((4,), eps=eps)
    g0 = torch.autograd.grad(z0.square().sum() + lq0.sum(), [params, *fam.parameters()])
    dist = fam(params)
    dist._num_blocks = num_blocks
    z, lq = dist.rsample_with_log_prob((4,), eps=eps)
    g = torch.autograd.grad(z.square().sum() + lq.sum(), [params, *fam.parameters()])
    torch.testing.assert_close(z, z0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lq, lq0, rtol=1e-5, atol=1e-5)
    for a, b in zip(g, g0, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_latest_draw_is_scored_from_the_forward_pass_other_values_by_inversion():
    fam = flow_family(4, 2, 3, [8])
    params = torch.randn(5, fam.num_params, requires_grad=True)
    dist = fam(params)
    z = dist.rsample((3,))
    lq = dist.log_prob(z)
    assert lq.requires_grad and lq is dist._last[1]
    with torch.no_grad():
        assert not dist.log_prob(z).requires_grad
        inverted = dist.log_prob(z.detach().clone())  # not the cached tensor: exact inversion
    torch.testing.assert_close(inverted, lq.detach(), rtol=1e-4, atol=1e-4)
    s = dist.sample((2,))
    assert not s.requires_grad and s.shape == (2, 5, 4)


def test_fused_pass_only_for_affine_autoregressive():
    for transform in ("affine_coupling", "spline", "spline_autoregressive"):
        fam = POSTERIORS.build({"name": "flow", "transform": transform, "hidden_dims": [8]}, dim=4)
        assert not isinstance(fam(torch.randn(fam.num_params)), AffineAutoregressiveFlow)
    fam = POSTERIORS.build({"name": "flow", "hidden_dims": [8]}, dim=4)
    assert isinstance(fam(torch.randn(fam.num_params)), AffineAutoregressiveFlow)


def test_mc_kl_and_gradients_through_the_fused_pass_match_pyro():
    """The objective's estimator (shared draw, cached log q) equals the unfused estimator on the
    same noise, value and gradient."""
    fam = flow_family(8, 2, 4, [16])
    prior = PRIORS.build("standard_normal", dim=8)()
    params = torch.randn(2, 3, fam.num_params, requires_grad=True)
    dist = fam(params)
    eps = torch.randn(4, 2, 3, 8)
    z, log_q = dist.rsample_with_log_prob((4,), eps=eps)
    dist._last = (z, log_q)
    kl, method = kl_divergence(dist, prior, 4, sampler=lambda n: z)
    z_ref, lq_ref = reference(dist, eps)
    kl_ref = (lq_ref - Independent(Normal(torch.zeros(8), 1.0), 1).log_prob(z_ref)).mean(0)
    assert method == "monte_carlo"
    torch.testing.assert_close(kl, kl_ref, rtol=1e-5, atol=1e-5)
    wrt = [params, *fam.parameters()]
    got = torch.autograd.grad(kl.sum(), wrt, retain_graph=True)
    want = torch.autograd.grad(kl_ref.sum(), wrt)
    for g, r in zip(got, want, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- staircase matmuls


def made_masks(dim, context_dim, hidden):
    """Pyro's MADE masks in the fused pass's orders: inputs by autoregressive order, outputs as
    (m_k, r_k) pairs."""
    fam = flow_family(dim, 1, context_dim, hidden)
    net = fam.transforms[0].nn
    perm = net.permutation
    masks = [net.layers[0].mask[:, context_dim + perm]]
    masks += [lay.mask for lay in net.layers[1:-1]]
    rows = torch.stack([perm, perm + dim], -1).flatten()
    masks.append(net.layers[-1].mask[rows])
    return masks


@pytest.mark.parametrize("hidden", [[16], [40, 24], [9]])
@pytest.mark.parametrize("num_blocks", [1, 2, 4, 7, 100])
def test_staircase_products_equal_dense_masked_products(hidden, num_blocks):
    for mask in made_masks(9, 3, hidden):
        blocks = staircase_blocks(mask, num_blocks)
        assert blocks is not None
        # blocks cover the rows once and every allowed entry
        covered = torch.zeros_like(mask)
        for r0, r1, c in blocks:
            covered[r0:r1, :c] += 1
        assert torch.equal(covered[mask != 0], torch.ones(int(mask.sum())))
        assert int((covered > 1).sum()) == 0
        rows, cols = mask.shape
        w = torch.randn(rows, cols, dtype=torch.float64) * mask
        b = torch.randn(rows, dtype=torch.float64)
        x = torch.randn(11, cols, dtype=torch.float64)
        g = torch.randn(11, rows, dtype=torch.float64)
        torch.testing.assert_close(_linear(x, w, b, blocks), x @ w.T + b, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(_linear(x, w, None, blocks), x @ w.T, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(_grad_input(g, w, blocks), g @ w, rtol=1e-12, atol=1e-12)
        acc = torch.randn(11, cols, dtype=torch.float64)
        torch.testing.assert_close(
            _grad_input(g, w, blocks, acc=acc.clone()), acc + g @ w, rtol=1e-12, atol=1e-12
        )
        # the weight gradient: exact on the blocks (the caller's ``weight * mask`` then zeroes the
        # masked entries inside them), zero outside
        torch.testing.assert_close(
            _grad_weight(g, x, blocks, w), (g.T @ x) * (covered > 0), rtol=1e-12, atol=1e-12
        )


def test_non_staircase_masks_are_rejected():
    assert staircase_blocks(torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])) is None  # not a prefix
    assert staircase_blocks(torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])) is None  # decreasing
    assert staircase_blocks(torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]), 3) == [
        (0, 1, 0),
        (1, 2, 1),
        (2, 3, 2),
    ]


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_permute_and_its_gradient(dim):
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    idx = torch.randperm(x.shape[dim])
    y = permute(x, idx, dim)
    torch.testing.assert_close(y, x.index_select(dim, idx))
    assert torch.autograd.gradcheck(lambda v: permute(v, idx, dim), (x,))


# ---------------------------------------------------------------- DiagNormal


@pytest.mark.parametrize(
    "scale_shape", ["float", (), (1,), (6,), (4, 1, 6), (1, 1)], ids=["float", "0d", "1", "d", "batch", "1x1"]
)
def test_diag_normal_log_prob_matches_torch(scale_shape):
    loc = torch.randn(4, 3, 6, dtype=torch.float64, requires_grad=True)
    if scale_shape == "float":
        scale = 0.7
    else:
        scale = (torch.rand(scale_shape, dtype=torch.float64) + 0.5).requires_grad_()
    value = torch.randn(5, 4, 3, 6, dtype=torch.float64, requires_grad=True)
    got = DiagNormal(loc, scale).log_prob(value)
    want = Independent(Normal(loc, scale), 1).log_prob(value)
    # scipy-free closed form in float64 as a second reference
    s = torch.as_tensor(scale, dtype=torch.float64).expand(loc.shape)
    by_hand = (-0.5 * ((value - loc) / s) ** 2 - s.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, by_hand, rtol=1e-12, atol=1e-12)
    wrt = [loc, value] + ([scale] if torch.is_tensor(scale) else [])
    w = torch.randn_like(got)
    for g, r in zip(
        torch.autograd.grad((got * w).sum(), wrt), torch.autograd.grad((want * w).sum(), wrt), strict=True
    ):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)


def test_priors_and_likelihoods_are_diag_normals_with_torch_densities():
    z = torch.randn(3, 2, 5)
    target = torch.randn(2, 5)
    for name in ("standard_normal", "learned_diagonal"):
        p = PRIORS.build(name, dim=5)()
        assert isinstance(p, DiagNormal) and isinstance(p, Independent)
        ref = Independent(Normal(p.base_dist.loc, p.base_dist.scale), 1).log_prob(z)
        torch.testing.assert_close(p.log_prob(z), ref, rtol=1e-6, atol=1e-5)
        assert p.expand((4,)).batch_shape == (4,)
    for spec in ("gaussian", {"name": "gaussian", "sigma": 0.3}, "gaussian_learned"):
        lik = LIKELIHOODS.build(spec, dim=5)(z)
        assert isinstance(lik, DiagNormal)
        ref = Independent(Normal(lik.base_dist.loc, lik.base_dist.scale), 1).log_prob(target)
        torch.testing.assert_close(lik.log_prob(target), ref, rtol=1e-6, atol=1e-5)


def test_arbitrary_permutations_in_the_chain():
    """Leading and random (not just reversing) permutations between the layers: the fused pass's
    coordinate bookkeeping against Pyro's transforms one by one."""
    dim = 7
    fam = flow_family(dim, 3, 3, [14], dtype=torch.float64)
    params = torch.randn(2, fam.num_params, dtype=torch.float64, requires_grad=True)
    loc, raw, context = params.split([dim, dim, 3], dim=-1)
    base = Independent(Normal(loc, fam.std(raw)), 1)
    chain = [pdist.transforms.Permute(torch.randperm(dim))]
    for i, t in enumerate(fam.transforms):
        if i > 0:
            chain.append(pdist.transforms.Permute(torch.randperm(dim)))
        chain.append(t.condition(context))
    dist = AffineAutoregressiveFlow(base, chain, context, list(fam.transforms))
    eps = torch.randn(3, 2, dim, dtype=torch.float64)
    z, log_q = dist.rsample_with_log_prob((3,), eps=eps)
    z_ref, log_q_ref = reference(dist, eps)
    torch.testing.assert_close(z, z_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(log_q, log_q_ref, rtol=1e-10, atol=1e-10)
    wrt = [params, *fam.parameters()]
    got = torch.autograd.grad(z.sin().sum() + log_q.sum(), wrt, retain_graph=True)
    want = torch.autograd.grad(z_ref.sin().sum() + log_q_ref.sum(), wrt)
    for g, r in zip(got, want, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)


def test_a_plan_built_without_grad_does_not_serve_a_draw_with_grad():
    fam = flow_family(4, 2, 3, [8])
    dist = fam(torch.randn(3, fam.num_params))
    with torch.no_grad():
        fam.mean(dist)  # e.g. logging before the loss
    z = dist.rsample((2,))
    z.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fam.parameters())
