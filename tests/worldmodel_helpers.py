"""Shared pieces of the world-model tests: the windy point mass's spaces with unit statistics."""

from __future__ import annotations

WINDY_SPACES = {
    "obs_dim": 2,
    "action_dim": 2,
    "obs_mean": [0.0, 0.0],
    "obs_std": [1.0, 1.0],
    "action_low": [-1.0, -1.0],
    "action_high": [1.0, 1.0],
    "env": {"id": "varjepa/WindyPointMass-v0", "kwargs": {}, "action_noise": 0.0, "max_episode_steps": None},
}


def tiny_world_model(length: int = 2, hidden: int = 8, **kw):
    """A small residual world model on :data:`WINDY_SPACES` (window belief of ``length``, diagonal
    Gaussian, 4-d latents), for tests that need a real model but not a trained one."""
    from varjepa.worldmodel import LatentWorldModel

    args = {
        "latent_dim": 4,
        "hidden": hidden,
        "belief": {"name": "window", "length": length},
        "residual": True,
        "posterior": "diag_gaussian",
        "horizon": 1,
        "burn_in": 1,
        "ema": 0.0,
        "spaces": WINDY_SPACES,
    }
    return LatentWorldModel(**{**args, **kw})
