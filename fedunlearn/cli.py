"""The ``fedunlearn`` console command.

``fedunlearn train [--multirun] [OVERRIDE ...]`` trains the global model with the
runtime the config names (``runtime=simulation``, the default, or
``runtime=deployment`` for a local SuperLink and SuperNodes over gRPC). Every
word after the sub-command is Hydra's: overrides, ``--multirun``, ``--cfg job``.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fedunlearn.config import CONF_DIR, ConfigError, compose, validate

LOG = logging.getLogger("fedunlearn")

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


def _user_errors() -> tuple[type[BaseException], ...]:
    from fedunlearn.runtime.deployment import DeploymentError
    from server.nodes import FederationError
    from server.rounds import RoundError

    return (*USER_ERRORS, DeploymentError, FederationError, RoundError)


def _fail(message: str) -> None:
    print(f"fedunlearn: error: {message}", file=sys.stderr)
    sys.exit(2)


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
        validate(cfg)
        # Load and partition the data now: a missing data root or an impossible split
        # fails in a second, before any process or Ray worker starts.
        from fedunlearn.federation import build_federation

        build_federation(cfg)
        from strategies import check_methods

        check_methods(list(cfg.unlearn.methods))
        if cfg.runtime.name == "deployment":
            from fedunlearn.runtime.deployment import deploy

            deploy(cfg, list(hydra_cfg.overrides.task), out_dir, job)
            accuracy = float(json.loads((out_dir / "train.json").read_text())["test_accuracy"])
        else:
            from fedunlearn.runtime.simulation import simulate

            accuracy = simulate(cfg, out_dir, job).test_accuracy
    except _user_errors() as exc:
        _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
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
    # Check a single run's overrides up front: Hydra's own errors span many lines.
    if not any(a.startswith("-") for a in rest):
        try:
            compose(rest)
        except ConfigError as exc:
            _fail(str(exc))
    task = hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(
        COMMANDS[command]
    )
    sys.argv = [f"fedunlearn {command}", *rest]
    task()
    return 0


if __name__ == "__main__":
    sys.exit(main())
