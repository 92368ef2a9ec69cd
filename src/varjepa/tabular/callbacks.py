"""Callbacks for Var-T-JEPA runs."""

from __future__ import annotations

import lightning as L

from ..callbacks.probe import OfflineProbe
from ..eval.probes import linear_probe
from .module import extract


class TabularProbe(OfflineProbe):
    """:class:`~varjepa.OfflineProbe` for :class:`VarTJEPA`: logistic regression on frozen row
    embeddings (train split) scored on ``eval_split``; logs ``probe/acc`` (and ``probe/acc_<k>pc``).
    For the simulation study the label is the latent mixture component of ``s_x``.

    Args:
        every_n_epochs: how often to probe (0: only at the end of fit).
        eval_split: "val" or "test".
        per_class: label budgets of extra low-shot probes (default none).
    """

    def __init__(self, every_n_epochs: int = 5, eval_split: str = "val", per_class: tuple[int, ...] = ()):
        super().__init__(every_n_epochs, eval_split, per_class)

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        dm = trainer.datamodule
        tr = extract(pl_module, dm.plain_dataloader("train"), uncertainty=False)
        te = extract(pl_module, dm.plain_dataloader(self.eval_split), uncertainty=False)
        args = (tr["embedding"], tr["label"], te["embedding"], te["label"])
        out = {"probe/acc": linear_probe(*args)}
        for k in self.per_class:
            out[f"probe/acc_{k}pc"] = linear_probe(*args, per_class=k)
        self.last = out
        return out
