"""Real SuperLink and SuperNode processes on 127.0.0.1, talking gRPC.

Each integration test starts its own services on free ports and checks afterwards that
every process group it started (restarts and the SuperLink's SuperExec included) is gone.
The first tests drive :func:`submit` against a scripted ``flwr`` and start nothing.
"""

import json
import os
import signal
import subprocess
import threading
import time

import pytest

from fedunlearn.config import compose
from fedunlearn.runtime import flwr_cli
from fedunlearn.runtime.cluster import LocalCluster, outbox_path
from fedunlearn.runtime.deployment import DeploymentError, deploy
from fedunlearn.runtime.flwr_cli import LOST_SERVERAPP, RunTimeout, submit
from fedunlearn.runtime.processes import free_ports, group_members

UNAVAILABLE = {"success": False, "error-message": "Connection to the SuperLink is unavailable."}


def scripted_flwr(monkeypatch, answers):
    """Replace the ``flwr`` CLI: each command gets the next answer of its own list."""
    calls = []

    def fake(args, home, timeout):
        calls.append(args[:2] if args[0] != "run" else ["run"])
        return json.dumps(answers[args[0]].pop(0))

    monkeypatch.setattr(flwr_cli, "_flwr", fake)
    return calls


def listing(status, details=""):
    return {"success": True, "runs": [{"status": status, "status-details": details}]}


def test_submit_waits_for_a_restarting_superlink_and_resubmits_a_lost_run(
        tmp_path, monkeypatch):
    calls = scripted_flwr(monkeypatch, {
        "run": [{"success": True, "run-id": 1}, {"success": True, "run-id": 2}],
        "ls": [listing("running"), UNAVAILABLE, UNAVAILABLE,
               listing("finished:failed", LOST_SERVERAPP), listing("finished:completed")],
    })
    attempts = []
    assert submit(tmp_path, {"job": "train"}, poll=0, attempts=attempts) == (
        2, "finished:completed")
    assert [a["run_id"] for a in attempts] == [1, 2]
    assert attempts[0]["resubmitted"] == "lost its ServerApp (no heartbeat)"
    assert calls == [["run"], *[["ls", "fedunlearn-local"]] * 4, ["run"],
                     ["ls", "fedunlearn-local"]]


def test_submit_resubmits_within_its_bound_only_and_stops_a_run_on_timeout(
        tmp_path, monkeypatch):
    # A ServerApp that raised is a real failure: returned, not resubmitted.
    scripted_flwr(monkeypatch, {"run": [{"success": True, "run-id": 1}],
                                "ls": [listing("finished:failed", "ServerApp failed with "
                                                                  "exception: boom")]})
    assert submit(tmp_path, {}, poll=0) == (1, "finished:failed")
    # A lost ServerApp, with no resubmission left: its failure is the answer.
    scripted_flwr(monkeypatch, {"run": [{"success": True, "run-id": 1}],
                                "ls": [listing("finished:failed", LOST_SERVERAPP)]})
    assert submit(tmp_path, {}, poll=0, resubmits=0) == (1, "finished:failed")
    # Out of time: the run is stopped, and the error names it.
    calls = scripted_flwr(monkeypatch, {"run": [{"success": True, "run-id": 5}],
                                        "ls": [listing("running")],
                                        "stop": [{"success": True}]})
    with pytest.raises(RunTimeout, match="run 5 still 'running'") as info:
        submit(tmp_path, {}, poll=0, timeout=0)
    assert info.value.run_id == 5 and calls[-1] == ["stop", "5"]


def overrides(tmp_path, *extra):
    link, node = free_ports(2)
    return [
        "runtime=deployment", "dataset=digits", "num_clients=2", "train.rounds=2",
        f"runtime.superlink_port={link}", f"runtime.clientappio_base_port={node}",
        f"cache_dir={tmp_path / 'cache'}", *extra,
    ]


def assert_all_stopped(groups, superlink_groups=2):
    """Every group is empty; the SuperLink's list holds its own and its SuperExec's.
    Each SuperNode's warm executor (and its forkserver, in its group) is stopped too."""
    assert set(groups) == {"superlink", "supernode-0", "supernode-1", "executor-0",
                           "executor-1"}
    assert len(groups["superlink"]) == superlink_groups
    for pgids in groups.values():
        for pgid in pgids:
            assert group_members(pgid) == [], pgid


