"""benchmarks/tabular.py --cache: cached trained-model outputs are re-scored without training."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from varjepa.tabular.evaluate import evaluate_features

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "tabular.py"
spec = importlib.util.spec_from_file_location("tabular_benchmark", PATH)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "CACHE", [tmp_path])
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 60), ("test", 30)):
        y = np.arange(n) % 2
        arrays[f"{split}_label"] = y
        arrays[f"{split}_raw"] = rng.normal(size=(n, 3)) + y[:, None]
        arrays[f"{split}_embedding"] = rng.normal(size=(n, 5)) + 0.5 * y[:, None]
        arrays[f"{split}_predictive_std"] = rng.random(n)
        arrays[f"{split}_posterior_std"] = rng.random(n)
    np.savez(tmp_path / "toy_seed3.npz", train_seconds=12.5, **arrays)
    return arrays


def test_cached_arrays_are_read_back_without_training(cache, monkeypatch):
    monkeypatch.setattr(bench, "fit", lambda *a, **k: pytest.fail("trained despite the cache"))
    tr, te, secs = bench.table_arrays("toy", 3)
    assert secs == 12.5
    for k in bench.CACHED:
        np.testing.assert_array_equal(tr[k], cache[f"train_{k}"])
        np.testing.assert_array_equal(te[k], cache[f"test_{k}"])


def test_table_rows_from_cache_scores_embedding_and_raw_as_evaluate_features(cache, monkeypatch):
    monkeypatch.setattr(bench, "fit", lambda *a, **k: pytest.fail("trained despite the cache"))
    res = bench.table_rows("toy", 3)
    c = cache
    emb = evaluate_features(
        c["train_embedding"],
        c["train_label"],
        c["test_embedding"],
        c["test_label"],
        seed=3,
        extra_uncertainty={"model": c["test_predictive_std"], "posterior": c["test_posterior_std"]},
        keep_correct=True,
    )
    raw = evaluate_features(
        c["train_raw"], c["train_label"], c["test_raw"], c["test_label"], seed=3, keep_correct=True
    )
    for m in ("logreg", "mlp", "gbt"):
        ce, cr = emb[m].pop("correct"), raw[m].pop("correct")
        assert res["embedding"][m] == emb[m] and res["raw"][m] == raw[m]
        assert res["paired"][m] == {
            "raw_only": int((cr & ~ce).sum()),
            "embedding_only": int((ce & ~cr).sum()),
        }
    assert (res["embedding_dim"], res["train_rows"], res["test_rows"]) == (5, 60, 30)
    assert res["train_seconds"] == 12.5
    # the toy embedding is weaker than the toy raw features: logreg accuracy reflects it
    assert res["raw"]["logreg"]["acc@100"] > res["embedding"]["logreg"]["acc@100"]


def test_markdown_reports_the_paired_difference_with_its_exact_interval(cache, monkeypatch):
    from varjepa.eval.paired import paired_difference_ci

    monkeypatch.setattr(bench, "fit", lambda *a, **k: pytest.fail("trained despite the cache"))
    res = bench.table_rows("toy", 3)
    md = bench.markdown({"seeds": [3, 4], "tables": {"toy": [res, res]}})  # two seeds' rows summed
    a, b = 2 * res["paired"]["logreg"]["raw_only"], 2 * res["paired"]["logreg"]["embedding_only"]
    d, lo, hi = (100 * v for v in paired_difference_ci(a, b, 60))
    assert lo <= d <= hi and d == pytest.approx(100 * (b - a) / 60)
    assert f"| logreg | {a} | {b} | {b - a:+d} |" in md
    assert f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}] |" in md
    cv_raw, cv_emb = res["raw"]["logreg"]["cv_accuracy"], res["embedding"]["logreg"]["cv_accuracy"]
    assert 0.5 < cv_emb <= 1.0 and 0.5 < cv_raw <= 1.0  # both learn something in cross-validation
    assert f"raw {cv_raw:.4f} ± 0.0000, embedding {cv_emb:.4f} ± 0.0000." in md


def test_set_overrides_reach_the_fit_and_are_cached_apart(tmp_path, monkeypatch):
    assert bench.override_args(["data.init_args.scale=quantile", "a.b=x=y"]) == [
        "--data.init_args.scale",
        "quantile",
        "--a.b",
        "x=y",
    ]
    for bad in ("scale", "=3", "--data.scale=1"):
        with pytest.raises(SystemExit, match="KEY=VALUE"):
            bench.override_args([bad])
    for seed_key in ("data.init_args.seed=4", "data.seed=4", " seed_everything=1"):
        with pytest.raises(SystemExit, match="--seeds"):
            bench.override_args([seed_key])
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        bench.override_args([" --x=1"])
    monkeypatch.setattr(bench, "CACHE", [tmp_path])
    plain = bench.cache_name("toy", 3)
    monkeypatch.setattr(bench, "OVERRIDES", ["data.init_args.scale=quantile"])
    assert bench.cache_name("toy", 3) != plain and bench.cache_name("toy", 3).startswith("toy_seed3_")
    seen = {}

    def fake_fit(config, seed, extra):
        seen["extra"] = list(extra)
        raise RuntimeError("stop after the arguments")

    monkeypatch.setattr(bench, "fit", fake_fit)
    with pytest.raises(RuntimeError, match="stop after"):
        bench.table_arrays("toy", 3)  # no cache file for these overrides: it trains
    assert seen["extra"][-2:] == ["--data.init_args.scale", "quantile"]
    assert seen["extra"][:2] == ["--data.init_args.seed", "3"]


def test_raw_baseline_stays_standardised_under_a_scale_override():
    from varjepa.tabular import TabularDataModule

    quant = TabularDataModule(dataset="breast_cancer", scale="quantile", seed=1)
    quant.setup()
    std = TabularDataModule(dataset="breast_cancer", seed=1)
    std.setup()
    for split in ("train", "test"):
        np.testing.assert_array_equal(bench.raw_features(quant, split), std.arrays[split][0])
    assert not np.allclose(quant.arrays["test"][0], std.arrays["test"][0])  # the model's input did change
    assert quant.preprocessor.scale == "quantile"  # the datamodule's own preprocessor is untouched
