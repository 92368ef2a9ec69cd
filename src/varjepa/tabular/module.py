"""``VarTJEPA``: the coupled Var-JEPA of Gögl & Yau (2026) as a LightningModule (DESIGN §2c).

Why a separate module and not the image ``VarJEPA``: the coupled model has three posteriors, a
conditional prior and two decoders, is trained without a teacher (no EMA, no stop-gradient by
default) and reads feature tables, whereas ``VarJEPA`` is built around a ViT, an EMA target
encoder producing observed latents ``z̄`` and one predictive distribution. Both share the
registries (posterior families, priors, objective presets, schedules), the ``ELBO`` class and
its logging conventions, the EMA callback (optional here) and the datamodule machinery.

The networks depend on the table's columns, which the datamodule learns in ``setup``; the model
therefore builds them in :meth:`setup` (or at once when ``schema`` is given, e.g. when loading a
checkpoint, whose hyper-parameters hold the schema).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from ..callbacks.ema import EMA
from ..distributions import POSTERIORS, PRIORS
from ..eval.collapse import effective_rank
from ..objectives import ELBO, OBJECTIVES, check_finite
from ..objectives.coupled import CoupledOutputs, LatentKL, coupled, has_coupled_terms
from ..objectives.elbo import NonFiniteLossError
from ..optim import adamw_warmup_cosine
from ..registry import ConfigError, spec_name
from .architecture import ARCHITECTURES
from .masking import FeatureMasking

Spec = str | dict[str, Any]
LATENTS = ("sx", "z", "sy", "predictor")


def _masking(value) -> FeatureMasking:
    if isinstance(value, FeatureMasking):
        return value
    if isinstance(value, dict):
        try:
            return FeatureMasking(**value)
        except TypeError as e:
            raise ConfigError(f"model.masking: {e}") from e
    raise ConfigError(f"model.masking: expected a mapping, got {type(value).__name__}")


class VarTJEPA(L.LightningModule):
    """Var-T-JEPA: the coupled ELBO on tables (``architecture: transformer``) or on the simulation
    study's paired views (``architecture: mlp``).

    Args:
        architecture: ``{name: transformer, dim, depth, heads, ff, num_cls, predictor_depth,
            target_depth, pool}`` or ``{name: mlp, width, depth}`` (see
            :mod:`varjepa.tabular.architecture`).
        latent_dim: size d_s of ``s_x`` and ``s_y`` per token.
        aux_dim: size d_z of the auxiliary latent ``z``.
        posterior: posterior family of every latent (registry name or ``{name, **opts}``).
        posteriors: per-latent overrides, keys ``sx``, ``z``, ``sy`` (target posterior) and
            ``predictor`` (the conditional prior ``p_θ(s_y|s_x,z)``).
        prior: ``p(s_x)`` and ``p(z)`` (default ``N(0, I)``).
        objective: ``coupled`` with options (``alpha_rec`` ... ``alpha_sy``, ``anneal``,
            ``kl_samples``).
        masking: feature-subset masks (transformer only).
        ema: ``None`` (default: no teacher, everything trained by the gradient) or an EMA
            momentum schedule for a target-side copy of the context encoder.
        decoder_hidden: width of the decoders' hidden layer.
        lr / weight_decay / betas / warmup / final_lr_ratio: AdamW with linear warm-up and cosine
            decay (as in ``VarJEPA``).
        schema: the data's layout (set from the datamodule in ``setup``; stored in checkpoints).
        nonfinite: ``"raise"`` (NonFiniteLossError naming the step and terms) or ``"skip"``.
    """

    def __init__(
        self,
        architecture: Spec = "transformer",
        latent_dim: int = 64,
        aux_dim: int = 16,
        posterior: Spec = "diag_gaussian",
        posteriors: dict[str, Spec] | None = None,
        prior: Spec = "standard_normal",
        objective: Spec = "coupled",
        masking: FeatureMasking | dict = FeatureMasking(),
        ema: float | Spec | None = None,
        decoder_hidden: int = 64,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup: float = 0.05,
        final_lr_ratio: float = 0.1,
        schema: dict[str, Any] | None = None,
        nonfinite: str = "raise",
    ):
        super().__init__()
        self.masking = _masking(masking)
        self.save_hyperparameters()
        self.hparams.update(masking=asdict(self.masking))
        if lr <= 0:
            raise ConfigError(f"model.lr = {lr}; must be > 0")
        if latent_dim < 1 or aux_dim < 1:
            raise ConfigError(f"model.latent_dim = {latent_dim}, aux_dim = {aux_dim}; must be >= 1")
        if nonfinite not in ("raise", "skip"):
            raise ConfigError(f"model.nonfinite = {nonfinite!r}; allowed: raise, skip")
        unknown = set(posteriors or {}) - set(LATENTS)
        if unknown:
            raise ConfigError(
                f"model.posteriors: unknown key(s) {sorted(unknown)}; allowed: {', '.join(LATENTS)}"
            )
        self.arch_name = spec_name(architecture)
        ARCHITECTURES.resolve(architecture, "model.architecture")  # fail early on a bad name
        self.ema_spec = ema
        if ema is not None:
            EMA(ema)
        self.families = nn.ModuleDict(
            {
                k: POSTERIORS.build(
                    (posteriors or {}).get(k, posterior),
                    f"model.posteriors.{k}",
                    dim=aux_dim if k == "z" else latent_dim,
                )
                for k in LATENTS
            }
        )
        for k, fam in self.families.items():
            if fam.needs_mean_term:
                raise ConfigError(
                    f"model.posteriors.{k} = {type(fam).__name__} with a detached anchor: the coupled "
                    "ELBO has no term that fits a location by least squares, so the anchor would get no "
                    "gradient. Set detach_anchor: false or choose another family"
                )
        self.net: nn.Module | None = None
        self.elbo: ELBO | None = None
        self._total_steps: int | None = None
        self._reported = False
        self.skipped_batches = 0
        if schema is not None:
            self.build(schema)

    # ----------------------------------------------------------------- set-up
    def build(self, schema: dict[str, Any]) -> None:
        """Create the networks, decoders and ELBO for the data's ``schema`` (idempotent)."""
        if self.net is not None:
            return
        hp = self.hparams
        schema = dict(schema)
        builder, opts = ARCHITECTURES.resolve(hp.architecture, "model.architecture")
        try:
            self.net = builder(
                schema=schema,
                families=dict(self.families),
                latent_dim=hp.latent_dim,
                aux_dim=hp.aux_dim,
                ema=self.ema_spec is not None,
                **opts,
            )
        except TypeError as e:
            raise ConfigError(f"model.architecture = {hp.architecture!r}: {e}") from e
        ctx_dec, tgt_dec = self.net.decoders(hp.latent_dim, hp.decoder_hidden)
        prior_sx = PRIORS.build(hp.prior, "model.prior", dim=hp.latent_dim)
        prior_z = PRIORS.build(hp.prior, "model.prior", dim=hp.aux_dim)
        obj_builder, obj_opts = OBJECTIVES.resolve(hp.objective, "model.objective")
        if obj_builder is None:
            raise ConfigError("model.objective: give a preset name or {name, **options}")
        if obj_builder.__module__.startswith("varjepa.objectives") and obj_builder is not coupled:
            raise ConfigError(
                f"model.objective = {spec_name(hp.objective)!r}: VarTJEPA trains the coupled ELBO; use 'coupled'"
            )
        try:
            terms = obj_builder(
                prior=prior_sx, prior_z=prior_z, context_decoder=ctx_dec, target_decoder=tgt_dec, **obj_opts
            )
        except TypeError as e:
            raise ConfigError(f"model.objective = {hp.objective!r}: {e}") from e
        if not has_coupled_terms(terms):
            raise ConfigError(
                f"model.objective = {spec_name(hp.objective)!r}: VarTJEPA trains the coupled ELBO; use 'coupled'"
            )
        self.elbo = ELBO(terms)
        fams = dict(self.families)
        for t in terms:
            if isinstance(t, LatentKL):
                t.validate_families(fams)
        self.hparams["schema"] = schema

    def configure_callbacks(self):
        """The optional EMA teacher brings its callback."""
        return [EMA(self.ema_spec)] if self.ema_spec is not None else []

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """``(online, target)`` pairs for the EMA callback."""
        return self.net.momentum_pairs() if self.net is not None else []

    def check_data(self, dm: Any) -> None:
        """ConfigError if the datamodule does not serve what the architecture reads; then reads the
        data (bad tables stop here, before anything is written) and builds the networks."""
        schema = getattr(dm, "schema", None)
        kind = getattr(dm, "schema_kind", None) or (schema.get("kind") if isinstance(schema, dict) else None)
        if self.arch_name == "mlp" and kind not in (None, "paired"):
            raise ConfigError("model.architecture = 'mlp' reads paired views (varjepa.SimulationDataModule)")
        if not hasattr(dm, "set_feature_masking"):
            raise ConfigError(
                f"VarTJEPA reads tables: use varjepa.TabularDataModule or varjepa.SimulationDataModule, "
                f"not {type(dm).__name__}"
            )
        dm.setup("fit")
        self._build_from(dm)

    def _build_from(self, dm: Any) -> None:
        schema = dm.schema.to_dict() if hasattr(dm.schema, "to_dict") else dict(dm.schema)
        if self.net is not None and self.hparams.schema not in (None, schema):
            raise ConfigError("the data's columns differ from the ones this model was built for (its schema)")
        self.build(schema)
        dm.set_feature_masking(self.masking if self.arch_name == "transformer" else None)

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None:
            self.check_data(dm)
        elif self.net is None:
            raise ConfigError("VarTJEPA: no schema; train with a varjepa tabular datamodule or pass schema=")

    @property
    def total_steps(self) -> int:
        """Total optimizer steps of the run (for schedules)."""
        if self._total_steps is None:
            self._total_steps = max(int(self.trainer.estimated_stepping_batches), 1)
        return self._total_steps

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
            no_decay_suffixes=("pos_emb", "cls", "cls_pos", "mask_token", "query"),
        )

    # ---------------------------------------------------------------- forward
    def forward(self, batch: dict[str, Tensor]) -> CoupledOutputs:
        """The coupled model on a (masked, for tables) batch; everything the ELBO terms read."""
        f = self.families
        o = self.net(batch, dict(f))
        return CoupledOutputs(
            pred=o["p_sy"],
            family=f["predictor"],
            target=o["s_y"],
            target_dist=o["q_sy"],
            target_family=f["sy"],
            q_sx=o["q_sx"],
            family_sx=f["sx"],
            s_x=o["s_x"],
            q_z=o["q_z"],
            family_z=f["z"],
            z=o["z"],
            x_latent=o["x_latent"],
            x_obs=o["x_obs"],
            y_latent=o["y_latent"],
            y_obs=o["y_obs"],
            extras={"batch": batch, "step": self.global_step},
        )

    @torch.no_grad()
    def embed(self, values: Tensor) -> Tensor:
        """Row embeddings ``[B, D]`` from ``q(s_x | x)`` of full rows ``values`` ``[B, F]`` (posterior
        means, pooled by the architecture's ``pool``)."""
        return self.net.embed(values.to(self.device), self.families["sx"]).float()

    @torch.no_grad()
    def posterior_std(self, values: Tensor) -> Tensor:
        """Mean marginal std of ``q(s_x | x)`` of full rows ``[B]`` (an uncertainty score)."""
        fam = self.families["sx"]
        return fam.uncertainty(self.net.posterior(values.to(self.device), fam)).float().mean(-1)

    @torch.no_grad()
    def predictive_std(self, values: Tensor, num_draws: int = 8, seed: int = 0) -> Tensor:
        """Mean marginal std of the predictor ``p_θ(s_y | s_x, z)`` per row ``[B]``, averaged over
        target tokens and ``num_draws`` seeded feature masks shared by every row (transformer), or of
        its single token (mlp); latents at their posterior means."""
        values = values.to(self.device)
        B = values.shape[0]
        fam_p = self.families["predictor"]
        was = self.net.training
        self.net.eval()
        draws = []
        if self.arch_name != "transformer":
            draws.append({"values": values})
        else:
            g = torch.Generator().manual_seed(seed)
            for _ in range(num_draws):
                ctx, tgt = self.masking(1, self.net.num_features, g)
                draws.append(
                    {
                        "values": values,
                        "context_idx": ctx.expand(B, -1).to(self.device),
                        "target_idx": tgt.expand(B, -1, -1).to(self.device),
                    }
                )
        total = torch.zeros(B, device=self.device)
        for b in draws:
            o = self.net(b, dict(self.families), sample=False)
            u = fam_p.uncertainty(o["p_sy"]).float()  # [B·K, Nt]
            total += u.reshape(B, -1).mean(1)
        self.net.train(was)
        return total / len(draws)

    # ------------------------------------------------------------------ steps
    def _step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        out = self(batch)
        res = self.elbo(out, self.global_step, self.total_steps if stage == "train" else 1)
        bs = batch["values"].shape[0]
        if not torch.isfinite(res.loss):
            if stage == "train" and self.hparams.nonfinite == "skip":
                self.skipped_batches += 1
                rank_zero_warn(f"non-finite loss at step {self.global_step}: batch skipped")
                self.log("train/skipped_batches", float(self.skipped_batches), on_step=True, batch_size=bs)
                return None
            try:
                check_finite(res, self.global_step)
            except NonFiniteLossError as e:
                raise NonFiniteLossError(f"{stage}: {e}") from None
        on_step = stage == "train"
        kw = {"on_step": on_step, "on_epoch": not on_step, "batch_size": bs, "sync_dist": not on_step}
        values = {f"{stage}/{k}": v for k, v in res.values.items()}
        every = self.trainer.log_every_n_steps if self._trainer is not None else 1
        if stage != "train" or self.global_step % max(every, 1) == 0:
            with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=False):
                f = self.families
                mu = f["sx"].mean(out.q_sx).float().mean(1)  # [B, d_s]
                values[f"{stage}/sx_std"] = f["sx"].uncertainty(out.q_sx).mean()
                values[f"{stage}/pred_std"] = f["predictor"].uncertainty(out.pred).mean()
                values[f"{stage}/sy_std"] = f["sy"].uncertainty(out.target_dist).mean()
                values[f"{stage}/rankme"] = effective_rank(mu)
                values[f"{stage}/sx_spread"] = mu.std(0).mean()
        self.log(f"{stage}/loss", res.loss, prog_bar=True, **kw)
        loss = res.loss
        if stage == "train" and not loss.requires_grad:
            # every weight is 0 (the first step of the annealing): a zero loss attached to the
            # parameters, so the optimizer step, the step counter and the schedules still advance
            loss = loss + sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
        self.log_dict(values, **kw)
        if stage == "train":
            self.log_dict(
                {f"train/weight/{k}": w for k, w in res.weights.items()}, on_step=True, batch_size=bs
            )
            self.log(
                "train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, batch_size=bs
            )
            if not self._reported and res.methods:
                rank_zero_info(
                    "coupled ELBO terms: " + ", ".join(f"{k} ({m})" for k, m in res.methods.items())
                )
                self._reported = True
        return loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "test")

    def predict_step(
        self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Tensor]:
        """``{"embedding": [B, D], "uncertainty": [B], "label": [B], "index": [B]}`` (uncertainty:
        :meth:`predictive_std`)."""
        out = {"embedding": self.embed(batch["values"]), "uncertainty": self.predictive_std(batch["values"])}
        for k in ("label", "index"):
            if k in batch:
                out[k] = batch[k]
        return out

    def on_fit_start(self) -> None:
        self._total_steps = None
        f = self.families
        rank_zero_info(
            f"VarTJEPA: architecture={self.arch_name}, posteriors="
            + ", ".join(f"{k}:{type(f[k]).__name__}" for k in LATENTS)
            + f", d_s={self.hparams.latent_dim}, d_z={self.hparams.aux_dim}, ema={self.ema_spec is not None}, "
            f"total steps={self.total_steps}"
        )


@torch.no_grad()
def extract(model: VarTJEPA, loader, uncertainty: bool = True) -> dict[str, np.ndarray]:
    """Embeddings ``[N, D]``, labels ``[N]``, raw values ``[N, F]`` and (optionally) the two
    uncertainty scores ``[N]`` (``predictive_std``, ``posterior_std``) of every batch of ``loader``."""
    was = model.training
    model.eval()
    out: dict[str, list] = {
        "embedding": [],
        "label": [],
        "values": [],
        "predictive_std": [],
        "posterior_std": [],
    }
    for b in loader:
        v = b["values"]
        out["embedding"].append(model.embed(v).cpu())
        out["label"].append(b["label"])
        out["values"].append(v)
        if uncertainty:
            out["predictive_std"].append(model.predictive_std(v).cpu())
            out["posterior_std"].append(model.posterior_std(v).cpu())
    model.train(was)
    return {k: torch.cat(v).numpy() for k, v in out.items() if v}
