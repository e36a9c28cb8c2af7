"""Compose, validate and ship the Hydra config tree in ``conf/``.

Every runtime (simulation, deployment, tests) goes through :func:`compose` or
Hydra's own ``@hydra.main`` and then :func:`validate`, so a bad value fails the
same way everywhere: one line that names the problem.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# Sections that decide what a trained global model is; the training cache key and
# the payload every client receives are built from these.
TRAINING_SECTIONS = ("seed", "num_clients", "dataset", "partition", "model", "train", "attack")


class ConfigError(ValueError):
    """A configuration value or override that cannot be used (one-line message)."""


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra overrides, outside ``@hydra.main``.

    Parameters
    ----------
    overrides : sequence of str
        Hydra overrides such as ``"model=cnn_nonorm"`` or ``"train.rounds=2"``.

    Returns
    -------
    DictConfig
        The composed, validated config (without the ``hydra`` node).

    Raises
    ------
    ConfigError
        For a malformed override, an unknown group option or key, or a bad value.
    """
    # compose() needs its own GlobalHydra; a previous one (a test, an earlier call)
    # would make initialize_config_dir refuse to run.
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
    except Exception as exc:  # Hydra raises several unrelated exception types
        raise ConfigError(f"bad config override {list(overrides)}: {_first_line(exc)}") from exc
    validate(cfg)
    return cfg


def parse_overrides(text: str) -> list[str]:
    """Split the run-config string ``"a=1 b=x"`` into Hydra overrides."""
    return [part for part in text.split() if part]


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def validate(cfg: DictConfig) -> None:
    """Check the values no schema can: names, ranges, and their combinations.

    Raises
    ------
    ConfigError
        With one line naming the first problem found.
    """
    from fedunlearn.data import DATASETS
    from fedunlearn.data.partition import SCHEMES
    from fedunlearn.models import MODELS

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    need(cfg.dataset.name in DATASETS,
         f"unknown dataset '{cfg.dataset.name}'; known: {', '.join(DATASETS)}")
    need(cfg.model.name in MODELS,
         f"unknown model '{cfg.model.name}'; known: {', '.join(MODELS)}")
    need(cfg.partition.scheme in SCHEMES,
         f"unknown partition scheme '{cfg.partition.scheme}'; known: {', '.join(SCHEMES)}")
    need(isinstance(cfg.num_clients, int) and cfg.num_clients >= 1,
         f"num_clients must be a positive integer, got {cfg.num_clients!r}")
    if cfg.partition.scheme == "dirichlet":
        need(cfg.partition.beta is not None and float(cfg.partition.beta) > 0,
             f"partition.beta must be > 0 for the dirichlet scheme, got {cfg.partition.beta}")
    need(0.0 <= float(cfg.partition.val_fraction) < 1.0,
         f"partition.val_fraction must be in [0, 1), got {cfg.partition.val_fraction}")
    train = cfg.train
    need(int(train.rounds) >= 1, f"train.rounds must be >= 1, got {train.rounds}")
    need(int(train.local_epochs) >= 1,
         f"train.local_epochs must be >= 1, got {train.local_epochs}")
    need(int(train.batch_size) >= 1, f"train.batch_size must be >= 1, got {train.batch_size}")
    need(float(train.lr) > 0, f"train.lr must be > 0, got {train.lr}")
    need(0.0 < float(train.fraction_train) <= 1.0,
         f"train.fraction_train must be in (0, 1], got {train.fraction_train}")
    need(cfg.runtime.device in ("auto", "cpu", "cuda"),
         f"runtime.device must be auto, cpu or cuda, got {cfg.runtime.device!r}")
    if cfg.runtime.name == "simulation":
        need(isinstance(cfg.runtime.client_cpus, int) and cfg.runtime.client_cpus >= 1,
             f"runtime.client_cpus must be a positive integer, got {cfg.runtime.client_cpus!r}")


def training_view(cfg: DictConfig) -> dict[str, Any]:
    """The plain-dict part of ``cfg`` that determines the trained global model."""
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    view = {key: container[key] for key in TRAINING_SECTIONS}
    # How long the server waits and how evaluation is batched do not change the model.
    view["train"] = {
        k: v for k, v in view["train"].items() if k not in ("round_timeout", "eval_batch_size")
    }
    return view


def fingerprint(cfg: DictConfig) -> str:
    """A short stable digest of :func:`training_view`: the trained-model cache key."""
    canonical = json.dumps(training_view(cfg), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def to_payload(cfg: DictConfig) -> str:
    """Serialize ``cfg`` (resolved) to the JSON string sent to clients in messages.

    Clients rebuild their data and model from this, so the server is the single
    source of truth for the configuration in every runtime.
    """
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    container.pop("hydra", None)
    return json.dumps(container, sort_keys=True)


def from_payload(payload: str) -> DictConfig:
    """Inverse of :func:`to_payload`.

    Raises
    ------
    ConfigError
        When the payload is not a JSON object.
    """
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config payload is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError("config payload must be a JSON object")
    return OmegaConf.create(data)
