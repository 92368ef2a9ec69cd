"""``varjepa plan --config CFG --ckpt_path CKPT``: seeded episodes per planner × objective, a table.

The config is the one the model was trained with (``varjepa fit --config CFG``); its ``plan:``
section holds :class:`PlanSettings` (the fit command accepts and ignores it). The environment is
the one the checkpoint was trained on (``model.spaces.env``), as configured, i.e. with its
termination rules, unless ``plan.env`` names another. Episode ``i`` of every planner × objective
resets the environment with seed ``plan.seed + i`` and meets the same wind (WindyPointMass draws
its randomness independently of the actions), so the rows are paired comparisons.

Writes ``plan.json``, ``plan.md``, one PNG of the trajectories per row and TensorBoard events
(table scalars and trajectory images) to ``plan.out`` (default ``<run dir of the checkpoint>/plan``)
and prints the table, then each objective paired against the same planner's risk-neutral row
(:func:`paired_violations`: violations, discordant episodes, cut, exact McNemar p).
"""

from __future__ import annotations

import inspect
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..eval.paired import mcnemar_exact
from ..registry import ConfigError, spec_name
from .costs import build_cost
from .envs import env_spec as normalize_env
from .envs import make_env
from .planners import PLANNERS
from .risk import RISKS, risk_label

DEFAULT_OBJECTIVES: list[Any] = ["expected", {"name": "cvar", "alpha": 0.2}, {"name": "mean_std", "lam": 1.0}]


@dataclass
class PlanSettings:
    """What ``varjepa plan`` runs (the ``plan:`` section of a world-model config).

    Attributes:
        episodes: episodes per planner × objective.
        seed: episode ``i`` resets the environment with ``seed + i`` (and seeds the planner).
        planners: planner names (``cem``, ``mppi``).
        objectives: risk measures: ``expected``, ``{name: cvar, alpha}``, ``{name: mean_std, lam}``.
        cost: planning cost (``{name: goal_hazard, hazard_weight, distance_weight, goal_obs}`` or a
            class_path to any callable ``cost(model, z [..., H, d]) -> [..., H]``).
        horizon / candidates / particles / iterations / first_iterations / noise / discount /
            common_noise / tilt: the planning budget (the same for every row), see
            :class:`~varjepa.worldmodel.LatentPlanner`.
        compile: score with a ``torch.compile``-d scorer (the same plans up to float rounding,
            faster; each row compiles before its episodes), see :class:`~varjepa.worldmodel.LatentPlanner`.
        elites / momentum: CEM's elite count and refit momentum. temperature: MPPI's relative
            temperature.
        env: environment spec to plan in (default: the checkpoint's training environment).
        out: output folder (default: ``plan`` beside the checkpoint's run).
        threads: torch threads while planning (default: leave torch's setting).
        worst_share: share of the worst episodes whose mean return the table reports.
    """

    episodes: int = 50
    seed: int = 1000
    planners: list[str] = field(default_factory=lambda: ["cem", "mppi"])
    objectives: list[Any] = field(default_factory=lambda: list(DEFAULT_OBJECTIVES))
    cost: Any = field(default_factory=lambda: {"name": "goal_hazard"})
    horizon: int = 10
    candidates: int = 32
    particles: int = 16
    iterations: int = 3
    first_iterations: int | None = None
    noise: float = 0.5
    discount: float = 1.0
    common_noise: bool = True
    tilt: float = 1.0
    compile: bool = False
    elites: int = 6
    momentum: float = 0.0
    temperature: float = 0.5
    env: Any = None
    out: str | None = None
    threads: int | None = None
    worst_share: float = 0.1

    def __post_init__(self):
        if self.episodes < 1:
            raise ConfigError(f"plan.episodes = {self.episodes}; must be >= 1")
        if not 0 <= self.tilt <= 1:
            raise ConfigError(
                f"plan.tilt = {self.tilt}; must be in [0, 1] (1: no importance sampling, 0: components drawn uniformly)"
            )
        if not 0 < self.worst_share <= 1:
            raise ConfigError(f"plan.worst_share = {self.worst_share}; must be in (0, 1]")
        for p in self.planners:
            PLANNERS.get(p, "plan.planners")
        for o in self.objectives:
            RISKS.build(o, "plan.objectives")

    def planner_kwargs(self, name: str) -> dict[str, Any]:
        """The budget as keyword arguments of planner ``name``."""
        kw = {
            "horizon": self.horizon,
            "candidates": self.candidates,
            "particles": self.particles,
            "iterations": self.iterations,
            "first_iterations": self.first_iterations,
            "noise": self.noise,
            "discount": self.discount,
            "common_noise": self.common_noise,
            "tilt": self.tilt,
            "compile": self.compile,
        }
        if name == "cem":
            kw["elites"] = self.elites
            kw["momentum"] = self.momentum
        if name == "mppi":
            kw["temperature"] = self.temperature
        return kw


