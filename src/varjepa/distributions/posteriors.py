"""Posterior families: head outputs ``[..., num_params]`` → a distribution over ``R^dim``.

Every family is an ``nn.Module`` (flows own the parameters of their conditional
transforms) built with the latent size ``dim`` injected by the model. Calling it on
head outputs of shape ``[*batch, num_params]`` returns a ``torch.distributions``
object with ``batch_shape == batch`` and ``event_shape == (dim,)``; it is built in
fp32 even under autocast, without argument validation (NaN/Inf are reported by the ELBO's
finiteness check, which names the term). Standard deviations are ``softplus(raw) + min_std`` and
clamped at ``max_std``, never ``exp`` of an unbounded output.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as pdist
import pyro.distributions.transforms as T
import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, LowRankMultivariateNormal, Normal
from torch.distributions.utils import lazy_property

from ..registry import ConfigError, Registry
from .fused_flow import AffineAutoregressiveFlow, fusable
from .stable_mixture import MixtureLogDensity, mixture_rsample

POSTERIORS: Registry[PosteriorFamily] = Registry("posterior family", "model.posterior")


def softplus(x: Tensor) -> Tensor:
    """``log(1 + exp(x))`` elementwise, as ``m + log(exp(−m) + exp(x − m))`` with ``m = max(x, 0)``
    held constant (exact value and gradient ``sigmoid(x)``; equal to ``F.softplus`` to float32 rounding).
    ``F.softplus`` calls ``log1p``, whose CPU kernel in torch 2.14 is about 12× slower than ``log``:
    it was a quarter of a world model's planning step. Same shape as ``x``."""
    m = x.detach().clamp_min(0)
    return m + torch.log(torch.exp(-m) + torch.exp(x - m))


def bounded_std(raw: Tensor, min_std: float, max_std: float) -> Tensor:
    """``softplus(raw) + min_std`` clamped to ``max_std``; same shape as ``raw``. ``raw`` is clamped
    at ``max_std`` first (``softplus(x) > x``, so nothing changes below the bound, and ``+inf``
    gives ``max_std`` instead of NaN)."""
    return (softplus(raw.clamp(max=max_std)) + min_std).clamp(max=max_std)


def inverse_bounded_std(std: float, min_std: float) -> float:
    """The raw value for which :func:`bounded_std` gives ``std`` (for initialising biases)."""
    y = torch.tensor(max(std - min_std, 1e-6))
    return float(y + torch.log(-torch.expm1(-y)))


def component_index(logits: Tensor, u: Tensor) -> Tensor:
    """Component ``k`` ``[*batch]`` (int64) per batch element by inverting the mixture weights' CDF
    (``logits`` ``[*batch, K]``) at ``u`` ``[*batch]`` (common random numbers: the same ``u`` picks
    the same component for equal weights)."""
    cdf = torch.softmax(logits, -1).cumsum(-1)
    return (cdf < u.unsqueeze(-1)).sum(-1).clamp(max=logits.shape[-1] - 1)


def select_component(logits: Tensor, u: Tensor, *blocks: Tensor, k: Tensor | None = None) -> list[Tensor]:
    """Each of ``blocks`` ``[*batch, K, d]`` at component ``k`` ``[*batch]`` (default:
    :func:`component_index` of ``logits`` ``[*batch, K]`` at ``u`` ``[*batch]``), ``[*batch, d]``."""
    if k is None:
        k = component_index(logits, u)
    out = []
    for b in blocks:
        idx = k[..., None, None].expand(*k.shape, 1, b.shape[-1])
        out.append(b.gather(-2, idx).squeeze(-2))
    return out


