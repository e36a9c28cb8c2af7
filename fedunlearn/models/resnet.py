"""ResNet-18 from torchvision, randomly initialised, with an optional CIFAR stem."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:  # torchvision (and the torch._dynamo it pulls in) costs ~1.7 s to import:
    from torchvision.models import ResNet  # only a node that builds this model pays it


def build_resnet18(
    in_shape: tuple[int, int, int],
    num_classes: int,
    *,
    small_input: bool = False,
) -> ResNet:
    """Build torchvision's ResNet-18 (``weights=None``).

    torchvision's ReLUs are in-place; they are left as they are, so BackPACK needs
    ``use_converter=True`` on this model (and BatchNorm in ``eval()``), see NOTES.md.

    Parameters
    ----------
    in_shape
        Input shape ``(C, H, W)``; the first convolution takes C channels. The global
        average pool accepts any H, W.
    num_classes
        Number of output logits.
    small_input
        Use the CIFAR stem: a 3x3 stride-1 first convolution and no max-pool, which keeps
        the spatial resolution of 32x32 (or smaller) images instead of dividing it by 4.

    Returns
    -------
    torchvision.models.ResNet
        The freshly initialised model; parameter names are torchvision's.
    """
    from torchvision.models import resnet18

    in_channels = in_shape[0]
    model = resnet18(weights=None, num_classes=num_classes)
    if small_input or in_channels != model.conv1.in_channels:
        kernel, stride, padding = (3, 1, 1) if small_input else (7, 2, 3)
        model.conv1 = nn.Conv2d(
            in_channels, 64, kernel_size=kernel, stride=stride, padding=padding, bias=False
        )
        # torchvision initialises every conv with Kaiming normal (fan_out); do the same so
        # the replaced stem starts like the rest of the network.
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    if small_input:
        model.maxpool = nn.Identity()
    return model
