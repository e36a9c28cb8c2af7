"""Per-sample quantities of logits: membership features, accuracy, margins."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedunlearn.evaluation import accuracy, margins, sample_features


def test_sample_features_match_hand_computation() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, -1.0]])
    labels = torch.tensor([0, 2])
    feats = sample_features(logits, labels)
    for row, (z, y) in enumerate(zip(logits.tolist(), labels.tolist(), strict=True)):
        p = np.exp(z) / np.exp(z).sum()
        assert feats[row] == pytest.approx([-np.log(p[y]), p[y], -(p * np.log(p)).sum()])


def test_sample_features_stay_finite_for_saturated_logits() -> None:
    feats = sample_features(torch.tensor([[1e4, 0.0], [0.0, 1e4]]), torch.tensor([0, 0]))
    assert np.isfinite(feats).all()
    assert feats[0] == pytest.approx([0.0, 1.0, 0.0])
    assert feats[1, 0] == pytest.approx(1e4)  # the loss, not clamped
    assert feats[1, 2] == pytest.approx(0.0)  # a one-hot prediction has no entropy


def test_accuracy_in_percent() -> None:
    logits = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert accuracy(logits, torch.tensor([0, 1, 1, 1])) == pytest.approx(75.0)
    with pytest.raises(ValueError, match="empty"):
        accuracy(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))


def test_margins_match_hand_computation() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, -1.0]])
    expected = [3.0 - math.log(math.e + 1.0), -1.0 - math.log(1.0 + math.e**2)]
    assert margins(logits, torch.tensor([0, 2])) == pytest.approx(expected)
