"""Vision-transformer token encoder on top of timm.

``ViTEncoder`` wraps any timm ``VisionTransformer`` (built from sizes, or by
``timm.create_model`` name with ``pretrained=False``) and returns patch tokens. Given
``idx`` it encodes only those patches (the JEPA context view): patch embedding and
positional embedding are applied to the whole grid, then the kept tokens are gathered
before the transformer blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from ..registry import ConfigError


def gather_tokens(x: Tensor, idx: Tensor) -> Tensor:
    """Pick tokens: ``x`` ``[B, N, D]``, ``idx`` long ``[B, K]`` → ``[B, K, D]``."""
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


@dataclass
class EncoderConfig:
    """Sizes of the ViT encoder, or a timm model name (``model_name``) for users with real data.

    ``img_size`` and ``in_chans`` always apply; the other sizes only when ``model_name`` is None.
    ``pool`` (one of :data:`POOLS`) sets how :meth:`ViTEncoder.pool` makes pooled features.
    """

    model_name: str | None = None
    img_size: int = 8
    patch_size: int = 1
    in_chans: int = 1
    embed_dim: int = 96
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.0
    pool: str = "avg"


#: how :meth:`ViTEncoder.pool` turns tokens into one feature vector
POOLS = {
    "avg": "mean of the last block's patch tokens (the residual stream before the final norm)",
    "avg_norm": "mean of the last block's patch tokens, then the final norm (timm's "
    "global_pool='avg' with fc_norm, as in MAE/BEiT linear probing)",
    "token_avg": "mean of the final-normed patch tokens (timm's global_pool='avg' without fc_norm)",
    "avg_2x2": "means of the last block's patch tokens over the 2 x 2 quadrants of the patch grid, "
    "concatenated (top-left, top-right, bottom-left, bottom-right): 4·D features that keep where "
    "each part of the image is (one level of a spatial pyramid; needs an even grid)",
}

#: pooled feature size per token dimension D, for modes that are not one D-vector
POOL_WIDTH = {"avg_2x2": 4}


class ViTEncoder(nn.Module):
    """Patch-token ViT encoder.

    ``forward(images [B, C, H, W], idx [B, K] | None) -> tokens [B, K or N, D]`` after the final
    norm, prefix (class/register) tokens removed.
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        if cfg.pool not in POOLS:
            raise ConfigError(f"model.encoder.pool = '{cfg.pool}'; allowed: {', '.join(POOLS)}")
        self.pool_mode = cfg.pool
        if cfg.model_name:
            try:
                vit = timm.create_model(
                    cfg.model_name,
                    pretrained=False,
                    num_classes=0,
                    global_pool="",
                    img_size=cfg.img_size,
                    in_chans=cfg.in_chans,
                    drop_path_rate=cfg.drop_path_rate,
                )
            except RuntimeError as e:
                raise ConfigError(f"model.encoder.model_name = '{cfg.model_name}': {e}") from e
        else:
            if cfg.embed_dim % cfg.num_heads:
                raise ConfigError(
                    f"model.encoder.embed_dim = {cfg.embed_dim} is not divisible by num_heads = {cfg.num_heads}"
                )
            if cfg.img_size % cfg.patch_size:
                raise ConfigError(
                    f"model.encoder.img_size = {cfg.img_size} is not divisible by patch_size = {cfg.patch_size}"
                )
            vit = VisionTransformer(
                img_size=cfg.img_size,
                patch_size=cfg.patch_size,
                in_chans=cfg.in_chans,
                embed_dim=cfg.embed_dim,
                depth=cfg.depth,
                num_heads=cfg.num_heads,
                mlp_ratio=cfg.mlp_ratio,
                drop_path_rate=cfg.drop_path_rate,
                num_classes=0,
                global_pool="",
                class_token=False,
            )
        if not isinstance(vit, VisionTransformer):
            raise ConfigError(
                f"model.encoder.model_name = '{cfg.model_name}' is a {type(vit).__name__}; "
                "varjepa needs a timm VisionTransformer (e.g. vit_tiny_patch16_224, vit_small_patch16_224)"
            )
        if getattr(vit, "dynamic_img_size", False):
            raise ConfigError("model.encoder: timm models with dynamic_img_size are not supported")
        self.vit = vit
        self.embed_dim: int = vit.embed_dim
        self.grid_size: tuple[int, int] = tuple(vit.patch_embed.grid_size)
        self.num_patches: int = self.grid_size[0] * self.grid_size[1]
        self.num_prefix_tokens: int = vit.num_prefix_tokens
        if cfg.pool == "avg_2x2" and (self.grid_size[0] % 2 or self.grid_size[1] % 2):
            raise ConfigError(
                f"model.encoder.pool = 'avg_2x2' needs an even patch grid; this encoder's grid is "
                f"{self.grid_size[0]} x {self.grid_size[1]} (img_size / patch_size): change the "
                "sizes or pick another pool"
            )
        #: size of :meth:`pool`'s features
        self.pooled_dim: int = self.embed_dim * POOL_WIDTH.get(cfg.pool, 1)

    def features(self, images: Tensor, idx: Tensor | None = None) -> Tensor:
        """The final norm's input: all tokens (prefix first) ``[B, P + K or N, D]`` of ``images``
        ``[B, C, H, W]``, only the patches in ``idx`` ``[B, K]`` if given."""
        v = self.vit
        x = v._pos_embed(v.patch_embed(images))  # [B, P + N, D]
        if idx is not None:
            p = self.num_prefix_tokens
            x = torch.cat([x[:, :p], gather_tokens(x[:, p:], idx)], dim=1)
        x = v.norm_pre(v.patch_drop(x))
        return v.blocks(x)

    def forward(self, images: Tensor, idx: Tensor | None = None) -> Tensor:
        """Final-normed patch tokens ``[B, K or N, D]`` of ``images`` ``[B, C, H, W]``; only the
        patches in ``idx`` ``[B, K]`` if given."""
        return self.vit.norm(self.features(images, idx))[:, self.num_prefix_tokens :]

    def pool_features(self, feats: Tensor) -> Tensor:
        """Pooled features ``[B, pooled_dim]`` from :meth:`features` ``[B, P + N, D]`` of whole
        images (see :data:`POOLS`)."""
        p = self.num_prefix_tokens
        if self.pool_mode == "token_avg":
            return self.vit.norm(feats)[:, p:].mean(1)
        if self.pool_mode == "avg_2x2":
            (gh, gw), (b, d) = self.grid_size, (feats.shape[0], feats.shape[-1])
            grid = feats[:, p:].reshape(b, 2, gh // 2, 2, gw // 2, d)  # tokens are row-major
            return grid.mean((2, 4)).flatten(1)
        pooled = feats[:, p:].mean(1)
        return self.vit.norm(pooled) if self.pool_mode == "avg_norm" else pooled

    def pool(self, images: Tensor) -> Tensor:
        """Pooled features ``[B, pooled_dim]`` of whole images ``[B, C, H, W]`` (see :data:`POOLS`)."""
        return self.pool_features(self.features(images))
