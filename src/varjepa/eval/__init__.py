"""Evaluation: probes on frozen features."""

from .collapse import effective_rank
from .probes import extract_features, linear_probe, per_class_subset

__all__ = ["effective_rank", "extract_features", "linear_probe", "per_class_subset"]
