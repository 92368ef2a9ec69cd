"""The optimiser every varjepa module uses: AdamW with linear warm-up and cosine decay per step."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .schedules import warmup_cosine


def adamw_warmup_cosine(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    total_steps: int,
    warmup: float,
    final_lr_ratio: float,
    no_decay_suffixes: tuple[str, ...] = (),
) -> dict:
    """Lightning's ``configure_optimizers`` dict: AdamW with two parameter groups (no weight decay on
    biases, norms — every parameter with ``ndim <= 1`` — and names ending in ``no_decay_suffixes``)
    and a per-step LR multiplier :func:`~varjepa.schedules.warmup_cosine` (``warmup`` a fraction of
    ``total_steps`` if < 1, else steps; decay to ``final_lr_ratio · lr``). Frozen parameters
    (``requires_grad=False``, e.g. an EMA target) are left out."""
    decay, no_decay = [], []
    for name, p in named_parameters:
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(no_decay_suffixes) else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=tuple(betas),
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, total_steps, warmup, final_lr_ratio)
    )
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
