"""Unlearning metrics: accuracies, membership inference, gaps, ratios, backdoor, KLoM.

All accuracies and attack scores are in percent. Per-sample attack features are the
cross-entropy loss, the confidence (softmax probability of the true class) and the
prediction entropy, computed once from a model's logits by :func:`sample_features`.

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
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from torch import Tensor, nn

from fedunlearn.data.images import ImageData
from fedunlearn.training import Device, predict_logits

#: The metrics NoT's "Avg. Gap" averages (Retain, Forget, Test accuracy and MIA).
GAP_KEYS: tuple[str, ...] = ("retain", "forget", "test", "mia")

#: Columns of :func:`sample_features`.
FEATURE_NAMES: tuple[str, ...] = ("loss", "confidence", "entropy")


# ---- per-sample quantities ------------------------------------------------------------


def _check_logits(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Logits as float64 on the CPU (features of confident models underflow in float32)."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be N x C, got shape {tuple(logits.shape)}")
    if labels.dim() != 1 or len(labels) != len(logits):
        raise ValueError(
            f"labels must be 1-D with one entry per logit row: {len(logits)} rows, "
            f"labels of shape {tuple(labels.shape)}"
        )
    return logits.detach().cpu().double(), labels.detach().cpu().long()


def sample_features(logits: Tensor, labels: Tensor) -> np.ndarray:
    """Per-sample membership features: loss, confidence and prediction entropy.

    Parameters
    ----------
    logits
        ``(N, C)`` logits of one model.
    labels
        ``(N,)`` integer labels (the labels the model was trained with).

    Returns
    -------
    numpy.ndarray
        ``(N, 3)`` float64, columns :data:`FEATURE_NAMES`: cross-entropy loss,
        softmax probability of the true class (``exp(-loss)``), and the entropy of the
        softmax (nats).
    """
    logits, labels = _check_logits(logits, labels)
    log_probs = F.log_softmax(logits, dim=1)
    loss = -log_probs.gather(1, labels[:, None]).squeeze(1)
    confidence = torch.exp(-loss)
    # xlogy-style: a probability of exactly 0 contributes 0, not 0 * -inf = NaN.
    entropy = -torch.where(log_probs.isneginf(), 0.0, log_probs.exp() * log_probs).sum(dim=1)
    return torch.stack([loss, confidence, entropy], dim=1).numpy()


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Share of samples whose arg-max logit is the label, in percent.

    Parameters
    ----------
    logits
        ``(N, C)`` logits, ``N >= 1``.
    labels
        ``(N,)`` integer labels.

    Returns
    -------
    float
        Accuracy in ``[0, 100]``.
    """
    logits, labels = _check_logits(logits, labels)
    if len(labels) == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return 100.0 * (logits.argmax(dim=1) == labels).double().mean().item()


def margins(logits: Tensor, labels: Tensor) -> np.ndarray:
    """Classifier margins: correct logit minus the log-sum-exp of the other logits.

    This is the per-sample quantity KLoM compares (it equals ``logit(p_true)`` of the
    softmax, so it is finite where the loss saturates).

    Parameters
    ----------
    logits
        ``(N, C)`` logits with ``C >= 2``.
    labels
        ``(N,)`` integer labels.

    Returns
    -------
    numpy.ndarray
        ``(N,)`` float64 margins.
    """
    logits, labels = _check_logits(logits, labels)
    if logits.shape[1] < 2:
        raise ValueError("margins need at least two classes")
    correct = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], -math.inf)
    return (correct - others.logsumexp(dim=1)).numpy()


# ---- membership inference -------------------------------------------------------------


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


# ---- gaps and ratios -------------------------------------------------------------------


def average_gap(
    metrics: Mapping[str, float],
    reference: Mapping[str, float],
    keys: tuple[str, ...] = GAP_KEYS,
) -> float:
    """NoT's average gap: mean of ``|metrics[k] - reference[k]|`` over ``keys``.

    Parameters
    ----------
    metrics
        The method's metrics (percent).
    reference
        Retrain's metrics of the same scenario and seed.
    keys
        Metrics to average; default Retain, Forget, Test accuracy and MIA.

    Returns
    -------
    float
        Mean absolute difference in percentage points (NaN if any term is NaN).
    """
    if not keys:
        raise ValueError("average_gap needs at least one key")
    return float(np.mean([abs(float(metrics[k]) - float(reference[k])) for k in keys]))


