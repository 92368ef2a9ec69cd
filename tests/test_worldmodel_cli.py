"""``varjepa fit`` and ``varjepa plan`` end to end on the world-model config (tiny sizes), and their
errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from varjepa.cli import main, run
from varjepa.worldmodel.plan import (
    EpisodeResult,
    PlanSettings,
    paired_markdown,
    paired_violations,
    pool_paired,
    summarize,
    table_markdown,
)
from varjepa.worldmodel.plan import main as plan_main

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/worldmodel/windy_point.yaml"


pytestmark = pytest.mark.usefixtures("one_thread")


def _fit_args(tmp: Path, steps: int = 20) -> list[str]:
    return [
        "fit",
        f"--config={CONFIG}",
        "--model.init_args.latent_dim=4",
        "--model.init_args.hidden=16",
        "--model.init_args.belief_dim=16",
        "--model.init_args.calibration_samples=19",
        "--data.init_args.episodes=12",
        "--data.init_args.steps=20",
        f"--data.init_args.cache_dir={tmp / 'cache'}",
        f"--trainer.max_steps={steps}",
        f"--trainer.val_check_interval={steps}",
        "--trainer.limit_val_batches=1",
        "--trainer.log_every_n_steps=5",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={tmp / 'runs'}",
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny world model fitted through the CLI: (tmp dir, checkpoint path, log dir)."""
    tmp = tmp_path_factory.mktemp("wm")
    torch.set_num_threads(1)
    cli = run(_fit_args(tmp))
    assert cli.trainer.global_step == 20
    log_dir = Path(cli.trainer.logger.log_dir)
    return tmp, log_dir / "checkpoints" / "last.ckpt", log_dir


@pytest.mark.slow
def test_fit_logs_the_elbo_terms_and_k_step_coverage(trained):
    _, ckpt, log_dir = trained
    assert ckpt.is_file()
    ea = EventAccumulator(str(log_dir))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    for tag in (
        "train/loss",
        "train/nll",
        "train/rec",
        "train/hazard",
        "train/pred_std",
        "train/rankme",
        "train/ema_momentum",
    ):
        assert tag in tags, tag
    for k in (1, 5, 10):
        v = ea.Scalars(f"val/coverage90_k{k}")[-1].value
        assert 0.0 <= v <= 1.0
    assert "plan" in (log_dir / "config.yaml").read_text()


@pytest.mark.slow
def test_plan_writes_table_pictures_and_events(trained, capsys):
    tmp, ckpt, _ = trained
    out = tmp / "plan"
    torch.set_num_threads(2)  # the caller's setting, restored after planning on plan.threads
    status = plan_main(
        [
            f"--config={CONFIG}",
            f"--ckpt_path={ckpt}",
            "--plan.threads=1",
            "--plan.episodes=2",
            "--plan.planners=[cem, mppi]",
            "--plan.objectives=[expected, {name: cvar, alpha: 0.25}]",
            "--plan.horizon=3",
            "--plan.candidates=8",
            "--plan.particles=4",
            "--plan.iterations=1",
            "--plan.elites=2",
            f"--plan.out={out}",
        ]
    )
    assert status == 0
    assert torch.get_num_threads() == 2
    printed = capsys.readouterr().out
    assert "| cem | expected |" in printed and "| mppi | cvar0.25 |" in printed
    data = json.loads((out / "plan.json").read_text())
    assert data["meta"]["env"]["id"] == "varjepa/WindyPointMass-v0"  # what the episodes ran in
    assert data["meta"]["torch_threads"] == 1  # what they planned with
    assert [(r["planner"], r["objective"]) for r in data["rows"]] == [
        ("cem", "expected"),
        ("cem", "cvar0.25"),
        ("mppi", "expected"),
        ("mppi", "cvar0.25"),
    ]
    for r in data["rows"]:
        eps = r["episodes_detail"]
        assert [e["seed"] for e in eps] == [1000, 1001]
        # the summary is recomputed from the episodes
        assert r["success"] == pytest.approx(np.mean([e["success"] for e in eps]))
        assert r["return"] == pytest.approx(np.mean([e["ret"] for e in eps]))
        assert r["plan_ms"] > 0
        # every episode starts at the environment's start and is a connected path
        pos = np.array(eps[0]["positions"])
        assert np.linalg.norm(pos[0] - [-1.4, 0.0]) < 0.1 and len(pos) == eps[0]["steps"] + 1
    assert (out / "trajectories_cem_expected.png").stat().st_size > 1000
    ea = EventAccumulator(str(out))
    ea.Reload()
    assert "plan/trajectories/cem_expected" in ea.Tags()["images"]
    assert "plan/cem_cvar0.25/hazard" in ea.Tags()["scalars"]
    # each objective is paired with its planner's risk-neutral row, in the JSON, the file and stdout
    assert [(q["planner"], q["objective"], q["episodes"]) for q in data["paired"]] == [
        ("cem", "cvar0.25", 2),
        ("mppi", "cvar0.25", 2),
    ]
    for q in data["paired"]:
        assert q["violations"] == sum(
            e["hazard"]
            for r in data["rows"]
            if r["planner"] == q["planner"] and r["objective"] == "cvar0.25"
            for e in r["episodes_detail"]
        )
    assert "McNemar" in printed and "McNemar" in (out / "plan.md").read_text()


