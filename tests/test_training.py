"""Local training, evaluation and FLOP measurement on real 8x8 digits."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import Tensor, nn

from fedunlearn.models import build_model, seeded_model
from fedunlearn.training import (
    TrainStats,
    evaluate,
    flops_per_sample,
    pick_device,
    predict_logits,
    train,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits() -> tuple[Tensor, Tensor]:
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return images, torch.tensor(data.target)


@pytest.fixture(scope="module")
def trained_with_stats(digits: tuple[Tensor, Tensor]) -> tuple[nn.Module, TrainStats]:
    images, labels = digits
    model = seeded_model("cnn_nonorm", 10, (1, 8, 8), seed=0)
    stats = train(
        model, images[:1000], labels[:1000], epochs=3, batch_size=32, lr=0.05, device=CPU, seed=0
    )
    return model, stats


@pytest.fixture()
def trained(trained_with_stats: tuple[nn.Module, TrainStats]) -> nn.Module:
    return copy.deepcopy(trained_with_stats[0])


def _fit(model: nn.Module, images: Tensor, labels: Tensor, **overrides: Any) -> TrainStats:
    settings = {"epochs": 1, "batch_size": 32, "lr": 0.05, "device": CPU, "seed": 0}
    return train(model, images, labels, **(settings | overrides))


def test_training_learns_digits(
    digits: tuple[Tensor, Tensor], trained_with_stats: tuple[nn.Module, TrainStats]
) -> None:
    model, stats = trained_with_stats
    held_out = digits[0][1000:], digits[1][1000:]
    untrained = seeded_model("cnn_nonorm", 10, (1, 8, 8), seed=0)
    before = evaluate(untrained, *held_out, batch_size=256, device=CPU)
    after = evaluate(model, *held_out, batch_size=256, device=CPU)
    assert after.loss < before.loss / 3
    assert after.accuracy > 0.75 and before.accuracy < 0.2  # chance: 0.1
    assert stats.num_examples == 1000
    assert stats.steps == 3 * -(-1000 // 32)
    assert stats.accuracy > 0.75 and stats.loss < before.loss / 3


def test_same_seed_same_weights(digits: tuple[Tensor, Tensor]) -> None:
    images, labels = digits[0][:300], digits[1][:300]
    rng_before = torch.get_rng_state()
    states = []
    for seed in (1, 1, 2):
        model = seeded_model("cnn", 10, (1, 8, 8), seed=0)
        _fit(model, images, labels, seed=seed, lr=0.01)
        states.append(model.state_dict())
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_trainable_mask_keeps_frozen_entries_bit_identical(
    digits: tuple[Tensor, Tensor],
) -> None:
    images, labels = digits[0][:300], digits[1][:300]
    model = seeded_model("cnn_nonorm", 10, (1, 8, 8), seed=0)
    before = copy.deepcopy(model.state_dict())
    generator = torch.Generator().manual_seed(0)
    conv_mask = torch.rand(model.conv1.weight.shape, generator=generator) < 0.5
    mask = {"conv1.weight": conv_mask, "fc2.weight": torch.zeros_like(model.fc2.weight, dtype=bool)}
    # Momentum and weight decay would move frozen entries if only their gradients were zeroed.
    _fit(model, images, labels, epochs=2, weight_decay=0.1, grad_clip=1.0, trainable_mask=mask)
    after = model.state_dict()
    assert torch.equal(after["conv1.weight"][~conv_mask], before["conv1.weight"][~conv_mask])
    assert torch.equal(after["fc2.weight"], before["fc2.weight"])
    assert (after["conv1.weight"][conv_mask] != before["conv1.weight"][conv_mask]).all()
    assert not torch.equal(after["fc2.bias"], before["fc2.bias"])


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        ({"conv9.weight": torch.ones(1, dtype=bool)}, "unknown parameter 'conv9.weight'"),
        ({"fc2.bias": torch.ones(3, dtype=bool)}, "bool tensor of shape"),
        ({"fc2.bias": torch.ones(10)}, "bool tensor of shape"),
    ],
)
def test_trainable_mask_errors(digits: tuple[Tensor, Tensor], mask: dict, message: str) -> None:
    model = build_model("cnn_nonorm", 10, (1, 8, 8))
    with pytest.raises(ValueError, match=message):
        _fit(model, digits[0][:8], digits[1][:8], trainable_mask=mask)


def test_ascent_raises_loss(digits: tuple[Tensor, Tensor], trained: nn.Module) -> None:
    images, labels = digits[0][:300], digits[1][:300]
    before = evaluate(trained, images, labels, batch_size=256, device=CPU)
    stats = _fit(trained, images, labels, ascent=True)
    after = evaluate(trained, images, labels, batch_size=256, device=CPU)
    assert after.loss > before.loss + 1.0
    assert after.accuracy < before.accuracy - 0.3
    assert stats.steps > 0


@pytest.mark.parametrize("grad_clip", [None, 1.0])
def test_ascent_with_large_lr_stays_finite(
    digits: tuple[Tensor, Tensor], trained: nn.Module, grad_clip: float | None
) -> None:
    images, labels = digits[0][:300], digits[1][:300]
    stats = _fit(trained, images, labels, epochs=5, lr=10.0, ascent=True, grad_clip=grad_clip)
    assert torch.isfinite(torch.tensor(stats.loss))
    assert all(torch.isfinite(p).all() for p in trained.parameters())
    assert torch.isfinite(predict_logits(trained, images, batch_size=256, device=CPU)).all()


def test_ascent_takes_no_step_past_the_cap(
    digits: tuple[Tensor, Tensor], trained: nn.Module
) -> None:
    images, labels = digits[0][:64], digits[1][:64]
    before = copy.deepcopy(trained.state_dict())
    forward = flops_per_sample(trained, (1, 8, 8), backward=False)
    stats = _fit(trained, images, labels, ascent=True, ascent_loss_cap=0.0)
    assert stats.steps == 0
    assert stats.flops == forward * len(images)
    assert all(torch.equal(value, before[key]) for key, value in trained.state_dict().items())


def test_evaluate_matches_manual_argmax(digits: tuple[Tensor, Tensor], trained: nn.Module) -> None:
    images, labels = digits[0][:500], digits[1][:500]
    trained.train()
    stats = evaluate(trained, images, labels, batch_size=64, device=CPU)
    assert trained.training  # mode restored
    logits = predict_logits(trained, images, batch_size=64, device=CPU)
    assert logits.shape == (500, 10)
    with torch.no_grad():
        manual = trained.eval()(images)
    trained.train()
    assert torch.allclose(logits, manual, atol=1e-5)
    assert stats.accuracy == pytest.approx((manual.argmax(1) == labels).float().mean().item())
    assert stats.loss == pytest.approx(F.cross_entropy(manual, labels).item(), rel=1e-5)
    assert stats.num_examples == 500


def test_flops_of_linear_layers_match_hand_count() -> None:
    single = nn.Linear(5, 3)
    assert flops_per_sample(single, (5,), backward=False) == 2 * 5 * 3
    # Backward: only the weight gradient (the input needs no gradient): 2 * 5 * 3 more.
    assert flops_per_sample(single, (5,), backward=True) == 4 * 5 * 3
    mlp = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    forward = 2 * (5 * 4 + 4 * 3)
    # Weight gradients of both layers plus the input gradient of the second.
    backward = 2 * (5 * 4 + 4 * 3) + 2 * 4 * 3
    assert flops_per_sample(mlp, (5,), backward=False) == forward
    assert flops_per_sample(mlp, (5,), backward=True) == forward + backward
    x, y = torch.randn(10, 5), torch.randint(0, 3, (10,))
    stats = train(mlp, x, y, epochs=2, batch_size=4, lr=0.1, device=CPU, seed=0)
    assert stats.flops == (forward + backward) * 10 * 2
    assert evaluate(mlp, x, y, batch_size=4, device=CPU).flops == forward * 10


def test_flops_of_cnn_convolutions_and_no_side_effects() -> None:
    cnn = build_model("cnn", 10, (1, 8, 8))
    # conv1, conv2 (3x3, 32 and 64 channels, 8x8 then 4x4), fc1 (256 -> 128), fc2.
    by_hand = 2 * (1 * 9 * 32 * 64 + 32 * 9 * 64 * 16 + 256 * 128 + 128 * 10)
    assert flops_per_sample(cnn, (1, 8, 8), backward=False) == by_hand
    resnet = build_model("resnet18", 10, (3, 32, 32), small_input=True)
    state = copy.deepcopy(resnet.state_dict())
    assert flops_per_sample(resnet, (3, 32, 32), backward=True) > 2 * flops_per_sample(
        resnet, (3, 32, 32), backward=False
    )
    assert all(p.grad is None for p in resnet.parameters())
    assert all(torch.equal(v, state[k]) for k, v in resnet.state_dict().items())


def test_pick_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert pick_device("cpu") == CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == CPU
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        pick_device("cuda")


def test_project_to_ball_keeps_parameters_within_the_radius():
    from fedunlearn.training import distance, project_to_ball

    model = torch.nn.Linear(3, 2)
    center = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    far = distance(dict(model.named_parameters()), center)
    project = project_to_ball(center, 0.5)
    with torch.no_grad():
        project(model)
    assert far > 0.5 and distance(dict(model.named_parameters()), center) == pytest.approx(0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        project(model)  # already inside: unchanged
    assert distance(dict(model.named_parameters()), before) == 0.0
    with pytest.raises(ValueError, match="radius must be >= 0"):
        project_to_ball(center, -1.0)
