"""Membership-inference attacks, never scored on their own training data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier
from torch import nn

from fedunlearn.data import ImageData
from fedunlearn.evaluation import mia_attack, mia_efficacy
from tests.evaluation.toys import MEMBERS, features


def test_mia_detects_memorized_training_data(digits: ImageData, memorized: nn.Module) -> None:
    members = features(memorized, digits.subset(np.arange(MEMBERS)))
    unseen = features(memorized, digits.subset(np.arange(MEMBERS, len(digits))))
    assert mia_attack(members, unseen, seed=0) > 70.0


def test_mia_is_chance_for_two_samples_of_one_distribution(
    digits: ImageData, memorized: nn.Module
) -> None:
    # Two disjoint sets of 300 unseen digits. With 600 balanced samples the accuracy of a
    # chance-level attacker has a standard error of sqrt(0.25 / 600) ~ 2 points: a
    # 10-point tolerance is five of them.
    first = features(memorized, digits.subset(np.arange(MEMBERS, MEMBERS + 300)))
    second = features(memorized, digits.subset(np.arange(MEMBERS + 300, MEMBERS + 600)))
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
    retain = features(memorized, digits.subset(np.arange(MEMBERS // 2)))
    test = features(memorized, digits.subset(np.arange(1000, 1400)))
    trained_on = features(memorized, digits.subset(np.arange(MEMBERS // 2, MEMBERS)))
    never_seen = features(memorized, digits.subset(np.arange(MEMBERS, MEMBERS + 200)))
    remembered = mia_efficacy(retain, test, trained_on, seed=0)
    forgotten = mia_efficacy(retain, test, never_seen, seed=0)
    assert forgotten > remembered + 20.0