@dataclass
class EpisodeResult:
    """One planned episode."""

    seed: int
    ret: float
    success: bool
    hazard: bool
    steps: int
    plan_ms: float
    positions: list = field(default_factory=list)
    #: tilted rollouts: mean effective sample size per candidate over the episode's scorings
    ess: float | None = None

    @property
    def outcome(self) -> str:
        return "success" if self.success else "hazard" if self.hazard else "timeout"


def run_episode(env, planner, seed: int) -> EpisodeResult:
    """Run one episode of ``planner`` in ``env`` (reset with ``seed``; torch's RNG seeded with it)."""
    torch.manual_seed(seed)
    planner.reset()
    planner.step_times.clear()
    planner.ess.clear()
    obs, info = env.reset(seed=seed)
    ret, steps, hazard, success = 0.0, 0, False, False
    pos = [info["position"].tolist()] if "position" in info else []
    while True:
        obs, r, term, trunc, info = env.step(planner.act(obs))
        ret += float(r)
        steps += 1
        hazard = hazard or bool(info.get("hazard", False))
        success = bool(info.get("success", False)) and not hazard
        if "position" in info:
            pos.append(info["position"].tolist())
        if term or trunc:
            break
    ess = float(np.mean(planner.ess)) if planner.ess else None
    return EpisodeResult(
        seed, ret, success, hazard, steps, 1000 * float(np.mean(planner.step_times)), pos, ess
    )


def summarize(results: list[EpisodeResult], worst_share: float = 0.1) -> dict[str, float]:
    """Success and hazard-violation rates, mean return, mean of the worst ``worst_share`` returns,
    mean steps and mean planning time per step (ms); with tilted rollouts also their mean effective
    sample size per candidate (``ess``)."""
    rets = np.sort(np.array([r.ret for r in results]))
    n_worst = max(1, math.ceil(worst_share * len(rets) - 1e-9))
    ess = [r.ess for r in results if r.ess is not None]
    out = {
        "episodes": len(results),
        "success": float(np.mean([r.success for r in results])),
        "hazard": float(np.mean([r.hazard for r in results])),
        "return": float(rets.mean()),
        "worst_return": float(rets[:n_worst].mean()),
        "steps": float(np.mean([r.steps for r in results])),
        "plan_ms": float(np.mean([r.plan_ms for r in results])),
    }
    if ess:
        out["ess"] = float(np.mean(ess))
    return out


def build_planner(model, settings: PlanSettings, name: str, objective: Any, env):
    """Planner ``name`` with risk measure ``objective`` on ``model``, with the cost and budget of
    ``settings`` (the cost bound to ``env``, e.g. for its goal)."""
    risk = RISKS.build(objective, "plan.objectives")
    cost = build_cost(settings.cost)
    if hasattr(cost, "bind"):
        cost.bind(model, env)
    return PLANNERS.get(name, "plan.planners")(model, cost, risk, **settings.planner_kwargs(name))


