"""Pool ``varjepa plan`` results over training seeds and pair any two rows on the same episodes.

Each ``--arm NAME=OBJECTIVE@A.json,B.json,...`` names one row (planner ``--planner``, objective
label as in the tables: ``expected``, ``cvar0.2``) of the ``plan.json`` of each training seed, in
the same seed order for every arm. The first arm is the baseline; every other arm is paired with it
seed by seed on the episodes both planned (the same episode seeds, so the same wind): violations of
each, the episodes only one of the two ends in the hazard, the cut, success, and the exact
two-sided McNemar p-value of the pooled discordant counts. Rows of different ``varjepa plan`` runs
(another cost, another ``plan.tilt``) pair as well as rows of one run.

    python benchmarks/worldmodel_pool.py --out benchmarks/results/worldmodel_tilt \\
      --arm 'risk-neutral=expected@s0/plan.json,s1/plan.json' --arm 'CVaR=cvar0.2@s0/plan.json,s1/plan.json'
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from varjepa.eval.paired import mcnemar_exact


def parse_arm(text: str) -> dict[str, Any]:
    """``NAME=OBJECTIVE@PATH,PATH,...`` → ``{name, objective, paths}``."""
    name, sep, rest = text.partition("=")
    objective, at, paths = rest.partition("@")
    if not (sep and at and name and objective and paths):
        raise SystemExit(f"--arm {text!r}: expected NAME=OBJECTIVE@plan.json[,plan.json...]")
    return {"name": name, "objective": objective, "paths": paths.split(",")}


def episodes_of(path: str, planner: str, objective: str) -> dict[int, dict]:
    """The episodes ``{episode seed: {hazard, success}}`` of row ``planner`` × ``objective`` of a
    ``plan.json``."""
    data = json.loads(Path(path).read_text())
    for row in data["rows"]:
        if row["planner"] == planner and row["objective"] == objective:
            return {
                e["seed"]: {"hazard": bool(e["hazard"]), "success": bool(e["success"])}
                for e in row["episodes_detail"]
            }
    have = sorted({f"{r['planner']} {r['objective']}" for r in data["rows"]})
    raise SystemExit(f"{path}: no row {planner} {objective}; it has {', '.join(have)}")


def pair(base: dict[int, dict], other: dict[int, dict]) -> dict[str, Any]:
    """Counts of two rows on the episodes both planned: ``episodes``, ``violations_a/_b``,
    ``only_a/_b`` (episodes only that row ends in the hazard), ``success_a/_b`` (counts)."""
    common = sorted(set(base) & set(other))
    if not common:
        raise SystemExit("two rows share no episode seed: they were not planned on the same episodes")
    out = {"episodes": len(common)}
    for tag, rows in (("a", base), ("b", other)):
        out[f"violations_{tag}"] = sum(rows[s]["hazard"] for s in common)
        out[f"success_{tag}"] = sum(rows[s]["success"] for s in common)
    out["only_a"] = sum(base[s]["hazard"] and not other[s]["hazard"] for s in common)
    out["only_b"] = sum(other[s]["hazard"] and not base[s]["hazard"] for s in common)
    return out


def pool(arms: list[dict[str, Any]], planner: str = "cem") -> list[dict[str, Any]]:
    """Every arm after the first paired with the first, per training seed and pooled (counts summed,
    cut and McNemar p from the sums)."""
    base = arms[0]
    results = []
    for arm in arms[1:]:
        if len(arm["paths"]) != len(base["paths"]):
            raise SystemExit(
                f"arm {arm['name']} has {len(arm['paths'])} runs, {base['name']} {len(base['paths'])}"
            )
        per_seed = [
            pair(episodes_of(pa, planner, base["objective"]), episodes_of(pb, planner, arm["objective"]))
            for pa, pb in zip(base["paths"], arm["paths"], strict=True)
        ]
        total = {k: sum(s[k] for s in per_seed) for k in per_seed[0]}
        total["cut"] = 1 - total["violations_b"] / total["violations_a"] if total["violations_a"] else None
        total["mcnemar_p"] = mcnemar_exact(total["only_a"], total["only_b"])
        results.append({"base": base["name"], "arm": arm["name"], "per_seed": per_seed, "pooled": total})
    return results


def markdown(results: list[dict[str, Any]], arms: list[dict[str, Any]]) -> str:
    """The pooled comparisons as a Markdown table (one line per arm)."""
    lines = [
        "# Paired planning rows, pooled over training seeds\n",
        "Each arm against the first on the episodes both planned; per-seed violations, pooled "
        "violations, the episodes only one of the two ends in the hazard, exact two-sided McNemar "
        "p-value, success.\n",
        "| arm | base | per seed: violations base → arm | pooled | cut | only base / only arm | McNemar p | success base → arm |",
        "|---|---|---|---|---:|---|---:|---|",
    ]
    for r in results:
        t = r["pooled"]
        seeds = ", ".join(f"{s['violations_a']}→{s['violations_b']}" for s in r["per_seed"])
        cut = "–" if t["cut"] is None else f"{t['cut']:.0%}"
        lines.append(
            f"| {r['arm']} | {r['base']} | {seeds} | {t['violations_a']} → {t['violations_b']} | {cut} | "
            f"{t['only_a']} / {t['only_b']} | {t['mcnemar_p']:.2g} | "
            f"{t['success_a'] / t['episodes']:.3f} → {t['success_b'] / t['episodes']:.3f} |"
        )
    lines.append("\nArms (objective @ plan.json per training seed):\n")
    lines += [f"- {a['name']}: `{a['objective']}` @ {', '.join(f'`{p}`' for p in a['paths'])}" for a in arms]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--arm", action="append", required=True, help="NAME=OBJECTIVE@plan.json,... (first: base)"
    )
    ap.add_argument("--planner", default="cem")
    ap.add_argument("--out", default=None, help="write OUT.md and OUT.json")
    args = ap.parse_args()
    arms = [parse_arm(a) for a in args.arm]
    if len(arms) < 2:
        raise SystemExit("give at least two --arm: a base and one to pair with it")
    results = pool(arms, args.planner)
    text = markdown(results, arms)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(text)
        out.with_suffix(".json").write_text(json.dumps({"arms": arms, "results": results}, indent=1))


if __name__ == "__main__":
    main()
