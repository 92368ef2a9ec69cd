"""benchmarks/worldmodel_seeds.py: seed lists, and a tiny two-seed run whose pooled counts are the
sums of the per-seed plans (checkpoints and plans reused on a second run)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATH = ROOT / "benchmarks" / "worldmodel_seeds.py"
spec = importlib.util.spec_from_file_location("worldmodel_seeds_benchmark", PATH)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_seed_lists():
    assert bench.seed_list("0-3,7") == [0, 1, 2, 3, 7]
    assert bench.seed_list("5") == [5]
    for bad in ("0-2,1", "3-1", "", "a"):
        with pytest.raises(SystemExit, match="distinct seeds"):
            bench.seed_list(bad)


@pytest.mark.slow
def test_two_seeds_pool_the_per_seed_plans(tmp_path):
    work, out = tmp_path / "work", tmp_path / "res"
    tiny = [
        "model.init_args.latent_dim=4",
        "model.init_args.hidden=16",
        "model.init_args.calibration_samples=19",
        "data.init_args.episodes=12",
        "data.init_args.steps=20",
        f"data.init_args.cache_dir={tmp_path / 'cache'}",
        "trainer.max_steps=10",
        "trainer.val_check_interval=10",
        "trainer.limit_val_batches=1",
    ]
    config = tmp_path / "windy_point.yaml"  # a copy: editing it later must be noticed
    config.write_text((ROOT / "configs/worldmodel/windy_point.yaml").read_text())
    cmd = [sys.executable, str(PATH), "--config", str(config), "--seeds", "0,1", "--episodes", "3"]
    cmd += ["--episode-seed", "50"]
    cmd += ["--workdir", str(work), "--out", str(out), "--jobs", "2"]
    cmd += [f"--set={kv}" for kv in tiny]
    cmd += ["--plan-set=horizon=3", "--plan-set=candidates=8", "--plan-set=particles=4"]
    cmd += ["--plan-set=iterations=1", "--plan-set=elites=2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads(out.with_suffix(".json").read_text())
    assert [r["seed"] for r in res["seeds"]] == [0, 1]
    total = dict.fromkeys(("episodes", "violations_expected", "violations", "only_expected"), 0)
    for r in res["seeds"]:
        assert r["fit_s"] > 0
        (folder,) = work.glob(f"plan_seed{r['seed']}_ep50x3_*")
        plan = json.loads((folder / "plan.json").read_text())
        rows = {x["objective"]: x["episodes_detail"] for x in plan["rows"]}
        assert list(rows) == ["expected", "cvar0.2"]  # CEM only, the two default objectives
        assert [e["seed"] for e in rows["expected"]] == [50, 51, 52]
        assert Path(r["plan"]) == folder
        hz = {x["objective"]: x["hazard_episodes"] for x in r["rows"]}
        assert hz["expected"] == sorted(e["seed"] for e in rows["expected"] if e["hazard"])
        (q,) = r["paired"]
        assert q["violations_expected"] == sum(e["hazard"] for e in rows["expected"])
        assert q["violations"] == sum(e["hazard"] for e in rows["cvar0.2"])
        for k in total:
            total[k] += q[k]
        for k in (1, 5, 10):
            assert 0.0 <= r["calibration"][f"coverage90_k{k}"] <= 1.0
    (pooled,) = res["pooled"]
    assert {k: pooled[k] for k in total} == total and total["episodes"] == 6
    md = out.with_suffix(".md").read_text()
    assert "## Pooled over seeds" in md and "McNemar" in md
    # the overrides reached the fit: the saved config has them
    saved = (work / "seed1" / "version_0" / "config.yaml").read_text()
    assert "latent_dim: 4" in saved and "seed_everything: 1" in saved
    # a second run reuses checkpoints and plans: nothing is trained or planned again
    files = [work / f"seed{s}" / "version_0" / "checkpoints" / "last.ckpt" for s in (0, 1)]
    files += [next(work.glob(f"plan_seed{s}_ep50x3_*")) / "plan.json" for s in (0, 1)]
    stamps = [f.stat().st_mtime_ns for f in files]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    res2 = json.loads(out.with_suffix(".json").read_text())
    assert [r["fit_s"] for r in res2["seeds"]] == [None, None]
    assert res2["pooled"] == res["pooled"]
    assert [f.stat().st_mtime_ns for f in files] == stamps
    # another planning setting gets its own folder beside the first
    budget = subprocess.run([*cmd, "--plan-set=particles=2"], capture_output=True, text=True, timeout=600)
    assert budget.returncode == 0, budget.stderr[-3000:]
    assert len(list(work.glob("plan_seed0_ep50x3_*"))) == 2
    # other fit settings in the same work folder are refused, not silently reused
    other = subprocess.run(
        [*cmd, "--set=model.init_args.surprise_weight=3"], capture_output=True, text=True, timeout=600
    )
    assert other.returncode != 0 and "other settings" in other.stderr
    config.write_text(config.read_text().replace("lr: 0.001", "lr: 0.002"))
    edited = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert edited.returncode != 0 and "another version of the config" in edited.stderr
    assert [f.stat().st_mtime_ns for f in files] == stamps


def test_options_the_script_sets_itself_are_refused(tmp_path):
    work, out = tmp_path / "work", tmp_path / "res"
    for opts, words in [
        (["--plan-set=episodes=5"], "is set by this script"),
        (["--objectives=[{name: cvar, alpha: 0.2}]"], "include expected"),
    ]:
        cmd = [sys.executable, str(PATH), "--workdir", str(work), "--out", str(out), *opts]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert done.returncode != 0 and words in done.stderr, opts
    done = subprocess.run(
        [sys.executable, str(PATH), "--compare", "a.json", "b.json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "needs its own --out" in done.stderr
    assert not work.exists() and not any(tmp_path.iterdir())


def test_two_recipes_are_paired_on_the_episodes_both_planned():
    def result(first, n, hazards):  # hazards: {(seed, objective): [episode seeds]}
        seeds = sorted({s for s, _ in hazards})
        return {
            "meta": {"episode_seed": first, "episodes": n},
            "seeds": [
                {
                    "seed": s,
                    "rows": [
                        {"planner": "cem", "objective": o, "hazard_episodes": h}
                        for (t, o), h in hazards.items()
                        if t == s
                    ],
                }
                for s in seeds
            ],
        }

    a = result(
        100, 10, {(0, "expected"): [100, 101, 102, 108], (1, "expected"): [103], (2, "expected"): [100]}
    )
    # b planned episodes 104..113 only; seed 2 is missing from b
    b = result(104, 10, {(0, "expected"): [104, 108, 109], (1, "expected"): [112, 105]})
    (q,), n = bench.compare(a, b)
    assert n == 6  # episodes 104..109
    # seed 0: a {108}, b {104, 108, 109}; seed 1: a {}, b {105} (112 is outside a's episodes)
    assert (q["violations_a"], q["violations_b"], q["only_a"], q["only_b"]) == (1, 4, 0, 3)
    assert q["seeds"] == [0, 1]
    assert q["mcnemar_p"] == pytest.approx(2 / 8)  # 0 vs 3 discordant: 2 · (1/2)^3
    md = bench.compare_markdown([q], "a.json", "b.json", n)
    assert "| cem | expected | 0,1 | 1 → 4 | 0 | 3 | 0.25 |" in md
    with pytest.raises(SystemExit, match="no episode in common"):
        bench.compare(a, result(200, 5, {(0, "expected"): []}))


def test_owned_option_check_covers_nested_keys():
    assert bench.is_owned("trainer.logger.init_args.name=x", bench.FIT_OWNED)
    assert bench.is_owned("seed_everything=3", bench.FIT_OWNED)
    assert not bench.is_owned("trainer.max_steps=10", bench.FIT_OWNED)
    assert not bench.is_owned("seed_everything_extra=1", bench.FIT_OWNED)  # a prefix is not a key
    assert bench.is_owned("episodes=5", bench.PLAN_OWNED) and not bench.is_owned(
        "particles=4", bench.PLAN_OWNED
    )
