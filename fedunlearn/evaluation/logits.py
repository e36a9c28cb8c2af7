"""Per-sample quantities of a model's logits: membership features, accuracy, margins.

Accuracies are in percent. Features are computed in float64 on the CPU, once per set, and
shared by the accuracies and the attacks (:mod:`fedunlearn.evaluation.mia`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: Columns of :func:`sample_features`.
FEATURE_NAMES: tuple[str, ...] = ("loss", "confidence", "entropy")


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

    The per-sample quantity that KLoM (Georgiev et al.) compares between ensembles of
    unlearned and retrained models. It equals ``logit(p_true)`` of the softmax, so it is
    finite where the loss saturates.

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
