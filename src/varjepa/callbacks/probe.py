"""Offline linear probe on frozen pooled target-encoder features, run at validation time."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from ..eval.probes import extract_features, linear_probe


class OfflineProbe(Callback):
    """Fits scikit-learn logistic regression on train-split features and logs accuracy on
    ``eval_split`` as ``probe/acc`` (and ``probe/acc_<k>pc`` with ``per_class`` labels per class).

    Runs on rank 0 only, every ``every_n_epochs`` validation epochs and at the end of fit (the
    end-of-fit probe reuses a result already computed at the same global step, e.g. by a
    validation epoch that ended the run). Meant for small datasets; the online probe for large
    ones is a separate callback.

    Args:
        every_n_epochs: how often to probe (0: only at the end of fit).
        eval_split: "val" or "test".
        per_class: label budgets of extra low-shot probes.
        at_start: also probe the untrained encoder when a fit starts at step 0, logged as
            ``probe/acc_init`` (and ``probe/acc_<k>pc_init``): the random-feature baseline that the
            learned features must beat (on digits it is high: random ViT features are not useless).
    """

    def __init__(
        self,
        every_n_epochs: int = 5,
        eval_split: str = "val",
        per_class: tuple[int, ...] = (10,),
        at_start: bool = False,
    ):
        super().__init__()
        self.every_n_epochs, self.eval_split, self.per_class = every_n_epochs, eval_split, tuple(per_class)
        self.at_start = at_start
        self.last: dict[str, float] = {}
        self.initial: dict[str, float] = {}
        self._step = -1

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        if self.last and self._step == trainer.global_step:
            return self.last  # same weights: fitting the probes again would give the same numbers
        dm = trainer.datamodule
        xtr, ytr = extract_features(pl_module, dm.plain_dataloader("train"))
        xte, yte = extract_features(pl_module, dm.plain_dataloader(self.eval_split))
        out = {"probe/acc": linear_probe(xtr, ytr, xte, yte)}
        for k in self.per_class:
            out[f"probe/acc_{k}pc"] = linear_probe(xtr, ytr, xte, yte, per_class=k)
        self.last, self._step = out, trainer.global_step
        return out

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not (self.at_start and trainer.global_step == 0 and trainer.is_global_zero):
            return
        self.initial = {f"{k}_init": v for k, v in self._run(trainer, pl_module).items()}
        for logger in trainer.loggers:
            logger.log_metrics(self.initial, step=0)
        rank_zero_info(
            "probe of the untrained encoder on '{}': {}".format(
                self.eval_split, ", ".join(f"{k}={v:.4f}" for k, v in self.initial.items())
            )
        )

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.every_n_epochs:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        pl_module.log_dict(self._run(trainer, pl_module), rank_zero_only=True, sync_dist=False)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            out = self._run(trainer, pl_module)
            for logger in trainer.loggers:
                logger.log_metrics({f"{k}_final": v for k, v in out.items()}, step=trainer.global_step)
            rank_zero_info(
                "final probe on '{}': {}".format(
                    self.eval_split, ", ".join(f"{k}={v:.4f}" for k, v in out.items())
                )
            )
