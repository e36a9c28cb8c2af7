"""Data layer: image data sets, client partitions and forget sets."""

from fedunlearn.data.forget import (
    CORNERS,
    KINDS,
    ForgetSet,
    add_trigger,
    backdoor,
    class_wise,
    client_wise,
    eval_trigger,
    instance_wise,
    poison,
    trigger_value,
    union,
)
from fedunlearn.data.images import DatasetSplits, ImageData
from fedunlearn.data.partition import (
    SCHEMES,
    dirichlet,
    iid,
    owned_classes,
    partition,
    preferential,
    train_val_split,
)
from fedunlearn.data.registry import DATASETS, DatasetNotFoundError, load_dataset

__all__ = [
    "CORNERS",
    "DATASETS",
    "KINDS",
    "SCHEMES",
    "DatasetNotFoundError",
    "DatasetSplits",
    "ForgetSet",
    "ImageData",
    "add_trigger",
    "backdoor",
    "class_wise",
    "client_wise",
    "dirichlet",
    "iid",
    "instance_wise",
    "load_dataset",
    "owned_classes",
    "partition",
    "poison",
    "preferential",
    "train_val_split",
    "eval_trigger",
    "trigger_value",
    "union",
]
