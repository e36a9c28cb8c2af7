"""Compose and ship the Hydra config tree in ``conf/``.

Every runtime (simulation, deployment, tests) goes through :func:`compose` or
Hydra's own ``@hydra.main`` and then :func:`fedunlearn.rules.validate`, so a bad
value fails the same way everywhere: one line that names the problem.
:func:`compose_sweep` does the same for every job of a ``--multirun`` sweep.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import MissingConfigException
from omegaconf import DictConfig, OmegaConf

from fedunlearn.errors import UserError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# Sections that decide what a trained global model is; the training cache key and
# the payload every client receives are built from these.
TRAINING_SECTIONS = ("seed", "num_clients", "dataset", "partition", "model", "train", "attack")


class ConfigError(UserError):
    """A configuration value or override that cannot be used (one-line message)."""


@contextmanager
def _hydra_context() -> Iterator[None]:
    """Hydra's compose API over ``conf/``, outside ``@hydra.main``."""
    # compose() needs its own GlobalHydra; a previous one (a test, an earlier call)
    # would make initialize_config_dir refuse to run.
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        yield


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
    with _hydra_context():
        return _compose_job(list(overrides))


def compose_sweep(overrides: Sequence[str]) -> list[DictConfig]:
    """Compose and validate every job of a ``--multirun`` sweep, before any job starts.

    The sweep is expanded exactly as Hydra's basic sweeper expands it (comma lists,
    ``range``, ``choice``, ``glob``; the cartesian product over keys), so a bad value in
    the last job is refused before the first one trains.

    Parameters
    ----------
    overrides : sequence of str
        The sweep's overrides, e.g. ``["seed=0,1,2", "model=cnn,cnn_nonorm"]``.

    Returns
    -------
    list of DictConfig
        One composed, validated config per job, in launch order.

    Raises
    ------
    ConfigError
        For a malformed sweep or the first job whose config :func:`compose` would refuse.
    """
    with _hydra_context():
        try:
            parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
            jobs = BasicSweeper.split_arguments(parser.parse_overrides(list(overrides)), None)[0]
        except Exception as exc:  # Hydra's grammar and sweeper raise several types
            raise ConfigError(f"bad sweep {list(overrides)}: {_first_line(exc)}") from exc
        return [_compose_job(job) for job in jobs]


def method_overrides() -> list[str]:
    """Hydra overrides that load every method's YAML (``conf/unlearn/method/*.yaml``).

    Each file becomes ``unlearn.<section>``: a new method's YAML is picked up by
    being there, and ``unlearn.<section>.<key>=...`` overrides work as for any key.
    Every entry point that composes the config adds these first.
    """
    folder = CONF_DIR / "unlearn" / "method"
    return [f"+unlearn/method@unlearn.{path.stem}={path.stem}"
            for path in sorted(folder.glob("*.yaml"))]


def _compose_job(overrides: list[str]) -> DictConfig:
    """Compose one job's config (inside :func:`_hydra_context`) and :func:`validate` it."""
    try:
        # Overrides passed on by a job Hydra composed (deployment) already hold them.
        loads = [o for o in method_overrides() if o not in overrides]
        cfg = hydra_compose(config_name="config", overrides=[*loads, *overrides])
    except MissingConfigException as exc:
        # An unknown group option ("model=vgg"): name the group and its options, as a
        # bad model.name does, instead of Hydra's search path.
        group, _, option = (exc.missing_cfg_file or "").rpartition("/")
        if not (group and exc.options):
            raise ConfigError(f"bad config override {overrides}: {_first_line(exc)}") from exc
        raise ConfigError(f"unknown {group} '{option}'; known: {', '.join(exc.options)}") from exc
    except Exception as exc:  # Hydra raises several unrelated exception types
        raise ConfigError(f"bad config override {overrides}: {_first_line(exc)}") from exc
    from fedunlearn.rules import validate  # the rules import this module's names

    validate(cfg)
    return cfg


def parse_overrides(text: str) -> list[str]:
    """Split the run-config string ``"a=1 b=x"`` into Hydra overrides (shell quoting, so
    that an override holding spaces, e.g. ``serve.schedule=[{round: 3, ...}]``, stays one:
    :func:`join_overrides` writes it)."""
    return [part for part in shlex.split(text) if part]


def join_overrides(overrides: list[str]) -> str:
    """The run-config string of ``overrides`` (:func:`parse_overrides` reads it back)."""
    return shlex.join(overrides)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def group_options(group: str) -> tuple[str, ...]:
    """The options of a config group: the names of ``conf/<group>/*.yaml``, sorted."""
    return tuple(sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml")))


def training_view(cfg: DictConfig) -> dict[str, Any]:
    """The plain-dict part of ``cfg`` that determines the trained global model."""
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    view = {key: container[key] for key in TRAINING_SECTIONS}
    # How long the server waits and how evaluation is batched do not change the model.
    view["train"] = {
        k: v for k, v in view["train"].items()
        if k not in ("round_timeout", "node_timeout", "eval_batch_size")
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