class PosteriorFamily(nn.Module):
    """Base class of posterior families.

    Args:
        dim: latent size d (event shape ``[d]``).
        min_std / max_std: bounds of every standard deviation.
        init_std: standard deviation produced by a zero head output, so that a
            zero-initialised head starts at this spread.
    """

    #: whether ``kl_divergence(q, Normal)`` is analytic for this family.
    analytic_kl: bool = True
    #: whether the family has a non-zero spread (False only for dirac).
    stochastic: bool = True
    #: whether mean and marginal variance are exact (not sampled); enables closed-form
    #: expected log-likelihoods.
    exact_moments: bool = True
    #: how many location vectors of size ``dim`` open the head outputs (every family puts its
    #: location(s) first: one mean, or one per mixture component); read by :meth:`shift`.
    loc_blocks: int = 1
    #: whether the location (the first ``dim`` head outputs) is trained only by terms that read
    #: :meth:`mean`; the ELBO then requires such a term, and a world model computes it in its own MLP
    needs_mean_term: bool = False

    def __init__(self, dim: int, min_std: float = 1e-3, max_std: float = 20.0, init_std: float = 1.0):
        super().__init__()
        if dim < 1:
            raise ConfigError(f"model.posterior: latent size dim = {dim}; must be >= 1")
        if not 0 < min_std < init_std < max_std:
            raise ConfigError(
                f"model.posterior: need 0 < min_std < init_std < max_std, got "
                f"{min_std}, {init_std}, {max_std}"
            )
        self.dim = dim
        self.min_std = min_std
        self.max_std = max_std
        self._std_offset = inverse_bounded_std(init_std, min_std)

    @property
    def num_params(self) -> int:
        """How many numbers the head must output per token."""
        raise NotImplementedError

    def std(self, raw: Tensor) -> Tensor:
        """Bounded standard deviations from raw head outputs (same shape)."""
        return bounded_std(raw + self._std_offset, self.min_std, self.max_std)

    def build(self, params: Tensor) -> Distribution:
        """The distribution for fp32 ``params`` of shape ``[*batch, num_params]``."""
        raise NotImplementedError

    def sample_from_params(self, params: Tensor, eps: Tensor, u: Tensor) -> Tensor | None:
        """A draw ``[*batch, dim]`` of the distribution of head outputs ``params`` ``[*batch,
        num_params]`` made from ``eps ~ N(0, I)`` ``[*batch, dim]`` and ``u ~ U(0, 1)`` ``[*batch]``
        without building the distribution (a planner's common random numbers, its inner loop), or
        None if the family has no such transform. Equal (bitwise, and in which parameters get
        gradient) to :func:`~varjepa.worldmodel.sampling.sample_from_noise` of ``self(params)``."""
        return None

    def tilted_sample_from_params(
        self, params: Tensor, eps: Tensor, u: Tensor, tilt: float
    ) -> tuple[Tensor, Tensor] | None:
        """An importance-sampled draw for rare events from head outputs ``params`` ``[*batch,
        num_params]``, ``eps ~ N(0, I)`` ``[*batch, dim]`` and ``u ~ U(0, 1)`` ``[*batch]``:
        ``(z [*batch, dim], log_ratio [*batch])``, a draw of a proposal that picks mixture component
        ``k`` with probability ``q_k ∝ π_k^tilt`` (``0 ≤ tilt ≤ 1``; smaller flattens the weights,
        so rare components are drawn more often; 0 draws them uniformly) and ``log π_k − log q_k``,
        the log importance weight that corrects for it. Families without
        components draw as :meth:`sample_from_params` with a zero log ratio; None where that has no
        transform either."""
        z = self.sample_from_params(params, eps, u)
        return None if z is None else (z, z.new_zeros(z.shape[:-1]))

    def mean_and_log_prob(self, params: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """The mean ``[*batch, dim]`` and the log density ``[*batch]`` at ``z`` ``[*batch, dim]`` of the
        distribution of head outputs ``params`` ``[*batch, num_params]`` (fp32 values; families
        that can skip building the distribution do; use the distribution where gradients matter)."""
        dist = self(params)
        return self.mean(dist), dist.log_prob(z.float())

    def forward(self, params: Tensor) -> Distribution:
        """``[*batch, num_params]`` head outputs → distribution with event ``[dim]`` (fp32)."""
        if params.shape[-1] != self.num_params:
            raise ValueError(
                f"{type(self).__name__}: head outputs {params.shape[-1]} numbers per token, "
                f"the family needs {self.num_params} (dim={self.dim})"
            )
        with torch.autocast(device_type=params.device.type, enabled=False), pyro.validation_enabled(False):
            return self.build(params.float())

    def shift(self, params: Tensor, offset: Tensor) -> Tensor:
        """Head outputs ``[*batch, num_params]`` whose distribution is moved by ``offset``
        ``[*batch, dim]``: every location (the mean, each mixture component's mean, a flow's base
        mean) gets ``offset`` added; spreads and weights are unchanged. Lets a predictor output a
        change (``z_{t+1} − z_t``) instead of the value."""
        n = self.loc_blocks * self.dim
        locs = params[..., :n] + offset.repeat(*([1] * (offset.dim() - 1)), self.loc_blocks)
        return torch.cat([locs, params[..., n:]], -1)

    def mean(self, dist: Distribution) -> Tensor:
        """Mean ``[*batch, dim]``."""
        return dist.mean

    def marginal_variance(self, dist: Distribution) -> Tensor:
        """Per-dimension marginal variance ``[*batch, dim]``."""
        return dist.variance.clamp_min(0)

    def marginal_std(self, dist: Distribution) -> Tensor:
        """Per-dimension marginal standard deviation ``[*batch, dim]``."""
        return self.marginal_variance(dist).sqrt()

    def uncertainty(self, dist: Distribution) -> Tensor:
        """Scalar spread per token ``[*batch]``: the mean marginal std over dimensions."""
        return self.marginal_std(dist).mean(-1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_params={self.num_params}"


@POSTERIORS.register("dirac")
class Dirac(PosteriorFamily):
    """Point estimate (Dirac delta at the head output): deterministic JEPA's posterior."""

    analytic_kl = False
    stochastic = False

    @property
    def num_params(self) -> int:
        return self.dim

    def build(self, params: Tensor) -> Distribution:
        return pdist.Delta(params, event_dim=1)

    def marginal_variance(self, dist: Distribution) -> Tensor:
        return torch.zeros_like(dist.v)


@POSTERIORS.register("diag_gaussian")
class DiagGaussian(PosteriorFamily):
    """Diagonal Gaussian ``N(μ, diag σ²)``: head outputs ``[μ (d), raw σ (d)]``."""

    @property
    def num_params(self) -> int:
        return 2 * self.dim

    def build(self, params: Tensor) -> Distribution:
        loc, raw = params.split(self.dim, dim=-1)
        return Independent(Normal(loc, self.std(raw)), 1)

    def sample_from_params(self, params: Tensor, eps: Tensor, u: Tensor) -> Tensor:
        loc, raw = params.float().split(self.dim, dim=-1)
        return loc + self.std(raw) * eps


class FastLowRankMVN(LowRankMultivariateNormal):
    """``LowRankMultivariateNormal(loc, W, D)`` for parameters that share one batch shape, faster at
    ViT latent sizes: the capacitance ``I + Wᵀ D⁻¹ W`` and the marginal variances are computed on a
    ``[..., r, d]`` copy of ``W`` (long contiguous rows) instead of torch's elementwise maths on
    ``[..., d, r]`` and on a transposed view. Same distribution, same attributes."""

    def __init__(self, loc: Tensor, cov_factor: Tensor, cov_diag: Tensor):
        self.loc, self.cov_factor, self.cov_diag = loc, cov_factor, cov_diag
        self._unbroadcasted_cov_factor, self._unbroadcasted_cov_diag = cov_factor, cov_diag
        self._wt = cov_factor.mT.contiguous()  # [..., r, d]
        r = cov_factor.size(-1)
        cap = (self._wt / cov_diag.unsqueeze(-2)) @ self._wt.mT
        cap = cap + torch.eye(r, dtype=cap.dtype, device=cap.device)
        self._capacitance_tril = torch.linalg.cholesky(cap)
        Distribution.__init__(self, loc.shape[:-1], loc.shape[-1:], validate_args=False)

    @lazy_property
    def variance(self) -> Tensor:
        return self._wt.square().sum(-2) + self.cov_diag


@POSTERIORS.register("lowrank_gaussian")
class LowRankGaussian(PosteriorFamily):
    """Gaussian with covariance ``W Wᵀ + diag σ²``, ``W`` of rank ``rank`` < d.

    Head outputs ``[μ (d), W (d·r), raw σ (d)]``; ``W`` is scaled by ``factor_scale`` so a
    freshly initialised head starts near the diagonal family.
    """

    def __init__(self, dim: int, rank: int = 4, factor_scale: float = 0.1, **kwargs):
        super().__init__(dim, **kwargs)
        if not 1 <= rank < dim:
            raise ConfigError(f"model.posterior.rank = {rank}; must satisfy 1 <= rank < dim = {dim}")
        self.rank = rank
        self.factor_scale = factor_scale

    @property
    def num_params(self) -> int:
        return self.dim * (self.rank + 2)

    def build(self, params: Tensor) -> Distribution:
        d, r = self.dim, self.rank
        loc, factor, raw = params.split([d, d * r, d], dim=-1)
        factor = self.factor_scale * factor.unflatten(-1, (d, r))
        return FastLowRankMVN(loc, factor, self.std(raw).square())


class BatchedMixtureOfDiagNormals(pdist.MixtureOfDiagNormals):
    """``MixtureOfDiagNormals`` whose ``rsample(sample_shape)`` works with batch dimensions
    (Pyro's own gathers with mismatched shapes when both are present: the parameters are
    expanded to ``sample_shape + batch_shape`` and one draw is taken) and whose pathwise
    gradient stays finite in high dimension (Pyro's underflows to NaN beyond a few dozen
    dimensions; see :mod:`varjepa.distributions.stable_mixture`)."""

    def log_prob_per_draw(self, z: Tensor) -> Tensor:
        """``log q(z)`` for draws ``z`` ``[*s, *batch, J, d]`` (J draws per batch element) → ``[*s, *batch, J]``."""
        lead = z.shape[:-2]
        locs = self.locs.expand(*lead, *self.locs.shape[-2:])
        scales = self.coord_scale.expand(*lead, *self.coord_scale.shape[-2:])
        log_w = torch.log_softmax(self.component_logits, -1).expand(*lead, self.locs.shape[-2])
        return MixtureLogDensity.apply(z, locs, scales, log_w)

    def stratified_kl(self, p: Distribution, num_samples: int = 1) -> Tensor:
        """Unbiased Monte Carlo ``KL(q ‖ p)`` ``[*batch]`` with the draws spread over the components:
        ``Σ_j π_j E_{z~N_j}[log q(z) − log p(z)]`` with ``z = μ_j + σ_j ε`` (plain Gaussian
        reparameterisation, no implicit mixture gradient). With ``num_samples ≥ K``, each component
        gets ``ceil(num_samples / K)`` draws (lower variance than sampling components); with fewer,
        ``num_samples`` components are drawn uniformly without replacement per batch element and
        weighted by ``K π_j / num_samples``."""
        K = self.locs.shape[-2]
        pis = torch.softmax(self.component_logits, -1)
        if num_samples >= K:
            s = math.ceil(num_samples / K)
            eps = torch.randn((s, *self.locs.shape), dtype=self.locs.dtype, device=self.locs.device)
            z = self.locs + self.coord_scale * eps  # [s, *b, K, d]: draw j from component j
            diff = self.log_prob_per_draw(z) - _log_prob_draws_in_dim_m2(p, z)  # [s, *b, K]
            return (pis * diff.mean(0)).sum(-1)
        flat = torch.ones(pis.shape[:-1].numel(), K, device=pis.device)
        which = torch.multinomial(flat, num_samples).view(*pis.shape[:-1], num_samples)  # [*b, n]
        idx = which.unsqueeze(-1).expand(*which.shape, self.locs.shape[-1])
        loc, scale = self.locs.gather(-2, idx), self.coord_scale.gather(-2, idx)  # [*b, n, d]
        z = loc + scale * torch.randn_like(loc)
        diff = self.log_prob_per_draw(z) - _log_prob_draws_in_dim_m2(p, z)  # [*b, n]
        return (K / num_samples) * (pis.gather(-1, which) * diff).sum(-1)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        shape = torch.Size(sample_shape) + self.locs.shape
        return mixture_rsample(
            self.locs.expand(shape),
            self.coord_scale.expand(shape),
            self.component_logits.expand(shape[:-1]),
            torch.Size(),
        )


def _log_prob_draws_in_dim_m2(p: Distribution, z: Tensor) -> Tensor:
    """``p.log_prob`` of draws ``z`` ``[..., *batch, J, d]`` whose draw index sits in dim −2, as
    ``[..., *batch, J]``: the draws are moved in front first, so that a ``p`` with its own batch
    shape ``[*batch]`` (a conditional prior) broadcasts as well as an unbatched one."""
    return p.log_prob(z.movedim(-2, 0)).movedim(0, -1)


def mixture_moments(dist: pdist.MixtureOfDiagNormals) -> tuple[Tensor, Tensor]:
    """Exact mean and per-dimension variance ``[*batch, d]`` of a diagonal mixture."""
    w = torch.softmax(dist.component_logits, -1).unsqueeze(-1)  # [*batch, K, 1]
    mean = (w * dist.locs).sum(-2)
    second = (w * (dist.coord_scale.square() + dist.locs.square())).sum(-2)
    return mean, (second - mean.square()).clamp_min(0)


@POSTERIORS.register("mixture")
class Mixture(PosteriorFamily):
    """Mixture of ``components`` diagonal Gaussians, reparameterised
    (``pyro.distributions.MixtureOfDiagNormals``). Head outputs
    ``[μ (K·d), raw σ (K·d), logits (K)]``; KL is Monte Carlo."""

    analytic_kl = False

    def __init__(self, dim: int, components: int = 4, **kwargs):
        super().__init__(dim, **kwargs)
        if components < 1:
            raise ConfigError(f"model.posterior.components = {components}; must be >= 1")
        self.components = components
        self.loc_blocks = components

    @property
    def num_params(self) -> int:
        return self.components * (2 * self.dim + 1)

    def build(self, params: Tensor) -> Distribution:
        return BatchedMixtureOfDiagNormals(*self.components_of(params))

    def components_of(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Component means ``[*batch, K, d]``, standard deviations ``[*batch, K, d]`` and logits
        ``[*batch, K]`` of head outputs ``params`` ``[*batch, num_params]``."""
        k, d = self.components, self.dim
        locs, raw, logits = params.split([k * d, k * d, k], dim=-1)
        return locs.unflatten(-1, (k, d)), self.std(raw).unflatten(-1, (k, d)), logits

    def mean_and_log_prob(self, params: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        locs, std, logits = self.components_of(params.float())
        log_w = torch.log_softmax(logits, -1)
        mean = (log_w.exp().unsqueeze(-1) * locs).sum(-2)
        log_prob = MixtureLogDensity.apply(z.float().unsqueeze(-2), locs, std, log_w).squeeze(-1)
        return mean, log_prob

    def pick(self, logits: Tensor, u: Tensor, *blocks: Tensor, k: Tensor | None = None) -> list[Tensor]:
        """:func:`select_component` for flat head blocks ``[*batch, K·d]`` → ``[*batch, d]`` each."""
        K, d = self.components, self.dim
        return select_component(logits, u, *(b.unflatten(-1, (K, d)) for b in blocks), k=k)

    @staticmethod
    def tilted_index(logits: Tensor, u: Tensor, tilt: float) -> tuple[Tensor, Tensor]:
        """Component ``k`` ``[*batch]`` drawn at ``u`` from ``q ∝ π^tilt`` (``π = softmax(logits)``,
        logits ``[*batch, K]``) and its log importance weight ``log π_k − log q_k`` ``[*batch]``."""
        log_pi = torch.log_softmax(logits, -1)
        K = logits.shape[-1]
        if tilt == 0:  # uniform: k = ⌊u·K⌋, log q_k = −log K (no softmax of the proposal)
            k = (u * K).long().clamp(0, K - 1)
            return k, log_pi.gather(-1, k[..., None]).squeeze(-1) + math.log(K)
        k = component_index(tilt * logits, u)  # softmax(tilt·logits) = π^tilt, normalised
        log_ratio = log_pi - torch.log_softmax(tilt * logits, -1)
        return k, log_ratio.gather(-1, k[..., None]).squeeze(-1)

    def draw_blocks(self, params: Tensor) -> tuple[Tensor | None, Tensor, Tensor, Tensor]:
        """Head outputs ``[*batch, num_params]`` split for drawing: a shared location ``[*batch, d]``
        (None: the components' own locations carry it), component locations ``[*batch, K·d]``, raw
        spreads ``[*batch, K·d]`` and logits ``[*batch, K]``."""
        k, d = self.components, self.dim
        locs, raw, logits = params.float().split([k * d, k * d, k], dim=-1)
        return None, locs, raw, logits

    def _draw(
        self, params: Tensor, eps: Tensor, u: Tensor, tilt: float | None
    ) -> tuple[Tensor, Tensor | None]:
        """A draw ``[*batch, d]`` at ``u`` from the weights (``tilt`` None) or from the tilted
        proposal, with its log importance weight ``[*batch]`` (None untilted)."""
        base, locs, raw, logits = self.draw_blocks(params)
        idx, log_ratio = (None, None) if tilt is None else self.tilted_index(logits, u, tilt)
        loc, r = self.pick(logits, u, locs, raw, k=idx)
        loc = loc if base is None else base + loc
        return loc + self.std(r) * eps, log_ratio  # only the drawn component's spread is computed

    def sample_from_params(self, params: Tensor, eps: Tensor, u: Tensor) -> Tensor:
        return self._draw(params, eps, u, None)[0]

    def tilted_sample_from_params(
        self, params: Tensor, eps: Tensor, u: Tensor, tilt: float
    ) -> tuple[Tensor, Tensor]:
        return self._draw(params, eps, u, tilt)

    @staticmethod
    def _moments(dist: Distribution) -> tuple[Tensor, Tensor]:
        # computed once per distribution (the closed-form NLL asks for both)
        cached = getattr(dist, "_varjepa_moments", None)
        if cached is None:
            cached = dist._varjepa_moments = mixture_moments(dist)
        return cached

    def mean(self, dist: Distribution) -> Tensor:
        return self._moments(dist)[0]

    def marginal_variance(self, dist: Distribution) -> Tensor:
        return self._moments(dist)[1]


@POSTERIORS.register("anchored_mixture")
class AnchoredMixture(Mixture):
    """A location plus mixture noise: ``z = μ + ε``, ``ε ~ Σ_k π_k N(m_k, diag σ_k²)``. Head outputs
    ``[μ (d), offsets m (K·d), raw σ (K·d), logits (K)]``; the components' locations are ``μ + m_k``.

    With ``detach_anchor`` (default) the density does not train the anchor ``μ``: its log density
    sees ``μ`` detached, and :meth:`mean` (the exact mixture mean, ``μ + Σ π_k m_k``) passes
    gradient to ``μ`` only. A term that reads the mean (``mean_weight`` of the ``heteroscedastic``
    preset, the ``jepa`` preset's regression) then fits ``μ`` by least squares on *every* sample,
    while the density fits the shape of the noise around it. A plain mixture's NLL explains a rare,
    predictable transition (the step after a gust) with a broad component, and its narrow
    components, never responsible for it, extrapolate there; a least-squares anchor cannot ignore
    it (README, world models). Without a mean-reading term the anchor would get no gradient: the
    ELBO refuses that combination. ``shift`` moves ``μ`` only (one location block).

    Args:
        components: K, mixture components of the noise.
        detach_anchor: stop the density's gradient at ``μ`` (False: a mixture with a shared location).
    """

    def __init__(self, dim: int, components: int = 4, detach_anchor: bool = True, **kwargs):
        super().__init__(dim, components, **kwargs)
        self.loc_blocks = 1
        self.detach_anchor = bool(detach_anchor)

    @property
    def needs_mean_term(self) -> bool:  # the anchor gets no gradient from the density
        return self.detach_anchor

    @property
    def num_params(self) -> int:
        return self.dim + self.components * (2 * self.dim + 1)

    def build(self, params: Tensor) -> Distribution:
        k, d = self.components, self.dim
        anchor, offsets, raw, logits = params.split([d, k * d, k * d, k], dim=-1)
        base = anchor.detach() if self.detach_anchor else anchor
        dist = BatchedMixtureOfDiagNormals(
            base.unsqueeze(-2) + offsets.unflatten(-1, (k, d)), self.std(raw).unflatten(-1, (k, d)), logits
        )
        dist._varjepa_anchor = anchor
        return dist

    def components_of(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        k, d = self.components, self.dim
        anchor, offsets, raw, logits = params.split([d, k * d, k * d, k], dim=-1)
        locs = anchor.unsqueeze(-2) + offsets.unflatten(-1, (k, d))
        return locs, self.std(raw).unflatten(-1, (k, d)), logits

    def draw_blocks(self, params: Tensor) -> tuple[Tensor | None, Tensor, Tensor, Tensor]:
        k, d = self.components, self.dim
        anchor, offsets, raw, logits = params.float().split([d, k * d, k * d, k], dim=-1)
        base = anchor.detach() if self.detach_anchor else anchor  # as in build
        return base, offsets, raw, logits

    def mean(self, dist: Distribution) -> Tensor:
        m = self._moments(dist)[0]
        anchor = getattr(dist, "_varjepa_anchor", None)
        if not self.detach_anchor or anchor is None:
            return m
        return anchor + (m - anchor).detach()  # the exact mean; its gradient reaches μ only

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, components={self.components}, detach_anchor={self.detach_anchor}"


FLOW_TRANSFORMS = {
    "affine_autoregressive": T.conditional_affine_autoregressive,
    "affine_coupling": T.conditional_affine_coupling,
    "spline": T.conditional_spline,
    "spline_autoregressive": T.conditional_spline_autoregressive,
}


@POSTERIORS.register("flow")
class Flow(PosteriorFamily):
    """Normalizing flow: diagonal Gaussian base followed by ``depth`` invertible Pyro
    conditional transforms of type ``transform``, conditioned on a per-token context
    vector of size ``context_dim`` that the head also outputs.

    Head outputs ``[μ (d), raw σ (d), context (c)]``. KL, mean and spread are estimated by
    sampling (``num_moment_samples``). Autoregressive transforms reverse the coordinate
    order between layers so every dimension conditions on every other.
    """

    analytic_kl = False
    exact_moments = False

    def __init__(
        self,
        dim: int,
        transform: str = "affine_autoregressive",
        depth: int = 2,
        context_dim: int = 16,
        hidden_dims: list[int] | None = None,
        num_moment_samples: int = 16,
        **kwargs,
    ):
        super().__init__(dim, **kwargs)
        if transform not in FLOW_TRANSFORMS:
            raise ConfigError(
                f"model.posterior.transform = '{transform}'; allowed: {', '.join(sorted(FLOW_TRANSFORMS))}"
            )
        if depth < 1:
            raise ConfigError(f"model.posterior.depth = {depth}; must be >= 1")
        if dim < 2 and transform != "spline":
            raise ConfigError(f"model.posterior: flow transform '{transform}' needs dim >= 2, got {dim}")
        self.transform, self.depth, self.context_dim = transform, depth, context_dim
        self.num_moment_samples = num_moment_samples
        hidden = list(hidden_dims) if hidden_dims else [max(2 * dim, 32)]
        self.transforms = nn.ModuleList(
            FLOW_TRANSFORMS[transform](dim, context_dim, hidden_dims=hidden) for _ in range(depth)
        )
        self.register_buffer("reverse", torch.arange(dim - 1, -1, -1), persistent=False)
        # affine-autoregressive layers are sampled (and their draws scored) by one fused pass
        self._fused = all(fusable(t) for t in self.transforms)

    @property
    def num_params(self) -> int:
        return 2 * self.dim + self.context_dim

    def build(self, params: Tensor) -> Distribution:
        loc, raw, context = params.split([self.dim, self.dim, self.context_dim], dim=-1)
        base = Independent(Normal(loc, self.std(raw)), 1)
        chain: list = []
        for i, t in enumerate(self.transforms):
            if i > 0 and self.transform != "spline":
                chain.append(T.Permute(self.reverse))
            chain.append(t.condition(context))
        if self._fused:
            return AffineAutoregressiveFlow(base, chain, context, list(self.transforms))
        return pdist.TransformedDistribution(base, chain)

    def _samples(self, dist: Distribution) -> Tensor:
        return dist.rsample((self.num_moment_samples,))

    def mean(self, dist: Distribution) -> Tensor:
        return self._samples(dist).mean(0)

    def marginal_variance(self, dist: Distribution) -> Tensor:
        return self._samples(dist).var(0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, transform={self.transform}, depth={self.depth}"
