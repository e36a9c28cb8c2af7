"""In-memory image data: normalized float tensors with their labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch


# eq=False: the fields are tensors, whose ``==`` is element-wise, so a generated
# ``__eq__`` would be wrong; identity comparison (and hashing) is what callers get.
@dataclass(frozen=True, eq=False)
class ImageData:
    """A set of images and their labels, held in memory.

    Attributes
    ----------
    images : torch.Tensor
        float32, ``N x C x H x W``, already normalized per channel.
    labels : torch.Tensor
        int64, ``N``, class ids in ``[0, num_classes)``.
    num_classes : int
        Number of classes of the data set (not only those present here).

    Notes
    -----
    The dataclass is frozen but tensors are mutable, and loaded data sets are
    shared through a cache: never modify ``images`` or ``labels`` in place; use
    :meth:`subset` or build a new ``ImageData`` (as ``forget.poison`` does).
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int

    def __post_init__(self) -> None:
        if self.images.dtype != torch.float32 or self.images.dim() != 4:
            raise ValueError(
                f"images must be a float32 N x C x H x W tensor, got {self.images.dtype} "
                f"with shape {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise ValueError(
                f"labels must be a 1-D int64 tensor, got {self.labels.dtype} "
                f"with shape {tuple(self.labels.shape)}"
            )
        if len(self.labels) != len(self.images):
            raise ValueError(
                f"{len(self.images)} images but {len(self.labels)} labels; they must match"
            )
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if len(self.labels):
            low, high = int(self.labels.min()), int(self.labels.max())
            if low < 0 or high >= self.num_classes:
                raise ValueError(f"labels must lie in [0, {self.num_classes}), got [{low}, {high}]")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, ids: npt.ArrayLike) -> ImageData:
        """Return the rows ``ids`` (in the order given) as a new ``ImageData``.

        Parameters
        ----------
        ids : array_like of int
            Row indices into this data.

        Returns
        -------
        ImageData
            The selected rows; the tensors are copies (advanced indexing), so the
            result can be changed without touching this data.
        """
        index = torch.as_tensor(np.asarray(ids, dtype=np.int64).reshape(-1))
        return ImageData(self.images[index], self.labels[index], self.num_classes)


@dataclass(frozen=True, eq=False)
class DatasetSplits:
    """A data set's train and test parts.

    Attributes
    ----------
    train : ImageData
        Training data; sample ids everywhere in the project are row indices into it.
    test : ImageData
        Held-out test data.
    name : str
        Registry name of the data set (e.g. ``"mnist_embedded"``).
    num_classes : int
        Number of classes.
    in_shape : tuple of int
        ``(C, H, W)`` of one image, what a model's input layer needs.
    """

    train: ImageData
    test: ImageData
    name: str
    num_classes: int
    in_shape: tuple[int, int, int]
