"""A SuperNode's own files: read, checked, split 80:20 once, and its forget ids.

A node started with ``--node-config 'data-dir="/srv/data"'`` trains on the files in
that folder instead of a demo partition. The folder holds either

* one ``.npz`` file with arrays ``x`` (``N x H x W``, ``N x H x W x C`` or
  ``N x C x H x W``; uint8 0..255, or float in [0, 1]) and ``y`` (N integer labels), or
* an ImageFolder: one sub-folder per class with its images (torchvision's layout and
  file order). Class folders named by integers (``0``, ``3``, ...) are those labels, so
  that a node holding only some classes labels them as the others do; other names are
  labelled by their sorted position, as torchvision's ``ImageFolder`` does.

Sample ids are the node's own: ``0..N-1`` in the npz's row order or the ImageFolder's
file order. The train/validation split (80:20, fixed seed) is made on first use and
kept in ``<data-dir>/.fedunlearn/split.json`` with a fingerprint of the data, so the ids
keep meaning the same samples: a changed data set is refused, never silently re-split.

Everything wrong with a folder raises :class:`NodeDataError` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedunlearn.data.forget import _choose
from fedunlearn.data.images import DatasetSplits, ImageData
from fedunlearn.data.partition import train_val_split
from fedunlearn.data.registry import _REGISTRY, _to_images
from fedunlearn.errors import UserError
from fedunlearn.requests import ForgetRequest, RequestRefused

__all__ = [
    "SPLIT_SEED",
    "VAL_FRACTION",
    "NodeData",
    "NodeDataError",
    "NodeFiles",
    "NodeSplit",
    "check_labels",
    "load_node_data",
    "node_split",
    "own_forget_ids",
    "read_node_files",
    "split_path",
]

# The node's split: 80:20 under a fixed seed, so that the first split is reproducible.
VAL_FRACTION = 0.2
SPLIT_SEED = 0
# The node's bookkeeping inside its data folder: hidden, so it is never a class folder.
STATE_FOLDER = ".fedunlearn"
_SPLIT_FORMAT = 1
# PIL modes read as one channel; every other mode is converted to RGB.
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})


class NodeDataError(UserError):
    """A node's data folder that cannot be used as it is (one-line message)."""


@dataclass(frozen=True, eq=False)
class NodeFiles:
    """What a data folder holds, read and checked without any run config.

    Attributes
    ----------
    root : Path
        The data folder.
    kind : str
        ``"npz"`` or ``"imagefolder"``.
    pixels : numpy.ndarray
        ``N x C x H x W``, uint8 0..255 or float32 in [0, 1].
    labels : numpy.ndarray
        ``N`` int64 labels (>= 0).
    classes : tuple of str
        Class folder names (ImageFolder) or the labels present (npz), ascending label.
    files : tuple of str
        ImageFolder: each sample's path relative to ``root``, by id; npz: empty.
    fingerprint : str
        SHA-256 of what gives the ids their meaning (see :func:`read_node_files`).
    """

    root: Path
    kind: str
    pixels: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    files: tuple[str, ...]
    fingerprint: str

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.pixels.shape[1:]
        return int(c), int(h), int(w)


@dataclass(frozen=True, eq=False)
class NodeSplit:
    """The node's kept train/validation split: sorted int64 ids, and where it is kept."""

    train_ids: np.ndarray
    val_ids: np.ndarray
    path: Path


@dataclass(frozen=True, eq=False)
class NodeData:
    """A node's own samples ready to train on, normalized as the run's data set.

    Attributes
    ----------
    data : ImageData
        Every sample; row ``i`` is the node's sample id ``i``.
    train_ids, val_ids : numpy.ndarray
        The kept split (:func:`node_split`).
    """

    data: ImageData
    train_ids: np.ndarray
    val_ids: np.ndarray

    def validation(self) -> ImageData:
        """The validation samples."""
        return self.data.subset(self.val_ids)


# ---- reading a folder ---------------------------------------------------------------


