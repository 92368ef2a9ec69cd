"""What the model hands to the ELBO terms for one batch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution

from ..distributions import PosteriorFamily


@dataclass
class JEPAOutputs:
    """One forward pass, flattened over target tokens (T = M·Nt target patches per sample).

    Attributes:
        pred: predictor's distribution over target latents, batch ``[B, T]``, event ``[d]``.
        family: the posterior family that built ``pred``.
        target: observed target latents ``z̄`` ``[B, T, d]`` (layer-normed EMA features, no grad).
        target_dist: the target encoder's distribution ``q̄(z_t | x)`` (target-posterior ELBO).
        target_family: the family that built ``target_dist``.
        extras: anything else a custom term needs (images, context tokens, indices, ...).
        token_weights: optional weights ``[B, T]`` (mean 1) of the target tokens in the averages of
            the per-token terms of :mod:`~varjepa.objectives.terms` (:meth:`token_mean`); None is
            the plain mean. The coupled (tabular) terms do not read them. A world model sets them
            from the observed history, never from the target a token scores
            (``model.surprise_weight``).

    Monte Carlo terms share their reparameterised draws through :meth:`rsample`: the ELBO first
    :meth:`reserve` s what every term asks for, then one draw of the largest size serves them all
    (for a flow, one pass of its networks instead of one per term; ``log_prob`` of the shared draw
    reuses the transforms' cache).
    """

    pred: Distribution
    family: PosteriorFamily
    target: Tensor
    target_dist: Distribution | None = None
    target_family: PosteriorFamily | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    token_weights: Tensor | None = None
    _reserved: dict[str, int] = field(default_factory=dict, repr=False)
    _draws: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def _dist(self, source: str) -> Distribution:
        if source == "pred":
            return self.pred
        if source == "target" and self.target_dist is not None:
            return self.target_dist
        raise ValueError(f"no distribution '{source}' in these outputs (allowed: pred, target)")

    def token_mean(self, x: Tensor) -> Tensor:
        """Mean of per-token values ``x`` ``[..., B, T]`` (leading sample dimensions allowed) under
        :attr:`token_weights`, which are assumed to average 1 (the plain mean without)."""
        if self.token_weights is None:
            return x.mean()
        return (self.token_weights.to(x.dtype) * x).mean()

    def reserve(self, source: str, num_samples: int) -> None:
        """Announce that a term will ask for ``num_samples`` draws of ``source`` ("pred"/"target")."""
        self._reserved[source] = max(self._reserved.get(source, 0), num_samples)

    def rsample(self, source: str, num_samples: int) -> Tensor:
        """Reparameterised draws ``[S, B, T, d]`` of ``source``, shared by every term of the step.

        ``S = max(num_samples, reserved)`` on the first call; later calls get the same tensor
        (so ``S >= num_samples``: each term averages over all shared draws, which keeps it
        unbiased). The draw is made with gradients on, whatever mode the caller is in.
        """
        z = self._draws.get(source)
        if z is None or z.shape[0] < num_samples:
            n = max(num_samples, self._reserved.get(source, 0))
            with torch.enable_grad():
                z = self._dist(source).rsample((n,))
            self._draws[source] = z
        return z
