"""Writes ``varjepa predict`` outputs to ``predictions.npz`` in the run's log dir."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info


class PredictionWriter(BasePredictionWriter):
    """Concatenates every predict batch's dict of tensors and saves them as ``predictions.npz``.

    Keys are those ``VarJEPA.predict_step`` returns (``embedding`` [N, E] with E the model's
    ``embedding_dim``, ``uncertainty`` [N], ``surprise`` [N], ``label`` [N], ``index`` [N], ...). Under DDP each rank writes ``predictions_rank<k>.npz``.

    Args:
        output_dir: where to write; default the trainer's log dir.
        uncertainty_draws / uncertainty_seed: the fixed mask protocol of ``uncertainty`` and
            ``surprise`` (masks per image and their seed).
    """

    def __init__(self, output_dir: str | None = None, uncertainty_draws: int = 8, uncertainty_seed: int = 0):
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir
        self.uncertainty_draws, self.uncertainty_seed = uncertainty_draws, uncertainty_seed
        self.path: Path | None = None

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from ..eval.uncertainty import MaskProtocol

        pl_module.uncertainty_protocol = MaskProtocol(self.uncertainty_draws, self.uncertainty_seed)

    def write_on_epoch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, predictions, batch_indices
    ) -> None:
        if predictions and isinstance(predictions[0], list):  # several dataloaders
            predictions = [p for dl in predictions for p in dl]
        keys = predictions[0].keys()
        arrays = {k: torch.cat([p[k] for p in predictions]).cpu().numpy() for k in keys}
        out = Path(self.output_dir or trainer.log_dir or ".")
        out.mkdir(parents=True, exist_ok=True)
        name = "predictions.npz" if trainer.world_size == 1 else f"predictions_rank{trainer.global_rank}.npz"
        self.path = out / name
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(self.path)
        rank_zero_info(
            f"predictions ({', '.join(f'{k} {arrays[k].shape}' for k in keys)}) written to {self.path}"
        )
