"""``fedunlearn run`` and ``fedunlearn train``: jobs composed by Hydra, checked first.

``fedunlearn train [--multirun] [OVERRIDE ...]`` trains the global model with the
runtime the config names (``runtime=simulation``, the default, or
``runtime=deployment`` for a local SuperLink and SuperNodes over gRPC);
``fedunlearn run`` goes on to the forget requests, the unlearning methods and the
report. Every word after the sub-command is Hydra's: overrides, ``--multirun``,
``--cfg job``.

Before Hydra starts anything, every job the arguments make (each combination of a
``--multirun`` sweep) is composed, validated and checked against its data and model
(:func:`preflight`): bad input stops with one line, ``fedunlearn: error: ...``, and
exit code 2. A library's refusal of a value (a ValueError, say) becomes a
:class:`~fedunlearn.config.ConfigError` at the call that passes the value, where the
key is known (:func:`_keyed`); only :class:`~fedunlearn.errors.UserError` is caught
at the top, so a bug keeps its traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ParamSpec, TypeVar

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fedunlearn.commands.args import UsageError
from fedunlearn.config import (
    CONF_DIR,
    ConfigError,
    compose,
    compose_sweep,
    method_overrides,
)
from fedunlearn.errors import UserError, first_line, report
from fedunlearn.requests import RequestRefused
from fedunlearn.rules import validate

__all__ = ["preflight", "run_command", "serve_command", "train_command"]

P = ParamSpec("P")
T = TypeVar("T")

PROG = "fedunlearn"
# Hydra's flags that make a sweep of the overrides; other flags (--cfg, --info, --help ...)
# print rather than run, so their arguments go to Hydra unchecked.
MULTIRUN_FLAGS = ("--multirun", "-m")
# How the libraries preflight calls refuse a value: a ValueError (the model registry,
# the aggregators, NoT's layer selectors, the curvature estimators, the data builders),
# a RuntimeError (no CUDA) or a refused request. Caught only around those calls.
_REFUSALS: tuple[type[Exception], ...] = (ValueError, RuntimeError, RequestRefused)


def _keyed(key: str, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``call(*args, **kwargs)``, its refusal (see ``_REFUSALS``) as a ConfigError that
    names ``key``."""
    try:
        return call(*args, **kwargs)
    except _REFUSALS as exc:
        raise ConfigError(f"{key}: {first_line(exc)}") from exc


def preflight(cfg: DictConfig) -> None:
    """The checks of one job that need its data and its model, before anything starts.

    Loads and partitions the data (cached per config, so the job reuses it: a missing
    data root or an impossible split fails in a second, before any process or Ray worker
    starts), builds the model on the CPU, and checks against them what only they can
    tell: the device, the model's options and input shape, the aggregation rule, each
    method given the model (e.g. NoT's ``unlearn.not.layers``), the curvature estimator
    when a method needs the clients' curvature, and the scenario's request on the
    partitions (its client, class, poisoned samples).

    Parameters
    ----------
    cfg : DictConfig
        A config :func:`~fedunlearn.rules.validate` accepted.

    Raises
    ------
    ConfigError
        Naming the key whose value does not fit the machine, the data or the model.
    DatasetNotFoundError
        The data set is not under ``dataset.root``.
    """
    from fedunlearn.federation import build_federation
    from fedunlearn.requests import materialize
    from fedunlearn.settings import Job
    from fedunlearn.training import pick_device
    from fedunlearn.unlearning.curvature import resolve_estimator
    from server.intake import scheduled_request
    from server.methods import check_methods_fit
    from server.training import aggregator
    from strategies import METHODS

    settings = Job.from_config(cfg)
    _keyed("runtime.device", pick_device, settings.device)
    # One call loads, partitions and poisons the data: any of these sections can be at fault.
    federation = _keyed("dataset/partition/attack", build_federation, cfg)
    # Seeded: a build under the global RNG would move what the job draws afterwards.
    model = _keyed("model", settings.build_model, federation, seed=settings.seed)
    _keyed("train.aggregation", aggregator, settings)
    # Each method given the model as the server will give it (NoT resolves its layers).
    try:  # the methods' messages name their own keys (unlearn.not.layers: ...)
        check_methods_fit(settings, model)
    except ValueError as exc:
        raise ConfigError(first_line(exc)) from exc
    if any("curvature" in METHODS[name].needs for name in settings.methods):
        _keyed("unlearn.curvature.estimator", resolve_estimator, model,
               settings.curvature.estimator)
    request = _keyed("scenario.request", scheduled_request, settings)
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
    except UserError as exc:
        sys.exit(report(PROG, exc))


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
        # _check_jobs checked this job unless other Hydra flags skipped that; checking the
        # config Hydra composed again costs milliseconds.
        validate(cfg)
        if cfg.runtime.name == "deployment" or cfg.runtime.launch == "flwr-run":
            # Both submit the app with `flwr run`; its results come back as files.
            if cfg.runtime.name == "deployment":
                from fedunlearn.runtime.deployment import deploy as launch
            else:
                from fedunlearn.runtime.flwr_simulation import simulate_with_flwr as launch
            from fedunlearn.federation import release_cached

            release_cached()  # the checks' data: the job's processes load their own
            launch(cfg, list(hydra_cfg.overrides.task), out_dir, job)
            summary = out_dir / ("serve.json" if job == "serve" else "train.json")
            accuracy = float(json.loads(summary.read_text())["test_accuracy"])
        else:
            from fedunlearn.runtime.simulation import simulate

            accuracy = simulate(cfg, out_dir, job).test_accuracy
    except UserError as exc:
        sys.exit(report(PROG, exc))
    report_md = out_dir / "report.md"
    print(f"global model test accuracy {100 * accuracy:.2f}%  (results in {out_dir})")
    if job == "run" and report_md.exists():
        print(f"unlearning report: {report_md}")
    return accuracy


