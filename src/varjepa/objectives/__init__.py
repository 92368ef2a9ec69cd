"""ELBO terms, the shared ELBO, and objective presets."""

from . import coupled  # noqa: F401  (registers the "coupled" preset)
from .elbo import ELBO, ELBOResult, NonFiniteLossError, check_finite
from .outputs import JEPAOutputs
from .presets import (
    OBJECTIVES,
    build_terms,
    heteroscedastic,
    jepa,
    predictive,
    sigreg_jepa,
    target_posterior,
    vicreg_jepa,
)
from .terms import ExpectedNLL, KLToPrior, PredictiveNLL, Regression, TargetNLL, Term

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
    "TargetNLL",
    "Term",
    "build_terms",
    "check_finite",
    "heteroscedastic",
    "jepa",
    "predictive",
    "sigreg_jepa",
    "target_posterior",
    "vicreg_jepa",
]
