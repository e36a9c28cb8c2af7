"""TIS aggregation (Eq. 30), scores (Eq. 28), selection, reset, Random Reset and TRIM mask."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from fedunlearn.training import train
from fedunlearn.unlearning.tis import (
    CurvatureAccumulator,
    CurvatureReplyError,
    random_mask,
    reset,
    reset_fraction,
    select,
    tis_scores,
    trim_mask,
)

SHAPES = {"w": (2, 3), "b": (3,)}


def diag(w: list[list[float]], b: list[float]) -> dict[str, Tensor]:
    return {"w": torch.tensor(w), "b": torch.tensor(b)}


def ones(value: float) -> dict[str, Tensor]:
    return {name: torch.full(shape, value) for name, shape in SHAPES.items()}


def snapshot(acc: CurvatureAccumulator) -> dict:
    return copy.deepcopy(acc.__dict__)


def same(a: object, b: object) -> bool:
    """Deep equality of the accumulator's state: dicts, tensors (bitwise) and plain values."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, Tensor):
        return isinstance(b, Tensor) and torch.equal(a, b)
    return a == b


def test_aggregation_arithmetic() -> None:
    acc = CurvatureAccumulator(SHAPES)
    acc.add(ones(1.0), np.int64(2), ones(3.0), 6)  # client 0: 2 forget, 6 retained samples
    acc.add(None, 0, ones(5.0), 4)  # client 1: no forget samples, only h
    acc.add(ones(9.0), 1, None, 0)  # client 2: only forget samples
    h, h_prime = acc.result()
    # N = 13, N_T = 3: h = (2*1 + 6*3 + 4*5 + 1*9) / 13, h' = (2*1 + 1*9) / 3.
    for name, shape in SHAPES.items():
        assert torch.allclose(h[name], torch.full(shape, 49 / 13))
        assert torch.allclose(h_prime[name], torch.full(shape, 11 / 3))
        assert h[name].dtype == torch.float32
    assert (acc.num_replies, acc.num_forget, acc.num_samples) == (3, 3, 13)


def test_streaming_equals_all_at_once() -> None:
    generator = torch.Generator().manual_seed(0)
    replies = [
        (
            {n: torch.rand(s, generator=generator) for n, s in SHAPES.items()},
            int(torch.randint(0, 5, (), generator=generator)),
            {n: torch.rand(s, generator=generator) for n, s in SHAPES.items()},
            int(torch.randint(1, 50, (), generator=generator)),
        )
        for _ in range(7)
    ]
    replies[0] = (replies[0][0], 3, *replies[0][2:])  # at least one forget sample
    acc = CurvatureAccumulator(SHAPES, nonnegative=True)
    for reply in replies:
        acc.add(*reply)
    h, h_prime = acc.result()
    total = sum(nf + nr for _, nf, _, nr in replies)
    forget = sum(nf for _, nf, _, _ in replies)
    for name in SHAPES:
        both = torch.stack([nf * hf[name] + nr * hr[name] for hf, nf, hr, nr in replies])
        assert torch.allclose(h[name], both.sum(0) / total)
        only = torch.stack([nf * hf[name] for hf, nf, _, _ in replies])
        assert torch.allclose(h_prime[name], only.sum(0) / forget)
    # Order does not matter beyond rounding.
    backwards = CurvatureAccumulator(SHAPES)
    for reply in reversed(replies):
        backwards.add(*reply)
    for mine, theirs in zip(acc.result(), backwards.result(), strict=True):
        assert all(torch.allclose(mine[n], theirs[n]) for n in SHAPES)


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ((ones(1.0), -1, ones(1.0), 3), "non-negative int"),
        ((ones(1.0), 2.0, ones(1.0), 3), "non-negative int"),
        ((ones(1.0), 2, ones(1.0), True), "non-negative int"),
        ((None, 2, ones(1.0), 3), "2 samples but no curvature"),
        (({"w": torch.ones(2, 3)}, 2, ones(1.0), 3), "names differ"),
        (({**ones(1.0), "extra": torch.ones(1)}, 2, ones(1.0), 3), "names differ"),
        (({"w": torch.ones(3, 2), "b": torch.ones(3)}, 2, ones(1.0), 3), "shape"),
        (({"w": torch.ones(2, 3, dtype=torch.long), "b": torch.ones(3)}, 2, ones(1.0), 3), "float"),
        (
            (ones(1.0), 2, {"w": torch.ones(2, 3), "b": torch.tensor([1, float("nan"), 1])}, 3),
            "NaN",
        ),
        ((ones(float("inf")), 2, ones(1.0), 3), "infinite"),
        ((ones(1.0), 2, {"w": -torch.ones(2, 3), "b": torch.ones(3)}, 3), "negative entries"),
    ],
)
def test_refused_replies_change_nothing(reply: tuple, reason: str) -> None:
    acc = CurvatureAccumulator(SHAPES, nonnegative=True)
    acc.add(ones(2.0), 1, ones(1.0), 1)
    before = snapshot(acc)
    with pytest.raises(CurvatureReplyError, match=reason) as error:
        # The forget part of most bad replies is fine: it must not be applied either.
        acc.add(*reply)
    assert "\n" not in str(error.value)
    assert isinstance(error.value, ValueError)
    assert same(before, acc.__dict__)