def test_summary_and_table_are_computed_from_the_episodes():
    eps = [
        EpisodeResult(0, -20.0, True, False, 20, 10.0),
        EpisodeResult(1, -70.0, False, True, 20, 30.0),
        EpisodeResult(2, -60.0, False, False, 60, 20.0),
        EpisodeResult(3, -18.0, True, False, 18, 20.0),
    ]
    s = summarize(eps, worst_share=0.25)
    assert s == {
        "episodes": 4,
        "success": 0.5,
        "hazard": 0.25,
        "return": -42.0,
        "worst_return": -70.0,
        "steps": 29.5,
        "plan_ms": 20.0,
    }
    assert [e.outcome for e in eps] == ["success", "hazard", "timeout", "success"]
    # tilted rollouts: the episodes' effective sample sizes are averaged too
    tilted = [EpisodeResult(i, -20.0, True, False, 20, 10.0, ess=v) for i, v in enumerate([4.0, 7.0, 10.0])]
    assert summarize(tilted)["ess"] == pytest.approx(7.0)
    md = table_markdown([{"planner": "cem", "objective": "expected", **s}], 0.25)
    assert (
        "| cem | expected | 0.50 | 0.25 | -42.0 | -70.0 | 29.5 | 20.0 |" in md and "worst 25 % return" in md
    )


@pytest.mark.slow
def test_the_refit_hazard_head_is_in_the_checkpoints_of_the_final_step(tmp_path):
    """The head is refit in the module's on_train_end, after Lightning's checkpoint callback has
    saved: the final step's files must be saved again, earlier steps' left alone."""
    from varjepa.checkpointing import load_checkpoint

    args = _fit_args(tmp_path, steps=20)
    args += [
        "--trainer.val_check_interval=10",
        "--trainer.max_epochs=-1",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.save_top_k=-1",
        "--trainer.callbacks.every_n_train_steps=10",
        "--trainer.callbacks.filename=s{step}",
        "--trainer.callbacks.save_weights_only=true",
        "--model.init_args.hazard_refit_steps=300",
    ]
    cli = run(args)
    ckdir = Path(cli.trainer.logger.log_dir) / "checkpoints"
    live = {k: v for k, v in cli.model.state_dict().items() if k.startswith("hazard_head")}
    assert live
    for name in ("last.ckpt", "sstep=20.ckpt", "epoch=19-step=20.ckpt"):  # the final step: the refit head
        sd = load_checkpoint(ckdir / name)["state_dict"]
        for k, v in live.items():
            torch.testing.assert_close(sd[k], v, msg=f"{name}: {k}")
    early = load_checkpoint(ckdir / "sstep=10.ckpt")["state_dict"]
    assert any(not torch.equal(early[k], v) for k, v in live.items())
    # each file keeps its callback's kind: the weights-only callback's stays weights-only
    assert "optimizer_states" not in load_checkpoint(ckdir / "sstep=20.ckpt")
    assert "optimizer_states" in load_checkpoint(ckdir / "last.ckpt")


def _episodes(hazard_seeds, seeds=range(20)):
    return [EpisodeResult(s, -1.0, s not in hazard_seeds, s in hazard_seeds, 5, 1.0) for s in seeds]


