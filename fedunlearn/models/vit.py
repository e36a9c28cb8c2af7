"""Vision Transformers from torchvision: ViT-B/16 and a tiny one for tests."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:  # torchvision costs ~1.7 s to import: only a ViT node pays it
    from torchvision.models import VisionTransformer


def _check_square_patches(name: str, in_shape: tuple[int, int, int], patch_size: int) -> None:
    """Raise if torchvision's ViT cannot take ``in_shape`` with this patch size."""
    _, height, width = in_shape
    # torchvision's ViT asserts H == W == image_size in forward and
    # image_size % patch_size == 0 in __init__; fail early with a readable message.
    if height != width or height % patch_size:
        raise ValueError(
            f"{name} needs square images whose side divides by its patch size {patch_size}, "
            f"got in_shape={in_shape}"
        )


def build_vit_b16(in_shape: tuple[int, int, int], num_classes: int) -> VisionTransformer:
    """Build torchvision's ViT-B/16 (``weights=None``) for ``in_shape``.

    Parameters
    ----------
    in_shape
        ``(3, S, S)`` with S divisible by 16; S is passed as ``image_size`` (the
        positional embedding has ``(S/16)**2 + 1`` tokens).
    num_classes
        Number of output logits.

    Returns
    -------
    torchvision.models.VisionTransformer
        The freshly initialised model (86 M parameters at any image size).
    """
    if in_shape[0] != 3:
        raise ValueError(f"vit_b16 takes 3-channel images, got in_shape={in_shape}")
    _check_square_patches("vit_b16", in_shape, 16)
    from torchvision.models import vit_b_16

    return vit_b_16(weights=None, image_size=in_shape[-1], num_classes=num_classes)


def build_vit_tiny(
    in_shape: tuple[int, int, int],
    num_classes: int,
    *,
    patch_size: int = 4,
    num_layers: int = 2,
    num_heads: int = 2,
    hidden_dim: int = 32,
    mlp_dim: int = 64,
) -> VisionTransformer:
    """Build a tiny torchvision ``VisionTransformer`` (fast enough for tests).

    Parameters
    ----------
    in_shape
        ``(C, S, S)`` with S divisible by ``patch_size``; any C. torchvision's patch
        projection ``conv_proj`` takes 3 channels: for other C it is replaced by a
        C-channel one under the same module name, initialised as torchvision does.
    num_classes
        Number of output logits.
    patch_size, num_layers, num_heads, hidden_dim, mlp_dim
        The transformer's configuration; ``hidden_dim`` must divide by ``num_heads``.

    Returns
    -------
    torchvision.models.VisionTransformer
        The freshly initialised model.
    """
    in_channels, side, _ = in_shape
    _check_square_patches("vit_tiny", in_shape, patch_size)
    if hidden_dim % num_heads:
        raise ValueError(
            f"vit_tiny needs hidden_dim divisible by num_heads, got {hidden_dim} and {num_heads}"
        )
    from torchvision.models import VisionTransformer

    model = VisionTransformer(
        image_size=side,
        patch_size=patch_size,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        mlp_dim=mlp_dim,
        num_classes=num_classes,
    )
    if in_channels != model.conv_proj.in_channels:
        conv_proj = nn.Conv2d(in_channels, hidden_dim, kernel_size=patch_size, stride=patch_size)
        # Same init as torchvision's VisionTransformer.__init__ gives conv_proj.
        fan_in = in_channels * patch_size * patch_size
        nn.init.trunc_normal_(conv_proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(conv_proj.bias)
        model.conv_proj = conv_proj
    return model
