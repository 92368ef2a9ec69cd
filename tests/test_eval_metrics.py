"""Every evaluation metric against an independent computation (scipy / scikit-learn / brute force
numpy) on fixed arrays, accumulated over several ``update`` calls; and DDP sync of the states."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from scipy import integrate, stats
from scipy.spatial.distance import cdist
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import KNeighborsClassifier
from torchmetrics import SpearmanCorrCoef

from varjepa.eval.corruption import detection_scores
from varjepa.eval.metrics import (
    AURC,
    ActiveUnits,
    EmbeddingStats,
    EnergyScore,
    GaussianCRPS,
    GaussianNLL,
    IntervalCoverage,
    KNNAccuracy,
    energy_score,
    gaussian_crps,
    risk_coverage_curve,
)
from varjepa.eval.uncertainty import selective_accuracy

RNG = np.random.default_rng(0)
MEAN = RNG.normal(size=(40, 3, 5))
STD = RNG.uniform(0.2, 2.0, size=(40, 3, 5))
TARGET = MEAN + STD * RNG.standard_t(df=4, size=(40, 3, 5))  # heavier tails: not perfectly calibrated
QUERY_NOISE = 2.0 * RNG.normal(size=(40, 15))


def _t(x):
    return torch.as_tensor(x, dtype=torch.float32)


def _feed(metric, *arrays, chunks=3, **kw):
    """Update ``metric`` with the arrays split along dim 0 into ``chunks`` pieces."""
    for parts in zip(*(np.array_split(a, chunks) for a in arrays), strict=True):
        metric.update(*(_t(p) for p in parts), **kw)
    return metric.compute()


def test_gaussian_nll_matches_scipy_logpdf():
    got = _feed(GaussianNLL(), MEAN, STD**2, TARGET)
    want = -stats.norm.logpdf(TARGET, MEAN, STD).mean()
    assert float(got) == pytest.approx(want, rel=1e-5)


def _crps_by_integration(mu: float, sigma: float, y: float) -> float:
    f = lambda x: (stats.norm.cdf(x, mu, sigma) - (x >= y)) ** 2  # noqa: E731
    lo, hi = min(mu - 12 * sigma, y), max(mu + 12 * sigma, y)
    return integrate.quad(f, lo, y, limit=200)[0] + integrate.quad(f, y, hi, limit=200)[0]


def test_gaussian_crps_matches_numerical_integration():
    mu, sd, y = MEAN.ravel()[:25], STD.ravel()[:25], TARGET.ravel()[:25]
    want = np.array([_crps_by_integration(*a) for a in zip(mu, sd, y, strict=True)])
    got = gaussian_crps(_t(mu), _t(sd), _t(y)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # zero spread: CRPS is the absolute error
    np.testing.assert_allclose(
        gaussian_crps(_t(mu), torch.zeros(25), _t(y)).numpy(), np.abs(y - mu), rtol=1e-5
    )
    metric = _feed(GaussianCRPS(), MEAN, STD, TARGET)
    want_mean = float(gaussian_crps(_t(MEAN), _t(STD), _t(TARGET)).double().mean())
    assert float(metric) == pytest.approx(want_mean, rel=1e-5)


def test_energy_score_matches_brute_force_and_reduces_to_crps():
    samples = RNG.normal(size=(7, 6, 4))  # [S, N, D]
    target = RNG.normal(size=(6, 4))
    want = []
    for n in range(6):
        x = samples[:, n]
        t1 = np.linalg.norm(x - target[n], axis=1).mean()
        t2 = cdist(x, x).sum() / (7 * 6)
        want.append(t1 - 0.5 * t2)
    np.testing.assert_allclose(energy_score(_t(samples), _t(target)).numpy(), want, rtol=1e-5)
    # in one dimension the energy score estimates the CRPS (checked above against integration)
    g = torch.Generator().manual_seed(0)
    mu, sd, y = torch.tensor([0.3, -1.0]), torch.tensor([0.5, 2.0]), torch.tensor([1.0, -0.5])
    draws = mu + sd * torch.randn(4000, 2, generator=g)
    es = energy_score(draws.unsqueeze(-1), y.unsqueeze(-1))
    np.testing.assert_allclose(es.numpy(), gaussian_crps(mu, sd, y).numpy(), rtol=0.03)
    m = EnergyScore()
    m.update(_t(samples[:, :3]), _t(target[:3]))
    m.update(_t(samples[:, 3:]), _t(target[3:]))
    assert float(m.compute()) == pytest.approx(np.mean(want), rel=1e-5)


def test_interval_coverage_matches_direct_counting():
    levels = (0.5, 0.9)
    m = IntervalCoverage(levels)
    for sl in (slice(0, 13), slice(13, 40)):
        m.update(_t(TARGET[sl]), mean=_t(MEAN[sl]), std=_t(STD[sl]))
    got = m.compute().numpy()
    for p, g in zip(levels, got, strict=True):
        lo, hi = stats.norm.interval(p, MEAN, STD)
        assert g == pytest.approx(np.mean(((TARGET - lo) >= 0) & ((hi - TARGET) >= 0)), abs=1e-6)
    # calibrated draws give the nominal level (binomial noise on 20k coordinates)
    z = RNG.normal(size=20000)
    m = IntervalCoverage((0.5, 0.9))
    m.update(_t(z), mean=torch.zeros(20000), std=torch.ones(20000))
    np.testing.assert_allclose(m.compute().numpy(), [0.5, 0.9], atol=0.015)


def test_interval_coverage_from_samples_matches_numpy_quantiles():
    samples = RNG.normal(size=(50, 30, 4))
    target = RNG.normal(scale=1.5, size=(30, 4))
    m = IntervalCoverage((0.5, 0.9))
    m.update(_t(target), samples=_t(samples))
    for p, g in zip((0.5, 0.9), m.compute().numpy(), strict=True):
        lo, hi = np.quantile(samples, [(1 - p) / 2, (1 + p) / 2], axis=0)
        assert g == pytest.approx(np.mean((target >= lo) & (target <= hi)), abs=1e-6)


def test_spearman_of_std_and_error_matches_scipy_with_ties():
    std = np.round(RNG.uniform(size=200), 1)  # many ties
    err = std + RNG.normal(scale=0.3, size=200)
    got = _feed(SpearmanCorrCoef(), std, err, chunks=4)
    assert float(got) == pytest.approx(stats.spearmanr(std, err).statistic, abs=1e-5)


def _aurc_brute(unc: np.ndarray, risk: np.ndarray) -> float:
    order = np.argsort(unc, kind="stable")
    return float(np.mean([risk[order[:k]].mean() for k in range(1, len(unc) + 1)]))


def test_aurc_matches_brute_force_and_orders_rankings():
    unc = RNG.uniform(size=300)
    risk = (RNG.uniform(size=300) < unc).astype(float)  # errors more likely when uncertain
    got = _feed(AURC(), unc, risk, chunks=5)
    assert float(got) == pytest.approx(_aurc_brute(unc, risk), rel=1e-5)
    cov, r = risk_coverage_curve(_t(unc), _t(risk))
    assert cov[-1] == 1 and float(r[-1]) == pytest.approx(risk.mean())
    oracle, anti = AURC(), AURC()
    oracle.update(_t(risk), _t(risk))
    anti.update(_t(-risk), _t(risk))
    assert float(oracle.compute()) < float(got) < risk.mean() < float(anti.compute())


def test_knn_accuracy_matches_sklearn_weighted_cosine_knn():
    k, temp = 20, 0.07
    centers = RNG.normal(size=(5, 16))
    y_train, y_test = RNG.integers(0, 5, 300), RNG.integers(0, 5, 120)
    x_train = centers[y_train] + 1.5 * RNG.normal(size=(300, 16))
    x_test = centers[y_test] + 1.5 * RNG.normal(size=(120, 16))
    metric = KNNAccuracy(k=k, temperature=temp, chunk=50)
    _feed(metric, x_train, y_train, chunks=3, train=True)
    got = _feed(metric, x_test, y_test, chunks=2, train=False)
    clf = KNeighborsClassifier(
        n_neighbors=k, metric="cosine", algorithm="brute", weights=lambda d: np.exp((1 - d) / temp)
    ).fit(x_train, y_train)
    want = clf.score(x_test, y_test)
    assert 0.4 < want < 1.0  # a non-trivial case
    assert float(got) == pytest.approx(want, abs=1e-6)
    pred = metric.predict(
        torch.nn.functional.normalize(_t(x_train)),
        torch.as_tensor(y_train),
        torch.nn.functional.normalize(_t(x_test)),
    )
    np.testing.assert_array_equal(pred.numpy(), clf.predict(x_test))


def test_embedding_stats_match_numpy():
    x = RNG.normal(size=(100, 8)) * np.array([3, 2, 1, 1, 0.5, 0.1, 1e-4, 0])
    out = _feed(EmbeddingStats(dead_std=1e-2), x, chunks=4)
    s = np.linalg.svd(x, compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    assert float(out["rankme"]) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-3)
    np.testing.assert_allclose(out["std"].numpy(), x.std(0, ddof=1), rtol=1e-4, atol=1e-7)
    assert float(out["live_dims"]) == 6
    collapsed = _feed(EmbeddingStats(), np.ones((50, 8)) + 1e-6 * RNG.normal(size=(50, 8)))
    assert float(collapsed["rankme"]) < 8 * 0.9 and float(collapsed["live_dims"]) == 0


def _kl_by_integration(m, v, pm, pv) -> float:
    q, p = stats.norm(m, math.sqrt(v)), stats.norm(pm, math.sqrt(pv))
    lo, hi = m - 15 * math.sqrt(v), m + 15 * math.sqrt(v)
    return integrate.quad(lambda z: q.pdf(z) * (q.logpdf(z) - p.logpdf(z)), lo, hi, limit=200)[0]


def test_active_units_kl_matches_integration():
    mean = np.array([[0.0, 0.05, 1.0, 0.0], [0.0, -0.05, -1.0, 0.0]])
    var = np.array([[1.0, 1.0, 0.5, 0.9], [1.0, 1.0, 0.5, 0.9]])
    prior_mean, prior_var = np.zeros(4), np.ones(4)
    m = ActiveUnits(dim=4, threshold=0.01)
    m.update(_t(mean[:1]), _t(var[:1]), _t(prior_mean), _t(prior_var))
    m.update(_t(mean[1:]), _t(var[1:]), _t(prior_mean), _t(prior_var))
    out = m.compute()
    want = np.array(
        [[_kl_by_integration(mean[i, d], var[i, d], 0, 1) for d in range(4)] for i in range(2)]
    ).mean(0)
    np.testing.assert_allclose(out["kl_per_dim"].numpy(), want, atol=1e-5)
    # dims 0 (KL 0), 1 (0.00125) and 3 (0.0027) are inactive at 0.01 nats; dim 2 (0.65) is active
    assert float(out["active_units"]) == int((want > 0.01).sum()) == 1


def test_detection_scores_match_scipy_and_sklearn():
    u = RNG.uniform(size=360)
    unc = u + RNG.normal(scale=0.3, size=360)
    got = detection_scores(unc, u)
    assert got["spearman"] == pytest.approx(stats.spearmanr(unc, u).statistic, abs=1e-5)
    assert got["auroc"] == pytest.approx(roc_auc_score(u >= np.quantile(u, 0.75), unc), abs=1e-5)


def test_selective_accuracy_matches_brute_force():
    unc = RNG.uniform(size=101)
    correct = RNG.uniform(size=101) > unc
    got = selective_accuracy(correct, unc, (0.0, 0.1, 0.2, 0.5))
    for f, acc in got.items():
        keep = int(math.ceil((1 - f) * 101))
        kept = sorted(range(101), key=lambda i: unc[i])[:keep]
        assert acc == pytest.approx(np.mean(correct[kept]))
    assert got[0.5] > got[0.0]  # withholding uncertain samples helps when errors are uncertain
    with pytest.raises(ValueError):
        selective_accuracy(correct, unc, (1.0,))


# ------------------------------------------------------------------ DDP sync (2 gloo processes)
def _ddp_worker(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        n = len(MEAN)
        sl = slice(0, 17) if rank == 0 else slice(17, n)  # uneven shards
        nll, cov, aurc, sp = GaussianNLL(), IntervalCoverage((0.5, 0.9)), AURC(), SpearmanCorrCoef()
        knn, emb, au = KNNAccuracy(k=5), EmbeddingStats(), ActiveUnits(dim=5)
        nll.update(_t(MEAN[sl]), _t(STD[sl] ** 2), _t(TARGET[sl]))
        cov.update(_t(TARGET[sl]), mean=_t(MEAN[sl]), std=_t(STD[sl]))
        err = np.abs(TARGET - MEAN).mean((1, 2))
        aurc.update(_t(STD.mean((1, 2))[sl]), _t(err[sl]))
        sp.update(_t(STD.mean((1, 2))[sl]), _t(err[sl]))
        flat = MEAN.reshape(n, -1)
        labels = (flat[:, 0] > 0).astype(int)
        knn.update(_t(flat[sl]), torch.as_tensor(labels[sl]), train=True)
        knn.update(_t(flat[sl] + QUERY_NOISE[sl]), torch.as_tensor(labels[sl]), train=False)
        emb.update(_t(flat[sl]))
        au.update(_t(MEAN[sl]), _t(STD[sl] ** 2), torch.zeros(5), torch.ones(5))
        out = {
            "nll": float(nll.compute()),
            "cov": cov.compute().tolist(),
            "aurc": float(aurc.compute()),
            "spearman": float(sp.compute()),
            "knn": float(knn.compute()),
            "rankme": float(emb.compute()["rankme"]),
            "au": au.compute()["kl_per_dim"].tolist(),
        }
        queue.put((rank, out))
    finally:
        dist.destroy_process_group()


def test_metrics_sync_across_two_ddp_processes():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = 29500 + os.getpid() % 1000
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        results = dict(queue.get(timeout=60) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    for k in results[0]:  # every rank sees the global value
        np.testing.assert_allclose(results[0][k], results[1][k], rtol=1e-6)
    got = results[0]
    n = len(MEAN)
    assert got["nll"] == pytest.approx(-stats.norm.logpdf(TARGET, MEAN, STD).mean(), rel=1e-5)
    lo, hi = stats.norm.interval(0.9, MEAN, STD)
    assert got["cov"][1] == pytest.approx(np.mean(((TARGET - lo) >= 0) & ((hi - TARGET) >= 0)), abs=1e-6)
    err = np.abs(TARGET - MEAN).mean((1, 2))
    assert got["aurc"] == pytest.approx(_aurc_brute(STD.mean((1, 2)), err), rel=1e-5)
    assert got["spearman"] == pytest.approx(stats.spearmanr(STD.mean((1, 2)), err).statistic, abs=1e-5)
    flat = MEAN.reshape(n, -1)
    labels = (flat[:, 0] > 0).astype(int)
    clf = KNeighborsClassifier(
        n_neighbors=5, metric="cosine", algorithm="brute", weights=lambda d: np.exp((1 - d) / 0.07)
    ).fit(flat, labels)
    want_knn = clf.score(flat + QUERY_NOISE, labels)
    assert 0.5 < want_knn < 1  # not a trivial case
    assert got["knn"] == pytest.approx(want_knn)
    s = np.linalg.svd(flat, compute_uv=False)
    p = s / s.sum()
    assert got["rankme"] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-3)
    kl = 0.5 * (-np.log(STD**2) + STD**2 + MEAN**2 - 1)
    np.testing.assert_allclose(got["au"], kl.reshape(-1, 5).mean(0), rtol=1e-5)
