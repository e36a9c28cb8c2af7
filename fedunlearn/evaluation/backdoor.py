"""Backdoor metrics: attack success rate and accuracy on triggered clean images."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from fedunlearn.training import Device, predict_logits


def backdoor_metrics(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    target: int,
    trigger: Callable[[Tensor], Tensor],
    batch_size: int,
    device: Device,
) -> dict[str, float]:
    """Attack success rate and backdoor accuracy on triggered clean images.

    Only images whose true label differs from ``target`` count: on a target-class image
    a target prediction is no evidence of the backdoor.

    Parameters
    ----------
    model
        The model under test (put in eval mode for the pass, then restored).
    images, labels
        Clean test images ``(N, C, H, W)`` and their true labels.
    target
        The class the trigger forces.
    trigger
        Maps a batch of images to the same images with the trigger, e.g.
        ``functools.partial(add_trigger, size=3, value=trigger_value(train.images))``.
    batch_size, device
        As in :func:`fedunlearn.training.predict_logits`.

    Returns
    -------
    dict
        ``asr``: percent of the triggered images classified as ``target``;
        ``backdoor_acc``: percent classified as their true label.
    """
    labels = labels.cpu().long()
    keep = labels != target
    if not bool(keep.any()):
        raise ValueError(f"no image with a label other than the backdoor target {target}")
    triggered = trigger(images[keep])
    predicted = predict_logits(model, triggered, batch_size=batch_size, device=device).argmax(1)
    return {
        "asr": 100.0 * (predicted == target).double().mean().item(),
        "backdoor_acc": 100.0 * (predicted == labels[keep]).double().mean().item(),
    }
