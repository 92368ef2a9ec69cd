"""Worker for tests/test_ddp.py: tiny VarJEPA runs under Lightning's ``ddp`` strategy on CPU/gloo.

Launched as ``torchrun --nproc_per_node 2 tests/ddp_worker.py OUT_DIR`` (each rank writes
``OUT_DIR/<scenario>_rank<r>.pt``); the single-process reference run of scenario "fixed" is
:func:`run_fixed` with ``devices=1`` (the test imports this file).

Scenarios:

* ``fixed``: 64 digits images with masks fixed per sample, so that a 2 × 16 DDP step and a
  1 × 32 single-process step see exactly the same global batch (Lightning's DistributedSampler
  gives rank r the samples r, r + 2, ...). Includes a SIGReg term (global-batch statistics
  through autograd-aware collectives) and validation with synced epoch metrics.
* ``digits``: the real DigitsDataModule (resumable sampler sharding by rank, keyed masks), the
  EMA teacher, ``nonfinite: skip`` with a NaN image injected on rank 1 only.
* ``learned_prior``: a learned prior while β warms up from 0.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Dataset, DistributedSampler

import varjepa
from varjepa.data import digits_splits

TINY_ENCODER = {"img_size": 8, "patch_size": 2, "in_chans": 1, "embed_dim": 32, "depth": 1, "num_heads": 2}
TINY_PREDICTOR = {"embed_dim": 16, "depth": 1, "num_heads": 2}
GLOBAL_BATCH = 32
STEPS = 4


class FixedMaskSet(Dataset):
    """The first ``n`` digits of a split with masks sampled once for all of them (fixed per sample)."""

    def __init__(self, split: str, n: int, seed: int):
        x, y = digits_splits()[split]
        self.x = torch.from_numpy(x[:n]).unsqueeze(1)
        self.y = torch.from_numpy(y[:n])
        g = torch.Generator().manual_seed(seed)
        self.ctx, self.tgt = varjepa.MultiBlockMasking()(n, (4, 4), g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "image": self.x[i],
            "label": self.y[i],
            "index": torch.tensor(i),
            "context_idx": self.ctx[i],
            "target_idx": self.tgt[i],
        }


class FixedMaskData(L.LightningDataModule):
    def __init__(self, batch_size: int):
        super().__init__()
        self.batch_size = batch_size
        self.train_set = FixedMaskSet("train", 64, seed=1)
        self.val_set = FixedMaskSet("val", 32, seed=2)

    def train_dataloader(self):
        # unshuffled sharding: rank r takes samples r, r + R, ..., so a global batch is 32 consecutive samples
        tr = self.trainer
        sampler = None
        if tr is not None and tr.world_size > 1:
            sampler = DistributedSampler(self.train_set, tr.world_size, tr.global_rank, shuffle=False)
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False)


class Record(Callback):
    """Per training step: the local loss, the batch's dataset indices, the lr, the target encoder's
    checksum; and the skipped-batch counter."""

    def __init__(self, nan_on_rank: int | None = None, nan_at_step: int = -1):
        self.losses: list[float | None] = []
        self.indices: list[list[int]] = []
        self.target_sums: list[float] = []
        self.nan_on_rank, self.nan_at_step = nan_on_rank, nan_at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == self.nan_on_rank and trainer.global_step == self.nan_at_step:
            batch["image"][0, 0, 0, 0] = float("nan")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(None if loss is None else float(loss))
        self.indices.append(batch["index"].tolist())
        self.target_sums.append(float(sum(p.double().sum() for p in pl_module.target_encoder.parameters())))


def _trainer(devices: int, rec: Record, **kw) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_steps=STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        callbacks=[rec],
        **kw,
    )


def _metrics(trainer: L.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def run_fixed(devices: int) -> dict:
    """Scenario 'fixed' with ``devices`` processes and a global batch of 32."""
    L.seed_everything(0, verbose=False)
    model = varjepa.VarJEPA(
        encoder=TINY_ENCODER,
        predictor=TINY_PREDICTOR,
        lr=3e-3,
        warmup=0.0,
        ema={"name": "linear", "start": 0.8, "end": 0.9},
        regularizers=[{"name": "sigreg", "weight": 0.5, "num_slices": 16}],
    )
    rec = Record()
    tr = _trainer(devices, rec)
    tr.fit(model, FixedMaskData(GLOBAL_BATCH // devices))
    return {
        "rank": tr.global_rank,
        "world": tr.world_size,
        "losses": rec.losses,
        "indices": rec.indices,
        "metrics": _metrics(tr),
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "opt_state": tr.optimizers[0].state_dict()["state"],
    }


def run_digits(devices: int) -> dict:
    """Scenario 'digits' (real data module, EMA, a NaN image on rank 1 at step 2 with skip policy)."""
    L.seed_everything(0, verbose=False)
    model = varjepa.VarJEPA(
        encoder=TINY_ENCODER,
        predictor=TINY_PREDICTOR,
        lr=3e-3,
        warmup=0.0,
        ema={"name": "linear", "start": 0.8, "end": 0.9},
        nonfinite="skip",
    )
    rec = Record(nan_on_rank=1, nan_at_step=2)
    tr = _trainer(devices, rec, limit_val_batches=2)
    tr.fit(model, varjepa.DigitsDataModule(batch_size=16))
    return {
        "rank": tr.global_rank,
        "world": tr.world_size,
        "losses": rec.losses,
        "indices": rec.indices,
        "target_sums": rec.target_sums,
        "skipped": model.skipped_batches,
        "metrics": _metrics(tr),
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
    }


def run_learned_prior(devices: int) -> dict:
    """Scenario 'learned_prior': a learned diagonal prior while β warms up from 0 (its parameters
    take no part in the loss at β = 0, which DDP rejects unless the ELBO adds them with weight 0)."""
    L.seed_everything(0, verbose=False)
    model = varjepa.VarJEPA(
        encoder=TINY_ENCODER,
        predictor=TINY_PREDICTOR,
        prior="learned_diagonal",
        beta={"name": "linear_warmup", "value": 1.0, "warmup": 2},
        lr=3e-3,
        warmup=0.0,
    )
    init = {k: v.clone() for k, v in model.state_dict().items() if ".prior." in k}
    rec = Record()
    tr = _trainer(devices, rec, limit_val_batches=0)
    tr.fit(model, varjepa.DigitsDataModule(batch_size=16))
    return {
        "rank": tr.global_rank,
        "world": tr.world_size,
        "steps": tr.global_step,
        "prior_init": init,
        "prior": {k: v.detach().clone() for k, v in model.state_dict().items() if ".prior." in k},
    }


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, fn in (("fixed", run_fixed), ("digits", run_digits), ("learned_prior", run_learned_prior)):
        res = fn(2)
        torch.save(res, out / f"{name}_rank{res['rank']}.pt")
