"""Save a checkpoint when the job is asked to stop (SIGTERM: SLURM pre-emption, ``kill``, torchrun)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException


class SigtermCheckpoint(Checkpoint):
    """On SIGTERM, finish the current training step, save ``<dirpath>/sigterm.ckpt``, print its path
    and stop (exit status 0).

    Lightning's own SIGTERM handler notes the signal; this callback saves at the end of the
    training step, where a checkpoint resumes exactly, then Lightning stops the run. Being a
    ``Checkpoint`` callback, Lightning runs it after all other callbacks (the EMA update, online
    probes), at the same point as ModelCheckpoint. Under DDP any rank's signal stops all
    ranks at the same step. The file is written to a temporary name and renamed, so a second
    signal never leaves a half-written ``sigterm.ckpt``.

    Args:
        dirpath: where to save; default the ModelCheckpoint's folder, else ``<log_dir>/checkpoints``.
        filename: file name of the checkpoint.
    """

    #: Lightning reads this from the first Checkpoint callback for ``ckpt_path="best"``
    best_model_path = ""

    def __init__(self, dirpath: str | None = None, filename: str = "sigterm.ckpt"):
        super().__init__()
        self.dirpath, self.filename = dirpath, filename
        self.path: Path | None = None

    def _dir(self, trainer: L.Trainer) -> Path:
        if self.dirpath:
            return Path(self.dirpath)
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath:
                return Path(cb.dirpath)
        return Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"

    def _save(self, trainer: L.Trainer, where: str) -> None:
        path = self._dir(trainer) / self.filename
        tmp = path.with_name(path.name + ".tmp")
        if trainer.is_global_zero:
            path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, path)
            print(
                f"varjepa: SIGTERM received; saved a checkpoint {where} (global step {trainer.global_step}) to "
                f"{path}\nvarjepa: resume with the same command plus --ckpt_path {path}",
                file=sys.stderr,
                flush=True,
            )
        self.path = path

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        flag = bool(trainer.received_sigterm)
        if trainer.world_size > 1:
            flag = trainer.strategy.reduce_boolean_decision(flag, all=False)
            if flag:  # make every rank stop at this step (Lightning checks the local flag)
                trainer._signal_connector.received_sigterm = True
        if flag and self.path is None:
            self._save(trainer, "after the training step")

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        # the signal arrived outside a training step (e.g. during validation): save what there is
        if (
            isinstance(exception, SIGTERMException)
            and self.path is None
            and trainer.world_size == 1
            and trainer.state.fn == "fit"
        ):
            self._save(trainer, "outside a training step (resume replays the interrupted validation)")
