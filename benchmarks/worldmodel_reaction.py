"""Where a risk-averse planner's cut in hazard violations comes from, read off its episodes.

Every hazard violation on the windy point mass follows a gust. A planner can avoid one in two
ways: pass the hazard with a margin the gusts rarely cross, or react once a gust has hit. This
script reads the episodes that ``varjepa plan`` (``plan.json``) or ``worldmodel_oracle.py
--trails`` (``*_trails.json``) wrote, replays each episode seed's wind (the environment draws every
random number on every step, so a seed's gusts do not depend on the actions), and reports per
planner × objective:

* violations;
* the **pass height**: the lowest y while over the hazard's x-range, median and 10th percentile;
* the **gusts over the hazard**: every gust that hits while the mass is over the hazard's x-range
  (widened by ``--reach`` on the west, where a gust still carries the mass in), binned by the height
  before the gust, and the share of them followed by a hazard entry within ``--within`` steps.

The first tells whether the planner keeps a margin, the second how it fares, at a given margin,
once a gust hits (its reaction, which needs a belief that reads the gust and a model that knows how
far it will carry on).

    python benchmarks/worldmodel_reaction.py model=runs/plan_a/plan.json oracle=results/oracle_trails.json
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

from varjepa.worldmodel.envs import WindyPointMass

ROOT = Path(__file__).resolve().parents[1]
BINS = (-0.12, 0.1, 0.2, 0.3, 0.45, np.inf)  # pre-gust heights; the hazard's top edge is -0.12


def gust_schedule(seed: int, steps: int, env_kwargs: dict | None = None) -> np.ndarray:
    """``[steps]`` bool: whether the environment reset with ``seed`` blows a gust at each step
    (independent of the actions); entry ``t`` moves the mass from the position after step ``t − 1``
    to the one after step ``t`` (``positions[t]`` of :func:`gusts_over_hazard`)."""
    env = WindyPointMass(**{**(env_kwargs or {}), "terminate_on_hazard": False, "terminate_on_goal": False})
    env.reset(seed=seed)
    return np.array([env.step(np.zeros(2))[4]["gust"] for _ in range(steps)], dtype=bool)


def pass_heights(episodes: list[dict], hazard) -> np.ndarray:
    """Lowest y ``[E']`` of each episode while over the hazard's x-range (episodes that never get
    there are skipped). ``episodes``: dicts with ``positions`` ``[T, 2]``, the position after each
    step (as :func:`rows_of` returns them)."""
    out = []
    for e in episodes:
        p = np.asarray(e["positions"], dtype=float).reshape(-1, 2)
        over = (p[:, 0] >= hazard.x0) & (p[:, 0] <= hazard.x1)
        if over.any():
            out.append(p[over, 1].min())
    return np.array(out)


def gusts_over_hazard(
    episodes: list[dict], env_kwargs: dict | None = None, reach: float = 0.2, within: int = 5
) -> np.ndarray:
    """``[G, 2]``: for every gust that hits while the mass is over the hazard's x-range (its west
    edge moved ``reach`` further west), the height before the gust and whether the mass enters the
    hazard within ``within`` steps of it (1.0) or not (0.0). A gust on an episode's first step has no
    recorded position before it and is not counted (the windy point mass starts far west of the
    hazard)."""
    env = WindyPointMass(**(env_kwargs or {}))
    hz, out = env.hazard, []
    for e in episodes:
        p = np.asarray(e["positions"], dtype=float).reshape(-1, 2)
        gust = gust_schedule(int(e["seed"]), len(p), env_kwargs)
        for t in np.flatnonzero(gust):
            if t == 0 or not hz.x0 - reach <= p[t - 1, 0] <= hz.x1:
                continue
            out.append((p[t - 1, 1], float(hz.contains(p[t : t + within]).any())))
    return np.array(out).reshape(-1, 2)


ARC_BINS = np.round(np.arange(-1.4, 1.41, 0.2), 2)  # x bins between the start and the goal


def arc(episodes: list[dict]) -> list[float]:
    """Median y ``[len(ARC_BINS) − 1]`` of all positions in each x bin of :data:`ARC_BINS` (NaN where
    none): the typical path a planner flies."""
    ys: list[list[float]] = [[] for _ in ARC_BINS[:-1]]
    for e in episodes:
        for x, y in np.asarray(e["positions"], dtype=float).reshape(-1, 2):
            i = int(np.searchsorted(ARC_BINS, x, side="right")) - 1
            if 0 <= i < len(ys):
                ys[i].append(y)
    return [float(np.median(v)) if v else float("nan") for v in ys]


def summarise(name: str, episodes: list[dict], env_kwargs: dict | None, reach: float, within: int) -> dict:
    """One row: violations, pass heights and gust outcomes by pre-gust height of ``episodes``."""
    hz = WindyPointMass(**(env_kwargs or {})).hazard
    heights = pass_heights(episodes, hz)
    gusts = gusts_over_hazard(episodes, env_kwargs, reach, within)
    bins = []
    for lo, hi in zip(BINS[:-1], BINS[1:], strict=True):
        sel = (gusts[:, 0] >= lo) & (gusts[:, 0] < hi)
        bins.append({"low": lo, "high": hi, "gusts": int(sel.sum()), "hits": int(gusts[sel, 1].sum())})
    return {
        "name": name,
        "episodes": len(episodes),
        "violations": int(sum(bool(e["hazard"]) for e in episodes)),
        "pass_median": float(np.median(heights)) if len(heights) else float("nan"),
        "pass_q10": float(np.quantile(heights, 0.1)) if len(heights) else float("nan"),
        "gusts": int(len(gusts)),
        "gust_hits": int(gusts[:, 1].sum()),
        "bins": bins,
        "arc": arc(episodes),
    }


def rows_of(path: Path, name: str | None = None) -> list[tuple[str, list[dict], dict | None]]:
    """``(label, episodes, env kwargs)`` of every planner × objective in a ``plan.json`` or an oracle
    ``*_trails.json``; labels start with ``name`` (default: the run folder's or file's name)."""
    data = json.loads(path.read_text())
    out = []
    for r in data["rows"]:
        if "planner" in r:  # varjepa plan
            label = f"{name or path.parent.name}: {r['planner']} {r['objective']}"
            # the environment the episodes ran in: plan.json's meta (varjepa plan writes it), else the
            # settings' (null there means the model's own, which older files do not record)
            spec = data.get("meta", {}).get("env") or data["settings"].get("env")
            if spec is None:
                warnings.warn(
                    f"{path}: no environment recorded; replaying the gusts of the default windy point mass",
                    stacklevel=2,
                )
            if isinstance(spec, dict) and float(spec.get("action_noise") or 0) > 0:
                raise ValueError(
                    f"{path}: the episodes ran with action noise, which draws from the environment's "
                    "generator: their gusts cannot be replayed"
                )
            env = (spec.get("kwargs") or {}) if isinstance(spec, dict) else {}
            # plan.json holds the position at reset first; trails hold the position after each step
            episodes = [{**e, "positions": e["positions"][1:]} for e in r["episodes_detail"]]
            out.append((label, episodes, env))
            continue
        else:  # worldmodel_oracle.py --trails
            label = f"{name or path.stem}: oracle ({r['observe']}, w {r['hazard_weight']:g}) {r['objective']}"
            env = r.get("env") or {}
        out.append((label, r["episodes_detail"], env))
    return out


def markdown(rows: list[dict], reach: float, within: int) -> str:
    """The table of :func:`summarise` rows."""
    heads = [f"[{b['low']:g}, {b['high']:g})" for b in rows[0]["bins"]] if rows else []
    lines = [
        "# Pass heights and gusts over the hazard\n",
        f"Gusts over the hazard: hits while the mass is over its x-range (west edge widened by {reach:g}), "
        f"by the height before the gust; `hits / gusts` entering the hazard within {within} steps.\n",
        "| episodes | violations | pass height: median / 10 % | gusts over the hazard: hit | "
        + " | ".join(f"from y in {h}" for h in heads)
        + " |",
        "|---|---:|---|---:|" + "---:|" * len(heads),
    ]
    for r in rows:
        cells = [f"{b['hits']} / {b['gusts']}" for b in r["bins"]]
        lines.append(
            f"| {r['name']} | {r['violations']} / {r['episodes']} | {r['pass_median']:.3f} / {r['pass_q10']:.3f} | "
            f"{r['gust_hits']} / {r['gusts']} | " + " | ".join(cells) + " |"
        )
    centres = (ARC_BINS[:-1] + ARC_BINS[1:]) / 2
    lines += [
        "\nThe typical path: median y of the positions in each x bin (the hazard spans x in "
        "[-0.7, 0.7] below y = -0.12).\n",
        "| episodes | " + " | ".join(f"{c:+.1f}" for c in centres) + " |",
        "|---|" + "---:|" * len(centres),
    ]
    for r in rows:
        lines.append(f"| {r['name']} | " + " | ".join(f"{v:.2f}" for v in r["arc"]) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, env_kwargs: dict | None = None) -> None:
    """The rows' typical paths (:func:`arc`) over the arena's hazard, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    env = WindyPointMass(**(env_kwargs or {}))
    hz = env.hazard
    fig, ax = plt.subplots(figsize=(7, 5.2))
    ax.add_patch(Rectangle((hz.x0, hz.y0), hz.x1 - hz.x0, hz.y1 - hz.y0, color="tab:red", alpha=0.25))
    centres = (ARC_BINS[:-1] + ARC_BINS[1:]) / 2
    colours = {}
    for r in rows:  # one colour per source, dashed for the risk-neutral objective
        source = r["name"].split(":")[0]
        colour = colours.setdefault(source, f"C{len(colours) % 10}")
        style = "--" if r["name"].endswith("expected") else "-"
        label = f"{r['name']} ({r['violations']}/{r['episodes']})"
        ax.plot(centres, r["arc"], style, color=colour, marker="o", ms=3, label=label)
    ax.plot(*env.start, "ks")
    ax.plot(*env.goal, "k*", ms=10)
    ax.set(xlabel="x", ylabel="median y", title="Typical paths (violations / episodes)", ylim=(-0.5, 0.8))
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "files", nargs="+", help="plan.json files of varjepa plan and/or *_trails.json of the oracle"
    )
    ap.add_argument("--reach", type=float, default=0.2, help="widen the hazard's x-range west by this much")
    ap.add_argument("--within", type=int, default=5, help="steps after a gust in which an entry counts")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/worldmodel_reaction"))
    args = ap.parse_args()
    rows = []
    for f in args.files:
        name, _, f = f.rpartition("=")  # NAME=path labels a file's rows
        for label, episodes, env in rows_of(Path(f), name or None):
            rows.append(summarise(label, episodes, env, args.reach, args.within))
    text = markdown(rows, args.reach, args.within)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(
        json.dumps({"reach": args.reach, "within": args.within, "rows": rows}, indent=2)
    )
    out.with_suffix(".md").write_text(text)
    if rows:
        plot(rows, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
