"""World-model benchmark: k-step calibration and risk-sensitive planning on the windy point mass.

For each posterior family: train the world model of ``configs/worldmodel/windy_point.yaml`` (or
load ``--ckpt``), measure coverage@50/@90 of the true future latents at k = 1, 5, 10 on the held-out
episodes (rank-based, 199 rollouts per window), then run every planner × objective of the config's
``plan:`` section on the same seeded episodes. Prints the tables and writes
``benchmarks/results/worldmodel.{json,md}``.

    python benchmarks/worldmodel.py                                  # the config's family (anchored_mixture)
    python benchmarks/worldmodel.py --families mixture,diag_gaussian --episodes 100
    python benchmarks/worldmodel.py --ckpt runs/windy_point/version_0/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
import yaml

from varjepa.cli import run
from varjepa.registry import spec_name
from varjepa.worldmodel.evaluate import calibration_on_test_episodes
from varjepa.worldmodel.plan import (
    PAIRED_NOTE,
    PlanSettings,
    evaluate_planners,
    load_world_model,
    paired_markdown,
    paired_violations,
    table_markdown,
)

ROOT = Path(__file__).resolve().parents[1]
FAMILY_SPECS = {
    "mixture": {"name": "mixture", "components": 3},
    "diag_gaussian": "diag_gaussian",
    "lowrank_gaussian": {"name": "lowrank_gaussian", "rank": 4},
    "flow": "flow",
}


def _as_arg(spec) -> str:
    """A command-line value: names as they are, mappings as JSON."""
    return spec if isinstance(spec, str) else json.dumps(spec)


def train(config: Path, family: str, steps: int | None, workdir: Path) -> Path:
    """Fit the config's world model with ``family`` (the config's own options when it names the
    config's family, else :data:`FAMILY_SPECS`); returns the last checkpoint."""
    own = yaml.safe_load(Path(config).read_text())["model"]["init_args"].get("posterior")
    own_name = own if isinstance(own, str) else (own or {}).get("name")
    # the config's own family keeps the config's options (e.g. its number of components)
    spec = own if family == own_name else FAMILY_SPECS.get(family, family)
    args = [
        "fit",
        f"--config={config}",
        f"--model.init_args.posterior={_as_arg(spec)}",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={workdir}",
        f"--trainer.logger.init_args.name={family}",
    ]
    if steps:
        args.append(f"--trainer.max_steps={steps}")
    cli = run(args)
    return Path(cli.trainer.logger.log_dir) / "checkpoints" / "last.ckpt"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs/worldmodel/windy_point.yaml"))
    p.add_argument(
        "--families", default=None, help="comma-separated posterior families (default: the config's own)"
    )
    p.add_argument(
        "--episodes", type=int, default=None, help="episodes per planner x objective (default: config)"
    )
    p.add_argument("--steps", type=int, default=None, help="training steps (default: config)")
    p.add_argument("--ckpt", default=None, help="evaluate this checkpoint instead of training (one family)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/worldmodel"))
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = yaml.safe_load(Path(args.config).read_text())
    data_cfg = dict(cfg["data"]["init_args"])
    settings = PlanSettings(**cfg.get("plan", {}))
    if args.episodes:
        settings.episodes = args.episodes
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        own = cfg["model"]["init_args"].get("posterior")
        names = args.families or spec_name(own or "diag_gaussian")  # the model's default family
        families = [f.strip() for f in names.split(",") if f.strip()]
        for fam in families if not args.ckpt else ["checkpoint"]:
            t0 = time.perf_counter()
            ckpt = Path(args.ckpt) if args.ckpt else train(Path(args.config), fam, args.steps, Path(tmp))
            fit_s = time.perf_counter() - t0
            model = load_world_model(str(ckpt))
            torch.set_num_threads(1)
            cal = calibration_on_test_episodes(model, data_cfg)
            rows = evaluate_planners(model, settings)
            paired = paired_violations(rows)
            for r in rows:
                r.pop("episodes_detail")
            results.append(
                {"family": fam, "fit_s": fit_s, "calibration": cal, "planning": rows, "paired": paired}
            )
            print(f"\n## {fam}: fit {fit_s:.0f} s\n")
            print(" | ".join(f"{k} {v:.3f}" for k, v in cal.items()))
            print(table_markdown(rows, settings.worst_share))
    meta = {
        "config": str(Path(args.config).relative_to(ROOT))
        if Path(args.config).is_relative_to(ROOT)
        else args.config,
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.system()}",
        "threads": 1,
        "settings": {k: v for k, v in vars(settings).items()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
    lines = [
        "# World model: k-step calibration and risk-sensitive planning (windy point mass)",
        "",
        f"Config `{meta['config']}`; {settings.episodes} seeded episodes per planner × objective (seeds "
        f"{settings.seed}–{settings.seed + settings.episodes - 1}, the same wind for every row); budget: horizon "
        f"{settings.horizon}, {settings.candidates} candidates × {settings.particles} particles × "
        f"{settings.iterations} iterations; cost {settings.cost}; 1 torch thread, {meta['machine']}, torch {meta['torch']}.",
        "",
        "## Coverage of the true future latents (held-out episodes; nominal 0.50 / 0.90)",
        "",
        "| family | k = 1 (50 / 90) | k = 5 | k = 10 | rmse k = 1 / 5 / 10 | fit (s) |",
        "|---|---|---|---|---|---:|",
    ]
    for r in results:
        c = r["calibration"]
        cov = [f"{c[f'coverage50_k{k}']:.3f} / {c[f'coverage90_k{k}']:.3f}" for k in (1, 5, 10)]
        rmse = " / ".join(f"{c[f'rmse_k{k}']:.3f}" for k in (1, 5, 10))
        lines.append(f"| {r['family']} | {' | '.join(cov)} | {rmse} | {r['fit_s']:.0f} |")
    for r in results:
        lines += [
            "",
            f"## Planning with the {r['family']} model",
            "",
            table_markdown(r["planning"], settings.worst_share),
        ]
        if r.get("paired"):
            lines += ["", PAIRED_NOTE, "", paired_markdown(r["paired"])]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"\nwrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
