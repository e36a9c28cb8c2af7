"""Unlearning metrics: features, attacks (never scored on their own training data), gaps,
ratios, margins, KLoM, backdoor metrics, and the one-call evaluation."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.neighbors import KNeighborsClassifier
from torch import Tensor, nn

import fedunlearn.evaluation.metrics as metrics_module
from fedunlearn.data import ImageData, add_trigger
from fedunlearn.evaluation import (
    accuracy,
    average_gap,
    backdoor_metrics,
    evaluate_unlearning,
    klom,
    margins,
    mia_attack,
    mia_efficacy,
    nfs,
    nta,
    rtr,
    sample_features,
)
from fedunlearn.training import predict_logits, train

CPU = torch.device("cpu")
# Training samples of the memorizing model: with 40 digits (4 per class) a 64-128-10 MLP
# trained to zero loss reaches only ~60-90 % test accuracy, and its loss on its own
# samples is far below that on unseen ones; over 8 seeds the attack scored 76-80 %.
MEMBERS = 40


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


def _features(model: nn.Module, data: ImageData) -> np.ndarray:
    logits = predict_logits(model, data.images, batch_size=512, device=CPU)
    return sample_features(logits, data.labels)


# ---- per-sample quantities ---------------------------------------------------------------


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


# ---- membership inference ----------------------------------------------------------------


def test_mia_detects_memorized_training_data(digits: ImageData, memorized: nn.Module) -> None:
    members = _features(memorized, digits.subset(np.arange(MEMBERS)))
    unseen = _features(memorized, digits.subset(np.arange(MEMBERS, len(digits))))
    assert mia_attack(members, unseen, seed=0) > 70.0


def test_mia_is_chance_for_two_samples_of_one_distribution(
    digits: ImageData, memorized: nn.Module
) -> None:
    # Two disjoint sets of 300 unseen digits. With 600 balanced samples the accuracy of a
    # chance-level attacker has a standard error of sqrt(0.25 / 600) ~ 2 points: a
    # 10-point tolerance is five of them.
    first = _features(memorized, digits.subset(np.arange(MEMBERS, MEMBERS + 300)))
    second = _features(memorized, digits.subset(np.arange(MEMBERS + 300, MEMBERS + 600)))
    assert abs(mia_attack(first, second, seed=0) - 50.0) < 10.0


def test_attacker_is_never_scored_on_samples_it_was_fitted_on() -> None:
    # Pure noise: nothing separates "members" from "non-members". A 1-nearest-neighbour
    # attacker memorizes whatever it is fitted on, so scoring it on its training samples
    # reports 100 %; cross-validated, it must stay at chance.
    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(size=(300, 3)), rng.normal(size=(300, 3))
    x = np.concatenate([members, nonmembers])
    y = np.r_[np.ones(300), np.zeros(300)]
    memorizer = KNeighborsClassifier(n_neighbors=1)
    assert memorizer.fit(x, y).score(x, y) == 1.0  # fit and score on the same samples
    assert abs(mia_attack(members, nonmembers, classifier=memorizer) - 50.0) < 10.0
    assert abs(mia_attack(members, nonmembers) - 50.0) < 10.0


def test_mia_balances_the_two_sides() -> None:
    # Indistinguishable features, 1000 members against 20 non-members: an attacker
    # scored on the unbalanced sets could reach 98 % by always answering "member".
    same = np.ones((1000, 3))
    assert mia_attack(same, same[:20]) == pytest.approx(50.0)


def test_mia_small_sets_reduce_folds_or_give_nan() -> None:
    low, high = np.zeros((5, 3)), np.ones((5, 3))
    assert mia_attack(low, high, folds=5) == pytest.approx(100.0)  # 2 folds of 2-3 a side
    assert math.isnan(mia_attack(low[:3], high[:3]))
    with pytest.raises(ValueError, match="non-finite"):
        mia_attack(np.full((10, 3), np.nan), high)


def test_mia_efficacy_on_separable_features() -> None:
    retain, test = np.zeros((50, 3)), np.full((80, 3), 10.0)
    assert mia_efficacy(retain, test, np.full((7, 3), 9.0)) == pytest.approx(100.0)
    assert mia_efficacy(retain, test, np.full((7, 3), 1.0)) == pytest.approx(0.0)
    assert math.isnan(mia_efficacy(retain, test, np.zeros((0, 3))))


def test_mia_efficacy_tells_trained_from_unseen_forget_sets(
    digits: ImageData, memorized: nn.Module
) -> None:
    retain = _features(memorized, digits.subset(np.arange(MEMBERS // 2)))
    test = _features(memorized, digits.subset(np.arange(1000, 1400)))
    trained_on = _features(memorized, digits.subset(np.arange(MEMBERS // 2, MEMBERS)))
    never_seen = _features(memorized, digits.subset(np.arange(MEMBERS, MEMBERS + 200)))
    remembered = mia_efficacy(retain, test, trained_on, seed=0)
    forgotten = mia_efficacy(retain, test, never_seen, seed=0)
    assert forgotten > remembered + 20.0


# ---- gaps and ratios ---------------------------------------------------------------------


def test_average_gap_reproduces_not_table_1() -> None:
    # NoT Table 1, CIFAR-10 CNN: FT against Retrain has gaps 0.82, 2.51, 0.04, 0.67 -> 1.01.
    retrain = {"retain": 91.66, "forget": 83.05, "test": 82.32, "mia": 50.23}
    ft = {"retain": 92.48, "forget": 85.56, "test": 82.36, "mia": 50.90, "other": 1.0}
    assert average_gap(ft, retrain) == pytest.approx(1.01)
    assert average_gap(retrain, retrain) == 0.0
    assert average_gap(ft, retrain, keys=("forget",)) == pytest.approx(2.51)


def test_nta_nfs_rtr_arithmetic() -> None:
    assert nta(60.15, 73.21) == pytest.approx(60.15 / 73.21)
    assert math.isnan(nta(10.0, 0.0))
    assert nfs(orig=90.0, unlearned=20.0, retrain=10.0) == pytest.approx(70.0 / 80.0)
    assert nfs(orig=90.0, unlearned=5.0, retrain=10.0) == pytest.approx(85.0 / 80.0)
    assert math.isnan(nfs(orig=50.0, unlearned=40.0, retrain=50.0))
    assert rtr(30.0, 120.0) == pytest.approx(0.25)
    assert math.isnan(rtr(1.0, 0.0))
    with pytest.raises(ValueError):
        rtr(-1.0, 10.0)


# ---- KLoM --------------------------------------------------------------------------------


def test_klom_hand_computed_two_bins() -> None:
    # Pooled range [0, 1] split in two bins: unlearned (0, 0) -> (1, 0); oracle (0, 1)
    # -> (1/2, 1/2); eps is added to each probability before renormalizing.
    eps = 0.01
    p = np.array([1 + eps, eps]) / (1 + 2 * eps)
    q = np.array([0.5 + eps, 0.5 + eps]) / (1 + 2 * eps)
    expected = float(np.sum(p * np.log(p / q)))
    score = klom([[0.0], [0.0]], [[0.0], [1.0]], bins=2, eps=eps, percentile=50)
    assert score == pytest.approx(expected)


def test_klom_near_zero_for_one_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(0)
    oracle = rng.normal(size=(200, 50))
    assert klom(oracle, oracle) == pytest.approx(0.0, abs=1e-12)
    same = klom(rng.normal(size=(200, 50)), oracle)
    shifted = klom(rng.normal(loc=5.0, size=(200, 50)), oracle)
    assert same < 0.5
    assert shifted > 5.0  # disjoint histograms: about log(1 / eps)
    assert klom(np.zeros((3, 4)), np.zeros((5, 4))) == pytest.approx(0.0)  # no spread


# ---- backdoor ----------------------------------------------------------------------------

TRIGGER = 5.0
CLASSES = 4


class PixelReader(nn.Module):
    """Predicts the class written in pixel (0, 0); with ``target``, a backdoored version
    that predicts ``target`` whenever the bottom-right pixel holds the trigger value."""

    def __init__(self, target: int | None = None) -> None:
        super().__init__()
        self.target = target

    def forward(self, x: Tensor) -> Tensor:
        predicted = x[:, 0, 0, 0].round().long().clamp(0, CLASSES - 1)
        if self.target is not None:
            triggered = x[:, 0, -1, -1] == TRIGGER
            predicted = torch.where(triggered, torch.full_like(predicted, self.target), predicted)
        return F.one_hot(predicted, CLASSES).float()


def _pixel_data(count: int) -> ImageData:
    labels = torch.arange(count) % CLASSES
    images = torch.zeros(count, 1, 4, 4)
    images[:, 0, 0, 0] = labels.float()
    return ImageData(images, labels, CLASSES)


TRIGGER_FN = functools.partial(add_trigger, size=1, corner="bottom_right", value=TRIGGER)


def test_backdoor_metrics_on_backdoored_and_clean_models() -> None:
    data = _pixel_data(20)
    common = {"target": 0, "trigger": TRIGGER_FN, "batch_size": 8, "device": CPU}
    backdoored = backdoor_metrics(PixelReader(target=0), data.images, data.labels, **common)
    assert backdoored == {"asr": 100.0, "backdoor_acc": 0.0}
    clean = backdoor_metrics(PixelReader(), data.images, data.labels, **common)
    assert clean == {"asr": 0.0, "backdoor_acc": 100.0}
    with pytest.raises(ValueError, match="target"):
        only_target = data.subset(np.flatnonzero(data.labels.numpy() == 0))
        backdoor_metrics(PixelReader(), only_target.images, only_target.labels, **common)


# ---- one call ----------------------------------------------------------------------------


def test_evaluate_unlearning_computes_logits_once_per_set(
    digits: ImageData, memorized: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def counting(*args: object, **kwargs: object) -> Tensor:
        calls.append(1)
        return predict_logits(*args, **kwargs)

    monkeypatch.setattr(metrics_module, "predict_logits", counting)
    sets = {
        "retain": digits.subset(np.arange(MEMBERS)),
        "forget": digits.subset(np.arange(MEMBERS, MEMBERS + 60)),
        "test": digits.subset(np.arange(1000, 1300)),
    }
    result = evaluate_unlearning(memorized, **sets, batch_size=64, device=CPU, seed=0)
    assert len(calls) == 3
    assert set(result) == {"retain", "forget", "test", "mia", "mia_efficacy"}
    assert result["retain"] == pytest.approx(100.0)
    expected = _features(memorized, sets["forget"]), _features(memorized, sets["test"])
    assert result["mia"] == pytest.approx(mia_attack(*expected, seed=0))
    assert abs(result["mia"] - 50.0) < 15.0  # forget and test are both unseen here
    assert all(0.0 <= v <= 100.0 for v in result.values())


def test_evaluate_unlearning_subsamples_retain_and_adds_backdoor() -> None:
    data = _pixel_data(40)
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
