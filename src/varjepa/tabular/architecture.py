"""Var-T-JEPA networks: the tabular transformer of the paper and the simulation study's MLP.

Both map a batch to the pieces of the coupled model (DESIGN §2c) and return them as a dict:

* ``q_sx`` posterior of the context latent, batch ``[B, Tc]`` (Tc context tokens), and a sample
  ``s_x`` ``[B, Tc, d_s]``;
* ``q_z`` posterior of the auxiliary latent, batch ``[B]``, and ``z`` ``[B, d_z]``;
* ``p_sy`` the predictor's conditional prior ``p_θ(s_y | s_x, z)`` and ``q_sy`` the target
  posterior ``q(s_y | s_x, z, y)``, batch ``[B', Tt]``, and a sample ``s_y`` ``[B', Tt, d_s]``;
* what the decoders score: ``x_latent`` / ``x_obs`` (context side) and ``y_latent`` / ``y_obs``
  (target side), see :class:`FeatureDecoder` and :class:`GaussianMLPDecoder`.

Posterior families come from :data:`varjepa.distributions.POSTERIORS` (any family); the networks
only size their heads by ``family.num_params``. Samples are reparameterised (Dirac: the point).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributions import PosteriorFamily, bounded_std
from ..distributions.posteriors import inverse_bounded_std
from ..registry import ConfigError, Registry
from .data import CATEGORICAL, TableSchema

ARCHITECTURES: Registry[nn.Module] = Registry("tabular architecture", "model.architecture")


def draw(family: PosteriorFamily, dist, sample: bool = True) -> Tensor:
    """One reparameterised sample ``[*batch, d]`` (fp32); the mean for a Dirac or ``sample=False``."""
    return dist.rsample() if sample and family.stochastic else family.mean(dist)


def mlp(d_in: int, width: int, depth: int, d_out: int | None = None) -> nn.Sequential:
    """``depth`` hidden layers of ``width`` with GELU; a final linear layer to ``d_out`` if given."""
    layers: list[nn.Module] = []
    d = d_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.GELU()]
        d = width
    if d_out is not None:
        layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers)


def zero_head(d_in: int, d_out: int) -> nn.Linear:
    """A linear head initialised small, so fresh posteriors start near ``N(0, init_std²)``."""
    head = nn.Linear(d_in, d_out)
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    return head


# ----------------------------------------------------------------------------- decoders
class FeatureDecoder(nn.Module):
    """Per-feature decoders of tabular tokens: a Gaussian with learned per-feature σ for numeric
    features and a softmax over the training levels (plus the reserved one) for categorical ones.

    ``nll(latent [B, N, d_s], obs)`` with ``obs = {"idx": [B, N] feature ids, "values": [B, N]}``
    returns ``−log p(value | latent)`` ``[B, N]`` (fp32).

    Args:
        schema: the table layout.
        latent_dim: d_s.
        hidden: width of a shared GELU layer before the per-feature heads (0: none).
        min_std: lower bound of the numeric σ.
    """

    def __init__(self, schema: TableSchema, latent_dim: int, hidden: int = 64, min_std: float = 1e-2):
        super().__init__()
        F_ = schema.num_features
        self.min_std = min_std
        self.trunk = nn.Sequential(nn.Linear(latent_dim, hidden), nn.GELU()) if hidden else nn.Identity()
        h = hidden or latent_dim
        self.mu_w = nn.Parameter(torch.randn(F_, h) / math.sqrt(h))
        self.mu_b = nn.Parameter(torch.zeros(F_))
        self.raw_sigma = nn.Parameter(torch.full((F_,), inverse_bounded_std(1.0, min_std)))
        cards = schema.cardinalities()
        is_cat = torch.tensor([k == CATEGORICAL for k in schema.kinds])
        self.register_buffer("is_cat", is_cat, persistent=False)
        cat_feats = [f for f in range(F_) if is_cat[f]]
        self.num_cat = len(cat_feats)
        if cat_feats:
            L = max(cards[f] for f in cat_feats)
            slot = torch.zeros(F_, dtype=torch.long)
            slot[cat_feats] = torch.arange(len(cat_feats))
            valid = torch.zeros(len(cat_feats), L, dtype=torch.bool)
            for i, f in enumerate(cat_feats):
                valid[i, : cards[f]] = True
            self.register_buffer("slot", slot, persistent=False)
            self.register_buffer("valid", valid, persistent=False)
            self.cat_w = nn.Parameter(torch.randn(len(cat_feats), L, h) / math.sqrt(h))
            self.cat_b = nn.Parameter(torch.zeros(len(cat_feats), L))

    def sigma(self) -> Tensor:
        """Numeric σ per feature ``[F]`` (bounded below by ``min_std``)."""
        return bounded_std(self.raw_sigma.float(), self.min_std, 1e3)

    def mean(self, latent: Tensor, idx: Tensor) -> Tensor:
        """Predicted numeric value per token ``[B, N]`` (meaningless at categorical features)."""
        h = self.trunk(latent).float()
        return (h * self.mu_w[idx].float()).sum(-1) + self.mu_b[idx].float()

    def logits(self, latent: Tensor, idx: Tensor) -> Tensor:
        """Categorical logits per token ``[B, N, L]`` (invalid levels at −inf)."""
        h = self.trunk(latent).float()
        s = self.slot[idx]
        lg = torch.einsum("bnh,bnlh->bnl", h, self.cat_w[s].float()) + self.cat_b[s].float()
        return lg.masked_fill(~self.valid[s], float("-inf"))

    def nll(self, latent: Tensor, obs: dict[str, Tensor]) -> Tensor:
        idx, values = obs["idx"], obs["values"].float()
        with torch.autocast(device_type=latent.device.type, enabled=False):
            latent = latent.float()
            mu = self.mean(latent, idx)
            sig = self.sigma()[idx]
            out = 0.5 * ((values - mu) / sig).square() + sig.log() + 0.5 * math.log(2 * math.pi)
            if self.num_cat:
                cat = self.is_cat[idx]
                if cat.any():
                    codes = torch.where(cat, values.round().long(), 0)
                    lp = torch.log_softmax(self.logits(latent, idx), -1)
                    ce = -lp.gather(-1, codes.clamp_min(0).unsqueeze(-1)).squeeze(-1)
                    out = torch.where(cat, ce, out)
        return out


class GaussianMLPDecoder(nn.Module):
    """``p(obs | latent) = N(MLP(latent), diag σ²)`` with learned σ per output dimension.

    ``nll(latent [B, T, d_s], {"values": [B, T, D]})`` → ``[B, T]`` (summed over D, fp32).
    """

    def __init__(
        self, latent_dim: int, out_dim: int, width: int = 128, depth: int = 2, min_std: float = 1e-2
    ):
        super().__init__()
        self.net = mlp(latent_dim, width, depth, out_dim)
        self.min_std = min_std
        self.raw_sigma = nn.Parameter(torch.full((out_dim,), inverse_bounded_std(1.0, min_std)))

    def sigma(self) -> Tensor:
        """σ per output dimension ``[D]``."""
        return bounded_std(self.raw_sigma.float(), self.min_std, 1e3)

    def mean(self, latent: Tensor) -> Tensor:
        """Predicted observation ``[..., D]``."""
        return self.net(latent).float()

    def nll(self, latent: Tensor, obs: dict[str, Tensor]) -> Tensor:
        with torch.autocast(device_type=latent.device.type, enabled=False):
            mu, sig = self.mean(latent.float()), self.sigma()
            v = obs["values"].float()
            return (0.5 * ((v - mu) / sig).square() + sig.log() + 0.5 * math.log(2 * math.pi)).sum(-1)


# ----------------------------------------------------------------------------- tokenizer
class FeatureTokenizer(nn.Module):
    """Feature tokens of a table row.

    numeric feature f with value v: ``v · w_f + b_f + type[numeric] + pos_f``;
    categorical feature f with level code c: ``E_f[c] + type[categorical] + pos_f``.

    ``forward(values [B, N], idx [B, N])`` → ``[B, N, d]`` for the features ``idx`` holding ``values``.
    """

    def __init__(self, schema: TableSchema, dim: int):
        super().__init__()
        F_ = schema.num_features
        cards = schema.cardinalities()
        self.num_w = nn.Parameter(torch.randn(F_, dim) * 0.02)
        self.num_b = nn.Parameter(torch.zeros(F_, dim))
        self.type_emb = nn.Parameter(torch.randn(2, dim) * 0.02)
        self.pos_emb = nn.Parameter(torch.randn(F_, dim) * 0.02)
        self.register_buffer("is_cat", torch.tensor([c > 0 for c in cards]), persistent=False)
        offsets = torch.tensor([0] + cards[:-1]).cumsum(0)
        self.register_buffer("offset", offsets, persistent=False)
        self.cat_emb = nn.Embedding(max(sum(cards), 1), dim)
        nn.init.normal_(self.cat_emb.weight, std=0.02)

    def feature_embedding(self, idx: Tensor) -> Tensor:
        """Identity of features ``idx`` ``[...]`` (position + type) → ``[..., d]`` (for mask tokens)."""
        return self.pos_emb[idx] + self.type_emb[self.is_cat[idx].long()]

    def forward(self, values: Tensor, idx: Tensor) -> Tensor:
        cat = self.is_cat[idx]
        tok = values.unsqueeze(-1) * self.num_w[idx] + self.num_b[idx]
        if bool(cat.any()):
            codes = torch.where(cat, self.offset[idx] + values.round().long().clamp_min(0), 0)
            tok = torch.where(cat.unsqueeze(-1), self.cat_emb(codes), tok)
        return tok + self.feature_embedding(idx)


class Transformer(nn.Module):
    """Pre-norm transformer encoder (``depth`` blocks, GELU, no dropout) with a final LayerNorm;
    ``[B, N, d]`` → ``[B, N, d]``."""

    def __init__(self, dim: int, depth: int, heads: int, ff: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                dim, heads, ff, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        for b in self.blocks:
            x = b(x)
        return self.norm(x)


class AttentionPool(nn.Module):
    """One learned query attends over tokens ``[B, N, d]`` → ``[B, d]``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: Tensor) -> Tensor:
        q = self.query.expand(tokens.shape[0], -1, -1)
        return self.norm(self.attn(q, tokens, tokens, need_weights=False)[0].squeeze(1))


