"""Real on-disk data folders for tests of a node's own files: PNGs in an ImageFolder
layout (written with PIL) and ``.npz`` files (written with numpy)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image


def write_image_folder(root: Path, counts: Mapping[str, int], size: tuple[int, int] = (8, 8),
                       mode: str = "L", seed: int = 0) -> dict[str, np.ndarray]:
    """Write ``counts[name]`` random PNGs ``img_000.png``.. into ``root/name/``.

    Returns
    -------
    dict of str to numpy.ndarray
        Per file (relative to ``root``), its pixels as PIL gives them back
        (``H x W`` for L, ``H x W x 3`` for RGB).
    """
    rng = np.random.default_rng(seed)
    height, width = size
    shape = (height, width) if mode == "L" else (height, width, 3)
    written = {}
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
            relative = f"{name}/img_{index:03d}.png"
            Image.fromarray(pixels).save(root / relative)  # uint8 H x W: L, H x W x 3: RGB
            written[relative] = pixels
    return written


def write_npz(root: Path, x: np.ndarray, y: np.ndarray | None = None,
              name: str = "data.npz") -> Path:
    """Write ``x`` (and ``y`` when given) into ``root/name``; returns the file."""
    root.mkdir(parents=True, exist_ok=True)
    arrays = {"x": x} if y is None else {"x": x, "y": y}
    np.savez(root / name, **arrays)
    return root / name
