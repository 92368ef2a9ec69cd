"""The ``VarJEPA`` LightningModule: context encoder, EMA target encoder, predictor, ELBO.

Data path (one way): batch (images + mask indices from the collate function) → context
encoder on the visible patches → predictor → posterior family → distribution over target
latents; EMA target encoder on the full image → layer-normed target latents z̄ → ELBO
terms → logs.
"""

from __future__ import annotations

import copy
from dataclasses import asdict
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from .callbacks.ema import EMA
from .callbacks.sigterm import SigtermCheckpoint
from .checkpointing import check_compatible, gather_rng_states, restore_rng_state
from .data.base import JEPADataModule
from .distributions import LIKELIHOODS, POSTERIORS, PRIORS, PosteriorFamily
from .encoders import EncoderConfig, PredictorConfig, TransformerPredictor, ViTEncoder, gather_tokens
from .eval.collapse import effective_rank
from .masking import MultiBlockMasking
from .objectives import ELBO, JEPAOutputs, build_terms, check_finite
from .objectives.elbo import NonFiniteLossError
from .optim import adamw_warmup_cosine
from .registry import ConfigError, spec_name
from .schedules import build_schedule

DEFAULT_BETA = {"name": "linear_warmup", "value": 1.0, "warmup": 0.2}
DEFAULT_EMA = {"name": "linear", "start": 0.996, "end": 1.0}
Spec = str | dict[str, Any]


def _as(cls, value):
    """Accept a dataclass instance or a mapping of its fields (e.g. from a checkpoint's hparams)."""
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        try:
            return cls(**value)
        except TypeError as e:
            raise ConfigError(f"{cls.__name__}: {e}") from e
    raise ConfigError(f"expected {cls.__name__} or a mapping, got {type(value).__name__}")


def _input_hint(batch: dict[str, Tensor]) -> str:
    """A sentence naming the images of ``batch`` that hold NaN/Inf pixels ('' if none)."""
    img = batch.get("image")
    if img is None or not torch.is_floating_point(img):
        return ""
    bad = ~torch.isfinite(img).flatten(1).all(1)
    if not bad.any():
        return ""
    where = batch["index"][bad].tolist() if "index" in batch else bad.nonzero().flatten().tolist()
    more = " ..." if len(where) > 8 else ""
    return (
        f" The input batch holds NaN/Inf pixels in {len(where)} image(s) (dataset indices {where[:8]}{more})."
    )