def test_negative_entries_pass_unless_nonnegative() -> None:
    acc = CurvatureAccumulator(SHAPES)
    acc.add(ones(-1.0), 1, ones(2.0), 1)  # Hutchinson can legitimately produce these
    h, h_prime = acc.result()
    assert torch.allclose(h["w"], torch.full((2, 3), 0.5))
    assert torch.allclose(h_prime["b"], torch.full((3,), -1.0))


def test_no_forget_samples_is_an_error() -> None:
    acc = CurvatureAccumulator.for_model(nn.Linear(3, 2))
    acc.add(None, 0, {"weight": torch.ones(2, 3), "bias": torch.ones(2)}, 5)
    with pytest.raises(ValueError, match="N_T = 0") as error:
        acc.result()
    assert "\n" not in str(error.value)


def test_scores_are_squared_ratios_and_zero_where_h_is_zero() -> None:
    h = diag([[2.0, 0.0, 4.0], [1.0, 0.0, 0.5]], [1.0, 3.0, 0.0])
    h_prime = diag([[1.0, 0.0, 4.0], [0.0, 7.0, 1.0]], [2.0, 3.0, 5.0])
    scores = tis_scores(h, h_prime)
    assert torch.equal(scores["w"], torch.tensor([[0.25, 0.0, 1.0], [0.0, 0.0, 4.0]]))
    assert torch.equal(scores["b"], torch.tensor([4.0, 1.0, 0.0]))


def check_selection(score: Tensor, mask: Tensor, gamma: float) -> None:
    """The definition: reaches gamma of the total, highest first, and is the smallest."""
    total = float(score.sum())
    chosen = score[mask]
    assert float(chosen.sum()) >= gamma * total - 1e-9
    if mask.any():
        # Highest first: nothing left out scores above anything chosen.
        left_out = score[~mask]
        assert left_out.numel() == 0 or float(left_out.max()) <= float(chosen.min())
        # Smallest: dropping the lowest chosen entry falls short of the target.
        assert float(chosen.sum() - chosen.min()) < gamma * total


@pytest.mark.parametrize("gamma", [0.0, 0.05, 0.3, 0.5, 0.7, 0.9, 0.999, 1.0])
def test_selection_reaches_gamma_per_tensor_with_the_smallest_set(gamma: float) -> None:
    generator = torch.Generator().manual_seed(3)
    scores = {
        "conv": torch.rand(4, 3, 3, generator=generator).pow(4).double(),
        "fc": torch.rand(50, generator=generator).double() * 100,  # another scale
        "zero": torch.zeros(5).double(),
    }
    scores["fc"][:10] = 0.0  # zero scores are never needed before gamma = 1
    masks = select(scores, gamma)
    assert set(masks) == set(scores)
    for name, score in scores.items():
        assert masks[name].dtype == torch.bool and masks[name].shape == score.shape
        check_selection(score, masks[name], gamma)
    assert not masks["zero"].any()
    if gamma == 0.0:
        assert not any(m.any() for m in masks.values())
    if gamma == 1.0:
        assert all(torch.equal(masks[n], scores[n] > 0) for n in scores)


