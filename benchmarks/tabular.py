"""Var-T-JEPA benchmark: the paper's simulation study (Table 1, rows A and G) and downstream
evaluation on tables (Table 2 protocol).

* ``sim``: ``configs/tabular/sim.yaml`` (full coupled ELBO, row A) and the same with
  ``configs/tabular/sim_no_decoders.yaml`` (no reconstruction / generation terms, row G); the
  score is the accuracy of a logistic-regression probe on the posterior mean of ``s_x`` for the
  latent mixture component (test split).
* tables (``breast_cancer``, ``digits``, optionally ``wine``): train with
  ``configs/tabular/<name>.yaml``, embed the train and test splits, fit logistic regression, an
  MLP and gradient-boosted trees on the embeddings and on the raw features, and report accuracy
  at 100 / 90 / 80 / 50 % coverage (rows withheld by the downstream model's confidence), plus the
  same with rows withheld by Var-T-JEPA's own predictive std (``sel_model``) and posterior std
  (``sel_posterior``). Logistic regression picks ``C`` by repeated 5-fold cross-validation on the
  training rows (``varjepa.tabular.evaluate.fit_logreg``), the same for embeddings and raw features.

Every run is repeated for each ``--seeds`` value. For the tables the seed is both the model seed
and the seed of the stratified train / val / test split (repeated splits: each seed is scored on
its own test rows); the simulation's data are fixed. Writes ``benchmarks/results/tabular.json``
and ``tabular.md`` and prints the Markdown tables; with ``--merge`` the parts not run are kept
from the existing JSON (e.g. rerun only the tables).

    python benchmarks/tabular.py                       # everything (about an hour on one thread)
    python benchmarks/tabular.py --only sim --seeds 0  # the simulation rows only (2 minutes)
    python benchmarks/tabular.py --only breast_cancer digits --merge  # tables, keep the sim rows
    python benchmarks/tabular.py --only breast_cancer --cache /tmp/tabcache  # reuse trained models
    python benchmarks/tabular.py --only breast_cancer --seeds 0 1 2 --out /tmp/quantile \\
        --set data.init_args.scale=quantile                 # a candidate config, same protocol

Logistic regression's cross-validated training accuracy (``cv_accuracy``) is reported beside the
test scores: it is the score to choose between configs by, since it never sees the test rows.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
QUIET = [
    "--trainer.logger",
    "false",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--trainer.enable_checkpointing",
    "false",
]


def fit(config: list[str], seed: int, extra: list[str] = ()):
    """Train with the CLI on ``config`` files; returns the CLI (model, datamodule, trainer)."""
    from varjepa.cli import run

    args = ["fit"]
    for c in config:
        args += ["--config", str(ROOT / c)]
    cbs = ["--trainer.callbacks", "[]"] if "--trainer.callbacks" not in extra else []
    with tempfile.TemporaryDirectory() as tmp:  # the CLI saves its config.yaml in the run's folder
        return run(
            args + QUIET + cbs + ["--seed_everything", str(seed), f"--trainer.default_root_dir={tmp}", *extra]
        )


QUICK: list[str] = []  # --quick: a smoke test with a few steps


def sim_row(overlay: str | None, seed: int) -> dict:
    """Probe accuracy on s_x after training on the simulation (row A or, with the overlay, row G)."""
    from varjepa.eval.probes import linear_probe
    from varjepa.tabular import extract

    t = time.time()
    quick = ["--trainer.max_epochs", "2"] if QUICK else []
    cli = fit(["configs/tabular/sim.yaml"] + ([overlay] if overlay else []), seed, quick)
    dm = cli.datamodule
    tr = extract(cli.model, dm.plain_dataloader("train"), uncertainty=False)
    te = extract(cli.model, dm.plain_dataloader("test"), uncertainty=False)
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("train/")}
    return {
        "probe_acc": linear_probe(tr["embedding"], tr["label"], te["embedding"], te["label"]),
        "seconds": time.time() - t,
        "final_train": {k: metrics[k] for k in sorted(metrics) if "weight" not in k},
    }


CACHE: list[Path] = []  # --cache DIR: trained-model outputs per (table, seed), reused if present
OVERRIDES: list[str] = []  # --set KEY=VALUE ...: config overrides of the tables' fits


def override_args(pairs: list[str]) -> list[str]:
    """``["data.init_args.scale=quantile"]`` → ``["--data.init_args.scale", "quantile"]`` (the
    CLI's own syntax); a pair without ``=``, with an empty key, or setting a seed (those come from
    ``--seeds``) is refused."""
    out = []
    for p in pairs:
        key, eq, value = p.partition("=")
        key = key.strip()
        if not eq or not key or key.startswith("-"):
            raise SystemExit(f"--set {p!r}: expected KEY=VALUE, e.g. data.init_args.scale=quantile")
        if key.replace(".init_args.", ".") in ("data.seed", "seed_everything"):
            raise SystemExit(f"--set {p!r}: the seeds come from --seeds (model and split alike)")
        out += [f"--{key}", value]
    return out


def cache_name(name: str, seed: int) -> str:
    """Cache file of (table, seed), with a digest of the overrides when there are any."""
    if not OVERRIDES:
        return f"{name}_seed{seed}.npz"
    digest = hashlib.sha1("\n".join(OVERRIDES).encode()).hexdigest()[:10]
    return f"{name}_seed{seed}_{digest}.npz"


CACHED = ("embedding", "label", "raw", "predictive_std", "posterior_std")


def raw_features(dm, split: str) -> np.ndarray:
    """The raw-feature baseline of ``split`` ``[N, F']``: numeric columns standardised with the
    training rows' mean / std, categorical ones one-hot — whatever ``data.scale`` the run used, so
    a ``--set data.init_args.scale=…`` candidate is compared with the same baseline."""
    from varjepa.tabular import one_hot_features

    pre = copy.copy(dm.preprocessor)
    pre.scale = "standard"  # mean / std are fitted whatever the scale
    values, _ = pre.transform(dm.frames[split])
    return one_hot_features(values, dm.schema)


def table_arrays(name: str, seed: int) -> tuple[dict, dict, float]:
    """Train on table ``name`` with ``seed`` and return the train and test splits' arrays
    (``embedding``, ``label``, ``raw`` = one-hot raw features, ``predictive_std``,
    ``posterior_std``) and the training seconds; with ``--cache`` they are read from / written to
    ``<cache>/<cache_name>`` (delete the file after changing the config file itself)."""
    from varjepa.tabular import extract

    path = CACHE[0] / cache_name(name, seed) if CACHE and not QUICK else None
    if path is not None and path.exists():
        z = np.load(path)
        split = {s: {k: z[f"{s}_{k}"] for k in CACHED} for s in ("train", "test")}
        return split["train"], split["test"], float(z["train_seconds"])
    t = time.time()
    extra = ["--data.init_args.seed", str(seed)] + (["--trainer.max_steps", "6"] if QUICK else [])
    extra += override_args(OVERRIDES)
    cli = fit([f"configs/tabular/{name}.yaml"], seed, extra)
    train_s = time.time() - t
    dm = cli.datamodule
    split = {s: extract(cli.model, dm.plain_dataloader(s)) for s in ("train", "test")}
    for s, d in split.items():
        d.pop("values")
        d["raw"] = raw_features(dm, s)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        flat = {f"{s}_{k}": split[s][k] for s in split for k in CACHED}
        tmp = path.with_suffix(".tmp.npz")  # written whole, then renamed: no half-written cache
        np.savez(tmp, train_seconds=train_s, **flat)
        os.replace(tmp, path)
    return split["train"], split["test"], train_s


def table_rows(name: str, seed: int) -> dict:
    """Downstream results of embeddings and raw features on one table."""
    from varjepa.tabular.evaluate import evaluate_features

    t = time.time()
    tr, te, train_s = table_arrays(name, seed)
    emb = evaluate_features(
        tr["embedding"],
        tr["label"],
        te["embedding"],
        te["label"],
        seed=seed,
        extra_uncertainty={"model": te["predictive_std"], "posterior": te["posterior_std"]},
        keep_correct=True,
    )
    raw = evaluate_features(tr["raw"], tr["label"], te["raw"], te["label"], seed=seed, keep_correct=True)
    # paired comparison per model: test rows only raw features get right / only the embedding does
    paired = {}
    for m in emb:
        ce, cr = emb[m].pop("correct"), raw[m].pop("correct")
        paired[m] = {"raw_only": int((cr & ~ce).sum()), "embedding_only": int((ce & ~cr).sum())}
    return {
        "paired": paired,
        "embedding": emb,
        "raw": raw,
        "embedding_dim": int(tr["embedding"].shape[1]),
        "train_rows": len(tr["label"]),
        "test_rows": len(te["label"]),
        "train_seconds": train_s,
        "seconds": time.time() - t,
    }


def mean_over(runs: list[dict], *path) -> tuple[float, float]:
    vals = []
    for r in runs:
        for p in path:
            r = r[p]
        vals.append(r)
    return float(np.mean(vals)), float(np.std(vals))


def fmt(m: float, s: float, n: int, digits: int = 3) -> str:
    return f"{m:.{digits}f}" if n == 1 else f"{m:.{digits}f} ± {s:.{digits}f}"


def markdown(res: dict) -> str:
    from varjepa.eval.paired import mcnemar_exact, paired_difference_ci

    out = ["# Var-T-JEPA benchmark", ""]
    seeds = res["seeds"]
    n = len(seeds)
    if "sim" in res:
        out += [
            f"## Simulation study (paper Table 1), linear probe on s_x, test split; seeds {seeds}",
            "",
            "| row | objective | probe accuracy | paper | train time (s) |",
            "|---|---|---:|---:|---:|",
        ]
        for row, label, paper in (
            ("A", "full coupled ELBO", 0.996),
            ("G", "without reconstruction and generation", 0.571),
        ):
            runs = res["sim"][row]
            m, s = mean_over(runs, "probe_acc")
            t = np.mean([r["seconds"] for r in runs])
            out.append(f"| {row} | {label} | {fmt(m, s, n)} | {paper} | {t:.0f} |")
        out.append("")
    for name, runs in res.get("tables", {}).items():
        r0 = runs[0]
        out += [
            f"## {name}: {r0['train_rows']} train / {r0['test_rows']} test rows, embedding dim {r0['embedding_dim']}; seeds {seeds}",
            "",
            "Accuracy on the test rows kept at each coverage (the least confident rows withheld, by the "
            "downstream model's max class probability). Each seed has its own stratified split and model; "
            "logistic regression picks C in 1e-4…1e2 by 2×5-fold CV on the training rows (raw and "
            "embedding alike)."
            + (
                " Config overrides of these fits (`--set`): "
                + ", ".join(f"`{o}`" for o in res["overrides"])
                + "; the raw features stay standardised."
                if res.get("overrides")
                else ""
            ),
            "",
            "| features | model | acc@100 | acc@90 | acc@80 | acc@50 |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for feats in ("raw", "embedding"):
            for model in ("logreg", "mlp", "gbt"):
                cells = [fmt(*mean_over(runs, feats, model, f"acc@{c}"), n) for c in (100, 90, 80, 50)]
                out.append(f"| {feats} | {model} | " + " | ".join(cells) + " |")
        if all("paired" in r for r in runs):
            out += [
                "",
                f"Paired, per model: test rows (of {r0['test_rows']} per seed, summed over seeds) only the "
                "raw features / only the embedding classify correctly, the exact two-sided McNemar "
                "p-value of the difference, and the accuracy difference in points with its 95 % "
                "interval (Tango's score interval for paired proportions; it matches McNemar's asymptotic "
                "test, so near p = 0.05 it can exclude 0 while the exact p is a little above).",
                "",
                "| model | raw only | embedding only | embedding − raw (rows) | McNemar p | difference, 95 % CI (points) |",
                "|---|---:|---:|---:|---:|---:|",
            ]
            total = sum(r["test_rows"] for r in runs)
            for model in ("logreg", "mlp", "gbt"):
                a = sum(r["paired"][model]["raw_only"] for r in runs)
                b = sum(r["paired"][model]["embedding_only"] for r in runs)
                d, lo, hi = (100 * v for v in paired_difference_ci(a, b, total))
                out.append(
                    f"| {model} | {a} | {b} | {b - a:+d} | {mcnemar_exact(a, b):.2f} | "
                    f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}] |"
                )
        out += [
            "",
            "Rows withheld by Var-T-JEPA's own uncertainty instead (embedding + logreg): predictor std "
            "`p_θ(s_y|s_x,z)` averaged over 8 fixed masks, and posterior std of `q(s_x|x)`.",
            "",
            "| score | acc@90 | acc@80 | acc@50 |",
            "|---|---:|---:|---:|",
        ]
        for key, label in (("sel_model", "predictive std"), ("sel_posterior", "posterior std")):
            cells = [fmt(*mean_over(runs, "embedding", "logreg", f"{key}@{c}"), n) for c in (90, 80, 50)]
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        if all("cv_accuracy" in r[f]["logreg"] for r in runs for f in ("raw", "embedding")):
            cells = [fmt(*mean_over(runs, f, "logreg", "cv_accuracy"), n, 4) for f in ("raw", "embedding")]
            out += [
                "",
                "Logistic regression's cross-validated accuracy on the training rows at its chosen C "
                f"(a selection score that never sees the test rows): raw {cells[0]}, embedding {cells[1]}.",
            ]
        t = np.mean([r["train_seconds"] for r in runs])
        out += ["", f"Training time per run: {t:.0f} s (one CPU thread).", ""]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--only",
        nargs="*",
        default=["sim", "breast_cancer", "digits"],
        help="parts to run: sim, breast_cancer, digits, wine",
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=str(RESULTS / "tabular"))
    ap.add_argument("--quick", action="store_true", help="smoke test: a few steps per run")
    ap.add_argument(
        "--merge", action="store_true", help="keep the parts not run from the existing --out JSON"
    )
    ap.add_argument(
        "--cache",
        default=None,
        help="folder for the tables' trained-model outputs per (table, seed): reused if present, "
        "so the downstream scoring can be rerun without retraining",
    )
    ap.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides for the tables' fits, e.g. data.init_args.scale=quantile "
        "model.init_args.objective.alpha_rec=1.0 (recorded in the results; cached apart)",
    )
    args = ap.parse_args()
    override_args(args.set)  # refuse a malformed pair before anything runs
    OVERRIDES[:] = args.set
    if args.quick:
        QUICK.append("on")
    if args.cache:
        CACHE.append(Path(args.cache))
    sys.argv = sys.argv[:1]  # the CLI runs below read their own arguments
    out = Path(args.out)
    res: dict = {"seeds": args.seeds, **({"overrides": args.set} if args.set else {})}
    if args.merge and out.with_suffix(".json").exists():
        old = json.loads(out.with_suffix(".json").read_text())
        if old.get("seeds") != args.seeds:
            raise SystemExit(f"--merge: {out}.json has seeds {old.get('seeds')}, not {args.seeds}")
        if old.get("overrides", []) != args.set:
            raise SystemExit(f"--merge: {out}.json has overrides {old.get('overrides', [])}, not {args.set}")
        res.update({k: v for k, v in old.items() if k in ("sim", "tables")})
    if "sim" in args.only:
        res["sim"] = {
            "A": [sim_row(None, s) for s in args.seeds],
            "G": [sim_row("configs/tabular/sim_no_decoders.yaml", s) for s in args.seeds],
        }
    tables = [t for t in args.only if t != "sim"]
    if tables:
        res["tables"] = {
            **res.get("tables", {}),
            **{t: [table_rows(t, s) for s in args.seeds] for t in tables},
        }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2))
    md = markdown(res)
    out.with_suffix(".md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
