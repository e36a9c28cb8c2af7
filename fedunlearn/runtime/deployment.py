"""Deployment: real SuperLink and SuperNode processes talking gRPC, on one host.

:func:`deploy` is ``fedunlearn train|run runtime=deployment``: it starts a
:class:`~fedunlearn.runtime.cluster.LocalCluster`, runs the app on it with
:func:`~fedunlearn.runtime.flwr_cli.submit`, stops every process it started and
records the outcome. :class:`DeploymentError` is what any of them raises.

The parts, each usable alone:

- :mod:`fedunlearn.runtime.processes`: process groups (``/proc``), services, ports;
- :mod:`fedunlearn.runtime.cluster`: the supervised local SuperLink and SuperNodes;
- :mod:`fedunlearn.runtime.flwr_cli`: the ``flwr`` CLI, which drives any SuperLink
  (on several machines, start the services by hand and use ``submit`` alone).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from omegaconf import DictConfig

from fedunlearn import protocol as P
from fedunlearn.config import join_overrides
from fedunlearn.runtime.cluster import LocalCluster
from fedunlearn.runtime.flwr_cli import (
    APP_DIR,
    RunTimeout,
    failure_reason,
    pinned_overrides,
    run_logs,
    submit,
)
from fedunlearn.runtime.processes import DeploymentError

__all__ = ["DeploymentError", "deploy"]

LOG = logging.getLogger("fedunlearn")


def deploy(
    cfg: DictConfig, overrides: list[str], out_dir: Path, job: str = "run", *,
    app_dir: Path = APP_DIR,
) -> dict:
    """Start a local cluster, run the app over gRPC, stop the cluster.

    Writes ``deployment.json`` (run id, status, seconds, every process group started,
    the services' restarts, every run submitted) and ``serverapp.log`` in ``out_dir``,
    whatever the outcome.

    Parameters
    ----------
    cfg : DictConfig
        The composed config (runtime must be ``deployment``).
    overrides : list of str
        The Hydra overrides that composed ``cfg``; the ServerApp recomposes from them.
    out_dir : Path
        Results folder (absolute paths are passed to the ServerApp).
    job : str
        ``run`` (train, answer requests, report), ``train``, or ``serve`` (the live
        federation; a resubmitted run resumes it).
    app_dir : Path
        The Flower app to run (default: this project); tests pass a variant, e.g. with
        a rogue ClientApp.

    Raises
    ------
    DeploymentError
        When a service fails, the run times out (status ``timeout``; the run and every
        process are stopped), or the run does not finish as ``finished:completed``.
    """
    out_dir = out_dir.resolve()
    rt = cfg.runtime
    home = Path(rt.flwr_home).resolve() if rt.flwr_home else out_dir / "flwr"
    # The ServerApp runs in another working directory: pin relative paths here.
    pinned = pinned_overrides(overrides, cfg.cache_dir)
    if job == "serve":
        # A run resubmitted after its ServerApp died continues the live federation from
        # its checkpoint (a fresh folder has none: it starts from round 1).
        pinned = [o for o in pinned if not o.startswith("serve.resume=")]
        pinned.append("serve.resume=true")
    started = time.perf_counter()
    attempts: list[dict] = []
    run_id: int | None = None
    status, error, last_seen = "error", "", None
    logs = ""
    (out_dir / P.DONE_FILE).unlink(missing_ok=True)  # an earlier run's word is not this one's
    cluster = LocalCluster(rt, int(cfg.num_clients), home)
    try:
        with cluster:
            LOG.info("SuperLink and %d SuperNodes up at %s (state %s, logs in %s)",
                     cfg.num_clients, cluster.control_address, cluster.state_file,
                     home / "logs")
            try:
                run_id, status = submit(
                    home, {"overrides": join_overrides(pinned), "output-dir": str(out_dir),
                           "job": job},
                    timeout=float(rt.run_timeout), resubmits=int(rt.resubmits),
                    superlink_timeout=float(rt.superlink_timeout), lost=cluster.run_lost,
                    attempts=attempts, app_dir=app_dir,
                )
            except RunTimeout as exc:
                run_id, status, last_seen = exc.run_id, "timeout", exc.status
            if run_id is not None:
                try:
                    logs = run_logs(home, run_id)
                except DeploymentError as exc:
                    logs = f"(no log: {exc})\n"
        # Leaving the block stopped every process group, the ServerApp's included.
    except DeploymentError as exc:
        error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if attempts:
            run_id = attempts[-1]["run_id"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "serverapp.log").write_text(logs)
    result = {"run_id": run_id, "status": status, "seconds": time.perf_counter() - started,
              "process_groups": cluster.process_groups(), "restarts": cluster.restarts,
              "runs": attempts}
    if last_seen is not None:
        result["last_status"] = last_seen
    if error:
        result["error"] = error
    (out_dir / "deployment.json").write_text(json.dumps(result, indent=2))
    if error:
        raise DeploymentError(error)
    if status == "timeout":
        raise DeploymentError(
            f"run {run_id} did not finish within {float(rt.run_timeout):.0f} s "
            f"(runtime.run_timeout); stopped it and every service "
            f"(see {out_dir / 'deployment.json'})")
    if status != "finished:completed":
        raise DeploymentError(f"run {run_id} ended '{status}': "
                              f"{failure_reason(out_dir / P.DONE_FILE, logs)}")
    return result
