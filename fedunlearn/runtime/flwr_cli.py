"""The ``flwr`` CLI: connection file, submitting a run and watching it to its end.

:func:`submit` runs a Flower app on any SuperLink with ``flwr run``, reads the run's
final status with ``flwr ls`` (``flwr run`` exits 0 even when the ServerApp fails),
resubmits a run whose ServerApp was lost (a SuperLink restart takes it down) and stops
a run that outlives its timeout (``flwr stop``). It needs nothing but a connection in
``FLWR_HOME/config.toml`` (:func:`write_connection`): the local cluster, the Docker
Compose ``submit`` service and a SuperLink on another machine are driven alike.

A run whose ServerApp died with its SuperLink stays ``running`` in Flower 1.42 until
its task heartbeat expires (about 60 s: 30 s x patience 2), then ends
``finished:failed`` with the details :data:`LOST_SERVERAPP`; a run not yet ``running``
is launched again by the restarted SuperLink (see :mod:`fedunlearn.runtime.cluster`).
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import tomli_w

from fedunlearn.runtime.processes import DeploymentError, service_env

__all__ = [
    "APP_DIR", "CONNECTION", "LOST_SERVERAPP", "RunTimeout", "SuperLinkUnavailable",
    "failure_reason", "job_error", "pinned_overrides", "run_logs", "stop_run", "submit",
    "write_connection",
]

LOG = logging.getLogger("fedunlearn")
# This project: the Flower app (pyproject.toml's [tool.flwr.app]) that `flwr run` sends.
APP_DIR = Path(__file__).resolve().parents[2]
CONNECTION = "fedunlearn-local"
# The details Flower 1.42 gives a run whose ServerApp process vanished (its task's
# heartbeat expired), as opposed to "ServerApp failed with exception: ..." when it raised.
LOST_SERVERAPP = "No heartbeat received from the task"


class RunTimeout(DeploymentError):
    """The run did not finish in time; it has been asked to stop (``flwr stop``).

    Parameters
    ----------
    run_id : int
        The run that timed out.
    status : str
        Its last status seen (``running``, ..., or ``unreachable``).
    timeout : float
        The limit it outlived, in seconds.
    """

    def __init__(self, run_id: int, status: str, timeout: float) -> None:
        super().__init__(f"run {run_id} still '{status}' after {timeout:.0f} s; "
                         "asked the SuperLink to stop it")
        self.run_id = run_id
        self.status = status


class SuperLinkUnavailable(DeploymentError):
    """The ``flwr`` CLI could not reach the SuperLink (it may be restarting)."""

def write_connection(home: Path, name: str, address: str,
                     root_certificates: Path | None = None) -> Path:
    """Write FLWR_HOME/config.toml with one SuperLink connection: over TLS, trusting the
    CA in ``root_certificates`` (an absolute path: ``flwr`` reads it relative to where
    it runs), or insecure without it."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    trust = ({"root-certificates": str(Path(root_certificates).resolve())}
             if root_certificates is not None else {"insecure": True})
    path.write_text(tomli_w.dumps(
        {"superlink": {"default": name, name: {"address": address, **trust}}}
    ))
    return path


def register_node(home: Path, public_key: Path, connection: str = CONNECTION,
                  timeout: float = 60.0) -> None:
    """Register a SuperNode's public key with the SuperLink (``flwr supernode register``).

    A key the SuperLink already holds (a restarted SuperLink on its database) is fine.

    Raises
    ------
    DeploymentError
        Any other refusal, with Flower's message.
    """
    try:
        _flwr_json(["supernode", "register", str(public_key), connection], home, timeout)
    except SuperLinkUnavailable:
        raise
    except DeploymentError as exc:
        if "already in use" not in str(exc).lower():
            raise


