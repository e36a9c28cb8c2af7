"""Global-model checkpoints: final weights saved together with the initial ones.

TIS resets parameters to their pre-training values, so the initial weights are
part of every checkpoint. Checkpoints are cached by the config fingerprint, so a
converged model is reloaded instead of retrained while its config is unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

StateDict = dict[str, torch.Tensor]
LOG = logging.getLogger("fedunlearn")


@dataclass
class Checkpoint:
    """A trained global model and how it came to be.

    ``refused`` lists the client replies training refused (round, node, reason):
    a model trained next to a misbehaving node is kept for inspection but never
    reused as if it were clean.
    """

    fingerprint: str
    initial: StateDict
    final: StateDict
    history: list[dict]
    config: dict
    refused: list[dict] = field(default_factory=list)
    # A live federation's answered requests whose models this one includes (in order).
    adopted: list[str] = field(default_factory=list)
    # The node sampling's random state after the last round (random.Random.getstate()).
    sampling: tuple | None = None

    def save(self, path: Path) -> None:
        """Write the checkpoint atomically (a crash never leaves half a file)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(self.__dict__, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        """Read a checkpoint written by :meth:`save`."""
        return cls(**torch.load(path, map_location="cpu", weights_only=True))


def cache_path(cache_dir: str | Path, fingerprint: str) -> Path:
    """Where the checkpoint of the config with ``fingerprint`` is cached."""
    return Path(cache_dir) / fingerprint / "global.pt"


def cached(cache_dir: str | Path, fingerprint: str) -> Checkpoint | None:
    """The cached checkpoint for ``fingerprint``, or ``None`` when there is none or it
    came from a run that refused client replies (it is trained again then)."""
    path = cache_path(cache_dir, fingerprint)
    if not path.exists():
        return None
    ckpt = Checkpoint.load(path)
    if ckpt.fingerprint != fingerprint:
        return None
    if ckpt.refused:
        LOG.warning("not reusing %s: its training refused %d client replies", path,
                    len(ckpt.refused))
        return None
    return ckpt
