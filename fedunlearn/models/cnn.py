"""The NoT paper's small CNN, with or without LayerNorm.

The paper describes it only as "two convolution layers with layer normalization"; the
widths here are ours: 3x3 convolutions with padding 1 (32 then 64 channels by default),
each followed by a LayerNorm over (C, H, W), a ReLU and a 2x2 max-pool, then a hidden
linear layer (128 units by default) and the classifier.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn


class NoTCNN(nn.Sequential):
    """Two conv blocks, a hidden linear layer and the classifier.

    Built as an ``nn.Sequential`` of named modules so that parameter names stay readable
    (``conv1.weight``, ``norm1.bias``, ``fc2.weight`` ...) and so that each module's
    output is the next module's input: BackPACK's second-order extensions pass their
    quantities from module to module along exactly that chain, which a functional
    ``torch.flatten`` in a custom ``forward`` would break. For the same reason every
    ReLU is out-of-place.

    Parameters
    ----------
    in_shape
        Input shape ``(C, H, W)``; H and W must be at least 4 (two 2x2 pools).
    num_classes
        Number of output logits.
    channels
        Output channels of the two convolutions.
    hidden
        Width of the hidden linear layer.
    norm
        Put a LayerNorm over (C, H, W) after each convolution (the paper's model). Without
        it the model is the BackPACK-compatible variant (no extension handles LayerNorm).
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        *,
        channels: tuple[int, int] = (32, 64),
        hidden: int = 128,
        norm: bool = True,
    ) -> None:
        in_channels, height, width = in_shape
        if height < 4 or width < 4:
            raise ValueError(
                f"cnn needs inputs of at least 4x4 (two 2x2 max-pools), got in_shape={in_shape}"
            )
        if len(channels) != 2:
            raise ValueError(f"cnn takes exactly two conv widths, got channels={channels}")
        c1, c2 = channels
        # padding 1 keeps H, W through each 3x3 conv; each pool floors them by 2.
        h1, w1 = height, width
        h2, w2 = h1 // 2, w1 // 2
        h3, w3 = h2 // 2, w2 // 2

        blocks: list[tuple[str, nn.Module]] = [("conv1", nn.Conv2d(in_channels, c1, 3, padding=1))]
        if norm:
            blocks.append(("norm1", nn.LayerNorm([c1, h1, w1])))
        blocks += [("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2))]
        blocks.append(("conv2", nn.Conv2d(c1, c2, 3, padding=1)))
        if norm:
            blocks.append(("norm2", nn.LayerNorm([c2, h2, w2])))
        blocks += [
            ("relu2", nn.ReLU()),
            ("pool2", nn.MaxPool2d(2)),
            ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(c2 * h3 * w3, hidden)),
            ("relu3", nn.ReLU()),
            ("fc2", nn.Linear(hidden, num_classes)),
        ]
        super().__init__(OrderedDict(blocks))


def build_cnn(
    in_shape: tuple[int, int, int],
    num_classes: int,
    *,
    channels: tuple[int, int] = (32, 64),
    hidden: int = 128,
) -> NoTCNN:
    """Build the NoT CNN with LayerNorm after each convolution.

    Parameters
    ----------
    in_shape
        Input shape ``(C, H, W)``.
    num_classes
        Number of output logits.
    channels
        Output channels of the two 3x3 convolutions.
    hidden
        Width of the hidden linear layer.

    Returns
    -------
    NoTCNN
        The freshly initialised model.
    """
    return NoTCNN(in_shape, num_classes, channels=tuple(channels), hidden=hidden, norm=True)


def build_cnn_nonorm(
    in_shape: tuple[int, int, int],
    num_classes: int,
    *,
    channels: tuple[int, int] = (32, 64),
    hidden: int = 128,
) -> NoTCNN:
    """Build the NoT CNN without normalization (BackPACK-compatible).

    Parameters and return value as in :func:`build_cnn`.
    """
    return NoTCNN(in_shape, num_classes, channels=tuple(channels), hidden=hidden, norm=False)