def test_objectives_are_paired_with_the_risk_neutral_row_by_episode_seed():
    rows = [
        {"planner": "cem", "objective": "expected", "episodes_detail": _episodes({0, 1, 2, 3, 4, 5})},
        {"planner": "cem", "objective": "cvar0.2", "episodes_detail": _episodes({5, 9})},
        {"planner": "mppi", "objective": "expected", "episodes_detail": _episodes(set())},
        {"planner": "mppi", "objective": "cvar0.2", "episodes_detail": _episodes(set())},
        {"planner": "random", "objective": "cvar0.2", "episodes_detail": _episodes({1})},  # no baseline
    ]
    cem, mppi = paired_violations(rows)
    got = (cem["violations_expected"], cem["violations"], cem["only_expected"], cem["only_objective"])
    assert got == (6, 2, 5, 1) and cem["episodes"] == 20
    assert cem["cut"] == pytest.approx(1 - 2 / 6)
    # exact two-sided binomial p of 5 vs 1 discordant episodes: 2·(C(6,0) + C(6,1)) / 2^6
    assert cem["mcnemar_p"] == pytest.approx(2 * (1 + 6) / 64)
    assert mppi["mcnemar_p"] == 1.0 and mppi["cut"] is None
    # plan.json holds the episodes as dicts, in any order: the pairing is by seed
    as_json = [
        {**r, "episodes_detail": [e.__dict__ for e in reversed(r["episodes_detail"])]} for r in rows[:2]
    ]
    assert paired_violations(as_json) == [cem]
    md = paired_markdown([cem, mppi])
    assert "| cem | cvar0.2 | 6 → 2 | 5 | 1 | 67% | 0.219 |" in md
    assert "| mppi | cvar0.2 | 0 → 0 | 0 | 0 | – | 1 |" in md
    # episodes that only one row ran are left out
    short = [rows[0], {**rows[1], "episodes_detail": _episodes({5, 9}, seeds=range(4, 10))}]
    (q,) = paired_violations(short)
    assert (q["episodes"], q["violations_expected"], q["violations"], q["only_expected"]) == (6, 2, 2, 1)


def test_paired_counts_pool_over_runs_and_the_test_is_redone_on_the_sums():
    run_a = paired_violations(
        [
            {"planner": "cem", "objective": "expected", "episodes_detail": _episodes({0, 1, 2})},
            {"planner": "cem", "objective": "cvar0.2", "episodes_detail": _episodes({2})},
        ]
    )
    run_b = paired_violations(
        [
            {"planner": "cem", "objective": "expected", "episodes_detail": _episodes({3, 4, 5, 6})},
            {"planner": "cem", "objective": "cvar0.2", "episodes_detail": _episodes({7})},
        ]
    )
    (p,) = pool_paired([run_a, run_b])
    assert (p["episodes"], p["violations_expected"], p["violations"]) == (40, 7, 2)
    assert (p["only_expected"], p["only_objective"]) == (6, 1)
    assert p["cut"] == pytest.approx(5 / 7)
    assert p["mcnemar_p"] == pytest.approx(2 * (1 + 7) / 2**7)  # binomial(7, 1/2): P(X <= 1) twice


@pytest.mark.parametrize(
    "args, words",
    [
        (["--plan.planners=[astar]"], "unknown planner 'astar'"),
        (["--plan.objectives=[var]"], "unknown risk measure 'var'"),
        (["--plan.episodes=0"], "plan.episodes"),
        (["--plan.cost={name: teleport}"], "unknown planning cost 'teleport'"),
    ],
)
def test_plan_bad_settings_fail_with_one_line(args, words, trained, capsys, tmp_path):
    _, ckpt, _ = trained
    status = plan_main([f"--config={CONFIG}", f"--ckpt_path={ckpt}", f"--plan.out={tmp_path / 'p'}", *args])
    err = capsys.readouterr().err
    assert status == 2 and words in err
    assert not (tmp_path / "p").exists()


