"""A live federation across network namespaces: one host per process, over TLS with
SuperNode authentication, with a slow lossy link and a node cut off mid-round.

The test builds its own network (:class:`tests.netns.Sandbox`): a host ``link`` for the
SuperLink, ``cli`` for the ``flwr`` CLI, ``node0``..``node2`` for the SuperNodes (each with
its warm executor), all on one bridge with addresses from 198.18.0.0/15. The CA, the
SuperLink's certificate (for its 198.18 address) and the node keys are made for this
federation; the keys are registered from ``cli`` before any node starts.

Faults:
- ``node0``'s link is slow and lossy for the whole run: ``tc netem delay 200ms loss 5%``,
  or, on a kernel without ``sch_netem``, 100 ms each way through a delaying TCP relay
  (``tests/relay.py``; no loss then, and the test says so);
- ``node2`` is cut off (its link down) as it picks up round 2's training message, and
  restored once round 2 has ended: round 2 must end within ``serve.round_timeout`` with
  the other two nodes, and ``node2`` must train again in a later round.
Every process group and namespace the test made is gone at the end, even on failure.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

from fedunlearn.pki import Layout, parse_addresses, write_credentials
from fedunlearn.runtime.flwr_cli import write_connection
from fedunlearn.runtime.processes import service_env
from tests.netns import Sandbox, SandboxUnavailable

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PORT = 9091          # the SuperLink's one port, inside its own namespace
RUNTIME_PORT = 9094  # each SuperNode's Runtime API, on its own namespace's loopback
RELAY_PORT = 9190
ROUND_TIMEOUT = 30
ROUNDS = 5
NODES = 3


def serve_rounds(out: Path) -> dict[int, dict]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["round"]: r for r in rows if r.get("phase") == "serve"}


def until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def sandbox():
    try:
        box = Sandbox()
    except SandboxUnavailable as exc:
        pytest.skip(f"no network namespaces here: {exc}")
    try:
        yield box
    finally:
        left = box.close()
        assert left == [], f"namespaces left behind: {left}"
        assert box.alive() == [], "process groups left alive"


def test_federation_across_namespaces_survives_latency_loss_and_a_cut(sandbox, tmp_path):
    link = sandbox.add_host("link")
    sandbox.add_host("cli")
    for i in range(NODES):
        sandbox.add_host(f"node{i}")
    creds = Layout(tmp_path / "certs")
    write_credentials(creds.root, names=("localhost",),
                      addresses=parse_addresses(f"{link},127.0.0.1"),
                      nodes=NODES)
    logs = tmp_path / "logs"

    def env(home: Path) -> dict[str, str]:
        environment = service_env(home)
        environment["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = "0.05"
        return environment

    sandbox.spawn("link", [
        str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(creds.ca_cert),
        "--ssl-certfile", str(creds.superlink_cert), "--ssl-keyfile", str(creds.superlink_key),
        "--enable-supernode-auth", "--disable-runtime-dependency-installation",
        "--host", "0.0.0.0", "--port", str(PORT), "--database", str(tmp_path / "link.db"),
    ], logs / "superlink.log", env(tmp_path / "flwr-link"))

    # From the CLI's host: the connection over TLS, then every node's key registered.
    cli_home = tmp_path / "flwr-cli"
    write_connection(cli_home, "fed", f"{link}:{PORT}", creds.ca_cert)

    def register(i: int) -> bool:
        done = sandbox.run("cli", [str(BIN / "flwr"), "supernode", "register",
                                   str(creds.node_public_key(i)), "fed"], env(cli_home))
        return done.returncode == 0

    until(lambda: register(0), 60, "the SuperLink to accept a registration")
    for i in range(1, NODES):
        assert register(i), f"node {i}'s key was refused"

    # Node 0's slow, lossy link.
    why_not = sandbox.netem("node0", "delay 200ms loss 5%")
    superlink = {i: f"{link}:{PORT}" for i in range(NODES)}
    if why_not is not None:
        warnings.warn(f"tc netem unavailable ({why_not}): node0 gets 100 ms each way "
                      "through a relay, and no packet loss", stacklevel=1)
        sandbox.spawn("node0", [sys.executable, str(ROOT / "tests" / "relay.py"),
                                "--listen", f"127.0.0.1:{RELAY_PORT}",
                                "--upstream", f"{link}:{PORT}", "--delay", "0.1"],
                      logs / "relay.log")
        superlink[0] = f"127.0.0.1:{RELAY_PORT}"
    for i in range(NODES):
        node_home = tmp_path / f"flwr-node{i}"
        sandbox.spawn(f"node{i}", [
            str(BIN / "flower-supernode"), "--root-certificates", str(creds.ca_cert),
            "--auth-supernode-private-key", str(creds.node_key(i)), "--isolation", "process",
            "--superlink", superlink[i], "--host", "127.0.0.1", "--port", str(RUNTIME_PORT),
            "--node-config", f"partition-id={i} num-partitions={NODES}",
        ], logs / f"supernode-{i}.log", env(node_home))
        sandbox.spawn(f"node{i}", [
            str(BIN / "fedunlearn"), "node-executor", "--insecure", "--runtime-api-address",
            f"127.0.0.1:{RUNTIME_PORT}", "--poll-interval", "0.05",
        ], logs / f"executor-{i}.log", env(node_home))

    out = tmp_path / "out"
    overrides = (f"dataset=digits num_clients={NODES} serve.rounds={ROUNDS} "
                 f"serve.round_timeout={ROUND_TIMEOUT} serve.min_nodes=2 "
                 f"serve.round_retries=0 cache_dir={tmp_path / 'cache'}")
    run_config = {"overrides": overrides, "output-dir": str(out), "job": "serve"}
    cut: dict[str, float] = {}
    failures: list[BaseException] = []

    def trains_received() -> int:
        return (logs / "supernode-2.log").read_text(errors="replace").count(
            "Receiving: train message")

    def cut_node2() -> None:
        try:
            until(lambda: 1 in serve_rounds(out), 600, "round 1")
            seen = trains_received()
            until(lambda: trains_received() > seen, 300, "round 2 to reach node 2")
            sandbox.link("node2", up=False)
            cut["down"] = time.time()
            until(lambda: 2 in serve_rounds(out), 300, "round 2 to end")
            sandbox.link("node2", up=True)
            cut["up"] = time.time()
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)
            sandbox.link("node2", up=True)

    worker = threading.Thread(target=cut_node2, daemon=True)
    worker.start()
    submit = ("import json, sys; from pathlib import Path; "
              "from fedunlearn.runtime.flwr_cli import submit; "
              "print(json.dumps(submit(Path(sys.argv[1]), json.loads(sys.argv[2]), "
              "connection='fed', resubmits=0, timeout=900)))")
    done = sandbox.run("cli", [sys.executable, "-c", submit, str(cli_home),
                               json.dumps(run_config)], env(cli_home), timeout=1000)
    worker.join(timeout=10)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not failures, failures
    run_id, status = json.loads(done.stdout.strip().splitlines()[-1])
    assert status == "finished:completed", (run_id, status)

    rounds = serve_rounds(out)
    assert sorted(rounds) == list(range(1, ROUNDS + 1))
    # Node 0, slow and lossy, still trains every round but the cut one's.
    assert all(r["nodes"] >= 2 for r in rounds.values())
    # Round 2 lost node 2 and ended within the round timeout with the two others.
    assert rounds[2]["missing"] + rounds[2]["refused"] >= 1, rounds[2]
    assert rounds[2]["seconds"] <= ROUND_TIMEOUT + 10, rounds[2]
    assert "down" in cut and "up" in cut
    # Restored, node 2 rejoined: a later round has all three nodes' replies.
    later = [r for n, r in rounds.items() if n > 2]
    assert any(r["nodes"] == NODES and r["missing"] + r["refused"] == 0 for r in later), later
