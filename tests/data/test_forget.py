"""Forget sets: exact membership per kind, backdoor triggers and poisoning, errors."""

import numpy as np
import pytest
import torch

from fedunlearn.data import (
    CORNERS,
    ForgetSet,
    ImageData,
    add_trigger,
    backdoor,
    class_wise,
    client_wise,
    iid,
    instance_wise,
    poison,
    preferential,
    trigger_value,
)

# 10 classes x 20 samples over 4 IID clients (50 each).
LABELS = np.repeat(np.arange(10), 20)
PARTS = iid(LABELS, 4, seed=0)


def _owner(sample: int) -> int:
    return next(c for c, ids in enumerate(PARTS) if sample in ids)


def test_client_wise_is_the_whole_client() -> None:
    forget = client_wise(PARTS, 2)
    assert forget.kind == "client"
    assert list(forget.ids_by_client) == [2]
    np.testing.assert_array_equal(forget.all_ids, PARTS[2])
    assert forget.clients == (2,)
    assert forget.target is None


def test_class_wise_takes_the_class_on_every_client() -> None:
    forget = class_wise(PARTS, LABELS, 3)
    assert forget.kind == "class"
    np.testing.assert_array_equal(forget.all_ids, np.flatnonzero(LABELS == 3))
    for client, ids in forget.ids_by_client.items():
        assert set(ids) == {i for i in PARTS[client] if LABELS[i] == 3}
    # Only clients that hold the class appear.
    holders = [c for c, ids in enumerate(PARTS) if np.any(LABELS[ids] == 3)]
    assert forget.clients == tuple(holders)


def test_class_wise_on_an_owned_class_stays_on_its_owner() -> None:
    parts = preferential(LABELS, 5, seed=0)
    forget = class_wise(parts, LABELS, 5)  # client 0 owns class 5
    assert forget.clients == (0,)
    np.testing.assert_array_equal(forget.all_ids, np.flatnonzero(LABELS == 5))


def test_instance_wise_fraction_per_client() -> None:
    forget = instance_wise(PARTS, fraction=0.1, seed=4)
    assert forget.kind == "instance"
    assert forget.clients == (0, 1, 2, 3)
    for client, ids in forget.ids_by_client.items():
        assert len(ids) == 5  # round(0.1 * 50)
        assert set(ids) <= set(PARTS[client])
        assert np.all(np.diff(ids) > 0)
    again = instance_wise(PARTS, fraction=0.1, seed=4)
    np.testing.assert_array_equal(again.all_ids, forget.all_ids)
    other = instance_wise(PARTS, fraction=0.1, seed=5)
    assert not np.array_equal(other.all_ids, forget.all_ids)


def test_instance_wise_on_selected_clients_takes_at_least_one() -> None:
    forget = instance_wise(PARTS, fraction=0.001, clients=[3, 1], seed=0)
    assert forget.clients == (1, 3)
    assert all(len(ids) == 1 for ids in forget.ids_by_client.values())


def test_instance_wise_given_ids_are_mapped_to_their_clients() -> None:
    chosen = np.array([PARTS[0][0], PARTS[2][5], PARTS[2][1], PARTS[0][0]])  # one duplicate
    forget = instance_wise(PARTS, ids=chosen)
    assert forget.clients == (0, 2)
    np.testing.assert_array_equal(forget.ids_by_client[0], [PARTS[0][0]])
    np.testing.assert_array_equal(forget.ids_by_client[2], np.sort([PARTS[2][5], PARTS[2][1]]))
    assert all(_owner(i) == c for c, ids in forget.ids_by_client.items() for i in ids)


def test_instance_wise_rejects_ids_held_by_no_client() -> None:
    parts = [PARTS[0], PARTS[1]]  # samples of clients 2 and 3 are held by nobody now
    with pytest.raises(ValueError, match=r"^1 ids are held by no client: \d+$"):
        instance_wise(parts, ids=[PARTS[0][0], PARTS[3][0]])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, r"exactly one of fraction and ids"),
        ({"fraction": 0.1, "ids": [1]}, r"exactly one of fraction and ids"),
        ({"ids": [1], "clients": [0]}, r"clients applies to fraction only"),
        ({"fraction": 0.0}, r"fraction must be in \(0, 1\], got 0.0"),
        ({"fraction": 1.5}, r"fraction must be in \(0, 1\], got 1.5"),
        ({"fraction": 0.5, "clients": [4]}, r"client 4 does not exist; clients are 0..3"),
        ({"fraction": 1.0}, r"covers all 200 samples of the federation"),
    ],
)
def test_instance_wise_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        instance_wise(PARTS, **kwargs)


def test_client_and_class_errors() -> None:
    with pytest.raises(ValueError, match=r"^client 7 does not exist; clients are 0..3$"):
        client_wise(PARTS, 7)
    with pytest.raises(ValueError, match=r"^client -1 does not exist"):
        client_wise(PARTS, -1)
    with pytest.raises(ValueError, match=r"^class 11 is not held by any client$"):
        class_wise(PARTS, LABELS, 11)
    with pytest.raises(ValueError, match=r"covers all 200 samples of the federation"):
        client_wise([np.arange(200)], 0)
    with pytest.raises(ValueError, match=r"covers all 20 samples of the federation"):
        class_wise([np.arange(20)], np.zeros(20, dtype=np.int64), 0)
    with pytest.raises(ValueError, match=r"^client forget set is empty \(client 1\)$"):
        client_wise([np.arange(5), np.empty(0, np.int64)], 1)