def read_node_files(data_dir: str | os.PathLike[str]) -> NodeFiles:
    """Read and check a node's data folder (an ``.npz`` inside it, or an ImageFolder).

    The fingerprint covers the sample count, image shape and labels, plus the file list
    of an ImageFolder (ids name files) or the pixels of an npz (ids name rows).

    Parameters
    ----------
    data_dir : str or os.PathLike
        The folder the node config's ``data-dir`` names.

    Returns
    -------
    NodeFiles
        Pixels, labels, class names and file list, by sample id.

    Raises
    ------
    NodeDataError
        Not a folder, no classes or samples, both or several formats, an npz without
        ``x``/``y`` or with mismatched lengths or bad values, unreadable or mixed-size
        images.
    """
    root = Path(data_dir).expanduser().resolve()
    if not root.is_dir():
        raise NodeDataError(f"data-dir {root} is not a folder")
    archives = sorted(p for p in root.iterdir() if p.suffix == ".npz" and p.is_file())
    classes = _class_folders(root)
    if archives and classes:
        raise NodeDataError(f"{root} holds both an .npz file and class folders; keep one format")
    if len(archives) > 1:
        names = ", ".join(p.name for p in archives)
        raise NodeDataError(f"{root} holds several .npz files ({names}); keep one")
    if archives:
        return _read_npz(root, archives[0])
    if not classes:
        raise NodeDataError(f"{root} has no classes: expected class folders "
                            f"({root}/<class>/<image>) or one .npz file with arrays x and y")
    return _read_image_folder(root, classes)


def _class_folders(root: Path) -> list[str]:
    # Hidden folders are not classes: the node keeps its split in one.
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def _read_npz(root: Path, path: Path) -> NodeFiles:
    x, y = _npz_arrays(path)
    pixels = _npz_pixels(path.name, x)
    labels = _npz_labels(path.name, y, len(pixels))
    digest = _digest("npz", pixels.shape, labels)
    digest.update(np.ascontiguousarray(pixels).data)
    classes = tuple(str(c) for c in np.unique(labels))
    return NodeFiles(root, "npz", pixels, labels, classes, (), digest.hexdigest())


def _npz_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Arrays ``x`` and ``y`` of the archive at ``path``."""
    try:
        # No pickles: an npz is data, and object arrays could run code when loaded.
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):  # a lone .npy array
            raise NodeDataError(f"{path.name} is not an npz archive (np.savez writes one)")
        with archive:
            missing = [key for key in ("x", "y") if key not in archive.files]
            if missing:
                raise NodeDataError(f"{path.name} lacks array(s) {', '.join(missing)}; "
                                    f"it holds {', '.join(archive.files) or 'none'}")
            return archive["x"], archive["y"]
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise NodeDataError(f"cannot read {path}: {_one_line(exc)}") from exc


def _npz_pixels(name: str, x: np.ndarray) -> np.ndarray:
    """``x`` as ``N x C x H x W`` uint8 or float32 in [0, 1]."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)  # channels last -> channels first
    elif x.ndim != 4 or x.shape[1] not in (1, 3):
        raise NodeDataError(f"{name}: x has shape {x.shape}; expected (N, H, W), "
                            f"(N, H, W, C) or (N, C, H, W) with C 1 or 3")
    if len(x) == 0:
        raise NodeDataError(f"{name} holds no samples")
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise NodeDataError(f"{name}: float pixels must lie in [0, 1] "
                                f"(got {np.nanmin(x):g}..{np.nanmax(x):g})")
        return x.astype(np.float32)
    if not np.issubdtype(x.dtype, np.integer) or x.min() < 0 or x.max() > 255:
        raise NodeDataError(f"{name}: x must hold uint8 pixels 0..255 or floats in [0, 1], "
                            f"got {x.dtype}")
    return x.astype(np.uint8)


def _npz_labels(name: str, y: np.ndarray, count: int) -> np.ndarray:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise NodeDataError(f"{name}: y must be N integer labels, got {y.dtype} "
                            f"with shape {y.shape}")
    if len(y) != count:
        raise NodeDataError(f"{name}: x holds {count} samples but y {len(y)} labels")
    if y.min() < 0:
        raise NodeDataError(f"{name}: labels must be >= 0, got {y.min()} "
                            f"(row {int(np.argmin(y))})")
    return y.astype(np.int64)


