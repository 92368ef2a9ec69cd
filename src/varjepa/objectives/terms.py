"""Named ELBO terms. Each term computes one unweighted scalar from :class:`JEPAOutputs`;
the :class:`~varjepa.objectives.elbo.ELBO` weights it by its own schedule and logs it.

Losses are per token: summed over the d latent dimensions, averaged over target tokens and
the batch (weighted by :attr:`JEPAOutputs.token_weights` when a model sets them). Terms are
``nn.Module``s so they may own parameters (priors, likelihoods, decoders of later presets).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Independent, Normal

from ..distributions import ANALYTIC, MONTE_CARLO, kl_divergence
from ..distributions.kl import has_registered_kl
from ..registry import ConfigError
from ..schedules import Constant, Schedule
from .outputs import JEPAOutputs


class Term(nn.Module):
    """Base class of ELBO terms.

    Args:
        name: the term's name in logs (``train/<name>``); unique within an ELBO.
        weight: schedule of its weight in the loss.
        requires: the optional :class:`JEPAOutputs` fields the term reads (e.g. ``target_dist``).
        reads_mean: whether the term's gradient reaches the predicted mean through
            ``family.mean`` alone (a least-squares fit of it), which an anchored family needs.
    """

    requires: tuple[str, ...] = ()
    reads_mean: bool = False

    def __init__(self, name: str, weight: Schedule | None = None):
        super().__init__()
        self.name = name
        self.weight = weight if weight is not None else Constant(1.0)
        #: how the last value was computed ("analytic"/"monte_carlo" for KL terms)
        self.method: str | None = None

    def defined(self, out: JEPAOutputs) -> bool:
        """Whether the term has a value for these outputs (a KL of a Dirac posterior has none)."""
        return True

    def validate(self, family, target_family=None) -> None:
        """Raise a ConfigError if the term cannot work with the configured families."""

    def sample_requests(self, out: JEPAOutputs) -> dict[str, int]:
        """Reparameterised draws this term will take through ``out.rsample``: {source: count}."""
        return {}

    def forward(self, out: JEPAOutputs) -> Tensor:  # pragma: no cover - abstract
        """Unweighted scalar value for one batch."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"name={self.name!r}, weight={self.weight}"


class ExpectedNLL(Term):
    """``−E_{z~q_φ}[log p(z̄ | z)]`` (predictive ELBO).

    Closed form when the likelihood has one (Gaussian: it needs only q's mean and marginal
    variance) and the family's moments are exact (dirac, diag, low-rank, mixture); otherwise
    ``num_samples`` reparameterised samples. ``self.method`` says which, as for KL terms.
    Set ``analytic=False`` to force sampling.
    """

    def __init__(
        self,
        likelihood: nn.Module,
        name: str = "nll",
        weight=None,
        num_samples: int = 1,
        analytic: bool = True,
    ):
        super().__init__(name, weight)
        if num_samples < 1:
            raise ConfigError(f"model.objective.num_samples = {num_samples}; must be >= 1")
        self.likelihood = likelihood
        self.num_samples = num_samples
        self.analytic = analytic

    def _closed_form(self, out: JEPAOutputs) -> bool:
        return self.analytic and out.family.exact_moments and hasattr(self.likelihood, "expected_nll")

    def sample_requests(self, out: JEPAOutputs) -> dict[str, int]:
        if self._closed_form(out) or not out.family.stochastic:
            return {}
        return {"pred": self.num_samples}

    def forward(self, out: JEPAOutputs) -> Tensor:
        fam, target = out.family, out.target.float()
        if self._closed_form(out):
            self.method = ANALYTIC
            return out.token_mean(
                self.likelihood.expected_nll(fam.mean(out.pred), fam.marginal_variance(out.pred), target)
            )
        self.method = MONTE_CARLO
        if fam.stochastic:
            z = out.rsample("pred", self.num_samples)  # [S, B, T, d], shared with other terms
        else:
            z = out.family.mean(out.pred).unsqueeze(0)
        return -out.token_mean(self.likelihood(z).log_prob(target))


class KLToPrior(Term):
    """``KL(q ‖ p(z))`` of the predictor's (``source="pred"``) or target encoder's
    (``source="target"``) distribution to a prior; analytic or Monte Carlo with
    ``num_samples`` samples, chosen automatically (see ``self.method``)."""

    def __init__(
        self, prior: nn.Module, name: str = "kl", weight=None, source: str = "pred", num_samples: int = 4
    ):
        super().__init__(name, weight)
        if source not in ("pred", "target"):
            raise ConfigError(f"KL term source = '{source}'; allowed: pred, target")
        if num_samples < 1:
            raise ConfigError(f"model.objective.kl_samples = {num_samples}; must be >= 1")
        self.prior = prior
        self.source = source
        self.num_samples = num_samples
        if source == "target":
            self.requires = ("target_dist",)

    def _family(self, out: JEPAOutputs):
        return out.family if self.source == "pred" else out.target_family

    def validate(self, family, target_family=None) -> None:
        fam = family if self.source == "pred" else target_family
        if fam is not None and not fam.stochastic and not self.weight.is_zero():
            raise ConfigError(
                f"model.beta = {self.weight}: KL(q‖p) with a 'dirac' {'posterior' if self.source == 'pred' else 'target posterior'} "
                "is undefined (a point mass has no density). Allowed: beta: 0 with dirac, or a "
                "stochastic family (diag_gaussian, lowrank_gaussian, mixture, flow)."
            )

    def defined(self, out: JEPAOutputs) -> bool:
        fam = self._family(out)
        return fam is not None and fam.stochastic

    def sample_requests(self, out: JEPAOutputs) -> dict[str, int]:
        q = out.pred if self.source == "pred" else out.target_dist
        if q is None or has_registered_kl(q, self.prior()) or hasattr(q, "stratified_kl"):
            return {}
        return {self.source: self.num_samples}

    def forward(self, out: JEPAOutputs) -> Tensor:
        q = out.pred if self.source == "pred" else out.target_dist
        kl, self.method = kl_divergence(
            q, self.prior(), self.num_samples, sampler=lambda n: out.rsample(self.source, n)
        )
        return out.token_mean(kl)


