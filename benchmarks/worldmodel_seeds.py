"""World model over several training seeds: does risk-averse planning beat risk-neutral planning?

One training run and 100 episodes hold only a handful of hazard violations, so an objective's cut
in violations is read over several training seeds and many episodes. For each seed this script
trains the config's world model (``varjepa fit --seed_everything SEED`` plus any ``--set``
overrides; a checkpoint trained with the same arguments and config in the work folder is reused),
measures coverage@90 of the true future latents at k = 1, 5, 10 on the held-out episodes, and runs
``varjepa plan`` on the same seeded episodes for every planner × objective. Each objective is paired with its planner's
risk-neutral row per seed (:func:`~varjepa.worldmodel.plan.paired_violations`), and the counts are
pooled over seeds (:func:`~varjepa.worldmodel.plan.pool_paired`): the pooled cut and the exact
McNemar p-value on the pooled discordant episodes. Prints the tables and writes ``OUT.{json,md}``.

Pick ``--episode-seed`` away from the episodes a setting was tuned on (the configs' plans use
seeds from 1000) so that the comparison is held out.

    python benchmarks/worldmodel_seeds.py --seeds 0-5 --episodes 400 --episode-seed 2000 --jobs 2
    python benchmarks/worldmodel_seeds.py --seeds 0-3 --set model.init_args.surprise_weight=3 \\
        --workdir runs/surprise3 --out benchmarks/results/worldmodel_seeds_surprise3
    python benchmarks/worldmodel_seeds.py --compare A.json B.json --out benchmarks/results/a_vs_b

``{seed}`` in a ``--set`` or ``--plan-set`` value becomes the training seed, e.g. to refit every seed on the episodes
its own earlier checkpoint's planner flew (``data.init_args.extra_data`` with a ``planner`` policy).

``--compare`` pairs two recipes (two results of this script on the same episodes) per training
seed, planner and objective: which one ends fewer episodes in the hazard.

The records behind reuse hold the arguments and the config file's hash, not the code: after
changing varjepa itself (e.g. a model default), use a fresh ``--workdir``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

import torch
import yaml

from varjepa.eval.paired import mcnemar_exact
from varjepa.worldmodel.evaluate import calibration_on_test_episodes
from varjepa.worldmodel.plan import (
    DEFAULT_OBJECTIVES,
    PAIRED_NOTE,
    load_world_model,
    paired_markdown,
    paired_violations,
    pool_paired,
)

ROOT = Path(__file__).resolve().parents[1]
VARJEPA = [sys.executable, "-c", "import sys; from varjepa.cli import main; sys.exit(main())"]
HORIZONS = (1, 5, 10)
FIT_OWNED = ("seed_everything", "trainer.logger", "trainer.enable_progress_bar", "config")
PLAN_OWNED = ("seed", "episodes", "out", "threads", "planners", "objectives")


def is_owned(override: str, owned: tuple[str, ...]) -> bool:
    """Whether ``KEY=VALUE`` sets one of the ``owned`` keys or something inside one."""
    key = override.split("=", 1)[0]
    return any(key == k or key.startswith(k + ".") for k in owned)


def seed_list(text: str) -> list[int]:
    """``"0-3,7"`` -> ``[0, 1, 2, 3, 7]``."""
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            lo, hi = int(lo), int(hi or lo)
            if hi < lo:
                raise ValueError(part)
            out += list(range(lo, hi + 1))
    except ValueError:
        out = []
    if not out or len(set(out)) != len(out):
        raise SystemExit(f"--seeds {text!r}: give distinct seeds >= 0, e.g. 0-5 or 0,2,4")
    return out


def _run(cmd: list[str], log: Path) -> None:
    """Run ``cmd`` with one thread, its output in ``log``; exit with the log's tail if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("w") as f:
        status = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if status:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"varjepa {cmd[3]} failed (exit {status}); the end of {log}:\n{tail}")


def checkpoint_of(workdir: Path, seed: int) -> Path:
    """Where seed ``seed``'s last checkpoint lives in ``workdir``."""
    return workdir / f"seed{seed}" / "version_0" / "checkpoints" / "last.ckpt"


def _record(args: list[str], config: str) -> dict:
    """What a fit or plan was made from: its arguments and the config file's SHA-256 (an edited
    config with the same path is another setting)."""
    return {"args": args, "config_sha256": hashlib.sha256(Path(config).read_bytes()).hexdigest()}