def _read_image_folder(root: Path, classes: list[str]) -> NodeFiles:
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    labels_of = _class_labels(classes)
    try:
        # torchvision's walk: its file order is ImageFolder's, so ids match it.
        samples = make_dataset(str(root), labels_of, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as exc:  # a class folder without images
        raise NodeDataError(f"{root}: {_one_line(exc)}") from exc
    files = tuple(os.path.relpath(path, root) for path, _ in samples)
    labels = np.asarray([label for _, label in samples], dtype=np.int64)
    pixels = _decode(root, files)
    digest = _digest("imagefolder", pixels.shape, labels)
    digest.update("\n".join(files).encode())
    ordered = tuple(sorted(classes, key=labels_of.__getitem__))
    return NodeFiles(root, "imagefolder", pixels, labels, ordered, files, digest.hexdigest())


def _class_labels(classes: list[str]) -> dict[str, int]:
    """Integer folder names are their labels (nodes holding some classes agree);
    otherwise ImageFolder's sorted position."""
    if all(name.isdigit() for name in classes):
        return {name: int(name) for name in classes}
    return {name: index for index, name in enumerate(classes)}


def _decode(root: Path, files: tuple[str, ...]) -> np.ndarray:
    """The images as ``N x C x H x W`` uint8; one size for all, checked from the
    headers before any image is decoded."""
    from PIL import Image, UnidentifiedImageError

    sizes, modes = [], set()
    for name in files:
        try:
            with Image.open(root / name) as image:  # reads the header only
                sizes.append(image.size)
                modes.add(image.mode)
        except (OSError, UnidentifiedImageError) as exc:
            raise NodeDataError(f"cannot read image {name}: {_one_line(exc)}") from exc
    if len(set(sizes)) > 1:
        other = next(i for i, size in enumerate(sizes) if size != sizes[0])
        raise NodeDataError(
            f"images of mixed sizes: {files[0]} is {_hw(sizes[0])}, {files[other]} is "
            f"{_hw(sizes[other])} (H x W); give every image one size")
    mode = "L" if modes <= _GRAY_MODES else "RGB"
    pixels = []
    for name in files:
        with Image.open(root / name) as image:
            array = np.asarray(image.convert(mode), dtype=np.uint8)
        pixels.append(array[None] if mode == "L" else array.transpose(2, 0, 1))
    return np.stack(pixels)


def _hw(size: tuple[int, int]) -> str:
    width, height = size
    return f"{height}x{width}"


def _digest(kind: str, shape: tuple[int, ...], labels: np.ndarray) -> hashlib._Hash:
    digest = hashlib.sha256(f"{kind} {tuple(int(s) for s in shape)}\n".encode())
    digest.update(np.ascontiguousarray(labels, dtype="<i8").data)
    return digest


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def check_labels(files: NodeFiles, num_classes: int) -> None:
    """Refuse labels outside the run's ``0..num_classes-1``.

    Raises
    ------
    NodeDataError
        Naming the first sample (file or npz row) with such a label.
    """
    beyond = np.flatnonzero(files.labels >= num_classes)
    if beyond.size:
        first = int(beyond[0])
        where = files.files[first] if files.files else f"row {first}"
        raise NodeDataError(
            f"label {files.labels[first]} ({where}) is out of range: the run has "
            f"{num_classes} classes (labels 0..{num_classes - 1})")


# ---- the kept split -----------------------------------------------------------------


def split_path(root: str | os.PathLike[str]) -> Path:
    """Where a data folder keeps its split."""
    return Path(root) / STATE_FOLDER / "split.json"


def node_split(files: NodeFiles) -> NodeSplit:
    """The node's 80:20 train/validation split: the kept one, or made and kept now.

    Made with :func:`~fedunlearn.data.partition.train_val_split` under
    :data:`SPLIT_SEED` and written atomically to :func:`split_path` (0600 in a 0700
    folder) with the data's count and fingerprint.

    Raises
    ------
    NodeDataError
        The data changed since the split was kept, the split file is unreadable, or
        it cannot be written.
    """
    return _kept_split(files.root, len(files), files.fingerprint)


def _kept_split(root: Path, count: int, fingerprint: str) -> NodeSplit:
    path = split_path(root)
    if path.exists():
        val_ids = _read_split(path, root, count, fingerprint)
    else:
        _, val_ids = train_val_split(np.arange(count), VAL_FRACTION, SPLIT_SEED)
        _write_split(path, count, fingerprint, val_ids)
    train_ids = np.setdiff1d(np.arange(count, dtype=np.int64), val_ids)
    return NodeSplit(train_ids, val_ids, path)


def _read_split(path: Path, root: Path, count: int, fingerprint: str) -> np.ndarray:
    try:
        kept = json.loads(path.read_text())
        kept_count, kept_print = int(kept["count"]), str(kept["fingerprint"])
        val_ids = np.unique(np.asarray(kept["val_ids"], dtype=np.int64))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NodeDataError(f"cannot read the split {path} ({_one_line(exc)}); "
                            f"delete it to split the data again") from exc
    if kept_count != count or kept_print != fingerprint:
        raise NodeDataError(
            f"the data in {root} changed since its split was kept ({kept_count} samples "
            f"then, {count} now): its sample ids would name other samples; restore "
            f"the data, or delete {path} to split again (old ids then mean nothing)")
    if val_ids.size and (val_ids[0] < 0 or val_ids[-1] >= count):
        raise NodeDataError(f"the split {path} names ids beyond 0..{count - 1}; "
                            f"delete it to split the data again")
    return val_ids


def _write_split(path: Path, count: int, fingerprint: str, val_ids: np.ndarray) -> None:
    body = {"format": _SPLIT_FORMAT, "count": count, "fingerprint": fingerprint,
            "seed": SPLIT_SEED, "val_fraction": VAL_FRACTION,
            "val_ids": [int(i) for i in val_ids]}
    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        os.chmod(path.parent, 0o700)  # mkdir's mode is masked by the umask
        # mkstemp creates the file 0600; the rename makes a half-written split
        # impossible, and two processes splitting at once write the same split.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".split-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(body, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        raise NodeDataError(f"cannot keep the split in {path}: {_one_line(exc)}") from exc


# ---- ready for a run ----------------------------------------------------------------


def load_node_data(data_dir: str | os.PathLike[str], splits: DatasetSplits,
                   image_size: int | None = None) -> NodeData:
    """A node's own samples, checked against the run and normalized like its data set.

    Pixels are scaled to [0, 1], resized like the run's data set (``image_size``, or
    the registry's default size) and normalized with its per-channel mean and std, as
    :func:`~fedunlearn.data.registry.load_dataset` does. Loaded data are cached in the
    process while the folder's files (names, sizes, times) stay the same.

    Parameters
    ----------
    data_dir : str or os.PathLike
        The node's data folder.
    splits : DatasetSplits
        The run's data set: its name (normalization), classes and model input shape.
    image_size : int, optional
        The run's ``dataset.image_size``.

    Raises
    ------
    NodeDataError
        Anything :func:`read_node_files`, :func:`check_labels` or :func:`node_split`
        refuses, or images of another shape than the run's model takes.
    """
    root = Path(data_dir).expanduser().resolve()
    if not root.is_dir():
        raise NodeDataError(f"data-dir {root} is not a folder")
    data, fingerprint = _normalized(root, _signature(root), splits.name, splits.num_classes,
                                    splits.in_shape, image_size)
    split = _kept_split(root, len(data), fingerprint)
    return NodeData(data, split.train_ids, split.val_ids)


def _signature(root: Path) -> tuple[tuple[str, int, int], ...]:
    """Every file's name, size and modification time: a cheap key for the cache."""
    found = []
    for folder, dirs, names in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d != STATE_FOLDER)
        for name in sorted(names):
            stat = os.stat(os.path.join(folder, name))
            found.append((os.path.relpath(os.path.join(folder, name), root), stat.st_size,
                          stat.st_mtime_ns))
    return tuple(found)