def evaluate_planners(
    model, settings: PlanSettings, env_spec=None, progress: bool = True
) -> list[dict[str, Any]]:
    """Every planner × objective of ``settings`` on the same seeded episodes; one summary row each
    (with ``planner``, ``objective`` and the per-episode results under ``episodes_detail``).
    With ``settings.compile`` each row's planner is compiled before its episodes (``compile_s``),
    after ``torch._dynamo.reset()``, which also drops the caller's own compiled graphs.
    ``env_spec`` defaults to the model's training environment."""
    env = make_env(env_spec if env_spec is not None else model.hparams.spaces["env"])
    rows = []
    tty = sys.stderr.isatty()
    combos = [(p, o) for p in settings.planners for o in settings.objectives]
    for i, (pname, obj) in enumerate(combos):
        planner = build_planner(model, settings, pname, obj, env)
        risk = planner.risk
        compile_s = None
        if planner.compiled:  # compile before the episodes, so that no step's time holds it
            # rows run one after another: forget the previous rows' graphs, so that many rows never
            # reach dynamo's recompile limit (past it, a scorer would fall back to eager silently)
            torch._dynamo.reset()
            if progress:
                print(
                    f"[{i + 1}/{len(combos)}] {pname} {risk_label(risk)}: compiling the scorer "
                    "(about a minute the first time, seconds from inductor's cache)",
                    file=sys.stderr,
                    flush=True,
                )
            compile_s = planner.warm_up()
        results = []
        t0 = time.perf_counter()
        for e in range(settings.episodes):
            results.append(run_episode(env, planner, settings.seed + e))
            done = e + 1
            if progress and (tty or done == settings.episodes):
                eta = (time.perf_counter() - t0) / done * (settings.episodes - done)
                print(
                    f"\r[{i + 1}/{len(combos)}] {pname} {risk_label(risk)}: episode {done}/{settings.episodes} "
                    + (
                        f"(~{eta:.0f} s left in this row)   "
                        if done < settings.episodes
                        else f"({time.perf_counter() - t0:.0f} s)"
                    ),
                    end="" if done < settings.episodes else "\n",
                    file=sys.stderr,
                    flush=True,
                )
        row = {"planner": pname, "objective": risk_label(risk), **summarize(results, settings.worst_share)}
        if compile_s is not None:
            row["compile_s"] = compile_s
        row["episodes_detail"] = results
        rows.append(row)
    env.close()
    return rows


COLUMNS = [
    ("planner", "planner", "{}"),
    ("objective", "objective", "{}"),
    ("success", "success", "{:.2f}"),
    ("hazard", "hazard violations", "{:.2f}"),
    ("return", "mean return", "{:.1f}"),
    ("worst_return", "worst 10 % return", "{:.1f}"),
    ("steps", "steps", "{:.1f}"),
    ("plan_ms", "plan ms/step", "{:.1f}"),
]


def _hazards(row: dict[str, Any]) -> dict[int, bool]:
    """Episode seed -> whether it ended in the hazard, from a row's ``episodes_detail``
    (:class:`EpisodeResult` objects, or their dicts as ``plan.json`` holds them)."""
    out = {}
    for e in row["episodes_detail"]:
        seed, hazard = (e.seed, e.hazard) if isinstance(e, EpisodeResult) else (e["seed"], e["hazard"])
        out[int(seed)] = bool(hazard)
    return out


def _with_test(counts: dict[str, Any]) -> dict[str, Any]:
    """``counts`` (violations and discordant episodes) with the cut (None without risk-neutral
    violations) and the exact McNemar p-value computed from them."""
    n_b = counts["violations_expected"]
    counts["cut"] = 1 - counts["violations"] / n_b if n_b else None
    counts["mcnemar_p"] = mcnemar_exact(counts["only_expected"], counts["only_objective"])
    return counts


