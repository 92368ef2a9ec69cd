"""benchmarks/worldmodel_pool.py: rows of separate `varjepa plan` runs paired on their common
episodes and pooled over training seeds."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from scipy.stats import binomtest

ROOT = Path(__file__).resolve().parents[1]
PATH = ROOT / "benchmarks" / "worldmodel_pool.py"
spec = importlib.util.spec_from_file_location("worldmodel_pool_benchmark", PATH)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def _plan(path: Path, rows: dict[str, list[tuple[int, bool, bool]]]) -> str:
    """A plan.json with CEM rows ``{objective: [(episode seed, hazard, success), ...]}``."""
    data = {
        "rows": [
            {
                "planner": "cem",
                "objective": obj,
                "episodes_detail": [
                    {"seed": s, "hazard": h, "success": ok, "positions": []} for s, h, ok in eps
                ],
            }
            for obj, eps in rows.items()
        ]
    }
    path.write_text(json.dumps(data))
    return str(path)


def test_rows_of_different_runs_pair_on_common_episodes_and_pool_over_seeds(tmp_path):
    # seed 0: base run plans episodes 10-13, the other run 11-14: common 11, 12, 13
    a0 = _plan(
        tmp_path / "a0.json",
        {"expected": [(10, True, False), (11, True, False), (12, True, False), (13, False, True)]},
    )
    b0 = _plan(
        tmp_path / "b0.json",
        {"cvar0.2": [(11, False, True), (12, True, False), (13, True, False), (14, True, False)]},
    )
    # seed 1: both plan 20-22
    a1 = _plan(tmp_path / "a1.json", {"expected": [(20, True, False), (21, True, False), (22, False, True)]})
    b1 = _plan(tmp_path / "b1.json", {"cvar0.2": [(20, False, True), (21, False, True), (22, False, True)]})
    arms = [bench.parse_arm(f"rn=expected@{a0},{a1}"), bench.parse_arm(f"cvar=cvar0.2@{b0},{b1}")]
    (res,) = bench.pool(arms)
    s0, s1 = res["per_seed"]
    assert s0 == {
        "episodes": 3,
        "violations_a": 2,
        "violations_b": 2,
        "success_a": 1,
        "success_b": 1,
        "only_a": 1,
        "only_b": 1,
    }
    assert s1 == {
        "episodes": 3,
        "violations_a": 2,
        "violations_b": 0,
        "success_a": 1,
        "success_b": 3,
        "only_a": 2,
        "only_b": 0,
    }
    t = res["pooled"]
    assert (t["violations_a"], t["violations_b"], t["only_a"], t["only_b"]) == (4, 2, 3, 1)
    assert t["cut"] == pytest.approx(0.5)
    assert t["mcnemar_p"] == pytest.approx(binomtest(3, 4).pvalue)
    text = bench.markdown([res], arms)
    assert "| cvar | rn | 2→2, 2→0 | 4 → 2 | 50% | 3 / 1 |" in text


def test_bad_arms_and_missing_rows_say_what_is_wrong(tmp_path):
    with pytest.raises(SystemExit, match="NAME=OBJECTIVE@plan.json"):
        bench.parse_arm("cvar0.2@x.json")
    p = _plan(tmp_path / "p.json", {"expected": [(1, False, True)]})
    with pytest.raises(SystemExit, match="no row cem cvar0.2; it has cem expected"):
        bench.episodes_of(p, "cem", "cvar0.2")
    q = _plan(tmp_path / "q.json", {"cvar0.2": [(2, False, True)]})
    with pytest.raises(SystemExit, match="share no episode"):
        bench.pool([bench.parse_arm(f"a=expected@{p}"), bench.parse_arm(f"b=cvar0.2@{q}")])


def test_command_line_writes_the_tables(tmp_path):
    a = _plan(
        tmp_path / "a.json",
        {"expected": [(1, True, False), (2, False, True)], "cvar0.2": [(1, False, True), (2, False, True)]},
    )
    out = tmp_path / "pooled"
    subprocess.run(
        [
            sys.executable,
            str(PATH),
            "--arm",
            f"rn=expected@{a}",
            "--arm",
            f"cvar=cvar0.2@{a}",
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    assert "| cvar | rn | 1→0 | 1 → 0 | 100% | 1 / 0 |" in out.with_suffix(".md").read_text()
    assert json.loads(out.with_suffix(".json").read_text())["results"][0]["pooled"]["only_a"] == 1
