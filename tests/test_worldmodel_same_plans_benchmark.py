"""benchmarks/worldmodel_same_plans.py: two `varjepa plan` runs compared episode by episode."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATH = ROOT / "benchmarks" / "worldmodel_same_plans.py"
spec = importlib.util.spec_from_file_location("worldmodel_same_plans_benchmark", PATH)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def _episode(seed, path, success=True, hazard=False):
    return {"seed": seed, "success": success, "hazard": hazard, "steps": len(path) - 1, "positions": path}


def _run(path: Path, episodes: list[dict], objective="cvar0.1", ms=50.0) -> str:
    rows = [{"planner": "cem", "objective": objective, "plan_ms": ms, "episodes_detail": episodes}]
    path.write_text(json.dumps({"rows": rows}))
    return str(path)


def test_episodes_are_compared_on_common_seeds_and_pooled(tmp_path):
    p = [[0.0, 0.0], [0.1, 0.0], [0.2, 0.0]]
    nudged = [[0.0, 0.0], [0.1, 0.0005], [0.2, 0.0]]  # within 1e-3
    apart = [[0.0, 0.0], [0.1, 0.01], [0.2, 0.0]]  # 0.01 off, same length and outcome
    longer = [[0.0, 0.0], [0.1, 0.0], [0.2, 0.0], [0.3, 0.0]]
    before = _run(
        tmp_path / "b.json",
        [_episode(1, p), _episode(2, p), _episode(3, p), _episode(4, p), _episode(9, p)],
        ms=100.0,
    )
    after = _run(
        tmp_path / "a.json",
        # seed 4 ends in the hazard after the change; seed 5 is only in this run, seed 9 only before
        [
            _episode(1, nudged),
            _episode(2, apart),
            _episode(3, longer),
            _episode(4, p, success=False, hazard=True),
            _episode(5, p),
        ],
    )
    out = tmp_path / "same"
    bench.main([f"{before}={after}", f"{before}={before}", "--out", str(out)])
    data = json.loads(out.with_suffix(".json").read_text())
    first, same = data["per_pair"][0][0], data["per_pair"][1][0]
    assert first["episodes"] == 4  # seeds 1-4
    assert first["same_outcome"] == 3 and first["same_steps"] == 3  # 4 changed outcome, 3 its length
    assert first["same_path"] == 2  # 1 (nudged) and 4 (same path, other outcome); not 2 (apart) nor 3
    assert first["max_position_diff"] == pytest.approx(0.01)
    assert (first["plan_ms_before"], first["plan_ms_after"]) == (100.0, 50.0)
    assert (
        same["same_outcome"] == same["same_path"] == same["episodes"] == 5 and same["max_position_diff"] == 0
    )
    pooled = data["pooled"][0]
    assert (pooled["episodes"], pooled["same_outcome"], pooled["same_path"]) == (9, 8, 7)
    assert pooled["max_position_diff"] == pytest.approx(0.01)
    md = out.with_suffix(".md").read_text()
    assert "| 0 | cem cvar0.1 | 3 / 4 | 3 / 4 | 2 / 4 | 0.01 | 100.0 → 50.0 |" in md
    assert "| pooled | cem cvar0.1 | 8 / 9 |" in md


def test_runs_without_common_rows_or_episodes_are_refused(tmp_path):
    a = _run(tmp_path / "a.json", [_episode(1, [[0.0, 0.0]])], objective="expected")
    b = _run(tmp_path / "b.json", [_episode(1, [[0.0, 0.0]])], objective="cvar0.2")
    c = _run(tmp_path / "c.json", [_episode(7, [[0.0, 0.0]])], objective="expected")
    with pytest.raises(SystemExit, match="share no planner × objective row"):
        bench.main([f"{a}={b}", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="share no episode seed"):
        bench.main([f"{a}={c}", "--out", str(tmp_path / "x")])
    doubled = tmp_path / "d.json"
    doubled.write_text(json.dumps({"rows": 2 * json.loads(Path(a).read_text())["rows"]}))
    with pytest.raises(SystemExit, match="the after run has a planner × objective row twice"):
        bench.main([f"{a}={doubled}", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="expected BEFORE/plan.json=AFTER/plan.json"):
        bench.main([a, "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x.md").exists()
