"""Planning time per step of world-model checkpoints, measured side by side in one run.

Each checkpoint plans with CEM and CVaR0.2 at the config's budget (or ``--particles`` /
``--candidates``; ``--tilts 1,0`` times each checkpoint with plain and importance-sampled rollouts)
from a fixed episode start on one torch thread; the time of a step is the best of
``--repeats`` blocks of ``--steps`` steps (after warm-up), so machine noise inflates it least. Ratios
between rows of one run are the numbers to quote; absolute times depend on the machine and its load.

    python benchmarks/worldmodel_plan_speed.py default=runs/a/last.ckpt innovation=runs/b/last.ckpt
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import torch
import yaml

from varjepa.worldmodel import make_env
from varjepa.worldmodel.plan import PlanSettings, build_planner, load_world_model

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "worldmodel" / "windy_point.yaml"


def step_ms(ckpt: str, settings: PlanSettings, steps: int = 20, repeats: int = 3, warmup: int = 3) -> float:
    """Best-of-``repeats`` mean milliseconds of a CEM CVaR0.2 planning step of checkpoint ``ckpt``."""
    model = load_world_model(ckpt)
    env = make_env(model.hparams.spaces["env"])
    planner = build_planner(model, settings, "cem", {"name": "cvar", "alpha": 0.2}, env)
    torch.manual_seed(0)
    planner.reset()
    obs, _ = env.reset(seed=0)
    for _ in range(warmup):
        planner.act(obs)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            planner.act(obs)
        best = min(best, (time.perf_counter() - t0) / steps * 1000)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpts", nargs="+", help="NAME=checkpoint")
    ap.add_argument("--particles", type=int, default=None)
    ap.add_argument("--candidates", type=int, default=None)
    ap.add_argument(
        "--tilts", default="1", help="comma-separated plan.tilt values, each timed per checkpoint"
    )
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/worldmodel_plan_speed"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    plan = yaml.safe_load(CONFIG.read_text())["plan"]
    budget = {k: plan[k] for k in ("horizon", "candidates", "particles", "iterations") if k in plan}
    budget.update({k: v for k, v in (("particles", args.particles), ("candidates", args.candidates)) if v})
    settings = PlanSettings(planners=["cem"], objectives=["expected"], cost=plan["cost"], **budget)
    tilts = [float(t) for t in args.tilts.split(",")]
    rows = []
    for spec in args.ckpts:
        name, _, path = spec.rpartition("=")
        for tilt in tilts:
            ms = step_ms(path, dataclasses.replace(settings, tilt=tilt), args.steps, args.repeats)
            label = (name or path) + (f", tilt {tilt:g}" if tilt < 1 else "")
            rows.append({"name": label, "ckpt": path, "tilt": tilt, "ms": ms})
            print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["ms"]
    lines = [
        "# Planning time per step\n",
        f"CEM, CVaR0.2, horizon {budget['horizon']}, {budget['candidates']} candidates × {budget['particles']} "
        f"particles × {budget['iterations']} iterations; best of {args.repeats} × {args.steps} steps, "
        f"{args.threads} torch thread(s), {platform.machine()}, torch {torch.__version__}.\n",
        f"| model | ms / step | × {rows[0]['name']} |",
        "|---|---:|---:|",
    ]
    lines += [f"| {r['name']} | {r['ms']:.1f} | {r['ms'] / base:.2f} |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(
        json.dumps({"budget": budget, "threads": args.threads, "rows": rows}, indent=2)
    )
    out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