def test_selection_exact_boundaries_and_ties() -> None:
    score = {"t": torch.tensor([1.0, 4.0, 2.0, 2.0, 1.0])}  # total 10
    assert select(score, 0.4)["t"].tolist() == [False, True, False, False, False]
    assert select(score, 0.41)["t"].tolist() == [False, True, True, False, False]
    # The stable sort puts the earlier of two ties first.
    assert select(score, 0.8)["t"].tolist() == [False, True, True, True, False]
    assert select(score, 0.81)["t"].tolist() == [True, True, True, True, False]
    assert select(score, 1.0)["t"].tolist() == [True] * 5
    with pytest.raises(ValueError, match=r"fraction in \[0, 1\]"):
        select(score, 70)


def test_reset_touches_only_selected_entries() -> None:
    generator = torch.Generator().manual_seed(0)
    state = {
        "w": torch.randn(3, 4, generator=generator),
        "b": torch.randn(4, generator=generator),
        "bn.num_batches_tracked": torch.tensor(17),
    }
    initial = {
        k: torch.randn(v.shape, generator=generator)
        for k, v in state.items()
        if k != "bn.num_batches_tracked"
    }
    mask = {"w": torch.rand(3, 4, generator=generator) > 0.5}
    original = {k: v.clone() for k, v in state.items()}
    result = reset(state, initial, mask)
    assert torch.equal(result["w"][mask["w"]], initial["w"][mask["w"]])
    assert torch.equal(result["w"][~mask["w"]], state["w"][~mask["w"]])
    assert torch.equal(result["b"], state["b"]) and torch.equal(
        result["bn.num_batches_tracked"], state["bn.num_batches_tracked"]
    )
    assert all(torch.equal(original[k], state[k]) for k in state)  # input untouched
    assert all(result[k] is not state[k] for k in state)  # and not aliased
    with pytest.raises(ValueError, match="not a floating-point"):
        reset(
            state,
            {**initial, "bn.num_batches_tracked": torch.tensor(0)},
            {"bn.num_batches_tracked": torch.ones((), dtype=torch.bool)},
        )
    with pytest.raises(ValueError, match="bool tensor of shape"):
        reset(state, initial, {"w": torch.ones(4, 3, dtype=torch.bool)})


def test_random_reset_matches_counts_but_not_locations() -> None:
    generator = torch.Generator().manual_seed(0)
    scores = {
        "a": torch.rand(20, 10, generator=generator).pow(8),
        "b": torch.rand(30, generator=generator),
    }
    mask = select(scores, 0.6)
    shuffled = random_mask(mask, seed=5)
    for name in mask:
        assert shuffled[name].shape == mask[name].shape and shuffled[name].dtype == torch.bool
        assert int(shuffled[name].sum()) == int(mask[name].sum())
    assert not torch.equal(shuffled["a"], mask["a"])
    assert all(torch.equal(shuffled[n], random_mask(mask, seed=5)[n]) for n in mask)
    assert not torch.equal(shuffled["a"], random_mask(mask, seed=6)["a"])


def test_reset_fraction() -> None:
    mask = {"a": torch.tensor([True, False, True, False]), "b": torch.zeros(2, 3, dtype=torch.bool)}
    assert reset_fraction(mask) == 0.2
    assert reset_fraction({}) == 0.0


def test_trim_mask_trains_only_the_reset_entries() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    shapes = {name: p.shape for name, p in model.named_parameters()}
    mask = {"1.weight": torch.rand(6, 4) > 0.7}  # only part of one tensor was reset
    trainable = trim_mask(mask, shapes)
    assert set(trainable) == set(shapes)
    assert torch.equal(trainable["1.weight"], mask["1.weight"])
    # TRIM freezes what was not reset, whereas train() would train unnamed parameters.
    assert not any(trainable[n].any() for n in shapes if n != "1.weight")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    images, labels = torch.randn(16, 1, 1, 4), torch.randint(0, 3, (16,))
    train(
        model,
        images,
        labels,
        epochs=1,
        batch_size=8,
        lr=0.1,
        device="cpu",
        seed=0,
        trainable_mask=trainable,
    )
    after = dict(model.named_parameters())
    for name, selected in trainable.items():
        assert torch.equal(after[name].detach()[~selected], before[name][~selected])
    chosen = mask["1.weight"]
    assert not torch.equal(after["1.weight"].detach()[chosen], before["1.weight"][chosen])
    with pytest.raises(ValueError, match="lacks"):
        trim_mask({"nope": torch.ones(1, dtype=torch.bool)}, shapes)


