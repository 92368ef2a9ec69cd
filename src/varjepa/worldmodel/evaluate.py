"""Calibration of k-step latent predictions.

The k-step predictive distribution of a world model is known only through samples (each rollout
feeds its own samples back). Coverage of a central interval is therefore measured by ranks: with
``n`` samples and the observed latent ``y``, the rank ``r = #{samples < y}`` is uniform on
``{0, …, n}`` when the prediction is calibrated, and ``y`` lies inside the central interval of
level ``p`` between the order statistics ``X_(lo)`` and ``X_(hi+1)`` iff ``lo ≤ r ≤ hi`` with
``lo = ⌈n(1−p)/2⌉``, ``hi = ⌊n(1+p)/2⌋``. Its expected coverage under calibration is
``(hi − lo + 1)/(n + 1)``; ``n = 199`` makes that exactly 0.5 and 0.9, unlike interpolated sample
quantiles, which under-cover by several points at small ``n``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric


def rank_interval(n: int, level: float) -> tuple[int, int]:
    """``(lo, hi)`` rank bounds of the central interval of ``level`` for ``n`` samples."""
    return math.ceil(n * (1 - level) / 2 - 1e-9), math.floor(n * (1 + level) / 2 + 1e-9)


def expected_rank_coverage(n: int, level: float) -> float:
    """Coverage a calibrated predictor reaches with :class:`RankCoverage` and ``n`` samples."""
    lo, hi = rank_interval(n, level)
    return (hi - lo + 1) / (n + 1)


class RankCoverage(Metric):
    """Fraction of targets inside the central sample interval of each level (see module docstring).

    ``update(samples [n, ...], target [...])``; ``compute()`` → ``[L]`` in the order of ``levels``.
    States are sums, so the metric syncs under DDP.
    """

    full_state_update = False

    def __init__(self, levels: Sequence[float] = (0.5, 0.9), **kwargs):
        super().__init__(**kwargs)
        if not all(0 < p < 1 for p in levels):
            raise ValueError(f"RankCoverage levels must lie in (0, 1), got {list(levels)}")
        self.levels = [float(p) for p in levels]
        self.add_state("hits", torch.zeros(len(self.levels), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, samples: Tensor, target: Tensor) -> None:
        if samples.shape[1:] != target.shape:
            raise ValueError(f"samples {tuple(samples.shape)} do not fit targets {tuple(target.shape)}")
        n = samples.shape[0]
        rank = (samples.float() < target.float()).sum(0)
        hits = []
        for p in self.levels:
            lo, hi = rank_interval(n, p)
            hits.append(((rank >= lo) & (rank <= hi)).double().sum())
        self.hits += torch.stack(hits)
        self.count += target.numel()

    def compute(self) -> Tensor:
        return (self.hits / self.count.clamp_min(1)).float()


@torch.no_grad()
def rollout_samples(
    model, batch: dict[str, Tensor], t0: int, k: int, n: int, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """``n`` open-loop rollouts of ``k`` steps from the belief after observation ``t0`` of each window,
    under the window's own actions.

    Returns ``(samples [n, B, k, d], targets [B, k, d])``: sampled latents ``z_{t0+1..t0+k}`` and the
    target encoder's latents of the observed ones. Seeded; the global RNG is left untouched.
    """
    obs, act = batch["obs"], model.normalize_action(batch["action"])
    B = obs.shape[0]
    if t0 + k >= obs.shape[1]:
        raise ValueError(f"windows of {obs.shape[1]} observations cannot hold t0 = {t0} plus {k} steps")
    z = model.encode(obs[:, : t0 + 1])
    h = model.filter(z, act[:, :t0])[:, -1]
    target = model.encode(obs[:, t0 + 1 : t0 + 1 + k], target=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _, zs = model.imagine(h.repeat(n, 1), act[:, t0 : t0 + k].repeat(n, 1, 1), keep_params=False)
    return zs.reshape(n, B, k, -1), target


@torch.no_grad()
def k_step_calibration(
    model,
    batch: dict[str, Tensor],
    horizons: Sequence[int] = (1, 5, 10),
    n: int = 199,
    t0: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Coverage@50/@90 (rank-based), mean predictive std and RMSE of the sample mean at each horizon,
    from the belief after observation ``t0`` (default: the model's ``calibration_history`` − 1) of
    every window of ``batch``:
    ``{"coverage90_k1": ..., "coverage50_k1": ..., "std_k1": ..., "rmse_k1": ..., ...}``."""
    t0 = model.hparams.calibration_history - 1 if t0 is None else t0
    samples, target = rollout_samples(model, batch, t0, max(horizons), n, seed)
    out = {}
    for k in horizons:
        s, y = samples[:, :, k - 1], target[:, k - 1]
        cov = RankCoverage((0.5, 0.9)).to(s.device)
        cov.update(s, y)
        c = cov.compute()
        out[f"coverage50_k{k}"], out[f"coverage90_k{k}"] = float(c[0]), float(c[1])
        out[f"std_k{k}"] = float(s.std(0).mean())
        out[f"rmse_k{k}"] = float((s.mean(0) - y).square().mean().sqrt())
    return out


def calibration_on_test_episodes(
    model,
    data: dict,
    horizons: Sequence[int] = (1, 5, 10),
    n: int = 199,
    max_episodes: int | None = None,
) -> dict[str, float]:
    """:func:`k_step_calibration` of ``model`` (``n`` samples) on every window of the test episodes
    of the :class:`~varjepa.worldmodel.TrajectoryDataModule` that ``data`` (its init_args, e.g. a
    config's ``data.init_args``) describes, or of the first ``max_episodes`` of them (large
    collections); the rollouts load from the cache when they are there."""
    from .data import TrajectoryDataModule, windows_of

    if max_episodes is not None and max_episodes < 1:
        raise ValueError(f"max_episodes = {max_episodes}; must be >= 1 (or None: every test episode)")
    dm = TrajectoryDataModule(**data)
    dm.setup("fit")
    episodes = dm.split_episodes["test"].tolist()[:max_episodes]
    batch = windows_of(dm.rollouts, episodes, dm.window)
    return k_step_calibration(model, batch, horizons=horizons, n=n)
