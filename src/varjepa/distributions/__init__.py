"""Distribution registries: posterior families, priors, likelihoods, and the KL dispatcher."""

from .kl import ANALYTIC, MONTE_CARLO, is_analytic, kl_divergence
from .likelihoods import LIKELIHOODS, Gaussian, GaussianLearned, LaplaceLikelihood
from .posteriors import (
    POSTERIORS,
    AnchoredMixture,
    DiagGaussian,
    Dirac,
    Flow,
    LowRankGaussian,
    Mixture,
    PosteriorFamily,
    bounded_std,
    mixture_moments,
)
from .priors import PRIORS, LearnedDiagonal, MixtureOfGaussians, Prior, StandardNormal

__all__ = [
    "ANALYTIC",
    "MONTE_CARLO",
    "LIKELIHOODS",
    "POSTERIORS",
    "PRIORS",
    "AnchoredMixture",
    "DiagGaussian",
    "Dirac",
    "Flow",
    "Gaussian",
    "GaussianLearned",
    "LaplaceLikelihood",
    "LearnedDiagonal",
    "LowRankGaussian",
    "Mixture",
    "MixtureOfGaussians",
    "PosteriorFamily",
    "Prior",
    "StandardNormal",
    "bounded_std",
    "is_analytic",
    "kl_divergence",
    "mixture_moments",
]
