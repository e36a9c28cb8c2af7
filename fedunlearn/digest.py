"""A model's fingerprint for receipts: the SHA-256 of its weights ("model before and after").

Torch is imported only for a torch tensor: a caller with numpy arrays (Flower's
``ArrayRecord``) does not pay for it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["digest"]


def digest(state_dict: Mapping[str, Any]) -> str:
    """SHA-256 of a model's weights, for receipts ("model before and after").

    Covers each tensor's name, dtype, shape and bytes, in sorted name order, so
    it does not depend on the dict's order. A torch tensor and the numpy array
    with the same dtype, shape and values give the same digest.

    Parameters
    ----------
    state_dict : mapping of str to torch.Tensor or numpy.ndarray
        E.g. ``model.state_dict()`` or Flower's ``ArrayRecord.to_numpy_ndarrays``
        zipped with names.

    Returns
    -------
    str
        64 hex digits.

    Raises
    ------
    TypeError
        A value is neither a torch tensor nor a numpy array.
    """
    sha = hashlib.sha256()
    for name in sorted(state_dict):
        dtype, shape, data = _tensor_bytes(name, state_dict[name])
        # Length-prefixed header: no two different (name, dtype, shape) sequences collide.
        header = json.dumps([name, dtype, list(shape), len(data)])
        sha.update(len(header).to_bytes(8, "little") + header.encode())
        sha.update(data)
    return sha.hexdigest()


def _tensor_bytes(name: str, value: Any) -> tuple[str, tuple[int, ...], bytes]:
    """``(dtype name, shape, little-endian C-order bytes)`` of a tensor or an array."""
    if isinstance(value, np.ndarray):
        array = np.asarray(value, order="C")  # ascontiguousarray would make 0-d arrays 1-d
        if array.dtype.byteorder == ">":  # hash the little-endian bytes torch would have
            array = array.astype(array.dtype.newbyteorder("<"))
        return array.dtype.name, tuple(array.shape), array.tobytes()
    # Imported here: numpy-only callers need not pay for torch.
    import torch

    if not isinstance(value, torch.Tensor):
        raise TypeError(f"digest: '{name}' is a {type(value).__name__}, not a tensor or array")
    tensor = value.detach().to("cpu").contiguous()
    # Raw bytes through a uint8 view: works for dtypes numpy lacks (bfloat16).
    data = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
    return str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape), data
