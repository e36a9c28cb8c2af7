"""On CUDA (``pytest -m gpu``, run by ``bench/gpu.sh`` on a GPU machine): clients pick the
GPU, train there to the CPU's answer, and the curvature estimators agree with the CPU's.

Without CUDA every test here is skipped with that reason; CI has no GPU.
"""

from __future__ import annotations

import copy

import pytest
import torch

from fedunlearn.models import seeded_model
from fedunlearn.training import pick_device, train
from fedunlearn.unlearning.curvature import diagonal_curvature

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")]

SHAPE = (1, 28, 28)


def _data(n: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, *SHAPE, generator=generator), torch.randint(0, 10, (n,),
                                                                       generator=generator)


def test_auto_device_is_the_gpu() -> None:
    assert pick_device("auto").type == "cuda"


def test_training_on_the_gpu_matches_the_cpu() -> None:
    images, labels = _data()
    cpu_model = seeded_model("cnn_nonorm", 10, SHAPE, seed=0)
    gpu_model = copy.deepcopy(cpu_model)
    options = {"epochs": 1, "batch_size": 32, "lr": 0.01, "seed": 0}
    train(cpu_model, images, labels, device="cpu", **options)
    train(gpu_model, images, labels, device="cuda", **options)
    assert next(gpu_model.parameters()).device.type == "cuda"
    for (name, a), b in zip(cpu_model.state_dict().items(), gpu_model.state_dict().values(),
                            strict=True):
        assert torch.allclose(a, b.cpu(), rtol=1e-3, atol=1e-4), name


@pytest.mark.parametrize("estimator", ["diag_ggn_exact", "exact_func"])
def test_exact_curvature_on_the_gpu_matches_the_cpu(estimator: str) -> None:
    images, labels = _data(32)
    model = seeded_model("cnn_nonorm", 10, SHAPE, seed=0).eval()
    options = {"estimator": estimator, "batch_size": 16, "seed": 0}
    on_cpu = diagonal_curvature(model, images, labels, device="cpu", **options)
    on_gpu = diagonal_curvature(model, images, labels, device="cuda", **options)
    for name, value in on_cpu.items():
        other = on_gpu[name].cpu()
        assert torch.linalg.vector_norm(other - value) <= 1e-4 * torch.linalg.vector_norm(
            value) + 1e-12, name
