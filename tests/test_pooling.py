"""Pooled features: the encoder's pooling modes against timm's own pooling, the feature tap, and
evaluation loaders that never see training augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from timm.models.vision_transformer import VisionTransformer

from varjepa import ImageFolderDataModule
from varjepa.callbacks.online import FeatureTap
from varjepa.encoders import EncoderConfig, ViTEncoder
from varjepa.registry import ConfigError

CFG = dict(img_size=8, patch_size=2, in_chans=1, embed_dim=32, depth=2, num_heads=4)


def _encoder(pool: str) -> ViTEncoder:
    torch.manual_seed(0)
    enc = ViTEncoder(EncoderConfig(**CFG, pool=pool)).eval()
    with torch.no_grad():  # a non-trivial final norm, so pooling before or after it differs
        enc.vit.norm.weight.uniform_(0.5, 1.5)
        enc.vit.norm.bias.normal_()
    return enc


def _timm_avg_fc_norm() -> VisionTransformer:
    """timm's own ViT of the same sizes with ``global_pool="avg"`` and ``fc_norm`` (the reference)."""
    return VisionTransformer(**CFG, num_classes=0, class_token=False, global_pool="avg", fc_norm=True).eval()


def test_avg_norm_pool_equals_timms_avg_pool_with_fc_norm():
    enc = _encoder("avg_norm")
    ref = _timm_avg_fc_norm()
    state = {
        k.replace("norm.", "fc_norm.") if k.startswith("norm.") else k: v
        for k, v in enc.vit.state_dict().items()
    }
    ref.load_state_dict(state)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(enc.pool(x), ref(x), atol=1e-5, rtol=1e-5)
        tokens = enc(x)  # forward is unchanged: final-normed tokens
        torch.testing.assert_close(tokens, enc.vit.norm(ref.forward_features(x)), atol=1e-5, rtol=1e-5)
    # and it is not the mean of the normed tokens (the two modes really differ)
    assert (enc.pool(x) - tokens.mean(1)).abs().max() > 1e-2


def test_token_avg_pool_is_the_mean_of_forward_tokens():
    enc = _encoder("token_avg")
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(enc.pool(x), enc(x).mean(1))


def test_avg_pool_is_the_mean_of_timms_unnormed_tokens():
    enc = _encoder("avg")
    ref = _timm_avg_fc_norm()
    res = ref.load_state_dict(enc.vit.state_dict(), strict=False)  # all but the norms: its norm is Identity
    assert set(res.unexpected_keys) == {"norm.weight", "norm.bias"}
    assert set(res.missing_keys) == {"fc_norm.weight", "fc_norm.bias"}
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(enc.pool(x), ref.forward_features(x).mean(1), atol=1e-5, rtol=1e-5)


def test_avg_2x2_pool_is_the_quadrant_means_of_timms_unnormed_tokens():
    """4 x 4 patch grid: each quadrant's 2 x 2 tokens, picked by (row, column), averaged; concatenated
    top-left, top-right, bottom-left, bottom-right."""
    enc = _encoder("avg_2x2")
    assert enc.pooled_dim == 4 * 32
    ref = _timm_avg_fc_norm()
    ref.load_state_dict(enc.vit.state_dict(), strict=False)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        tokens = ref.forward_features(x)  # [5, 16, 32], patch n at row n // 4, column n % 4
        quads = []
        for rows, cols in (((0, 1), (0, 1)), ((0, 1), (2, 3)), ((2, 3), (0, 1)), ((2, 3), (2, 3))):
            picked = [tokens[:, 4 * r + c] for r in rows for c in cols]
            quads.append(torch.stack(picked).mean(0))
        torch.testing.assert_close(enc.pool(x), torch.cat(quads, 1), atol=1e-5, rtol=1e-5)
        # the quadrants average to the global mean (the `avg` pool)
        torch.testing.assert_close(enc.pool(x).view(5, 4, 32).mean(1), tokens.mean(1), atol=1e-5, rtol=1e-5)


def test_avg_2x2_pool_needs_an_even_grid():
    with pytest.raises(ConfigError, match=r"'avg_2x2' needs an even patch grid.*3 x 3"):
        ViTEncoder(EncoderConfig(**{**CFG, "img_size": 6}, pool="avg_2x2"))


@pytest.mark.parametrize("pool", ["avg", "avg_norm", "token_avg", "avg_2x2"])
def test_feature_tap_pools_full_image_calls_only(pool):
    enc = _encoder(pool)
    tap = FeatureTap(enc)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        enc(x)
        torch.testing.assert_close(tap.output, enc.pool(x))
        assert tap.images is x
        enc(torch.randn(3, 1, 8, 8), torch.arange(4).expand(3, 4))  # a context call: ignored
        assert tap.images is x
        enc.pool(torch.randn(3, 1, 8, 8))  # not a forward of the encoder: ignored
        assert tap.images is x
    tap.remove()
    with torch.no_grad():
        enc(torch.randn(3, 1, 8, 8))
    assert tap.images is None and tap.output is None


def test_unknown_pool_is_a_config_error():
    with pytest.raises(
        ConfigError, match=r"model.encoder.pool = 'max'.*allowed: avg, avg_norm, token_avg, avg_2x2"
    ):
        ViTEncoder(EncoderConfig(**CFG, pool="max"))


def test_plain_train_loader_never_augments(tmp_path):
    """With random crops and flips on, probes still read the training images un-augmented."""
    root = tmp_path / "imgs"
    grad = np.tile(np.arange(16, dtype=np.uint8)[None, :] * 16, (16, 1))
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.roll(grad, i, axis=1)).convert("RGB").save(root / cls / f"{i}.png")
    aug = ImageFolderDataModule(str(root), image_size=8, val_fraction=0.25, augment=True, batch_size=8)
    plain = ImageFolderDataModule(str(root), image_size=8, val_fraction=0.25, augment=False, batch_size=8)
    aug.setup(), plain.setup()
    torch.manual_seed(0)
    first = next(iter(aug.plain_dataloader("train")))["image"]
    again = next(iter(aug.plain_dataloader("train")))["image"]
    want = next(iter(plain.plain_dataloader("train")))["image"]
    torch.testing.assert_close(first, again)
    torch.testing.assert_close(first, want)
    # while the training set itself does augment
    drawn = torch.stack([aug.train_set[i][0] for i in range(len(aug.train_set))])
    assert (drawn - want).abs().max() > 1e-3
