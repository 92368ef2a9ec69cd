"""Lightning callbacks: EMA target update, prediction writer, offline probe."""

from .ema import EMA, ema_update
from .probe import OfflineProbe
from .writer import PredictionWriter

__all__ = ["EMA", "OfflineProbe", "PredictionWriter", "ema_update"]
