"""Train every posterior family on digits for N steps; report final ELBO terms, step time,
finiteness and a linear probe. Prints a table and writes JSON + Markdown.

    python benchmarks/families_digits.py --steps 200 --out benchmarks/results/families_digits
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from varjepa import DigitsDataModule, VarJEPA
from varjepa.eval import extract_features, linear_probe

FAMILIES = {
    "dirac": {"posterior": "dirac", "beta": 0.0},
    "diag_gaussian": {"posterior": "diag_gaussian"},
    "lowrank_gaussian": {"posterior": {"name": "lowrank_gaussian", "rank": 4}},
    "mixture": {"posterior": {"name": "mixture", "components": 4}},
    "flow": {"posterior": {"name": "flow", "transform": "affine_autoregressive", "depth": 2}},
}


class StepTimer(Callback):
    """Wall time of every training step (forward, backward, optimizer, EMA) and non-finite losses."""

    def __init__(self):
        self.times: list[float] = []
        self.nonfinite = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self._t)
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.nonfinite += int(not torch.isfinite(loss))


def run_family(name: str, overrides: dict, steps: int, base: dict, seed: int = 0) -> dict:
    L.seed_everything(seed, verbose=False)
    dm = DigitsDataModule(batch_size=128)
    model = VarJEPA(**base, **overrides)
    timer = StepTimer()
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
        log_every_n_steps=1,
    )
    t0 = time.perf_counter()
    trainer.fit(model, dm)
    wall = time.perf_counter() - t0
    xtr, ytr = extract_features(model, dm.plain_dataloader("train"))
    xte, yte = extract_features(model, dm.plain_dataloader("test"))
    m = trainer.callback_metrics
    row = {
        "family": name,
        "steps": trainer.global_step,
        "nonfinite_steps": timer.nonfinite,
        "step_ms_median": 1000 * statistics.median(timer.times[5:] or timer.times),
        "wall_s": wall,
        "probe_acc": linear_probe(xtr, ytr, xte, yte),
    }
    for k in ("loss", "nll", "kl", "pred_std", "rankme", "target_std"):
        if f"train/{k}" in m:
            row[k] = float(m[f"train/{k}"])
    return row


def markdown(rows: list[dict]) -> str:
    cols = [
        "family",
        "steps",
        "nonfinite_steps",
        "loss",
        "nll",
        "kl",
        "pred_std",
        "target_std",
        "step_ms_median",
        "probe_acc",
    ]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "—")
            cells.append(f"{v:.4g}" if isinstance(v, float) and math.isfinite(v) else str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--families", nargs="*", default=list(FAMILIES))
    ap.add_argument("--patch-size", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/families_digits")
    args = ap.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    # the quickstart's model (configs/quickstart.yaml) with each family swapped in
    base = {
        "encoder": {"patch_size": args.patch_size, "depth": 2},
        "masking": {"num_targets": 2, "target_scale": (0.25, 0.4), "context_scale": (0.5, 0.8)},
        "ema": {"name": "linear", "start": 0.99, "end": 0.999},
    }
    rows = []
    for f in args.families:
        rows.append(run_family(f, FAMILIES[f], args.steps, base))
        print(json.dumps(rows[-1]), flush=True)
    table = markdown(rows)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(
        json.dumps({"steps": args.steps, "torch_threads": torch.get_num_threads(), "rows": rows}, indent=2)
    )
    out.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
