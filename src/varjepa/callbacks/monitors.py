"""Validation-time monitors: uncertainty metrics of the predictive distribution, collapse
statistics, the corruption protocol with selective prediction, and an HParams summary.

All scalar metrics are torchmetrics states (synced across ranks in ``compute()``); figures go
to every TensorBoard logger of the trainer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torchmetrics import SpearmanCorrCoef

from ..eval import plots
from ..eval.corruption import LAMBDA, corruption_protocol, split_tensors
from ..eval.metrics import (
    AURC,
    ActiveUnits,
    EmbeddingStats,
    EnergyScore,
    GaussianCRPS,
    GaussianNLL,
    IntervalCoverage,
)
from ..eval.probes import extract_features, fit_linear_probe
from ..eval.uncertainty import MaskProtocol, is_gaussian, selective_accuracy
from .online import FeatureTap, _acquire_tap, _release_tap, pooled_features

RELIABILITY_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


@torch.no_grad()
def validation_outputs(pl_module, batch: dict[str, Tensor]):
    """``pl_module(batch)`` for a masked validation batch, computed once per batch and shared by
    the monitors (cached on the module, keyed by the batch's image tensor)."""
    cache = getattr(pl_module, "_varjepa_monitor_cache", None)
    if cache is not None and cache[0] is batch["image"]:
        return cache[1]
    out = pl_module(batch)
    pl_module._varjepa_monitor_cache = (batch["image"], out)
    return out


def _log_metrics(pl_module, values: dict[str, float]) -> None:
    for k, v in values.items():
        if math.isfinite(v):
            pl_module.log(k, v, sync_dist=True)


class UncertaintyMetrics(Callback):
    """Calibration of the predictive distribution on held-out target latents (the validation
    batches' seeded masks), logged each validation epoch:

    * ``uncertainty/nll``: Gaussian NLL per latent dimension (moment-matched for mixtures/flows);
    * ``uncertainty/crps`` (closed form, Gaussian families) or ``uncertainty/energy_score``
      (per token, from ``num_samples`` draws, other families);
    * ``uncertainty/coverage50``, ``uncertainty/coverage90``: central-interval coverage
      (Gaussian intervals, or sample quantiles for other families);
    * ``uncertainty/spearman_std_err``: Spearman between a token's predicted std (mean marginal
      std) and its actual RMS error;
    * ``uncertainty/aurc``: area under the risk–coverage curve, risk = a token's squared error,
      ranked by predicted std.

    Figures (TensorBoard): ``uncertainty/reliability`` (coverage vs nominal level at
    ``reliability_levels``) and ``uncertainty/risk_coverage``. Skipped for a Dirac posterior.

    Args:
        num_samples: draws per token for non-Gaussian families.
        reliability_levels: nominal levels of the reliability diagram (must include 0.5 and 0.9).
        figures_every_n_epochs: how often to draw figures (0: never).
    """

    def __init__(
        self,
        num_samples: int = 64,
        reliability_levels: Sequence[float] = RELIABILITY_LEVELS,
        figures_every_n_epochs: int = 1,
    ):
        super().__init__()
        levels = sorted(set(float(x) for x in reliability_levels) | {0.5, 0.9})
        self.levels = levels
        self.num_samples = num_samples
        self.figures_every_n_epochs = figures_every_n_epochs
        self.nll, self.crps, self.energy = GaussianNLL(), GaussianCRPS(), EnergyScore()
        self.coverage = IntervalCoverage(levels)
        self.spearman, self.aurc = SpearmanCorrCoef(), AURC()
        self.last: dict[str, float] = {}
        self._told = False

    def _metrics(self):
        return (self.nll, self.crps, self.energy, self.coverage, self.spearman, self.aurc)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        for m in self._metrics():
            m.to(pl_module.device)
            m.reset()

    @torch.no_grad()
    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if not pl_module.family.stochastic:
            if not self._told:
                rank_zero_info("UncertaintyMetrics: a Dirac posterior has no spread; nothing to measure")
                self._told = True
            return
        update_uncertainty_metrics(self, validation_outputs(pl_module, batch))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self.aurc.update_count == 0:
            return
        cov = self.coverage.compute().cpu().numpy()
        values = {
            "uncertainty/nll": float(self.nll.compute()),
            "uncertainty/coverage50": float(cov[self.levels.index(0.5)]),
            "uncertainty/coverage90": float(cov[self.levels.index(0.9)]),
            "uncertainty/spearman_std_err": float(self.spearman.compute()),
            "uncertainty/aurc": float(self.aurc.compute()),
        }
        if self.crps.update_count:
            values["uncertainty/crps"] = float(self.crps.compute())
        if self.energy.update_count:
            values["uncertainty/energy_score"] = float(self.energy.compute())
        self.last = values
        self.reliability = (self.levels, cov.tolist())
        if trainer.sanity_checking:
            return
        _log_metrics(pl_module, values)
        every = self.figures_every_n_epochs
        if every and trainer.is_global_zero and (trainer.current_epoch + 1) % every == 0:
            plots.add_figure(trainer, "uncertainty/reliability", plots.reliability_diagram(self.levels, cov))
            coverage, risk = self.aurc.curve()
            plots.add_figure(
                trainer,
                "uncertainty/risk_coverage",
                plots.risk_coverage_figure(coverage.cpu().numpy(), risk.cpu().numpy()),
            )


@torch.no_grad()
def update_uncertainty_metrics(cb: UncertaintyMetrics, out) -> None:
    """Feed one batch of :class:`JEPAOutputs` to the metrics of ``cb``."""
    fam, pred, target = out.family, out.pred, out.target.float()
    mean, var = fam.mean(pred).float(), fam.marginal_variance(pred).float()
    std = var.sqrt()
    cb.nll.update(mean, var, target)
    if is_gaussian(pred):
        cb.crps.update(mean, std, target)
        cb.coverage.update(target, mean=mean, std=std)
    else:
        samples = pred.sample((cb.num_samples,)).float()
        cb.energy.update(samples, target)
        cb.coverage.update(target, samples=samples)
    tok_std = std.mean(-1).flatten()
    sq_err = (target - mean).square().mean(-1).flatten()
    cb.spearman.update(tok_std, sq_err.sqrt())
    cb.aurc.update(tok_std, sq_err)


def _prior_marginals(pl_module) -> tuple[Tensor, Tensor]:
    """Per-dimension mean and variance ``[D]`` of the prior of the first KL term (else N(0, I))."""
    for t in pl_module.elbo.terms:
        prior = getattr(t, "prior", None)
        if prior is not None:
            p = prior()
            return p.mean.float().reshape(-1), p.variance.float().reshape(-1)
    d = pl_module.latent_dim
    return torch.zeros(d, device=pl_module.device), torch.ones(d, device=pl_module.device)


class CollapseMonitor(Callback):
    """Collapse monitors on the validation split, each validation epoch:

    * ``collapse/rankme``: RankMe effective rank of the pooled target-encoder embeddings;
    * ``collapse/std_mean``, ``collapse/std_min``, ``collapse/live_dims``: per-dimension std of the
      embeddings (and the histogram ``collapse/dim_std`` in TensorBoard);
    * ``collapse/active_units``: latent dimensions whose KL from the predictive distribution to
      the prior exceeds ``kl_threshold`` nats (stochastic posteriors).

    A warning is logged when the effective rank falls below ``min_rank`` (absolute if ≥ 1, else a
    fraction of ``min(N, D)``).
    """

    def __init__(self, min_rank: float = 0.1, dead_std: float = 1e-2, kl_threshold: float = 0.01):
        super().__init__()
        self.min_rank, self.dead_std, self.kl_threshold = min_rank, dead_std, kl_threshold
        self.stats = EmbeddingStats(dead_std=dead_std)
        self.active: ActiveUnits | None = None
        self.tap: FeatureTap | None = None
        self.last: dict[str, float] = {}
        self.warnings = 0

    def setup(self, trainer, pl_module, stage) -> None:
        self.tap = _acquire_tap(pl_module)
        if self.active is None:
            self.active = ActiveUnits(pl_module.latent_dim, self.kl_threshold)

    def teardown(self, trainer, pl_module, stage) -> None:
        _release_tap(pl_module)
        self.tap = None

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        for m in (self.stats, self.active):
            m.to(pl_module.device)
            m.reset()

    @torch.no_grad()
    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self.stats.update(pooled_features(pl_module, batch, self.tap))
        if pl_module.family.stochastic and "context_idx" in batch:
            out = validation_outputs(pl_module, batch)
            pm, pv = _prior_marginals(pl_module)
            self.active.update(out.family.mean(out.pred), out.family.marginal_variance(out.pred), pm, pv)

    def threshold(self, n: int, d: int) -> float:
        """The effective-rank threshold for ``n`` embeddings of size ``d``."""
        return self.min_rank if self.min_rank >= 1 else self.min_rank * min(n, d)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self.stats.update_count == 0:
            return
        s = self.stats.compute()
        values = {
            "collapse/rankme": float(s["rankme"]),
            "collapse/std_mean": float(s["std_mean"]),
            "collapse/std_min": float(s["std_min"]),
            "collapse/live_dims": float(s["live_dims"]),
        }
        if self.active.update_count:
            values["collapse/active_units"] = float(self.active.compute()["active_units"])
        self.last = values
        if trainer.sanity_checking:
            return
        _log_metrics(pl_module, values)
        thr = self.threshold(int(s["n"]), pl_module.embedding_dim)
        if values["collapse/rankme"] < thr:
            self.warnings += 1
            rank_zero_warn(
                f"CollapseMonitor: effective rank (RankMe) of the target embeddings is "
                f"{values['collapse/rankme']:.2f} < {thr:.2f} at step {trainer.global_step}: the "
                "representation is collapsing (consider an anti-collapse regulariser, a slower EMA, "
                "or a lower learning rate)"
            )
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_histogram(
                        "collapse/dim_std", s["std"].cpu(), global_step=trainer.global_step
                    )


class CorruptionMonitor(Callback):
    """The DESIGN §6 corruption protocol and the selective-prediction curve on a split of the
    datamodule (digits by default), every ``every_n_epochs`` validation epochs and at the end of fit.

    Logs ``corruption/spearman`` (uncertainty vs u), ``corruption/auroc`` (detecting u ≥ q75),
    the same for the predictive surprise (``corruption/surprise_{spearman,auroc}``, families with a
    density),
    ``selective/{clean,corrupted}_acc_w<p>`` (accuracy of a logistic-regression probe on clean
    training features when the most uncertain p % are withheld; the paper's Table 2 protocol), and
    the figures ``corruption/uncertainty_hist`` and ``selective/curve``. Every rank computes the
    same deterministic numbers (the protocol is seeded), so nothing is synced.

    Args:
        every_n_epochs: 0 runs only at the end of fit.
        split: the split to corrupt.
        lam / seed / num_draws: the protocol's λ, seed and masks per image.
        withheld: withheld fractions of the selective-prediction curve.
        max_images: cap on the images of the split used.
        probe_C: inverse regularisation of the selective-prediction probe (``"cv"``: 5-fold
            cross-validation, slower).
    """

    def __init__(
        self,
        every_n_epochs: int = 0,
        split: str = "test",
        lam: float = LAMBDA,
        seed: int = 0,
        num_draws: int = 8,
        withheld: Sequence[float] = (0.0, 0.1, 0.2, 0.5),
        max_images: int = 2000,
        probe_C: float | str = 1.0,
    ):
        super().__init__()
        self.every_n_epochs, self.split, self.lam, self.seed = every_n_epochs, split, lam, seed
        self.probe_C = probe_C
        self.protocol = MaskProtocol(num_draws, seed)
        self.withheld = tuple(withheld)
        self.max_images = max_images
        self.last: dict[str, float] = {}
        self.result: dict[str, Any] = {}
        self._step = -1

    def run(self, trainer, pl_module) -> dict[str, float]:
        """Run the protocol now (cached per global step); returns the scalar results."""
        if self._step == trainer.global_step and self.last:
            return self.last
        images, labels = split_tensors(trainer.datamodule, self.split, self.max_images)
        res = corruption_protocol(pl_module, images, self.seed, self.lam, self.protocol)
        dm = trainer.datamodule
        xtr, ytr = extract_features(pl_module, dm.plain_dataloader("train"))
        probe = fit_linear_probe(xtr, ytr, C=self.probe_C)
        y = labels.numpy()
        dev = pl_module.device
        was = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            f_clean = torch.cat([pl_module.embed(x.to(dev)).float().cpu() for x in images.split(256)]).numpy()
            xc = torch.as_tensor(res["corrupted"])
            f_corr = torch.cat([pl_module.embed(x.to(dev)).float().cpu() for x in xc.split(256)]).numpy()
        pl_module.train(was)
        curves = {
            "clean": selective_accuracy(probe.predict(f_clean) == y, res["clean_uncertainty"], self.withheld),
            "corrupted": selective_accuracy(probe.predict(f_corr) == y, res["uncertainty"], self.withheld),
        }
        values = {"corruption/spearman": res["spearman"], "corruption/auroc": res["auroc"]}
        for k in ("surprise_spearman", "surprise_auroc"):
            if k in res:
                values[f"corruption/{k}"] = res[k]
        for name, c in curves.items():
            for f, acc in c.items():
                values[f"selective/{name}_acc_w{round(100 * f)}"] = acc
        self.result = {**res, "curves": curves}
        self.last, self._step = values, trainer.global_step
        if trainer.is_global_zero:
            plots.add_figure(
                trainer,
                "corruption/uncertainty_hist",
                plots.uncertainty_histogram(res["clean_uncertainty"], res["uncertainty"]),
            )
            plots.add_figure(trainer, "selective/curve", plots.selective_figure(curves))
        return values

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not self.every_n_epochs:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        _log_metrics(pl_module, self.run(trainer, pl_module))

    def on_fit_end(self, trainer, pl_module) -> None:
        values = self.run(trainer, pl_module)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({f"{k}_final": v for k, v in values.items()}, step=trainer.global_step)
        rank_zero_info("corruption protocol: " + ", ".join(f"{k}={v:.4f}" for k, v in values.items()))

    def final_metrics(self, trainer, pl_module) -> dict[str, float]:
        """The end-of-fit results (computed now if they are not yet)."""
        return self.run(trainer, pl_module)


def _flat_hparams(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_hparams(v, f"{key}."))
        elif isinstance(v, bool | int | float | str):
            out[key] = v
        else:
            out[key] = str(v)
    return out


class HParamsSummary(Callback):
    """At the end of fit, writes the model's hyper-parameters with the run's final metrics to
    TensorBoard's HParams dashboard (a ``hparams`` sub-run of the log dir, PyTorch's
    ``add_hparams`` layout). Metrics: every logged scalar whose name starts with one of
    ``prefixes``, plus the end-of-fit results of callbacks that provide ``final_metrics`` (the
    corruption protocol) or ``last`` (probes)."""

    def __init__(
        self,
        prefixes: Sequence[str] = (
            "val/loss",
            "online/",
            "uncertainty/",
            "collapse/",
            "corruption/",
            "selective/",
            "probe/",
        ),
    ):
        super().__init__()
        self.prefixes = tuple(prefixes)
        self.metrics: dict[str, float] = {}

    def collect(self, trainer, pl_module) -> dict[str, float]:
        """The final metrics of the run, ``{name: value}``."""
        out: dict[str, float] = {}
        for k, v in trainer.callback_metrics.items():
            if k.startswith(self.prefixes) and not k.startswith("online/linear_loss"):
                out[k] = float(v)
        for cb in trainer.callbacks:
            if hasattr(cb, "final_metrics"):
                out.update(cb.final_metrics(trainer, pl_module))
            elif isinstance(getattr(cb, "last", None), dict):
                out.update({k: float(v) for k, v in cb.last.items() if isinstance(v, int | float)})
        return {k: v for k, v in out.items() if math.isfinite(v)}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.metrics = self.collect(trainer, pl_module)
        if not trainer.is_global_zero:
            return
        params = _flat_hparams(dict(pl_module.hparams))
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_hparams(
                    params, {f"hp/{k}": v for k, v in self.metrics.items()}, run_name="hparams"
                )
                logger.experiment.flush()
