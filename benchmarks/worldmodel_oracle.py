"""How much can risk-averse planning cut hazard violations in the windy point mass *at all*?

An oracle planner: the same CEM budget as ``varjepa plan`` (horizon 10, 32 candidates × 16
particles × 3 iterations, 6 elites, common random numbers across candidates), but rollouts come
from the environment's true dynamics started from the true hidden state (position and velocity),
with gusts drawn as the environment draws them. Each rollout costs the sum over its steps of the
distance to the goal plus ``hazard_weight`` if it enters the hazard; the risk measure is the mean
(``expected``) or CVaR_0.2 over the 16 rollouts. With ``--ckpt`` the cost is the world model's
learned one instead (latent distance of the target-encoded true states to the goal's latent plus
``hazard_weight`` × the largest hazard-head probability), which separates the learned cost from
the learned dynamics (compare with ``varjepa plan`` on the same checkpoint). ``--imagined`` plans
with counterfactual wind instead (:func:`true_rollouts`): gusts without momentum, or a Gaussian wind
without the heavy tail, to measure what a world model must get right for CVaR to help.
``--observe filter`` starts the rollouts from a bootstrap particle filter's belief instead of the
true state (:class:`ParticleFilter`: the environment's dynamics, fed the noisy positions an agent
sees): a perfect model that still has to infer the velocity and a gust's momentum, the best any
world model planning from observations can do with this budget.

Prints a table per environment setting and writes ``benchmarks/results/worldmodel_oracle.{json,md}``.

    python benchmarks/worldmodel_oracle.py                                     # default wind and frequent weak gusts
    python benchmarks/worldmodel_oracle.py --env '{"gust_prob": 0.05, "gust_spread": 0.15}' --weights 3
    python benchmarks/worldmodel_oracle.py --ckpt runs/windy_point/version_0/checkpoints/last.ckpt --weights 3
    python benchmarks/worldmodel_oracle.py --env '{}' --imagined true,no_momentum,gaussian_wind --episodes 100
    python benchmarks/worldmodel_oracle.py --env '{}' --observe state,filter --weights 3,10,30 --episodes 200
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

from varjepa.eval.paired import mcnemar_exact
from varjepa.worldmodel.costs import GoalHazardCost
from varjepa.worldmodel.envs import WindyPointMass

ROOT = Path(__file__).resolve().parents[1]
#: the default wind (rare strong gusts) and the frequent weaker gusts of earlier versions
DEFAULT_ENVS = ["{}", '{"gust_prob": 0.1, "gust_strength": 0.2}']
HORIZON, CANDIDATES, PARTICLES, ITERATIONS, ELITES, NOISE, MIN_STD = 10, 32, 16, 3, 6, 0.5, 0.05


#: where the planner's rollouts start (``--observe``): the true hidden state, or a particle filter's
#: belief from the noisy observations
OBSERVE = ("state", "filter")
FILTER_PARTICLES = 2000


class ParticleFilter:
    """Bootstrap particle filter over the hidden state of a :class:`WindyPointMass` (position and
    velocity, ``[N, 2]`` each) from its noisy position observations, with the environment's own
    start distribution, dynamics (base wind and gusts) and observation noise.

    ``reset(obs)`` after ``env.reset``; ``step(action, obs)`` after each ``env.step`` that did not
    end the episode; ``sample(k)`` draws ``k`` states ``([k, 2], [k, 2])`` from the current belief.
    An episode that goes on also tells the agent that the mass is not in the hazard (nor at the
    goal), when those end it: such particles get no weight."""

    def __init__(self, env: WindyPointMass, rng: np.random.Generator, n: int = FILTER_PARTICLES):
        self.env, self.rng, self.n = env, rng, n

    def reset(self, obs: np.ndarray) -> None:
        e = self.env
        self.pos = e.start + self.rng.normal(0.0, e.start_noise, (self.n, 2))
        self.vel = np.zeros((self.n, 2))
        self._weigh(obs)

    def step(self, action: np.ndarray, obs: np.ndarray) -> None:
        e, n = self.env, self.n
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        wind = self.rng.normal(0.0, e.wind_std, (n, 2))
        gust = self.rng.random(n) < e.gust_prob
        g = self.rng.uniform(0.5, 1.0, n) * e.gust_strength
        phi = self.rng.normal(0.0, e.gust_spread, n)
        wind += (g * gust)[:, None] * np.stack([np.sin(phi), -np.cos(phi)], -1)
        self.vel = e.damping * self.vel + e.accel * a + wind
        self.pos = np.clip(self.pos + self.vel, -e.bounds, e.bounds)
        ended = np.zeros(n, dtype=bool)
        if e.terminate_on_hazard:
            ended |= e.hazard.contains(self.pos)
        if e.terminate_on_goal:
            ended |= np.linalg.norm(self.pos - e.goal, axis=-1) <= e.goal_radius
        self._weigh(obs, ended)

    def _weigh(self, obs: np.ndarray, excluded: np.ndarray | None = None) -> None:
        """Weight by the observation's likelihood (zero for ``excluded`` particles, unless that
        would leave none) and resample (systematic)."""
        logw = -((self.pos - np.asarray(obs, dtype=np.float64)) ** 2).sum(-1) / (2 * self.env.obs_noise**2)
        if excluded is not None and not excluded.all():
            logw = np.where(excluded, -np.inf, logw)
        w = np.exp(logw - logw.max())
        cdf = np.cumsum(w / w.sum())
        idx = np.searchsorted(cdf, (self.rng.random() + np.arange(self.n)) / self.n)
        idx = np.minimum(idx, self.n - 1)
        self.pos, self.vel = self.pos[idx], self.vel[idx]

    def mean(self) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean position and velocity ``([2], [2])``."""
        return self.pos.mean(0), self.vel.mean(0)

    def sample(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self.rng.integers(0, self.n, k)
        return self.pos[idx], self.vel[idx]


#: what the learned cost is computed from (``--cost-reads``): the true positions, or noisy
#: observations of them (what a world model that imagines observations scores)
COST_READS = ("state", "observation")

#: how the planner's imagined rollouts treat the wind (``--imagined``): the environment's own
#: dynamics, or one of two counterfactual models that each lack one property of the real gusts
IMAGINED = ("true", "no_momentum", "gaussian_wind")


def gaussian_wind_moments(env: WindyPointMass) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[2]`` and per-axis std ``[2]`` of one step's wind (base wind plus the gust mixture),
    exactly: ``g = U·strength`` with ``U ~ U(0.5, 1)`` (``E U = 0.75``, ``E U² = 7/12``) and
    direction ``(sin φ, −cos φ)``, ``φ ~ N(0, spread²)``; the two axes are uncorrelated."""
    p, S, s2 = env.gust_prob, env.gust_strength, env.gust_spread**2
    e_cos = np.exp(-s2 / 2)
    mean = np.array([0.0, -p * 0.75 * S * e_cos])
    e_g2 = S**2 * 7 / 12
    var = env.wind_std**2 + p * e_g2 * np.array([(1 - np.exp(-2 * s2)) / 2, (1 + np.exp(-2 * s2)) / 2])
    return mean, np.sqrt(var - np.array([0.0, mean[1] ** 2]))


def true_rollouts(
    env: WindyPointMass,
    pos,
    vel,
    actions: np.ndarray,
    rng: np.random.Generator,
    imagined: str = "true",
    particles: int = PARTICLES,
) -> np.ndarray:
    """Positions ``[C, P, H, 2]`` of ``P = particles`` rollouts of each action sequence ``[C, H, 2]`` from the true
    state (``pos``, ``vel``: ``[2]``, or ``[P, 2]`` for one start per rollout), with the
    environment's wind (the same draws for every sequence).

    ``imagined`` replaces the wind by a counterfactual (to measure which property of the gusts a
    risk-averse planner needs to see): ``no_momentum`` adds each gust's push to the position for
    that step only instead of to the velocity (an imagined gust displaces once, as a world model that
    misses the gust's momentum imagines it); ``gaussian_wind`` replaces base wind and gusts by a
    Gaussian wind of the same mean and per-axis variance (momentum kept, no heavy tail)."""
    if imagined not in IMAGINED:
        raise ValueError(f"imagined = {imagined!r}; allowed: {', '.join(IMAGINED)}")
    C, H, _ = actions.shape
    P = particles
    wind = rng.normal(0.0, env.wind_std, (H, P, 2))
    gust = rng.random((H, P)) < env.gust_prob
    g = rng.uniform(0.5, 1.0, (H, P)) * env.gust_strength
    phi = rng.normal(0.0, env.gust_spread, (H, P))
    push = (g * gust)[..., None] * np.stack([np.sin(phi), -np.cos(phi)], -1)
    if imagined == "gaussian_wind":
        mean, std = gaussian_wind_moments(env)
        wind, push = mean + std * rng.normal(size=(H, P, 2)), np.zeros_like(push)
    elif imagined == "true":
        wind, push = wind + push, np.zeros_like(push)
    p = np.broadcast_to(pos, (C, P, 2)).copy()
    v = np.broadcast_to(vel, (C, P, 2)).copy()
    out = []
    for t in range(H):
        v = env.damping * v + env.accel * actions[:, t, None, :] + wind[t][None]
        p = np.clip(p + v + push[t][None], -env.bounds, env.bounds)
        out.append(p)
    return np.stack(out, 2)


class TrueCost:
    """Per-rollout cost ``[C, P]``: summed distance to the goal + ``weight`` if the hazard is entered."""

    def __init__(self, env: WindyPointMass, weight: float):
        self.env, self.weight = env, weight

    def __call__(self, pos: np.ndarray) -> np.ndarray:
        hit = self.env.hazard.contains(pos).any(-1)
        return np.linalg.norm(pos - self.env.goal, axis=-1).sum(-1) + self.weight * hit


class LearnedCost:
    """The world model's planning cost (:class:`~varjepa.worldmodel.GoalHazardCost`) summed over the
    steps of the target-encoded true positions ``[C, P, H, 2]`` → ``[C, P]``.

    ``reads="observation"`` encodes noisy observations of them instead (fresh ``N(0, obs_noise²)``
    per particle and step, the same for every candidate), as a world model that imagines
    observations feeds its cost."""

    def __init__(self, model, env: WindyPointMass, weight: float, reads: str = "state", seed: int = 0):
        if reads not in COST_READS:
            raise ValueError(f"reads = {reads!r}; allowed: {', '.join(COST_READS)}")
        self.model, self.cost = model, GoalHazardCost(hazard_weight=weight)
        self.cost.bind(model, env)
        self.noise = env.obs_noise if reads == "observation" else 0.0
        self.rng = np.random.default_rng(seed)

    @torch.no_grad()
    def __call__(self, pos: np.ndarray) -> np.ndarray:
        if self.noise > 0:
            pos = pos + self.rng.normal(0.0, self.noise, pos.shape[1:])[None]
        z = self.model.encode(torch.as_tensor(pos, dtype=torch.float32), target=True)
        return self.cost(self.model, z).sum(-1).numpy()


def cut_of(expected: float, objective: float) -> float | None:
    """The relative cut in violations ``1 − objective / expected``; None (JSON null, "—" in the
    table) when the risk-neutral planner had none."""
    return 1 - objective / expected if expected > 0 else None


def pct(share: float | None) -> str:
    """``share`` as a whole percentage, or "—" when undefined (None)."""
    return "—" if share is None else f"{100 * share:.0f} %"


def risk(costs: np.ndarray, objective: str, alpha: float = 0.2) -> np.ndarray:
    """``expected`` (mean) or ``cvar`` (mean of the worst ``alpha`` share) over rollouts: ``[C, P]`` → ``[C]``."""
    if objective == "expected":
        return costs.mean(1)
    k = int(np.ceil(alpha * costs.shape[1]))
    return np.sort(costs, 1)[:, -k:].mean(1)


def episode(
    env: WindyPointMass,
    cost,
    objective: str,
    seed: int,
    imagined: str = "true",
    observe: str = "state",
    alpha: float = 0.2,
    particles: int = PARTICLES,
    trail: list | None = None,
) -> tuple[bool, bool]:
    """One receding-horizon CEM episode (``particles`` rollouts per candidate as ``imagined``,
    started from the true state or from a particle filter's belief as ``observe``; CVaR over the
    worst ``alpha`` share); returns ``(hazard, success)``. ``trail``, if given, receives the true
    position ``[2]`` after every step."""
    if observe not in OBSERVE:
        raise ValueError(f"observe = {observe!r}; allowed: {', '.join(OBSERVE)}")
    obs, info = env.reset(seed=seed)
    rng = np.random.default_rng(seed + 7)
    belief = ParticleFilter(env, np.random.default_rng(seed + 11)) if observe == "filter" else None
    if belief is not None:
        belief.reset(obs)
    mean = np.zeros((HORIZON, 2))
    for _ in range(env.max_steps):
        std = np.full((HORIZON, 2), NOISE)
        start = (info["position"], info["velocity"]) if belief is None else belief.sample(particles)
        for _ in range(ITERATIONS):
            acts = np.clip(mean + std * rng.normal(size=(CANDIDATES, HORIZON, 2)), -1, 1)
            acts[0] = np.clip(mean, -1, 1)
            paths = true_rollouts(env, *start, acts, rng, imagined, particles)
            scores = risk(cost(paths), objective, alpha)
            elite = acts[np.argsort(scores)[:ELITES]]
            mean, std = elite.mean(0), np.maximum(elite.std(0), MIN_STD)
        action = np.clip(mean[0], -1, 1)
        obs, _, terminated, truncated, info = env.step(action)
        if trail is not None:
            trail.append(info["position"].tolist())
        if belief is not None:
            belief.step(action, obs)
        mean = np.concatenate([mean[1:], mean[-1:]])
        if terminated or truncated:
            break
    return info["hazard"], info["success"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", action="append", help="WindyPointMass kwargs as JSON (repeatable)")
    ap.add_argument("--weights", default="1,3,10", help="hazard weights, comma-separated")
    ap.add_argument("--episodes", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--ckpt", default=None, help="use this world model's learned cost (its environment)")
    ap.add_argument(
        "--imagined",
        default="true",
        help=f"comma-separated rollout dynamics for the planner ({', '.join(IMAGINED)}); the episodes "
        "always run in the real environment",
    )
    ap.add_argument("--alphas", default="0.2", help="CVaR tail shares, comma-separated")
    ap.add_argument(
        "--particles", type=int, default=PARTICLES, help="rollouts per candidate (the budget's P)"
    )
    ap.add_argument(
        "--observe",
        default="state",
        help=f"comma-separated: where rollouts start ({', '.join(OBSERVE)}: the true state, or a particle "
        "filter's belief from the noisy observations)",
    )
    ap.add_argument(
        "--cost-reads",
        default="state",
        choices=COST_READS,
        help="with --ckpt: the learned cost reads the true positions or noisy observations of them",
    )
    ap.add_argument(
        "--trails",
        action="store_true",
        help="also write every episode's true positions to OUT_trails.json (for worldmodel_reaction.py)",
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "worldmodel_oracle"))
    args = ap.parse_args()
    if args.particles < 1:
        ap.error(f"--particles {args.particles}: must be >= 1")
    torch.set_num_threads(1)
    model = None
    if args.ckpt:
        from varjepa.worldmodel.plan import load_world_model

        model = load_world_model(args.ckpt)
        envs = [json.dumps(model.hparams.spaces["env"].get("kwargs", {}))]
    else:
        envs = args.env or DEFAULT_ENVS
    weights = [float(w) for w in args.weights.split(",")]
    imagined = args.imagined.split(",")
    bad = sorted(set(imagined) - set(IMAGINED))
    if bad:
        ap.error(f"--imagined: unknown {bad}; allowed: {', '.join(IMAGINED)}")
    observe = args.observe.split(",")
    bad = sorted(set(observe) - set(OBSERVE))
    if bad:
        ap.error(f"--observe: unknown {bad}; allowed: {', '.join(OBSERVE)}")
    alphas = [float(a) for a in args.alphas.split(",")]
    if not all(0 < a <= 1 for a in alphas):
        ap.error(f"--alphas {args.alphas}: each must be in (0, 1]")
    rows, t0 = [], time.perf_counter()

    trails = []

    def run(env, cost, obj, im, ob, alpha=0.2, cell: dict | None = None) -> dict:
        if isinstance(cost, LearnedCost):
            cost.rng = np.random.default_rng(args.seed)  # the same observation noise in every run
        res, detail = [], []
        for i in range(args.episodes):
            trail: list | None = [] if args.trails else None
            res.append(episode(env, cost, obj, args.seed + i, im, ob, alpha, args.particles, trail))
            detail.append({"seed": args.seed + i, "hazard": bool(res[-1][0]), "positions": trail})
        res = np.array(res)
        if args.trails:
            trails.append(
                {
                    "objective": obj if obj == "expected" else f"cvar{alpha:g}",
                    "observe": ob,
                    "imagined": im,
                    **(cell or {}),
                    "episodes_detail": detail,
                }
            )
        hit = [int(args.seed + i) for i in np.flatnonzero(res[:, 0])]
        return {"hazard": res[:, 0].mean(), "success": res[:, 1].mean(), "hazard_episodes": hit}

    for env_json, ob, im, w in itertools.product(envs, observe, imagined, weights):
        env_kwargs = json.loads(env_json)
        env = WindyPointMass(**env_kwargs)
        cost = LearnedCost(model, env, w, args.cost_reads) if model is not None else TrueCost(env, w)
        cell = {"hazard_weight": w, "env": env_kwargs}
        base = run(env, cost, "expected", im, ob, cell=cell)  # the risk-neutral row, shared by every alpha
        for alpha in alphas:
            row = {
                "env": json.loads(env_json),
                "observe": ob,
                "imagined": im,
                "hazard_weight": w,
                "alpha": alpha,
            }
            row["cost"] = ("learned" if model else "true") + (
                ", from observations" if model and args.cost_reads == "observation" else ""
            )
            for obj, r in (("expected", base), ("cvar", run(env, cost, "cvar", im, ob, alpha, cell))):
                row.update({f"{obj}_{k}": v for k, v in r.items()})
            row["cut"] = cut_of(row["expected_hazard"], row["cvar_hazard"])
            only_e = len(set(row["expected_hazard_episodes"]) - set(row["cvar_hazard_episodes"]))
            only_c = len(set(row["cvar_hazard_episodes"]) - set(row["expected_hazard_episodes"]))
            row["only_expected"], row["only_cvar"] = only_e, only_c
            row["mcnemar_p"] = mcnemar_exact(only_e, only_c)
            rows.append(row)
            print(json.dumps(row), flush=True)
    header = (
        f"# Oracle planning (true dynamics) in the windy point mass\n\n{args.episodes} episodes per cell "
        f"(seeds {args.seed}–{args.seed + args.episodes - 1}); CEM, horizon {HORIZON}, {CANDIDATES} candidates × "
        f"{args.particles} particles × {ITERATIONS} iterations; cost: "
        f"{'learned (' + str(args.ckpt) + ')' if model else 'true'}"
        f"{', read from noisy observations of the rollouts' if model and args.cost_reads == 'observation' else ''}; "
        f"{time.perf_counter() - t0:.0f} s.\n\n"
    )
    lines = [
        "| env | rollouts start from | imagined wind | hazard weight | expected: violations | success | "
        "CVaR α | CVaR: violations | success | cut | only expected / only CVaR (McNemar p) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {json.dumps(r['env']) if r['env'] else 'default'} | {r['observe']} | {r['imagined']} | "
            f"{r['hazard_weight']:g} | {r['expected_hazard']:.3f} | {r['expected_success']:.3f} | "
            f"{r['alpha']:g} | {r['cvar_hazard']:.3f} | {r['cvar_success']:.3f} | {pct(r['cut'])} | "
            f"{r['only_expected']} / {r['only_cvar']} ({r['mcnemar_p']:.2g}) |"
        )
    md = header + "\n".join(lines) + "\n"
    print(md)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(
        json.dumps(
            {
                "episodes": args.episodes,
                "seed": args.seed,
                "particles": args.particles,
                "budget": {
                    "horizon": HORIZON,
                    "candidates": CANDIDATES,
                    "iterations": ITERATIONS,
                    "elites": ELITES,
                },
                "filter_particles": FILTER_PARTICLES,
                "ckpt": args.ckpt,
                "cost_reads": args.cost_reads,
                "rows": rows,
            },
            indent=2,
        )
    )
    out.with_suffix(".md").write_text(md)
    if args.trails:  # every episode's true positions (benchmarks/worldmodel_reaction.py reads them)
        path = out.with_name(out.name + "_trails.json")
        path.write_text(json.dumps({"rows": trails}))


if __name__ == "__main__":
    main()
