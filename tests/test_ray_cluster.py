"""runtime.ray_address: the simulation joins an existing Ray cluster instead of starting
one. Two real Ray nodes are started here (``ray start --head``, then a worker with
``ray start --address``); the head offers no CPUs, so a run that finishes ran every
virtual client on the worker node. Both nodes run in the foreground (``--block``) in
process groups of their own, and the test stops exactly those groups."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from fedunlearn.runtime.processes import free_ports

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def ray_node(args: list[str], log: Path) -> Iterator[subprocess.Popen]:
    """``ray start --block ARGS`` in its own process group, stopped with it."""
    with log.open("w") as out:
        node = subprocess.Popen([str(BIN / "ray"), "start", "--block", "--disable-usage-stats",
                                 "--node-ip-address", "127.0.0.1", *args],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield node
    finally:
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(node.pid, sig)
            except ProcessLookupError:
                break
            try:
                node.wait(wait)
                time.sleep(1)  # the group's other processes exit after the leader
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(node.pid, signal.SIGKILL)  # anything of the group still there
        except ProcessLookupError:
            pass


def _wait_for_cpus(address: str, cpus: float, timeout: float = 120.0) -> None:
    """Until the cluster at ``address`` reports ``cpus`` CPUs (the worker joined)."""
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        done = subprocess.run([str(BIN / "ray"), "status", "--address", address],
                              capture_output=True, text=True)
        status = done.stdout
        if f"/{cpus:.1f} CPU" in status:
            return
        time.sleep(2)
    raise AssertionError(f"the Ray cluster never reached {cpus} CPUs:\n{status[-2000:]}")


def test_a_run_trains_on_a_two_node_ray_cluster(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    address = f"127.0.0.1:{port}"
    # Ray's sockets live under its temp dir: keep the path short (a socket path has a
    # ~107-byte limit that pytest's tmp_path can exceed).
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    try:
        with ExitStack() as nodes:
            nodes.enter_context(ray_node(
                ["--head", "--port", str(port), "--num-cpus", "0", "--include-dashboard=false",
                 "--temp-dir", ray_tmp], tmp_path / "head.log"))
            time.sleep(3)
            nodes.enter_context(ray_node(["--address", address, "--num-cpus", "2"],
                                         tmp_path / "worker.log"))
            _wait_for_cpus(address, 2.0)
            done = subprocess.run(
                [str(BIN / "fedunlearn"), "train", "dataset=digits", "num_clients=2",
                 "train.rounds=1", f"runtime.ray_address={address}", "runtime.launch=in-process",
                 f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'out'}"],
                capture_output=True, text=True, cwd=ROOT, timeout=480)
            assert done.returncode == 0, done.stderr[-3000:]
        rounds = [json.loads(line) for line in
                  (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
        assert [r["round"] for r in rounds] == [1]
        assert all(r["nodes"] == 2 and r["missing"] == 0 for r in rounds)
        summary = json.loads((tmp_path / "out" / "train.json").read_text())
        assert summary["test_accuracy"] > 0.2  # 10 classes: chance is 0.1
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
