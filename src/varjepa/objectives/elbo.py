"""The one shared ELBO: a weighted sum of named terms, each with its own schedule."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..registry import ConfigError
from .outputs import JEPAOutputs
from .terms import Term


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN/Inf; the message names the step and the term."""


@dataclass
class ELBOResult:
    """Loss and its parts for one batch.

    Attributes:
        loss: the weighted sum (scalar, differentiable).
        values: unweighted value of every defined term (scalars).
        weights: each term's weight at this step.
        methods: how each term was computed where that varies (e.g. KL analytic / monte_carlo).
    """

    loss: Tensor
    values: dict[str, Tensor]
    weights: dict[str, float]
    methods: dict[str, str]


class ELBO(nn.Module):
    """``loss = Σ_i w_i(step, total) · term_i(outputs)``.

    Terms whose weight is 0 at this step are evaluated without gradient, only for the logs (under
    DDP, terms that own parameters, e.g. a learned prior, are added with weight 0 instead, so that
    every parameter takes part in the loss).
    Terms that are undefined for the configured family (a Dirac KL) are skipped.

    Args:
        terms: the named terms; a preset is such a list.
    """

    def __init__(self, terms: list[Term]):
        super().__init__()
        if not terms:
            raise ConfigError("model.objective: an ELBO needs at least one term")
        names = [t.name for t in terms]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ConfigError(f"model.objective: term names must be unique, repeated: {sorted(dup)}")
        self.terms = nn.ModuleList(terms)

    def requires(self, field: str) -> bool:
        """Whether any term reads the optional output ``field`` (e.g. ``"target_dist"``)."""
        return any(field in t.requires for t in self.terms)

    def validate(self, family, target_family=None) -> None:
        """Check every term against the configured families (ConfigError on conflicts)."""
        for t in self.terms:
            t.validate(family, target_family)
        if family.needs_mean_term and not any(t.reads_mean for t in self.terms):
            raise ConfigError(
                f"model.posterior = {type(family).__name__} with a detached anchor needs a term that "
                "fits the predicted mean (e.g. objective: {name: heteroscedastic, mean_weight: 100}); "
                "with this objective the anchor gets no gradient. Add one or set detach_anchor: false"
            )

    def forward(self, out: JEPAOutputs, step: int, total: int) -> ELBOResult:
        values: dict[str, Tensor] = {}
        weights: dict[str, float] = {}
        methods: dict[str, str] = {}
        loss = out.target.new_zeros((), dtype=torch.float32)
        ddp = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        with torch.autocast(device_type=out.target.device.type, enabled=False):
            for t in self.terms:  # Monte Carlo terms share one draw per distribution
                if t.defined(out):
                    for source, n in t.sample_requests(out).items():
                        out.reserve(source, n)
            for t in self.terms:
                if not t.defined(out):
                    continue
                w = t.weight(step, total)
                if w == 0 and ddp and any(p.requires_grad for p in t.parameters()):
                    # under DDP every parameter must take part in the loss, also a learned prior at
                    # β = 0 (warm-up): add the term with weight 0 (zero gradients)
                    v = t(out)
                    loss = loss + 0.0 * torch.where(torch.isfinite(v), v, 0.0)
                elif w == 0:
                    with torch.no_grad():
                        v = t(out)
                else:
                    v = t(out)
                    loss = loss + w * v
                values[t.name], weights[t.name] = v, w
                if t.method is not None:
                    methods[t.name] = t.method
        return ELBOResult(loss, values, weights, methods)


def check_finite(result: ELBOResult, step: int) -> None:
    """Raise :class:`NonFiniteLossError` naming the step and every term that is NaN/Inf."""
    if torch.isfinite(result.loss):
        return
    bad = {k: float(v.detach()) for k, v in result.values.items() if not torch.isfinite(v)}
    where = ", ".join(f"'{k}' = {v}" for k, v in bad.items()) or "the weighted sum overflowed"
    raise NonFiniteLossError(
        f"non-finite loss at step {step}: {where} (weights {result.weights}). "
        "Lower the learning rate, raise min_std, or check the input batch."
    )
