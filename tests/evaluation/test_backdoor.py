"""Backdoor metrics on a backdoored and a clean pixel-reading model."""

from __future__ import annotations

import numpy as np
import pytest

from fedunlearn.evaluation import backdoor_metrics
from tests.evaluation.toys import CPU, TRIGGER_FN, PixelReader, pixel_data


def test_backdoor_metrics_on_backdoored_and_clean_models() -> None:
    data = pixel_data(20)
    common = {"target": 0, "trigger": TRIGGER_FN, "batch_size": 8, "device": CPU}
    backdoored = backdoor_metrics(PixelReader(target=0), data.images, data.labels, **common)
    assert backdoored == {"asr": 100.0, "backdoor_acc": 0.0}
    clean = backdoor_metrics(PixelReader(), data.images, data.labels, **common)
    assert clean == {"asr": 0.0, "backdoor_acc": 100.0}
    with pytest.raises(ValueError, match="target"):
        only_target = data.subset(np.flatnonzero(data.labels.numpy() == 0))
        backdoor_metrics(PixelReader(), only_target.images, only_target.labels, **common)
