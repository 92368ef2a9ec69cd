"""``LatentWorldModel``: an action-conditioned Var-JEPA over trajectories.

Data path (one way): window of observations and actions → online observation encoder (latents
``z_t``, layer-normed) → belief ``h_t`` over ``z_≤t, a_<t`` (GRU or a window of the last latents,
:mod:`~varjepa.worldmodel.beliefs`) → predictor
``p(z_{t+1} | h_t, a_t)`` (any posterior family) → k-step open-loop rollouts by sampling, each
sample fed back into the belief → ELBO terms against the EMA target encoder's latents
``z̄_{t+j}`` of the observed future → logs.

The objective is any preset of :data:`~varjepa.objectives.OBJECTIVES` (default
``heteroscedastic``: the predictor's density scores the observed future latent, so its spread is
the predicted error and k-step intervals are calibrated; ``predictive`` gives every input the same
spread, see README) plus two world-model terms: ``rec`` (observation decoder on the online latents,
against collapse) and ``hazard`` (a hazard classifier on the target latents, read by the planner's
cost), and optional ``regularizers`` (SIGReg, VICReg on the online latents).
"""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.distributions import Distribution

from ..callbacks.ema import EMA
from ..checkpointing import resave_final_checkpoints
from ..distributions import LIKELIHOODS, POSTERIORS, PRIORS, PosteriorFamily
from ..distributions.posteriors import bounded_std
from ..eval.collapse import effective_rank
from ..objectives import ELBO, JEPAOutputs, build_terms, check_finite
from ..optim import adamw_warmup_cosine
from ..registry import ConfigError, spec_name
from ..schedules import build_schedule
from .beliefs import build_belief
from .evaluate import RankCoverage, rollout_samples
from .sampling import sample_from_noise
from .terms import HazardBCE, ObservationNLL

Spec = str | dict[str, Any]
DEFAULT_OBJECTIVE = {"name": "heteroscedastic", "beta_nll": 1.0}
DEFAULT_EMA = {"name": "linear", "start": 0.99, "end": 0.999}


