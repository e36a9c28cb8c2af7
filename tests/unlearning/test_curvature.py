"""Diagonal curvature estimators against exact references on tiny networks.

References are computed in float64 from full matrices, independently of the code under
test: the Hessian with ``torch.autograd.functional.hessian`` over the flattened
parameters, the GGN as ``mean_n J_n^T (diag(p_n) - p_n p_n^T) J_n`` from full Jacobians.

Why one file of ~390 lines: every estimator against the same two exact references.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from fedunlearn.models import build_model
from fedunlearn.unlearning.curvature import (
    AUTO_MC_SAMPLES,
    ESTIMATORS,
    NONNEGATIVE,
    diagonal_curvature,
    resolve_estimator,
    supported_estimators,
    supports_backpack,
)

NUM_SAMPLES = 10
IN_SHAPE = (1, 8, 8)
CLASSES = 3
# The code under test computes in float32 and sums a few hundred products per entry;
# float32 rounding (6e-8 relative per operation) then stays around 1e-6 of the diagonal's
# norm. 1e-5 leaves room for that while any weighting or scaling mistake (factors like
# batch/N or 1/M) shows up as an O(1) error.
EXACT_RTOL = 1e-5


def relu_net() -> nn.Sequential:
    """Conv + max-pool + two linear layers, ReLU, no normalization (203 parameters)."""
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 5),
        nn.ReLU(),
        nn.Linear(5, CLASSES),
    )


def layernorm_net() -> nn.Sequential:
    """Conv + LayerNorm over (C, H, W), as in the NoT CNN."""
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.LayerNorm([2, 8, 8]),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32, CLASSES),
    )


class ResidualNet(nn.Module):
    """BatchNorm, an in-place ReLU and a residual add: BackPACK needs its converter."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(2, 2, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(8, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn(self.conv(x)))
        x = x + self.conv2(x)
        return self.fc(torch.flatten(self.pool(x), 1))


