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

Any belief can also remember its **innovation** (``{name: window, length: 4, innovation: true}``,
:class:`InnovationBelief`): how the newest latent departed from what the predictor expected of it,
``z_t − E[z_t | h_{t−1}, a_{t−1}]``, and how surprising it was (``−log p(z_t | h_{t−1}, a_{t−1}) / d``).
This makes the belief recursive through the predictor, as a Kalman filter's innovation is: on
observed histories the innovation is the step the predictor did not foresee (a gust's push), and in
an imagined rollout it is the drawn sample's departure from the predicted mean (for a unimodal
family exactly the drawn noise ``σ·ε``; for a mixture the drawn component's offset from the mean
plus its noise), so the two are read alike.
Updating it needs the prediction, which :meth:`~varjepa.worldmodel.LatentWorldModel.update_belief`
supplies (``needs_prediction``).

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
    #: whether :meth:`update` reads the prediction of the new latent (``innovation``)
    needs_prediction: bool = False

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


class InnovationBelief(Belief):
    """A belief ``base`` extended by the newest innovation: ``[base (base.size), innovation (d),
    surprise (1), valid (1), started (1)]``. ``innovation = z_t − E[z_t | h_{t−1}, a_{t−1}]`` and
    ``surprise = −log p(z_t | h_{t−1}, a_{t−1}) / d`` (clamped to ``[−20, 20]``), computed by the
    model from the prediction of ``z_t``; ``valid`` is 0 (and the innovation zero) for an episode's
    first observation, which nothing predicted, and ``started`` marks that one has been seen."""

    needs_prediction = True

    def __init__(self, base: Belief, latent_dim: int):
        super().__init__()
        self.base, self.latent_dim = base, latent_dim
        self.keeps_latest = base.keeps_latest
        self.size = base.size + latent_dim + 3

    def initial(self, n: int, device: torch.device | None = None) -> Tensor:
        return torch.cat(
            [self.base.initial(n, device), torch.zeros(n, self.latent_dim + 3, device=device)], -1
        )

    def started(self, h: Tensor) -> Tensor:
        """``[N]`` bool: whether the belief has seen an observation (so that a prediction exists)."""
        return h[:, -1] > 0.5

    def update(self, h: Tensor, z: Tensor, prev_action: Tensor, innovation: Tensor | None = None) -> Tensor:
        """As :meth:`Belief.update`, with ``innovation`` ``[N, d + 1]`` (innovation and surprise of
        ``z``; ignored, like None, for rows that had seen nothing)."""
        base = self.base.update(h[:, : self.base.size], z, prev_action)
        valid = self.started(h).to(z.dtype)[:, None]
        feat = z.new_zeros(z.shape[0], self.latent_dim + 1) if innovation is None else innovation * valid
        return torch.cat([base, feat, valid, torch.ones_like(valid)], -1)

    def latest(self, h: Tensor) -> Tensor | None:
        return self.base.latest(h[:, : self.base.size])


def build_belief(spec: str | dict, latent_dim: int, action_dim: int, default_dim: int) -> Belief:
    """The belief a ``model.belief`` spec names, for latents of size ``latent_dim`` and actions of
    size ``action_dim``; ``gru`` gets ``dim = default_dim`` (``model.belief_dim``) unless the spec
    sets it, and ``innovation: true`` wraps it in an :class:`InnovationBelief`."""
    if isinstance(spec, str):
        spec = {"name": spec}
    innovation = False
    if isinstance(spec, dict):
        spec = dict(spec)
        innovation = spec.pop("innovation", False)
        if not isinstance(innovation, bool):
            raise ConfigError(f"model.belief.innovation = {innovation!r}; must be true or false")
        if spec.get("name") == "gru" and "dim" not in spec:
            spec["dim"] = default_dim
    belief = BELIEFS.build(spec, "model.belief", latent_dim=latent_dim, action_dim=action_dim)
    return InnovationBelief(belief, latent_dim) if innovation else belief
