"""Encoders (timm ViT tokens) and the transformer predictor."""

from .predictor import PredictorConfig, TransformerPredictor
from .vit import POOLS, EncoderConfig, ViTEncoder, gather_tokens

__all__ = ["POOLS", "EncoderConfig", "PredictorConfig", "TransformerPredictor", "ViTEncoder", "gather_tokens"]
