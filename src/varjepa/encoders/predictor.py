"""I-JEPA-style predictor whose head outputs the parameters of a posterior family."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.layers import trunc_normal_
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from ..registry import ConfigError


@dataclass
class PredictorConfig:
    """Narrow transformer predictor sizes (I-JEPA uses a narrower, shallower predictor)."""

    embed_dim: int = 64
    depth: int = 3
    num_heads: int = 4
    mlp_ratio: float = 4.0


class TransformerPredictor(nn.Module):
    """Predicts, for each target block, one head vector per target patch.

    The context tokens are projected to ``embed_dim``, given fixed 2-D sin-cos positions,
    and concatenated with mask tokens placed at the target positions; each target block is
    processed separately (the context is repeated M times), as in I-JEPA.

    ``forward(ctx [B, Nc, D_in], context_idx [B, Nc], target_idx [B, M, Nt]) -> [B, M, Nt, out_dim]``
    """

    def __init__(self, cfg: PredictorConfig, grid_size: tuple[int, int], in_dim: int, out_dim: int):
        super().__init__()
        if cfg.embed_dim % cfg.num_heads:
            raise ConfigError(
                f"model.predictor.embed_dim = {cfg.embed_dim} is not divisible by num_heads = {cfg.num_heads}"
            )
        if cfg.embed_dim % 4:
            raise ConfigError(f"model.predictor.embed_dim = {cfg.embed_dim}; must be a multiple of 4")
        e = cfg.embed_dim
        self.embed = nn.Linear(in_dim, e)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, e))
        pos = build_sincos2d_pos_embed(list(grid_size), dim=e).reshape(-1, e)
        self.register_buffer("pos_embed", pos.float(), persistent=False)
        self.blocks = nn.ModuleList(
            Block(e, cfg.num_heads, cfg.mlp_ratio, qkv_bias=True) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(e)
        self.head = nn.Linear(e, out_dim)
        trunc_normal_(self.mask_token, std=0.02)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, ctx: Tensor, context_idx: Tensor, target_idx: Tensor) -> Tensor:
        B, M, Nt = target_idx.shape
        Nc = ctx.shape[1]
        x = self.embed(ctx) + self.pos_embed[context_idx]  # [B, Nc, E]
        x = x.repeat_interleave(M, dim=0)  # [B*M, Nc, E]
        t = self.mask_token + self.pos_embed[target_idx.reshape(B * M, Nt)]  # [B*M, Nt, E]
        h = torch.cat([x, t], dim=1)
        for blk in self.blocks:
            h = blk(h)
        h = self.norm(h[:, Nc:])
        return self.head(h).view(B, M, Nt, -1)