class PredictiveNLL(Term):
    """``E_{z_t~q̄}[−log p_φ(z_t | x_c, ξ)]``: the predictor's negative log density of samples of the
    target encoder's distribution (target-posterior ELBO, Huang 2026)."""

    requires = ("target_dist",)

    def __init__(self, name: str = "nll", weight=None, num_samples: int = 1):
        super().__init__(name, weight)
        self.num_samples = num_samples

    def validate(self, family, target_family=None) -> None:
        if not family.stochastic:
            raise ConfigError(
                "model.posterior = 'dirac' cannot score target samples (no density); the "
                "target_posterior objective needs a stochastic posterior family"
            )

    def sample_requests(self, out: JEPAOutputs) -> dict[str, int]:
        return {"target": self.num_samples} if out.target_family.stochastic else {}

    def forward(self, out: JEPAOutputs) -> Tensor:
        if out.target_family.stochastic:
            z = out.rsample("target", self.num_samples)  # shared with a Monte Carlo KL
        else:
            z = out.target_family.mean(out.target_dist).unsqueeze(0)
        return -out.token_mean(out.pred.log_prob(z))


class Regression(Term):
    """Deterministic JEPA loss between the predicted mean and ``z̄``: ``"mse"`` or ``"smooth_l1"``,
    averaged over elements (I-JEPA's reduction)."""

    reads_mean = True

    def __init__(self, name: str = "mse", weight=None, loss: str = "mse"):
        super().__init__(name, weight)
        if loss not in ("mse", "smooth_l1"):
            raise ConfigError(f"model.objective.loss = '{loss}'; allowed: mse, smooth_l1")
        self.loss = loss

    def forward(self, out: JEPAOutputs) -> Tensor:
        pred = out.family.mean(out.pred)
        fn = F.mse_loss if self.loss == "mse" else F.smooth_l1_loss
        if out.token_weights is None:
            return fn(pred, out.target.to(pred.dtype))
        return out.token_mean(fn(pred, out.target.to(pred.dtype), reduction="none").mean(-1))


def as_float(x: Tensor | float) -> float:
    """A Python float from a scalar tensor or number."""
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


class TargetNLL(Term):
    """``−log q_φ(z̄ | x_c, ξ)``: the predictor's negative log density of the observed target latent
    itself (heteroscedastic regression of z̄). Unlike the predictive ELBO's expected likelihood,
    whose optimal spread is input-independent, this term makes the predicted spread track the
    actual error, so it is informative (corruption detection, selective prediction) and calibrated.
    Exact ``log_prob`` for every stochastic family (mixtures and flows included).

    Args:
        beta_nll: β-NLL weighting (Seitzer et al. 2022): each term is multiplied by the detached
            predicted variance to the power ``beta_nll`` (per dimension for diagonal Gaussians,
            per token otherwise). 0 is the plain NLL; 1 gives the mean the gradient of an MSE, which
            keeps the encoders from being rewarded for making targets trivially predictable. The
            optimal spread for a given mean is unchanged, so calibration is kept.
    """

    def __init__(self, name: str = "nll", weight=None, beta_nll: float = 0.0):
        super().__init__(name, weight)
        if not 0 <= beta_nll <= 1:
            raise ConfigError(f"model.objective.beta_nll = {beta_nll}; must be in [0, 1]")
        self.beta_nll = beta_nll

    def validate(self, family, target_family=None) -> None:
        if not family.stochastic:
            raise ConfigError(
                "model.posterior = 'dirac' has no density to score z̄ with; the heteroscedastic "
                "objective needs a stochastic posterior family"
            )

    def forward(self, out: JEPAOutputs) -> Tensor:
        target = out.target.float()
        pred = out.pred
        if self.beta_nll == 0:
            return -out.token_mean(pred.log_prob(target))
        if isinstance(pred, Independent) and isinstance(pred.base_dist, Normal):
            nll = -pred.base_dist.log_prob(target)  # [B, T, d]
            w = pred.base_dist.scale.detach().square().pow(self.beta_nll)
            return out.token_mean((w * nll).sum(-1))
        w = out.family.marginal_variance(pred).detach().mean(-1).pow(self.beta_nll)  # [B, T]
        return -out.token_mean(w * pred.log_prob(target))
