"""The local deployment is secure by default: TLS, and only registered SuperNodes.

Real processes on 127.0.0.1: a LocalCluster with its defaults (TLS, SuperNode
authentication, credentials made under its FLWR_HOME), plus intruders started by the
test in their own process groups and stopped by them:
- a SuperNode whose key was never registered is refused and exits;
- a SuperNode without TLS never joins;
- a plain-text client gets no answer from the SuperLink's port but a TLS refusal.
"""

import socket
import stat
import subprocess
import time

import pytest

from fedunlearn.config import compose
from fedunlearn.pki import parse_addresses, write_credentials
from fedunlearn.runtime.cluster import LocalCluster
from fedunlearn.runtime.processes import free_ports, group_members, service_env, stop_groups

pytestmark = pytest.mark.integration


def intruder(home, log, *argv):
    """Start a SuperNode the cluster does not know, in its own process group."""
    with log.open("w") as out:
        return subprocess.Popen(["flower-supernode", *argv], stdout=out,
                                stderr=subprocess.STDOUT, env=service_env(home),
                                start_new_session=True)


def stop(proc):
    """Stop the intruder's whole process group (its SuperExec outlives the leader)."""
    stop_groups([proc.pid], grace=3.0, leaders=[proc])
    assert group_members(proc.pid) == []


def test_only_registered_nodes_over_tls_join(tmp_path):
    link, node, extra = free_ports(3)
    cfg = compose(["runtime=deployment", "dataset=digits", "num_clients=1",
                   f"runtime.superlink_port={link}", f"runtime.clientappio_base_port={node}"])
    home = tmp_path / "flwr"
    with LocalCluster(cfg.runtime, 1, home) as cluster:
        creds = cluster.credentials
        assert stat.S_IMODE(creds.root.stat().st_mode) == 0o700
        for path in (creds.ca_key, creds.superlink_key, creds.node_key(0)):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert "--enable-supernode-auth" in cluster.services["superlink"].argv
        link_log = cluster.services["superlink"].log_path

        # The registered node joined.
        deadline = time.monotonic() + 60
        while "Activated node_id" not in link_log.read_text():
            assert time.monotonic() < deadline, "the registered SuperNode never joined"
            time.sleep(0.5)
        joined = link_log.read_text().count("Activated node_id")

        # A SuperNode with a key of its own (never registered) is refused and exits.
        other = tmp_path / "other-creds"
        write_credentials(other, names=("localhost",), addresses=parse_addresses("127.0.0.1"),
                          nodes=1)
        stranger = intruder(home, tmp_path / "stranger.log", "--superlink",
                            cluster.control_address, "--root-certificates",
                            str(creds.ca_cert), "--auth-supernode-private-key",
                            str(other / "supernode-0.key"), "--port", str(extra))
        try:
            stranger.wait(timeout=120)
        finally:
            stop(stranger)
        assert stranger.returncode != 0
        assert "Failed to initialize the connection" in (tmp_path / "stranger.log").read_text()

        # A SuperNode without TLS never gets in.
        plain = intruder(home, tmp_path / "plain.log", "--insecure", "--superlink",
                         cluster.control_address, "--port", str(extra))
        try:
            time.sleep(15)
        finally:
            stop(plain)
        assert link_log.read_text().count("Activated node_id") == joined

        # A plain-text client talking HTTP to the SuperLink's port gets no HTTP answer,
        # let alone a model: the port speaks TLS only.
        with socket.create_connection(("127.0.0.1", link), timeout=10) as conn:
            conn.sendall(b"POST /flwr.proto.FleetService/PullMessages HTTP/1.1\r\n"
                         b"Host: 127.0.0.1\r\nContent-Length: 0\r\n\r\n")
            try:
                answer = conn.recv(4096)
            except (ConnectionResetError, TimeoutError):
                answer = b""
        assert not answer.startswith(b"HTTP/")
