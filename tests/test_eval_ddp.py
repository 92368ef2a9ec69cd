"""The evaluation callbacks under real DDP (2 CPU processes, gloo): the online probe's weights stay
identical across ranks and every rank logs the same global metrics."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from varjepa import (
    CollapseMonitor,
    DigitsDataModule,
    OnlineKNN,
    OnlineLinearProbe,
    UncertaintyMetrics,
    VarJEPA,
)

TINY = {
    "encoder": {"img_size": 8, "patch_size": 2, "in_chans": 1, "embed_dim": 32, "depth": 1, "num_heads": 2},
    "predictor": {"embed_dim": 16, "depth": 1, "num_heads": 2},
}
KEYS = (
    "online/linear_acc",
    "online/knn_acc",
    "uncertainty/coverage90",
    "uncertainty/aurc",
    "collapse/rankme",
)


class SameOnEveryRank(Callback):
    """Fails the run if the probe head or the logged metrics differ between ranks."""

    def __init__(self, probe: OnlineLinearProbe):
        self.probe = probe

    def on_fit_end(self, trainer, pl_module):
        w = torch.cat([p.detach().flatten() for p in self.probe.head.parameters()])
        gathered = trainer.strategy.all_gather(w)  # [world, P]
        assert gathered.shape[0] == 2
        torch.testing.assert_close(gathered[0], gathered[1])
        vals = torch.tensor([float(trainer.callback_metrics[k]) for k in KEYS])
        g = trainer.strategy.all_gather(vals)
        torch.testing.assert_close(g[0], g[1])
        assert torch.isfinite(vals).all()


@pytest.mark.slow
def test_eval_callbacks_under_ddp(tmp_path):
    model = VarJEPA(
        **TINY, masking={"num_targets": 2, "target_scale": (0.25, 0.4)}, objective="heteroscedastic", beta=0.0
    )
    probe = OnlineLinearProbe()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[
            probe,
            OnlineKNN(),
            UncertaintyMetrics(figures_every_n_epochs=0),
            CollapseMonitor(min_rank=1.0),
        ],
    )
    trainer.callbacks.append(SameOnEveryRank(probe))
    trainer.fit(model, DigitsDataModule(batch_size=64))
    assert trainer.state.finished