def _launch(command: str, task: Callable[[DictConfig], float], argv: Sequence[str]) -> int:
    """Check every job of ``argv``, then hand them to Hydra with ``task``; exit code 0."""
    _check_jobs(argv)
    main = hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    # Hydra reads its arguments from sys.argv; its usage line names the sub-command. Every
    # method's YAML is loaded as in compose() (fedunlearn.config.method_overrides).
    # (after the user's words: Hydra's parser wants flags before the overrides).
    sys.argv = [f"{PROG} {command}", *argv, *method_overrides()]
    main(task)()
    return 0


def run_command(argv: Sequence[str]) -> int:
    """``fedunlearn run [--multirun] [OVERRIDE ...]``: the whole story; exit code."""
    return _launch("run", run_task, argv)


def train_command(argv: Sequence[str]) -> int:
    """``fedunlearn train [--multirun] [OVERRIDE ...]``: train the global model; exit code."""
    return _launch("train", train_task, argv)


def serve_task(cfg: DictConfig) -> float:
    """Hydra task of ``fedunlearn serve``: a live federation answering requests."""
    return _job(cfg, "serve")


def serve_command(argv: Sequence[str]) -> int:
    """``fedunlearn serve [--multirun] [OVERRIDE ...]``: train and forget on request.

    ``fedunlearn serve --resume DIR [OVERRIDE ...]`` continues the live federation of
    the run folder ``DIR`` after its last complete round, with the overrides it was
    started with (Hydra keeps them in ``DIR/.hydra/overrides.yaml``) and any given
    after them (e.g. more ``serve.rounds``).
    """
    args = list(argv)
    if "--resume" in args:
        at = args.index("--resume")
        if at + 1 >= len(args):
            return report(PROG, UsageError("--resume needs the run folder to continue"))
        try:
            args = [*resume_overrides(Path(args[at + 1])), *args[:at], *args[at + 2:]]
        except UserError as exc:
            return report(PROG, exc)
    return _launch("serve", serve_task, args)


def resume_overrides(run_dir: Path) -> list[str]:
    """The overrides that continue the live federation of ``run_dir``.

    Raises
    ------
    UsageError
        ``run_dir`` holds no serve checkpoint or no record of its overrides.
    """
    from omegaconf import OmegaConf

    from server.serve import STATE

    recorded = run_dir / ".hydra" / "overrides.yaml"
    if not (run_dir / STATE).exists():
        raise UsageError(f"--resume: {run_dir} holds no {STATE} (not a serve run folder, "
                         "or it stopped before its first round)")
    if not recorded.exists():
        raise UsageError(f"--resume: {recorded} is missing; give the run's overrides and "
                         "serve.resume=true hydra.run.dir=DIR instead")
    # The method sections are added again by _launch; the resume keys are set here.
    added = set(method_overrides())
    kept = [str(o) for o in OmegaConf.to_container(OmegaConf.load(recorded))
            if str(o) not in added
            and str(o).split("=")[0].lstrip("+~") not in ("serve.resume", "hydra.run.dir")]
    return [*kept, "serve.resume=true", f"hydra.run.dir={run_dir}"]