def _flwr(args: list[str], home: Path, timeout: float) -> str:
    try:
        done = subprocess.run(["flwr", *args], capture_output=True, text=True,
                              env=service_env(home), timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise SuperLinkUnavailable(f"flwr {args[0]} did not answer within {timeout:.0f} s") \
            from exc
    if done.returncode != 0:
        raise DeploymentError(f"flwr {args[0]} failed ({done.returncode}): "
                              f"{(done.stderr or done.stdout).strip()[-500:]}")
    return done.stdout


def _json_tail(text: str) -> dict:
    """The JSON object printed last by a ``--format json`` flwr command."""
    start = text.find("{")
    if start < 0:
        raise DeploymentError(f"no JSON in flwr output: {text.strip()[-300:]}")
    return json.loads(text[start:])


def _flwr_json(args: list[str], home: Path, timeout: float) -> dict:
    """Run a ``--format json`` flwr command; its answer, or an error for a failed one.

    ``flwr`` exits 0 and answers ``{"success": false, "error-message": ...}`` when it
    cannot reach the SuperLink or the SuperLink refuses the request.
    """
    answer = _json_tail(_flwr([*args, "--format", "json"], home, timeout))
    if answer.get("success", True) is False:
        message = str(answer.get("error-message", "")).strip()
        last = message.splitlines()[-1] if message else "no message"
        if "unavailable" in message.lower():
            raise SuperLinkUnavailable(f"flwr {args[0]}: {last}")
        raise DeploymentError(f"flwr {args[0]}: {last}")
    return answer


def _run_info(home: Path, connection: str, run_id: int) -> dict | None:
    """The SuperLink's record of ``run_id`` (``flwr ls``), or None when it has none."""
    try:
        listing = _flwr_json(["ls", connection, "--run-id", str(run_id)], home, timeout=60)
    except SuperLinkUnavailable:
        raise
    except DeploymentError as exc:
        if "not found" in str(exc).lower():
            return None
        raise
    return listing["runs"][0]


def _start_run(home: Path, connection: str, config_path: Path, app_dir: Path,
               federation_config: str | None = None) -> int:
    """``flwr run`` the app in ``app_dir`` with the run config at ``config_path`` (and, on
    a simulation SuperLink, ``federation_config``); the run id."""
    extra = ["--federation-config", federation_config] if federation_config else []
    answer = _flwr_json(["run", str(app_dir), connection, "--run-config", str(config_path),
                         *extra], home, timeout=300)
    run_id = int(answer["run-id"])
    LOG.info("submitted run %d to %s", run_id, connection)
    return run_id


def stop_run(home: Path, run_id: int, connection: str = CONNECTION) -> bool:
    """Ask the SuperLink to stop ``run_id`` (``flwr stop``); whether it accepted.

    The ServerApp learns it at its next heartbeat (tens of seconds) and exits; a
    LocalCluster's :meth:`~fedunlearn.runtime.cluster.LocalCluster.stop` kills it at once.
    """
    try:
        _flwr_json(["stop", str(run_id), connection], home, timeout=60)
    except DeploymentError as exc:
        LOG.warning("could not stop run %d: %s", run_id, exc)
        return False
    LOG.info("stopped run %d", run_id)
    return True


def submit(
    home: Path, run_config: dict[str, str], *, connection: str = CONNECTION,
    timeout: float = 1800.0, poll: float = 2.0, resubmits: int = 2,
    superlink_timeout: float = 300.0, lost: Callable[[dict], bool] | None = None,
    attempts: list[dict] | None = None, app_dir: Path = APP_DIR,
    federation_config: str | None = None, on_start: Callable[[int], None] | None = None,
    done_file: Path | None = None, quiet_poll: float = 15.0,
) -> tuple[int, str]:
    """``flwr run`` the app, wait for the run to finish, return (run id, status).

    The status is the SuperLink's (``finished:completed``, ``finished:failed``,
    ...), read with ``flwr ls``, because ``flwr run`` exits 0 either way. A run whose
    ServerApp was lost is submitted again with the same run config, at most
    ``resubmits`` times: one that ended ``finished:failed`` for want of a heartbeat
    (its process died: a SuperLink restart, a kill), one the SuperLink no longer knows
    (it restarted without its state), or one ``lost`` says is gone (it is stopped first).
    The ServerApp's job is idempotent (its ledger resumes, a trained model is reused
    from the cache), but a training killed midway starts again from round 1.

    Parameters
    ----------
    home : Path
        FLWR_HOME holding the connection.
    run_config : dict of str to str
        The app's run config (``overrides``, ``output-dir``, ``job``).
    connection : str
        The connection's name in ``home/config.toml``.
    timeout : float
        Seconds for the whole job, resubmissions included; then the run is stopped.
    poll : float
        Seconds between two looks at the run's status.
    resubmits : int
        How many times a lost run may be submitted again.
    superlink_timeout : float
        Seconds the SuperLink may stay unreachable (restarting) before giving up.
    lost : callable, optional
        Told each ``flwr ls`` record of the run; True when the caller knows that its
        ServerApp is gone although Flower still shows it running
        (:meth:`~fedunlearn.runtime.cluster.LocalCluster.run_lost`), which saves
        waiting for the heartbeat to expire.
    attempts : list of dict, optional
        Filled with one record per run submitted: run_id, status, details, and
        ``resubmitted`` (why) for a run that was replaced.
    app_dir : Path
        The Flower app to run (default: this project); tests pass a variant, e.g. with
        a rogue ClientApp.
    federation_config : str, optional
        ``flwr run --federation-config`` (a simulation SuperLink: number of virtual
        clients, Ray resources).
    on_start : callable, optional
        Called with the run id of each run submitted (e.g. to follow its log).
    done_file : Path, optional
        The file the ServerApp writes when its job returns or raises
        (:data:`fedunlearn.protocol.DONE_FILE`). Until it appears the run is looked at only every
        ``quiet_poll`` s (to notice a lost ServerApp), every ``poll`` s after: each
        ``flwr ls`` starts a Python process, about 1 s of a core, which a 2-core
        simulation feels, and the end is seen within 0.2 s instead of ``poll``.

    Raises
    ------
    RunTimeout
        When the job outlives ``timeout`` (the run has been asked to stop).
    DeploymentError
        When ``flwr`` fails, the SuperLink stays unreachable, or a vanished run cannot
        be resubmitted.
    """
    config_path = home / "run-config.toml"
    config_path.write_text(tomli_w.dumps(run_config))
    if done_file is not None:
        done_file.unlink(missing_ok=True)  # a previous run's
    history = attempts if attempts is not None else []
    deadline = time.monotonic() + timeout
    run_id = _start_run(home, connection, config_path, app_dir, federation_config)
    history.append({"run_id": run_id})
    if on_start is not None:
        on_start(run_id)
    unreachable_since: float | None = None
    status = "submitted"
    while True:
        try:
            run = _run_info(home, connection, run_id)
            unreachable_since = None
        except SuperLinkUnavailable as exc:
            now = time.monotonic()
            unreachable_since = unreachable_since or now
            if now - unreachable_since > superlink_timeout:
                raise DeploymentError(f"the SuperLink stayed unreachable for "
                                      f"{superlink_timeout:.0f} s: {exc}") from exc
            status = "unreachable"
            run = {}
        reason = None
        if run is None:
            reason = "vanished (the SuperLink lost its state)"
            status = "vanished"
        elif run:
            status = str(run["status"])
            details = str(run.get("status-details", ""))
            history[-1].update(status=status, details=details)
            if status == "finished:failed" and LOST_SERVERAPP in details:
                reason = "lost its ServerApp (no heartbeat)"
            elif status.startswith("finished"):
                return run_id, status
            elif lost is not None and len(history) <= resubmits and lost(run):
                reason = "lost its ServerApp (the SuperLink was restarted)"
                stop_run(home, run_id, connection)  # so that it does not linger as running
        if reason is not None:
            if len(history) > resubmits:
                if run is None:
                    raise DeploymentError(f"run {run_id} {reason}; resubmitted "
                                          f"{resubmits} times already (runtime.resubmits)")
                return run_id, status
            history[-1]["resubmitted"] = reason
            LOG.warning("run %d %s: submitting it again (%d of at most %d)",
                        run_id, reason, len(history), resubmits)
            run_id = _start_run(home, connection, config_path, app_dir, federation_config)
            history.append({"run_id": run_id})
            if on_start is not None:
                on_start(run_id)
            continue
        if time.monotonic() > deadline:
            stop_run(home, run_id, connection)
            raise RunTimeout(run_id, status, timeout)
        _wait(poll, done_file, quiet_poll)


def _wait(poll: float, done_file: Path | None, quiet_poll: float) -> None:
    """Sleep until the next look at the run: ``poll`` s, or, while ``done_file`` is
    absent, up to ``quiet_poll`` s, waking when it appears."""
    if done_file is None or done_file.exists():
        time.sleep(poll)
        return
    until = time.monotonic() + max(poll, quiet_poll)
    while time.monotonic() < until and not done_file.exists():
        time.sleep(0.2)


def job_error(done_file: Path) -> str | None:
    """The one-line error the ServerApp recorded in ``done_file`` when its job raised
    (:data:`fedunlearn.protocol.DONE_FILE`); None when it did not, or left no file."""
    try:
        outcome = json.loads(done_file.read_text())
    except (OSError, ValueError):
        return None
    error = outcome.get("error") if isinstance(outcome, dict) else None
    return str(error) if error else None


def pinned_overrides(overrides: list[str], cache_dir: str) -> list[str]:
    """``overrides`` for a ServerApp that runs in another working directory: the relative
    ``cache_dir`` made absolute here."""
    pinned = [o for o in overrides if not o.startswith("cache_dir=")]
    pinned.append(f"cache_dir={Path(cache_dir).resolve()}")
    return pinned


def failure_reason(done_file: Path, logs: str) -> str:
    """Why a run did not complete, in one line: the error the ServerApp recorded in
    ``done_file`` (:func:`job_error`), else the last lines of its log."""
    return job_error(done_file) or " | ".join(logs.strip().splitlines()[-3:])


def run_logs(home: Path, run_id: int, connection: str = CONNECTION) -> str:
    """The ServerApp's log of ``run_id`` as the SuperLink kept it."""
    return _flwr(["log", str(run_id), connection, "--show"], home, timeout=120)

