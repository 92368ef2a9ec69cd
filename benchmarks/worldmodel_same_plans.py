"""Did a change leave the plans as they were? Compare two ``varjepa plan`` runs episode by episode.

For every row (planner × objective) the two ``plan.json`` files share, on the episodes both ran
(the same episode seeds, so the same wind): how many episodes end alike (success, hazard or
timeout), how many take the same number of steps, how many follow the same path to within
``--atol`` at every step, and the largest position difference. Pass pairs of runs, e.g. one per
training seed, as ``BEFORE.json=AFTER.json``; the table has one line per pair and row, and a pooled
line per row.

    python benchmarks/worldmodel_same_plans.py eager/s0/plan.json=compiled/s0/plan.json \\
      eager/s1/plan.json=compiled/s1/plan.json --out benchmarks/results/worldmodel_compile_same_plans
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np


def _outcome(e: dict[str, Any]) -> str:
    return "success" if e["success"] else "hazard" if e["hazard"] else "timeout"


def compare_rows(before: dict[str, Any], after: dict[str, Any], atol: float) -> dict[str, Any]:
    """Episode-by-episode agreement of two rows of ``plan.json`` (their ``episodes_detail``) on the
    episode seeds both ran: counts of equal outcomes, equal step counts and paths within ``atol``
    (positions ``[steps + 1, 2]``; paths of different lengths differ), and the largest position
    difference over the paths of equal length (0 if there are none)."""
    b = {e["seed"]: e for e in before["episodes_detail"]}
    a = {e["seed"]: e for e in after["episodes_detail"]}
    seeds = sorted(b.keys() & a.keys())
    if not seeds:
        raise SystemExit(f"{before['planner']} {before['objective']}: the two runs share no episode seed")
    same_outcome = same_steps = same_path = 0
    max_dev = 0.0
    for s in seeds:
        x, y = b[s], a[s]
        same_outcome += _outcome(x) == _outcome(y)
        same_steps += x["steps"] == y["steps"]
        px, py = np.asarray(x["positions"], float), np.asarray(y["positions"], float)
        if px.shape == py.shape and px.size:
            dev = float(np.abs(px - py).max())
            max_dev = max(max_dev, dev)
            same_path += dev <= atol
    return {
        "planner": before["planner"],
        "objective": before["objective"],
        "episodes": len(seeds),
        "same_outcome": same_outcome,
        "same_steps": same_steps,
        "same_path": same_path,
        "max_position_diff": max_dev,
        "plan_ms_before": before["plan_ms"],
        "plan_ms_after": after["plan_ms"],
    }


def compare_runs(before: dict[str, Any], after: dict[str, Any], atol: float) -> list[dict[str, Any]]:
    """:func:`compare_rows` for every planner × objective the two ``plan.json`` documents share."""
    for doc, name in ((before, "before"), (after, "after")):
        keys = [(r["planner"], r["objective"]) for r in doc["rows"]]
        if len(set(keys)) < len(keys):
            raise SystemExit(f"the {name} run has a planner × objective row twice: {keys}")
    rows_a = {(r["planner"], r["objective"]): r for r in after["rows"]}
    out = [
        compare_rows(r, rows_a[(r["planner"], r["objective"])], atol)
        for r in before["rows"]
        if (r["planner"], r["objective"]) in rows_a
    ]
    if not out:
        raise SystemExit("the two runs share no planner × objective row")
    return out


def pool(per_pair: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Counts summed per planner × objective over the pairs; the largest difference of any."""
    pooled: dict[tuple[str, str], dict[str, Any]] = {}
    for rows in per_pair:
        for r in rows:
            acc = pooled.setdefault(
                (r["planner"], r["objective"]),
                {"planner": r["planner"], "objective": r["objective"], "episodes": 0, "same_outcome": 0}
                | {"same_steps": 0, "same_path": 0, "max_position_diff": 0.0},
            )
            for k in ("episodes", "same_outcome", "same_steps", "same_path"):
                acc[k] += r[k]
            acc["max_position_diff"] = max(acc["max_position_diff"], r["max_position_diff"])
    return list(pooled.values())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pairs", nargs="+", help="BEFORE/plan.json=AFTER/plan.json")
    ap.add_argument(
        "--atol", type=float, default=1e-3, help="a path is the same if every position is within it"
    )
    ap.add_argument("--out", required=True, help="output path without suffix (.md and .json are written)")
    args = ap.parse_args(argv)
    per_pair, names = [], []
    for text in args.pairs:
        before, sep, after = text.partition("=")
        if not (sep and before and after):
            raise SystemExit(f"{text!r}: expected BEFORE/plan.json=AFTER/plan.json")
        per_pair.append(
            compare_runs(json.loads(Path(before).read_text()), json.loads(Path(after).read_text()), args.atol)
        )
        names.append((before, after))
    pooled = pool(per_pair)

    def line(label: str, r: dict[str, Any], ms: str) -> str:
        n = r["episodes"]
        return (
            f"| {label} | {r['planner']} {r['objective']} | {r['same_outcome']} / {n} | {r['same_steps']} / {n} | "
            f"{r['same_path']} / {n} | {r['max_position_diff']:.2g} | {ms} |"
        )

    lines = [
        "# Same plans?\n",
        f"Episode by episode, on the episode seeds both runs planned: equal outcome, equal number of steps, "
        f"path within {args.atol:g} at every step, and the largest position difference.\n",
        "| pair | row | same outcome | same steps | same path | max position diff | plan ms/step before → after |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for i, rows in enumerate(per_pair):
        lines += [line(str(i), r, f"{r['plan_ms_before']:.1f} → {r['plan_ms_after']:.1f}") for r in rows]
    lines += [line("pooled", r, "") for r in pooled]
    lines += ["", "Pairs:", ""] + [f"- {i}: `{b}` → `{a}`" for i, (b, a) in enumerate(names)]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(
        json.dumps({"atol": args.atol, "pairs": names, "per_pair": per_pair, "pooled": pooled}, indent=1)
    )
    out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