# ---- issue 11: signed, NaN and all-zero statistics never reach the selection unguarded ----
def test_signed_estimate_cannot_explode_or_win_the_selection() -> None:
    # A Hutchinson-like estimate: one h entry negative, one positive but far below the
    # tensor's scale, one h' negative. Unguarded, (h'/h)^2 gave the first 6.25e10 and the
    # second 4e12, which alone held gamma of the tensor's TIS, and the third a positive 4.
    h = {"w": torch.tensor([2e-3, 1e-3, -4e-9, 1.5e-3, 5e-10, 1e-3])}
    h_prime = {"w": torch.tensor([1e-3, 2e-3, 1e-3, 1e-3, 1e-3, -2e-3])}
    scores = tis_scores(h, h_prime)["w"]
    assert torch.allclose(scores, torch.tensor([0.25, 4.0, 0.0, 4 / 9, 0.0, 0.0]))
    assert select({"w": scores}, 0.5)["w"].tolist() == [False, True, False, False, False, False]
    # Through the accumulator, as signed client replies arrive (nonnegative=False).
    acc = CurvatureAccumulator({"w": (6,)})
    acc.add(h_prime, 1, {"w": 2 * h["w"] - h_prime["w"]}, 1)  # h = mean of the two
    assert torch.allclose(tis_scores(*acc.result())["w"], scores)


def test_nonnegative_statistic_keeps_eq28_scores_even_at_tiny_h() -> None:
    # Without a negative entry no floor applies: h >= (N_T / N) h' bounds TIS by
    # (N / N_T)^2 = 16 here, and the tiny-h entry only the forget sample moves is the
    # most informative one, as Eq. 28 says.
    acc = CurvatureAccumulator({"w": (3,)}, nonnegative=True)
    acc.add({"w": torch.tensor([1e-12, 1.0, 2.0])}, 1, {"w": torch.tensor([0.0, 1.0, 2.0])}, 3)
    scores = tis_scores(*acc.result())["w"]
    assert torch.allclose(scores, torch.tensor([16.0, 1.0, 1.0]))
    assert select({"w": scores}, 0.5)["w"].tolist() == [True, False, False]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_select_refuses_nan_and_infinite_scores(bad: float) -> None:
    scores = {"fine": torch.tensor([1.0, 2.0]), "conv1.weight": torch.tensor([1.0, bad, 2.0])}
    with pytest.raises(ValueError, match=r"TIS of 'conv1.weight' holds NaN or Inf") as error:
        select(scores, 0.5)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("which", "bad", "message"),
    [
        ("h", float("nan"), "h of 'w' holds NaN"),
        ("h_prime", float("nan"), "h' of 'w' holds NaN"),
        ("h", float("inf"), "h of 'w' holds Inf"),
    ],
)
def test_tis_scores_names_nan_and_inf(which: str, bad: float, message: str) -> None:
    stats = {"h": ones(1.0), "h_prime": ones(1.0)}
    stats[which]["w"][1, 2] = bad
    with pytest.raises(ValueError, match=message) as error:
        tis_scores(stats["h"], stats["h_prime"])
    assert "\n" not in str(error.value) and "overflow" not in str(error.value)


def test_all_zero_statistics_are_refused() -> None:
    with pytest.raises(ValueError, match="h is 0 for every parameter") as error:
        tis_scores(ones(0.0), ones(1.0))
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="h' is 0 for every parameter"):
        tis_scores(ones(1.0), ones(0.0))
    # The accumulator refuses them too, so that the server fails the request (its
    # CurvatureError) before anything touches the model.
    acc = CurvatureAccumulator(SHAPES, nonnegative=True)
    acc.add(ones(0.0), 2, ones(0.0), 3)
    with pytest.raises(ValueError, match="unusable curvature statistic") as error:
        acc.result()
    assert "\n" not in str(error.value)
    # One tensor at 0 is fine (a parameter the loss does not depend on): it resets nothing.
    h = {"w": torch.ones(2, 3), "b": torch.zeros(3)}
    assert not select(tis_scores(h, h), 1.0)["b"].any()