def _ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN when the denominator is 0 (undefined)."""
    return math.nan if denominator == 0 else numerator / denominator


def nta(test_unlearned: float, test_retrain: float) -> float:
    """Normalized Test Accuracy: unlearned test accuracy over Retrain's.

    Parameters
    ----------
    test_unlearned, test_retrain
        Test accuracies (same unit).

    Returns
    -------
    float
        1 means Retrain's accuracy; NaN when Retrain's accuracy is 0.
    """
    return _ratio(test_unlearned, test_retrain)


def nfs(orig: float, unlearned: float, retrain: float) -> float:
    """Normalized Forgetting Score ``(orig - unlearned) / (orig - retrain)``.

    Use forget(target)-set accuracies for NFS and MIA scores for NFS_MIA.

    Parameters
    ----------
    orig, unlearned, retrain
        The metric for the original (pre-unlearning), unlearned and retrained models.

    Returns
    -------
    float
        1 means the unlearned model forgot as much as Retrain, 0 nothing. NaN when
        ``orig == retrain``: then there was nothing to forget by this metric and the
        score is undefined (near-equal values make it unstable; report them too).
    """
    return _ratio(orig - unlearned, orig - retrain)


def rtr(unlearn_seconds: float, retrain_seconds: float) -> float:
    """Recovery Time Ratio: unlearning time over retraining time.

    Parameters
    ----------
    unlearn_seconds, retrain_seconds
        Wall times, non-negative.

    Returns
    -------
    float
        Below 1 means faster than retraining; NaN when ``retrain_seconds`` is 0.
    """
    if unlearn_seconds < 0 or retrain_seconds < 0:
        raise ValueError(f"times must be non-negative, got {unlearn_seconds}, {retrain_seconds}")
    return _ratio(unlearn_seconds, retrain_seconds)


# ---- backdoor --------------------------------------------------------------------------


def backdoor_metrics(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    target: int,
    trigger: Callable[[Tensor], Tensor],
    batch_size: int,
    device: Device,
) -> dict[str, float]:
    """Attack success rate and backdoor accuracy on triggered clean images.

    Only images whose true label differs from ``target`` count: on a target-class image
    a target prediction is no evidence of the backdoor.

    Parameters
    ----------
    model
        The model under test (put in eval mode for the pass, then restored).
    images, labels
        Clean test images ``(N, C, H, W)`` and their true labels.
    target
        The class the trigger forces.
    trigger
        Maps a batch of images to the same images with the trigger, e.g.
        ``functools.partial(add_trigger, size=3, value=trigger_value(train.images))``.
    batch_size, device
        As in :func:`fedunlearn.training.predict_logits`.

    Returns
    -------
    dict
        ``asr``: percent of the triggered images classified as ``target``;
        ``backdoor_acc``: percent classified as their true label.
    """
    labels = labels.cpu().long()
    keep = labels != target
    if not bool(keep.any()):
        raise ValueError(f"no image with a label other than the backdoor target {target}")
    triggered = trigger(images[keep])
    predicted = predict_logits(model, triggered, batch_size=batch_size, device=device).argmax(1)
    return {
        "asr": 100.0 * (predicted == target).double().mean().item(),
        "backdoor_acc": 100.0 * (predicted == labels[keep]).double().mean().item(),
    }


# ---- KLoM ------------------------------------------------------------------------------


def _binned_probabilities(
    values: np.ndarray, low: np.ndarray, width: np.ndarray, bins: int, eps: float
) -> np.ndarray:
    """``(samples, bins)`` smoothed histograms of ``values`` (models x samples)."""
    samples = values.shape[1]
    # Samples whose pooled values are all equal get width 0: everything in bin 0.
    scale = np.divide(bins, width, out=np.zeros_like(width), where=width > 0)
    index = np.clip(np.floor((values - low) * scale), 0, bins - 1).astype(np.int64)
    flat = (np.arange(samples) * bins + index).ravel()
    counts = np.bincount(flat, minlength=samples * bins).reshape(samples, bins)
    probs = counts / values.shape[0] + eps
    return probs / probs.sum(axis=1, keepdims=True)


def klom(
    unlearned_margins: npt.ArrayLike,
    oracle_margins: npt.ArrayLike,
    *,
    bins: int = 20,
    eps: float = 1e-5,
    clip: float = 100.0,
    percentile: float = 95.0,
) -> float:
    """KLoM: a percentile over samples of the KL divergence of margin distributions.

    For each sample, the margins (:func:`margins`) of the unlearned models and of the
    oracle (retrained) models are clipped to ``[-clip, clip]`` and binned into ``bins``
    equal bins spanning the pooled range of both groups for that sample; ``eps`` is
    added to every bin's probability before renormalizing (so empty bins do not give
    an infinite divergence); the score is ``KL(unlearned || oracle)``, the direction of
    the reference implementation. KLoM is the ``percentile`` of the per-sample scores.
    Defaults follow that implementation (20 bins, 1e-5, clip at 100) and papers 003 /
    Georgiev et al. (95th percentile). Near 0 is perfect unlearning; with few models the
    histograms are noisy (paper 003 found about 80 models per group needed).

    Parameters
    ----------
    unlearned_margins
        ``(models, samples)`` margins of independently unlearned models.
    oracle_margins
        ``(models', samples)`` margins of oracle models on the same samples.
    bins, eps, clip, percentile
        Histogram bins, additive smoothing, margin clipping and reported percentile.

    Returns
    -------
    float
        The ``percentile``-th percentile of per-sample KL divergences (nats).
    """
    unlearned = np.asarray(unlearned_margins, dtype=np.float64)
    oracle = np.asarray(oracle_margins, dtype=np.float64)
    if unlearned.ndim != 2 or oracle.ndim != 2:
        raise ValueError("margins must be models x samples arrays")
    if unlearned.shape[1] != oracle.shape[1] or unlearned.shape[1] == 0:
        raise ValueError(
            f"both groups need the same, non-zero number of samples, got "
            f"{unlearned.shape[1]} and {oracle.shape[1]}"
        )
    if min(len(unlearned), len(oracle)) == 0:
        raise ValueError("each group needs at least one model")
    if bins < 1 or eps <= 0 or clip <= 0:
        raise ValueError(f"need bins >= 1, eps > 0 and clip > 0, got {bins}, {eps}, {clip}")
    unlearned = np.clip(unlearned, -clip, clip)
    oracle = np.clip(oracle, -clip, clip)
    low = np.minimum(unlearned.min(axis=0), oracle.min(axis=0))
    width = np.maximum(unlearned.max(axis=0), oracle.max(axis=0)) - low
    p = _binned_probabilities(unlearned, low, width, bins, eps)
    q = _binned_probabilities(oracle, low, width, bins, eps)
    per_sample = np.sum(p * np.log(p / q), axis=1)
    return float(np.percentile(per_sample, percentile))


# ---- everything at once ----------------------------------------------------------------


def evaluate_unlearning(
    model: nn.Module,
    *,
    retain: ImageData,
    forget: ImageData,
    test: ImageData,
    batch_size: int,
    device: Device,
    seed: int,
    folds: int = 5,
    backdoor: Mapping[str, Any] | None = None,
    max_retain: int | None = None,
) -> dict[str, float]:
    """Every per-model unlearning metric in one pass, in percent.

    Logits are computed once per set and reused by the accuracies and both attacks.

    Parameters
    ----------
    model
        The model to judge.
    retain, forget, test
        Retained training data, the data to forget (for a backdoor: the poisoned
        samples with their poisoned labels) and held-out test data.
    batch_size, device
        As in :func:`fedunlearn.training.predict_logits`.
    seed
        Seed of the retain subsample, the attacks' subsampling and folds.
    folds
        Folds of :func:`mia_attack`.
    backdoor
        ``{"target": int, "trigger": callable}`` to add :func:`backdoor_metrics` on the
        test set; ``None`` for other scenarios.
    max_retain
        If set and the retain set is larger, a uniform random subset of this many
        retain samples (drawn under ``seed``) is used for the retain accuracy and as the
        SVC's members in :func:`mia_efficacy`; this bounds the cost of both (the SVC
        grows quadratically). ``None`` uses all of it.

    Returns
    -------
    dict of str to float
        ``retain``, ``forget``, ``test`` (accuracies), ``mia`` (:func:`mia_attack`,
        forget vs. as many test samples), ``mia_efficacy`` (:func:`mia_efficacy`), and
        with ``backdoor`` also ``asr`` and ``backdoor_acc``.
    """
    if max_retain is not None and max_retain < 1:
        raise ValueError(f"max_retain must be positive, got {max_retain}")
    if max_retain is not None and len(retain) > max_retain:
        chosen = np.random.default_rng(seed).choice(len(retain), size=max_retain, replace=False)
        retain = retain.subset(np.sort(chosen))
    logits = {
        name: predict_logits(model, data.images, batch_size=batch_size, device=device)
        for name, data in (("retain", retain), ("forget", forget), ("test", test))
    }
    labels = {"retain": retain.labels, "forget": forget.labels, "test": test.labels}
    feats = {name: sample_features(logits[name], labels[name]) for name in logits}
    result = {name: accuracy(logits[name], labels[name]) for name in logits}
    result["mia"] = mia_attack(feats["forget"], feats["test"], folds=folds, seed=seed)
    result["mia_efficacy"] = mia_efficacy(
        feats["retain"], feats["test"], feats["forget"], seed=seed
    )
    if backdoor is not None:
        if set(backdoor) != {"target", "trigger"}:
            raise ValueError(f"backdoor needs exactly 'target' and 'trigger', got {set(backdoor)}")
        result |= backdoor_metrics(
            model,
            test.images,
            test.labels,
            target=int(backdoor["target"]),
            trigger=backdoor["trigger"],
            batch_size=batch_size,
            device=device,
        )
    return result
