"""VarTJEPA end to end: `varjepa fit` on a CSV with numeric and categorical columns and on the
simulation config, TensorBoard scalars of every term, checkpoint reload from the stored schema,
predictions, bad tables through the CLI, and the downstream evaluation helpers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from varjepa.cli import main, run
from varjepa.tabular import TabularDataModule, VarTJEPA, extract
from varjepa.tabular.evaluate import LOGREG_CS, evaluate_features, fit_logreg, selective_by_coverage

TINY = {
    "name": "transformer",
    "dim": 16,
    "depth": 1,
    "heads": 2,
    "ff": 32,
    "num_cls": 1,
    "predictor_depth": 1,
    "target_depth": 1,
}


def table(path, n: int = 120) -> str:
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "x1": rng.normal(size=n),
            "x2": rng.normal(size=n),
            "color": rng.choice(["red", "green", "blue"], n),
            "x3": rng.normal(size=n),
            "flag": rng.choice(["a", "b"], n),
            "x4": rng.normal(size=n),
        }
    )
    df["y"] = (df.x1 + (df.color == "red") > 0.5).astype(int)
    p = path / "rows.csv"
    df.to_csv(p, index=False)
    return str(p)


def config(tmp_path, data: dict, model: dict, steps: int = 4) -> str:
    cfg = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "max_steps": steps,
            "log_every_n_steps": 1,
            "limit_val_batches": 1,
            "val_check_interval": steps,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(tmp_path), "name": "run"},
            },
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"save_last": True},
                }
            ],
        },
        "model": {"class_path": "varjepa.VarTJEPA", "init_args": model},
        "data": data,
    }
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


def scalars(log_dir) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return set(acc.Tags()["scalars"])


def test_fit_on_a_csv_logs_every_term_and_reloads(tmp_path):
    data = {
        "class_path": "varjepa.TabularDataModule",
        "init_args": {"path": table(tmp_path), "target": "y", "batch_size": 16},
    }
    model = {
        "architecture": TINY,
        "latent_dim": 4,
        "aux_dim": 2,
        "decoder_hidden": 8,
        "objective": {"name": "coupled", "anneal": 2},
    }
    cli = run(["fit", "--config", config(tmp_path, data, model)])
    assert cli.trainer.global_step == 4
    tags = scalars(cli.trainer.logger.log_dir)
    for t in ("rec", "gen", "kl_sx", "kl_z", "kl_sy"):
        assert f"train/{t}" in tags and f"train/weight/{t}" in tags and f"val/{t}" in tags
    assert {"train/loss", "train/rankme", "train/pred_std", "train/lr"} <= tags
    m = cli.model
    assert m.hparams.schema["kinds"] == [
        "numeric",
        "numeric",
        "categorical",
        "numeric",
        "categorical",
        "numeric",
    ]
    ckpt = f"{cli.trainer.logger.log_dir}/checkpoints/last.ckpt"
    again = VarTJEPA.load_from_checkpoint(ckpt, weights_only=True)
    values = torch.from_numpy(cli.datamodule.arrays["test"][0][:5])
    torch.testing.assert_close(again.embed(values), m.embed(values))
    out = again.predict_step({"values": values, "label": torch.zeros(5), "index": torch.arange(5)}, 0)
    assert (
        out["embedding"].shape == (5, 4)
        and out["uncertainty"].shape == (5,)
        and (out["uncertainty"] > 0).all()
    )


def test_sim_config_runs(tmp_path):
    cli = run(
        [
            "fit",
            "--config",
            "configs/tabular/sim.yaml",
            "--trainer.max_epochs",
            "2",
            "--trainer.logger",
            "false",
            "--trainer.callbacks",
            "[]",
            "--trainer.enable_progress_bar",
            "false",
            "--data.num_train",
            "1024",
            "--data.num_val",
            "64",
            "--data.num_test",
            "64",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    assert cli.trainer.global_step == 4
    assert (
        cli.model.arch_name == "mlp" and cli.model.hparams.latent_dim == 16 and cli.model.hparams.aux_dim == 8
    )
    emb = extract(cli.model, cli.datamodule.plain_dataloader("test"))
    assert emb["embedding"].shape == (64, 16) and emb["predictive_std"].shape == (64,)


def test_bad_table_stops_the_cli_with_one_line(tmp_path, capsys):
    p = table(tmp_path)
    df = pd.read_csv(p)
    df["x2"] = df["x2"].astype(object)
    df.loc[17, "x2"] = "n/a?"
    df.to_csv(p, index=False)
    data = {
        "class_path": "varjepa.TabularDataModule",
        "init_args": {"path": p, "target": "y", "numeric": ["x2"]},
    }
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", config(tmp_path, data, {"architecture": TINY})])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "row 17 (line 19 of" in err and "column 'x2'" in err and "Fix:" in err
    assert not (tmp_path / "run").exists()  # nothing written


def test_selective_by_coverage_by_hand():
    correct = np.array([1, 0, 1, 1, 0, 1, 1, 1, 0, 1], bool)
    unc = np.array([0.1, 0.9, 0.2, 0.3, 0.8, 0.4, 0.5, 0.6, 0.7, 0.05])
    out = selective_by_coverage(correct, unc)
    order = np.argsort(unc)
    for c in (1.0, 0.9, 0.8, 0.5):
        keep = order[: int(np.ceil(c * 10))]
        assert out[f"acc@{round(100 * c)}"] == pytest.approx(correct[keep].mean())
    assert out["acc@50"] == 1.0 and out["acc@100"] == 0.7


def test_evaluate_features_matches_sklearn():
    dm = TabularDataModule(dataset="wine")
    dm.setup()
    (xtr, ytr), (xte, yte) = dm.arrays["train"], dm.arrays["test"]
    res = evaluate_features(
        xtr, ytr, xte, yte, models=("logreg", "gbt"), extra_uncertainty=np.arange(len(yte))
    )
    assert res["logreg"]["acc@100"] == pytest.approx(fit_logreg(xtr, ytr).score(xte, yte))
    assert set(res["gbt"]) == {
        "acc@100",
        "acc@90",
        "acc@80",
        "acc@50",
        "sel_model@90",
        "sel_model@80",
        "sel_model@50",
    }


def test_fit_logreg_picks_c_by_repeated_cv_on_train_rows():
    """C comes from the grid by GridSearchCV over repeated stratified folds of the training rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, RepeatedStratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from varjepa.tabular.evaluate import CV_REPEATS

    dm = TabularDataModule(dataset="wine")
    dm.setup()
    xtr, ytr = dm.arrays["train"]
    clf = fit_logreg(xtr, ytr, seed=3)
    ref = GridSearchCV(
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
        {"logisticregression__C": list(LOGREG_CS)},
        cv=RepeatedStratifiedKFold(n_splits=5, n_repeats=CV_REPEATS, random_state=3),
    ).fit(xtr, ytr)
    assert ref.best_params_["logisticregression__C"] == clf.named_steps["logisticregression"].C
    assert min(LOGREG_CS) <= 1e-4 and max(LOGREG_CS) >= 100


def test_evaluate_features_several_uncertainty_scores():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 3)), np.repeat([0, 1], 30)
    res = evaluate_features(
        x[:40],
        y[:40],
        x[40:],
        y[40:],
        models=("logreg",),
        extra_uncertainty={"a": rng.random(20), "b": rng.random(20)},
    )
    assert {"sel_a@90", "sel_a@50", "sel_b@80"} <= set(res["logreg"])


def test_an_anchored_posterior_with_a_detached_location_is_refused():
    """The coupled ELBO has no least-squares term, so a detached anchor would never be trained."""
    from varjepa.registry import ConfigError

    with pytest.raises(ConfigError, match=r"model.posteriors.sx = AnchoredMixture.*detach_anchor: false"):
        VarTJEPA(posteriors={"sx": {"name": "anchored_mixture", "components": 2}})
    model = VarTJEPA(posteriors={"sx": {"name": "anchored_mixture", "components": 2, "detach_anchor": False}})
    fam = model.families["sx"]
    assert not fam.detach_anchor and fam.num_params == fam.dim + 2 * (2 * fam.dim + 1)
