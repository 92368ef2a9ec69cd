"""varjepa: variational Joint-Embedding Predictive Architectures on PyTorch Lightning."""

from .callbacks import EMA, OfflineProbe, PredictionWriter
from .data import CIFAR10DataModule, DigitsDataModule, ImageFolderDataModule, JEPADataModule
from .distributions import LIKELIHOODS, POSTERIORS, PRIORS, kl_divergence
from .masking import MultiBlockMasking
from .module import VarJEPA
from .objectives import ELBO, OBJECTIVES
from .registry import ConfigError
from .schedules import SCHEDULES

__version__ = "0.1.0"

__all__ = [
    "CIFAR10DataModule",
    "ConfigError",
    "DigitsDataModule",
    "ELBO",
    "EMA",
    "ImageFolderDataModule",
    "JEPADataModule",
    "LIKELIHOODS",
    "MultiBlockMasking",
    "OBJECTIVES",
    "OfflineProbe",
    "POSTERIORS",
    "PRIORS",
    "PredictionWriter",
    "SCHEDULES",
    "VarJEPA",
    "kl_divergence",
]
