"""``TrajectoryDataModule``: windows of cached behaviour-policy rollouts for world-model training.

A batch is ``{"obs": [B, W, O], "action": [B, W−1, A], "hazard": [B, W], "index": [B]}``: ``W``
consecutive observations and the ``W−1`` actions between them (``obs[:, t+1]`` follows
``action[:, t]``). Episodes, not windows, are split into train/val/test (seeded), so no test
window shares an episode with a training window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, default_collate

from ..data.base import IndexedDataset, JEPADataModule
from ..registry import ConfigError
from .envs import env_spec, make_env
from .rollouts import Rollouts, load_or_collect


class WindowDataset(Dataset):
    """All windows of ``window`` observations inside the valid part of the given episodes.

    Items are ``({"obs": [W, O], "action": [W−1, A], "hazard": [W]}, episode)``.
    """

    def __init__(self, rollouts: Rollouts, episodes: Sequence[int], window: int):
        self.obs = torch.from_numpy(rollouts.obs)
        self.action = torch.from_numpy(rollouts.action)
        self.hazard = torch.from_numpy(rollouts.hazard.astype(np.float32))
        self.window = window
        starts = [(e, s) for e in episodes for s in range(int(rollouts.length[e]) + 2 - window)]
        self.index = torch.tensor(starts, dtype=torch.long).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        e, s = (int(v) for v in self.index[i])
        w = self.window
        item = {
            "obs": self.obs[e, s : s + w],
            "action": self.action[e, s : s + w - 1],
            "hazard": self.hazard[e, s : s + w],
        }
        return item, e


def collate_windows(samples: Sequence[tuple]) -> dict[str, torch.Tensor]:
    """``[(window dict, episode, index[, key]), ...]`` → the batch dict (see module docstring)."""
    items, episode, index = default_collate([s[:3] for s in samples])
    return {**items, "episode": episode, "index": index}


#: default episode-seed offset of each ``extra_data`` collection (away from evaluation seeds)
EXTRA_SEED_STRIDE = 1_000_000


class TrajectoryDataModule(JEPADataModule):
    """Windows of rollouts of a behaviour policy in a gymnasium environment (collected locally,
    cached by content hash; see :mod:`varjepa.worldmodel.rollouts`).

    Args:
        env: environment id or ``{id, kwargs, action_noise, max_episode_steps}``, e.g.
            ``varjepa/WindyPointMass-v0`` or ``{id: Pendulum-v1, action_noise: 0.2}``.
        policy: behaviour policy (``random``, ``waypoint`` or ``{name, **options}``).
        episodes / steps: how many episodes of at most how many steps to collect.
        window: observations per training window (at least the model's burn-in + horizon).
        collect_overrides: environment kwargs for collection only (e.g. no termination, so that
            episodes have the full length); planning uses the environment as configured.
        val_fraction / test_fraction: shares of the episodes held out.
        seed: seed of the collection and of the episode split.
        cache_dir: rollout cache folder (default ``$VARJEPA_CACHE`` or ``~/.cache/varjepa``).
        extra_data: more collections, for training only: a list of ``{policy, episodes, seed, steps,
            collect_overrides}`` (``policy`` and ``episodes`` required; the others default to this
            module's ``seed + 1_000_000·(i + 1)``, ``steps`` and ``collect_overrides``; the episode
            seeds are far from those ``plan:`` evaluates on, so a refit never trains on the wind it
            is tested in). Each is cached like the main one; their episodes join the training
            split, so validation and test episodes (and the coverage measured on them) stay those
            of the main collection. With
            ``policy: {name: planner, ckpt_path: ...}`` this is how a model is refitted on the
            paths its planner flies (:mod:`~varjepa.worldmodel.planner_policy`).
    """

    def __init__(
        self,
        env: str | dict[str, Any] = "varjepa/WindyPointMass-v0",
        policy: str | dict[str, Any] = "random",
        episodes: int = 400,
        steps: int = 60,
        window: int = 16,
        collect_overrides: dict[str, Any] | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
        cache_dir: str | None = None,
        extra_data: list[dict[str, Any]] | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
    ):
        super().__init__(batch_size, num_workers, "test", 0)
        self.env = env_spec(env)
        if window < 2:
            raise ConfigError(f"data.window = {window}; must be >= 2 (an observation and its successor)")
        if window > steps + 1:
            raise ConfigError(f"data.window = {window} exceeds data.steps + 1 = {steps + 1}")
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ConfigError(
                f"data.val_fraction = {val_fraction}, data.test_fraction = {test_fraction}: "
                "each in [0, 1) and their sum below 1"
            )
        self.policy, self.episodes, self.steps, self.window = policy, episodes, steps, window
        self.collect_overrides = dict(collect_overrides or {})
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.seed, self.cache_dir = seed, cache_dir
        self.extra_data = [self._extra(i, x) for i, x in enumerate(extra_data or [])]
        self.save_hyperparameters()
        self.rollouts: Rollouts | None = None
        self.cache_path: Path | None = None
        self.split_episodes: dict[str, np.ndarray] = {}
        self.masking = None

    def _extra(self, i: int, spec: Any) -> dict[str, Any]:
        """``data.extra_data[i]`` with its defaults filled in (ConfigError on a malformed entry)."""
        allowed = {"policy", "episodes", "seed", "steps", "collect_overrides"}
        where = f"data.extra_data[{i}]"
        if not isinstance(spec, dict) or not {"policy", "episodes"} <= set(spec):
            raise ConfigError(f"{where} = {spec!r}: give a mapping with at least 'policy' and 'episodes'")
        unknown = set(spec) - allowed
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        try:
            out = {
                "policy": spec["policy"],
                "episodes": int(spec["episodes"]),
                "seed": int(spec.get("seed", self.seed + EXTRA_SEED_STRIDE * (i + 1))),
                "steps": int(spec.get("steps", self.steps)),
                "collect_overrides": dict(spec.get("collect_overrides", self.collect_overrides) or {}),
            }
        except (TypeError, ValueError) as e:
            raise ConfigError(
                f"{where}: episodes, seed and steps must be integers and collect_overrides a mapping ({e})"
            ) from None
        if out["episodes"] < 1 or out["steps"] < 1:
            raise ConfigError(
                f"{where}: episodes = {out['episodes']}, steps = {out['steps']}; both must be >= 1"
            )
        return out

    # ------------------------------------------------------------------ data
    def verify(self) -> None:
        """Collect (or load) the rollouts now: the CLI calls this before anything is written."""
        self.setup("fit")

    def setup(self, stage: str | None = None) -> None:
        if self.rollouts is not None:
            return
        roll, path, cached = load_or_collect(
            self.env,
            self.policy,
            self.episodes,
            self.steps,
            self.seed,
            self.collect_overrides,
            self.cache_dir,
        )
        rank_zero_info(
            f"TrajectoryDataModule: {roll.num_episodes} episodes x <= {self.steps} steps of '{self.env['id']}' "
            f"{'loaded from' if cached else 'collected and cached in'} {path}"
        )
        main = roll.num_episodes
        parts = [roll]
        for i, x in enumerate(self.extra_data):
            extra, xpath, xcached = load_or_collect(
                self.env,
                x["policy"],
                x["episodes"],
                x["steps"],
                x["seed"],
                x["collect_overrides"],
                self.cache_dir,
            )
            rank_zero_info(
                f"TrajectoryDataModule: extra_data[{i}]: {extra.num_episodes} training episodes "
                f"{'loaded from' if xcached else 'collected and cached in'} {xpath}"
            )
            parts.append(extra)
        if len(parts) > 1:
            roll = Rollouts.concat(parts)
        self.rollouts, self.cache_path = roll, path
        order = np.random.default_rng([self.seed, 0x73706C]).permutation(main)
        n_val = int(round(self.val_fraction * len(order)))
        n_test = int(round(self.test_fraction * len(order)))
        self.split_episodes = {
            "val": np.sort(order[:n_val]),
            "test": np.sort(order[n_val : n_val + n_test]),
            "train": np.concatenate([np.sort(order[n_val + n_test :]), np.arange(main, roll.num_episodes)]),
        }
        sets = {k: WindowDataset(roll, v.tolist(), self.window) for k, v in self.split_episodes.items()}
        if len(sets["train"]) == 0:
            raise ConfigError(
                f"data: no training window of {self.window} observations (episodes too short or too few)"
            )
        self.train_set = IndexedDataset(sets["train"])
        self.val_set = IndexedDataset(sets["val"])
        self.test_set = IndexedDataset(sets["test"])

    def spaces(self) -> dict[str, Any]:
        """What a world model must know of the data (plain types, saved in its checkpoint): sizes,
        observation mean/std over the training episodes, action bounds and the environment spec."""
        self.setup("fit")
        roll, eps = self.rollouts, self.split_episodes["train"]
        valid = np.concatenate([roll.obs[e, : roll.length[e] + 1] for e in eps])
        env = make_env(self.env)
        spec = {
            "obs_dim": int(roll.obs.shape[-1]),
            "action_dim": int(roll.action.shape[-1]),
            "obs_mean": valid.mean(0).astype(float).tolist(),
            "obs_std": np.maximum(valid.std(0), 1e-6).astype(float).tolist(),
            "action_low": env.action_space.low.astype(float).tolist(),
            "action_high": env.action_space.high.astype(float).tolist(),
            "env": self.env,
        }
        env.close()
        return spec

    # --------------------------------------------------------------- loaders
    def set_masking(self, masking, grid) -> None:
        """The image model's hook: trajectories need :class:`~varjepa.LatentWorldModel` (ConfigError)."""
        raise ConfigError(
            f"{type(self).__name__} holds trajectories: use model.class_path: varjepa.LatentWorldModel"
        )

    def _collate(self, train: bool) -> Callable:
        return collate_windows

    def predict_dataloader(self) -> DataLoader:
        return self.plain_dataloader("test")

    def plain_dataloader(self, split: str) -> DataLoader:
        """Unshuffled batches of ``split``."""
        ds = {"train": self.train_set, "val": self.val_set, "test": self.test_set}[split]
        return self._loader(ds, False, collate_windows)


def windows_of(rollouts: Rollouts, episodes: Sequence[int], window: int) -> dict[str, torch.Tensor]:
    """Every window of the given episodes as one batch dict (for evaluation)."""
    ds = WindowDataset(rollouts, episodes, window)
    return collate_windows([(*ds[i], i) for i in range(len(ds))])
