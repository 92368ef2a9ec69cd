"""Offline probes on frozen features (scikit-learn)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader


@torch.no_grad()
def extract_features(model, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    """Pooled target-encoder features ``[N, D]`` and labels ``[N]`` for every batch of ``loader``."""
    feats, labels = [], []
    was_training = model.training
    model.eval()
    for batch in loader:
        feats.append(model.embed(batch["image"].to(model.device)).float().cpu())
        labels.append(batch["label"])
    model.train(was_training)
    return torch.cat(feats).numpy(), torch.cat(labels).numpy()


def per_class_subset(y: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of ``per_class`` examples of every class (fewer if a class is smaller), seeded."""
    rng = np.random.default_rng(seed)
    idx = [rng.permutation(np.flatnonzero(y == c))[:per_class] for c in np.unique(y)]
    return np.sort(np.concatenate(idx))


def linear_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    per_class: int | None = None,
    seed: int = 0,
    C: float = 1.0,
) -> float:
    """Test accuracy of standardised logistic regression fit on (a ``per_class`` subset of) the train split."""
    if per_class is not None:
        keep = per_class_subset(y_train, per_class, seed)
        x_train, y_train = x_train[keep], y_train[keep]
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    clf.fit(x_train, y_train)
    return float(clf.score(x_test, y_test))