def paired_violations(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per planner, each objective against the same planner's risk-neutral (``expected``) row on the
    episodes both ran (same seeds, same wind): violations of each, the episodes only one of the two
    ends in the hazard, the cut ``1 − v_objective / v_expected`` (None without risk-neutral
    violations) and the exact two-sided McNemar p-value on those discordant episodes. Planners
    without an ``expected`` row are skipped."""
    out = []
    for r in rows:
        if r["objective"] == "expected":
            continue
        base = next((b for b in rows if b["planner"] == r["planner"] and b["objective"] == "expected"), None)
        if base is None:
            continue
        hb, hr = _hazards(base), _hazards(r)
        seeds = sorted(hb.keys() & hr.keys())
        if not seeds:
            raise ValueError(f"{r['planner']} {r['objective']}: no episode seed in common with 'expected'")
        out.append(
            _with_test(
                {
                    "planner": r["planner"],
                    "objective": r["objective"],
                    "episodes": len(seeds),
                    "violations_expected": sum(hb[s] for s in seeds),
                    "violations": sum(hr[s] for s in seeds),
                    "only_expected": sum(hb[s] and not hr[s] for s in seeds),
                    "only_objective": sum(hr[s] and not hb[s] for s in seeds),
                }
            )
        )
    return out


def pool_paired(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """:func:`paired_violations` of several runs (e.g. training seeds) summed per planner ×
    objective: counts add up, the cut and the McNemar p-value are recomputed from the sums."""
    pooled: dict[tuple[str, str], dict[str, Any]] = {}
    keys = ("episodes", "violations_expected", "violations", "only_expected", "only_objective")
    for run in runs:
        for q in run:
            acc = pooled.setdefault(
                (q["planner"], q["objective"]),
                {"planner": q["planner"], "objective": q["objective"]} | dict.fromkeys(keys, 0),
            )
            for k in keys:
                acc[k] += q[k]
    return [_with_test(acc) for acc in pooled.values()]


PAIRED_NOTE = (
    "Paired against the same planner's risk-neutral (`expected`) row on the same episodes: hazard "
    "violations, the episodes only one of the two ends in the hazard, the cut in violations and the "
    "exact two-sided McNemar p-value."
)


def paired_markdown(paired: list[dict[str, Any]]) -> str:
    """:func:`paired_violations` rows as a Markdown table."""
    lines = [
        "| planner | objective | violations (expected → objective) | only expected | only objective | cut | McNemar p |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for q in paired:
        cut = "–" if q["cut"] is None else f"{q['cut']:.0%}"
        lines.append(
            f"| {q['planner']} | {q['objective']} | {q['violations_expected']} → {q['violations']} | "
            f"{q['only_expected']} | {q['only_objective']} | {cut} | {q['mcnemar_p']:.3g} |"
        )
    return "\n".join(lines)


def table_markdown(rows: list[dict[str, Any]], worst_share: float = 0.1) -> str:
    """The summary rows as a Markdown table."""
    cols = [(k, h.replace("10 %", f"{100 * worst_share:g} %"), f) for k, h, f in COLUMNS]
    lines = ["| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(f.format(r[k]) for k, _, f in cols) + " |")
    return "\n".join(lines)


def write_outputs(
    rows: list[dict[str, Any]], out: Path, env_spec: dict, settings: PlanSettings, meta: dict
) -> list[dict[str, Any]]:
    """``plan.json``, ``plan.md``, trajectory PNGs and TensorBoard events in ``out``; returns the
    paired comparisons (:func:`paired_violations`)."""
    from torch.utils.tensorboard import SummaryWriter

    from .plots import arena_figure, figure_to_array

    out.mkdir(parents=True, exist_ok=True)
    env = make_env(env_spec)
    writer = SummaryWriter(str(out))
    plain = []
    for i, r in enumerate(rows):
        detail: list[EpisodeResult] = r["episodes_detail"]
        name = f"{r['planner']}_{r['objective']}"
        plain.append(
            {k: v for k, v in r.items() if k != "episodes_detail"}
            | {"episodes_detail": [asdict(d) for d in detail]}
        )
        for k in ("success", "hazard", "return", "worst_return", "plan_ms", "ess"):
            if k in r:
                writer.add_scalar(f"plan/{name}/{k}", r[k], 0)
        if hasattr(env.unwrapped, "hazard") and all(d.positions for d in detail):
            fig, _ = arena_figure(
                env,
                [np.asarray(d.positions) for d in detail],
                [d.outcome for d in detail],
                title=f"{r['planner']}, {r['objective']}",
            )
            fig.savefig(out / f"trajectories_{name}.png")
            writer.add_image(f"plan/trajectories/{name}", figure_to_array(fig), i, dataformats="HWC")
    paired = paired_violations(rows)
    writer.add_text("plan/table", table_markdown(rows, settings.worst_share), 0)
    if paired:
        writer.add_text("plan/paired", paired_markdown(paired), 0)
    writer.close()
    env.close()
    (out / "plan.json").write_text(
        json.dumps(
            {"meta": meta, "settings": asdict(settings), "rows": plain, "paired": paired},
            indent=1,
            default=str,
        )
    )
    (out / "plan.md").write_text(
        f"# Planning in {env_spec['id']}\n\n{table_markdown(rows, settings.worst_share)}\n\n"
        f"Checkpoint: `{meta.get('ckpt_path')}`; {settings.episodes} episodes per row (seeds {settings.seed}–"
        f"{settings.seed + settings.episodes - 1}); budget: horizon {settings.horizon}, {settings.candidates} "
        f"candidates × {settings.particles} particles × {settings.iterations} iterations"
        + (f", importance-sampled rollouts (tilt {settings.tilt:g})" if settings.tilt < 1 else "")
        + ".\n"
        + (
            f"\nEffective sample size of the tilted rollouts per candidate (of {settings.particles}), "
            "mean over each episode's scorings, then over the episodes: "
            + ", ".join(f"{r['planner']} {r['objective']} {r['ess']:.1f}" for r in rows if "ess" in r)
            + ".\n"
            if any("ess" in r for r in rows)
            else ""
        )
        + (
            "\nThe scorer was compiled (`plan.compile`) before each row's episodes: "
            + ", ".join(f"{r['compile_s']:.0f} s" for r in rows if "compile_s" in r)
            + " (not in plan ms/step).\n"
            if settings.compile
            else ""
        )
        + (f"\n{PAIRED_NOTE}\n\n{paired_markdown(paired)}\n" if paired else "")
    )
    return paired


# ------------------------------------------------------------------------------------ command
def _parser():
    from jsonargparse import ActionConfigFile, ArgumentParser

    p = ArgumentParser(
        prog="varjepa plan", description="Plan with a trained LatentWorldModel; print a table."
    )
    p.add_argument("--config", action=ActionConfigFile, help="the world model's config (its plan: section)")
    p.add_argument("--ckpt_path", type=str, required=True, help="checkpoint of a LatentWorldModel")
    p.add_class_arguments(PlanSettings, "plan")
    # the rest of a fit config is read by `varjepa fit`; accepted here and unused
    for key in ("trainer", "model", "data", "optimizer", "lr_scheduler"):
        p.add_argument(f"--{key}", type=Any, default=None)
    p.add_argument("--seed_everything", type=Any, default=None)
    return p


def load_world_model(path: str):
    """A :class:`LatentWorldModel` from a checkpoint (``weights_only`` loading; ConfigError if it is not one)."""
    from ..checkpointing import load_checkpoint
    from .model import LatentWorldModel

    ckpt = load_checkpoint(path)
    hp = ckpt.get("hyper_parameters") or {}
    if not isinstance(hp, dict) or not hp.get("spaces"):
        raise ConfigError(f"ckpt_path = '{path}' is not a LatentWorldModel checkpoint (no model.spaces)")
    known = inspect.signature(LatentWorldModel.__init__).parameters
    model = LatentWorldModel(**{k: v for k, v in hp.items() if k in known})  # LightningCLI adds _class_path
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise ConfigError(
            f"ckpt_path = '{path}': weights do not fit the model its hyper-parameters describe: {e}"
        ) from None
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``varjepa plan``; returns the exit status (2 for configuration errors)."""
    parser = _parser()
    try:
        cfg = parser.parse_args(argv)
        init = parser.instantiate_classes(cfg)
        settings: PlanSettings = init.plan
        model = load_world_model(cfg.ckpt_path)
        env = normalize_env(settings.env if settings.env is not None else model.hparams.spaces["env"])
        make_env(env).close()
        build_cost(settings.cost)
    except ConfigError as e:
        print(f"varjepa plan: configuration error: {e}", file=sys.stderr)
        return 2
    threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    out = Path(settings.out) if settings.out else Path(cfg.ckpt_path).resolve().parent.parent / "plan"
    meta = {
        "ckpt_path": str(cfg.ckpt_path),
        "posterior": spec_name(model.hparams.posterior),
        "torch_threads": torch.get_num_threads(),
        "env": env,  # the environment the episodes ran in (settings.env may be null: the model's)
    }
    try:
        rows = evaluate_planners(model, settings, env)
    except ConfigError as e:
        print(f"varjepa plan: configuration error: {e}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)  # an in-process caller keeps its own setting
    paired = write_outputs(rows, out, env, settings, meta)
    print(table_markdown(rows, settings.worst_share))
    if paired:
        print(f"\n{PAIRED_NOTE}\n\n{paired_markdown(paired)}\n")
    print(
        f"varjepa plan: wrote {out / 'plan.md'}, {out / 'plan.json'}, trajectory PNGs and TensorBoard events in {out}"
    )
    return 0
