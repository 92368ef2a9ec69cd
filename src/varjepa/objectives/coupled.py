"""The coupled ELBO of Gögl & Yau (2026), DESIGN §2c: preset ``coupled``.

Latents ``s_x`` (context), ``z`` (auxiliary), ``s_y`` (target); posteriors ``q(s_x|x)``,
``q(z|s_x)``, ``q(s_y|s_x,z,y)`` from any posterior family; priors ``p(s_x) = p(z) = N(0, I)``
(or any registered prior); the predictor is the learned conditional prior ``p_θ(s_y|s_x,z)``;
decoders ``p(x|s_x)`` and ``p(y|s_y)``. No EMA and no stop-gradient by default::

    loss = α_rec·rec + α_gen·gen + α_sx·kl_sx + α_z·kl_z + α_sy·kl_sy
    rec   = −E_q log p(x | s_x)                    (per context token)
    gen   = −E_q log p(y | s_y)                    (per target token)
    kl_sx = KL(q(s_x | x) ‖ p(s_x))                (per context token, summed over d_s)
    kl_z  = E_q KL(q(z | s_x) ‖ p(z))              (per row)
    kl_sy = E_q KL(q(s_y | s_x, z, y) ‖ p_θ(s_y | s_x, z))   (per target token)

Expectations use one reparameterised sample of every latent (drawn by the model); KLs are
analytic where torch/Pyro registers the pair, else Monte Carlo (``kl_samples`` draws). Each α
follows its own schedule; by default each rises linearly from 0 over ``anneal`` (a fraction of
the run, or a number of steps) to the paper's final value. Every term is logged under its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torch.distributions import Distribution

from ..distributions import ANALYTIC, MONTE_CARLO, PosteriorFamily
from ..distributions.kl import _torch_kl
from ..registry import ConfigError
from ..schedules import LinearWarmup, Schedule, build_schedule
from .outputs import JEPAOutputs
from .presets import OBJECTIVES
from .terms import Term

#: the paper's final weights (Var-T-JEPA)
PAPER_ALPHAS = {"rec": 0.1, "gen": 1.0, "sx": 1e-4, "z": 1e-6, "sy": 1e-5}


@dataclass
class CoupledOutputs(JEPAOutputs):
    """One forward pass of the coupled model.

    The :class:`JEPAOutputs` fields hold the target side: ``pred`` = ``p_θ(s_y|s_x,z)`` (the
    predictor, family ``family``), ``target_dist`` = ``q(s_y|s_x,z,y)`` (family ``target_family``),
    ``target`` = its sample ``s_y`` ``[B', Tt, d_s]``. Further fields:

    Attributes:
        q_sx / family_sx / s_x: context posterior, batch ``[B, Tc]``, and its sample ``[B, Tc, d_s]``.
        q_z / family_z / z: auxiliary posterior, batch ``[B]``, and its sample ``[B, d_z]``.
        x_latent / x_obs: what the context decoder scores (latents and observations).
        y_latent / y_obs: what the target decoder scores.
    """

    q_sx: Distribution | None = None
    family_sx: PosteriorFamily | None = None
    s_x: Tensor | None = None
    q_z: Distribution | None = None
    family_z: PosteriorFamily | None = None
    z: Tensor | None = None
    x_latent: Tensor | None = None
    x_obs: dict[str, Tensor] | None = None
    y_latent: Tensor | None = None
    y_obs: dict[str, Tensor] | None = None


def _coupled(out: JEPAOutputs, term: str) -> CoupledOutputs:
    if not isinstance(out, CoupledOutputs):
        raise ConfigError(
            f"ELBO term '{term}' belongs to the 'coupled' objective, which needs the coupled model "
            "(model.class_path: varjepa.VarTJEPA); the image VarJEPA cannot provide it"
        )
    return out


def kl_between(q: Distribution, p: Distribution, num_samples: int = 4) -> tuple[Tensor, str]:
    """``KL(q ‖ p)`` ``[*batch]`` where ``p`` may have its own batch shape (a conditional prior).

    Analytic when the pair is registered; otherwise ``mean_k[log q(z_k) − log p(z_k)]`` with
    ``num_samples`` reparameterised draws ``z_k ~ q`` (mixtures use their stratified estimator).
    """
    try:
        return _torch_kl(q, p), ANALYTIC
    except NotImplementedError:
        pass
    if num_samples < 1:
        raise ValueError(f"num_samples = {num_samples}; must be >= 1")
    stratified = getattr(q, "stratified_kl", None)
    if stratified is not None:
        return stratified(p, num_samples), MONTE_CARLO
    z = q.rsample((num_samples,))
    return (q.log_prob(z) - p.log_prob(z)).mean(0), MONTE_CARLO


class LatentKL(Term):
    """One KL term of the coupled ELBO: ``source`` = ``"sx"`` (``KL(q(s_x|x) ‖ prior)``), ``"z"``
    (``KL(q(z|s_x) ‖ prior)``) or ``"sy"`` (``KL(q(s_y|s_x,z,y) ‖ p_θ(s_y|s_x,z))``, prior unused).
    Averaged over tokens and rows; summed over latent dimensions."""

    def __init__(
        self,
        name: str,
        weight: Schedule | None,
        source: str,
        prior: nn.Module | None = None,
        num_samples: int = 4,
    ):
        super().__init__(name, weight)
        if source not in ("sx", "z", "sy"):
            raise ConfigError(f"coupled KL source = '{source}'; allowed: sx, z, sy")
        if source != "sy" and prior is None:
            raise ConfigError(f"coupled KL '{name}' needs a prior")
        if num_samples < 1:
            raise ConfigError(f"model.objective.kl_samples = {num_samples}; must be >= 1")
        self.source, self.prior, self.num_samples = source, prior, num_samples

    def validate_families(self, families: dict[str, PosteriorFamily]) -> None:
        """ConfigError if a KL with non-zero weight involves a Dirac (no density)."""
        if self.weight.is_zero():
            return
        names = ["sy", "predictor"] if self.source == "sy" else [self.source]
        for n in names:
            if not families[n].stochastic:
                raise ConfigError(
                    f"model.posteriors.{n} = 'dirac': the term '{self.name}' (weight {self.weight}) is a KL, "
                    "undefined for a point mass. Use a stochastic family or set its weight to 0."
                )

    def forward(self, out: JEPAOutputs) -> Tensor:
        o = _coupled(out, self.name)
        if self.source == "sy":
            kl, self.method = kl_between(o.target_dist, o.pred, self.num_samples)
        else:
            q = o.q_sx if self.source == "sx" else o.q_z
            kl, self.method = kl_between(q, self.prior(), self.num_samples)
        return kl.mean()


class DecoderNLL(Term):
    """``−E_q log p(obs | latent)`` of the context (``side="context"``: ``p(x|s_x)``) or target
    (``side="target"``: ``p(y|s_y)``) decoder, averaged over tokens and rows. The term owns its
    decoder (``decoder.nll(latent, obs) -> [B, T]``)."""

    def __init__(self, name: str, weight: Schedule | None, decoder: nn.Module, side: str):
        super().__init__(name, weight)
        if side not in ("context", "target"):
            raise ConfigError(f"decoder side = '{side}'; allowed: context, target")
        self.decoder, self.side = decoder, side

    def forward(self, out: JEPAOutputs) -> Tensor:
        o = _coupled(out, self.name)
        if self.side == "context":
            return self.decoder.nll(o.x_latent, o.x_obs).mean()
        return self.decoder.nll(o.y_latent, o.y_obs).mean()


def alpha_schedule(spec: Any, final: float, anneal: float, option: str) -> Schedule:
    """A weight schedule: ``None`` → linear annealing 0 → ``final`` over ``anneal``; a number →
    linear annealing 0 → that number; a schedule spec (``{name: ..., ...}``) → that schedule."""
    if spec is None:
        spec = final
    if isinstance(spec, bool):
        raise ConfigError(f"{option}: expected a number or a schedule, got {spec!r}")
    if isinstance(spec, int | float):
        if spec < 0:
            raise ConfigError(f"{option} = {spec}; weights must be >= 0")
        return LinearWarmup(value=float(spec), warmup=anneal)
    return build_schedule(spec, option)


@OBJECTIVES.register("coupled")
def coupled(
    prior: nn.Module,
    likelihood: nn.Module | None = None,
    beta: Schedule | None = None,
    context_decoder: nn.Module | None = None,
    target_decoder: nn.Module | None = None,
    prior_z: nn.Module | None = None,
    alpha_rec: Any = None,
    alpha_gen: Any = None,
    alpha_sx: Any = None,
    alpha_z: Any = None,
    alpha_sy: Any = None,
    anneal: float = 0.3,
    kl_samples: int = 4,
) -> list[Term]:
    """The coupled ELBO's five terms ``rec``, ``gen``, ``kl_sx``, ``kl_z``, ``kl_sy``.

    Args:
        prior / prior_z: ``p(s_x)`` and ``p(z)`` (``prior_z`` defaults to ``prior``; their sizes
            must match the latents).
        likelihood, beta: unused (the image presets' arguments).
        context_decoder / target_decoder: ``p(x|s_x)``, ``p(y|s_y)``, set by :class:`VarTJEPA`.
        alpha_*: the five weights: a number (linear annealing from 0 to it over ``anneal``) or a
            schedule spec; default the paper's 0.1, 1, 1e-4, 1e-6, 1e-5.
        anneal: length of the default annealing (fraction of the run if < 1, else steps).
        kl_samples: draws of Monte Carlo KLs (families without a closed form).
    """
    if context_decoder is None or target_decoder is None:
        raise ConfigError(
            "model.objective = 'coupled' needs the coupled model with its decoders: use "
            "model.class_path: varjepa.VarTJEPA (the image VarJEPA has no p(x|s_x), p(y|s_y))"
        )
    if anneal < 0:
        raise ConfigError(f"model.objective.anneal = {anneal}; must be >= 0")
    a = {
        k: alpha_schedule(v, PAPER_ALPHAS[k], anneal, f"model.objective.alpha_{k}")
        for k, v in (
            ("rec", alpha_rec),
            ("gen", alpha_gen),
            ("sx", alpha_sx),
            ("z", alpha_z),
            ("sy", alpha_sy),
        )
    }
    return [
        DecoderNLL("rec", a["rec"], context_decoder, "context"),
        DecoderNLL("gen", a["gen"], target_decoder, "target"),
        LatentKL("kl_sx", a["sx"], "sx", prior, kl_samples),
        LatentKL("kl_z", a["z"], "z", prior_z if prior_z is not None else prior, kl_samples),
        LatentKL("kl_sy", a["sy"], "sy", None, kl_samples),
    ]


def has_coupled_terms(terms: list[Term]) -> bool:
    """Whether ``terms`` are the coupled model's (at least one coupled term)."""
    return any(isinstance(t, LatentKL | DecoderNLL) for t in terms)


__all__ = [
    "PAPER_ALPHAS",
    "CoupledOutputs",
    "DecoderNLL",
    "LatentKL",
    "alpha_schedule",
    "coupled",
    "has_coupled_terms",
    "kl_between",
]
