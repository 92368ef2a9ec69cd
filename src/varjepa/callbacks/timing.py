"""Training-step timing, logged to TensorBoard (read back by ``varjepa ablate``)."""

from __future__ import annotations

import statistics
import time

import lightning as L
from lightning.pytorch.callbacks import Callback


class StepTimer(Callback):
    """Wall time of each training step, from ``on_train_batch_start`` to ``on_train_batch_end``
    (forward, backward, optimizer step; not data loading or validation).

    Logs ``time/step_ms`` (median of the steps since the previous logging step) at the Trainer's
    logging cadence and, at the end of fit, ``time/step_ms_final`` (median over the run after the
    first ``skip`` steps, which include one-off warm-up costs) and ``time/fit_s_final`` (wall time
    from the start of fit to its end, validation and end-of-fit callbacks that ran earlier included).
    Rank 0's times under DDP.

    Args:
        skip: number of initial steps left out of the final median.
    """

    def __init__(self, skip: int = 5):
        super().__init__()
        self.skip = skip
        self.times_ms: list[float] = []
        self._window: list[float] = []
        self._t0: float | None = None
        self._fit_t0: float | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_t0 = time.perf_counter()
        self.times_ms, self._window = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._t0 is None:
            return
        ms = 1000.0 * (time.perf_counter() - self._t0)
        self._t0 = None
        self.times_ms.append(ms)
        self._window.append(ms)
        # on the steps the logger writes: the median of the steps since the previous write
        conn = getattr(trainer, "_logger_connector", None)
        if conn is None or conn.should_update_logs:
            pl_module.log("time/step_ms", statistics.median(self._window), on_step=True, rank_zero_only=True)
            self._window = []

    def median_ms(self) -> float:
        """Median step time (ms) over the run, after the first ``skip`` steps (all steps if fewer)."""
        ts = self.times_ms[self.skip :] or self.times_ms
        return statistics.median(ts) if ts else float("nan")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not self.times_ms:
            return
        final = {"time/step_ms_final": self.median_ms()}
        if self._fit_t0 is not None:
            final["time/fit_s_final"] = time.perf_counter() - self._fit_t0
        for logger in trainer.loggers:
            logger.log_metrics(final, step=trainer.global_step)
