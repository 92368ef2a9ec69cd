"""Matplotlib figures of the uncertainty evaluation (for TensorBoard and notebooks).

Figures are built with the object-oriented API (``matplotlib.figure.Figure``), never through
pyplot, so no global backend is touched and nothing needs closing; notebooks display them inline.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure


def _axes(figsize=(3.6, 3.4)):
    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


def reliability_diagram(levels: Sequence[float], coverage: Sequence[float]) -> Figure:
    """Empirical coverage of central predictive intervals vs their nominal level ``[L]``."""
    fig, ax = _axes()
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="calibrated")
    ax.plot(levels, coverage, "o-", label="model")
    ax.set(xlabel="nominal level", ylabel="empirical coverage", xlim=(0, 1), ylim=(0, 1))
    ax.set_title("reliability (target latents)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def risk_coverage_figure(coverage: np.ndarray, risk: np.ndarray, label: str = "model") -> Figure:
    """Selective risk vs coverage ``[N]`` (see :func:`varjepa.eval.metrics.risk_coverage_curve`)."""
    fig, ax = _axes()
    ax.plot(coverage, risk, label=label)
    ax.axhline(float(risk[-1]), ls="--", color="grey", lw=1, label="no abstention")
    ax.set(xlabel="coverage", ylabel="selective risk", xlim=(0, 1))
    ax.set_title("risk–coverage")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def uncertainty_histogram(clean: np.ndarray, corrupted: np.ndarray, bins: int = 30) -> Figure:
    """Histograms of per-image uncertainty on clean vs corrupted images ``[N]``."""
    fig, ax = _axes()
    lo = float(min(np.min(clean), np.min(corrupted)))
    hi = float(max(np.max(clean), np.max(corrupted)))
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, bins + 1)
    ax.hist(clean, edges, alpha=0.6, label="clean")
    ax.hist(corrupted, edges, alpha=0.6, label="corrupted")
    ax.set(xlabel="predictive std", ylabel="images")
    ax.ticklabel_format(axis="x", useOffset=False)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title("uncertainty: clean vs corrupted")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def selective_figure(curves: dict[str, dict[float, float]]) -> Figure:
    """Accuracy vs withheld fraction, one line per named curve ``{name: {fraction: accuracy}}``."""
    fig, ax = _axes()
    for name, c in curves.items():
        f = sorted(c)
        ax.plot([100 * x for x in f], [c[x] for x in f], "o-", label=name)
    ax.set(xlabel="most uncertain withheld (%)", ylabel="probe accuracy")
    ax.set_title("selective prediction")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def add_figure(trainer, tag: str, fig: Figure, step: int | None = None) -> None:
    """Log ``fig`` to every TensorBoard logger of ``trainer`` (others are skipped)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    step = trainer.global_step if step is None else step
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure(tag, fig, global_step=step, close=False)
