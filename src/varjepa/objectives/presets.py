"""Objective presets: each returns a list of terms (composition, not flags).

``predictive`` (default, DESIGN §2a), ``target_posterior`` (§2b), ``heteroscedastic`` (the
predictor scores z̄ itself: informative, calibrated uncertainty) and ``jepa`` (deterministic
I-JEPA regression), plus the regularised baselines ``vicreg_jepa`` and ``sigreg_jepa`` (``jepa``
with an anti-collapse term on the same encoder). A new formulation registers one more function
here; the training loop does not change.
"""

from __future__ import annotations

from torch import nn

from ..registry import ConfigError, Registry
from ..schedules import Constant, Schedule, build_schedule
from .regularizers import SIGReg, VICRegVarCov
from .terms import ExpectedNLL, KLToPrior, PredictiveNLL, Regression, TargetNLL, Term

OBJECTIVES: Registry[list[Term]] = Registry("objective preset", "model.objective")


@OBJECTIVES.register("predictive")
def predictive(
    prior: nn.Module,
    likelihood: nn.Module,
    beta: Schedule,
    num_samples: int = 1,
    kl_samples: int = 4,
    analytic_nll: bool = True,
) -> list[Term]:
    """``−E_q[log p(z̄|z)] + β(t)·KL(q_φ(z|x_c,ξ) ‖ p(z))``: terms ``nll`` and ``kl``. The expected
    log-likelihood is closed-form where possible (``analytic_nll``), else ``num_samples`` samples."""
    return [
        ExpectedNLL(likelihood, "nll", num_samples=num_samples, analytic=analytic_nll),
        KLToPrior(prior, "kl", weight=beta, source="pred", num_samples=kl_samples),
    ]


@OBJECTIVES.register("target_posterior")
def target_posterior(
    prior: nn.Module, likelihood: nn.Module, beta: Schedule, num_samples: int = 1, kl_samples: int = 4
) -> list[Term]:
    """``E_{z_t~q̄}[−log p_φ(z_t|x_c,ξ)] + β(t)·KL(q̄(z_t|x) ‖ p(z))``: terms ``nll`` and ``kl``."""
    return [
        PredictiveNLL("nll", num_samples=num_samples),
        KLToPrior(prior, "kl", weight=beta, source="target", num_samples=kl_samples),
    ]


@OBJECTIVES.register("jepa")
def jepa(prior: nn.Module, likelihood: nn.Module, beta: Schedule, loss: str = "mse") -> list[Term]:
    """I-JEPA's deterministic regression of the predicted mean onto ``z̄`` (term ``mse``/``smooth_l1``)."""
    return [Regression(loss, loss=loss)]


@OBJECTIVES.register("heteroscedastic")
def heteroscedastic(
    prior: nn.Module,
    likelihood: nn.Module,
    beta: Schedule,
    kl_samples: int = 4,
    beta_nll: float = 1.0,
    mean_weight: float = 0.0,
) -> list[Term]:
    """``−log q_φ(z̄|x_c,ξ) + β(t)·KL(q_φ(z|x_c,ξ) ‖ p(z))``: terms ``nll`` and ``kl``.

    Under ``predictive`` with a Gaussian likelihood of fixed σ the optimal posterior variance is
    ``βσ²/(1+βσ²)`` whatever the input, so its spread cannot rank inputs. Here the predictor's
    density is fitted to the observed target, so its spread is the predicted error: use this preset
    (with a small β, e.g. 0–0.01) when the uncertainty is meant to be used. ``beta_nll`` (default 1)
    reweights the NLL by the detached variance (β-NLL, see :class:`TargetNLL`); 0 is the plain NLL,
    which rewards the encoders for trivially predictable targets (linear probe 0.51 vs 0.86 on
    digits). ``likelihood`` is unused.

    ``mean_weight`` > 0 adds I-JEPA's squared error of the predicted *mean* (term ``mse``,
    averaged over elements, this weight). Its optimum is the conditional mean, which is also the
    NLL's for a well-specified family, so it changes nothing in the limit; in practice it anchors
    the first moment where a multimodal family's NLL leaves it free. A mixture explains rare
    transitions with a broad component, and its narrow components, never responsible for them,
    extrapolate there (README, world models: a gust's momentum).
    """
    if mean_weight < 0:
        raise ConfigError(f"model.objective.mean_weight = {mean_weight}; must be >= 0")
    terms = [
        TargetNLL("nll", beta_nll=beta_nll),
        KLToPrior(prior, "kl", weight=beta, source="pred", num_samples=kl_samples),
    ]
    if mean_weight > 0:
        terms.append(Regression("mse", weight=Constant(mean_weight)))
    return terms


@OBJECTIVES.register("vicreg_jepa")
def vicreg_jepa(
    prior: nn.Module,
    likelihood: nn.Module,
    beta: Schedule,
    loss: str = "mse",
    weight: float | dict = 1.0,
    gamma: float = 1.0,
    cov_weight: float = 0.04,
) -> list[Term]:
    """VICReg-regularised JEPA: ``jepa``'s regression (term ``mse``/``smooth_l1``) plus VICReg's
    variance hinge and covariance penalty on the pooled context embeddings (term ``vicreg``,
    weight ``weight``; global batch under DDP). Use with a ``dirac`` posterior and β = 0."""
    reg = VICRegVarCov(
        weight=build_schedule(weight, "model.objective.weight"), gamma=gamma, cov_weight=cov_weight
    )
    return [Regression(loss, loss=loss), reg]


@OBJECTIVES.register("sigreg_jepa")
def sigreg_jepa(
    prior: nn.Module,
    likelihood: nn.Module,
    beta: Schedule,
    loss: str = "mse",
    weight: float | dict = 0.05,
    num_slices: int = 256,
) -> list[Term]:
    """SIGReg JEPA (LeJEPA): ``jepa``'s regression plus the sliced Epps–Pulley test of the pooled
    context embeddings against N(0, I) (term ``sigreg``, weight ``weight``, LeJEPA's λ = 0.05;
    correct under DDP). Use with a ``dirac`` posterior and β = 0."""
    reg = SIGReg(weight=build_schedule(weight, "model.objective.weight"), num_slices=num_slices)
    return [Regression(loss, loss=loss), reg]


def build_terms(
    objective,
    prior: nn.Module,
    likelihood: nn.Module,
    beta: Schedule,
    regularizers: list | None = None,
) -> list[Term]:
    """The terms of an objective preset (name, ``{name, **options}`` or class_path, from
    :data:`OBJECTIVES`) followed by the anti-collapse ``regularizers`` (from
    :data:`~varjepa.objectives.regularizers.REGULARIZERS`; a ``weight`` may be a schedule).
    ConfigErrors name ``model.objective`` / ``model.regularizers[i]``."""
    from .regularizers import REGULARIZERS

    builder, opts = OBJECTIVES.resolve(objective, "model.objective")
    if builder is None:
        raise ConfigError("model.objective: give a preset name, {name, **options} or a class_path")
    try:
        terms = builder(prior=prior, likelihood=likelihood, beta=beta, **opts)
    except TypeError as e:
        raise ConfigError(f"model.objective = {objective!r}: {e}") from e
    for i, spec in enumerate(regularizers or []):
        builder_r, ropts = REGULARIZERS.resolve(spec, f"model.regularizers[{i}]")
        if "weight" in ropts:
            ropts["weight"] = build_schedule(ropts["weight"], f"model.regularizers[{i}].weight")
        terms.append(builder_r(**ropts) if builder_r is not None else spec)
    return terms
