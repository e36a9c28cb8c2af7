"""One model judged on its retain, forget and test sets: every per-model metric at once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import nn

from fedunlearn.data.images import ImageData
from fedunlearn.evaluation.backdoor import backdoor_metrics
from fedunlearn.evaluation.logits import accuracy, sample_features
from fedunlearn.evaluation.mia import mia_attack, mia_efficacy
from fedunlearn.training import Device, predict_logits


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