def _reusable(record: Path, made_from: dict, what: Path) -> bool:
    """Whether ``what`` was made from ``made_from`` (:func:`_record`): ``record``, written after it
    was made, holds that. Anything else there (a run killed half-way, other arguments, an edited
    config) is an error, not a silent reuse."""
    if not record.is_file():
        if what.exists():
            raise SystemExit(
                f"{what} exists but {record.name} does not (a run that did not finish, or made by "
                "hand): delete it or pick another --workdir"
            )
        return False
    held = json.loads(record.read_text())
    if held.get("config_sha256") != made_from["config_sha256"]:
        raise SystemExit(f"{what} was made from another version of the config: pick another --workdir")
    if held != made_from:
        raise SystemExit(
            f"{what} was made with other settings than this run's ({record} holds them): pick another --workdir"
        )
    return True


def run_seed(seed: int, args) -> dict:
    """Train (unless this seed was trained with the same settings in ``--workdir``) and plan one
    seed; returns its summary rows and paired counts."""
    workdir = Path(args.workdir)
    ckpt = checkpoint_of(workdir, seed)
    fit_args = [
        "fit",
        f"--config={args.config}",
        f"--seed_everything={seed}",
        f"--trainer.logger.init_args.save_dir={workdir}",
        f"--trainer.logger.init_args.name=seed{seed}",
        "--trainer.logger.init_args.version=0",
        "--trainer.enable_progress_bar=false",
        *[f"--{kv.replace('{seed}', str(seed))}" for kv in args.set],
    ]
    fit_record, fit_from = workdir / f"seed{seed}" / "fit_args.json", _record(fit_args, args.config)
    fit_s = None
    if not _reusable(fit_record, fit_from, ckpt.parent.parent):
        t0 = time.perf_counter()
        _run([*VARJEPA, *fit_args], workdir / f"fit_seed{seed}.log")
        fit_s = time.perf_counter() - t0
        if not ckpt.is_file():
            raise RuntimeError(
                f"varjepa fit finished but wrote no {ckpt}: the config needs a ModelCheckpoint with "
                "save_last: true and no dirpath of its own"
            )
        fit_record.write_text(json.dumps(fit_from))
    settings = [
        f"--config={args.config}",
        f"--ckpt_path={ckpt}",
        f"--plan.seed={args.episode_seed}",
        f"--plan.episodes={args.episodes}",
        "--plan.threads=1",
        *([f"--plan.planners={args.planners}"] if args.planners else []),
        *([f"--plan.objectives={args.objectives}"] if args.objectives else []),
        *[f"--plan.{kv.replace('{seed}', str(seed))}" for kv in args.plan_set],
    ]
    if not ckpt.is_file():
        raise SystemExit(
            f"{ckpt} is missing (deleted after training?): delete {ckpt.parent.parent} to train again"
        )
    made_from = _record(settings, args.config) | {
        "ckpt_sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest()  # a retrained seed plans anew
    }
    # one folder per planning setting, so that other planners or budgets sit beside this one
    digest = hashlib.sha256(json.dumps(made_from).encode()).hexdigest()[:10]
    out = workdir / f"plan_seed{seed}_ep{args.episode_seed}x{args.episodes}_{digest}"
    plan_record = out / "plan_args.json"
    if not _reusable(plan_record, made_from, out / "plan.json"):
        _run([*VARJEPA, "plan", *settings, f"--plan.out={out}"], workdir / f"plan_seed{seed}_{digest}.log")
        plan_record.write_text(json.dumps(made_from))
    plan = json.loads((out / "plan.json").read_text())
    rows = [
        {k: v for k, v in r.items() if k != "episodes_detail"}
        | {"hazard_episodes": sorted(e["seed"] for e in r["episodes_detail"] if e["hazard"])}
        for r in plan["rows"]
    ]
    paired = paired_violations(plan["rows"])
    return {"seed": seed, "ckpt": str(ckpt), "plan": str(out), "fit_s": fit_s, "rows": rows, "paired": paired}


def calibration(ckpt: str, max_episodes: int | None = None, samples: int = 199) -> dict[str, float]:
    """k-step coverage of checkpoint ``ckpt`` on the test episodes (at most ``max_episodes``) of the
    data it was trained on (the ``config.yaml`` that ``varjepa fit`` saved beside it, overrides
    included), from ``samples`` rollouts per window."""
    torch.set_num_threads(1)
    saved = yaml.safe_load((Path(ckpt).parent.parent / "config.yaml").read_text())
    return calibration_on_test_episodes(
        load_world_model(ckpt), saved["data"]["init_args"], HORIZONS, samples, max_episodes
    )


