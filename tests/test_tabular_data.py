"""Tabular data: typing, encoding, scaling fitted on the training split only (vs scikit-learn),
imputation, CSV/Parquet, embedded tables, the simulation study, and every bad-input error naming
row, column and fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.preprocessing import StandardScaler

from varjepa.registry import ConfigError
from varjepa.tabular import (
    SimulationDataModule,
    TablePreprocessor,
    TabularDataError,
    TabularDataModule,
    one_hot_features,
    simulate,
)
from varjepa.tabular.data import NormalScores


def frame(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": rng.normal(40, 10, n),
            "income": rng.lognormal(3, 1, n),
            "city": rng.choice(["paris", "oslo", "rome"], n),
            "member": rng.choice([True, False], n),
            "label": rng.choice(["yes", "no"], n),
        }
    )


def write(df: pd.DataFrame, path, kind: str = "csv") -> str:
    p = str(path / f"t.{kind}")
    if kind == "csv":
        df.to_csv(p, index=False)
    else:
        df.to_parquet(p, index=False)
    return p


def test_types_levels_and_codes():
    df = frame()
    pre = TablePreprocessor(target="label").fit(df)
    s = pre.schema
    assert s.names == ["age", "income", "city", "member"]
    assert s.kinds == ["numeric", "numeric", "categorical", "categorical"]
    assert s.levels["city"] == ["oslo", "paris", "rome"] and s.levels["member"] == ["False", "True"]
    assert s.classes == ["no", "yes"] and s.num_classes == 2
    values, labels = pre.transform(df)
    codes = {"oslo": 0, "paris": 1, "rome": 2}
    assert values[:, 2].tolist() == [codes[c] for c in df.city]
    assert labels.tolist() == [int(v == "yes") for v in df.label]


def test_declared_types_override_inference():
    df = frame()
    df["zip"] = np.arange(len(df)) % 4  # integers that are categories
    pre = TablePreprocessor(target="label", categorical=["zip"], numeric=["member"]).fit(df)
    kinds = dict(zip(pre.schema.names, pre.schema.kinds, strict=True))
    assert kinds["zip"] == "categorical" and kinds["member"] == "numeric"
    assert pre.schema.levels["zip"] == ["0", "1", "2", "3"]


def test_scaler_fitted_on_train_only_matches_sklearn():
    train, test = frame(60, 0), frame(30, 1)
    test["age"] += 25.0  # a shifted test split must not move the scaling
    pre = TablePreprocessor(target="label").fit(train)
    sk = StandardScaler().fit(train[["age", "income"]].to_numpy())
    for df in (train, test):
        values, _ = pre.transform(df)
        np.testing.assert_allclose(
            values[:, :2], sk.transform(df[["age", "income"]].to_numpy()), rtol=1e-5, atol=1e-5
        )
    v_test, _ = pre.transform(test)
    assert v_test[:, 0].mean() > 2.0  # the shift is visible: not re-standardised on test


def test_quantile_scaling_gives_normal_scores_of_the_training_mid_ranks():
    from scipy.stats import norm, rankdata, skew

    train, test = frame(50, 0), frame(30, 1)
    train.loc[:19, "age"] = 0.0  # zero-inflated: 20 of 50 rows tied at the minimum
    pre = TablePreprocessor(target="label", scale="quantile").fit(train)
    values, _ = pre.transform(train)
    n = len(train)
    for j, name in enumerate(("age", "income")):
        expected = norm.ppf((rankdata(train[name]) - 0.5) / n)  # ties share the average rank
        np.testing.assert_allclose(values[:, j], expected, atol=1e-5)
    np.testing.assert_allclose(values[:20, 0], norm.ppf(0.2), atol=1e-5)  # not an extreme
    assert abs(skew(values[:, 1])) < 0.1 < skew(train["income"])  # the log-normal tail is gone
    assert values[:, 2].tolist() == [{"oslo": 0, "paris": 1, "rome": 2}[c] for c in train.city]
    # test rows: interpolated between training values, monotone, held at the end scores outside
    test.loc[0, "income"] = train["income"].max() * 10
    test.loc[1, "income"] = train["income"].min() / 10
    inc = np.sort(train["income"].to_numpy())
    test.loc[2, "income"] = 0.25 * inc[9] + 0.75 * inc[10]  # between the 10th and 11th values
    v_test, _ = pre.transform(test)
    assert v_test[0, 1] == pytest.approx(norm.ppf(1 - 0.5 / n), abs=1e-5)
    assert v_test[1, 1] == pytest.approx(norm.ppf(0.5 / n), abs=1e-5)
    assert v_test[2, 1] == pytest.approx(norm.ppf((0.25 * 9.5 + 0.75 * 10.5) / n), abs=1e-5)
    order = np.argsort(test["age"].to_numpy())
    assert np.all(np.diff(v_test[order, 0]) >= 0)
    flat = TablePreprocessor(target="label", scale="quantile").fit(train.assign(age=7.0))
    assert flat.transform(test.assign(age=9.0))[0][:, 0].tolist() == [0.0] * len(test)  # constant → 0
    for bad in (np.nan, -np.inf):
        with pytest.raises(ValueError, match="NaN or infinite"):
            NormalScores().fit(np.array([[1.0], [bad]]))
    dm = TabularDataModule(dataset="breast_cancer", scale="quantile", seed=3)  # the option reaches the table
    dm.setup()
    x = dm.arrays["train"][0]
    assert np.abs(np.median(x, 0)).max() < 0.05 and np.abs(x).max() < norm.ppf(1 - 0.5 / len(x)) + 1e-5


def test_datamodule_scaler_uses_only_its_training_rows(tmp_path):
    df = frame(200, 3)
    dm = TabularDataModule(path=write(df, tmp_path), target="label", batch_size=16)
    dm.setup()
    train = dm.frames["train"]
    sk = StandardScaler().fit(train[["age", "income"]].to_numpy())
    np.testing.assert_allclose(
        dm.arrays["test"][0][:, :2], sk.transform(dm.frames["test"][["age", "income"]].to_numpy()), atol=1e-5
    )
    assert set(train.index).isdisjoint(dm.frames["test"].index) and set(train.index).isdisjoint(
        dm.frames["val"].index
    )
    assert len(train) + len(dm.frames["val"]) + len(dm.frames["test"]) == 200


def test_csv_and_parquet_agree(tmp_path):
    df = frame(80)
    out = []
    for kind in ("csv", "parquet"):
        (tmp_path / kind).mkdir()
        dm = TabularDataModule(path=write(df, tmp_path / kind, kind), target="label")
        dm.setup()
        out.append(dm.arrays)
    for split in ("train", "val", "test"):
        np.testing.assert_allclose(out[0][split][0], out[1][split][0], atol=1e-6)
        assert np.array_equal(out[0][split][1], out[1][split][1])


def test_impute_with_training_statistics():
    train = frame(50)
    train.loc[3, "age"] = np.nan
    train["city"] = ["rome"] * 20 + ["oslo"] * 15 + ["paris"] * 15
    train.loc[5, "city"] = None
    pre = TablePreprocessor(target="label", missing="impute", scale="none").fit(train)
    values, _ = pre.transform(train)
    assert values[3, 0] == pytest.approx(np.nanmedian(train.age.to_numpy()))
    assert train.city.value_counts().idxmax() == "rome"
    assert values[5, 2] == pre.schema.levels["city"].index("rome")


def test_one_hot_features():
    df = frame(20)
    pre = TablePreprocessor(target="label").fit(df)
    values, _ = pre.transform(df)
    x = one_hot_features(values, pre.schema)
    assert x.shape == (20, 2 + 4 + 3)  # city: 3 levels + reserved, member: 2 + reserved
    np.testing.assert_array_equal(x[:, 2:6].argmax(1), values[:, 2])


@pytest.mark.parametrize(
    "name, shape, classes", [("breast_cancer", 30, 2), ("wine", 13, 3), ("digits", 64, 10)]
)
def test_embedded_tables(name, shape, classes):
    dm = TabularDataModule(dataset=name)
    dm.setup()
    assert dm.schema.num_features == shape and dm.num_classes == classes
    assert all(k == "numeric" for k in dm.schema.kinds)
    n = sum(len(dm.arrays[s][1]) for s in ("train", "val", "test"))
    assert n == {"breast_cancer": 569, "wine": 178, "digits": 1797}[name]
    tr = dm.arrays["train"][0]
    np.testing.assert_allclose(tr.mean(0), 0, atol=1e-4)


# ------------------------------------------------------------------ bad input
def test_unknown_column_names_it_and_the_fix(tmp_path):
    dm = TabularDataModule(path=write(frame(), tmp_path), target="label", categorical=["town"])
    with pytest.raises(
        TabularDataError,
        match=r"data.categorical: unknown column 'town'.*columns \['age'.*Fix: correct the name",
    ):
        dm.setup()
    dm = TabularDataModule(path=write(frame(), tmp_path), target="class")
    with pytest.raises(TabularDataError, match="data.target: unknown column 'class'"):
        dm.setup()


def test_text_in_numeric_column_names_row_column_fix(tmp_path):
    df = frame(40)
    df["age"] = df["age"].astype(object)
    df.loc[7, "age"] = "forty"
    p = write(df, tmp_path)
    msg = r"row 7 \(line 9 of .*t.csv\), column 'age': text 'forty' in a (numeric column|column of numbers).*Fix: correct the value, or declare the column categorical"
    with pytest.raises(TabularDataError, match=msg):
        TabularDataModule(path=p, target="label", test_fraction=0.1, val_fraction=0.0, seed=1).setup()
    # declared numeric: same message from the declared path
    with pytest.raises(TabularDataError, match=r"row 7 .*column 'age': text 'forty' in a numeric column"):
        TablePreprocessor(target="label", numeric=["age"], source=p).fit(pd.read_csv(p))


def test_nan_under_error_names_row_column_fix(tmp_path):
    df = frame(40)
    df.loc[12, "income"] = np.nan
    df.loc[30, "income"] = np.nan
    p = write(df, tmp_path)
    pre = TablePreprocessor(target="label", source=p)
    with pytest.raises(
        TabularDataError,
        match=r"row 12 \(line 14 of .*\), column 'income': missing value \(2 missing values in this column\)\. Fix: .*data.missing: impute",
    ):
        pre.fit(pd.read_csv(p))
    df = frame(40)
    df.loc[4, "label"] = None
    with pytest.raises(TabularDataError, match=r"row 4, column 'label': the label is missing"):
        TablePreprocessor(target="label").fit(df)


def test_unseen_level_names_row_column_fix():
    train, test = frame(40), frame(10, 1)
    test.loc[6, "city"] = "lima"
    pre = TablePreprocessor(target="label", source="cities.parquet").fit(train)
    with pytest.raises(
        TabularDataError,
        match=r"row 6 of cities.parquet, column 'city': level 'lima' does not occur in the training split \(training levels: oslo, paris, rome\)\. Fix: .*unseen_levels: other",
    ):
        pre.transform(test)
    other = TablePreprocessor(target="label", unseen_levels="other").fit(train)
    values, _ = other.transform(test)
    assert values[6, 2] == 3  # the reserved code


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"missing": "drop"}, "data.missing"),
        ({"unseen_levels": "ignore"}, "data.unseen_levels"),
        ({"scale": "minmax"}, "data.scale"),
        ({"numeric": ["a"], "categorical": ["a"]}, "both numeric and categorical"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TablePreprocessor(**kwargs)


def test_bad_sources(tmp_path):
    with pytest.raises(ConfigError, match="exactly one of"):
        TabularDataModule()
    with pytest.raises(ConfigError, match="embedded tables"):
        TabularDataModule(dataset="iris")
    with pytest.raises(ConfigError, match="no such file"):
        TabularDataModule(path=str(tmp_path / "none.csv")).setup()
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(ConfigError, match="unknown file type"):
        TabularDataModule(path=str(tmp_path / "t.xlsx")).setup()


# ------------------------------------------------------------------ simulation study
def test_simulation_matches_its_generative_process():
    d = simulate(20000, seed=5)
    # s_x: two components whose means differ by 2 in every coordinate, unit variance within
    diff = d["s_x"][d["label"] == 1].mean(0) - d["s_x"][d["label"] == 0].mean(0)
    np.testing.assert_allclose(diff, 2.0, atol=0.06)
    np.testing.assert_allclose(d["s_x"][d["label"] == 1].std(0), 1.0, atol=0.05)
    # s_y = s_x + A z + 0.5 ε: regressing s_y − s_x on z leaves residual std 0.5
    r = d["s_y"] - d["s_x"]
    coef, *_ = np.linalg.lstsq(d["z"], r, rcond=None)
    np.testing.assert_allclose((r - d["z"] @ coef).std(0), 0.5, atol=0.02)
    assert d["x"].shape == (20000, 32) and d["y"].shape == (20000, 32)
    # splits share the maps: the same latents give the same noiseless observations
    a, b = simulate(5, seed=1, maps_seed=0), simulate(5, seed=2, maps_seed=0)
    assert not np.allclose(a["x"], b["x"])


def test_simulation_datamodule():
    dm = SimulationDataModule(num_train=64, num_val=16, num_test=32, batch_size=16)
    dm.setup()
    assert dm.arrays["train"][0].shape == (64, 64) and dm.schema["x_dim"] == 32
    batch = next(iter(dm.plain_dataloader("test")))
    assert batch["values"].shape == (16, 64) and set(batch["label"].tolist()) <= {0, 1}


def test_a_batch_larger_than_the_training_split_is_one_full_batch_per_epoch():
    """The breast-cancer config relies on this: batch 512 over 409 training rows is one step per
    epoch holding every training row once (no drop_last), in a new order every epoch."""
    cfg = yaml.safe_load((Path(__file__).parents[1] / "configs/tabular/breast_cancer.yaml").read_text())
    batch_size = cfg["data"]["init_args"]["batch_size"]
    dm = TabularDataModule(dataset="breast_cancer", batch_size=batch_size, seed=0)
    dm.setup("fit")
    n = len(dm.arrays["train"][1])
    assert n == 409 and batch_size > n  # the property the config relies on (it uses 512)
    loader = dm.train_dataloader()
    epochs = [list(loader) for _ in range(2)]  # a second pass is the next epoch
    for batches in epochs:
        assert len(batches) == 1 and batches[0]["values"].shape == (n, 30)
        assert sorted(batches[0]["index"].tolist()) == list(range(n))
    assert epochs[0][0]["index"].tolist() != epochs[1][0]["index"].tolist()
