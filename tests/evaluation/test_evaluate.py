"""The one-call evaluation: logits once per set, retain subsample, backdoor metrics."""

from __future__ import annotations

import numpy as np
import pytest
from torch import Tensor, nn

import fedunlearn.evaluation.evaluate as evaluate_module
from fedunlearn.data import ImageData
from fedunlearn.evaluation import evaluate_unlearning, mia_attack
from fedunlearn.training import predict_logits
from tests.evaluation.toys import CPU, MEMBERS, TRIGGER_FN, PixelReader, features, pixel_data


def test_evaluate_unlearning_computes_logits_once_per_set(
    digits: ImageData, memorized: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def counting(*args: object, **kwargs: object) -> Tensor:
        calls.append(1)
        return predict_logits(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "predict_logits", counting)
    sets = {
        "retain": digits.subset(np.arange(MEMBERS)),
        "forget": digits.subset(np.arange(MEMBERS, MEMBERS + 60)),
        "test": digits.subset(np.arange(1000, 1300)),
    }
    result = evaluate_unlearning(memorized, **sets, batch_size=64, device=CPU, seed=0)
    assert len(calls) == 3
    assert set(result) == {"retain", "forget", "test", "mia", "mia_efficacy"}
    assert result["retain"] == pytest.approx(100.0)
    expected = features(memorized, sets["forget"]), features(memorized, sets["test"])
    assert result["mia"] == pytest.approx(mia_attack(*expected, seed=0))
    assert abs(result["mia"] - 50.0) < 15.0  # forget and test are both unseen here
    assert all(0.0 <= v <= 100.0 for v in result.values())


def test_evaluate_unlearning_subsamples_retain_and_adds_backdoor() -> None:
    data = pixel_data(40)
    sets = {"retain": data, "forget": data.subset(np.arange(8)), "test": data}
    common = {"batch_size": 16, "device": CPU, "seed": 1}
    backdoor = {"target": 0, "trigger": TRIGGER_FN}
    result = evaluate_unlearning(
        PixelReader(target=0), **sets, **common, max_retain=10, backdoor=backdoor
    )
    assert result["asr"] == 100.0 and result["backdoor_acc"] == 0.0
    assert result["retain"] == 100.0
    with pytest.raises(ValueError, match="backdoor"):
        evaluate_unlearning(PixelReader(), **sets, **common, backdoor={"target": 0})