@functools.lru_cache(maxsize=2)
def _normalized(root: Path, signature: tuple[tuple[str, int, int], ...], name: str,
                num_classes: int, in_shape: tuple[int, int, int],
                image_size: int | None) -> tuple[ImageData, str]:
    # ``signature`` is only part of the cache key: changed files are read again.
    files = read_node_files(root)
    check_labels(files, num_classes)
    source = _REGISTRY[name]
    # The registry's scaling, resizing and normalization, with the node's pixel scale.
    scale = 255.0 if files.pixels.dtype == np.uint8 else 1.0
    images = _to_images(files.pixels, dataclasses.replace(source, scale=scale),
                        image_size or source.default_size)
    if tuple(images.shape[1:]) != tuple(in_shape):
        raise NodeDataError(
            f"images in {root} are {_chw(images.shape[1:])} but the run's model takes "
            f"{_chw(in_shape)} (data set {name}); convert them to that shape")
    data = ImageData(images, torch.as_tensor(files.labels), num_classes)
    # The fingerprint, not the files: the cache holds one copy of the pixels.
    return data, files.fingerprint


def _chw(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


# ---- forget requests against the node's own ids ---------------------------------------


def own_forget_ids(requests: Sequence[ForgetRequest], client: int, train_ids: np.ndarray,
                   labels: np.ndarray) -> np.ndarray:
    """The node's own training ids that ``requests`` ask it to forget (their union).

    The builders of :mod:`fedunlearn.data.forget` check federation-wide rules (some
    client holds the class, the set is not the whole federation) that one node cannot
    judge: a node may hold none of a class or be leaving with all its data. So each
    kind is selected here, by the rules of :func:`fedunlearn.requests.materialize`:
    a client-wise request takes all of its client's training ids, a class-wise request
    the training ids of the class on every node, an instance-wise request its client's
    ids (ids a node listed with ``fedunlearn data ids``) or a seeded fraction of them.

    Parameters
    ----------
    requests : sequence of ForgetRequest
        The requests of one message.
    client : int
        This node's partition id (requests name clients by it).
    train_ids : numpy.ndarray
        The node's training ids.
    labels : numpy.ndarray
        Label of every sample id of the node.

    Returns
    -------
    numpy.ndarray
        Sorted int64 ids, maybe none.

    Raises
    ------
    RequestRefused
        A backdoor request for this node (poisoned samples exist only in the demo
        partitions), or ids that are not among its training ids.
    """
    chosen = [_own_part(r, client, train_ids, np.asarray(labels)) for r in requests]
    return functools.reduce(np.union1d, chosen, np.empty(0, np.int64)).astype(np.int64)


def _own_part(request: ForgetRequest, client: int, train_ids: np.ndarray,
              labels: np.ndarray) -> np.ndarray:
    none = np.empty(0, dtype=np.int64)
    if request.kind == "class":  # every node forgets its samples of the class
        return train_ids[labels[train_ids] == request.cls]
    if request.kind == "instance" and request.fraction is not None:
        drawn = request.clients is None or client in request.clients
        rng = np.random.default_rng(request.seed)
        return _choose(train_ids, request.fraction, rng) if drawn else none
    if request.client != client:  # another node's data, named by its own ids
        return none
    if request.kind == "client":
        return train_ids
    if request.kind == "backdoor":
        raise RequestRefused("a backdoor request names poisoned demo samples; this node "
                             "trains on its own files (data-dir), which hold none")
    ids = np.asarray(request.ids, dtype=np.int64)
    foreign = np.setdiff1d(ids, train_ids)
    if foreign.size:
        shown = ", ".join(str(i) for i in foreign[:5]) + (", ..." if foreign.size > 5 else "")
        raise RequestRefused(
            f"{foreign.size} ids are not among this node's training ids: {shown} "
            f"(`fedunlearn data ids` lists them; validation ids are never trained on)")
    return ids
