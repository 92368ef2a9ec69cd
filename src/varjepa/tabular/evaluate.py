"""Downstream evaluation of tabular embeddings (the paper's Table 2 protocol).

The same three scikit-learn models — logistic regression, an MLP and gradient-boosted trees —
are fitted on frozen Var-T-JEPA embeddings and on the raw features (standardised numeric
columns, one-hot categorical ones) of the training split and scored on the test split, with
selective prediction: accuracy on the ``c`` most confident share of the test rows for coverages
``c`` = 100 / 90 / 80 / 50 %. Confidence is the downstream model's maximum class probability
(the same rule for embeddings and raw features); a model-side score (e.g. Var-T-JEPA's
predictive std) can be evaluated with the same function.

Logistic regression (standardised inputs) picks its inverse regularisation ``C`` from
:data:`LOGREG_CS` (10^-4 … 10^2, decades) by stratified 5-fold cross-validation repeated
:data:`CV_REPEATS` times on the training rows only — the same protocol for embeddings and raw
features. The grid reaches below the generic probe's (:data:`varjepa.eval.probes.PROBE_CS`, which
starts at 0.01) because wide embeddings (e.g. 30 features x 16 = 480 dimensions on 409 rows) are
best regularised harder than that; the repeats make the choice of ``C`` less dependent on the
fold split (a single 5-fold split moved the raw breast-cancer baseline between C = 0.1 and 1).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..eval.probes import fit_linear_probe
from ..eval.uncertainty import selective_accuracy

COVERAGES = (1.0, 0.9, 0.8, 0.5)
#: inverse regularisation strengths searched by the downstream logistic regression
LOGREG_CS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
#: repeats of the stratified 5-fold cross-validation that picks ``C``
CV_REPEATS = 2


def fit_logreg(x: np.ndarray, y: np.ndarray, seed: int = 0):
    """Standardised logistic regression on ``x`` ``[N, D]``, ``C`` from :data:`LOGREG_CS` by
    stratified 5-fold cross-validation repeated :data:`CV_REPEATS` times on ``(x, y)`` only
    (fewer folds if a class is smaller); returns the refitted pipeline."""
    return fit_linear_probe(x, y, "cv", seed, cs=LOGREG_CS, repeats=CV_REPEATS)


def downstream_models(seed: int = 0) -> dict[str, Callable[[np.ndarray, np.ndarray], object]]:
    """``{name: fit(x [N, D], y [N]) -> fitted classifier}`` for ``logreg`` (:func:`fit_logreg`),
    ``mlp`` (standardised, one hidden layer of 128) and ``gbt`` (histogram
    gradient-boosted trees), all seeded."""

    def logreg(x, y):
        return fit_logreg(x, y, seed)

    def mlp(x, y):
        clf = MLPClassifier((128,), alpha=1e-3, max_iter=1000, random_state=seed)
        return make_pipeline(StandardScaler(), clf).fit(x, y)

    def gbt(x, y):
        return HistGradientBoostingClassifier(random_state=seed).fit(x, y)

    return {"logreg": logreg, "mlp": mlp, "gbt": gbt}


def selective_by_coverage(
    correct: np.ndarray, uncertainty: np.ndarray, coverages=COVERAGES
) -> dict[str, float]:
    """``{"acc@100": ..., "acc@90": ..., ...}``: accuracy on the ``c`` least uncertain share of
    the rows (``correct`` ``[N]`` booleans, ``uncertainty`` ``[N]``; ties by position)."""
    sel = selective_accuracy(correct, uncertainty, [1.0 - c for c in coverages])
    return {f"acc@{round(100 * c)}": sel[float(1.0 - c)] for c in coverages}


def evaluate_features(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    seed: int = 0,
    coverages=COVERAGES,
    extra_uncertainty: np.ndarray | dict[str, np.ndarray] | None = None,
    models: tuple[str, ...] = ("logreg", "mlp", "gbt"),
    keep_correct: bool = False,
) -> dict[str, dict]:
    """Fit every downstream model on ``(x_train [N, D], y_train)`` and score it on the test split.

    Returns ``{model: {"acc@100": .., "acc@90": .., "acc@80": .., "acc@50": ..}}`` where rows are
    withheld by the model's own confidence; with ``extra_uncertainty`` ``[M]`` (one score per test
    row) also ``{"sel_model@90": ..}`` etc., rows withheld by that score instead; a dict
    ``{name: [M]}`` gives ``{"sel_<name>@90": ..}`` etc. for each score (one fit per model).
    Logistic regression also reports ``"cv_accuracy"``, its cross-validated accuracy on the
    training rows at the chosen ``C`` (a selection score that never touches the test rows;
    absent when a class has fewer than two training rows, so there is nothing to cross-validate).
    With ``keep_correct`` also ``{"correct": [M] bool array}`` (for paired comparisons).
    """
    if extra_uncertainty is not None and not isinstance(extra_uncertainty, dict):
        extra_uncertainty = {"model": extra_uncertainty}
    fits = downstream_models(seed)
    out: dict[str, dict[str, float]] = {}
    for name in models:
        clf = fits[name](x_train, y_train)
        proba = clf.predict_proba(x_test)
        pred = clf.classes_[proba.argmax(1)]
        correct = pred == y_test
        res = selective_by_coverage(correct, 1.0 - proba.max(1), coverages)
        for key, score in (extra_uncertainty or {}).items():
            alt = selective_by_coverage(correct, score, coverages)
            res.update(
                {k.replace("acc@", f"sel_{key}@"): v for k, v in alt.items() if not k.endswith("@100")}
            )
        if hasattr(clf, "cv_accuracy_"):  # logistic regression: its cross-validated training accuracy
            res["cv_accuracy"] = clf.cv_accuracy_
        if keep_correct:
            res["correct"] = correct
        out[name] = res
    return out
