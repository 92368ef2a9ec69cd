"""ELBO terms a latent world model adds to any objective preset.

They read :class:`~varjepa.objectives.JEPAOutputs` ``extras`` filled by
:class:`~varjepa.worldmodel.LatentWorldModel` and are weighted, logged and checked like every
other term (``train/hazard``, ``train/rec``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..objectives import JEPAOutputs
from ..objectives.terms import Term


class HazardBCE(Term):
    """Binary cross-entropy of the hazard head on the target latents: ``extras["hazard_logits"]``
    ``[B, W]`` against ``extras["hazard"]`` ``[B, W]`` in {0, 1}. Trains the hazard head that the
    planner's cost reads; the head sees detached latents, so this term does not shape the encoder.

    It is trained on observed latents only, so that it says whether a *state* is hazardous: applied
    to one imagined rollout it gives that possible future's (near-binary) outcome, and the spread
    of outcomes over rollouts is what a risk measure such as CVaR reads. (Trained on imagined
    latents it would return the marginal hazard probability for every rollout alike and wash out
    the tail.)"""

    def __init__(self, name: str = "hazard", weight=None):
        super().__init__(name, weight)

    def forward(self, out: JEPAOutputs) -> Tensor:
        x = out.extras
        return F.binary_cross_entropy_with_logits(x["hazard_logits"].float(), x["hazard"].float())


class ObservationNLL(Term):
    """``−log p(o | z)`` of a Gaussian observation decoder with a learned per-dimension σ, on the
    standardised observations: ``extras["recon_mean"]`` ``[B, W, O]``, ``extras["recon_log_std"]``
    ``[O]``, ``extras["obs"]`` ``[B, W, O]``; summed over O, averaged over B and W. A decoder from the
    online latents keeps the encoder from collapsing (DESIGN §2, "What actually prevents
    collapse"), as the reconstruction term of the coupled ELBO does."""

    def __init__(self, name: str = "rec", weight=None):
        super().__init__(name, weight)

    def forward(self, out: JEPAOutputs) -> Tensor:
        x = out.extras
        mean, log_std, obs = x["recon_mean"].float(), x["recon_log_std"].float(), x["obs"].float()
        nll = 0.5 * ((obs - mean) / log_std.exp()).square() + log_std + 0.5 * math.log(2 * math.pi)
        return nll.sum(-1).mean()


def horizon_index(num_starts: int, horizon: int, device=None) -> Tensor:
    """``[S·k]`` horizon (1..k) of every flattened prediction, for per-horizon logs."""
    return torch.arange(1, horizon + 1, device=device).repeat(num_starts)