class VarJEPA(L.LightningModule):
    """Variational JEPA.

    Args:
        encoder: ViT sizes or a timm model name (see :class:`EncoderConfig`).
        predictor: predictor transformer sizes.
        masking: multi-block mask sampler options (I-JEPA values by default).
        posterior: posterior family of the predictor (registry name, ``{name, **opts}`` or class_path).
        prior: prior p(z) for KL terms.
        likelihood: p(z̄ | z) for the predictive ELBO.
        objective: preset (``predictive``, ``target_posterior``, ``jepa``) and its options.
        regularizers: extra anti-collapse terms added to any preset, e.g.
            ``[{name: sigreg, weight: 0.1}]`` or ``[{name: vicreg, weight: 1.0}]``.
        beta: schedule of the KL weight β (a number is a constant).
        target_posterior: family of the target encoder's distribution (``target_posterior``
            objective only); defaults to ``posterior``.
        ema: EMA momentum schedule of the target encoder; ``None`` freezes the target.
        lr / weight_decay / betas: AdamW settings (no decay on biases, norms, positional
            embeddings and mask tokens).
        warmup: LR warm-up (fraction of steps if < 1, else steps); cosine decay to
            ``final_lr_ratio · lr`` afterwards.
        stats_every_n_steps: how often to log predictive std and effective rank (0: Trainer's
            ``log_every_n_steps``).
        nonfinite: what a NaN/Inf training loss does: ``"raise"`` stops the run with an error naming
            the step and the ELBO terms that broke; ``"skip"`` drops the batch's update (on every
            rank; the step counter still advances) and counts it in ``train/skipped_batches``.
    """

    def __init__(
        self,
        encoder: EncoderConfig = EncoderConfig(),
        predictor: PredictorConfig = PredictorConfig(),
        masking: MultiBlockMasking = MultiBlockMasking(),
        posterior: Spec = "diag_gaussian",
        prior: Spec = "standard_normal",
        likelihood: Spec = "gaussian",
        objective: Spec = "predictive",
        beta: float | Spec = DEFAULT_BETA,
        regularizers: list[Spec] | None = None,
        target_posterior: Spec | None = None,
        ema: float | Spec | None = DEFAULT_EMA,
        lr: float = 1e-3,
        weight_decay: float = 0.04,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup: float = 0.1,
        final_lr_ratio: float = 0.01,
        stats_every_n_steps: int = 0,
        nonfinite: str = "raise",
    ):
        super().__init__()
        enc_cfg = _as(EncoderConfig, encoder)
        pred_cfg = _as(PredictorConfig, predictor)
        self.masking = _as(MultiBlockMasking, masking)
        self.save_hyperparameters()
        # plain types only, so checkpoints load with torch.load(weights_only=True)
        self.hparams.update(encoder=asdict(enc_cfg), predictor=asdict(pred_cfg), masking=asdict(self.masking))
        if lr <= 0:
            raise ConfigError(f"model.lr = {lr}; must be > 0")
        if weight_decay < 0:
            raise ConfigError(f"model.weight_decay = {weight_decay}; must be >= 0")
        if nonfinite not in ("raise", "skip"):
            raise ConfigError(f"model.nonfinite = {nonfinite!r}; allowed: raise, skip")

        # encoders
        self.encoder = ViTEncoder(enc_cfg)
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        d = self.encoder.embed_dim
        self.latent_dim = d  # size of a token latent
        self.embedding_dim = self.encoder.pooled_dim  # size of :meth:`embed`'s features

        # distributions
        self.family: PosteriorFamily = POSTERIORS.build(posterior, "model.posterior", dim=d)
        prior_mod = PRIORS.build(prior, "model.prior", dim=d)
        lik_mod = LIKELIHOODS.build(likelihood, "model.likelihood", dim=d)
        for opt, mod in (("model.prior", prior_mod), ("model.likelihood", lik_mod)):
            if getattr(mod, "dim", d) != d:
                raise ConfigError(f"{opt}: latent size {mod.dim} does not match the encoder's embed_dim {d}")
        self.predictor = TransformerPredictor(pred_cfg, self.encoder.grid_size, d, self.family.num_params)

        # objective
        self.beta = build_schedule(beta, "model.beta")
        terms = build_terms(objective, prior_mod, lik_mod, self.beta, regularizers)
        self.elbo = ELBO(terms)
        self.target_family: PosteriorFamily | None = None
        self.target_head: nn.Module | None = None
        if self.elbo.requires("target_dist"):
            self.target_family = POSTERIORS.build(
                target_posterior or posterior, "model.target_posterior", dim=d
            )
            self.target_head = nn.Linear(d, self.target_family.num_params)
            nn.init.zeros_(self.target_head.weight)
            nn.init.zeros_(self.target_head.bias)
        elif target_posterior is not None:
            raise ConfigError(
                f"model.target_posterior = {target_posterior!r} is only used by the 'target_posterior' objective"
            )
        self.elbo.validate(self.family, self.target_family)

        self.ema_spec = ema
        if ema is not None:
            EMA(ema)  # validate now, before anything is written
        self.lr, self.weight_decay, self.adam_betas = lr, weight_decay, tuple(betas)
        self.warmup, self.final_lr_ratio = warmup, final_lr_ratio
        self.stats_every_n_steps = stats_every_n_steps
        self.nonfinite = nonfinite
        self.skipped_batches = 0
        self._total_steps: int | None = None
        self._reported_methods = False
        self._rng_to_restore: list | None = None
        self._rng_outside_val = None
        self._drop_update = False

    # ----------------------------------------------------------------- set-up
    def configure_callbacks(self):
        """The EMA teacher update is part of the method, so the model brings its callback. When the
        Trainer checkpoints (it has a ModelCheckpoint) the model also brings a
        :class:`SigtermCheckpoint`, unless the Trainer has one already."""
        cbs: list = [EMA(self.ema_spec)] if self.ema_spec is not None else []
        trainer = self._trainer
        if trainer is not None:
            have = {type(c) for c in trainer.callbacks}
            if any(issubclass(t, ModelCheckpoint) for t in have) and SigtermCheckpoint not in have:
                cbs.append(SigtermCheckpoint())
        return cbs

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """``(online, target)`` module pairs updated by the EMA callback."""
        return [(self.encoder, self.target_encoder)]

    def check_data(self, dm: Any) -> None:
        """Raise a ConfigError if the datamodule's images do not fit the encoder."""
        cfg = self.hparams.encoder
        for attr, key in (("image_size", "img_size"), ("in_chans", "in_chans")):
            have = getattr(dm, attr, None)
            if have is not None and have != cfg[key]:
                raise ConfigError(
                    f"data.{attr} = {have} but model.encoder.{key} = {cfg[key]}; set them equal"
                )

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if isinstance(dm, JEPADataModule):
            self.check_data(dm)
            dm.set_masking(self.masking, self.encoder.grid_size)
        elif stage in ("fit", "validate", "test"):
            rank_zero_warn(
                "VarJEPA: the datamodule is not a varjepa JEPADataModule; batches must already hold "
                "'image', 'context_idx' and 'target_idx'"
            )
        if self.ema_spec is None and stage == "fit":
            rank_zero_warn("model.ema is null: the target encoder stays at its initial weights")

    @property
    def total_steps(self) -> int:
        """Total optimizer steps of the run (for schedules)."""
        if self._total_steps is None:
            self._total_steps = max(int(self.trainer.estimated_stepping_batches), 1)
        return self._total_steps

    def configure_optimizers(self):
        return adamw_warmup_cosine(
            self.named_parameters(),
            self.lr,
            self.weight_decay,
            self.adam_betas,
            self.total_steps,
            self.warmup,
            self.final_lr_ratio,
            no_decay_suffixes=("pos_embed", "mask_token", "cls_token", "reg_token"),
        )

    # ---------------------------------------------------------------- forward
    @torch.no_grad()
    def target_tokens(self, images: Tensor) -> Tensor:
        """Layer-normed target-encoder tokens ``[B, N, D]`` (stop-gradient): the observed latents z̄."""
        h = self.target_encoder(images)
        return F.layer_norm(h.float(), (h.shape[-1],))

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        """Pooled target-encoder features ``[B, embedding_dim]`` of ``images`` ``[B, C, H, W]`` for
        probes (``model.encoder.pool``: by default the mean of the last block's patch tokens)."""
        return self.target_encoder.pool(images)

    def forward(self, batch: dict[str, Tensor]) -> JEPAOutputs:
        """Run the JEPA on a masked batch; returns everything the ELBO terms read."""
        images, ctx_idx, tgt_idx = batch["image"], batch["context_idx"], batch["target_idx"]
        h = self.target_tokens(images)
        target = gather_tokens(h, tgt_idx.flatten(1))  # [B, T, D]
        z = self.encoder(images, ctx_idx)
        params = self.predictor(z, ctx_idx, tgt_idx).flatten(1, 2)  # [B, T, P]
        pred = self.family(params)
        target_dist = None
        if self.target_head is not None:
            target_dist = self.target_family(self.target_head(target))
        return JEPAOutputs(
            pred=pred,
            family=self.family,
            target=target,
            target_dist=target_dist,
            target_family=self.target_family,
            extras={"target_tokens": h, "context_tokens": z, "batch": batch, "step": self.global_step},
        )

    # ------------------------------------------------------------------ steps
    def _step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        out = self(batch)
        res = self.elbo(out, self.global_step, self.total_steps if stage == "train" else 1)
        if not self._finite(res, batch, stage):
            return self._skip_update()
        on_step = stage == "train"
        bs = batch["image"].shape[0]
        kw = {"on_step": on_step, "on_epoch": not on_step, "batch_size": bs, "sync_dist": not on_step}
        values = {f"{stage}/loss": res.loss, **{f"{stage}/{k}": v for k, v in res.values.items()}}
        every = self.stats_every_n_steps or self.trainer.log_every_n_steps
        if stage != "train" or self.global_step % every == 0:
            # distribution maths in fp32 even under mixed precision (flows sample here)
            with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=False):
                values[f"{stage}/pred_std"] = self.family.uncertainty(out.pred).mean()
                values[f"{stage}/rankme"] = effective_rank(out.extras["target_tokens"].mean(1))
                values[f"{stage}/target_std"] = out.target.float().std(0).mean()
        if on_step:
            values = self._sync_train_values(values)
        self.log(f"{stage}/loss", values.pop(f"{stage}/loss"), prog_bar=True, **kw)
        self.log_dict(values, **kw)
        if stage == "train":
            self.log_dict(
                {f"train/weight/{k}": w for k, w in res.weights.items()}, on_step=True, batch_size=bs
            )
            self.log("train/beta", self.beta(self.global_step, self.total_steps), on_step=True, batch_size=bs)
            self.log(
                "train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, batch_size=bs
            )
            if self.nonfinite == "skip":
                self.log("train/skipped_batches", float(self.skipped_batches), on_step=True, batch_size=bs)
            if not self._reported_methods and res.methods:
                rank_zero_info("ELBO terms: " + ", ".join(f"{k} ({m})" for k, m in res.methods.items()))
                self._reported_methods = True
        return res.loss

    def _sync_train_values(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        """Under DDP, average the step's scalars over ranks on the steps the logger writes (one
        all-reduce), so logged training curves describe the global batch."""
        trainer = self.trainer
        if trainer.world_size <= 1:
            return values
        conn = getattr(trainer, "_logger_connector", None)
        if conn is not None and not conn.should_update_logs:
            return values
        stacked = torch.stack([v.detach().float().reshape(()) for v in values.values()])
        mean = trainer.strategy.reduce(stacked, reduce_op="mean")
        return dict(zip(values, mean.unbind(0), strict=True))

    def _skip_update(self) -> Tensor:
        """A zero loss attached to every trainable parameter: backward yields zero gradients
        everywhere (DDP ranks stay in step; Lightning forbids returning None under DDP), and
        :meth:`on_before_optimizer_step` drops the gradients so the optimizer changes nothing."""
        self._drop_update = True
        zero = torch.zeros((), device=self.device)
        return sum((p.sum() for p in self.parameters() if p.requires_grad), start=zero) * 0.0

    def on_before_optimizer_step(self, optimizer) -> None:
        if self._drop_update:
            optimizer.zero_grad(set_to_none=True)  # AdamW leaves parameters without gradient alone
            self._drop_update = False

    def _finite(self, res, batch: dict[str, Tensor], stage: str) -> bool:
        """True if the loss is finite. Otherwise raise :class:`NonFiniteLossError` (naming the step,
        the broken terms and bad input images), or, with ``nonfinite="skip"`` in training, count the
        batch and return False. Under DDP the skip decision is taken jointly by all ranks."""
        finite = bool(torch.isfinite(res.loss))
        skip = stage == "train" and self.nonfinite == "skip"
        if skip and self.trainer.world_size > 1:
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            return True
        if not skip:
            try:
                check_finite(res, self.global_step)
            except NonFiniteLossError as e:
                raise NonFiniteLossError(f"{stage}: {e}{_input_hint(batch)}") from None
        self.skipped_batches += 1
        self.log(
            "train/skipped_batches", float(self.skipped_batches), on_step=True, batch_size=len(batch["image"])
        )
        bad = [k for k, v in res.values.items() if not torch.isfinite(v)] or ["another rank's batch"]
        rank_zero_warn(
            f"non-finite loss at step {self.global_step} ({', '.join(bad)}): batch skipped "
            f"({self.skipped_batches} so far){_input_hint(batch)}"
        )
        return False

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "test")

    def predict_step(
        self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Tensor]:
        """``{"embedding": [B, E], "uncertainty": [B], "surprise": [B], "label": [B], "index": [B]}``:
        pooled target-encoder features (E = ``embedding_dim``), and the aggregated predictive std
        and predictive surprise under the fixed, seeded mask protocol ``self.uncertainty_protocol`` (a
        :class:`~varjepa.eval.uncertainty.MaskProtocol`, default 8 draws, seed 0; see
        :meth:`predictive_scores`)."""
        out = {"embedding": self.embed(batch["image"]).float(), **self.predictive_scores(batch["image"])}
        for k in ("label", "index"):
            if k in batch:
                out[k] = batch[k]
        return out

    @torch.no_grad()
    def predictive_scores(self, images: Tensor, protocol=None) -> dict[str, Tensor]:
        """``{"uncertainty": [B], "surprise": [B]}`` of ``images`` ``[B, C, H, W]`` under
        ``protocol`` (as :meth:`predictive_uncertainty`); see
        :func:`varjepa.eval.uncertainty.predictive_scores`."""
        from .eval.uncertainty import MaskProtocol, predictive_scores

        protocol = protocol or getattr(self, "uncertainty_protocol", None) or MaskProtocol()
        return {k: v.float() for k, v in predictive_scores(self, images, protocol).items()}

    @torch.no_grad()
    def predictive_uncertainty(self, images: Tensor, protocol=None) -> Tensor:
        """Aggregated predictive std per image ``[B]``: the posterior family's spread, averaged over
        latent dimensions, target tokens and the mask draws of ``protocol`` (default
        ``self.uncertainty_protocol`` if set, else 8 seeded draws). Every image gets the same masks,
        so its score does not depend on its batch."""
        return self.predictive_scores(images, protocol)["uncertainty"]

    # ------------------------------------------------------- checkpoints and resume
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Adds every rank's RNG states (for Monte Carlo terms; masks and data order are keyed by
        position, see :mod:`varjepa.data.sampler`) and the skipped-batch counter. Plain types only."""
        checkpoint["varjepa"] = {"rng": gather_rng_states(), "skipped_batches": self.skipped_batches}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """When a Trainer restores it (strict loading), checks that the checkpoint fits this model
        (ConfigError naming the mismatch); keeps its RNG states for :meth:`on_train_start`."""
        if self._trainer is not None and self.strict_loading:
            check_compatible(self, checkpoint, f"checkpoint '{self._trainer.ckpt_path}'")
        state = checkpoint.get("varjepa") or {}
        self.skipped_batches = int(state.get("skipped_batches", 0))
        self._rng_to_restore = state.get("rng")

    def on_train_start(self) -> None:
        # restored as late as possible: nothing between here and the first batch draws randomness
        states, self._rng_to_restore = self._rng_to_restore, None
        if states:
            rank, world = self.global_rank, self.trainer.world_size
            if len(states) != world:
                rank_zero_warn(
                    f"the checkpoint holds RNG states of {len(states)} rank(s), this run has {world}: "
                    "Monte Carlo draws after the resume differ from the uninterrupted run"
                )
            restore_rng_state(states[min(rank, len(states) - 1)])

    def on_validation_epoch_start(self) -> None:
        # validation inside fit does not consume the training randomness: a run's trajectory does
        # not depend on how often it validates, and resumed runs replay it exactly
        if self.trainer.state.fn == "fit":
            self._rng_outside_val = (
                torch.get_rng_state(),
                torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
            )

    def on_validation_epoch_end(self) -> None:
        if self._rng_outside_val is not None:
            cpu, cuda = self._rng_outside_val
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state_all(cuda)
            self._rng_outside_val = None

    def on_fit_start(self) -> None:
        self._total_steps = None
        rank_zero_info(
            f"VarJEPA: posterior={spec_name(self.hparams.posterior)}, prior={spec_name(self.hparams.prior)}, "
            f"objective={spec_name(self.hparams.objective)}, latent dim={self.latent_dim}, "
            f"grid={self.encoder.grid_size}, total steps={self.total_steps}"
        )
