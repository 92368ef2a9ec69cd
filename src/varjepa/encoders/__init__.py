"""Encoders (timm ViT tokens) and the transformer predictor."""

from .predictor import PredictorConfig, TransformerPredictor
from .vit import EncoderConfig, ViTEncoder, gather_tokens

__all__ = ["EncoderConfig", "PredictorConfig", "TransformerPredictor", "ViTEncoder", "gather_tokens"]