def compare(a: dict, b: dict) -> tuple[list[dict], int]:
    """Two results of this script (``OUT.json``: two recipes, the same episodes) paired per
    training seed, planner and objective: violations of each, the episodes only one of them ends
    in the hazard, on the episodes both planned, summed over the seeds both hold, and the exact
    McNemar p-value of the sums. Returns the rows and the number of common episodes per seed."""
    ranges = [range(m["episode_seed"], m["episode_seed"] + m["episodes"]) for m in (a["meta"], b["meta"])]
    common = set(ranges[0]) & set(ranges[1])  # the episodes both planned (the same wind)
    if not common:
        raise SystemExit("--compare: the two runs planned no episode in common")
    rows_b = {(r["seed"], x["planner"], x["objective"]): x for r in b["seeds"] for x in r["rows"]}
    out: dict[tuple[str, str], dict] = {}
    for r in a["seeds"]:
        for x in r["rows"]:
            y = rows_b.get((r["seed"], x["planner"], x["objective"]))
            if y is None:
                continue
            ha, hb = set(x["hazard_episodes"]) & common, set(y["hazard_episodes"]) & common
            q = out.setdefault(
                (x["planner"], x["objective"]),
                {"planner": x["planner"], "objective": x["objective"], "seeds": []}
                | dict.fromkeys(("violations_a", "violations_b", "only_a", "only_b"), 0),
            )
            q["seeds"].append(r["seed"])
            q["violations_a"] += len(ha)
            q["violations_b"] += len(hb)
            q["only_a"] += len(ha - hb)
            q["only_b"] += len(hb - ha)
    if not out:
        raise SystemExit("--compare: no training seed, planner and objective in common")
    for q in out.values():
        q["mcnemar_p"] = mcnemar_exact(q["only_a"], q["only_b"])
    return list(out.values()), len(common)


