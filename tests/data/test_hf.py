"""dataset=hf: a Hugging Face image set read through Flower Datasets' FederatedDataset,
offline, from parquet files in the datasets library's own on-disk format, built here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage

from fedunlearn.config import compose
from fedunlearn.data import load_dataset
from fedunlearn.data.hf import HubDatasetError
from fedunlearn.federation import build_federation


def _write(folder: Path, name: str, n: int, seed: int, rgb: bool = False) -> Path:
    """``n`` 8x8 images of 3 classes (brightness by class) as a parquet split."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    mode, shape = ("RGB", (8, 8, 3)) if rgb else ("L", (8, 8))
    images = [PILImage.fromarray((rng.integers(0, 60, shape) + 80 * y).astype(np.uint8), mode)
              for y in labels]
    features = Features({"picture": Image(), "digit": ClassLabel(names=["a", "b", "c"])})
    path = folder / f"{name}.parquet"
    Dataset.from_dict({"picture": images, "digit": labels.tolist()}, features=features
                      ).to_parquet(str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("hub")
    return {"train": str(_write(folder, "train", 90, 0)),
            "test": str(_write(folder, "test", 30, 1))}


def test_parquet_set_loads_with_its_splits_columns_and_classes(files: dict[str, str]) -> None:
    splits = load_dataset("hf", "parquet", hf={"data_files": files, "test_split": "test"})
    assert splits.in_shape == (1, 8, 8) and splits.num_classes == 3
    assert len(splits.train) == 90 and len(splits.test) == 30
    assert splits.train.labels.tolist()[:4] == [0, 1, 2, 0]
    # Normalized by the train split's own statistics.
    assert abs(float(splits.train.images.mean())) < 1e-4
    assert float(splits.train.images.std()) == pytest.approx(1.0, abs=0.02)
    # Class 2 is the brightest: the pixels came through, not zeros.
    bright = splits.train.images[splits.train.labels == 2].mean()
    assert bright > splits.train.images[splits.train.labels == 0].mean() + 1.0


def test_a_run_config_builds_a_federation_on_it(files: dict[str, str]) -> None:
    cfg = compose(["dataset=hf", "dataset.root=parquet", "num_clients=3",
                   "partition=dirichlet", "partition.beta=1.0", "partition.min_size=5",
                   f"dataset.hf.data_files={{train: '{files['train']}', test: '{files['test']}'}}"
                   ])
    federation = build_federation(cfg)
    assert federation.num_clients == 3
    sizes = [len(ids) for ids in federation.partitions]
    assert sum(sizes) == 90 and min(sizes) >= 5


def test_no_test_split_holds_one_out_and_rgb_keeps_three_channels(tmp_path: Path) -> None:
    train = _write(tmp_path, "train", 60, 2, rgb=True)
    splits = load_dataset("hf", "parquet", hf={"data_files": {"train": str(train)},
                                                "test_split": None}, test_fraction=0.2)
    assert splits.in_shape == (3, 8, 8)
    assert (len(splits.train), len(splits.test)) == (48, 12)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"image_column": "img"}, r"^dataset.hf: no column 'img'; columns: picture, digit$"),
        ({"data_files": {"train": "/nonexistent/x.parquet"}},
         r"^dataset.hf: cannot load 'parquet': "),
    ],
)
def test_bad_sets_are_refused_in_one_line(files: dict[str, str], options: dict,
                                          message: str) -> None:
    with pytest.raises(HubDatasetError, match=message):
        load_dataset("hf", "parquet", hf={"data_files": files, **options})