def mlp(sizes: list[int], act: type[nn.Module] = nn.SiLU) -> nn.Sequential:
    """Linear layers of the given sizes with ``act`` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


class LatentWorldModel(L.LightningModule):
    """Action-conditioned variational JEPA world model.

    Args:
        latent_dim: size d of the observation latents.
        hidden: width of the encoder, decoder, predictor and hazard MLPs.
        belief_dim: size of the recurrent belief ``h_t`` (``gru`` belief).
        belief: how the history is summarised: ``gru`` (learned recurrent state of ``belief_dim``
            units) or ``{name: window, length: n}`` (the last n latents and actions, stacked); see
            :mod:`~varjepa.worldmodel.beliefs`.
        residual: the predictor outputs the change from the newest latent: ``p(z_{t+1} | h_t, a_t)``
            is the head's distribution moved by ``z_t`` (every location, see
            :meth:`~varjepa.distributions.PosteriorFamily.shift`). Needs a belief that keeps
            ``z_t`` (``window``). Persistence (``z_{t+1} ≈ z_t``) is then the zero output, and a jump
            in ``z_t`` moves the whole prediction with it.
        input_norm: standardise the predictor's input (belief and action) with a non-affine
            BatchNorm: batch statistics in training, running statistics at evaluation and while
            planning. The latents' LayerNorm fixes each vector's scale, not each feature's spread
            over the data: an MLP on the default model's latent windows predicts 0.58 of a gust's
            momentum with standardised inputs and 0.24 without (README, world models).
        detach_belief: the predictor's loss does not reach the encoder through the belief, so the
            encoder learns from the reconstruction term only (needs ``reconstruction_weight > 0``)
            and cannot make jumps it finds hard to predict less visible.
        surprise_weight / surprise_quantile: weight ``1 + surprise_weight`` (then normalised to mean
            1) for the training predictions made right after a surprising observation: one whose
            NLL under the previous step's prediction is above the ``surprise_quantile`` of the
            batch's one-step NLLs.
            The weight reads the observed history, never the target it scores, so the optimum
            moves little, but the rare transitions after a surprise (the steps after a gust) get
            the effort. It is not exactly input-only: the threshold and the normalisation are batch
            statistics, and the surprise at ``t`` reads the belief at ``t − 1``, one observation
            older than the predictor's window. Predictions from a short history (``burn_in: 1``)
            are surprising too and share the up-weighting. 0 (default) is off. On the windy point
            mass, 3 fits the real hazard tail (README, world models). Needs a stochastic family.
        encoder_depth: hidden layers of the observation encoder.
        posterior: family of ``p(z_{t+1} | h_t, a_t)`` (registry name, ``{name, **opts}``).
        prior / likelihood / objective / beta: as for :class:`~varjepa.VarJEPA`.
        regularizers: optional anti-collapse terms on the online latents (``sigreg``, ``vicreg``).
        horizon: k, steps of the open-loop training rollouts. ``horizon: 1`` trains one step ahead
            on observed histories only (teacher forcing); multi-step predictions are then made by
            feeding samples back, as in PETS.
        burn_in: observations the belief filters before the first rollout starts. A planner queries
            the predictor from an episode's first observation on, so keep 1 (the default) for models
            that plan: with ``burn_in: n`` the predictor never sees a belief of fewer than n
            observations, and its predictions at an episode's start are extrapolations (a warning
            says so). With ``burn_in: 4`` and a window of 4, the windy point mass's anchored model
            imagined the mass rising 2.6 in 3 steps from its first observation (README, world models).
        reconstruction_weight: weight of the ``rec`` term (0 drops the decoder).
        hazard_weight: weight of the ``hazard`` term (0 drops the hazard head, e.g. Pendulum).
        hazard_refit_steps: at the end of fit, refit the hazard head for this many Adam steps on the
            final target latents of every training observation (default 0: keep the head trained
            with the model). The refit head is sharper (P(hazard) ≈ 0 a step's drift outside the
            hazard); on the windy point mass it plans far less safely than the jointly trained
            one, whose blur near the boundary acts as a margin (README, "The hazard head"). The
            checkpoints saved at the final step (``last.ckpt`` and the top-k file) are re-saved
            with the refit head.
        ema: EMA momentum schedule of the target encoder.
        calibration_horizons / calibration_samples / calibration_history: k-step coverage logged at
            validation (``val/coverage90_k{k}``), from ``calibration_samples`` rollouts per window
            that start after ``calibration_history`` observations (independent of ``burn_in``, so
            that coverage numbers stay comparable).
        lr / weight_decay / betas / warmup / final_lr_ratio: AdamW, warm-up and cosine decay.
        spaces: sizes, observation statistics, action bounds and environment of the data (set by
            :class:`~varjepa.worldmodel.TrajectoryDataModule` in ``setup``; kept in checkpoints).
    """

    def __init__(
        self,
        latent_dim: int = 16,
        hidden: int = 128,
        belief_dim: int = 128,
        belief: Spec = "gru",
        residual: bool = False,
        input_norm: bool = False,
        detach_belief: bool = False,
        surprise_weight: float = 0.0,
        surprise_quantile: float = 0.95,
        encoder_depth: int = 2,
        posterior: Spec = "diag_gaussian",
        prior: Spec = "standard_normal",
        likelihood: Spec = "gaussian",
        objective: Spec = DEFAULT_OBJECTIVE,
        beta: float | Spec = 0.0,
        regularizers: list[Spec] | None = None,
        horizon: int = 5,
        burn_in: int = 1,
        reconstruction_weight: float = 1.0,
        hazard_weight: float = 1.0,
        hazard_refit_steps: int = 0,
        ema: float | Spec | None = DEFAULT_EMA,
        calibration_horizons: tuple[int, ...] = (1, 5, 10),
        calibration_samples: int = 199,
        calibration_history: int = 4,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup: float = 0.05,
        final_lr_ratio: float = 0.05,
        spaces: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        for name, v in (("latent_dim", latent_dim), ("hidden", hidden), ("belief_dim", belief_dim)):
            if v < 1:
                raise ConfigError(f"model.{name} = {v}; must be >= 1")
        if horizon < 1 or burn_in < 1:
            raise ConfigError(f"model.horizon = {horizon}, model.burn_in = {burn_in}; both must be >= 1")
        if lr <= 0:
            raise ConfigError(f"model.lr = {lr}; must be > 0")
        if hazard_refit_steps < 0:
            raise ConfigError(f"model.hazard_refit_steps = {hazard_refit_steps}; must be >= 0")
        if reconstruction_weight < 0 or hazard_weight < 0:
            raise ConfigError("model.reconstruction_weight and model.hazard_weight must be >= 0")
        if surprise_weight < 0 or not 0 < surprise_quantile < 1:
            raise ConfigError(
                f"model.surprise_weight = {surprise_weight} must be >= 0 and model.surprise_quantile = "
                f"{surprise_quantile} in (0, 1)"
            )
        if detach_belief and reconstruction_weight == 0:
            raise ConfigError(
                "model.detach_belief = true with model.reconstruction_weight = 0 leaves the encoder "
                "without any gradient; set reconstruction_weight > 0 or detach_belief: false"
            )
        if any(k < 1 for k in calibration_horizons) or calibration_samples < 2 or calibration_history < 1:
            raise ConfigError(
                "model.calibration_horizons and model.calibration_history must be >= 1 and "
                "model.calibration_samples >= 2"
            )
        keeps_latest = build_belief(belief, latent_dim, 1, belief_dim).keeps_latest  # bad specs fail here
        if residual and not keeps_latest:
            raise ConfigError(
                f"model.residual = true needs a belief that keeps the newest latent (window), "
                f"got model.belief = {spec_name(belief)!r}"
            )
        self.family: PosteriorFamily = POSTERIORS.build(posterior, "model.posterior", dim=latent_dim)
        prior_mod = PRIORS.build(prior, "model.prior", dim=latent_dim)
        lik_mod = LIKELIHOODS.build(likelihood, "model.likelihood", dim=latent_dim)
        self.beta = build_schedule(beta, "model.beta")
        terms = build_terms(objective, prior_mod, lik_mod, self.beta, regularizers)
        if any(t.requires for t in terms):
            raise ConfigError(
                f"model.objective = {spec_name(objective)!r} needs a target posterior; a world model "
                "supports predictive, heteroscedastic, jepa and their regularised variants"
            )
        if reconstruction_weight > 0:
            terms.append(ObservationNLL("rec", weight=build_schedule(reconstruction_weight, "model")))
        if hazard_weight > 0:
            terms.append(HazardBCE("hazard", weight=build_schedule(hazard_weight, "model")))
        self.elbo = ELBO(terms)
        self.elbo.validate(self.family, None)
        if surprise_weight > 0 and not self.family.stochastic:
            raise ConfigError(
                f"model.surprise_weight = {surprise_weight} reads the predictor's density, which "
                f"model.posterior = {spec_name(posterior)!r} does not have; use a stochastic family"
            )
        self.ema_spec = ema
        if ema is not None:
            EMA(ema)
        self.calibration = nn.ModuleDict(
            {f"k{k}": RankCoverage((0.5, 0.9)) for k in sorted(set(calibration_horizons))}
        )
        self.encoder: nn.Module | None = None
        self._total_steps: int | None = None
        self._reported = False
        if spaces is not None:
            self.build(spaces)

    # ----------------------------------------------------------------- set-up
    def build(self, spaces: dict[str, Any]) -> None:
        """Create the networks for the data's ``spaces`` (sizes, statistics, bounds; idempotent)."""
        if self.encoder is not None:
            return
        hp = self.hparams
        try:
            n_obs, n_act = int(spaces["obs_dim"]), int(spaces["action_dim"])
            stats = {k: torch.tensor(spaces[k], dtype=torch.float32) for k in ("obs_mean", "obs_std")}
            low, high = (torch.tensor(spaces[k], dtype=torch.float32) for k in ("action_low", "action_high"))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"model.spaces is incomplete or malformed ({e})") from e
        if stats["obs_mean"].shape != (n_obs,) or low.shape != (n_act,) or not torch.all(high > low):
            raise ConfigError(
                f"model.spaces: shapes or action bounds do not fit obs_dim={n_obs}, action_dim={n_act}"
            )
        d, H = hp.latent_dim, hp.hidden
        self.obs_dim, self.action_dim = n_obs, n_act
        self.register_buffer("obs_mean", stats["obs_mean"])
        self.register_buffer("obs_std", stats["obs_std"].clamp_min(1e-6))
        self.register_buffer("action_mid", (high + low) / 2)
        self.register_buffer("action_half", (high - low) / 2)
        self.encoder = mlp([n_obs] + [H] * hp.encoder_depth + [d])
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.belief = build_belief(hp.belief, d, n_act, hp.belief_dim)
        n_in = self.belief.size + n_act
        self.head_norm = nn.BatchNorm1d(n_in, affine=False, momentum=0.01) if hp.input_norm else nn.Identity()
        # a family whose location is fitted by least squares alone (anchored_mixture) gets its own
        # network for it (the first d parameters), so that the density's gradient does not shape
        # the location's features
        anchored = self.family.needs_mean_term
        self.head = mlp([n_in, H, H, self.family.num_params - (d if anchored else 0)])
        self.anchor_head = mlp([n_in, H, H, d]) if anchored else None
        for head in (self.head, self.anchor_head):
            if head is not None:
                nn.init.zeros_(head[-1].weight)
                nn.init.zeros_(head[-1].bias)
        self.decoder = mlp([d, H, n_obs]) if hp.reconstruction_weight > 0 else None
        self.decoder_log_std = nn.Parameter(torch.zeros(n_obs)) if self.decoder is not None else None
        self.hazard_head = mlp([d, H, 1]) if hp.hazard_weight > 0 else None
        self.hparams["spaces"] = dict(spaces)

    def configure_callbacks(self):
        """The EMA teacher update is part of the method: the model brings its callback."""
        return [EMA(self.ema_spec)] if self.ema_spec is not None else []

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """``(online, target)`` encoder pair for the EMA callback."""
        return [(self.encoder, self.target_encoder)]

    def check_data(self, dm: Any) -> None:
        """ConfigError unless ``dm`` serves trajectories long enough for burn-in + horizon; builds the
        networks from its spaces (before anything is written)."""
        if not hasattr(dm, "spaces"):
            raise ConfigError(
                f"LatentWorldModel reads trajectories: use varjepa.TrajectoryDataModule, not {type(dm).__name__}"
            )
        hp = self.hparams
        need = hp.burn_in + hp.horizon
        if dm.window < need:
            raise ConfigError(
                f"data.window = {dm.window} but model.burn_in + model.horizon = {need}; make the window longer"
            )
        spaces = dm.spaces()
        if self.encoder is not None:
            mine = self.hparams.spaces
            for k in ("obs_dim", "action_dim"):
                if mine[k] != spaces[k]:
                    raise ConfigError(f"the data's {k} = {spaces[k]} differs from this model's {mine[k]}")
            return
        self.build(spaces)

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None:
            self.check_data(dm)
        elif self.encoder is None:
            raise ConfigError(
                "LatentWorldModel: no spaces; train with varjepa.TrajectoryDataModule or pass spaces="
            )

    @property
    def total_steps(self) -> int:
        """Total optimizer steps of the run (for schedules)."""
        if self._total_steps is None:
            self._total_steps = max(int(self.trainer.estimated_stepping_batches), 1)
        return self._total_steps

    def on_fit_start(self) -> None:
        self._total_steps = None
        hp = self.hparams
        if hp.burn_in > 1:
            rank_zero_warn(
                f"model.burn_in = {hp.burn_in}: the predictor is never trained on a belief of fewer than "
                f"{hp.burn_in} observations, but planners query it from an episode's first observation "
                "on; set model.burn_in: 1 if this model will plan"
            )
        rank_zero_info(
            f"LatentWorldModel: env={hp.spaces['env']['id']}, posterior={spec_name(hp.posterior)}, "
            f"objective={spec_name(hp.objective)}, latent dim={hp.latent_dim}, horizon={hp.horizon}, "
            f"total steps={self.total_steps}"
        )

    def configure_optimizers(self):
        hp = self.hparams
        return adamw_warmup_cosine(
            self.named_parameters(),
            hp.lr,
            hp.weight_decay,
            hp.betas,
            self.total_steps,
            hp.warmup,
            hp.final_lr_ratio,
        )

    # ------------------------------------------------------------ components
    def normalize_obs(self, obs: Tensor) -> Tensor:
        """Raw observations ``[..., O]`` → standardised (training statistics)."""
        return (obs.float() - self.obs_mean) / self.obs_std

    def normalize_action(self, action: Tensor) -> Tensor:
        """Environment actions ``[..., A]`` → ``[-1, 1]`` units."""
        return (action.float() - self.action_mid) / self.action_half

    def denormalize_action(self, action: Tensor) -> Tensor:
        """``[-1, 1]`` units ``[..., A]`` → environment actions."""
        return action * self.action_half + self.action_mid

    def encode(self, obs: Tensor, target: bool = False) -> Tensor:
        """Latents ``[..., d]`` (layer-normed) of raw observations ``[..., O]``; ``target=True`` uses the
        EMA target encoder (no gradient)."""
        x = self.normalize_obs(obs)
        if target:
            with torch.no_grad():
                h = self.target_encoder(x)
        else:
            h = self.encoder(x)
        return F.layer_norm(h, (h.shape[-1],))

    def initial_belief(self, n: int) -> Tensor:
        """The belief before any observation ``[n, belief.size]``."""
        return self.belief.initial(n, self.obs_mean.device)

    def update_belief(
        self, h: Tensor, z: Tensor, prev_action: Tensor, params: Tensor | None = None
    ) -> Tensor:
        """``h_t`` from ``h_{t−1}`` ``[N, belief.size]``, the latent ``z_t`` ``[N, d]`` and ``prev_action``
        ``a_{t−1}`` ``[N, A]`` in ``[-1, 1]`` units (zeros before the first action).

        A belief that remembers its innovation (``needs_prediction``) reads the prediction of ``z_t``
        from ``h_{t−1}``: ``params`` ``[N, P]`` if the caller has it (an imagined rollout), else it is
        computed here. The innovation carries no gradient."""
        if not self.belief.needs_prediction:
            return self.belief.update(h, z, prev_action)
        return self.belief.update(h, z, prev_action, self.innovation(h, z, prev_action, params))

    @torch.no_grad()
    def innovation(self, h: Tensor, z: Tensor, prev_action: Tensor, params: Tensor | None = None) -> Tensor:
        """``[N, d + 1]``: ``z − E[z | h, a]`` and the surprise ``−log p(z | h, a) / d`` (clamped to
        ``[−20, 20]``; 0 for a family without a density) of latents ``z`` ``[N, d]`` under the
        prediction from beliefs ``h`` ``[N, belief]`` and actions ``prev_action`` ``[N, A]``
        (``params`` if given). In training, the prediction standardises its input with the running
        statistics, as while planning, so that a time step's batch does not set them."""
        if params is None:
            params = self.predict_params(h, prev_action, running_norm=True)
        if self.family.stochastic:
            mean, log_prob = self.family.mean_and_log_prob(params.float(), z)
            innov = z.float() - mean
            surprise = (-log_prob / z.shape[-1]).clamp(-20.0, 20.0)
        else:
            innov = z.float() - self.family.mean(self.family(params.float()))
            surprise = innov.new_zeros(innov.shape[0])
        return torch.cat([innov, surprise[:, None]], -1).to(z.dtype)

    def filter(self, z: Tensor, actions: Tensor) -> Tensor:
        """Beliefs ``[B, W, belief]`` after each of the latents ``z`` ``[B, W, d]``, given the normalised
        actions between them ``[B, W−1, A]``."""
        B, W, _ = z.shape
        h = self.initial_belief(B)
        prev = torch.cat([actions.new_zeros(B, 1, self.action_dim), actions], 1)
        out = []
        for t in range(W):
            h = self.update_belief(h, z[:, t], prev[:, t])
            out.append(h)
        return torch.stack(out, 1)

    def predict_params(self, h: Tensor, action: Tensor, running_norm: bool = False) -> Tensor:
        """The family's parameters ``[N, P]`` of ``p(z_{t+1} | h_t, a_t)`` for beliefs ``[N, belief]``
        and normalised actions ``[N, A]`` (moved by ``z_t`` when ``residual``). ``running_norm``:
        standardise the input with the running statistics even in training (no update)."""
        x = torch.cat([h, action], -1)
        if running_norm and isinstance(self.head_norm, nn.BatchNorm1d):
            n = self.head_norm
            x = F.batch_norm(x, n.running_mean, n.running_var, training=False, eps=n.eps)
        else:
            x = self.head_norm(x)
        params = self.head(x)
        if self.anchor_head is not None:
            loc = self.anchor_head(x)
            if self.hparams.residual and self.family.loc_blocks == 1:
                # the family's shift, applied before the concatenation (one copy fewer per step)
                return torch.cat([loc + self.belief.latest(h), params], -1)
            params = torch.cat([loc, params], -1)
        if self.hparams.residual:
            params = self.family.shift(params, self.belief.latest(h))
        return params

    def predict(self, h: Tensor, action: Tensor) -> Distribution:
        """``p(z_{t+1} | h_t, a_t)``: batch ``[N]``, event ``[d]`` (fp32)."""
        return self.family(self.predict_params(h, action))

    def imagine(
        self,
        h: Tensor,
        actions: Tensor,
        sample: bool = True,
        noise: tuple[Tensor, Tensor] | None = None,
        keep_params: bool = True,
    ) -> tuple[Tensor | None, Tensor]:
        """Open-loop rollout from beliefs ``h`` ``[N, belief]`` under normalised actions ``[N, k, A]``.

        Returns ``(params [N, k, P], z [N, k, d])``: the family's parameters of every step's
        prediction (None with ``keep_params=False``, which planners use) and the latents fed back
        (reparameterised samples, or means with ``sample=False``). ``noise = (eps [N, k, d], u [N,
        k])`` makes the samples from given draws (common random numbers, see
        :func:`~varjepa.worldmodel.sampling.sample_from_noise`; families without such a transform
        sample independently)."""
        params, z, _ = self._rollout(h, actions, sample, noise, keep_params, tilt=1.0)
        return params, z

    def imagine_tilted(
        self, h: Tensor, actions: Tensor, noise: tuple[Tensor, Tensor], tilt: float
    ) -> tuple[Tensor, Tensor]:
        """Importance-sampled rollouts for a risk measure's tail: as :meth:`imagine` from draws
        ``noise``, but each step's mixture component is drawn with probability ``∝ π_k^tilt``
        (``0 ≤ tilt ≤ 1``, see :meth:`~varjepa.distributions.PosteriorFamily.tilted_sample_from_params`),
        so rare components (a gust) appear in more rollouts. Returns ``(z [N, k, d], log_weight [N])``:
        the latents fed back and each rollout's log importance weight, the sum over steps of
        ``log π_k − log q_k`` (self-normalise per candidate before averaging)."""
        if not self.family.stochastic:
            raise ConfigError(
                "plan.tilt < 1 needs a stochastic posterior family; this model's is deterministic"
            )
        _, z, log_w = self._rollout(h, actions, True, noise, False, tilt=tilt)
        return z, log_w

    def _rollout(
        self,
        h: Tensor,
        actions: Tensor,
        sample: bool,
        noise: tuple[Tensor, Tensor] | None,
        keep_params: bool,
        tilt: float,
    ) -> tuple[Tensor | None, Tensor, Tensor]:
        params, zs = [], []
        log_w = actions.new_zeros(actions.shape[0])
        for j in range(actions.shape[1]):
            a = actions[:, j]
            p = self.predict_params(h, a)
            z = dist = None
            if sample and self.family.stochastic and noise is not None:
                # planning's inner loop: draw without building the distribution where the family can
                if tilt != 1.0:
                    drawn = self.family.tilted_sample_from_params(p, noise[0][:, j], noise[1][:, j], tilt)
                    if drawn is not None:
                        z, log_ratio = drawn
                        log_w = log_w + log_ratio
                else:
                    z = self.family.sample_from_params(p, noise[0][:, j], noise[1][:, j])
                if z is None:
                    dist = self.family(p)
                    z = sample_from_noise(dist, noise[0][:, j], noise[1][:, j])
            if z is None:
                dist = self.family(p) if dist is None else dist
                z = dist.rsample() if sample and self.family.stochastic else self.family.mean(dist)
            if keep_params:
                params.append(p)
            zs.append(z)
            if j + 1 < actions.shape[1]:
                # in training, p standardised its input with batch statistics: an innovation belief
                # recomputes its prediction with the running ones, as on observed histories
                h = self.update_belief(h, z, a, None if self.training else p)
        return (torch.stack(params, 1) if keep_params else None), torch.stack(zs, 1), log_w

    def hazard_logits(self, z: Tensor) -> Tensor:
        """Hazard logits ``[...]`` of latents ``[..., d]`` (zeros when the model has no hazard head)."""
        if self.hazard_head is None:
            return z.new_full(z.shape[:-1], -30.0)
        return self.hazard_head(z).squeeze(-1)

    # ---------------------------------------------------------------- forward
    def forward(self, batch: dict[str, Tensor]) -> JEPAOutputs:
        """k-step rollouts from every start of the window after the burn-in; everything the ELBO reads.

        ``pred`` has batch ``[B, S·k]`` (S starts × k horizons, horizon fastest) and ``target`` holds
        the EMA latents of the observed futures ``[B, S·k, d]``."""
        hp = self.hparams
        obs, act = batch["obs"], self.normalize_action(batch["action"])
        B, W, _ = obs.shape
        k = hp.horizon
        if hp.burn_in + k > W:
            raise ValueError(
                f"windows of {W} observations are shorter than burn_in + horizon = {hp.burn_in + k}"
            )
        z = self.encode(obs)  # [B, W, d]
        zbar = self.encode(obs, target=True)
        h = self.filter(z.detach() if hp.detach_belief else z, act)
        starts = torch.arange(hp.burn_in - 1, W - k, device=obs.device)  # t with t + k <= W - 1
        S = len(starts)
        offs = starts[:, None] + torch.arange(k, device=obs.device)  # [S, k]: a_t .. a_{t+k-1}
        params, _ = self.imagine(h[:, starts].reshape(B * S, -1), act[:, offs].reshape(B * S, k, -1))
        pred = self.family(params.reshape(B, S * k, -1))
        target = zbar[:, offs + 1].reshape(B, S * k, -1)
        weights = None
        if hp.surprise_weight > 0 and self.training and S > 1:
            weights = self.surprise_weights(
                params.reshape(B, S, k, -1)[:, :, 0], target.reshape(B, S, k, -1)[:, :, 0]
            )
            weights = weights.repeat_interleave(k, dim=1)
        extras: dict[str, Any] = {"context_tokens": z, "batch": batch, "step": self.global_step}
        if self.decoder is not None:
            extras.update(
                recon_mean=self.decoder(z),
                recon_log_std=bounded_std(self.decoder_log_std, 1e-3, 1e3).log(),
                obs=self.normalize_obs(obs),
            )
        if self.hazard_head is not None:
            extras.update(hazard_logits=self.hazard_logits(zbar), hazard=batch["hazard"])
        return JEPAOutputs(pred=pred, family=self.family, target=target, extras=extras, token_weights=weights)

    @torch.no_grad()
    def surprise_weights(self, params: Tensor, target: Tensor) -> Tensor:
        """Per-start loss weights ``[B, S]`` from one-step predictions ``params`` ``[B, S, P]`` of the
        observed latents ``target`` ``[B, S, d]`` of consecutive starts: the prediction made at start
        ``t`` gets ``1 + surprise_weight`` if the newest latent it sees, ``z_t``, was among the
        batch's most surprising (NLL above the ``surprise_quantile``) under the prediction of start
        ``t − 1``, else 1; normalised to mean 1. The weight reads the history, never the target it
        scores (up to the batch-level threshold and normalisation), so it moves effort to the rare
        transitions after a surprise (a gust's momentum) and the optimum little."""
        hp = self.hparams
        nll = -self.family(params.float()).log_prob(target.float())  # [B, S]: surprise of z_{t+1}
        seen = torch.cat([nll.new_full((nll.shape[0], 1), -torch.inf), nll[:, :-1]], 1)
        thr = torch.quantile(nll[:, :-1].flatten(), hp.surprise_quantile)
        w = 1 + hp.surprise_weight * (seen > thr).float()
        return w / w.mean()

    # ------------------------------------------------------------------ steps
    def _step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        out = self(batch)
        res = self.elbo(out, self.global_step, self.total_steps if stage == "train" else 1)
        check_finite(res, self.global_step)
        bs = batch["obs"].shape[0]
        on_step = stage == "train"
        kw = {"on_step": on_step, "on_epoch": not on_step, "batch_size": bs, "sync_dist": not on_step}
        values = {f"{stage}/{k}": v for k, v in res.values.items()}
        with torch.no_grad():
            values[f"{stage}/pred_std"] = self.family.uncertainty(out.pred).mean()
            values[f"{stage}/target_std"] = out.target.float().std(0).mean()
            values[f"{stage}/rankme"] = effective_rank(out.extras["context_tokens"].flatten(0, 1))
        self.log(f"{stage}/loss", res.loss, prog_bar=True, **kw)
        self.log_dict(values, **kw)
        if on_step:
            self.log_dict(
                {f"train/weight/{k}": w for k, w in res.weights.items()}, on_step=True, batch_size=bs
            )
            self.log(
                "train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, batch_size=bs
            )
            if not self._reported and res.methods:
                rank_zero_info("ELBO terms: " + ", ".join(f"{k} ({m})" for k, m in res.methods.items()))
                self._reported = True
        return res.loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self._step(batch, "val")
        self._update_calibration(batch)
        return loss

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self._step(batch, "test")
        self._update_calibration(batch)
        return loss

    @torch.no_grad()
    def _update_calibration(self, batch: dict[str, Tensor]) -> None:
        hp = self.hparams
        ks = [int(k[1:]) for k in self.calibration]
        t0 = hp.calibration_history - 1
        usable = [k for k in ks if t0 + k < batch["obs"].shape[1]]
        if not usable:
            return
        seed = int(batch["index"][0])  # a fixed protocol: the same draws every epoch
        samples, target = rollout_samples(self, batch, t0, max(usable), hp.calibration_samples, seed)
        for k in usable:
            self.calibration[f"k{k}"].update(samples[:, :, k - 1], target[:, k - 1])

    def _log_calibration(self, stage: str) -> None:
        for name, metric in self.calibration.items():
            if metric.update_called:
                cov = metric.compute()
                self.log(f"{stage}/coverage50_{name}", cov[0])
                self.log(f"{stage}/coverage90_{name}", cov[1])
            metric.reset()

    def on_train_end(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if (
            self.hazard_head is None
            or self.hparams.hazard_refit_steps == 0
            or getattr(dm, "rollouts", None) is None
        ):
            return
        roll, eps = dm.rollouts, dm.split_episodes["train"]
        obs = np.concatenate([roll.obs[e, : roll.length[e] + 1] for e in eps])
        hazard = np.concatenate([roll.hazard[e, : roll.length[e] + 1] for e in eps])
        loss = self.refit_hazard_head(
            torch.from_numpy(obs), torch.from_numpy(hazard), self.hparams.hazard_refit_steps
        )
        saved = resave_final_checkpoints(self.trainer)
        rank_zero_info(
            f"LatentWorldModel: hazard head refit on {len(obs)} final target latents (log loss {loss:.4f}); "
            + (f"saved into {', '.join(p.name for p in saved)}" if saved else "no final checkpoint to update")
        )

    @torch.enable_grad()
    def refit_hazard_head(
        self, obs: Tensor, hazard: Tensor, steps: int, batch_size: int = 512, lr: float = 3e-3
    ) -> float:
        """Fit the hazard head on the target latents of raw observations ``obs`` ``[N, O]`` with labels
        ``hazard`` ``[N]`` (Adam, seeded, ``steps`` minibatches); returns the final log loss on all of
        them. Deterministic, so DDP ranks end with identical heads."""
        dev = self.obs_mean.device
        with torch.no_grad():
            z = self.encode(obs.to(dev), target=True)
        y = hazard.to(dev).float()
        g = torch.Generator(device="cpu").manual_seed(0)
        opt = torch.optim.Adam(self.hazard_head.parameters(), lr=lr)
        for _ in range(steps):
            idx = torch.randint(0, len(z), (min(batch_size, len(z)),), generator=g).to(dev)
            bce = F.binary_cross_entropy_with_logits(self.hazard_logits(z[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            bce.backward()
            opt.step()
        with torch.no_grad():
            return float(F.binary_cross_entropy_with_logits(self.hazard_logits(z), y))

    def on_validation_epoch_end(self) -> None:
        self._log_calibration("val")

    def on_test_epoch_end(self) -> None:
        self._log_calibration("test")