def compare_markdown(rows: list[dict], a: str, b: str, episodes: int) -> str:
    """:func:`compare` rows as Markdown."""
    lines = [
        f"# Paired comparison of two recipes on the same episodes\n\nA: `{a}`\nB: `{b}`\n",
        f"{episodes} episodes (those both planned) per training seed, planner and objective; "
        "violations summed over the "
        "seeds both runs hold; exact two-sided McNemar p-value on the episodes only one recipe ends "
        "in the hazard.\n",
        "| planner | objective | seeds | violations A → B | only A | only B | McNemar p |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for q in rows:
        lines.append(
            f"| {q['planner']} | {q['objective']} | {','.join(map(str, q['seeds']))} | "
            f"{q['violations_a']} → {q['violations_b']} | {q['only_a']} | {q['only_b']} | {q['mcnemar_p']:.3g} |"
        )
    return "\n".join(lines) + "\n"


def coverage_note(episodes: int | None, samples: int) -> str:
    """The report's sentence on how coverage was measured, when not on every test episode with 199
    rollouts ("" then)."""
    parts = [f"the first {episodes} test episodes of each seed's data"] if episodes else []
    parts += [f"{samples} rollouts per window"] if samples != 199 else []
    return f" Coverage on {', '.join(parts)}." if parts else ""


def report(results: list[dict], pooled: list[dict], args) -> str:
    """The per-seed and pooled tables as Markdown."""
    first = args.episode_seed
    lines = [
        "# World model over training seeds: risk-averse against risk-neutral planning",
        "",
        f"Config `{args.config_label}`"
        + (f" with {', '.join(f'`{kv}`' for kv in args.set)}" if args.set else "")
        + (f"; plan overrides {', '.join(f'`{kv}`' for kv in args.plan_set)}" if args.plan_set else "")
        + f"; training seeds {', '.join(str(r['seed']) for r in results)}; {args.episodes} episodes per "
        f"planner × objective and seed (episode seeds {first}–{first + args.episodes - 1}, the same wind "
        f"in every row); 1 torch thread per run, {platform.machine()}, torch {torch.__version__}."
        + coverage_note(
            getattr(args, "calibration_episodes", None), getattr(args, "calibration_samples", 199)
        ),
        "",
        "## Per seed",
        "",
        "| seed | planner | objective | violations (expected → objective) | only expected | only objective | "
        "success (expected → objective) | plan ms/step | coverage90 k = 1 / 5 / 10 |",
        "|---:|---|---|---|---:|---:|---|---:|---|",
    ]
    for r in results:
        by = {(x["planner"], x["objective"]): x for x in r["rows"]}
        cov = " / ".join(f"{r['calibration'][f'coverage90_k{k}']:.3f}" for k in HORIZONS)
        for q in r["paired"]:
            e, o = by[(q["planner"], "expected")], by[(q["planner"], q["objective"])]
            lines.append(
                f"| {r['seed']} | {q['planner']} | {q['objective']} | {q['violations_expected']} → "
                f"{q['violations']} | {q['only_expected']} | {q['only_objective']} | "
                f"{e['success']:.3f} → {o['success']:.3f} | {o['plan_ms']:.1f} | {cov} |"
            )
    lines += ["", "## Pooled over seeds", "", PAIRED_NOTE, "", paired_markdown(pooled), ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs/worldmodel/windy_point.yaml"))
    p.add_argument("--seeds", default="0-5", help="training seeds, e.g. 0-5 or 0,2,4")
    p.add_argument("--episodes", type=int, default=400, help="episodes per planner × objective and seed")
    p.add_argument("--episode-seed", type=int, default=2000, help="first episode seed")
    p.add_argument("--planners", default="[cem]", help="plan.planners (default: CEM)")
    p.add_argument(
        "--objectives", default="[expected, {name: cvar, alpha: 0.2}]", help="plan.objectives ('' = config's)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        help="fit override KEY=VALUE (repeatable); {seed} in it becomes the training seed",
    )
    p.add_argument(
        "--plan-set",
        action="append",
        default=[],
        help="plan override KEY=VALUE (repeatable); {seed} in it becomes the training seed",
    )
    p.add_argument("--jobs", type=int, default=2, help="seeds run at once (one thread each)")
    p.add_argument(
        "--calibration-episodes",
        type=int,
        default=None,
        help="measure coverage on the first N test episodes only (default: all; a 1,600-episode "
        "collection holds 160 and takes long)",
    )
    p.add_argument("--calibration-samples", type=int, default=199, help="rollouts per window for coverage")
    p.add_argument("--workdir", default=str(ROOT / "runs" / "worldmodel_seeds"), help="checkpoints and plans")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/worldmodel_seeds"))
    p.add_argument(
        "--compare",
        nargs=2,
        metavar=("A.json", "B.json"),
        help="pair two earlier results (two recipes, the same episodes) instead of running; writes OUT.md",
    )
    args = p.parse_args()
    if args.compare:
        if args.out == p.get_default("out"):
            raise SystemExit("--compare needs its own --out (the default is this script's result)")
        a, b = (json.loads(Path(f).read_text()) for f in args.compare)
        rows, episodes = compare(a, b)
        md = compare_markdown(rows, *args.compare, episodes)
        print(md)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).with_suffix(".md").write_text(md)
        return
    config = Path(args.config).resolve()
    args.config = str(config)
    args.config_label = str(config.relative_to(ROOT)) if config.is_relative_to(ROOT) else str(config)
    if args.episodes < 1 or args.jobs < 1:
        raise SystemExit("--episodes and --jobs must be >= 1")
    if (
        args.calibration_episodes is not None and args.calibration_episodes < 1
    ) or args.calibration_samples < 2:
        raise SystemExit("--calibration-episodes must be >= 1 and --calibration-samples >= 2")
    for kv in args.set + args.plan_set:
        if "=" not in kv:
            raise SystemExit(f"--set / --plan-set {kv!r}: give KEY=VALUE")
    for opt, given, owned in (("--set", args.set, FIT_OWNED), ("--plan-set", args.plan_set, PLAN_OWNED)):
        for kv in given:
            if is_owned(kv, owned):
                raise SystemExit(
                    f"{opt} {kv!r}: {kv.split('=', 1)[0]} is set by this script (use its own options)"
                )
    objectives = yaml.safe_load(args.objectives) if args.objectives else None
    if objectives is None:  # the config's
        objectives = (yaml.safe_load(config.read_text()).get("plan") or {}).get(
            "objectives", DEFAULT_OBJECTIVES
        )
    if "expected" not in objectives or len(objectives) < 2:
        raise SystemExit(
            f"--objectives {args.objectives!r}: include expected and a risk-averse objective to pair"
        )
    seeds = seed_list(args.seeds)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pool = ThreadPoolExecutor(args.jobs)  # each job is a subprocess: the threads only wait
    futures = [pool.submit(run_seed, s, args) for s in seeds]
    try:
        wait(futures, return_when=FIRST_EXCEPTION)  # the first failure (or Ctrl-C) ends the wait
        results = [f.result() for f in futures]  # raises it
    except BaseException:  # no new seed starts; the running ones finish their current command
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    for r in results:
        r["calibration"] = calibration(r["ckpt"], args.calibration_episodes, args.calibration_samples)
        print(f"seed {r['seed']}:\n{paired_markdown(r['paired'])}", flush=True)
    pooled = pool_paired([r["paired"] for r in results])
    md = report(results, pooled, args)
    print("\n" + md)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "config": args.config_label,
        "set": args.set,
        "plan_set": args.plan_set,
        "seeds": seeds,
        "episodes": args.episodes,
        "episode_seed": args.episode_seed,
        "calibration_episodes": args.calibration_episodes,
        "calibration_samples": args.calibration_samples,
        "planners": args.planners or "config's",
        "objectives": args.objectives or "config's",
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.system()}",
        "wall_s": time.perf_counter() - t0,
    }
    out.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "seeds": results, "pooled": pooled}, indent=1, default=str)
    )
    out.with_suffix(".md").write_text(md)
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")
    if any(q["cut"] is None for q in pooled):
        print("note: no risk-neutral violations in some pooled rows: their cut is undefined", file=sys.stderr)


if __name__ == "__main__":
    main()
