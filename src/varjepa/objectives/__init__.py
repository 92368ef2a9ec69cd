"""ELBO terms, the shared ELBO, and objective presets."""

from .elbo import ELBO, ELBOResult, NonFiniteLossError, check_finite
from .outputs import JEPAOutputs
from .presets import OBJECTIVES, jepa, predictive, target_posterior
from .terms import ExpectedNLL, KLToPrior, PredictiveNLL, Regression, Term

__all__ = [
    "ELBO",
    "OBJECTIVES",
    "ELBOResult",
    "ExpectedNLL",
    "JEPAOutputs",
    "KLToPrior",
    "NonFiniteLossError",
    "PredictiveNLL",
    "Regression",
    "Term",
    "check_finite",
    "jepa",
    "predictive",
    "target_posterior",
]
