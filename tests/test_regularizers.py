"""Anti-collapse regularisers against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import integrate

from varjepa import VarJEPA
from varjepa.objectives import JEPAOutputs
from varjepa.objectives.regularizers import SIGReg, VICRegVarCov, epps_pulley
from varjepa.registry import ConfigError


def _ep_reference(x: np.ndarray, t_max: float = 5.0) -> float:
    """N * integral over [-t_max, t_max] of |ecf(t) - exp(-t^2/2)|^2 exp(-t^2/2) dt, by adaptive quadrature."""

    def f(t):
        re, im = np.cos(t * x).mean(), np.sin(t * x).mean()
        g = np.exp(-0.5 * t * t)
        return ((re - g) ** 2 + im**2) * g

    val, _ = integrate.quad(f, -t_max, t_max, limit=200)
    return len(x) * val


@pytest.mark.parametrize("shift", [0.0, 0.7])
def test_epps_pulley_matches_quadrature(shift):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3)) * np.array([1.0, 0.5, 2.0]) + shift
    got = epps_pulley(torch.tensor(x, dtype=torch.float64), num_points=401).numpy()
    ref = np.array([_ep_reference(x[:, j]) for j in range(3)])
    np.testing.assert_allclose(got, ref, rtol=1e-4)


def test_epps_pulley_separates_gaussian_from_collapsed():
    torch.manual_seed(0)
    gauss = epps_pulley(torch.randn(2000, 8)).mean()
    collapsed = epps_pulley(0.05 * torch.randn(2000, 8)).mean()
    assert gauss < 5 < 500 < collapsed


def _out(pooled_tokens: torch.Tensor, step: int = 0) -> JEPAOutputs:
    return JEPAOutputs(
        pred=None, family=None, target=torch.zeros(1), extras={"context_tokens": pooled_tokens, "step": step}
    )


def test_sigreg_is_mean_over_projections_and_seeded_by_step():
    torch.manual_seed(0)
    tokens = torch.randn(64, 5, 6)
    term = SIGReg(num_slices=16)
    a, b, c = term(_out(tokens, 3)), term(_out(tokens, 3)), term(_out(tokens, 4))
    torch.testing.assert_close(a, b)  # same step → same directions
    assert not torch.allclose(a, c)
    g = torch.Generator().manual_seed(3)
    dirs = torch.randn(6, 16, generator=g)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    ref = epps_pulley(tokens.mean(1) @ dirs).mean()
    torch.testing.assert_close(a, ref)


def test_vicreg_matches_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 4)) * np.array([0.2, 1.5, 0.9, 3.0])
    tokens = torch.tensor(x, dtype=torch.float32).unsqueeze(1)  # one token per image
    got = VICRegVarCov(gamma=1.0, cov_weight=0.04, eps=1e-4)(_out(tokens))
    cov = np.cov(x, rowvar=False, bias=True)
    std = np.sqrt(np.diag(cov) + 1e-4)
    off = cov - np.diag(np.diag(cov))
    ref = np.maximum(0, 1 - std).mean() + 0.04 * (off**2).sum() / 4
    assert float(got) == pytest.approx(ref, rel=1e-4)


def test_regularizers_compose_with_presets(tiny):
    m = VarJEPA(
        **tiny,
        regularizers=[{"name": "sigreg", "weight": {"name": "linear_warmup", "value": 0.5, "warmup": 10}}],
    )
    names = [t.name for t in m.elbo.terms]
    assert names == ["nll", "kl", "sigreg"]
    assert m.elbo.terms[2].weight(5, 100) == pytest.approx(0.25)
    with pytest.raises(ConfigError, match=r"model\.regularizers\[0\]: unknown regulariser 'barlow'"):
        VarJEPA(**tiny, regularizers=["barlow"])
