"""The coupled ELBO: KLs against independent computations (analytic and Monte Carlo, conditional
prior with its own batch shape), decoder likelihoods against torch.distributions, the five weights
and their annealing, the weighted sum, gradients reaching every network (no stop-gradient),
configuration errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical, Independent, MultivariateNormal, Normal

from varjepa import VarJEPA
from varjepa.distributions import POSTERIORS, StandardNormal
from varjepa.objectives import OBJECTIVES
from varjepa.objectives.coupled import PAPER_ALPHAS, kl_between
from varjepa.registry import ConfigError
from varjepa.tabular import FeatureDecoder, FeatureMasking, GaussianMLPDecoder, TableSchema, VarTJEPA

SCHEMA = TableSchema(
    names=["a", "b", "c", "d", "e", "f"],
    kinds=["numeric", "categorical", "numeric", "numeric", "categorical", "numeric"],
    levels={"b": ["x", "y", "z"], "e": ["u", "v"]},
    num_classes=2,
    classes=["0", "1"],
)
TINY = {
    "name": "transformer",
    "dim": 16,
    "depth": 1,
    "heads": 2,
    "ff": 32,
    "num_cls": 1,
    "predictor_depth": 1,
    "target_depth": 1,
}


def batch(B: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(B, 6, generator=g)
    v[:, 1] = torch.randint(0, 3, (B,), generator=g).float()
    v[:, 4] = torch.randint(0, 2, (B,), generator=g).float()
    ctx, tgt = FeatureMasking(num_targets=2, context_share=(0.3, 0.4), target_share=(0.15, 0.2))(B, 6, g)
    return {
        "values": v,
        "label": torch.zeros(B, dtype=torch.long),
        "index": torch.arange(B),
        "context_idx": ctx,
        "target_idx": tgt,
    }


def tiny_model(**kw) -> VarTJEPA:
    kw.setdefault("architecture", TINY)
    kw.setdefault("masking", {"num_targets": 2, "context_share": (0.3, 0.4), "target_share": (0.15, 0.2)})
    return VarTJEPA(latent_dim=4, aux_dim=3, schema=SCHEMA.to_dict(), decoder_hidden=8, **kw)


# ----------------------------------------------------------------------------- KL
def test_kl_diag_vs_closed_form_with_batched_prior():
    g = torch.Generator().manual_seed(0)
    mq, sq = torch.randn(3, 5, 4, generator=g), torch.rand(3, 5, 4, generator=g) + 0.2
    mp, sp = torch.randn(3, 5, 4, generator=g), torch.rand(3, 5, 4, generator=g) + 0.2
    kl, method = kl_between(Independent(Normal(mq, sq), 1), Independent(Normal(mp, sp), 1))
    ref = (torch.log(sp / sq) + (sq**2 + (mq - mp) ** 2) / (2 * sp**2) - 0.5).sum(-1)
    assert method == "analytic" and kl.shape == (3, 5)
    torch.testing.assert_close(kl, ref)


def test_kl_lowrank_vs_full_mvn():
    fam = POSTERIORS.build({"name": "lowrank_gaussian", "rank": 2}, dim=4)
    params = torch.randn(2, 3, fam.num_params, generator=torch.Generator().manual_seed(1))
    q = fam(params)
    mp, sp = torch.randn(2, 3, 4), torch.rand(2, 3, 4) + 0.5
    kl, method = kl_between(q, Independent(Normal(mp, sp), 1))
    full_q = MultivariateNormal(q.loc, covariance_matrix=q.covariance_matrix)
    full_p = MultivariateNormal(mp, covariance_matrix=torch.diag_embed(sp**2))
    assert method == "analytic"
    torch.testing.assert_close(kl, torch.distributions.kl_divergence(full_q, full_p), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "family", [{"name": "mixture", "components": 3}, {"name": "flow", "depth": 1, "context_dim": 4}]
)
def test_monte_carlo_kl_against_a_conditional_prior(family):
    """Mixture (stratified) and flow (plain) estimators vs a 40,000-draw reference, with a prior
    whose batch shape [2, 3] differs per element (the predictor's p(s_y | s_x, z))."""
    torch.manual_seed(0)
    fam = POSTERIORS.build(family, dim=3)
    q = fam(torch.randn(2, 3, fam.num_params) * 0.5)
    p = Independent(Normal(torch.randn(2, 3, 3), torch.rand(2, 3, 3) + 0.5), 1)
    with torch.no_grad():
        z = q.sample((40000,))
        ref = (q.log_prob(z) - p.log_prob(z)).mean(0)
        est = torch.stack([kl_between(q, p, num_samples=64)[0] for _ in range(100)]).mean(0)
    assert kl_between(q, p)[1] == "monte_carlo"
    torch.testing.assert_close(est, ref, rtol=0.05, atol=0.03)


# ----------------------------------------------------------------------------- decoders
def test_feature_decoder_nll_vs_torch_distributions():
    torch.manual_seed(0)
    dec = FeatureDecoder(SCHEMA, latent_dim=4, hidden=8)
    lat, b = torch.randn(5, 6, 4), batch(5)
    idx = torch.arange(6).expand(5, -1)
    nll = dec.nll(lat, {"idx": idx, "values": b["values"]})
    mu, sig = dec.mean(lat, idx), dec.sigma()[idx]
    for f, kind in enumerate(SCHEMA.kinds):
        v = b["values"][:, f]
        if kind == "numeric":
            ref = -Normal(mu[:, f], sig[:, f]).log_prob(v)
        else:
            n = len(SCHEMA.levels[SCHEMA.names[f]]) + 1
            ref = -Categorical(logits=dec.logits(lat, idx)[:, f, :n]).log_prob(v.long())
        torch.testing.assert_close(nll[:, f], ref)


def test_gaussian_mlp_decoder_nll():
    dec = GaussianMLPDecoder(4, 7, width=8, depth=1)
    lat, x = torch.randn(3, 1, 4), torch.randn(3, 1, 7)
    ref = -Independent(Normal(dec.mean(lat), dec.sigma()), 1).log_prob(x)
    torch.testing.assert_close(dec.nll(lat, {"values": x}), ref)


# ----------------------------------------------------------------------------- preset and weights
def test_preset_terms_weights_and_annealing():
    d = GaussianMLPDecoder(2, 3, 4, 1)
    terms = OBJECTIVES.build(
        {"name": "coupled", "anneal": 100, "alpha_z": {"name": "constant", "value": 0.5}},
        prior=StandardNormal(2),
        context_decoder=d,
        target_decoder=d,
    )
    assert [t.name for t in terms] == ["rec", "gen", "kl_sx", "kl_z", "kl_sy"]
    w = {t.name: t.weight for t in terms}
    for name, key in (("rec", "rec"), ("gen", "gen"), ("kl_sx", "sx"), ("kl_sy", "sy")):
        assert w[name](0, 1000) == 0.0
        assert w[name](50, 1000) == pytest.approx(PAPER_ALPHAS[key] / 2)
        assert w[name](100, 1000) == pytest.approx(PAPER_ALPHAS[key]) == w[name](900, 1000)
    assert w["kl_z"](0, 1000) == 0.5
    with pytest.raises(ConfigError, match="alpha_gen = -1"):
        OBJECTIVES.build(
            {"name": "coupled", "alpha_gen": -1}, prior=StandardNormal(2), context_decoder=d, target_decoder=d
        )


def test_elbo_is_the_weighted_sum_and_every_term_is_logged():
    m = tiny_model(objective={"name": "coupled", "anneal": 10})
    out = m(batch())
    res = m.elbo(out, 5, 100)
    assert set(res.values) == {"rec", "gen", "kl_sx", "kl_z", "kl_sy"}
    total = sum(res.weights[k] * res.values[k] for k in res.values)
    torch.testing.assert_close(res.loss, total)
    assert res.weights["gen"] == pytest.approx(0.5) and res.weights["kl_sx"] == pytest.approx(0.5e-4)
    # kl_sx by hand: the family's q(s_x|x) against N(0, I), mean over tokens
    q = out.q_sx
    ref = (
        (-torch.log(q.base_dist.scale) + (q.base_dist.scale**2 + q.base_dist.loc**2) / 2 - 0.5).sum(-1).mean()
    )
    torch.testing.assert_close(res.values["kl_sx"], ref)


def test_gradients_reach_every_network_without_stop_gradient():
    m = tiny_model(objective={"name": "coupled", "anneal": 0})
    res = m.elbo(m(batch()), 10, 10)
    res.loss.backward()
    for part in (
        "tokenizer",
        "encoder",
        "sx_head",
        "aux_pool",
        "aux_head",
        "predictor",
        "pred_head",
        "target_net",
        "tp_head",
    ):
        grads = [p.grad for p in getattr(m.net, part).parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), part
    for t in m.elbo.terms:
        if hasattr(t, "decoder"):
            assert t.decoder.raw_sigma.grad is not None
    # the KL to the conditional prior alone trains both sides of it and the context encoder
    m.zero_grad()
    kl = [t for t in m.elbo.terms if t.name == "kl_sy"][0]
    kl(m(batch())).backward()
    for part in ("pred_head", "tp_head", "encoder"):
        assert any(
            p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(m.net, part).parameters()
        ), part


@pytest.mark.parametrize(
    "posterior",
    [
        "diag_gaussian",
        {"name": "lowrank_gaussian", "rank": 2},
        {"name": "mixture", "components": 2},
        {"name": "flow", "depth": 1, "context_dim": 4},
    ],
)
def test_every_posterior_family_trains(posterior):
    m = tiny_model(posterior=posterior, objective={"name": "coupled", "anneal": 0, "kl_samples": 2})
    res = m.elbo(m(batch()), 1, 1)
    assert torch.isfinite(res.loss)
    res.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_mixed_families_per_latent():
    m = tiny_model(
        posteriors={
            "predictor": {"name": "mixture", "components": 2},
            "z": {"name": "lowrank_gaussian", "rank": 1},
        }
    )
    res = m.elbo(m(batch()), 1, 1)
    assert torch.isfinite(res.loss)


def test_configuration_errors():
    with pytest.raises(ConfigError, match="the term 'kl_sx'.*KL, undefined for a point mass"):
        tiny_model(posteriors={"sx": "dirac"})
    tiny_model(
        posteriors={"sx": "dirac"}, objective={"name": "coupled", "alpha_sx": 0}
    )  # allowed at weight 0
    with pytest.raises(ConfigError, match="model.posteriors: unknown key"):
        tiny_model(posteriors={"target": "diag_gaussian"})
    with pytest.raises(ConfigError, match="VarTJEPA trains the coupled ELBO"):
        tiny_model(objective="predictive")
    with pytest.raises(ConfigError, match="needs the coupled model.*varjepa.VarTJEPA"):
        VarJEPA(
            encoder={
                "img_size": 8,
                "patch_size": 2,
                "in_chans": 1,
                "embed_dim": 16,
                "depth": 1,
                "num_heads": 2,
            },
            predictor={"embed_dim": 16, "depth": 1, "num_heads": 2},
            objective="coupled",
        )


def test_ema_variant_reads_targets_through_a_frozen_copy():
    m = tiny_model(ema={"name": "constant", "value": 0.5})
    pairs = m.momentum_pairs()
    assert len(pairs) == 2 and all(not p.requires_grad for _, t in pairs for p in t.parameters())
    res = m.elbo(m(batch()), 1, 1)
    res.loss.backward()
    assert all(p.grad is None for _, t in pairs for p in t.parameters())
    from varjepa.callbacks.ema import ema_update

    before = [p.clone() for p in m.net.ema_encoder.parameters()]
    with torch.no_grad():
        for p in m.net.encoder.parameters():
            p.add_(1.0)
    ema_update(pairs, 0.5)
    after = list(m.net.ema_encoder.parameters())
    online = list(m.net.encoder.parameters())
    for b, a, o in zip(before, after, online, strict=True):
        torch.testing.assert_close(a, 0.5 * b + 0.5 * o)
    assert math.isfinite(float(res.loss.detach()))
