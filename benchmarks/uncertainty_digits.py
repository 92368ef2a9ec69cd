"""Uncertainty benchmark on digits: one row per posterior family (DESIGN §6 protocols).

Each family is trained with the ``heteroscedastic`` objective of ``configs/uncertainty_digits.yaml``
(the predictor's density scores the observed target latent, β-NLL weighting) for ``--steps``
steps (default: the config's ``trainer.max_steps``), once per ``--seeds`` seed; reference rows show the default ``predictive`` preset (whose spread is input-independent)
and a deterministic ``dirac`` I-JEPA (representation only). Columns:

* ``probe`` / ``probe_10pc``: logistic regression on frozen pooled target features, all labels and
  10 labels per class (test split; raw pixels: 0.967 / 0.856);
* ``knn``: weighted kNN (k = 20, cosine, T = 0.07);
* ``nll`` (Gaussian, nats per latent dim), ``cov50`` / ``cov90``, ``sp_std_err``, ``aurc``: the
  predictive distribution on held-out target latents of the test split (``--draws`` seeded mask
  draws, default 32);
* ``sp_u`` / ``auroc``: the corruption protocol (Spearman(uncertainty, u), AUROC for u ≥ q75);
* ``sp_u_surprise`` / ``auroc_surprise``: the same with the predictive surprise (negative
  log-density of the observed target latents) as the score;
* ``sel_w0`` … ``sel_w50``: probe accuracy on the *corrupted* test split when the most uncertain
  0/10/20/50 % are withheld (the paper's Table 2 protocol).

    python benchmarks/uncertainty_digits.py --seeds 0 1 --out benchmarks/results/uncertainty_digits
    python benchmarks/uncertainty_digits.py --rows diag_gaussian --steps 1500     # a quick look

With several seeds the Markdown file adds a mean ± std table per family.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml

from varjepa import DigitsDataModule, VarJEPA
from varjepa.callbacks.augment import NoiseAugmentation
from varjepa.encoders import EncoderConfig
from varjepa.eval import extract_features, linear_probe
from varjepa.eval.corruption import corruption_protocol, split_tensors
from varjepa.eval.metrics import KNNAccuracy
from varjepa.eval.probes import fit_linear_probe
from varjepa.eval.uncertainty import MaskProtocol, latent_calibration, selective_accuracy

ROOT = Path(__file__).resolve().parents[1]
#: mask draws per test image for calibration and the corruption protocol (``--draws``)
DRAWS = 32
HET = {"objective": {"name": "heteroscedastic", "beta_nll": 1.0}, "beta": 0.0}
ROWS = {
    "diag_gaussian": {"posterior": "diag_gaussian", **HET},
    "lowrank_gaussian": {"posterior": {"name": "lowrank_gaussian", "rank": 4}, **HET},
    "mixture": {"posterior": {"name": "mixture", "components": 4}, **HET},
    "flow": {"posterior": {"name": "flow", "transform": "affine_autoregressive", "depth": 2}, **HET},
    "diag_gaussian (predictive preset)": {"posterior": "diag_gaussian", "objective": "predictive"},
    "dirac (I-JEPA)": {"posterior": "dirac", "objective": "predictive", "beta": 0.0},
}
COLUMNS = [
    "family",
    "seed",
    "probe",
    "probe_10pc",
    "knn",
    "nll",
    "cov50",
    "cov90",
    "sp_std_err",
    "aurc",
    "sp_u",
    "auroc",
    "sp_u_surprise",
    "auroc_surprise",
    "sel_w0",
    "sel_w10",
    "sel_w20",
    "sel_w50",
    "wall_s",
]


def _config() -> dict:
    return yaml.safe_load((ROOT / "configs/uncertainty_digits.yaml").read_text())


def base_model_args() -> dict:
    """Model options of ``configs/uncertainty_digits.yaml`` (sizes, masking, lr, EMA)."""
    cfg = _config()["model"]
    keep = ("encoder", "predictor", "masking", "prior", "ema", "lr", "weight_decay", "warmup")
    return {k: cfg[k] for k in keep if k in cfg}


def config_steps() -> int:
    """``trainer.max_steps`` of ``configs/uncertainty_digits.yaml``."""
    return int(_config()["trainer"]["max_steps"])


def config_batch_size() -> int:
    """``data.init_args.batch_size`` of ``configs/uncertainty_digits.yaml`` (128 if unset)."""
    return int(_config().get("data", {}).get("init_args", {}).get("batch_size", 128))


def augmentation_args() -> dict | None:
    """``NoiseAugmentation`` options of the config's callbacks (None if it has none)."""
    for cb in _config()["trainer"].get("callbacks", []):
        if cb.get("class_path", "").endswith("NoiseAugmentation"):
            return dict(cb.get("init_args", {}))
    return None


def knn_accuracy(xtr, ytr, xte, yte) -> float:
    m = KNNAccuracy(k=20, temperature=0.07)
    m.update(torch.as_tensor(xtr), torch.as_tensor(ytr), train=True)
    m.update(torch.as_tensor(xte), torch.as_tensor(yte), train=False)
    return float(m.compute())


