"""Beliefs: what a world model remembers of the latents and actions seen so far.

A belief is a flat tensor ``h`` ``[N, size]`` with two operations, ``initial(n)`` (nothing seen
yet) and ``update(h, z, prev_action) -> h'`` (one more latent ``z`` ``[N, d]`` and the action
``[N, A]`` that led to it). The predictor reads ``h``; planners and rollouts only carry it along,
so any belief works with every planner.

* ``gru`` (:class:`GRUBelief`): a learned recurrent summary (``GRUCell``) of the whole history.
* ``window`` (:class:`WindowBelief`): the last ``length`` latents and actions, stacked (frame
  stacking). Nothing is learned in the belief itself; the predictor sees the recent latents
  directly, so quantities that are differences of latents (a velocity, a gust's push) pass through
  an imagined rollout unattenuated: a sampled gust moves the next prediction's inputs by exactly the
  sampled jump. Slots not filled yet (episode start) are zeros with a 0 "seen" flag. It keeps the
  newest latent (:meth:`Belief.latest`), so the model can predict the change ``z_{t+1} − z_t``
  (``model.residual``).

Select with ``model.belief`` (a :data:`BELIEFS` name or ``{name, **options}``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..registry import ConfigError, Registry

BELIEFS: Registry = Registry("belief", "model.belief")


class Belief(nn.Module):
    """Base class. ``size``: width of the flat belief tensor."""

    size: int
    #: whether :meth:`latest` returns the newest latent (needed by ``model.residual``)
    keeps_latest: bool = False

    def initial(self, n: int, device: torch.device | None = None) -> Tensor:
        """The belief before any observation ``[n, size]`` (zeros)."""
        return torch.zeros(n, self.size, device=device)

    def update(self, h: Tensor, z: Tensor, prev_action: Tensor) -> Tensor:  # pragma: no cover - abstract
        """``[N, size]`` after latent ``z`` ``[N, d]`` reached by ``prev_action`` ``[N, A]``."""
        raise NotImplementedError

    def latest(self, h: Tensor) -> Tensor | None:
        """The newest latent ``[N, d]`` the belief holds, or None if it keeps no such copy."""
        return None


@BELIEFS.register("gru")
class GRUBelief(Belief):
    """``h_t = GRU([z_t, a_{t−1}], h_{t−1})`` with ``dim`` units (default: ``model.belief_dim``)."""

    def __init__(self, latent_dim: int, action_dim: int, dim: int = 128):
        super().__init__()
        if dim < 1:
            raise ConfigError(f"model.belief.dim = {dim}; must be >= 1")
        self.size = dim
        self.cell = nn.GRUCell(latent_dim + action_dim, dim)

    def update(self, h: Tensor, z: Tensor, prev_action: Tensor) -> Tensor:
        return self.cell(torch.cat([z, prev_action], -1), h)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before beliefs were modules hold the GRU cell's weights one level up
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            if prefix + name in state_dict:
                state_dict[prefix + "cell." + name] = state_dict.pop(prefix + name)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@BELIEFS.register("window")
class WindowBelief(Belief):
    """The last ``length`` steps ``[z_t, a_{t−1}, seen]`` stacked, newest last: ``size =
    length · (d + A + 1)``. ``seen`` is 1 for slots that hold an observation, 0 for the padding
    before the episode's first ``length`` observations."""

    keeps_latest = True

    def __init__(self, latent_dim: int, action_dim: int, length: int = 4):
        super().__init__()
        if length < 1:
            raise ConfigError(f"model.belief.length = {length}; must be >= 1")
        self.length, self.slot, self.latent_dim = length, latent_dim + action_dim + 1, latent_dim
        self.size = length * self.slot

    def update(self, h: Tensor, z: Tensor, prev_action: Tensor) -> Tensor:
        new = torch.cat([z, prev_action, z.new_ones(z.shape[0], 1)], -1)
        return torch.cat([h[:, self.slot :], new], -1)

    def latest(self, h: Tensor) -> Tensor:
        start = self.size - self.slot
        return h[:, start : start + self.latent_dim]


def build_belief(spec: str | dict, latent_dim: int, action_dim: int, default_dim: int) -> Belief:
    """The belief a ``model.belief`` spec names, for latents of size ``latent_dim`` and actions of
    size ``action_dim``; ``gru`` gets ``dim = default_dim`` (``model.belief_dim``) unless the spec
    sets it."""
    if isinstance(spec, str):
        spec = {"name": spec}
    if isinstance(spec, dict) and spec.get("name") == "gru" and "dim" not in spec:
        spec = {**spec, "dim": default_dim}
    return BELIEFS.build(spec, "model.belief", latent_dim=latent_dim, action_dim=action_dim)