def test_plan_refuses_a_checkpoint_that_is_not_a_world_model(tmp_path, capsys):
    bad = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"encoder": {}}}, bad)
    assert plan_main([f"--config={CONFIG}", f"--ckpt_path={bad}"]) == 2
    assert "not a LatentWorldModel checkpoint" in capsys.readouterr().err
    assert plan_main([f"--config={CONFIG}", f"--ckpt_path={tmp_path / 'missing.ckpt'}"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_fit_rejects_a_window_shorter_than_burn_in_plus_horizon(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([*_fit_args(tmp_path), "--data.init_args.window=4", "--model.init_args.horizon=4"])
    assert e.value.code == 2
    assert "data.window = 4 but model.burn_in + model.horizon = 5" in capsys.readouterr().err  # 1 + 4
    assert not (tmp_path / "runs").exists()


def test_plan_settings_validate_in_python():
    with pytest.raises(Exception, match="worst_share"):
        PlanSettings(worst_share=0)


@pytest.mark.slow
def test_pendulum_config_fits_and_plans_without_a_hazard_head(tmp_path, capsys):
    cfg = ROOT / "configs/worldmodel/pendulum.yaml"
    cli = run(
        [
            "fit",
            f"--config={cfg}",
            "--model.init_args.latent_dim=4",
            "--model.init_args.hidden=16",
            "--model.init_args.belief_dim=16",
            "--model.init_args.calibration_samples=19",
            "--data.init_args.episodes=6",
            "--data.init_args.steps=30",
            f"--data.init_args.cache_dir={tmp_path / 'cache'}",
            "--trainer.max_steps=6",
            "--trainer.val_check_interval=6",
            "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        ]
    )
    model = cli.model
    assert model.hazard_head is None and model.obs_dim == 3 and model.action_dim == 1
    assert model.hparams.spaces["action_high"] == [2.0]
    assert "hazard" not in {t.name for t in model.elbo.terms}
    ckpt = Path(cli.trainer.logger.log_dir) / "checkpoints" / "last.ckpt"
    out = tmp_path / "plan"
    args = [f"--config={cfg}", f"--ckpt_path={ckpt}", "--plan.episodes=1", "--plan.planners=[cem]"]
    args += ["--plan.objectives=[expected]", "--plan.horizon=2", "--plan.candidates=4", "--plan.particles=2"]
    args += ["--plan.iterations=1", "--plan.elites=2", f"--plan.out={out}"]
    assert plan_main(args) == 0
    row = json.loads((out / "plan.json").read_text())["rows"][0]
    # Pendulum-v1 runs 200 steps; rewards are in [-16.3, 0]
    assert row["steps"] == 200 and -16.3 * 200 <= row["return"] <= 0
    assert row["success"] == 0 and row["hazard"] == 0


def test_default_config_is_the_anchored_recipe_trained_from_the_first_observation(trained):
    """The windy-point default: an anchored mixture whose location has its own MLP (and the mse term
    that fits it), a detached encoder, standardised predictor input, and burn_in 1."""
    tmp, ckpt, _ = trained
    from varjepa.worldmodel.plan import load_world_model

    model = load_world_model(str(ckpt))
    assert type(model.family).__name__ == "AnchoredMixture" and model.family.components == 5
    assert model.anchor_head is not None and model.hparams.input_norm and model.hparams.detach_belief
    assert model.hparams.burn_in == 1 and model.hparams.calibration_history == 4
    assert {"nll", "mse", "rec", "hazard"} <= {t.name for t in model.elbo.terms}


@pytest.mark.slow
def test_mixture_overlay_restores_the_previous_default_and_plans(tmp_path):
    """configs/worldmodel/mixture.yaml composes with the windy-point config: a plain mixture (no mse
    term: the overlay's objective replaces the default's whole), a jointly trained encoder, burn_in 4
    (with the warning that planning's first steps extrapolate); the checkpoint plans."""
    args = _fit_args(tmp_path, steps=6)
    args.insert(2, f"--config={ROOT / 'configs/worldmodel/mixture.yaml'}")
    with pytest.warns(UserWarning, match="model.burn_in = 4"):
        cli = run(args)
    model = cli.model
    assert type(model.family).__name__ == "Mixture" and model.family.components == 5
    assert model.anchor_head is None and not model.hparams.input_norm and not model.hparams.detach_belief
    assert model.hparams.objective == {"name": "heteroscedastic", "beta_nll": 0.0}
    assert {t.name for t in model.elbo.terms} == {"nll", "kl", "rec", "hazard"}
    log_dir = Path(cli.trainer.logger.log_dir)
    assert log_dir.parent.name == "windy_point_mixture"
    out = tmp_path / "plan"
    plan = [f"--config={CONFIG}", f"--ckpt_path={log_dir / 'checkpoints' / 'last.ckpt'}", "--plan.episodes=1"]
    plan += ["--plan.planners=[cem]", "--plan.objectives=[{name: cvar, alpha: 0.2}]", "--plan.horizon=2"]
    plan += ["--plan.candidates=4", "--plan.particles=4", "--plan.iterations=1", "--plan.elites=2"]
    assert plan_main([*plan, f"--plan.out={out}"]) == 0
    row = json.loads((out / "plan.json").read_text())["rows"][0]
    assert row["objective"] == "cvar0.2" and 1 <= row["steps"] <= 60


def test_gusts_overlay_sets_its_recipe(capsys):
    """configs/worldmodel/gusts.yaml composes with the windy-point config: the innovation belief, a
    10-component anchored mixture, 1600 episodes and 4500 steps, everything else the default's."""
    import yaml

    overlay = ROOT / "configs/worldmodel/gusts.yaml"
    with pytest.raises(SystemExit):
        run(["fit", f"--config={CONFIG}", f"--config={overlay}", "--print_config"])
    cfg = yaml.safe_load(capsys.readouterr().out)
    model, data = cfg["model"]["init_args"], cfg["data"]["init_args"]
    assert model["belief"] == {"name": "window", "length": 4, "innovation": True}
    assert model["posterior"] == {"name": "anchored_mixture", "components": 10}
    assert data["episodes"] == 1600 and cfg["trainer"]["max_steps"] == 4500
    assert cfg["trainer"]["logger"]["init_args"]["name"] == "windy_point_gusts"
    base = yaml.safe_load(CONFIG.read_text())
    assert model["objective"] == base["model"]["init_args"]["objective"]  # the rest is the default's
    assert model["residual"] and model["detach_belief"] and model["burn_in"] == 1
    # its plan section: importance-sampled rollouts at hazard weight 10, the budget the default's
    from varjepa.worldmodel.plan import _parser

    plan = _parser().parse_args([f"--config={CONFIG}", f"--config={overlay}", "--ckpt_path=x.ckpt"]).plan
    assert plan.tilt == 0.0 and plan.cost == {"name": "goal_hazard", "hazard_weight": 10.0}
    assert plan.compile is True
    assert plan.planners == ["cem"]
    assert plan.objectives == ["expected", {"name": "cvar", "alpha": 0.1}, {"name": "cvar", "alpha": 0.2}]
    budget = base["plan"]
    assert (plan.horizon, plan.candidates, plan.particles, plan.iterations) == (
        budget["horizon"],
        budget["candidates"],
        budget["particles"],
        budget["iterations"],
    )


@pytest.mark.slow
def test_gusts_overlay_fits_and_plans(tmp_path):
    """A tiny fit with the overlay (sizes overridden on the command line after it) builds its model,
    and the checkpoint plans an episode."""
    args = _fit_args(tmp_path, steps=6)
    args.insert(2, f"--config={ROOT / 'configs/worldmodel/gusts.yaml'}")
    model = run(args).model
    assert type(model.family).__name__ == "AnchoredMixture" and model.family.components == 10
    assert type(model.belief).__name__ == "InnovationBelief"
    ckpts = list((tmp_path / "runs" / "windy_point_gusts").glob("version_*/checkpoints/last.ckpt"))
    assert len(ckpts) == 1
    out = tmp_path / "plan"
    overlay = ROOT / "configs/worldmodel/gusts.yaml"
    plan = [f"--config={CONFIG}", f"--config={overlay}", f"--ckpt_path={ckpts[0]}", "--plan.episodes=1"]
    plan += ["--plan.horizon=2", "--plan.candidates=4"]
    plan += ["--plan.particles=4", "--plan.iterations=1", "--plan.elites=2", f"--plan.out={out}"]
    assert plan_main(plan) == 0
    rows = json.loads((out / "plan.json").read_text())["rows"]
    assert [r["objective"] for r in rows] == ["expected", "cvar0.1", "cvar0.2"]
    assert all(1 <= r["steps"] <= 60 for r in rows)
    assert all(r["compile_s"] > 0 for r in rows)  # each row's scorer compiled before its episodes
    assert all(1 <= r["ess"] <= 4 for r in rows)  # of 4 particles
    md = (out / "plan.md").read_text()
    assert "importance-sampled rollouts (tilt 0)" in md and "The scorer was compiled" in md
    assert "Effective sample size of the tilted rollouts" in md


def test_torch_threads_callback_sets_and_restores():
    from varjepa import TorchThreads
    from varjepa.registry import ConfigError

    before = torch.get_num_threads()
    cb = TorchThreads(threads=1)
    cb.setup(None, None, "fit")
    assert torch.get_num_threads() == 1
    cb.teardown(None, None, "fit")
    assert torch.get_num_threads() == before
    with pytest.raises(ConfigError, match="threads"):
        TorchThreads(threads=0)
