"""``varjepa ablate``: grid expansion, dry-run command lines, bad grid specs, metrics read back from
TensorBoard, aggregation (mean ± std) against independent computations, the regularised JEPA
baselines, the step timer, and a tiny grid of real ``varjepa fit`` runs (skip on re-run, a failed
run recorded without stopping the grid)."""

from __future__ import annotations

import csv
import json
import os
import shlex
import statistics
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from varjepa import DigitsDataModule, StepTimer, VarJEPA
from varjepa import ablate as A
from varjepa.cli import main as cli_main
from varjepa.objectives.regularizers import SIGReg, VICRegVarCov

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs/ablations/digits.yaml")
BASE = str(ROOT / "configs/ablations/digits_base.yaml")


def _spec(argv: list[str]) -> A.GridSpec:
    return A.build_spec(A.make_parser().parse_args(argv))


# ----------------------------------------------------------------------------- grid expansion


def test_digits_grid_is_5_families_x_3_betas_x_3_seeds_plus_two_baselines():
    spec = _spec(["--config", DIGITS])
    runs = A.expand(spec)
    assert spec.configs == [Path(DIGITS).parent / "digits_base.yaml"]
    assert spec.out == Path("runs/ablations/digits")
    assert len(runs) == 45 and len({r.run_id for r in runs}) == 45
    by_family: dict[str, list[A.Run]] = {}
    for r in runs:
        by_family.setdefault(r.labels["family"], []).append(r)
    variational = ["diag_gaussian", "lowrank_gaussian", "mixture", "flow"]
    for fam in variational:
        assert len(by_family[fam]) == 9
        assert {(r.labels["beta"], r.labels["seed"]) for r in by_family[fam]} == {
            (b, s) for b in ("constant", "linear_warmup", "cyclical") for s in "012"
        }
    for fam in ("dirac", "vicreg_jepa", "sigreg_jepa"):  # beta = 0 by construction: once per seed
        assert [(r.labels["beta"], r.overrides["seed_everything"]) for r in by_family[fam]] == [
            ("none", 0),
            ("none", 1),
            ("none", 2),
        ]
        assert all(r.overrides["model.beta"] == 0.0 for r in by_family[fam])
    r = next(r for r in runs if r.run_id == "mixture__cyclical__seed2")
    assert r.overrides == {
        "model.posterior": {"name": "mixture", "components": 4},
        "model.beta": {"name": "cyclical", "value": 1.0, "cycles": 4, "ratio": 0.5},
        "seed_everything": 2,
    }
    assert by_family["sigreg_jepa"][0].overrides["model.objective"] == "sigreg_jepa"


def test_command_line_axes_replace_the_grid_files_and_single_values_are_fixed():
    spec = _spec(
        ["--config", DIGITS, "--family", "flow", "--beta", "0.5,cosine", "--seed", "7"]
        + ["--set", "model.lr=[0.001, 0.002]", "--set", "trainer.max_steps=10"]
    )
    runs = A.expand(spec)
    assert [r.run_id for r in runs] == [
        "flow__0.5__model.lr=0.001__seed7",
        "flow__0.5__model.lr=0.002__seed7",
        "flow__cosine__model.lr=0.001__seed7",
        "flow__cosine__model.lr=0.002__seed7",
    ]
    assert runs[0].overrides["model.beta"] == 0.5 and runs[0].overrides["trainer.max_steps"] == 10
    assert runs[3].overrides["model.beta"] == A.BETAS["cosine"] and runs[3].overrides["model.lr"] == 0.002


