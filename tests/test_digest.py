"""The model digest of receipts: what it covers, torch and numpy alike."""

import numpy as np
import pytest
import torch

from fedunlearn.digest import digest


def test_digest_of_torch_and_numpy() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    state = model.state_dict()
    arrays = {name: tensor.numpy() for name, tensor in state.items()}
    value = digest(state)
    assert len(value) == 64 and int(value, 16) >= 0
    assert digest(arrays) == value  # same dtype, shape and bytes
    assert digest(dict(reversed(list(state.items())))) == value  # order-independent
    changed = {**state, "0.weight": state["0.weight"].clone()}
    changed["0.weight"][0, 0] += 1
    assert digest(changed) != value


def test_digest_covers_names_dtypes_shapes() -> None:
    base = {"w": np.arange(6, dtype=np.float32)}
    value = digest(base)
    assert digest({"v": base["w"]}) != value
    assert digest({"w": base["w"].astype(np.float64)}) != value
    assert digest({"w": base["w"].reshape(2, 3)}) != value
    # The same bytes split differently between names do not collide.
    assert digest({"a": np.arange(4, dtype=np.uint8), "b": np.arange(0, dtype=np.uint8)}) != (
        digest({"a": np.arange(2, dtype=np.uint8), "b": np.arange(2, 4, dtype=np.uint8)})
    )
    # Non-contiguous views and big-endian arrays hash as their contiguous native copies.
    grid = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert digest({"t": grid.T}) == digest({"t": np.ascontiguousarray(grid.T)})
    assert digest({"w": base["w"].astype(">f4")}) == value


def test_digest_dtypes_numpy_lacks_and_bad_values() -> None:
    half = {"w": torch.ones(3, dtype=torch.bfloat16), "s": torch.tensor(2.0)}
    assert digest(half) == digest({k: v.clone() for k, v in half.items()})
    assert digest(half) != digest({**half, "w": torch.ones(3, dtype=torch.float16)})
    with pytest.raises(TypeError, match="digest: 'x' is a list, not a tensor or array"):
        digest({"x": [1, 2]})