def serverapps(port):
    """Pids of live flwr-serverapp processes that talk to the SuperLink on ``port``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                argv = handle.read().decode().split("\0")
        except OSError:
            continue
        if any(a.endswith("flwr-serverapp") for a in argv[:2]) and f"127.0.0.1:{port}" in argv:
            found.append(int(pid))
    return found


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def forget_half(cmd, home, client):
    """``fedunlearn forget`` half of ``client``'s samples into its node's outbox; the id."""
    recorded = subprocess.run(
        [*cmd, "forget", "--outbox", str(outbox_path(home, client)), "--client", str(client),
         "--kind", "instance", "--fraction", "0.5"], capture_output=True, text=True)
    assert recorded.returncode == 0, recorded.stderr
    return recorded.stdout.split()[-1]


@pytest.mark.integration
def test_failed_run_is_an_error(tmp_path):
    # The ServerApp composes the config itself: a model that cannot take 8x8 inputs
    # passes the launcher's checks here but fails inside the run.
    args = overrides(tmp_path, "model=vit_b16")
    with pytest.raises(DeploymentError, match="finished:failed") as info:
        deploy(compose(args), args, tmp_path / "out")
    # The message carries the ServerApp's own error (serverapp.done), not Flower's
    # closing boilerplate.
    done = json.loads((tmp_path / "out" / "serverapp.done").read_text())
    assert not done["ok"] and done["error"] and done["error"] in str(info.value)
    result = json.loads((tmp_path / "out" / "deployment.json").read_text())
    assert result["status"] == "finished:failed"
    # The ServerApp raised: a real failure, not a lost ServerApp, so no resubmission.
    assert len(result["runs"]) == 1 and "resubmitted" not in result["runs"][0]
    assert "ServerApp failed with exception" in result["runs"][0]["details"]
    assert_all_stopped(result["process_groups"])


@pytest.mark.integration
def test_superlink_killed_mid_run_is_restarted_and_the_job_finishes(tmp_path, monkeypatch):
    clusters = []
    start = LocalCluster.start

    def recording_start(self):
        clusters.append(self)
        return start(self)

    monkeypatch.setattr(LocalCluster, "start", recording_start)
    out = tmp_path / "out"
    killed = []

    def kill_superlink_after_round_one():
        metrics = out / "metrics.jsonl"
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if clusters and metrics.exists() and metrics.read_text().strip():
                link = clusters[0].services["superlink"]
                killed.append(link.proc.pid)
                os.killpg(link.proc.pid, signal.SIGKILL)
                return
            time.sleep(0.5)

    killer = threading.Thread(target=kill_superlink_after_round_one, daemon=True)
    killer.start()
    args = overrides(tmp_path, "runtime.resubmits=1")
    result = deploy(compose(args), args, out, job="train")
    killer.join(timeout=1)
    assert killed, "the SuperLink was never killed"
    assert result["status"] == "finished:completed"
    # The runtime restarted the SuperLink; the SuperNodes reconnected to it by themselves
    # (its state is on disk: no 401), so they needed no restart.
    assert [r["service"] for r in result["restarts"]] == ["superlink"]
    first, second = result["runs"]
    # Seen at once from the restart, without waiting ~60 s for Flower's heartbeat expiry.
    assert first["resubmitted"] == "lost its ServerApp (the SuperLink was restarted)"
    assert second["status"] == "finished:completed" and result["run_id"] == second["run_id"]
    summary = json.loads((out / "train.json").read_text())
    assert len(summary["history"]) == 2 and len(summary["nodes"]) == 2
    groups = result["process_groups"]
    # Two SuperLinks, each with its SuperExec's group (where the ServerApps ran).
    assert groups["superlink"][0] == killed[0]
    assert_all_stopped(groups, superlink_groups=4)
    assert serverapps(compose(args).runtime.superlink_port) == []


@pytest.mark.integration
def test_run_timeout_stops_the_run_and_every_process(tmp_path):
    # Forty rounds cannot finish in 30 s (a deployment round takes >= 3 s: the
    # SuperNode's 3 s idle sleep; the ServerApp alone starts in about 10 s).
    args = overrides(tmp_path, "train.rounds=40", "runtime.run_timeout=30")
    with pytest.raises(DeploymentError, match=r"did not finish within 30 s") as info:
        deploy(compose(args), args, tmp_path / "out", job="train")
    assert "\n" not in str(info.value)
    result = json.loads((tmp_path / "out" / "deployment.json").read_text())
    assert result["status"] == "timeout"
    assert result["last_status"] == "running"  # a ServerApp was running when time ran out
    assert_all_stopped(result["process_groups"])
    assert serverapps(compose(args).runtime.superlink_port) == []