def test_forget_set_validates_itself() -> None:
    with pytest.raises(ValueError, match=r"unknown forget kind 'sample'"):
        ForgetSet("sample", {0: np.arange(3)})
    with pytest.raises(ValueError, match=r"if and only if its kind is 'backdoor'"):
        ForgetSet("backdoor", {0: np.arange(3)})
    with pytest.raises(ValueError, match=r"^instance forget set is empty"):
        ForgetSet("instance", {0: np.empty(0, np.int64)})
    forget = ForgetSet("instance", {2: np.array([9, 1]), 0: np.array([4])})
    np.testing.assert_array_equal(forget.all_ids, [1, 4, 9])


def test_backdoor_picks_non_target_samples_of_one_client() -> None:
    forget = backdoor(PARTS, LABELS, client=1, fraction=0.8, target=0, seed=0)
    assert forget.kind == "backdoor" and forget.target == 0
    assert forget.clients == (1,)
    ids = forget.ids_by_client[1]
    eligible = [i for i in PARTS[1] if LABELS[i] != 0]
    assert set(ids) <= set(eligible)
    assert len(ids) == round(0.8 * len(eligible))
    assert np.all(LABELS[ids] != 0)
    again = backdoor(PARTS, LABELS, client=1, fraction=0.8, target=0, seed=0)
    np.testing.assert_array_equal(again.all_ids, forget.all_ids)


def test_backdoor_errors() -> None:
    with pytest.raises(ValueError, match=r"^client 4 does not exist"):
        backdoor(PARTS, LABELS, client=4, fraction=0.5, target=0)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\], got 0"):
        backdoor(PARTS, LABELS, client=0, fraction=0, target=0)
    with pytest.raises(ValueError, match=r"target class 10 does not occur in the labels"):
        backdoor(PARTS, LABELS, client=0, fraction=0.5, target=10)
    # A client holding only the target class has nothing to poison.
    parts = [np.flatnonzero(LABELS == 0), np.flatnonzero(LABELS != 0)]
    with pytest.raises(ValueError, match=r"^backdoor forget set is empty"):
        backdoor(parts, LABELS, client=0, fraction=1.0, target=0)


def _images(n: int = 6, channels: int = 3, side: int = 8) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, channels, side, side, generator=generator)


@pytest.mark.parametrize("corner", CORNERS)
def test_add_trigger_sets_exactly_the_corner_patch(corner: str) -> None:
    images = _images()
    before = images.clone()
    out = add_trigger(images, size=3, corner=corner)
    white = images.amax(dim=(0, 2, 3))
    rows = slice(0, 3) if corner.startswith("top") else slice(5, 8)
    cols = slice(0, 3) if corner.endswith("left") else slice(5, 8)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[rows, cols] = True
    for c in range(3):
        assert torch.all(out[:, c][:, mask] == white[c])
        assert torch.equal(out[:, c][:, ~mask], images[:, c][:, ~mask])
    assert torch.equal(images, before)  # input untouched
    assert out.data_ptr() != images.data_ptr()


def test_add_trigger_with_given_value_and_size() -> None:
    images = _images(channels=1)
    out = add_trigger(images, size=2, corner="top_left", value=7.5)
    assert torch.all(out[:, 0, :2, :2] == 7.5)
    assert torch.equal(out[:, 0, 2:, :], images[:, 0, 2:, :])
    assert torch.equal(trigger_value(images), images.amax(dim=(0, 2, 3)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 0}, r"trigger size must be in 1..8, got 0"),
        ({"size": 9}, r"trigger size must be in 1..8, got 9"),
        ({"corner": "centre"}, r"unknown trigger corner 'centre'; known: top_left"),
    ],
)
def test_add_trigger_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        add_trigger(_images(), **kwargs)


def test_poison_relabels_and_triggers_only_the_chosen_rows() -> None:
    images = _images(n=10, channels=1)
    labels = torch.arange(10) % 5
    data = ImageData(images, labels, num_classes=5)
    ids = np.array([2, 7, 4])
    poisoned = poison(data, ids, target=0, size=3)
    white = images.max()
    clean = np.setdiff1d(np.arange(10), ids)
    assert torch.all(poisoned.images[ids, 0, 5:, 5:] == white)
    assert torch.equal(poisoned.images[ids, 0, :5, :], images[ids, 0, :5, :])
    assert torch.equal(poisoned.images[ids, 0, 5:, :5], images[ids, 0, 5:, :5])
    assert torch.all(poisoned.labels[ids] == 0)
    assert torch.equal(poisoned.images[clean], images[clean])
    assert torch.equal(poisoned.labels[clean], labels[clean])
    # The source data is left as it was.
    assert torch.equal(data.labels, torch.arange(10) % 5)
    assert torch.equal(data.images, images)
    assert poisoned.num_classes == 5


def test_poison_with_a_backdoor_forget_set() -> None:
    images = _images(n=200, channels=1)
    data = ImageData(images, torch.as_tensor(LABELS), num_classes=10)
    forget = backdoor(PARTS, LABELS, client=0, fraction=0.5, target=9, seed=1)
    assert forget.target is not None
    poisoned = poison(data, forget.all_ids, forget.target)
    changed = torch.nonzero(poisoned.labels != data.labels).flatten().numpy()
    np.testing.assert_array_equal(changed, forget.all_ids)


def test_poison_errors() -> None:
    data = ImageData(_images(n=4, channels=1), torch.zeros(4, dtype=torch.int64), 3)
    with pytest.raises(ValueError, match=r"needs at least one id"):
        poison(data, [], target=1)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 4\), got 0..4"):
        poison(data, [0, 4], target=1)
    with pytest.raises(ValueError, match=r"target must be in \[0, 3\), got 3"):
        poison(data, [0], target=3)
