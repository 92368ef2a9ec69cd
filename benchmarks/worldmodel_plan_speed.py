"""Planning time per step of world-model checkpoints, measured side by side in one run.

Each checkpoint plans with CEM and CVaR0.2 at the config's budget (or ``--particles`` /
``--candidates``; ``--tilts 1,0`` times each checkpoint with plain and importance-sampled rollouts)
(``--compile 0,1``: with and without a compiled scorer) from a fixed episode start on ``--threads``
torch threads. Every row times ``--repeats`` blocks of ``--steps`` steps (after warm-up and
compilation), interleaved across rows so that a change of the machine's load hits all rows alike;
the table gives each row's best, median and worst block. Ratios between rows of one run are the
numbers to quote; absolute times depend on the machine and its load.

    python benchmarks/worldmodel_plan_speed.py default=runs/a/last.ckpt innovation=runs/b/last.ckpt
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import yaml

from varjepa.worldmodel import make_env
from varjepa.worldmodel.plan import PlanSettings, build_planner, load_world_model

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "worldmodel" / "windy_point.yaml"


class PlanStepTimer:
    """A CEM CVaR0.2 planner of checkpoint ``ckpt`` at a fixed episode start, warmed up (and
    compiled, with ``settings.compile``; ``compile_s`` holds the seconds that took), whose
    :meth:`block` times ``steps`` planning steps."""

    def __init__(self, ckpt: str, settings: PlanSettings, warmup: int = 3):
        model = load_world_model(ckpt)
        env = make_env(model.hparams.spaces["env"])
        self.planner = build_planner(model, settings, "cem", {"name": "cvar", "alpha": 0.2}, env)
        self.compile_s = self.planner.warm_up() if settings.compile else None
        torch.manual_seed(0)
        self.planner.reset()
        self.obs, _ = env.reset(seed=0)
        for _ in range(warmup):
            self.planner.act(self.obs)

    def block(self, steps: int) -> float:
        """Mean milliseconds of a planning step over ``steps`` steps."""
        t0 = time.perf_counter()
        for _ in range(steps):
            self.planner.act(self.obs)
        return (time.perf_counter() - t0) / steps * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpts", nargs="+", help="NAME=checkpoint")
    ap.add_argument("--particles", type=int, default=None)
    ap.add_argument("--candidates", type=int, default=None)
    ap.add_argument(
        "--tilts", default="1", help="comma-separated plan.tilt values, each timed per checkpoint"
    )
    ap.add_argument(
        "--compile", default="0", help="comma-separated 0/1: plan.compile values, each timed per checkpoint"
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
    if any(c not in ("0", "1") for c in args.compile.split(",")):
        raise SystemExit(f"--compile {args.compile!r}: expected 0, 1 or 0,1")
    compiles = [c == "1" for c in args.compile.split(",")]
    # every compiled row stays alive and shares the compiled _score: allow more variants than
    # dynamo's default 8, past which later rows would run eager without a word
    torch._dynamo.config.recompile_limit = 256
    rows, timers = [], []
    for spec in args.ckpts:
        name, _, path = spec.rpartition("=")
        for tilt in tilts:
            for comp in compiles:
                timer = PlanStepTimer(path, dataclasses.replace(settings, tilt=tilt, compile=comp))
                label = (
                    (name or path) + (f", tilt {tilt:g}" if tilt < 1 else "") + (", compiled" if comp else "")
                )
                rows.append({"name": label, "ckpt": path, "tilt": tilt, "compile": comp, "blocks_ms": []})
                if comp:
                    rows[-1]["compile_s"] = timer.compile_s
                timers.append(timer)
    # blocks interleaved across rows, so that the machine's load changes hit every row alike
    for _ in range(args.repeats):
        for row, timer in zip(rows, timers, strict=True):
            row["blocks_ms"].append(timer.block(args.steps))
    for row in rows:
        row["ms"] = min(row["blocks_ms"])
        row["median_ms"] = statistics.median(row["blocks_ms"])
        row["max_ms"] = max(row["blocks_ms"])
        print(json.dumps(row), flush=True)
    base = rows[0]["ms"]
    lines = [
        "# Planning time per step\n",
        f"CEM, CVaR0.2, horizon {budget['horizon']}, {budget['candidates']} candidates × {budget['particles']} "
        f"particles × {budget['iterations']} iterations; {args.repeats} blocks of {args.steps} steps per row, "
        f"interleaved across rows; {args.threads} torch thread(s), {platform.machine()}, torch {torch.__version__}. "
        "Best, median and worst block; the ratio is of the best blocks. Compiled rows: the one-off "
        "compile time before the first step (not in the steps' times; about 0 where an earlier row's "
        "compiled graph served).\n",
        f"| model | best ms / step | median | worst | × {rows[0]['name']} | compile s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['name']} | {r['ms']:.1f} | {r['median_ms']:.1f} | {r['max_ms']:.1f} | {r['ms'] / base:.2f} | "
        + (f"{r['compile_s']:.0f}" if r["compile"] else "")
        + " |"
        for r in rows
    ]
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
