"""benchmarks/worldmodel_reaction.py: the replayed gust schedule is the environment's whatever the
actions; pass heights and gust outcomes of hand-made episodes; reading plan.json and oracle trails."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from varjepa.worldmodel.envs import WindyPointMass

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "worldmodel_reaction.py"
spec = importlib.util.spec_from_file_location("worldmodel_reaction", PATH)
react = importlib.util.module_from_spec(spec)
spec.loader.exec_module(react)


def test_gust_schedule_does_not_depend_on_the_actions():
    sched = react.gust_schedule(7, 60, {"gust_prob": 0.2})
    env = WindyPointMass(gust_prob=0.2, terminate_on_hazard=False, terminate_on_goal=False)
    env.reset(seed=7)
    rng = np.random.default_rng(0)
    seen = [env.step(rng.uniform(-1, 1, 2))[4]["gust"] for _ in range(60)]
    np.testing.assert_array_equal(sched, seen)
    assert 3 <= sched.sum() <= 25  # about 12 at gust_prob 0.2


def _seed_with_gust_at(step: int, kwargs: dict) -> int:
    for seed in range(10_000):
        s = react.gust_schedule(seed, step + 6, kwargs)
        if s[step] and not s[:step].any() and not s[step + 1 :].any():
            return seed
    raise AssertionError("no such seed")


def test_pass_heights_and_gusts_over_the_hazard_of_hand_made_episodes():
    kw = {"gust_prob": 0.1}
    hz = WindyPointMass(**kw).hazard  # x in [-0.7, 0.7], top edge y = -0.12
    s = _seed_with_gust_at(3, kw)
    # episode A: over the hazard at y = 0.3 when the gust hits (step 3), then drops into it at step 5
    xs = np.linspace(-0.6, 0.2, 8)
    ya = np.array([0.35, 0.32, 0.3, 0.3, 0.1, -0.2, -0.3, -0.3])
    # episode B: same gust, passing at y = 0.5, never enters
    yb = np.full(8, 0.5)
    # episode C: over the hazard's x-range at steps 2-4 only (lowest y there 0.05), never enters
    xc = np.array([-1.9, -1.2, -0.44, 0.0, 0.4, 0.9, 1.2, 1.5])
    yc = np.array([-0.5, -0.5, 0.1, 0.15, 0.05, -0.5, -0.5, -0.5])
    eps = [
        {"seed": s, "hazard": True, "positions": np.stack([xs, ya], 1).tolist()},
        {"seed": s, "hazard": False, "positions": np.stack([xs, yb], 1).tolist()},
        {"seed": s, "hazard": False, "positions": np.stack([xc, yc], 1).tolist()},
    ]
    np.testing.assert_allclose(react.pass_heights(eps, hz), [-0.3, 0.5, 0.05])
    g = react.gusts_over_hazard(eps, kw, reach=0.2, within=5)
    # the gust at step 3 is judged from the position after step 2: A at y 0.3 (hit), B at 0.5 (no),
    # C at y 0.1 (x = -0.44), which never enters: its low y = -0.5 is east and west of the hazard
    np.testing.assert_allclose(g, [[0.3, 1.0], [0.5, 0.0], [0.1, 0.0]])
    row = react.summarise("t", eps, kw, 0.2, 5)
    assert row["violations"] == 1 and row["gusts"] == 3 and row["gust_hits"] == 1
    by_bin = {(b["low"], b["high"]): (b["hits"], b["gusts"]) for b in row["bins"]}
    assert by_bin[(0.1, 0.2)] == (0, 1) and by_bin[(0.3, 0.45)] == (1, 1) and by_bin[(0.45, np.inf)] == (0, 1)
    assert by_bin[(-0.12, 0.1)] == (0, 0)
    np.testing.assert_allclose(row["pass_median"], 0.05)


def test_rows_of_reads_plan_json_and_oracle_trails(tmp_path):
    ep = {"seed": 1, "hazard": False, "positions": [[0.0, 0.3]]}
    # varjepa plan stores the position at reset first: rows_of drops it
    plan_ep = {"seed": 1, "hazard": False, "positions": [[-1.4, 0.0], [0.0, 0.3]]}
    plan = {
        "settings": {"env": None},
        "rows": [{"planner": "cem", "objective": "cvar0.2", "episodes_detail": [plan_ep]}],
    }
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "plan.json").write_text(json.dumps(plan))
    trails = {
        "rows": [
            {
                "objective": "expected",
                "observe": "filter",
                "imagined": "true",
                "hazard_weight": 30.0,
                "env": {"gust_prob": 0.1},
                "episodes_detail": [ep],
            }
        ]
    }
    (tmp_path / "o_trails.json").write_text(json.dumps(trails))
    with pytest.warns(UserWarning, match="no environment recorded; replaying the gusts of the default"):
        (a,) = react.rows_of(tmp_path / "run" / "plan.json")
    (b,) = react.rows_of(tmp_path / "o_trails.json")
    assert a == ("run: cem cvar0.2", [ep], {})
    plan["meta"] = {"env": {"id": "varjepa/WindyPointMass-v0", "kwargs": {"gust_prob": 0.2}}}
    (tmp_path / "run" / "plan.json").write_text(json.dumps(plan))
    assert react.rows_of(tmp_path / "run" / "plan.json", "mine")[0] == (
        "mine: cem cvar0.2",
        [ep],
        {"gust_prob": 0.2},
    )
    assert b == ("o_trails: oracle (filter, w 30) expected", [ep], {"gust_prob": 0.1})


def test_arc_is_the_median_y_per_x_bin_and_the_plot_is_written(tmp_path):
    eps = [
        {"seed": 0, "hazard": False, "positions": [[-1.3, 0.1], [-1.25, 0.3], [0.05, 0.5]]},
        {"seed": 1, "hazard": False, "positions": [[-1.35, 0.2], [0.1, 0.7]]},
    ]
    a = react.arc(eps)
    assert len(a) == len(react.ARC_BINS) - 1 == 14
    np.testing.assert_allclose(a[0], 0.2)  # x in [-1.4, -1.2): y 0.1, 0.3, 0.2
    np.testing.assert_allclose(a[7], 0.6)  # x in [0.0, 0.2): y 0.5, 0.7
    assert np.isnan(a[3])
    row = react.summarise("t", eps, None, 0.2, 5)
    react.plot([row], tmp_path / "arc.png")
    assert (tmp_path / "arc.png").stat().st_size > 5000


def test_plan_json_positions_line_up_with_the_replayed_gusts(tmp_path):
    """A real varjepa plan episode: after rows_of, position t is the one after step t, as the gust
    schedule's entry t (checked against the environment's own gust flags and positions)."""
    env = WindyPointMass(gust_prob=0.3)
    obs, info = env.reset(seed=4)
    positions, gusts = [info["position"].tolist()], []
    for _ in range(12):
        obs, _, term, trunc, info = env.step(np.array([1.0, 0.3], np.float32))
        positions.append(info["position"].tolist())
        gusts.append(info["gust"])
        if term or trunc:
            break
    plan = {  # varjepa plan records the environment the episodes ran in in its meta
        "meta": {"env": {"id": "varjepa/WindyPointMass-v0", "kwargs": {"gust_prob": 0.3}}},
        "settings": {"env": None},
        "rows": [
            {
                "planner": "cem",
                "objective": "expected",
                "episodes_detail": [{"seed": 4, "hazard": False, "positions": positions}],
            }
        ],
    }
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "plan.json").write_text(json.dumps(plan))
    ((_, eps, kw),) = react.rows_of(tmp_path / "p" / "plan.json")
    np.testing.assert_allclose(eps[0]["positions"], positions[1:])
    np.testing.assert_array_equal(react.gust_schedule(4, len(gusts), kw), gusts)
    assert any(gusts)
    bad = {**plan, "meta": {"env": {"id": "varjepa/WindyPointMass-v0", "action_noise": 0.1}}}
    (tmp_path / "p" / "plan.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="action noise"):
        react.rows_of(tmp_path / "p" / "plan.json")
