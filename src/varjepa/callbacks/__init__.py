"""Lightning callbacks: EMA target update, prediction writer, offline and online probes, monitors."""

from .augment import NoiseAugmentation
from .ema import EMA, ema_update
from .monitors import CollapseMonitor, CorruptionMonitor, HParamsSummary, UncertaintyMetrics
from .online import OnlineKNN, OnlineLinearProbe
from .probe import OfflineProbe
from .sigterm import SigtermCheckpoint
from .threads import TorchThreads
from .timing import StepTimer
from .writer import PredictionWriter

__all__ = [
    "EMA",
    "CollapseMonitor",
    "CorruptionMonitor",
    "HParamsSummary",
    "NoiseAugmentation",
    "OfflineProbe",
    "OnlineKNN",
    "OnlineLinearProbe",
    "PredictionWriter",
    "SigtermCheckpoint",
    "StepTimer",
    "TorchThreads",
    "UncertaintyMetrics",
    "ema_update",
]