def _families(families: dict[str, PosteriorFamily]) -> tuple[PosteriorFamily, ...]:
    missing = {"sx", "z", "sy", "predictor"} - set(families)
    if missing:
        raise ConfigError(f"model.posteriors: missing families {sorted(missing)}")
    return families["sx"], families["z"], families["sy"], families["predictor"]


POOLS = ("mean", "cls", "mean_cls", "flatten")


# ----------------------------------------------------------------------------- transformer
@ARCHITECTURES.register("transformer")
class TabularCoupledNet(nn.Module):
    """Var-T-JEPA's networks (paper values by default: d = 64, 8 layers, 4 heads, ff 256).

    * context encoder: feature tokens of the context features plus ``num_cls`` CLS tokens →
      transformer (``depth``) → per-token head → ``q(s_x | x)`` batch ``[B, num_cls + Nc]``;
    * auxiliary encoder: attention pooling over the (lifted) ``s_x`` samples → MLP →
      ``q(z | s_x)`` batch ``[B]``;
    * predictor: lifted ``s_x`` tokens, a ``z`` token and mask tokens (feature identity of each
      target) → transformer (``predictor_depth``) → ``p_θ(s_y | s_x, z)`` at the targets;
    * target posterior: the same memory plus the target features' tokens (their values) →
      transformer (``target_depth``) → ``q(s_y | s_x, z, y)`` at the targets.

    The K target blocks are predicted separately (the context is repeated per block), so the
    target-side batch is ``B' = B·K`` with ``Tt = Nt`` tokens. With ``ema=True`` the target
    posterior reads the target features through an EMA copy of the tokenizer and context encoder
    applied to the full row (I-JEPA / T-JEPA style, no gradient); by default it tokenizes them
    directly and everything is trained by the gradient of the ELBO.
    """

    def __init__(
        self,
        schema: TableSchema | dict,
        families: dict[str, PosteriorFamily],
        latent_dim: int,
        aux_dim: int,
        ema: bool = False,
        dim: int = 64,
        depth: int = 8,
        heads: int = 4,
        ff: int = 256,
        num_cls: int = 2,
        predictor_depth: int = 4,
        target_depth: int = 4,
        pool: str = "mean",
    ):
        super().__init__()
        schema = schema if isinstance(schema, TableSchema) else TableSchema.from_dict(schema)
        if pool not in POOLS:
            raise ConfigError(f"model.architecture.pool = {pool!r}; allowed: {', '.join(POOLS)}")
        if num_cls < 1:
            raise ConfigError(f"model.architecture.num_cls = {num_cls}; must be >= 1")
        if dim % heads:
            raise ConfigError(f"model.architecture: dim = {dim} must be divisible by heads = {heads}")
        fam_sx, fam_z, fam_sy, fam_p = _families(families)
        self.schema, self.pool, self.num_cls = schema, pool, num_cls
        self.num_features = schema.num_features
        self.tokenizer = FeatureTokenizer(schema, dim)
        self.cls = nn.Parameter(torch.randn(1, num_cls, dim) * 0.02)
        self.encoder = Transformer(dim, depth, heads, ff)
        self.sx_head = zero_head(dim, fam_sx.num_params)
        self.cls_pos = nn.Parameter(torch.randn(1, num_cls, dim) * 0.02)
        # auxiliary encoder q(z | s_x)
        self.aux_in = nn.Linear(latent_dim, dim)
        self.aux_pool = AttentionPool(dim, heads)
        self.aux_head = nn.Sequential(mlp(dim, dim, 1), zero_head(dim, fam_z.num_params))
        # predictor p(s_y | s_x, z)
        self.pred_sx = nn.Linear(latent_dim, dim)
        self.pred_z = nn.Linear(aux_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.predictor = Transformer(dim, predictor_depth, heads, ff)
        self.pred_head = zero_head(dim, fam_p.num_params)
        # target posterior q(s_y | s_x, z, y)
        self.tp_sx = nn.Linear(latent_dim, dim)
        self.tp_z = nn.Linear(aux_dim, dim)
        self.target_net = Transformer(dim, target_depth, heads, ff)
        self.tp_head = zero_head(dim, fam_sy.num_params)
        self.ema = ema
        if ema:
            self.ema_tokenizer = copy.deepcopy(self.tokenizer).requires_grad_(False)
            self.ema_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
            self.tp_y = nn.Linear(dim, dim)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """``(online, EMA)`` pairs (empty without EMA)."""
        if not self.ema:
            return []
        return [(self.tokenizer, self.ema_tokenizer), (self.encoder, self.ema_encoder)]

    def encode(self, values: Tensor, idx: Tensor, tokenizer=None, encoder=None) -> Tensor:
        """Context-encoder states ``[B, num_cls + N, dim]`` of the features ``idx`` ``[B, N]``."""
        tokenizer, encoder = tokenizer or self.tokenizer, encoder or self.encoder
        tok = tokenizer(values.gather(1, idx), idx)
        cls = self.cls.expand(tok.shape[0], -1, -1)
        return encoder(torch.cat([cls, tok], 1))

    def _positions(self, idx: Tensor) -> Tensor:
        """Identity embeddings of the context tokens (CLS, then features) ``[B, num_cls + N, dim]``."""
        return torch.cat(
            [self.cls_pos.expand(idx.shape[0], -1, -1), self.tokenizer.feature_embedding(idx)], 1
        )

    def forward(
        self, batch: dict[str, Tensor], families: dict[str, PosteriorFamily], sample: bool = True
    ) -> dict[str, Any]:
        fam_sx, fam_z, fam_sy, fam_p = _families(families)
        values, ctx, tgt = batch["values"].float(), batch["context_idx"], batch["target_idx"]
        B, K, Nt = tgt.shape
        q_sx = fam_sx(self.sx_head(self.encode(values, ctx)))  # [B, m + Nc]
        s_x = draw(fam_sx, q_sx, sample)
        pos = self._positions(ctx)
        q_z = fam_z(self.aux_head(self.aux_pool(self.aux_in(s_x) + pos)))  # [B]
        z = draw(fam_z, q_z, sample)
        tflat = tgt.reshape(B * K, Nt)

        def rep(x: Tensor) -> Tensor:
            return x.repeat_interleave(K, 0)

        # predictor: lifted s_x tokens, z token, mask tokens carrying the targets' identities
        mem = torch.cat([self.pred_sx(s_x) + pos, self.pred_z(z).unsqueeze(1)], 1)
        masks = self.mask_token + self.tokenizer.feature_embedding(tflat)
        h = self.predictor(torch.cat([rep(mem), masks], 1))[:, -Nt:]
        p_sy = fam_p(self.pred_head(h))  # [B·K, Nt]
        # target posterior: the same memory (own projections) plus the targets' values
        mem_t = torch.cat([self.tp_sx(s_x) + pos, self.tp_z(z).unsqueeze(1)], 1)
        if self.ema:
            with torch.no_grad():
                full = torch.arange(self.num_features, device=values.device).expand(B, -1)
                hy = self.encode(values, full, self.ema_tokenizer, self.ema_encoder)[:, self.num_cls :]
                hy = F.layer_norm(hy, hy.shape[-1:])
            y_tok = self.tp_y(hy.gather(1, tgt.reshape(B, K * Nt, 1).expand(-1, -1, hy.shape[-1])))
            y_tok = y_tok.reshape(B * K, Nt, -1) + self.tokenizer.feature_embedding(tflat)
        else:
            y_tok = self.tokenizer(rep(values).gather(1, tflat), tflat)
        h = self.target_net(torch.cat([rep(mem_t), y_tok], 1))[:, -Nt:]
        q_sy = fam_sy(self.tp_head(h))  # [B·K, Nt]
        s_y = draw(fam_sy, q_sy, sample)
        return {
            "q_sx": q_sx,
            "s_x": s_x,
            "q_z": q_z,
            "z": z,
            "p_sy": p_sy,
            "q_sy": q_sy,
            "s_y": s_y,
            "x_latent": s_x[:, self.num_cls :],
            "x_obs": {"idx": ctx, "values": values.gather(1, ctx)},
            "y_latent": s_y,
            "y_obs": {"idx": tflat, "values": rep(values).gather(1, tflat)},
        }

    def embed(self, values: Tensor, family: PosteriorFamily) -> Tensor:
        """Row embedding from the posterior means of ``q(s_x | x)`` with every feature visible:
        ``pool`` = ``mean`` (all tokens) ``[B, d_s]``, ``cls`` (CLS tokens) ``[B, d_s]``,
        ``mean_cls`` (both, concatenated) ``[B, 2·d_s]`` or ``flatten`` ``[B, F·d_s]``."""
        B = values.shape[0]
        full = torch.arange(self.num_features, device=values.device).expand(B, -1)
        mu = family.mean(family(self.sx_head(self.encode(values.float(), full))))
        cls, feats = mu[:, : self.num_cls], mu[:, self.num_cls :]
        if self.pool == "mean":
            return mu.mean(1)
        if self.pool == "cls":
            return cls.mean(1)
        if self.pool == "mean_cls":
            return torch.cat([feats.mean(1), cls.mean(1)], -1)
        return feats.flatten(1)

    def posterior(self, values: Tensor, family: PosteriorFamily):
        """``q(s_x | x)`` of full rows, batch ``[B, num_cls + F]``."""
        full = torch.arange(self.num_features, device=values.device).expand(values.shape[0], -1)
        return family(self.sx_head(self.encode(values.float(), full)))

    def decoders(self, latent_dim: int, hidden: int = 64) -> tuple[nn.Module, nn.Module]:
        """Context and target decoders for this table (owned by the ELBO's terms)."""
        return FeatureDecoder(self.schema, latent_dim, hidden), FeatureDecoder(
            self.schema, latent_dim, hidden
        )


# ----------------------------------------------------------------------------- MLP (simulation)
@ARCHITECTURES.register("mlp")
class MLPCoupledNet(nn.Module):
    """The simulation study's networks: MLPs of ``width`` and ``depth`` hidden layers (paper:
    128, 2) for each of ``q(s_x|x)``, ``q(z|s_x)``, ``q(s_y|s_x,z,y)``, ``p_θ(s_y|s_x,z)`` and the
    decoders ``p(x|s_x)``, ``p(y|s_y)``. Rows are ``[x, y]`` split at the schema's ``x_dim``; every
    latent is one token (``T = 1``). With ``ema=True`` the target posterior reads ``y`` through an
    EMA copy of the ``x`` encoder's trunk (needs ``x_dim == y_dim``)."""

    def __init__(
        self,
        schema: dict,
        families: dict[str, PosteriorFamily],
        latent_dim: int,
        aux_dim: int,
        ema: bool = False,
        width: int = 128,
        depth: int = 2,
    ):
        super().__init__()
        if schema.get("kind") != "paired":
            raise ConfigError(
                "model.architecture = 'mlp' needs paired views (varjepa.SimulationDataModule); "
                "use 'transformer' for tables"
            )
        fam_sx, fam_z, fam_sy, fam_p = _families(families)
        self.x_dim, self.y_dim = int(schema["x_dim"]), int(schema["y_dim"])
        self.width, self.depth = width, depth
        self.enc_x = mlp(self.x_dim, width, depth)
        self.sx_head = zero_head(width, fam_sx.num_params)
        self.aux = nn.Sequential(mlp(latent_dim, width, depth), zero_head(width, fam_z.num_params))
        self.pred = nn.Sequential(mlp(latent_dim + aux_dim, width, depth), zero_head(width, fam_p.num_params))
        self.ema = ema
        if ema:
            if self.x_dim != self.y_dim:
                raise ConfigError(
                    f"model.ema with the mlp architecture needs x_dim == y_dim, got {self.x_dim}, {self.y_dim}"
                )
            self.ema_enc = copy.deepcopy(self.enc_x).requires_grad_(False)
            y_in = width
        else:
            y_in = self.y_dim
        self.tp = nn.Sequential(
            mlp(latent_dim + aux_dim + y_in, width, depth), zero_head(width, fam_sy.num_params)
        )

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """``(online, EMA)`` pairs (empty without EMA)."""
        return [(self.enc_x, self.ema_enc)] if self.ema else []

    def forward(
        self, batch: dict[str, Tensor], families: dict[str, PosteriorFamily], sample: bool = True
    ) -> dict[str, Any]:
        fam_sx, fam_z, fam_sy, fam_p = _families(families)
        v = batch["values"].float()
        x, y = v[:, : self.x_dim], v[:, self.x_dim :]
        q_sx = fam_sx(self.sx_head(self.enc_x(x)).unsqueeze(1))  # [B, 1]
        s_x = draw(fam_sx, q_sx, sample)  # [B, 1, d_s]
        q_z = fam_z(self.aux(s_x[:, 0]))  # [B]
        z = draw(fam_z, q_z, sample)
        sxz = torch.cat([s_x[:, 0], z], -1)
        p_sy = fam_p(self.pred(sxz).unsqueeze(1))  # [B, 1]
        if self.ema:
            with torch.no_grad():
                y_feat = self.ema_enc(y)
        else:
            y_feat = y
        q_sy = fam_sy(self.tp(torch.cat([sxz, y_feat], -1)).unsqueeze(1))  # [B, 1]
        s_y = draw(fam_sy, q_sy, sample)
        return {
            "q_sx": q_sx,
            "s_x": s_x,
            "q_z": q_z,
            "z": z,
            "p_sy": p_sy,
            "q_sy": q_sy,
            "s_y": s_y,
            "x_latent": s_x,
            "x_obs": {"values": x.unsqueeze(1)},
            "y_latent": s_y,
            "y_obs": {"values": y.unsqueeze(1)},
        }

    def posterior(self, values: Tensor, family: PosteriorFamily):
        """``q(s_x | x)`` of the rows' ``x`` part, batch ``[B, 1]``."""
        return family(self.sx_head(self.enc_x(values.float()[:, : self.x_dim])).unsqueeze(1))

    def embed(self, values: Tensor, family: PosteriorFamily) -> Tensor:
        """Posterior mean of ``s_x`` ``[B, d_s]``."""
        return family.mean(self.posterior(values, family))[:, 0]

    def decoders(self, latent_dim: int, hidden: int | None = None) -> tuple[nn.Module, nn.Module]:
        """``p(x | s_x)`` and ``p(y | s_y)``: Gaussian MLP decoders with learned σ."""
        w = hidden or self.width
        return (
            GaussianMLPDecoder(latent_dim, self.x_dim, w, self.depth),
            GaussianMLPDecoder(latent_dim, self.y_dim, w, self.depth),
        )
