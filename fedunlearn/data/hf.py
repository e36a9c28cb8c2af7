"""Any Hugging Face image data set, loaded with Flower Datasets' ``FederatedDataset``.

``dataset=hf`` names the set by its Hub id (``dataset.root=uoft-cs/cifar10``) on a
machine with network, or by a packaged builder and local files
(``dataset.root=parquet``, ``dataset.hf.data_files={train: ..., test: ...}``) on one
without. ``FederatedDataset`` loads the splits; the project then stacks the images into
normalized tensors like every other data set and partitions them with its Flower
Datasets partitioners (:mod:`fedunlearn.data.partition`), so a Hub data set goes through
the same requests, methods and metrics as the embedded one.

Images are normalized per channel by the train split's own mean and std (a Hub data set
carries no published constants the project could trust).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedunlearn.errors import UserError


class HubDatasetError(UserError, ValueError):
    """A Hugging Face data set that cannot be used as an image classification set."""


def _column(features: Mapping[str, Any], wanted: str | None, kind: str, fallback: str) -> str:
    """The image or label column: the one named, else the first of its feature type."""
    if wanted is not None:
        if wanted not in features:
            raise HubDatasetError(f"dataset.hf: no column '{wanted}'; columns: "
                                  f"{', '.join(features)}")
        return wanted
    typed = [name for name, f in features.items() if type(f).__name__ == kind]
    if typed:
        return typed[0]
    if fallback in features:
        return fallback
    raise HubDatasetError(f"dataset.hf: no {kind} column and no '{fallback}' column; columns: "
                          f"{', '.join(features)} (name one with dataset.hf.{fallback}_column)")


def _pixels(split: Any, column: str) -> np.ndarray:
    """uint8 ``N x C x H x W`` from an Image column (grey images get one channel)."""
    images = [np.asarray(image) for image in split.with_format(None)[column]]
    shapes = {image.shape for image in images}
    if len(shapes) != 1:
        raise HubDatasetError(f"dataset.hf: images of several sizes {sorted(shapes)[:3]}; "
                              "set dataset.image_size to resize them")
    array = np.stack(images)
    if array.ndim == 3:
        array = array[:, None]
    else:
        array = array.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(array.astype(np.uint8, copy=False))


def read_hub(path: str, options: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray,
                                                           np.ndarray | None, np.ndarray | None,
                                                           int]:
    """Read a Hugging Face data set's train (and test) split through ``FederatedDataset``.

    Parameters
    ----------
    path : str
        Hub id, or a packaged builder (``parquet``, ``imagefolder``) with
        ``options["data_files"]``.
    options : mapping
        ``subset``, ``data_files``, ``image_column``, ``label_column``,
        ``train_split``, ``test_split`` (None: the caller splits one off).

    Returns
    -------
    tuple
        ``(train_x, train_y, test_x, test_y, num_classes)``, pixels uint8 ``N x C x H x W``.

    Raises
    ------
    HubDatasetError
        The set cannot be loaded (the loader's first line), lacks a split or a column,
        or its labels are not integer classes.
    """
    from flwr_datasets import FederatedDataset

    extra: dict[str, Any] = {}
    if options.get("data_files"):
        extra["data_files"] = dict(options["data_files"])
    train_name, test_name = options.get("train_split", "train"), options.get("test_split")
    try:
        fds = FederatedDataset(dataset=path, subset=options.get("subset"),
                               partitioners={train_name: 1}, shuffle=False, **extra)
        train = fds.load_split(train_name)
        test = fds.load_split(test_name) if test_name else None
    except Exception as error:  # the datasets library raises many kinds; one line is the need
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise HubDatasetError(f"dataset.hf: cannot load '{path}': {first}") from error
    image = _column(train.features, options.get("image_column"), "Image", "image")
    label = _column(train.features, options.get("label_column"), "ClassLabel", "label")
    feature = train.features[label]
    y_train = np.asarray(train[label])
    if not np.issubdtype(y_train.dtype, np.integer) or (y_train.size and y_train.min() < 0):
        raise HubDatasetError(f"dataset.hf: column '{label}' does not hold class ids")
    num_classes = (feature.num_classes if type(feature).__name__ == "ClassLabel"
                   else int(y_train.max()) + 1)
    test_xy: tuple[np.ndarray | None, np.ndarray | None] = (None, None)
    if test is not None:
        test_xy = (_pixels(test, image), np.asarray(test[label], dtype=np.int64))
    return (_pixels(train, image), y_train.astype(np.int64), *test_xy, num_classes)


def channel_stats(pixels: np.ndarray, scale: float = 255.0) -> tuple[tuple[float, ...],
                                                                     tuple[float, ...]]:
    """Per-channel mean and std of ``pixels / scale`` (``N x C x H x W``)."""
    x = pixels.astype(np.float64) / scale
    mean = x.mean(axis=(0, 2, 3))
    std = x.std(axis=(0, 2, 3))
    return tuple(float(m) for m in mean), tuple(float(s) if s > 0 else 1.0 for s in std)
