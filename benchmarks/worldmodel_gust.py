"""Is a gust's momentum learnable from what the windy point mass lets an agent observe?

After a gust pushes the point mass south, the velocity it left carries the mass on by about
``damping`` × the jump on the next step (true next step ≈ −0.10 after a mean jump of −0.21). A
risk-aware planner needs its model to know this, or imagined gusts displace a rollout once
instead of about 2.5 times. This benchmark asks which *inputs* make that rule learnable: it fits
regressors of the next observed step ``o_{t+1} − o_t`` on the last 4 noisy observations and actions
(the training episodes of ``configs/worldmodel/windy_point.yaml``) and reports their mean
prediction after the test episodes' gusts.

* ``absolute``: the 4 observations as they are (what a window belief of latents resembles);
* ``relative``: the 3 older observations as differences from the newest one;
* ``relative, standardised``: the same features scaled to unit variance (fit on training rows).

With ``--ckpt`` it adds the world model's own answer, measured in its latent space: the
projection of the predicted mean step ``E[z_{t+1}] − z_t`` on the observed step ``z̄_{t+1} − z_t``
(1 = the whole step predicted, 0 = none of it), after gusts and on every other step; and how far
its *imagined* gusts carry on (:func:`carry_on` of decoded rollouts: the second step over the
first, ``damping`` = 0.6 in the environment). From a pass at y = 0.3 at full thrust east, it also
compares the model with the environment on: the 10-step quantiles of y, the hazard rate, a gust on
the pass's first step (:func:`pass_gust_response`: how far it carries the mass, and whether the
other paths stay level), and the step predicted right after an observed gust (:func:`momentum_read`).
For a checkpoint trained on another number of episodes, pass ``--episodes`` so that the test split
is the one it held out; ``--no-regressors`` skips the scikit-learn fits.

    python benchmarks/worldmodel_gust.py
    python benchmarks/worldmodel_gust.py --ckpt runs/windy_point/version_0/checkpoints/last.ckpt
    python benchmarks/worldmodel_gust.py --no-regressors --episodes 1600 \
        --ckpt runs/windy_point_gusts/version_0/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from sklearn.linear_model import RidgeCV
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from varjepa.worldmodel import TrajectoryDataModule
from varjepa.worldmodel.envs import WindyPointMass

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "worldmodel" / "windy_point.yaml"
LENGTH = 4  # observations in the window, as the default belief
HISTORY = 16  # observations before an imagined rollout (a training window)
PASS_HEIGHTS = (0.15, 0.3, 0.45)  # heights of the passes whose hazard rate is compared
JUMP = -0.1  # a gust: the southward velocity change exceeds this


def after_gust(vy: np.ndarray, t: int, damping: float) -> bool:
    """Whether a gust moved the mass between observations ``t − 1`` and ``t``, from the true
    y velocities ``vy`` ``[T]`` (the change beyond what damping explains)."""
    return bool(vy[t - 1] - damping * vy[t - 2] < JUMP)


def transitions(rollouts, episodes, damping: float, relative: bool):
    """Window features ``[N, 4·2 + 4·2]``, next observed steps ``[N, 2]`` and gust flags ``[N]``
    (a gust between the two newest observations) of every step with a full window."""
    xs, ys, gust = [], [], []
    for e in episodes:
        n = int(rollouts.length[e])
        obs, act = rollouts.obs[e, : n + 1, :2], rollouts.action[e, :n]
        vy = np.diff(rollouts.position[e, : n + 1, 1])
        for t in range(LENGTH, n - 1):
            window = obs[t - LENGTH + 1 : t + 1]
            if relative:
                window = np.concatenate([window[:-1] - window[-1], window[-1:]])
            xs.append(np.concatenate([window.ravel(), act[t - LENGTH + 1 : t + 1].ravel()]))
            ys.append(obs[t + 1] - obs[t])
            gust.append(after_gust(vy, t, damping))
    return np.array(xs), np.array(ys), np.array(gust)


def regressors(seed: int) -> dict:
    """The fitted models of the table, by name (features: ``absolute`` or ``relative``)."""
    mlp = dict(hidden_layer_sizes=(64, 64), max_iter=300, random_state=seed, early_stopping=True)
    return {
        "ridge, relative": ("relative", RidgeCV(alphas=np.logspace(-6, 1, 8))),
        "MLP, absolute": ("absolute", MLPRegressor(**mlp)),
        "MLP, relative": ("relative", MLPRegressor(**mlp)),
        "MLP, relative, standardised": ("relative", make_pipeline(StandardScaler(), MLPRegressor(**mlp))),
    }


@torch.no_grad()
def world_model_steps(m, dm, damping: float) -> dict:
    """Median projection of world model ``m``'s predicted mean latent step on the observed one,
    after gusts and on other steps (test episodes)."""
    r, after, other = dm.rollouts, [], []
    for e in dm.split_episodes["test"]:
        n = int(r.length[e])
        vy = np.diff(r.position[e, : n + 1, 1])
        obs = torch.from_numpy(r.obs[e, : n + 1])[None]
        act = m.normalize_action(torch.from_numpy(r.action[e, :n])[None])
        z, zbar = m.encode(obs)[0], m.encode(obs, target=True)[0]
        h = m.filter(z[None], act)[0]
        ts = list(range(LENGTH, n - 1))
        mean = m.family.mean(m.predict(h[ts], act[0, ts]))
        step, predicted = zbar[[t + 1 for t in ts]] - z[ts], mean - z[ts]
        proj = ((predicted * step).sum(-1) / step.square().sum(-1).clamp_min(1e-12)).numpy()
        for t, p in zip(ts, proj, strict=True):
            (after if after_gust(vy, t, damping) else other).append(p)
    return {
        "after_gust": float(np.median(after)),
        "other_steps": float(np.median(other)),
        "gusts": len(after),
    }


def carry_on(steps: np.ndarray, threshold: float = -0.12) -> dict:
    """Momentum in imagined rollouts. ``steps`` ``[N, K]``: decoded y-steps of N rollouts; the rollouts
    whose first step is a gust-like push (below ``threshold``) are selected, and their mean steps and
    the ratio of the second step to the first are returned (the environment's value is its damping:
    a gust's velocity carries the mass on by ``damping`` × the push, then ``damping²`` ×, ...)."""
    sel = steps[:, 0] < threshold
    if not sel.any():
        return {"gust_share": 0.0, "mean_steps": [], "ratio": float("nan")}
    mean = steps[sel].mean(0)
    return {"gust_share": float(sel.mean()), "mean_steps": mean.tolist(), "ratio": float(mean[1] / mean[0])}


def step_pairs(rollouts, episodes) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive observed y-steps ``(o_{t+1} − o_t, o_{t+2} − o_{t+1})`` ``[N]`` each, for every ``t``
    with a full window (the contexts :func:`context_steps` imagines from)."""
    first, second = [], []
    for e in episodes:
        n, y = int(rollouts.length[e]), rollouts.obs[e, :, 1]
        for t in range(LENGTH, n - 2):
            first.append(y[t + 1] - y[t])
            second.append(y[t + 2] - y[t + 1])
    return np.array(first), np.array(second)


@torch.no_grad()
def context_steps(m, dm, repeats: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """World model ``m``'s answer to :func:`step_pairs` in the same contexts: from the belief at every
    such ``t`` of the test episodes, ``repeats`` imagined first steps (sampled under the recorded
    ``a_t``) and the predicted mean second step after each (under the recorded ``a_{t+1}``), decoded
    y-steps ``[N · repeats]`` each. Unlike :func:`imagined_steps`, the contexts are the behaviour
    policy's own, where the model was trained."""
    r, hs, a0, a1, z0 = dm.rollouts, [], [], [], []
    for e in dm.split_episodes["test"]:
        n = int(r.length[e])
        obs = torch.from_numpy(r.obs[e, : n + 1])[None]
        act = m.normalize_action(torch.from_numpy(r.action[e, :n])[None])
        z = m.encode(obs)[0]
        h = m.filter(z[None], act)[0]
        ts = list(range(LENGTH, n - 2))
        hs.append(h[ts])
        a0.append(act[0, ts])
        a1.append(act[0, [t + 1 for t in ts]])
        z0.append(z[ts])
    h, a0, a1, z0 = (torch.cat(x).repeat(repeats, 1) for x in (hs, a0, a1, z0))
    torch.manual_seed(seed)
    p0 = m.predict_params(h, a0)
    z1 = m.family(p0).rsample()
    z2 = m.family.mean(m.predict(m.update_belief(h, z1, a0, p0), a1))
    y0, y1, y2 = (decoded_positions(m, z)[:, 1] for z in (z0, z1, z2))
    return y1 - y0, y2 - y1


def gust_response(first: np.ndarray, second: np.ndarray, threshold: float = -0.12) -> dict:
    """Share of gust-like first steps (below ``threshold``), their mean, the mean second step after
    them and the ratio of the two."""
    sel = first < threshold
    if not sel.any():
        return {"gust_share": 0.0, "first": float("nan"), "second": float("nan"), "ratio": float("nan")}
    f, s = float(first[sel].mean()), float(second[sel].mean())
    return {"gust_share": float(sel.mean()), "first": f, "second": s, "ratio": s / f}


def decoded_positions(m, z: torch.Tensor) -> np.ndarray:
    """Raw observations ``[..., O]`` that world model ``m``'s decoder gives for latents ``z`` ``[..., d]``."""
    return (m.decoder(z) * m.obs_std + m.obs_mean).numpy()


def pass_positions(y0: float) -> np.ndarray:
    """True positions ``[HISTORY, 2]`` of the mass passing the hazard at height ``y0`` at full speed
    east, the newest at x = −0.6."""
    env = WindyPointMass()
    vmax = env.accel / (1 - env.damping)
    return np.array([[-0.6 - vmax * (HISTORY - 1 - i), y0] for i in range(HISTORY)])


def pass_beliefs(m, n: int, y0: float, seed: int = 0) -> torch.Tensor:
    """Beliefs ``[n, belief]`` of model ``m`` after ``HISTORY`` noisy observations of the mass passing
    the hazard at height ``y0`` at full speed east (x = −0.6 at the newest one). The history is as
    long as a training window, so that longer window beliefs and recurrent ones are full; the newest
    ``LENGTH`` observations' noise is drawn first."""
    env, rng = WindyPointMass(), np.random.default_rng(seed)
    pos = pass_positions(y0)
    newest = rng.normal(0, env.obs_noise, (n, LENGTH, 2))
    noise = np.concatenate([rng.normal(0, env.obs_noise, (n, HISTORY - LENGTH, 2)), newest], 1)
    obs = torch.tensor(pos[None] + noise, dtype=torch.float32)
    east = m.normalize_action(torch.tensor([1.0, 0.0])).expand(n, HISTORY - 1, 2)
    return m.filter(m.encode(obs), east)[:, -1]


@torch.no_grad()
def imagined_steps(m, n: int = 20000, y0: float = 0.3, k: int = 4, seed: int = 0) -> np.ndarray:
    """Decoded y-steps ``[n, k]`` of ``n`` imagined rollouts (zero action) after a pass at height ``y0``
    (:func:`pass_beliefs`; the model's own sampling) of world model ``m`` (in eval mode)."""
    h = pass_beliefs(m, n, y0, seed)
    torch.manual_seed(seed)
    _, z = m.imagine(h, m.normalize_action(torch.zeros(2)).expand(n, k, 2))
    y = decoded_positions(m, z)[..., 1]
    return np.diff(np.concatenate([np.full((n, 1), y0), y], 1), axis=1)


def env_hazard_rate(y0: float, k: int = 10, n: int = 4000, seed: int = 0, **env_kwargs) -> float:
    """Share of ``n`` episodes of the real environment that enter the hazard within ``k`` steps of
    full thrust east, from position (−0.6, ``y0``) at the top speed east (the state
    :func:`pass_beliefs` describes). ``env_kwargs`` change the environment (tests)."""
    env = WindyPointMass(terminate_on_hazard=False, terminate_on_goal=False, **env_kwargs)
    vmax = env.accel / (1 - env.damping)
    east, hits = np.array([1.0, 0.0], np.float32), 0
    for i in range(n):
        env.reset(seed=seed + i)
        env.pos, env.vel = np.array([-0.6, y0]), np.array([vmax, 0.0])
        hit = False
        for _ in range(k):
            hit |= env.step(east)[4]["hazard"]
        hits += hit
    return hits / n


QUANTILES = (0.1, 0.5, 0.9)


def env_pass_paths(y0: float, k: int = 10, n: int = 4000, seed: int = 0, **env_kwargs) -> np.ndarray:
    """Observed y ``[n, k + 1]`` (column 0 is ``y0``) of ``k`` steps of full thrust east from the state
    :func:`pass_beliefs` describes, in the real environment (without termination); run ``i`` resets
    with seed ``seed + i``. ``env_kwargs`` change the environment (tests)."""
    env = WindyPointMass(terminate_on_hazard=False, terminate_on_goal=False, **env_kwargs)
    vmax = env.accel / (1 - env.damping)
    east, ys = np.array([1.0, 0.0], np.float32), np.full((n, k + 1), y0, dtype=float)
    for i in range(n):
        env.reset(seed=seed + i)
        env.pos, env.vel = np.array([-0.6, y0]), np.array([vmax, 0.0])
        for j in range(k):
            ys[i, j + 1] = env.step(east)[0][1]
    return ys


def env_pass_quantiles(y0: float, k: int = 10, n: int = 4000, seed: int = 0, **env_kwargs) -> list[float]:
    """Quantiles :data:`QUANTILES` and the mean of the *observed* y after ``k`` steps of
    :func:`env_pass_paths`."""
    ys = env_pass_paths(y0, k, n, seed, **env_kwargs)[:, -1]
    return [*np.quantile(ys, QUANTILES).tolist(), float(np.mean(ys))]


@torch.no_grad()
def model_pass_paths(m, y0: float, k: int = 10, n: int = 4000, seed: int = 0) -> np.ndarray:
    """World model ``m``'s answer to :func:`env_pass_paths`: decoded y ``[n, k + 1]`` (column 0 is
    ``y0``) of ``n`` imagined rollouts of ``k`` steps of full thrust east after a pass at ``y0``."""
    h = pass_beliefs(m, n, y0, seed)
    torch.manual_seed(seed)
    _, z = m.imagine(h, m.normalize_action(torch.tensor([1.0, 0.0])).expand(n, k, 2))
    return np.concatenate([np.full((n, 1), y0), decoded_positions(m, z)[..., 1]], 1)


def model_pass_quantiles(m, y0: float, k: int = 10, n: int = 4000, seed: int = 0) -> list[float]:
    """The quantiles and mean of :func:`model_pass_paths` after ``k`` steps (as
    :func:`env_pass_quantiles`)."""
    y = model_pass_paths(m, y0, k, n, seed)[:, -1]
    return [*np.quantile(y, QUANTILES).tolist(), float(np.mean(y))]


def pass_gust_response(paths: np.ndarray, threshold: float = -0.12) -> dict:
    """How far a gust that hits on a pass's first step carries the mass, from y paths ``[N, k + 1]``
    (:func:`env_pass_paths`, :func:`model_pass_paths`). The paths whose first step is below
    ``threshold`` are the gust-hit ones: their mean steps (:func:`carry_on`), the mean and median of
    their total ``k``-step change, and the median total of the other paths (which should not sink).
    Keys: ``gust_share``, ``mean_steps`` (``k`` means), ``ratio``, ``total_mean``, ``total_median``,
    ``calm_total_median``; NaN (and ``mean_steps`` empty) where no path is selected. Needs k ≥ 2."""
    steps = np.diff(paths, axis=1)
    out = carry_on(steps, threshold)
    sel = steps[:, 0] < threshold
    total = paths[:, -1] - paths[:, 0]
    nan = float("nan")
    out["total_mean"] = float(total[sel].mean()) if sel.any() else nan
    out["total_median"] = float(np.median(total[sel])) if sel.any() else nan
    out["calm_total_median"] = float(np.median(total[~sel])) if (~sel).any() else nan
    return out


def env_next_step(push: float, **env_kwargs) -> float:
    """The environment's expected next y-step right after a gust's velocity ``−push``: damping carries
    ``−damping · push`` on, and a new gust (probability ``gust_prob``, strength ``U(0.5, 1) ·
    gust_strength``, direction ``φ ~ N(0, gust_spread²)`` from south, so ``E[cos φ] =
    exp(−gust_spread² / 2)``) adds its expected push; the breeze has mean 0."""
    env = WindyPointMass(**env_kwargs)
    new_gust = env.gust_prob * 0.75 * env.gust_strength * np.exp(-(env.gust_spread**2) / 2)
    return float(-env.damping * push - new_gust)


@torch.no_grad()
def momentum_read(m, push: float, y0: float = 0.3, n: int = 4000, seed: int = 0) -> float:
    """World model ``m``'s mean predicted y-step (decoded ``E[z_{t+1}]`` minus decoded ``z_t``) right
    after observing a gust, over ``n`` noisy histories of :func:`pass_positions` (the noise drawn in
    order, unlike :func:`pass_beliefs`) whose newest true position is ``push``
    further south: a gust's velocity ``−push`` just moved the mass. The environment's answer is
    :func:`env_next_step`."""
    env, rng = WindyPointMass(), np.random.default_rng(seed)
    pos = pass_positions(y0)
    pos[-1, 1] -= push
    obs = torch.tensor(pos[None] + rng.normal(0, env.obs_noise, (n, HISTORY, 2)), dtype=torch.float32)
    east = m.normalize_action(torch.tensor([1.0, 0.0]))
    z = m.encode(obs)
    h = m.filter(z, east.expand(n, HISTORY - 1, 2))[:, -1]
    mean = m.family.mean(m.predict(h, east.expand(n, 2)))
    return float((decoded_positions(m, mean)[:, 1] - decoded_positions(m, z[:, -1])[:, 1]).mean())


@torch.no_grad()
def model_hazard_rate(m, y0: float, k: int = 10, n: int = 20000, seed: int = 0) -> dict:
    """The same question asked of a world model: ``n`` imagined rollouts of ``k`` steps of full thrust
    east after a pass at height ``y0``. Returns the share whose decoded position enters the hazard
    rectangle (``decoded``) and the mean over rollouts of the hazard head's largest probability
    (``head``, what the planner's cost reads)."""
    h = pass_beliefs(m, n, y0, seed)
    torch.manual_seed(seed)
    _, z = m.imagine(h, m.normalize_action(torch.tensor([1.0, 0.0])).expand(n, k, 2))
    xy = decoded_positions(m, z)
    return {
        "decoded": float(WindyPointMass().hazard.contains(xy).any(1).mean()),
        "head": float(torch.sigmoid(m.hazard_logits(z)).amax(1).mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default=None, help="also measure this world model checkpoint")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--episodes",
        type=int,
        default=None,
        help="episodes of the collection (default: the config's); give the checkpoint's data.episodes so "
        "that its test split is the one it held out",
    )
    ap.add_argument(
        "--no-regressors",
        action="store_true",
        help="skip the scikit-learn regressors (they do not depend on --ckpt; a few minutes)",
    )
    ap.add_argument("--out", default="benchmarks/results/worldmodel_gust")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data_args = yaml.safe_load(CONFIG.read_text())["data"]["init_args"]
    if args.episodes is not None:
        data_args["episodes"] = args.episodes
    dm = TrajectoryDataModule(**data_args)
    dm.setup("fit")
    damping = WindyPointMass().damping
    data = {
        kind: {
            split: transitions(dm.rollouts, dm.split_episodes[split], damping, kind == "relative")
            for split in ("train", "test")
        }
        for kind in ("absolute", "relative")
    }
    rows = []
    for name, (kind, model) in ({} if args.no_regressors else regressors(args.seed)).items():
        (xtr, ytr, _), (xte, yte, gte) = data[kind]["train"], data[kind]["test"]
        pred = model.fit(xtr, ytr).predict(xte)
        rows.append(
            {
                "model": name,
                "after_gust_pred_dy": float(pred[gte, 1].mean()),
                "after_gust_true_dy": float(yte[gte, 1].mean()),
                "rmse_all": float(np.sqrt(((pred - yte) ** 2).mean())),
                "rmse_after_gust": float(np.sqrt(((pred[gte] - yte[gte]) ** 2).mean())),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    n_train, n_gust = len(data["relative"]["train"][2]), int(data["relative"]["train"][2].sum())
    n_test = int(data["relative"]["test"][2].sum())
    lines = [
        f"# Post-gust momentum: learnable from which inputs?\n\n{n_train} training transitions "
        f"({n_gust} just after a gust), {n_test} gusts in the test episodes; window of {LENGTH} "
        f"observations and actions; {time.perf_counter() - t0:.0f} s.\n",
        "| model | next step after a gust: predicted | observed | rmse, all steps | rmse, after gusts |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['after_gust_pred_dy']:+.3f} | {r['after_gust_true_dy']:+.3f} | "
            f"{r['rmse_all']:.4f} | {r['rmse_after_gust']:.4f} |"
        )
    if not rows:
        lines.append("| (skipped: `--no-regressors`) | | | | |")
    meta = {"rows": rows, "train_transitions": n_train, "train_gusts": n_gust, "test_gusts": n_test}
    if args.ckpt:
        from varjepa.worldmodel.plan import load_world_model

        m = load_world_model(args.ckpt).eval()  # loaded once for every measurement below
        wm = world_model_steps(m, dm, damping)
        meta["world_model"] = {"ckpt": args.ckpt, **wm}
        lines.append(
            f"\nWorld model `{args.ckpt}`: projection of the predicted mean latent step on the observed "
            f"one, median after {wm['gusts']} gusts **{wm['after_gust']:.2f}**, on other steps "
            f"{wm['other_steps']:.2f} (1 = the whole step predicted)."
        )
        im = carry_on(imagined_steps(m))
        meta["world_model"]["imagined"] = im
        lines.append(
            f"\nIn its own rollouts (20,000 from a pass at y = 0.3, zero action, decoded), "
            f"{100 * im['gust_share']:.1f} % start with a gust-like push (first step < −0.12; the "
            f"environment: 3 %); their mean y-steps are "
            + " ".join(f"{v:+.3f}" for v in im["mean_steps"])
            + f": the second step is **{im['ratio']:.2f}** × the first (the environment: "
            f"{damping:.2f}, its damping)."
        )
        env_ctx = gust_response(*step_pairs(dm.rollouts, dm.split_episodes["test"]))
        model_ctx = gust_response(*context_steps(m, dm))
        meta["world_model"]["in_context"] = {"env": env_ctx, "model": model_ctx}
        lines.append(
            "\nIn the behaviour policy's own contexts (every step of the test episodes, 30 imagined "
            "first steps each under the recorded actions; decoded y-steps; the environment: the "
            "observed ones):\n\n| | gust-like first steps (< −0.12) | their mean | mean next step | "
            "ratio |\n|---|---:|---:|---:|---:|"
        )
        for name, r in (("environment", env_ctx), ("model", model_ctx)):
            lines.append(
                f"| {name} | {100 * r['gust_share']:.1f} % | {r['first']:+.3f} | {r['second']:+.3f} | "
                f"**{r['ratio']:.2f}** |"
            )
        tail = {y0: {"env": env_hazard_rate(y0), **model_hazard_rate(m, y0)} for y0 in PASS_HEIGHTS}
        meta["world_model"]["hazard_within_10"] = tail
        lines.append(
            "\nP(hazard within 10 steps of full thrust east, from x = −0.6 at top speed), environment "
            "against the model's rollouts (decoded position / hazard head):\n\n"
            "| pass height | environment | model, decoded | model, hazard head |\n|---:|---:|---:|---:|"
        )
        for y0, r in tail.items():
            lines.append(f"| {y0:.2f} | {r['env']:.3f} | {r['decoded']:.3f} | {r['head']:.3f} |")
        drift = {"env": env_pass_quantiles(0.3), "model": model_pass_quantiles(m, 0.3)}
        meta["world_model"]["pass_quantiles_10"] = drift
        lines.append(
            "\nObserved y after 10 steps of full thrust east from the pass at 0.30 (10 % / median / 90 % / mean): "
            f"environment {' / '.join(f'{v:+.3f}' for v in drift['env'])}, model (decoded) "
            f"{' / '.join(f'{v:+.3f}' for v in drift['model'])}."
        )
        pg = {
            "env": pass_gust_response(env_pass_paths(0.3, n=40000)),
            "model": pass_gust_response(model_pass_paths(m, 0.3, n=20000)),
        }
        meta["world_model"]["pass_gust_response"] = pg
        lines.append(
            "\nA gust on the pass's first step (first y-step < −0.12; environment 40,000 runs, model "
            "20,000 rollouts): its share, the mean y-steps 1–3 after it, the mean and median 10-step "
            "change of the gust-hit paths, and the median 10-step change of the others:\n\n"
            "| | share | step 1 | step 2 | step 3 | 10 steps: mean | median | others: median |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|"
        )
        for name, r in (("environment", pg["env"]), ("model", pg["model"])):
            s1, s2, s3 = (r["mean_steps"] + [float("nan")] * 3)[:3]
            lines.append(
                f"| {name} | {100 * r['gust_share']:.1f} % | {s1:+.3f} | {s2:+.3f} | {s3:+.3f} | "
                f"{r['total_mean']:+.3f} | {r['total_median']:+.3f} | {r['calm_total_median']:+.3f} |"
            )
        pushes = (0.15, 0.22, 0.3)
        reads = {p: {"env": env_next_step(p), "model": momentum_read(m, p)} for p in pushes}
        meta["world_model"]["momentum_read"] = {str(p): r for p, r in reads.items()}
        lines.append(
            "\nThe step predicted right after observing a gust on the pass (the newest position `push` "
            "further south; mean of the decoded predicted step; the environment: its expected next step, "
            "damping × the push plus the chance of a new gust):"
            "\n\n| push | " + " | ".join(f"{p:.2f}" for p in pushes) + " |\n|---|" + "---:|" * len(pushes)
        )
        for name in ("env", "model"):
            label = "environment" if name == "env" else "model"
            lines.append(f"| {label} | " + " | ".join(f"{reads[p][name]:+.3f}" for p in pushes) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = ROOT / args.out  # an absolute --out replaces ROOT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
