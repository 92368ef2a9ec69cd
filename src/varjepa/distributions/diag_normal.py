"""Diagonal Gaussian ``Independent(Normal(loc, scale), 1)`` with a cheaper ``log_prob``.

Monte Carlo terms score ``S`` draws per token under the prior (KL) and the likelihood (expected
log-likelihood). torch's ``Normal.log_prob`` materialises a broadcast ``scale`` (a likelihood's
fixed σ becomes a tensor the size of the draws), squares it and takes its log elementwise, and
runs about eight elementwise passes forward. :class:`DiagNormal` evaluates the same density as
``−½ Σ_d ((x − μ)/σ)² − Σ_d log σ − (d/2) log 2π`` with ``log σ`` summed on ``scale``'s own shape.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor
from torch.distributions import Independent, Normal

LOG_2PI = math.log(2 * math.pi)


class DiagNormal(Independent):
    """``Independent(Normal(loc, scale), 1)`` (same attributes, same KL registrations) whose
    ``log_prob`` takes fewer passes; ``scale`` may be a number or a tensor broadcasting against
    ``loc`` (e.g. one σ per dimension)."""

    def __init__(self, loc: Tensor, scale: Tensor | float):
        super().__init__(Normal(loc, scale, validate_args=False), 1, validate_args=False)
        self._loc, self._scale = loc, scale

    def log_prob(self, value: Tensor) -> Tensor:
        d = self.event_shape[0]
        scale = self._scale
        if isinstance(scale, Real):
            log_norm = d * math.log(scale)
        elif scale.dim() == 0 or scale.shape[-1] == 1:  # one σ for every dimension
            log_norm = d * scale.log().squeeze(-1) if scale.dim() else d * scale.log()
        else:
            log_norm = scale.log().sum(-1)
        u = (value - self._loc) / scale
        return -0.5 * u.square().sum(-1) - log_norm - 0.5 * d * LOG_2PI

    def expand(self, batch_shape, _instance=None):
        return Independent(self.base_dist.expand(torch.Size(batch_shape) + self.event_shape), 1)
