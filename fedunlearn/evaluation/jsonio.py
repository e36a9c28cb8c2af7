"""Results as strict JSON: plain types only, NaN and infinities as ``null``."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def _jsonable(value: Any) -> Any:
    """Plain JSON types: NaN/inf become null, arrays and tensors lists, others strings."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    if hasattr(value, "tolist"):  # numpy arrays, torch tensors
        return _jsonable(value.tolist())
    return str(value)


def _write_json(path: Path, payload: Any) -> Path:
    """Write ``payload`` (:func:`_jsonable` first) as indented strict JSON; return ``path``."""
    path.write_text(json.dumps(_jsonable(payload), indent=2, allow_nan=False) + "\n")
    return path
