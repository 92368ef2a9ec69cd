"""The simulation study of Gögl & Yau (2026, DESIGN §2c): paired views with known latent classes.

Generative process (all draws from one seeded ``numpy`` generator, so the data are a function of
``seed`` alone):

* class ``c ~ Bernoulli(1/2)``; context latent ``s_x | c ~ N((c − ½)·shift·1, I_{d_s})`` — a
  two-component mixture whose means differ by ``shift`` (= 2) in every coordinate;
* auxiliary latent ``z ~ N(0, I_{d_z})``;
* target latent ``s_y | s_x, z ~ N(s_x + A z, σ_y² I)`` with ``A`` ``[d_s, d_z]`` drawn once,
  entries ``N(0, 1/d_z)``, and ``σ_y = 0.5``;
* observations ``x = g_x(s_x) + σ ε``, ``y = g_y(s_y) + σ ε`` with ``σ = 0.3`` and ``g_x``, ``g_y``
  random two-layer tanh MLPs ``g(s) = W₂ tanh(W₁ s + b₁) + b₂`` (drawn once, ``W₁ ~ N(0, 1/d_s)``,
  ``W₂ ~ N(0, 1/h)``), mapping to ``D_obs = 32`` dimensions each.

Rows are served as ``values = [x, y]`` ``[2·D_obs]`` with the class ``c`` as label; the model
splits them by the schema's ``x_dim``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..registry import ConfigError
from .data import FeatureDataModule


@dataclass
class SimulationSpec:
    """Sizes and noise levels of the simulation (the paper's values by default)."""

    obs_dim: int = 32
    latent_dim: int = 16
    aux_dim: int = 8
    hidden: int = 64
    mean_shift: float = 2.0
    sy_noise: float = 0.5
    obs_noise: float = 0.3


def _random_mlp(rng: np.random.Generator, d_in: int, hidden: int, d_out: int):
    w1 = rng.normal(0, 1 / np.sqrt(d_in), (d_in, hidden))
    b1 = rng.normal(0, 0.1, hidden)
    w2 = rng.normal(0, 1 / np.sqrt(hidden), (hidden, d_out))
    b2 = rng.normal(0, 0.1, d_out)
    return lambda s: np.tanh(s @ w1 + b1) @ w2 + b2


def simulate(n: int, spec: SimulationSpec = SimulationSpec(), seed: int = 0, maps_seed: int | None = None):
    """Draw ``n`` rows of the simulation.

    The maps ``A``, ``g_x``, ``g_y`` are drawn from ``maps_seed`` (default ``seed``), the rows from
    ``seed`` and the row count, so splits drawn with different ``seed`` share the same maps.

    Returns:
        dict with ``x`` ``[n, D]``, ``y`` ``[n, D]``, ``s_x`` ``[n, d_s]``, ``z`` ``[n, d_z]``,
        ``s_y`` ``[n, d_s]`` (float32) and ``label`` ``[n]`` (int64, the mixture component).
    """
    maps = np.random.default_rng([maps_seed if maps_seed is not None else seed, 1])
    A = maps.normal(0, 1 / np.sqrt(spec.aux_dim), (spec.latent_dim, spec.aux_dim))
    g_x = _random_mlp(maps, spec.latent_dim, spec.hidden, spec.obs_dim)
    g_y = _random_mlp(maps, spec.latent_dim, spec.hidden, spec.obs_dim)
    rng = np.random.default_rng([seed, 2])
    c = rng.integers(0, 2, n)
    s_x = (c[:, None] - 0.5) * spec.mean_shift + rng.normal(size=(n, spec.latent_dim))
    z = rng.normal(size=(n, spec.aux_dim))
    s_y = s_x + z @ A.T + spec.sy_noise * rng.normal(size=(n, spec.latent_dim))
    x = g_x(s_x) + spec.obs_noise * rng.normal(size=(n, spec.obs_dim))
    y = g_y(s_y) + spec.obs_noise * rng.normal(size=(n, spec.obs_dim))
    f = np.float32
    return {
        "x": x.astype(f),
        "y": y.astype(f),
        "s_x": s_x.astype(f),
        "z": z.astype(f),
        "s_y": s_y.astype(f),
        "label": c.astype(np.int64),
    }


class SimulationDataModule(FeatureDataModule):
    """The paper's simulation study as a datamodule: rows ``[x, y]`` with the latent class as label.

    Args:
        num_train / num_val / num_test: rows per split (independent draws, shared maps).
        obs_dim, latent_dim, aux_dim, hidden, mean_shift, sy_noise, obs_noise: see
            :class:`SimulationSpec` (D_obs, d_s, d_z, width of the random maps, ...).
        seed: seed of the maps and the rows.
        batch_size, num_workers, predict_split: loader options.
    """

    def __init__(
        self,
        num_train: int = 8000,
        num_val: int = 1000,
        num_test: int = 2000,
        obs_dim: int = 32,
        latent_dim: int = 16,
        aux_dim: int = 8,
        hidden: int = 64,
        mean_shift: float = 2.0,
        sy_noise: float = 0.5,
        obs_noise: float = 0.3,
        seed: int = 0,
        batch_size: int = 512,
        num_workers: int = 0,
        predict_split: str = "test",
    ):
        super().__init__(batch_size, num_workers, predict_split)
        for name, v in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            if v < 1:
                raise ConfigError(f"data.{name} = {v}; must be >= 1")
        self.spec = SimulationSpec(obs_dim, latent_dim, aux_dim, hidden, mean_shift, sy_noise, obs_noise)
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.seed = seed
        self.schema = {"kind": "paired", "x_dim": obs_dim, "y_dim": obs_dim, "num_classes": 2}
        self.num_classes = 2

    def prepare_splits(self) -> None:
        self.latents = {}
        for i, (split, n) in enumerate(self.sizes.items()):
            d = simulate(n, self.spec, seed=self.seed * 3 + i + 1, maps_seed=self.seed)
            self.arrays[split] = (np.concatenate([d["x"], d["y"]], 1), d["label"])
            self.latents[split] = d