def make(factory, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = factory()
    if isinstance(model, ResidualNet):
        # Non-trivial running statistics, so that eval mode is visibly used.
        with torch.no_grad():
            model.bn.running_mean.uniform_(-0.5, 0.5)
            model.bn.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run these tiny-tensor tests on one thread.

    Intra-op threads only add synchronisation to ops this small, and on a busy 2-core
    machine that made the thousands of Hessian-vector products below 10-50x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data() -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(NUM_SAMPLES, *IN_SHAPE, generator=generator)
    labels = torch.randint(0, CLASSES, (NUM_SAMPLES,), generator=generator)
    return images, labels


def _flat(model: nn.Module) -> tuple[Tensor, list[tuple[str, torch.Size]]]:
    spec = [(name, p.shape) for name, p in model.named_parameters()]
    return torch.cat([p.detach().double().flatten() for p in model.parameters()]), spec


def _unflat(theta: Tensor, spec: list[tuple[str, torch.Size]]) -> dict[str, Tensor]:
    params, start = {}, 0
    for name, shape in spec:
        size = math.prod(shape)
        params[name] = theta[start : start + size].view(shape)
        start += size
    return params


def _split(vector: Tensor, model: nn.Module) -> dict[str, Tensor]:
    return {k: v.float() for k, v in _unflat(vector, _flat(model)[1]).items()}


def reference_hessian(model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
    """Full float64 Hessian of the mean loss over the flattened parameters (eval mode)."""
    model64 = copy.deepcopy(model).double().eval()
    theta, spec = _flat(model64)

    def loss(flat: Tensor) -> Tensor:
        logits = functional_call(model64, _unflat(flat, spec), (images.double(),))
        return F.cross_entropy(logits, labels)

    return torch.autograd.functional.hessian(loss, theta)


def reference_ggn_diag(model: nn.Module, images: Tensor) -> Tensor:
    """``diag(mean_n J_n^T (diag p_n - p_n p_n^T) J_n)`` from full Jacobians, float64."""
    model64 = copy.deepcopy(model).double().eval()
    theta, spec = _flat(model64)

    def logits_of(flat: Tensor) -> Tensor:
        return functional_call(model64, _unflat(flat, spec), (images.double(),))

    jac = torch.autograd.functional.jacobian(logits_of, theta)  # (N, C, P)
    prob = torch.softmax(logits_of(theta), dim=1)
    h_out = torch.diag_embed(prob) - prob[:, :, None] * prob[:, None, :]  # (N, C, C)
    return torch.einsum("ncp,ncd,ndp->p", jac, h_out, jac) / len(images)


def as_vector(diag: dict[str, Tensor], model: nn.Module) -> Tensor:
    return torch.cat([diag[name].double().flatten() for name, _ in model.named_parameters()])


def rel_error(estimate: Tensor, reference: Tensor) -> float:
    return float((estimate - reference).norm() / reference.norm())


def run(model: nn.Module, images: Tensor, labels: Tensor, estimator: str, **kwargs) -> Tensor:
    kwargs.setdefault("batch_size", 4)  # batches of 4, 4, 2: unequal sizes
    kwargs.setdefault("seed", 0)
    diag = diagonal_curvature(model, images, labels, estimator=estimator, device="cpu", **kwargs)
    assert list(diag) == [name for name, _ in model.named_parameters()]
    for name, param in model.named_parameters():
        assert diag[name].shape == param.shape
        assert diag[name].dtype == torch.float32 and diag[name].device.type == "cpu"
    return as_vector(diag, model)


@pytest.mark.parametrize("estimator", ["diag_hessian", "diag_ggn_exact", "exact_func", "auto"])
def test_exact_estimators_match_references_on_relu_net(data, estimator: str) -> None:
    images, labels = data
    model = make(relu_net)
    hessian_diag = reference_hessian(model, images, labels).diagonal()
    ggn_diag = reference_ggn_diag(model, images)
    # Piecewise linear in every single parameter: the Hessian's extra term has a zero
    # diagonal, so both diagonals coincide.
    assert rel_error(hessian_diag, ggn_diag) < 1e-12
    assert rel_error(run(model, images, labels, estimator), ggn_diag) < EXACT_RTOL


def test_batch_size_does_not_change_the_result(data) -> None:
    images, labels = data
    model = make(relu_net)
    for estimator in ("diag_hessian", "diag_ggn_exact", "exact_func"):
        by3 = run(model, images, labels, estimator, batch_size=3)
        by7 = run(model, images, labels, estimator, batch_size=7)
        assert rel_error(by3, by7) < EXACT_RTOL, estimator


@pytest.mark.parametrize(("estimator", "factory"), [
    ("diag_ggn_mc", relu_net), ("mc_fisher", relu_net), ("mc_fisher", layernorm_net)],
    ids=["diag_ggn_mc-relu", "mc_fisher-relu", "mc_fisher-layernorm"])
def test_monte_carlo_ggn_is_within_its_standard_error(data, estimator, factory) -> None:
    # BackPACK's DiagGGNMC and torch.func's mc_fisher compute the same estimator (one
    # through BackPACK's backward, one through per-sample gradients); mc_fisher also
    # works where BackPACK does not (LayerNorm).
    images, labels = data
    model = make(factory)
    mc_samples = 1000
    # The estimator averages, per sample n, M squared "sampled gradients"
    # v_{n,y} = (J_n^T (p_n - e_y))^2 over labels y ~ softmax(p_n). Enumerating the C
    # labels gives each draw's exact variance, so the expected squared error of the
    # whole diagonal is sum_i (1/N^2)(1/M) sum_n Var_y(v_{n,y,i}) (one batch here).
    model64 = copy.deepcopy(model).double().eval()
    theta, spec = _flat(model64)
    jac = torch.autograd.functional.jacobian(
        lambda flat: functional_call(model64, _unflat(flat, spec), (images.double(),)), theta
    )
    prob = torch.softmax(functional_call(model64, _unflat(theta, spec), (images.double(),)), 1)
    residual = prob[:, None, :] - torch.eye(CLASSES, dtype=torch.float64)[None]  # (N, y, C)
    draws = torch.einsum("nyc,ncp->nyp", residual, jac).square()
    mean = torch.einsum("ny,nyp->np", prob, draws)
    variance = torch.einsum("ny,nyp->np", prob, (draws - mean[:, None]).square())
    expected_error = math.sqrt(float(variance.sum()) / NUM_SAMPLES**2 / mc_samples)
    ggn_diag = reference_ggn_diag(model, images)
    assert torch.allclose(mean.mean(0), ggn_diag)  # unbiased
    relative_sd = expected_error / float(ggn_diag.norm())
    assert relative_sd < 0.05  # the check below must be able to tell a wrong estimator

    estimate = run(model, images, labels, estimator, mc_samples=mc_samples, batch_size=16)
    # 3 standard errors: by Markov's inequality a fresh seed exceeds it with probability
    # below 1/9 (far less in practice, the squared error being a sum over many entries);
    # the seed is fixed, so the test is deterministic.
    assert rel_error(estimate, ggn_diag) < 3 * relative_sd
    assert float(estimate.min()) >= 0  # sums of squares
    again = run(model, images, labels, estimator, mc_samples=mc_samples, batch_size=16)
    assert torch.equal(estimate, again)
    other = run(model, images, labels, estimator, mc_samples=mc_samples, batch_size=16, seed=1)
    assert not torch.equal(estimate, other)


@pytest.mark.parametrize("factory", [relu_net, layernorm_net], ids=["relu", "layernorm"])
def test_hutchinson_is_within_its_standard_error(data, factory) -> None:
    images, labels = data
    model = make(factory)
    probes = 4000
    hessian = reference_hessian(model, images, labels)
    # With Rademacher z, z_i (H z)_i = H_ii + sum_{j != i} H_ij z_i z_j has variance
    # sum_{j != i} H_ij^2; one batch and S probes give an expected squared error of the
    # whole diagonal of ||H - diag(H)||_F^2 / S. Here ||H - diag(H)||_F is ~7x the
    # diagonal's norm, so it takes thousands of probes to get near 10 %.
    off_diagonal = hessian - torch.diag(hessian.diagonal())
    relative_sd = float(off_diagonal.norm()) / math.sqrt(probes) / float(hessian.diagonal().norm())
    assert relative_sd < 0.15
    estimate = run(model, images, labels, "hutchinson", hutchinson_samples=probes, batch_size=16)
    assert rel_error(estimate, hessian.diagonal()) < 3 * relative_sd  # as for diag_ggn_mc
    # Repeatability does not depend on the probe count: check it on a cheaper run, over
    # several batches (fresh probes in each).
    few = {"hutchinson_samples": 5, "batch_size": 4}
    first = run(model, images, labels, "hutchinson", **few)
    assert torch.equal(first, run(model, images, labels, "hutchinson", **few))
    assert not torch.equal(first, run(model, images, labels, "hutchinson", **few, seed=1))


def test_layernorm_net_exact_func_is_the_ggn_and_backpack_refuses(data) -> None:
    images, labels = data
    model = make(layernorm_net)
    ggn_diag = reference_ggn_diag(model, images)
    hessian_diag = reference_hessian(model, images, labels).diagonal()
    # With LayerNorm the Hessian diagonal is not the GGN's: exact_func is named for what
    # it computes.
    assert rel_error(hessian_diag, ggn_diag) > 0.01
    assert rel_error(run(model, images, labels, "exact_func"), ggn_diag) < EXACT_RTOL
    assert not supports_backpack(model)
    assert supported_estimators(model) == ("auto", "exact_func", "hutchinson", "mc_fisher")
    # auto takes the cheap unbiased Monte-Carlo GGN, with at least AUTO_MC_SAMPLES labels.
    assert resolve_estimator(model, "auto") == "mc_fisher"
    assert torch.equal(run(model, images, labels, "auto"),
                       run(model, images, labels, "mc_fisher", mc_samples=AUTO_MC_SAMPLES))
    for estimator in ("diag_hessian", "diag_ggn_exact", "diag_ggn_mc"):
        with pytest.raises(ValueError) as error:
            run(model, images, labels, estimator)
        message = str(error.value)
        assert "\n" not in message
        assert f"{estimator!r}" in message and "LayerNorm" in message
        assert message.endswith(
            "estimators that work for it: auto, exact_func, hutchinson, mc_fisher")


def test_converter_model_uses_eval_mode_and_leaves_the_model_alone(data) -> None:
    images, labels = data
    model = make(ResidualNet).train()
    before = copy.deepcopy(model.state_dict())
    assert supports_backpack(model)  # in-place ReLU and residual add go through the converter
    assert supported_estimators(model) == (
        "auto",
        "diag_ggn_exact",
        "diag_ggn_mc",
        "exact_func",
        "hutchinson",
        "mc_fisher",
    )
    with pytest.raises(ValueError, match="no diag_hessian extension for .*BatchNorm2d"):
        run(model, images, labels, "diag_hessian")
    ggn_diag = reference_ggn_diag(model, images)  # in eval mode
    for estimator in ("diag_ggn_exact", "exact_func"):
        assert rel_error(run(model, images, labels, estimator), ggn_diag) < EXACT_RTOL
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.relu.inplace


class FunctionalNet(nn.Module):
    """A functional op BackPACK's converter leaves as a function call: no module to extend."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.tanh(x.flatten(1)))


def test_backpack_support_rules(data) -> None:
    images, labels = data
    in_place = make(relu_net)
    in_place[1].inplace = True  # a plain chain, but in place: goes through the converter
    assert supports_backpack(in_place)
    ggn_diag = reference_ggn_diag(in_place, images)
    assert rel_error(run(in_place, images, labels, "diag_hessian"), ggn_diag) < EXACT_RTOL
    group_norm = nn.Sequential(nn.Conv2d(1, 2, 3), nn.GroupNorm(1, 2), nn.Flatten())
    assert not supports_backpack(group_norm)
    functional = FunctionalNet()
    assert not supports_backpack(functional)
    with pytest.raises(ValueError, match="non-module operations .*tanh"):
        run(functional, images, labels, "diag_ggn_exact")
    assert resolve_estimator(functional, "auto") == "mc_fisher"


def test_frozen_parameters_get_a_curvature_too(data) -> None:
    images, labels = data
    model = make(relu_net)
    model[0].requires_grad_(False)
    ggn_diag = reference_ggn_diag(model, images)
    for estimator in ("diag_ggn_exact", "exact_func", "hutchinson", "mc_fisher"):
        estimate = run(model, images, labels, estimator)
        assert estimate[:20].abs().sum() > 0, estimator  # the conv's 20 entries
    assert rel_error(run(model, images, labels, "exact_func"), ggn_diag) < EXACT_RTOL
    assert not model[0].weight.requires_grad


def test_nonnegative_estimators() -> None:
    assert set(NONNEGATIVE) <= set(ESTIMATORS)
    assert "hutchinson" not in NONNEGATIVE and "diag_hessian" not in NONNEGATIVE
    assert {"diag_ggn_exact", "diag_ggn_mc", "exact_func", "mc_fisher"} <= NONNEGATIVE


def test_bad_arguments_give_one_line_errors(data) -> None:
    images, labels = data
    model = make(relu_net)
    with pytest.raises(ValueError, match="unknown estimator 'fisher'; choose one of auto,") as e:
        run(model, images, labels, "fisher")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="mc_samples"):
        run(model, images, labels, "diag_ggn_mc", mc_samples=0)
    with pytest.raises(ValueError, match="labels"):
        run(model, images, labels[:3], "exact_func")


def test_progress_is_reported_per_batch(data) -> None:
    images, labels = data
    calls: list[tuple[int, int]] = []
    run(make(relu_net), images, labels, "exact_func", progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


# Smallest configurations of the registry's models; ResNet-18 has no size options.
REGISTRY = {
    "cnn": ((1, 8, 8), {"channels": (2, 3), "hidden": 4}),
    "cnn_nonorm": ((1, 8, 8), {"channels": (2, 3), "hidden": 4}),
    "resnet18": ((3, 8, 8), {"small_input": True}),
    "vit_tiny": ((3, 8, 8), {"hidden_dim": 8, "mlp_dim": 8, "num_layers": 1}),
}


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_registry_model_gets_a_curvature(name: str) -> None:
    in_shape, options = REGISTRY[name]
    torch.manual_seed(0)
    model = build_model(name, 2, in_shape, **options)
    images, labels = torch.randn(2, *in_shape), torch.tensor([0, 1])
    estimators = (("auto", "hutchinson", "mc_fisher") if name == "resnet18"
                  else ("auto", "exact_func", "mc_fisher"))
    for estimator in estimators:
        diag = diagonal_curvature(
            model, images, labels, estimator=estimator, batch_size=2, device="cpu", seed=0
        )
        assert all(torch.isfinite(v).all() for v in diag.values())
        assert sum(float(v.abs().sum()) for v in diag.values()) > 0
    expected = "diag_ggn_exact" if name in ("cnn_nonorm", "resnet18") else "mc_fisher"
    assert resolve_estimator(model, "auto") == expected
