"""varjepa: variational Joint-Embedding Predictive Architectures on PyTorch Lightning."""

from .callbacks import (
    EMA,
    CollapseMonitor,
    CorruptionMonitor,
    HParamsSummary,
    NoiseAugmentation,
    OfflineProbe,
    OnlineKNN,
    OnlineLinearProbe,
    PredictionWriter,
    SigtermCheckpoint,
    StepTimer,
    TorchThreads,
    UncertaintyMetrics,
)
from .data import CIFAR10DataModule, DigitsDataModule, ImageFolderDataModule, JEPADataModule
from .distributed import destroy_process_group_at_exit
from .distributions import LIKELIHOODS, POSTERIORS, PRIORS, kl_divergence
from .masking import MultiBlockMasking
from .module import VarJEPA
from .objectives import ELBO, OBJECTIVES
from .registry import ConfigError
from .schedules import SCHEDULES
from .tabular import (
    FeatureMasking,
    SimulationDataModule,
    TabularDataError,
    TabularDataModule,
    TabularProbe,
    VarTJEPA,
)
from .worldmodel import LatentWorldModel, TrajectoryDataModule, WindyPointMass

__version__ = "0.1.0"

# a gloo process group left alive at exit can abort the process (varjepa.distributed)
destroy_process_group_at_exit()

__all__ = [
    "CIFAR10DataModule",
    "CollapseMonitor",
    "CorruptionMonitor",
    "ConfigError",
    "DigitsDataModule",
    "ELBO",
    "EMA",
    "FeatureMasking",
    "HParamsSummary",
    "ImageFolderDataModule",
    "JEPADataModule",
    "LatentWorldModel",
    "LIKELIHOODS",
    "MultiBlockMasking",
    "NoiseAugmentation",
    "OBJECTIVES",
    "OfflineProbe",
    "OnlineKNN",
    "OnlineLinearProbe",
    "POSTERIORS",
    "PRIORS",
    "PredictionWriter",
    "SCHEDULES",
    "SigtermCheckpoint",
    "SimulationDataModule",
    "StepTimer",
    "TabularDataError",
    "TabularDataModule",
    "TabularProbe",
    "TorchThreads",
    "TrajectoryDataModule",
    "UncertaintyMetrics",
    "VarJEPA",
    "VarTJEPA",
    "WindyPointMass",
    "kl_divergence",
]