def test_dry_run_prints_one_fit_command_per_run_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "abl"
    rc = A.main(["--config", DIGITS, "--out", str(out), "--dry-run"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and len(lines) == 45 and not out.exists()
    runs = A.expand(_spec(["--config", DIGITS, "--out", str(out)]))
    for line, run in zip(lines, runs, strict=True):
        argv = shlex.split(line)
        assert argv[:4] == ["varjepa", "fit", "--config", A._display_path(Path(BASE))]
        assert f"--seed_everything={run.overrides['seed_everything']}" in argv
        assert f"--trainer.logger.init_args.save_dir={A._display_path(out / 'runs')}" in argv
        assert f"--trainer.logger.init_args.name={run.run_id}" in argv
    flow = shlex.split(lines[[r.run_id for r in runs].index("flow__linear_warmup__seed1")])
    posterior = next(a for a in flow if a.startswith("--model.posterior="))
    assert json.loads(posterior.split("=", 1)[1]) == A.FAMILIES["flow"]["model.posterior"]
    beta = next(a for a in flow if a.startswith("--model.beta="))
    assert json.loads(beta.split("=", 1)[1]) == {"name": "linear_warmup", "value": 1.0, "warmup": 0.2}
    # --index picks one run (SLURM arrays); the console script dispatches `ablate`
    with pytest.raises(SystemExit) as e:
        cli_main(["ablate", "--config", DIGITS, "--out", str(out), "--dry-run", "--index", "4"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == lines[4]


def test_dry_run_commands_parse_with_the_fit_parser():
    spec = _spec(["--config", DIGITS])
    for run in A.expand(spec)[::4]:
        cfg = A._parse_only(A.fit_args(spec, run))
        assert cfg.seed_everything == run.overrides["seed_everything"]
        assert cfg.trainer.logger.init_args.name == run.run_id
        for key, value in run.overrides.items():
            assert cfg[key] == value, key


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--set", "model.lrr=0.1,0.2"], "unknown config key 'model.lrr' (did you mean model.lr?)"),
        (["--set", "trainer.max_step=3"], "unknown config key 'trainer.max_step'"),
        (["--set", "model.posterior.rank=3,4"], "unknown config key 'model.posterior.rank'"),
        (["--family", "gaussian"], "unknown family 'gaussian'; allowed: diag_gaussian, dirac, flow,"),
        (["--beta", "warmup"], "unknown beta schedule 'warmup'; allowed: constant, cosine, cyclical,"),
        (["--seed", "a"], "seed 'a': seeds must be integers"),
        (["--set", "model.lr=0.1,abc"], 'model.lr = abc: Parser key "model.lr"'),
        (["--set", "model.beta=1,2", "--beta", "constant"], "'model.beta' and 'beta' are the same axis"),
        (["--set", "model.beta=1", "--beta", "constant"], "set: 'model.beta' is also a grid axis"),
        (["--set", "seed_everything=1,2"], "'seed_everything' and 'seed' are the same axis"),
    ],
)
def test_bad_grid_specs_fail_with_one_line_and_write_nothing(argv, expected, tmp_path, capsys):
    out = tmp_path / "abl"
    rc = A.main(["--config", BASE, "--seed", "0", "--out", str(out), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert err.count("\n") == 1 and err.startswith("varjepa ablate: error: ")
    assert expected in err, err


def test_empty_grids_and_bad_grid_files(tmp_path, capsys):
    out = tmp_path / "abl"
    cases = {
        "empty.yaml": ({"config": BASE, "grid": {}}, "empty grid: give at least one axis"),
        "novalues.yaml": (
            {"config": BASE, "grid": {"family": []}},
            "empty grid: axis 'family' has no values",
        ),
        "typo.yaml": ({"config": BASE, "grids": {}, "grid": {"seed": [0]}}, "unknown key(s) grids; allowed:"),
        "nobase.yaml": ({"grid": {"seed": [0]}}, "no base config"),
        "shared.yaml": (
            {"config": "shared_base.yaml", "grid": {"seed": [0, 1]}},
            "ModelCheckpoint writes to dirpath 'ckpts', which every run would share",
        ),
        "badfam.yaml": (
            {"config": BASE, "families": {"big": {"model.encoder.dpth": 4}}, "grid": {"family": ["big"]}},
            "family 'big': unknown config key 'model.encoder.dpth' (did you mean model.encoder.depth",
        ),
    }
    shared = yaml.safe_load(Path(BASE).read_text())
    shared["trainer"]["callbacks"].append(
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"dirpath": "ckpts"}}
    )
    (tmp_path / "shared_base.yaml").write_text(yaml.safe_dump(shared))
    for name, (doc, expected) in cases.items():
        (tmp_path / name).write_text(yaml.safe_dump(doc))
        rc = A.main(["--config", str(tmp_path / name), "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and not out.exists(), name
        assert err.count("\n") == 1 and expected in err, (name, err)
    # no axis at all on the command line
    assert A.main(["--config", BASE, "--out", str(out)]) == 2
    assert "empty grid" in capsys.readouterr().err
    # argparse errors are one line too
    with pytest.raises(SystemExit) as e:
        A.main(["--config", BASE, "--bogus"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "unrecognized arguments: --bogus" in err


# ----------------------------------------------------------------------------- results


def test_read_metrics_takes_the_last_step_and_final_values(tmp_path):
    with SummaryWriter(str(tmp_path)) as w:
        for step, v in [(0, 5.0), (10, 3.0), (20, 2.5)]:
            w.add_scalar("train/loss", v, step)
        w.add_scalar("probe/acc", 0.5, 10)
        w.add_scalar("probe/acc_final", 0.75, 20)
        w.add_scalar("epoch", 3, 20)
        w.add_scalar("hp_metric", -1, 0)
        w.add_scalar("val/loss", 4.0, 20)
        w.add_scalar("val/loss", 3.5, 20)  # same step: the later event wins
    (tmp_path / "hparams").mkdir()
    assert A.read_metrics(tmp_path) == {"probe/acc": 0.75, "train/loss": 2.5, "val/loss": 3.5}
    assert A.read_metrics(tmp_path / "hparams") == {}


def _write_results(spec: A.GridSpec, runs: list[A.Run], values: dict[str, dict[str, float]]) -> None:
    for r in runs:
        d = A.run_dir(spec, r)
        d.mkdir(parents=True)
        m = values.get(r.run_id)
        res = {"run_id": r.run_id, "wall_s": 10.0 + len(r.run_id), "fingerprint": A._fingerprint(spec, r)}
        if m is None:
            res.update(status="failed", error="exit status 1: RuntimeError: boom", metrics={})
        else:
            res.update(status="ok", metrics=m)
        (d / "result.json").write_text(json.dumps(res))


def test_aggregation_csv_and_markdown_against_independent_mean_and_std(tmp_path):
    spec = _spec(
        ["--config", BASE, "--family", "dirac,diag_gaussian", "--beta", "constant,cyclical"]
        + ["--seed", "0,1,2", "--out", str(tmp_path)]
    )
    runs = A.expand(spec)
    assert len(runs) == 9  # dirac once per seed
    rng = np.random.default_rng(0)
    values = {
        r.run_id: {"probe/acc": float(rng.uniform(0.5, 1)), "val/loss": float(rng.normal(100, 5))}
        for r in runs
    }
    values["diag_gaussian__constant__seed1"]["uncertainty/nll"] = 1.25  # logged by one run only
    del values["diag_gaussian__cyclical__seed2"]  # a failed run
    _write_results(spec, runs, values)
    results = A.collect(spec, runs)
    md = A.write_outputs(spec, runs, results)
    with open(tmp_path / "ablation.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["family"], r["beta"]) for r in rows] == [
        ("dirac", "none"),
        ("diag_gaussian", "constant"),
        ("diag_gaussian", "cyclical"),
    ]
    for row in rows:
        fam, beta = row["family"], row["beta"]
        ids = [
            r.run_id
            for r in runs
            if r.labels["family"] == fam and r.labels["beta"] == beta and r.run_id in values
        ]
        assert int(row["n"]) == len(ids) and int(row["failed"]) == 3 - len(ids) and int(row["runs"]) == 3
        for m in ("probe/acc", "val/loss"):
            xs = np.array([values[i][m] for i in ids])
            assert float(row[f"{m}_mean"]) == pytest.approx(xs.mean(), rel=1e-12)
            assert float(row[f"{m}_std"]) == pytest.approx(xs.std(ddof=1), rel=1e-12)
            cell = f"{A._fmt(xs.mean())} ± {xs.std(ddof=1):.2g}"
            assert cell in md
        walls = np.array([10.0 + len(i) for i in ids])
        assert float(row["wall_s_mean"]) == pytest.approx(walls.mean())
    unc = rows[1]
    assert float(unc["uncertainty/nll_mean"]) == 1.25 and unc["uncertainty/nll_std"] == ""
    assert rows[0]["uncertainty/nll_mean"] == ""
    # Markdown: one line per row, n finished of the seeds, failures listed with their error
    table = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert table[0].startswith("| family | beta | n | val/loss |")
    assert table[3].startswith("| diag_gaussian | cyclical | 2/3 |")
    assert "`diag_gaussian__cyclical__seed2`: exit status 1: RuntimeError: boom" in md
    with open(tmp_path / "runs.csv") as f:
        per_run = {r["run_id"]: r for r in csv.DictReader(f)}
    assert per_run["diag_gaussian__cyclical__seed2"]["status"] == "failed"
    assert float(per_run["dirac__seed1"]["probe/acc"]) == values["dirac__seed1"]["probe/acc"]
    png = (tmp_path / "ablation.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


# ----------------------------------------------------------------------------- components


def _batch_and_outputs(model: VarJEPA):
    dm = DigitsDataModule(batch_size=16)
    dm.setup()
    dm.set_masking(model.masking, model.encoder.grid_size)
    batch = next(iter(dm.train_dataloader()))
    return model(batch)


@pytest.mark.parametrize("name", ["vicreg_jepa", "sigreg_jepa"])
def test_regularised_jepa_presets_are_regression_plus_the_regulariser(name, tiny):
    model = VarJEPA(**tiny, posterior="dirac", beta=0.0, objective={"name": name, "loss": "smooth_l1"})
    out = _batch_and_outputs(model)
    res = model.elbo(out, step=3, total=10)
    reg_name = name.split("_")[0]
    assert set(res.values) == {"smooth_l1", reg_name}
    reg = VICRegVarCov() if name == "vicreg_jepa" else SIGReg()
    expected_reg = reg(out)
    expected_reg_weight = 1.0 if name == "vicreg_jepa" else 0.05
    reg_loss = F.smooth_l1_loss(out.pred.mean, out.target)
    torch.testing.assert_close(res.values["smooth_l1"], reg_loss)
    torch.testing.assert_close(res.values[reg_name], expected_reg)
    torch.testing.assert_close(res.loss, reg_loss + expected_reg_weight * expected_reg)
    res.loss.backward()  # the regulariser reaches the context encoder
    grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.parametrize(
    ("config", "terms"),
    [("ijepa", {"mse"}), ("vicreg_jepa", {"mse", "vicreg"}), ("sigreg_jepa", {"mse", "sigreg"})],
)
def test_baseline_configs_build_on_the_quickstart_encoder(config, terms):
    cfg = A._parse_only(["--config", str(ROOT / f"configs/baselines/{config}.yaml")])
    quick = A._parse_only(["--config", str(ROOT / "configs/quickstart.yaml")])
    assert cfg.model.encoder == quick.model.encoder and cfg.model.predictor == quick.model.predictor
    model = VarJEPA(**cfg.model.as_dict())
    assert {t.name for t in model.elbo.terms} == terms and not model.family.stochastic


def test_step_timer_logs_the_median_step_time(tmp_path, tiny):
    timer = StepTimer(skip=2)
    trainer = L.Trainer(
        max_steps=6,
        accelerator="cpu",
        logger=L.pytorch.loggers.TensorBoardLogger(str(tmp_path), name="", version=""),
        callbacks=[timer],
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=2,
    )
    trainer.fit(VarJEPA(**tiny), DigitsDataModule(batch_size=16))
    assert len(timer.times_ms) == 6 and all(t > 0 for t in timer.times_ms)
    m = A.read_metrics(tmp_path)
    assert m["time/step_ms"] == pytest.approx(statistics.median(timer.times_ms[2:]), rel=1e-6)
    assert 0 < m["time/fit_s"] < 600
    ea = EventAccumulator(str(tmp_path))
    ea.Reload()
    # written with the training scalars, each the median of the steps since the previous write
    logged = ea.Scalars("time/step_ms")
    assert [e.step for e in logged] == [e.step for e in ea.Scalars("train/loss")] == [1, 3, 5]
    windows = [timer.times_ms[0:2], timer.times_ms[2:4], timer.times_ms[4:6]]
    assert [e.value for e in logged] == pytest.approx([statistics.median(w) for w in windows], rel=1e-6)


# ----------------------------------------------------------------------------- end to end

TINY = {
    "model.encoder.embed_dim": 32,
    "model.encoder.depth": 1,
    "model.encoder.num_heads": 2,
    "model.predictor.embed_dim": 16,
    "model.predictor.depth": 1,
    "model.predictor.num_heads": 2,
    "trainer.max_steps": 4,
    "trainer.check_val_every_n_epoch": 1,
    "trainer.limit_train_batches": 4,
    "trainer.limit_val_batches": 1,
    "trainer.num_sanity_val_steps": 0,
}


def _event_scalars(log_dir: Path) -> dict[str, float]:
    """Last value of every scalar, read with TensorBoard directly (independent of varjepa)."""
    ea = EventAccumulator(str(log_dir))
    ea.Reload()
    return {t: ea.Scalars(t)[-1].value for t in ea.Tags()["scalars"]}


@pytest.mark.slow
def test_tiny_grid_end_to_end_skips_finished_runs_and_records_failures(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    grid = {
        "config": BASE,
        "out": str(tmp_path / "abl"),
        "set": TINY,
        "grid": {"model.lr": [-1.0, 0.002], "seed": [0, 1]},
    }
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid))
    argv = ["--config", str(tmp_path / "grid.yaml")]
    out = tmp_path / "abl"

    rc = A.main(argv)
    log = capsys.readouterr().out
    assert rc == 1  # some runs failed; the grid still ran to the end
    ok_ids, bad_ids = (
        ["model.lr=0.002__seed0", "model.lr=0.002__seed1"],
        ["model.lr=-1__seed0", "model.lr=-1__seed1"],
    )
    for i in bad_ids:
        assert f"{i}: FAILED" in log
        res = json.loads((out / "runs" / i / "result.json").read_text())
        assert res["status"] == "failed" and res["returncode"] == 2
        assert res["error"] == "exit status 2: varjepa: configuration error: model.lr = -1.0; must be > 0"
    finals = {}
    for i in ok_ids:
        assert f"{i}: done in" in log
        d = out / "runs" / i
        res = json.loads((d / "result.json").read_text())
        assert res["status"] == "ok" and (d / "config.yaml").is_file() and (d / "checkpoints").is_dir()
        finals[i] = _event_scalars(d)
        assert res["metrics"]["val/loss"] == pytest.approx(finals[i]["val/loss"])
        assert res["metrics"]["probe/acc"] == pytest.approx(finals[i]["probe/acc_final"])
        assert (out / "hparams" / i).is_dir()
    # the table: mean and sample std over the two seeds, from the event files read independently
    with open(out / "ablation.csv") as f:
        rows = {r["model.lr"]: r for r in csv.DictReader(f)}
    assert rows["-1"]["n"] == "0" and rows["-1"]["failed"] == "2"
    md = (out / "ablation.md").read_text()
    for tag, key in (
        ("val/loss", "val/loss"),
        ("probe/acc_final", "probe/acc"),
        ("time/step_ms_final", "time/step_ms"),
    ):
        xs = np.array([finals[i][tag] for i in ok_ids])
        assert float(rows["0.002"][f"{key}_mean"]) == pytest.approx(xs.mean(), rel=1e-6)
        assert float(rows["0.002"][f"{key}_std"]) == pytest.approx(xs.std(ddof=1), rel=1e-5)
        assert f"{A._fmt(xs.mean())} ± {xs.std(ddof=1):.2g}" in md
    assert "| 0.002 | 2/2 |" in md and "| -1 | 0/2 |" in md
    assert (out / "ablation.png").stat().st_size > 10_000

    # re-invocation: nothing runs again (finished and failed runs are both recorded)
    stamps = {i: (out / "runs" / i / "result.json").stat().st_mtime_ns for i in ok_ids + bad_ids}
    assert A.main(argv) == 1
    log = capsys.readouterr().out
    assert log.count("done earlier, skipped") == 2 and log.count("failed earlier") == 2
    assert "running" not in log
    assert stamps == {i: (out / "runs" / i / "result.json").stat().st_mtime_ns for i in stamps}


# a stand-in for `varjepa fit` (a real one takes seconds to start): logs like one, or fails
FAKE_FIT = """
import sys, time
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter
args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
if float(args.get("--model.lr", 1)) < 0:
    print("Traceback ...", file=sys.stderr)
    sys.exit("ValueError: lr < 0")
w = EventFileWriter(args["--trainer.logger.init_args.save_dir"] + "/" + args["--trainer.logger.init_args.name"])
value = 10 * float(args["--model.lr"]) + int(args["--seed_everything"])
summary = Summary(value=[Summary.Value(tag="val/loss", simple_value=value)])
w.add_event(Event(wall_time=time.time(), step=4, summary=summary))
w.close()
"""


def test_interrupted_runs_run_again_and_finished_ones_are_skipped(tmp_path, capsys, monkeypatch):
    script = tmp_path / "fake_fit.py"
    script.write_text(FAKE_FIT)
    monkeypatch.setattr(A, "FIT_PREFIX", [sys.executable, str(script)])
    out = tmp_path / "abl"
    argv = ["--config", BASE, "--set", "model.lr=-1,0.5", "--seed", "0,1", "--out", str(out)]
    assert A.main(argv) == 1
    capsys.readouterr()
    res = json.loads((out / "runs" / "model.lr=-1__seed1" / "result.json").read_text())
    assert res["status"] == "failed" and res["error"] == "exit status 1: ValueError: lr < 0"
    assert res["stderr_tail"] == ["Traceback ...", "ValueError: lr < 0"]
    ok = json.loads((out / "runs" / "model.lr=0.5__seed1" / "result.json").read_text())
    assert ok["status"] == "ok" and ok["metrics"] == {"val/loss": 6.0}
    stamps = {d.name: (d / "result.json").stat().st_mtime_ns for d in (out / "runs").iterdir()}
    # interrupted: the run's dir holds partial output but no result.json
    partial = out / "runs" / "model.lr=0.5__seed0"
    os.remove(partial / "result.json")
    (partial / "partial.txt").write_text("left over")
    assert A.main(argv) == 1
    log = capsys.readouterr().out
    assert log.count(": running") == 1 and "model.lr=0.5__seed0: running" in log
    assert log.count("done earlier, skipped") == 1 and log.count("failed earlier") == 2
    assert not (partial / "partial.txt").exists()
    assert json.loads((partial / "result.json").read_text())["metrics"] == {"val/loss": 5.0}
    for name, stamp in stamps.items():
        if name != partial.name:
            assert (out / "runs" / name / "result.json").stat().st_mtime_ns == stamp
    # --retry-failed runs the failed ones again; a changed base config reruns everything
    assert A.main([*argv, "--retry-failed"]) == 1
    log = capsys.readouterr().out
    assert log.count(": running") == 2 and log.count("done earlier, skipped") == 2
    with open(out / "ablation.csv") as f:
        rows = {r["model.lr"]: r for r in csv.DictReader(f)}
    assert float(rows["0.5"]["val/loss_mean"]) == 5.5
    assert float(rows["0.5"]["val/loss_std"]) == pytest.approx(np.std([5.0, 6.0], ddof=1))
