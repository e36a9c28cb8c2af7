"""The warm executor's fork mechanics, without a SuperNode: one child per task, forked
from the pre-warmed forkserver, stopped with the executor; other task types refused.

The real path (a SuperNode's Runtime API, Flower's ``run_clientapp`` in the child) runs
in every deployment test: the local runtime starts SuperNodes with their warm executors.
"""

import os
import socket

import pytest
from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResultStatus

from client.timing import process_start
from fedunlearn.runtime.executor import ForkExecutor


def spec(task_id: int, address: str, task_type: TaskType = TaskType.CLIENT_APP):
    return ExecutionSpec(task_type=task_type, runtime_api_address=address, token="t" * 8,
                         insecure=True, root_certificates_path=None,
                         runtime_dependency_install=False, parent_pid=os.getpid(),
                         suppress_output=True, task_id=task_id)


@pytest.fixture
def listening():
    """A port that accepts connections and never answers: the child's Runtime API call
    hangs there, so the child stays alive until it is stopped."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def test_each_task_runs_in_its_own_forked_child_and_close_stops_them(listening):
    executor = ForkExecutor(preload=("json",)).start()
    try:
        assert executor.launch(spec(1, listening)).status == LaunchResultStatus.ACCEPTED
        assert executor.launch(spec(2, listening)).status == LaunchResultStatus.ACCEPTED
        children = dict(executor.running)
        assert set(children) == {1, 2}
        pids = {child.pid for child in children.values()}
        assert len(pids) == 2 and os.getpid() not in pids
        # Forked, not started: the children's parent is the forkserver, not this process.
        for pid in pids:
            with open(f"/proc/{pid}/stat") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            assert parent != os.getpid()
        executor.reconcile()
        assert set(executor.running) == {1, 2}  # still running: nothing dropped
    finally:
        executor.close()
    assert executor.running == {}
    for child in children.values():
        assert not child.is_alive()


def test_other_task_types_are_refused_with_the_reason(listening):
    executor = ForkExecutor(preload=("json",))
    result = executor.launch(spec(3, listening, TaskType.SERVER_APP))
    assert result.status == LaunchResultStatus.FAILED
    assert "flwr-clientapp" in result.message and executor.running == {}


def test_process_start_is_when_this_process_began():
    import time

    started = process_start()
    assert started <= time.time()
    # This interpreter started before the test session, within a day.
    assert time.time() - started < 86_400
