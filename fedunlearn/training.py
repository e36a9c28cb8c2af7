"""Local training, evaluation and measured FLOPs for one client's tensors.

Everything here works on in-memory tensors (``images`` of shape ``(N, C, H, W)``,
``labels`` of shape ``(N,)``); the Flower layer decides which samples a client uses.

Why one module of ~410 lines: local SGD, evaluation and the FLOP counting share the
same batching and determinism rules; each is a single documented function.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

Device = str | torch.device

# Samples in the batch on which FLOPs are measured: conv and matmul FLOPs are linear in
# the batch size, and more than one sample keeps BatchNorm's training-mode check quiet.
_FLOP_BATCH = 2
_FLOPS_CACHE: dict[tuple[object, ...], int] = {}


@dataclass(frozen=True)
class TrainStats:
    """What one call of :func:`train` did.

    Attributes
    ----------
    num_examples
        Samples seen per epoch (``len(images)``): FedAvg's weight.
    loss
        Mean (unclamped) cross-entropy over the last epoch, measured on the fly.
    accuracy
        Training accuracy over the last epoch, measured on the fly (train mode).
    flops
        Measured FLOPs of all samples processed: forward+backward, or forward only for
        batches that took no step (conv, matmul and attention only, see
        :func:`flops_per_sample`).
    steps
        Optimizer steps taken (batches skipped by ``ascent``'s cap take none).
    """

    num_examples: int
    loss: float
    accuracy: float
    flops: int
    steps: int


@dataclass(frozen=True)
class EvalStats:
    """Loss and accuracy of a model on a set of samples.

    Attributes
    ----------
    loss
        Mean cross-entropy.
    accuracy
        Share of samples whose arg-max logit is the label, in [0, 1].
    num_examples
        Number of samples evaluated.
    flops
        Measured forward FLOPs of the evaluation (conv and matmul only).
    """

    loss: float
    accuracy: float
    num_examples: int
    flops: int


def pick_device(prefer: str = "auto") -> torch.device:
    """Choose the device to train on.

    Parameters
    ----------
    prefer
        ``"auto"`` (CUDA when available, else CPU), or any device string torch accepts
        (``"cpu"``, ``"cuda"``, ``"cuda:1"``).

    Returns
    -------
    torch.device

    Raises
    ------
    RuntimeError
        A CUDA device was asked for but is not available.
    """
    if prefer == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(prefer)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {prefer!r} requested but CUDA is not available; use 'cpu' or 'auto'"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device {prefer!r} requested but only {torch.cuda.device_count()} "
                "CUDA device(s) are visible"
            )
    return device


@contextmanager
def _private_rng(device: torch.device, seed: int) -> Iterator[None]:
    """Seed the CPU generator (and ``device``'s CUDA one) for the block only.

    ``torch.manual_seed`` would reseed every CUDA device while ``fork_rng`` restores only
    the ones it is given, so exactly those are seeded here.
    """
    cuda = []
    if device.type == "cuda":
        cuda = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for index in cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


def _check_data(images: Tensor, labels: Tensor | None, batch_size: int) -> None:
    if len(images) == 0:
        raise ValueError("no samples given")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point, got {images.dtype}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")


def _frozen_entries(
    model: nn.Module, trainable_mask: Mapping[str, Tensor] | None, device: torch.device
) -> list[tuple[nn.Parameter, Tensor, Tensor]]:
    """``(parameter, trainable mask, saved copy)`` for each masked parameter."""
    if not trainable_mask:
        return []
    params = dict(model.named_parameters())
    entries = []
    for name, mask in trainable_mask.items():
        if name not in params:
            raise ValueError(f"trainable_mask names unknown parameter {name!r}")
        param = params[name]
        if mask.dtype != torch.bool or mask.shape != param.shape:
            raise ValueError(
                f"trainable_mask[{name!r}] must be a bool tensor of shape "
                f"{tuple(param.shape)}, got {mask.dtype} {tuple(mask.shape)}"
            )
        entries.append((param, mask.to(device), param.detach().clone()))
    return entries


def train(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    device: Device,
    seed: int,
    grad_clip: float | None = None,
    ascent: bool = False,
    ascent_loss_cap: float | None = None,
    trainable_mask: Mapping[str, Tensor] | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
) -> TrainStats:
    """Train ``model`` in place with SGD (momentum, weight decay) on cross-entropy.

    Deterministic under ``seed`` on the CPU: batches are shuffled by a seeded
    ``torch.Generator`` and the global RNG (dropout) is seeded inside
    ``torch.random.fork_rng``, so the caller's RNG state is left untouched. On CUDA,
    bitwise repeatability also needs ``torch.use_deterministic_algorithms(True)``,
    which is the caller's choice.

    Parameters
    ----------
    model
        Trained in place; moved to ``device`` and left there, in training mode.
    images, labels
        ``(N, C, H, W)`` floating-point images and ``(N,)`` integer class labels, on any
        device (batches are moved to ``device`` one at a time). The last batch may be
        smaller than ``batch_size``.
    epochs, batch_size, lr, momentum, weight_decay
        SGD schedule: ``epochs`` passes over the data, each in a fresh random order.
    device
        Where to compute (see :func:`pick_device`).
    seed
        Seed of the shuffling and of any randomness inside the model.
    grad_clip
        If set, clip the gradient's global L2 norm to this value before each step.
    ascent
        Maximise the mean cross-entropy instead (gradient-ascent unlearning). Ascent has
        no optimum, so it is bounded: a batch whose mean loss already reaches
        ``ascent_loss_cap`` takes no step at all (no gradient, momentum or weight
        decay), so the loss stops growing once it is there instead of driving the logits
        to infinity. Weights move only on batches still below the cap, so the loss can
        overshoot it only by what those steps add; ``grad_clip`` bounds each of them
        to ``lr * grad_clip``. (Clamping the loss but still stepping was tried: momentum
        and shared weights carried the digits CNN's mean loss to ~30x the cap in 10
        epochs at lr 0.01.) Checking the cap costs one host sync per batch.
    ascent_loss_cap
        The cap for ``ascent``; ``None`` means ``ln(num_classes)``, the loss of a
        prediction that gives the true class chance-level probability.
    trainable_mask
        Optional ``{parameter name: bool tensor of the parameter's shape}``; entries
        where the mask is False stay bit-identical. Their gradients are zeroed (so they
        do not count towards ``grad_clip``) and, because weight decay and momentum would
        still move them, they are copied back after every step.
        Parameters not named are fully trainable. Buffers (BatchNorm running
        statistics) are not covered.
    after_step
        Called with the model after every optimizer step, under ``torch.no_grad``;
        e.g. :func:`project_to_ball` for projected gradient ascent (PGD).

    Returns
    -------
    TrainStats

    Raises
    ------
    FloatingPointError
        The loss became NaN or infinite (lower ``lr`` or set ``grad_clip``).
    """
    _check_data(images, labels, batch_size)
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    device = torch.device(device)
    model.to(device).train()
    frozen = _frozen_entries(model, trainable_mask, device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    shuffle = torch.Generator().manual_seed(seed)
    num = len(images)
    steps = 0
    stepped_samples = 0  # samples whose batch also ran a backward pass
    with _private_rng(device, seed):
        for epoch in range(epochs):
            order = torch.randperm(num, generator=shuffle)
            # Sums stay on the device so that no step waits for a host sync.
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), dtype=torch.long, device=device)
            for start in range(0, num, batch_size):
                batch = order[start : start + batch_size]
                x = images[batch].to(device, non_blocking=True)
                y = labels[batch].to(device, non_blocking=True).long()
                logits = model(x)
                per_sample = F.cross_entropy(logits, y, reduction="none")
                with torch.no_grad():
                    loss_sum += per_sample.sum()
                    correct += (logits.argmax(dim=1) == y).sum()
                objective = per_sample.mean()
                if ascent:
                    cap = math.log(logits.shape[1]) if ascent_loss_cap is None else ascent_loss_cap
                    if objective.item() >= cap:
                        continue
                    objective = -objective
                optimizer.zero_grad(set_to_none=True)
                objective.backward()
                with torch.no_grad():
                    for param, trainable, _ in frozen:
                        if param.grad is not None:
                            param.grad.mul_(trainable)
                if grad_clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                optimizer.step()
                with torch.no_grad():
                    for param, trainable, saved in frozen:
                        param.copy_(torch.where(trainable, param, saved))
                    if after_step is not None:
                        after_step(model)
                steps += 1
                stepped_samples += len(batch)
            mean_loss = loss_sum.item() / num
            if not math.isfinite(mean_loss):
                raise FloatingPointError(
                    f"non-finite training loss in epoch {epoch} (lr={lr}, grad_clip={grad_clip})"
                )
    in_shape = tuple(images.shape[1:])
    forward = flops_per_sample(model, in_shape, backward=False)
    backward = flops_per_sample(model, in_shape, backward=True) - forward
    return TrainStats(
        num_examples=num,
        loss=mean_loss,
        accuracy=correct.item() / num,
        flops=forward * num * epochs + backward * stepped_samples,
        steps=steps,
    )


def project_to_ball(center: Mapping[str, Tensor],
                    radius: float) -> Callable[[nn.Module], None]:
    """A step hook that keeps a model's parameters within L2 distance ``radius`` of
    ``center`` (all parameters as one vector), scaling the offset back onto the sphere.

    Parameters
    ----------
    center : mapping of str to Tensor
        Parameter values by name (``named_parameters``), on the model's device.
    radius : float
        The ball's radius (>= 0).
    """
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")

    def project(model: nn.Module) -> None:
        params = [(p, center[name]) for name, p in model.named_parameters()]
        distance = torch.sqrt(sum(((p - c) ** 2).sum() for p, c in params))
        if distance > radius:
            scale = radius / distance
            for p, c in params:
                p.copy_(c + (p - c) * scale)
    return project


def distance(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    """L2 distance between two sets of parameters with the same names (as one vector)."""
    with torch.no_grad():  # a measurement, not part of any graph
        return float(torch.sqrt(sum(((a[k].float() - b[k].float()) ** 2).sum()
                                    for k in a)))


def predict_logits(model: nn.Module, images: Tensor, *, batch_size: int, device: Device) -> Tensor:
    """Logits of ``model`` on ``images``, in eval mode and without gradients.

    Parameters
    ----------
    model
        Moved to ``device`` and left there; its train/eval mode is restored afterwards.
    images
        ``(N, C, H, W)`` floating-point images.
    batch_size
        Samples per forward pass.
    device
        Where to compute.

    Returns
    -------
    torch.Tensor
        ``(N, num_classes)`` logits on the CPU.
    """
    _check_data(images, None, batch_size)
    device = torch.device(device)
    was_training = model.training
    model.to(device).eval()
    try:
        with torch.no_grad():
            outputs = [
                model(images[start : start + batch_size].to(device)).cpu()
                for start in range(0, len(images), batch_size)
            ]
    finally:
        model.train(was_training)
    return torch.cat(outputs)


def evaluate(
    model: nn.Module, images: Tensor, labels: Tensor, *, batch_size: int, device: Device
) -> EvalStats:
    """Mean cross-entropy and accuracy of ``model`` on ``(images, labels)``.

    Parameters
    ----------
    model, images, batch_size, device
        As in :func:`predict_logits`.
    labels
        ``(N,)`` integer class labels.

    Returns
    -------
    EvalStats
    """
    _check_data(images, labels, batch_size)
    logits = predict_logits(model, images, batch_size=batch_size, device=device)
    labels = labels.cpu().long()
    num = len(images)
    return EvalStats(
        loss=F.cross_entropy(logits, labels).item(),
        accuracy=(logits.argmax(dim=1) == labels).float().mean().item(),
        num_examples=num,
        flops=flops_per_sample(model, tuple(images.shape[1:]), backward=False) * num,
    )


def flops_per_sample(model: nn.Module, in_shape: tuple[int, ...], *, backward: bool) -> int:
    """Measure the FLOPs of one sample's forward (and backward) pass.

    Measured with ``torch.utils.flop_counter.FlopCounterMode`` on a batch of
    ``_FLOP_BATCH`` samples and divided by it (conv and matmul FLOPs are linear in the
    batch size). FlopCounterMode counts convolutions, matrix products and attention; it
    does NOT count normalization (LayerNorm, BatchNorm), activations, pooling or other
    element-wise work, so the figures are slightly below the true arithmetic.

    The pass runs on the ``meta`` device through ``torch.func.functional_call`` with
    stand-in parameters and buffers: it costs no compute, leaves the model's weights,
    gradients and BatchNorm statistics untouched, and gives the same count whatever
    device the model lives on (on the CPU, real tensors would take a fused attention
    kernel that the counter misses). The backward pass differentiates only with respect
    to parameters that require gradients, as training does (the input needs none).
    Results are cached per model class, structure (``repr``), parameter shapes and
    ``requires_grad``, ``in_shape`` and ``backward``.

    Parameters
    ----------
    model
        The model; not modified.
    in_shape
        Shape of one input sample, e.g. ``(1, 28, 28)``.
    backward
        Count the backward pass too (a training step's cost).

    Returns
    -------
    int
        FLOPs per sample.
    """
    in_shape = tuple(int(d) for d in in_shape)
    named_params = list(model.named_parameters())
    key = (
        type(model).__module__,
        type(model).__qualname__,
        repr(model),
        tuple((name, tuple(p.shape), p.requires_grad) for name, p in named_params),
        in_shape,
        backward,
    )
    if key not in _FLOPS_CACHE:
        params = {
            name: torch.empty_like(p, device="meta").requires_grad_(p.requires_grad)
            for name, p in named_params
        }
        buffers = {name: torch.empty_like(b, device="meta") for name, b in model.named_buffers()}
        x = torch.empty((_FLOP_BATCH, *in_shape), device="meta")
        with FlopCounterMode(display=False) as counter:
            out = functional_call(model, {**params, **buffers}, (x,))
            differentiable = [p for p in params.values() if p.requires_grad]
            if backward and differentiable:
                torch.autograd.grad(out.sum(), differentiable)
        _FLOPS_CACHE[key] = counter.get_total_flops() // _FLOP_BATCH
    return _FLOPS_CACHE[key]
