"""Client partitions (Flower Datasets partitioners): coverage, determinism, label skew,
the pathological and shard rules, and the preferential Partitioner."""

import numpy as np
import pytest
from datasets import Dataset

from fedunlearn.data.partition import (
    SCHEMES,
    dirichlet,
    iid,
    owned_classes,
    partition,
    preferential,
    train_val_split,
)
from fedunlearn.data.preferential import PreferentialPartitioner

# 10 classes of unequal size (395..404), so even splits have remainders.
LABELS = np.concatenate([np.full(395 + c, c) for c in range(10)])
np.random.default_rng(123).shuffle(LABELS)


def _beta_for(scheme: str) -> float | None:
    return 0.5 if scheme == "dirichlet" else None


def _label_entropy(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean over clients of the entropy (nats) of the client's label distribution."""
    entropies = []
    for ids in parts:
        p = np.bincount(labels[ids], minlength=10) / len(ids)
        p = p[p > 0]
        entropies.append(float(-(p * np.log(p)).sum()))
    return float(np.mean(entropies))


COVERING = ("iid", "dirichlet", "preferential")


@pytest.mark.parametrize("scheme", COVERING)
@pytest.mark.parametrize("num_clients", [1, 5, 10])
def test_partitions_are_sorted_disjoint_and_cover(scheme: str, num_clients: int) -> None:
    parts = partition(LABELS, scheme, num_clients, seed=3, beta=_beta_for(scheme))
    assert len(parts) == num_clients
    assert sum(len(p) for p in parts) == len(LABELS)
    for ids in parts:
        assert ids.dtype == np.int64
        assert np.all(np.diff(ids) > 0)  # sorted, no duplicates within a client
    together = np.concatenate(parts)
    assert len(np.unique(together)) == len(LABELS)  # disjoint
    np.testing.assert_array_equal(np.sort(together), np.arange(len(LABELS)))  # cover


@pytest.mark.parametrize("scheme", SCHEMES)
def test_partitions_are_deterministic_under_seed(scheme: str) -> None:
    beta = _beta_for(scheme)
    first = partition(LABELS, scheme, 5, seed=7, beta=beta)
    again = partition(LABELS, scheme, 5, seed=7, beta=beta)
    other = partition(LABELS, scheme, 5, seed=8, beta=beta)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_iid_sizes_are_equal_and_labels_balanced() -> None:
    parts = iid(LABELS, 7, seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    for ids in parts:
        share = np.bincount(LABELS[ids], minlength=10) / len(ids)
        assert share.max() < 0.16  # 0.1 expected; a skewed split would exceed this


def test_iid_accepts_torch_labels() -> None:
    torch = pytest.importorskip("torch")
    from_torch = iid(torch.as_tensor(LABELS), 4, seed=1)
    from_numpy = iid(LABELS, 4, seed=1)
    for a, b in zip(from_torch, from_numpy, strict=True):
        np.testing.assert_array_equal(a, b)


def test_dirichlet_label_skew_grows_as_beta_falls() -> None:
    def mean_entropy(beta: float) -> float:
        return np.mean(
            [_label_entropy(LABELS, dirichlet(LABELS, 10, beta, seed=s)) for s in range(3)]
        )

    high, mid, low = mean_entropy(100.0), mean_entropy(1.0), mean_entropy(0.1)
    assert high > 2.25  # close to log(10) = 2.30: nearly uniform labels per client
    assert high > mid + 0.3
    assert mid > low + 0.3


def test_dirichlet_respects_min_size() -> None:
    parts = dirichlet(LABELS, 10, 0.1, seed=0, min_size=50)
    assert min(len(p) for p in parts) >= 50


def test_dirichlet_gives_up_after_bounded_attempts() -> None:
    with pytest.raises(ValueError, match=r"^dirichlet partition: no draw in 10 gave each of 10 "
                                         r"clients >= 390 samples at beta=0.01"):
        dirichlet(LABELS, 10, 0.01, seed=0, min_size=390)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_pathological_gives_each_client_exactly_k_classes(k: int) -> None:
    parts = partition(LABELS, "pathological", 10, seed=1, classes_per_client=k)
    for ids in parts:
        assert len(np.unique(LABELS[ids])) == k
    together = np.concatenate(parts)
    assert len(np.unique(together)) == len(together)  # disjoint
    # Round-robin first classes: with 10 clients every class is used by someone.
    assert set(np.unique(LABELS[together])) == set(range(10))


def test_shard_deals_equal_label_sorted_shards() -> None:
    parts = partition(LABELS, "shard", 10, seed=2, shards_per_client=2)
    sizes = {len(ids) for ids in parts}
    assert sizes == {2 * (len(LABELS) // 20)}  # 20 shards of floor(3995 / 20) samples
    together = np.concatenate(parts)
    assert len(np.unique(together)) == len(together)
    for ids in parts:
        # Two label-sorted shards of ~200 samples span at most four classes.
        assert len(np.unique(LABELS[ids])) <= 4


def test_preferential_partitioner_is_a_flower_datasets_partitioner() -> None:
    rows = Dataset.from_dict({"label": LABELS.tolist(), "text": [str(i) for i in LABELS]})
    partitioner = PreferentialPartitioner(5, "label", seed=0)
    partitioner.dataset = rows
    assert partitioner.num_partitions == 5
    first = partitioner.load_partition(0)
    assert set(first["label"]) == {0, 1, 2, 3, 4, 5}
    assert sum(len(partitioner.load_partition(i)) for i in range(5)) == len(LABELS)
    with pytest.raises(ValueError, match=r"partition_id must be in \[0, 5\), got 5"):
        partitioner.load_partition(5)


def test_dirichlet_rejects_impossible_min_size() -> None:
    with pytest.raises(ValueError, match=r"each of 10 clients min_size=500 samples out of 3995"):
        dirichlet(LABELS, 10, 1.0, min_size=500)


@pytest.mark.parametrize("beta", [0.0, -1.0])
def test_dirichlet_rejects_non_positive_beta(beta: float) -> None:
    with pytest.raises(ValueError, match=r"needs beta > 0, got"):
        dirichlet(LABELS, 5, beta)


def test_partition_dirichlet_needs_beta() -> None:
    with pytest.raises(ValueError, match=r"needs beta > 0, got None"):
        partition(LABELS, "dirichlet", 5)


def test_owned_classes_matches_tis_setting() -> None:
    # TIS, 5 clients on MNIST: client 0 owns class 5, ..., client 4 owns class 9.
    assert owned_classes(10, 5) == {0: 5, 1: 6, 2: 7, 3: 8, 4: 9}
    assert owned_classes(10, 3) == {0: 5, 1: 6, 2: 7}
    assert owned_classes(10, 8) == {0: 5, 1: 6, 2: 7, 3: 8, 4: 9}
    assert owned_classes(5, 5) == {0: 2, 1: 3, 2: 4}


@pytest.mark.parametrize("num_clients", [3, 5, 8])
def test_preferential_rule(num_clients: int) -> None:
    parts = preferential(LABELS, num_clients, seed=0)
    owners = {cls: client for client, cls in owned_classes(10, num_clients).items()}
    for cls in range(10):
        counts = np.array([np.sum(LABELS[ids] == cls) for ids in parts])
        if cls in owners:
            # The owner holds the whole class; nobody else holds any of it.
            assert counts[owners[cls]] == np.sum(LABELS == cls)
            assert counts.sum() == counts[owners[cls]]
        else:
            # Shared classes are on every client in equal shares (up to one sample).
            assert counts.min() >= 1
            assert counts.max() - counts.min() <= 1


def test_preferential_tis_setting_exact() -> None:
    parts = preferential(LABELS, 5, seed=0)
    for client, ids in enumerate(parts):
        assert set(np.unique(LABELS[ids])) == {0, 1, 2, 3, 4, 5 + client}


def test_preferential_rejects_too_few_classes() -> None:
    with pytest.raises(ValueError, match=r"^labels reach 9 but num_classes is 8$"):
        preferential(LABELS, 5, num_classes=8)


def test_unknown_scheme_lists_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown partition scheme 'lda'; known: iid, dirichlet"):
        partition(LABELS, "lda", 5)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("num_clients", [0, 4000])
def test_bad_client_counts_name_both_numbers(scheme: str, num_clients: int) -> None:
    with pytest.raises(ValueError, match=rf"number of samples \(3995\), got {num_clients}$"):
        partition(LABELS, scheme, num_clients, beta=_beta_for(scheme))


def test_train_val_split() -> None:
    ids = np.arange(100, 150)
    train, val = train_val_split(ids, 0.2, seed=1)
    assert (len(train), len(val)) == (40, 10)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), ids)
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    again = train_val_split(ids, 0.2, seed=1)
    np.testing.assert_array_equal(again[1], val)
    assert not np.array_equal(train_val_split(ids, 0.2, seed=2)[1], val)


def test_train_val_split_keeps_a_training_sample() -> None:
    train, val = train_val_split(np.array([7]), 0.5, seed=0)
    assert train.tolist() == [7] and val.size == 0
    train, val = train_val_split(np.array([3, 4]), 0.9, seed=0)
    assert len(train) == 1 and len(val) == 1
    train, val = train_val_split(np.arange(10), 0.0)
    assert len(train) == 10 and val.size == 0


@pytest.mark.parametrize(
    ("ids", "fraction", "message"),
    [
        (np.arange(5), 1.0, r"val_fraction must be in \[0, 1\), got 1.0"),
        (np.arange(5), -0.1, r"val_fraction must be in \[0, 1\), got -0.1"),
        (np.array([], dtype=np.int64), 0.2, r"needs at least one id"),
    ],
)
def test_train_val_split_errors(ids: np.ndarray, fraction: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        train_val_split(ids, fraction)
