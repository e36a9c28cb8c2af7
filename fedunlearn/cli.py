"""The ``fedunlearn`` console command.

``fedunlearn train [--multirun] [OVERRIDE ...]`` trains the global model with the
runtime the config names (``runtime=simulation``, the default, or
``runtime=deployment`` for a local SuperLink and SuperNodes over gRPC). Every
word after the sub-command is Hydra's: overrides, ``--multirun``, ``--cfg job``.

Before Hydra starts anything, every job the arguments make (each combination of a
``--multirun`` sweep) is composed, validated and checked against its data and model
(:func:`preflight`): bad input stops with one line, ``fedunlearn: error: ...``, and
exit code 2.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ParamSpec, TypeVar

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fedunlearn.config import CONF_DIR, ConfigError, compose, compose_sweep, validate

LOG = logging.getLogger("fedunlearn")
P = ParamSpec("P")
T = TypeVar("T")

USAGE = """usage: fedunlearn COMMAND [--multirun] [OVERRIDE ...]

commands:
  run      the whole story: train the global model (or reuse the cached one), take
           the forget requests (scenario=client|class|instance|backdoor|none), answer
           each with every method in unlearn.methods, write report.md, JSON, plots
  train    train the global model with FedAvg only
  forget   record a forget request on a client machine (see `fedunlearn forget -h`)

runtime=simulation (default) runs Flower's Ray simulation; runtime=deployment starts a
local SuperLink and SuperNodes and runs the same apps over gRPC.

overrides are Hydra's, e.g. `fedunlearn train model=cnn_nonorm train.rounds=5 num_clients=4`;
`fedunlearn train --cfg job` prints the composed config."""

# Errors a user can cause and fix: reported as one line, exit code 2.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, FileNotFoundError, ValueError)
# Hydra's flags that make a sweep of the overrides; other flags (--cfg, --info, --help ...)
# print rather than run, so their arguments go to Hydra unchecked.
MULTIRUN_FLAGS = ("--multirun", "-m")


def _user_errors() -> tuple[type[BaseException], ...]:
    from fedunlearn.runtime.deployment import DeploymentError
    from server.nodes import FederationError
    from server.rounds import RoundError

    return (*USER_ERRORS, DeploymentError, FederationError, RoundError)


def _fail(message: str) -> None:
    print(f"fedunlearn: error: {message}", file=sys.stderr)
    sys.exit(2)


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def _keyed(key: str, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``call(*args, **kwargs)``, its refusal (ValueError, RuntimeError) as a ConfigError
    that names ``key``."""
    try:
        return call(*args, **kwargs)
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"{key}: {_one_line(exc)}") from exc


def preflight(cfg: DictConfig) -> None:
    """The checks of one job that need its data and its model, before anything starts.

    Loads and partitions the data (cached per config, so the job reuses it: a missing
    data root or an impossible split fails in a second, before any process or Ray worker
    starts), builds the model on the CPU, and checks against them what only they can
    tell: the device, the model's options and input shape, the aggregation rule, NoT's
    layers (``unlearn.not.layers``), the curvature estimator when a reset method is
    configured, and the scenario's request on the partitions (its client, class, poisoned
    samples).

    Parameters
    ----------
    cfg : DictConfig
        A config :func:`~fedunlearn.config.validate` accepted.

    Raises
    ------
    ConfigError
        Naming the key whose value does not fit the machine, the data or the model.
    FileNotFoundError
        The data set is not under ``dataset.root``.
    """
    from fedunlearn.federation import build_federation, configured_model
    from fedunlearn.requests import materialize
    from fedunlearn.training import pick_device
    from fedunlearn.unlearning.curvature import resolve_estimator
    from server.intake import scheduled_request
    from server.methods import negation_layers
    from server.training import aggregator
    from strategies import RESET_METHODS

    _keyed("runtime.device", pick_device, str(cfg.runtime.device))
    federation = build_federation(cfg)
    # Seeded: a build under the global RNG would move what the job draws afterwards.
    model = _keyed("model", configured_model, cfg, federation, seed=int(cfg.seed))
    _keyed("train.aggregation", aggregator, cfg)
    _keyed("unlearn.not.layers", negation_layers, cfg, model)
    if any(name in RESET_METHODS for name in cfg.unlearn.methods):
        _keyed("unlearn.tis.estimator", resolve_estimator, model, str(cfg.unlearn.tis.estimator))
    request = _keyed("scenario.request", scheduled_request, cfg)
    if request is not None:
        _keyed("scenario.request", materialize, request, federation.train_ids,
               federation.splits.train.labels.numpy(), federation.poisoned)


def _check_jobs(args: Sequence[str]) -> None:
    """Compose and :func:`preflight` every job ``args`` make; one line and exit 2 if bad.

    Hydra's own errors span many lines, and under ``--multirun`` a bad job fails only
    when its turn comes, after the jobs before it ran; here every job of the sweep is
    checked before the first starts. Arguments with flags other than ``--multirun``
    (``--cfg job``, ``--info``, ``--help`` ...) go to Hydra unchecked.
    """
    flags = [arg for arg in args if arg.startswith("-")]
    if any(flag not in MULTIRUN_FLAGS for flag in flags):
        return
    multirun = bool(flags)
    overrides = [arg for arg in args if not arg.startswith("-")]
    try:
        cfgs = compose_sweep(overrides) if multirun else [compose(overrides)]
        for cfg in cfgs:
            preflight(cfg)
    except _user_errors() as exc:
        _fail(_one_line(exc))


def run_task(cfg: DictConfig) -> float:
    """Hydra task of ``fedunlearn run``: training, requests, methods, report."""
    return _job(cfg, "run")


def train_task(cfg: DictConfig) -> float:
    """Hydra task of ``fedunlearn train``: training only."""
    return _job(cfg, "train")


def _job(cfg: DictConfig, job: str) -> float:
    """Run ``job`` with the configured runtime; return the global model's test accuracy."""
    from server.progress import setup_logging

    setup_logging(str(cfg.flower_log_level))
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        # main() checked this job unless other Hydra flags skipped that; checking the
        # config Hydra composed again costs milliseconds.
        validate(cfg)
        if cfg.runtime.name == "deployment":
            from fedunlearn.runtime.deployment import deploy

            deploy(cfg, list(hydra_cfg.overrides.task), out_dir, job)
            accuracy = float(json.loads((out_dir / "train.json").read_text())["test_accuracy"])
        else:
            from fedunlearn.runtime.simulation import simulate

            accuracy = simulate(cfg, out_dir, job).test_accuracy
    except _user_errors() as exc:
        _fail(_one_line(exc))
    report = out_dir / "report.md"
    print(f"global model test accuracy {100 * accuracy:.2f}%  (results in {out_dir})")
    if job == "run" and report.exists():
        print(f"unlearning report: {report}")
    return accuracy


COMMANDS: dict[str, Callable[[DictConfig], object]] = {"run": run_task, "train": train_task}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedunlearn`` command; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = args[0], args[1:]
    if command == "forget":
        from fedunlearn.outbox import forget_command

        return forget_command(rest)
    if command not in COMMANDS:
        _fail(f"unknown command '{command}'; known: {', '.join([*COMMANDS, 'forget'])}")
    _check_jobs(rest)
    task = hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(
        COMMANDS[command]
    )
    sys.argv = [f"fedunlearn {command}", *rest]
    task()
    return 0


if __name__ == "__main__":
    sys.exit(main())
