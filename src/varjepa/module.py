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
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from .callbacks.ema import EMA
from .data.base import JEPADataModule
from .distributions import LIKELIHOODS, POSTERIORS, PRIORS, PosteriorFamily
from .encoders import EncoderConfig, PredictorConfig, TransformerPredictor, ViTEncoder, gather_tokens
from .eval.collapse import effective_rank
from .masking import MultiBlockMasking
from .objectives import ELBO, OBJECTIVES, JEPAOutputs, check_finite
from .objectives.regularizers import REGULARIZERS
from .registry import ConfigError, spec_name
from .schedules import build_schedule, warmup_cosine

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

        # encoders
        self.encoder = ViTEncoder(enc_cfg)
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        d = self.encoder.embed_dim
        self.latent_dim = d

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
        builder, opts = OBJECTIVES.resolve(objective, "model.objective")
        if builder is None:
            raise ConfigError("model.objective: give a preset name, {name, **options} or a class_path")
        try:
            terms = builder(prior=prior_mod, likelihood=lik_mod, beta=self.beta, **opts)
        except TypeError as e:
            raise ConfigError(f"model.objective = {objective!r}: {e}") from e
        for i, spec in enumerate(regularizers or []):
            builder_r, ropts = REGULARIZERS.resolve(spec, f"model.regularizers[{i}]")
            if "weight" in ropts:
                ropts["weight"] = build_schedule(ropts["weight"], f"model.regularizers[{i}].weight")
            terms.append(builder_r(**ropts) if builder_r is not None else spec)
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
        self._total_steps: int | None = None
        self._reported_methods = False

    # ----------------------------------------------------------------- set-up
    def configure_callbacks(self):
        """The EMA teacher update is part of the method, so the model brings its callback."""
        return [EMA(self.ema_spec)] if self.ema_spec is not None else []

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
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if p.ndim <= 1 or name.endswith(("pos_embed", "mask_token", "cls_token", "reg_token")):
                no_decay.append(p)
            else:
                decay.append(p)
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr,
            betas=self.adam_betas,
        )
        total, warm, final = self.total_steps, self.warmup, self.final_lr_ratio
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, warm, final))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---------------------------------------------------------------- forward
    @torch.no_grad()
    def target_tokens(self, images: Tensor) -> Tensor:
        """Layer-normed target-encoder tokens ``[B, N, D]`` (stop-gradient): the observed latents z̄."""
        h = self.target_encoder(images)
        return F.layer_norm(h.float(), (h.shape[-1],))

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        """Pooled target-encoder features ``[B, D]`` (mean over patch tokens) for probes."""
        return self.target_encoder(images).mean(1)

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
        check_finite(res, self.global_step)
        on_step = stage == "train"
        bs = batch["image"].shape[0]
        kw = {"on_step": on_step, "on_epoch": not on_step, "batch_size": bs, "sync_dist": not on_step}
        self.log(f"{stage}/loss", res.loss, prog_bar=True, **kw)
        self.log_dict({f"{stage}/{k}": v for k, v in res.values.items()}, **kw)
        if stage == "train":
            self.log_dict(
                {f"train/weight/{k}": w for k, w in res.weights.items()}, on_step=True, batch_size=bs
            )
            self.log("train/beta", self.beta(self.global_step, self.total_steps), on_step=True, batch_size=bs)
            self.log(
                "train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, batch_size=bs
            )
            if not self._reported_methods and res.methods:
                rank_zero_info("ELBO terms: " + ", ".join(f"{k} ({m})" for k, m in res.methods.items()))
                self._reported_methods = True
        every = self.stats_every_n_steps or self.trainer.log_every_n_steps
        if stage != "train" or self.global_step % every == 0:
            with torch.no_grad():
                stats = {
                    f"{stage}/pred_std": self.family.uncertainty(out.pred).mean(),
                    f"{stage}/rankme": effective_rank(out.extras["target_tokens"].mean(1)),
                    f"{stage}/target_std": out.target.std(0).mean(),
                }
            self.log_dict(stats, **kw)
        return res.loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "test")

    def predict_step(
        self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Tensor]:
        """``{"embedding": [B, D], "label": [B], "index": [B]}`` (pooled target-encoder features)."""
        out = {"embedding": self.embed(batch["image"]).float()}
        for k in ("label", "index"):
            if k in batch:
                out[k] = batch[k]
        return out

    def on_fit_start(self) -> None:
        self._total_steps = None
        rank_zero_info(
            f"VarJEPA: posterior={spec_name(self.hparams.posterior)}, prior={spec_name(self.hparams.prior)}, "
            f"objective={spec_name(self.hparams.objective)}, latent dim={self.latent_dim}, "
            f"grid={self.encoder.grid_size}, total steps={self.total_steps}"
        )
