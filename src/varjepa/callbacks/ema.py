"""EMA update of the JEPA target encoder (I-JEPA teacher)."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from ..registry import ConfigError
from ..schedules import Schedule, build_schedule


@torch.no_grad()
def ema_update(pairs: list[tuple[nn.Module, nn.Module]], momentum: float) -> None:
    """``target ← m·target + (1 − m)·online`` for every parameter, with foreach ops; buffers are copied.

    Args:
        pairs: ``(online, target)`` modules with identical parameter structure.
        momentum: m in [0, 1].
    """
    online, target = [], []
    for o, t in pairs:
        for po, pt in zip(o.parameters(), t.parameters(), strict=True):
            online.append(po.detach())
            target.append(pt)
        for bo, bt in zip(o.buffers(), t.buffers(), strict=True):
            bt.copy_(bo)
    if target:
        torch._foreach_lerp_(target, online, 1.0 - momentum)


class EMA(Callback):
    """Updates ``pl_module.momentum_pairs()`` after each optimizer step.

    Momentum is a pure function of the step (``momentum(step, total)``), evaluated with the
    index of the optimizer step just taken, so a resumed run reproduces it exactly. The update
    runs only when ``trainer.global_step`` advanced (safe under gradient accumulation). The
    target is a plain submodule of the model, so checkpoints hold it.

    Args:
        momentum: a schedule spec; default I-JEPA's linear 0.996 → 1.0.
    """

    def __init__(self, momentum: float | str | dict | Schedule | None = None):
        super().__init__()
        spec = momentum if momentum is not None else {"name": "linear", "start": 0.996, "end": 1.0}
        self.momentum = build_schedule(spec, "model.ema")
        for s in range(0, 1001):
            v = self.momentum(s, 1000)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(
                    f"model.ema = {self.momentum}: momentum {v} at step {s} of 1000 is outside [0, 1]"
                )
        self._last_step = -1
        self.last_momentum: float | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not hasattr(pl_module, "momentum_pairs"):
            raise TypeError(f"EMA callback: {type(pl_module).__name__} has no momentum_pairs()")
        self._last_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx
    ) -> None:
        step = trainer.global_step
        if step <= self._last_step:
            return
        self._last_step = step
        m = self.momentum(step - 1, max(int(trainer.estimated_stepping_batches), 1))
        if not 0.0 <= m <= 1.0:
            raise ConfigError(
                f"model.ema = {self.momentum}: momentum {m} at step {step - 1} is outside [0, 1]"
            )
        ema_update(pl_module.momentum_pairs(), m)
        self.last_momentum = m
        pl_module.log("train/ema_momentum", m, on_step=True, on_epoch=False)
