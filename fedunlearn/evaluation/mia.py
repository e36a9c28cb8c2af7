"""Membership-inference attacks on per-sample features.

Attack scores are in percent. Per-sample attack features are the cross-entropy loss,
the confidence (softmax probability of the true class) and the prediction entropy,
computed once from a model's logits by
:func:`~fedunlearn.evaluation.logits.sample_features`.

Two membership-inference scores are provided:

* :func:`mia_attack` (the NoT / TIS "MIA"): an attacker trained on forget samples
  (members) against as many test samples (non-members), scored by stratified k-fold
  cross-validation. 50 % means it cannot tell them apart, which is what Retrain scores.
  The attacker is never scored on samples it was fitted on; one public implementation
  does that, and a flexible attacker then "detects" membership even in pure noise.
* :func:`mia_efficacy` (SalUn's "MIA-efficacy"): an SVC fitted on retain (members)
  against test (non-members), then applied to the forget set; the score is the share
  of forget samples it calls non-members (higher = more forgotten).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from sklearn.base import BaseEstimator, clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC


def _as_features(features: npt.ArrayLike, name: str) -> np.ndarray:
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be N x F features, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains non-finite values (did the model diverge?)")
    return array


def _balanced(
    first: np.ndarray, second: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Subsample the larger of two sets, without replacement, to the smaller's size.

    Balanced classes make 50 % the chance level of the attack's accuracy.
    """
    size = min(len(first), len(second))

    def take(array: np.ndarray) -> np.ndarray:
        if len(array) == size:
            return array
        return array[np.sort(rng.choice(len(array), size=size, replace=False))]

    return take(first), take(second)


def _stack(members: np.ndarray, nonmembers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels (1 = member, 0 = non-member) of a two-set problem."""
    x = np.concatenate([members, nonmembers])
    y = np.concatenate([np.ones(len(members), np.int64), np.zeros(len(nonmembers), np.int64)])
    return x, y


def mia_attack(
    member_feats: npt.ArrayLike,
    nonmember_feats: npt.ArrayLike,
    *,
    folds: int = 5,
    seed: int = 0,
    classifier: BaseEstimator | None = None,
) -> float:
    """Cross-validated membership-inference accuracy, in percent.

    The larger side is subsampled (under ``seed``) to the size ``n`` of the smaller one,
    so chance level is 50 %. The attacker is fitted on ``k - 1`` folds of a stratified,
    shuffled k-fold split and predicts the held-out fold; every sample is predicted
    exactly once by an attacker that never saw it, and the score is the accuracy of
    those out-of-fold predictions. Fitting and scoring on the same samples would
    reward a flexible attacker for memorizing noise.

    Parameters
    ----------
    member_feats, nonmember_feats
        ``(N, F)`` per-sample features (:func:`sample_features`) of members (the forget
        set) and non-members (test samples).
    folds
        Requested number of folds ``k``. Small sets use ``k = min(folds, n // 2)`` so
        that every fold holds at least two members and two non-members.
    seed
        Seed of the subsampling and of the fold assignment.
    classifier
        Unfitted scikit-learn classifier (cloned per fold). ``None`` means standardized
        features into a logistic regression (scikit-learn defaults, L2, ``C = 1``): a
        low-capacity attacker whose decision is a (soft) threshold on loss and
        confidence, the classic loss-threshold attack, and stable with few samples.

    Returns
    -------
    float
        Attack accuracy in ``[0, 100]``; NaN when ``n < 4`` (fewer than two folds of
        two samples per side are possible).
    """
    members = _as_features(member_feats, "member_feats")
    nonmembers = _as_features(nonmember_feats, "nonmember_feats")
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    rng = np.random.default_rng(seed)
    members, nonmembers = _balanced(members, nonmembers, rng)
    k = min(folds, len(members) // 2)
    if k < 2:
        return math.nan
    x, y = _stack(members, nonmembers)
    attacker = classifier if classifier is not None else _default_attacker()
    split = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    predicted = cross_val_predict(attacker, x, y, cv=split)
    return 100.0 * float(np.mean(predicted == y))


def _default_attacker() -> BaseEstimator:
    return make_pipeline(StandardScaler(), LogisticRegression())


def mia_efficacy(
    retain_feats: npt.ArrayLike,
    test_feats: npt.ArrayLike,
    forget_feats: npt.ArrayLike,
    *,
    seed: int = 0,
    classifier: BaseEstimator | None = None,
) -> float:
    """SalUn-style MIA-efficacy: share of forget samples predicted non-member, in percent.

    A shadow attacker is fitted on retain samples (members, label 1) against test
    samples (non-members, label 0), the larger side subsampled under ``seed`` to the
    smaller one's size, then predicts the forget samples. The forget samples take no
    part in fitting, so no cross-validation is needed.

    SalUn fits one SVC per single feature (correctness, confidence, entropy, ...) and
    reports them separately; here one SVC sees all three :func:`sample_features`
    jointly (loss, confidence, entropy), standardized first because the loss is
    unbounded while the other two are not. The SVC is SalUn's: RBF kernel, ``C = 3``,
    ``gamma = "auto"`` (``1 / n_features``, i.e. unit length scale per standardized
    feature).

    Parameters
    ----------
    retain_feats, test_feats, forget_feats
        ``(N, F)`` per-sample features of the retain, test and forget sets. The SVC's
        cost grows quadratically with the balanced size: cap large retain sets
        upstream (``evaluate_unlearning(max_retain=...)``).
    seed
        Seed of the subsampling.
    classifier
        Scikit-learn classifier to use instead of the SVC described above; a clone is
        fitted, the argument is left as given.

    Returns
    -------
    float
        Share of forget samples predicted non-member, in ``[0, 100]``; higher means the
        forget set looks more like unseen data. NaN when any of the sets is empty.
    """
    retain = _as_features(retain_feats, "retain_feats")
    test = _as_features(test_feats, "test_feats")
    forget = _as_features(forget_feats, "forget_feats")
    if min(len(retain), len(test), len(forget)) == 0:
        return math.nan
    retain, test = _balanced(retain, test, np.random.default_rng(seed))
    x, y = _stack(retain, test)
    shadow = clone(classifier) if classifier is not None else _default_efficacy_classifier()
    shadow.fit(x, y)
    return 100.0 * float(np.mean(shadow.predict(forget) == 0))


def _default_efficacy_classifier() -> BaseEstimator:
    return make_pipeline(StandardScaler(), SVC(C=3.0, gamma="auto", kernel="rbf"))
