"""Offline probes on frozen features (scikit-learn)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, RepeatedStratifiedKFold, StratifiedKFold
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


#: regularisation strengths searched by the cross-validated probe
PROBE_CS = (0.01, 0.1, 1.0, 10.0, 100.0)


def fit_linear_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    C: float | str = "cv",
    seed: int = 0,
    cs: tuple[float, ...] = PROBE_CS,
    repeats: int = 1,
):
    """Fit standardised logistic regression on ``x_train`` ``[N, D]``; returns the fitted pipeline
    (``.predict(x [M, D])``, ``.score(x, y)``).

    ``C="cv"`` picks the inverse regularisation strength from ``cs`` (default :data:`PROBE_CS`) by
    stratified 5-fold cross-validation on the training data only (standard linear evaluation),
    repeated ``repeats`` times with fresh folds (fewer folds if a class is smaller), and records
    the mean held-out-fold accuracy at that ``C`` as ``cv_accuracy_`` (the best of the grid, so
    slightly optimistic; fair for comparing feature sets on the same folds); a number fixes ``C``.
    """
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    if C != "cv":
        return clf.set_params(logisticregression__C=float(C)).fit(x_train, y_train)
    folds = int(min(5, np.bincount(np.unique(y_train, return_inverse=True)[1]).min()))
    if folds < 2:
        return clf.fit(x_train, y_train)
    if repeats > 1:
        cv = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    else:
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    search = GridSearchCV(clf, {"logisticregression__C": list(cs)}, cv=cv, n_jobs=-1)  # folds in parallel
    best = search.fit(x_train, y_train).best_estimator_
    best.cv_accuracy_ = float(search.best_score_)  # mean held-out-fold accuracy at the chosen C
    return best


def linear_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    per_class: int | None = None,
    seed: int = 0,
    C: float | str = "cv",
) -> float:
    """Test accuracy of standardised logistic regression fit on (a ``per_class`` subset of) the
    train split; ``C`` as in :func:`fit_linear_probe`."""
    if per_class is not None:
        keep = per_class_subset(y_train, per_class, seed)
        x_train, y_train = x_train[keep], y_train[keep]
    return float(fit_linear_probe(x_train, y_train, C, seed).score(x_test, y_test))
