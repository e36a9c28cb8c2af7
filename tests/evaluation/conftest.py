"""Fixtures of the evaluation tests: a model that memorized digits, and result rows."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from fedunlearn.data import ImageData
from fedunlearn.training import train
from tests.evaluation.toys import CPU, MEMBERS, make_row


@pytest.fixture(scope="module")
def digits() -> ImageData:
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    return ImageData(images[order], torch.tensor(data.target)[order], 10)


@pytest.fixture(scope="module")
def memorized(digits: ImageData) -> nn.Module:
    """An MLP that memorized the first MEMBERS digits (full batch, no weight decay)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    members = digits.subset(np.arange(MEMBERS))
    train(
        model,
        members.images,
        members.labels,
        epochs=300,
        batch_size=MEMBERS,
        lr=0.1,
        weight_decay=0.0,
        device=CPU,
        seed=0,
    )
    return model.eval()


@pytest.fixture()
def rows() -> list[dict[str, Any]]:
    return [
        # NoT is listed before Retrain on purpose: the report must still put Retrain first.
        make_row("iid", "NoT", 0, 93.0, 85.0, 82.0, 52.0),
        make_row("iid", "NoT", 1, 95.0, 87.0, 84.0, 56.0),
        make_row("iid", "Retrain", 0, 92.0, 84.0, 82.0, 50.0),
        make_row("iid", "Retrain", 1, 90.0, 80.0, 84.0, 50.0),
        make_row("backdoor", "Retrain", 0, 90.0, 10.0, 80.0, 50.0, asr=2.0, backdoor_acc=78.0),
        make_row("backdoor", "FT", 0, 91.0, 60.0, 81.0, 70.0, asr=50.0, backdoor_acc=40.0),
    ]