def run_row(
    name: str, overrides: dict, steps: int, augment: dict | None, seed: int = 0, draws: int = DRAWS
) -> dict:
    L.seed_everything(seed, verbose=False)
    dm = DigitsDataModule(batch_size=config_batch_size())
    model = VarJEPA(**{**base_model_args(), **overrides})
    callbacks = [NoiseAugmentation(**augment)] if augment else []
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )
    t0 = time.perf_counter()
    trainer.fit(model, dm)
    wall = time.perf_counter() - t0
    model.eval()
    xtr, ytr = extract_features(model, dm.plain_dataloader("train"))
    xte, yte = extract_features(model, dm.plain_dataloader("test"))
    row = {
        "family": name,
        "seed": seed,
        "probe": linear_probe(xtr, ytr, xte, yte),
        "probe_10pc": linear_probe(xtr, ytr, xte, yte, per_class=10),
        "knn": knn_accuracy(xtr, ytr, xte, yte),
        "wall_s": wall,
    }
    if not model.family.stochastic:
        return row
    images, labels = split_tensors(dm, "test")
    protocol = MaskProtocol(draws, 0)
    cal = latent_calibration(model, images, protocol)
    row.update(
        nll=cal["nll"],
        cov50=cal["coverage50"],
        cov90=cal["coverage90"],
        sp_std_err=cal["spearman_std_err"],
        aurc=cal["aurc"],
    )
    cor = corruption_protocol(model, images, seed=0, protocol=protocol)
    row.update(sp_u=cor["spearman"], auroc=cor["auroc"])
    row.update(
        sp_u_surprise=cor.get("surprise_spearman", math.nan),
        auroc_surprise=cor.get("surprise_auroc", math.nan),
    )
    probe = fit_linear_probe(xtr, ytr)
    with torch.no_grad():
        f_corr = model.embed(torch.as_tensor(cor["corrupted"])).numpy()
    correct = probe.predict(f_corr) == labels.numpy()
    for f, acc in selective_accuracy(correct, cor["uncertainty"], (0.0, 0.1, 0.2, 0.5)).items():
        row[f"sel_w{round(100 * f)}"] = acc
    return row


def markdown(rows: list[dict]) -> str:
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = []
        for c in COLUMNS:
            v = r.get(c, "—")
            if isinstance(v, float) and math.isfinite(v):
                v = f"{v:.0f}" if c == "wall_s" else f"{v:.3f}"
            cells.append(str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


#: columns of the mean ± std table (several seeds)
SUMMARY = [
    "probe",
    "probe_10pc",
    "knn",
    "cov50",
    "cov90",
    "sp_std_err",
    "sp_u",
    "auroc",
    "sp_u_surprise",
    "auroc_surprise",
    "wall_s",
]


def summary(rows: list[dict]) -> str:
    """Mean ± std over seeds per family (families in first-seen order)."""
    out = ["| family | seeds | " + " | ".join(SUMMARY) + " |", "|" + "---|" * (len(SUMMARY) + 2)]
    for fam in dict.fromkeys(r["family"] for r in rows):
        rs = [r for r in rows if r["family"] == fam]
        cells = []
        for c in SUMMARY:
            v = [r[c] for r in rs if isinstance(r.get(c), float) and math.isfinite(r[c])]
            if not v:
                cells.append("—")
            elif c == "wall_s":
                cells.append(f"{np.mean(v):.0f}")
            else:
                cells.append(f"{np.mean(v):.3f} ± {np.std(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}")
        out.append(f"| {fam} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def pool_mode() -> str:
    """The encoder's pooling of probe features (``model.encoder.pool``, default ``avg``)."""
    return (base_model_args().get("encoder") or {}).get("pool", EncoderConfig.pool)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--steps", type=int, default=None, help="training steps (default: the config's max_steps)"
    )
    ap.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="model seeds (one run per family and seed)"
    )
    ap.add_argument("--rows", nargs="*", default=list(ROWS), help=f"any of: {', '.join(ROWS)}")
    ap.add_argument("--no-augment", action="store_true", help="train without the config's NoiseAugmentation")
    ap.add_argument("--augment-p", type=float, default=None, help="override NoiseAugmentation.p")
    ap.add_argument(
        "--augment-view", default=None, help="override NoiseAugmentation.view (context, both, mixed)"
    )
    ap.add_argument("--draws", type=int, default=DRAWS, help="mask draws per test image")
    ap.add_argument("--out", default="benchmarks/results/uncertainty_digits")
    args = ap.parse_args()
    augment = None if args.no_augment else augmentation_args()
    for key, value in (("p", args.augment_p), ("view", args.augment_view)):
        if augment is not None and value is not None:
            augment[key] = value
    steps = args.steps or config_steps()
    rows = []
    for name in args.rows:
        for seed in args.seeds:
            rows.append(run_row(name, ROWS[name], steps, augment, seed=seed, draws=args.draws))
            print(json.dumps(rows[-1]), flush=True)
    table = markdown(rows)
    if len(args.seeds) > 1:
        table += "\n\nMean ± std over seeds " + ", ".join(map(str, args.seeds)) + ":\n\n" + summary(rows)
    header = (
        f"steps={steps}, batch size={config_batch_size()}, seeds={args.seeds}, "
        f"augmentation={augment or 'none'}, pooled features={pool_mode()}, mask draws={args.draws}, "
        f"torch threads={torch.get_num_threads()}\n\n"
    )
    print(header + table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "steps": steps,
        "draws": args.draws,
        "seeds": args.seeds,
        "augmentation": augment,
        "base": base_model_args(),
        "rows": rows,
    }
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2, default=_jsonable))
    out.with_suffix(".md").write_text(header + table + "\n")


def _jsonable(x):
    return x.tolist() if isinstance(x, np.ndarray) else str(x)


if __name__ == "__main__":
    main()
