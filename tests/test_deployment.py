"""Real SuperLink and SuperNode processes on 127.0.0.1, talking gRPC.

Each test starts its own services on free ports and checks afterwards that every
process group it started is gone.
"""

import json
import os
import subprocess

import pytest

from fedunlearn.config import compose
from fedunlearn.ledger import Ledger
from fedunlearn.outbox import Outbox
from fedunlearn.runtime.deployment import DeploymentError, deploy, free_ports, outbox_path

pytestmark = pytest.mark.integration


def overrides(tmp_path, *extra):
    link, node = free_ports(2)
    return [
        "runtime=deployment", "dataset=digits", "num_clients=2", "train.rounds=2",
        f"runtime.superlink_port={link}", f"runtime.clientappio_base_port={node}",
        f"cache_dir={tmp_path / 'cache'}", *extra,
    ]


def assert_all_stopped(groups):
    assert len(groups) == 3  # SuperLink + 2 SuperNodes
    for pgid in groups.values():
        with pytest.raises(ProcessLookupError):
            os.killpg(pgid, 0)  # signal 0: does any process of the group live?


def test_two_rounds_over_grpc_then_a_clients_request(tmp_path, fedunlearn_cmd):
    home = tmp_path / "flwr"
    # On client 1's machine, its user asks to forget half of its samples.
    recorded = subprocess.run(
        [*fedunlearn_cmd, "forget", "--outbox", str(outbox_path(home, 1)), "--client", "1",
         "--kind", "instance", "--fraction", "0.5"], capture_output=True, text=True)
    assert recorded.returncode == 0, recorded.stderr
    request_id = recorded.stdout.split()[-1]
    args = overrides(tmp_path, f"runtime.flwr_home={home}", "scenario=none",
                     "unlearn.methods=[FT]", "unlearn.recovery_rounds=1")
    result = deploy(compose(args), args, tmp_path / "out")
    assert result["status"] == "finished:completed"
    summary = json.loads((tmp_path / "out" / "train.json").read_text())
    assert summary["test_accuracy"] > 0.3  # 10 classes: chance is 0.1
    assert len(summary["history"]) == 2 and len(summary["nodes"]) == 2
    assert "round 2/2" in (tmp_path / "out" / "serverapp.log").read_text()
    assert_all_stopped(result["process_groups"])
    # The request travelled with the node's reply, was answered and acknowledged.
    with Ledger(tmp_path / "out" / "ledger.sqlite") as ledger:
        entry = ledger.get(request_id)
        assert entry.state == "done" and set(ledger.receipts(request_id)) == {"FT"}
    assert Outbox(outbox_path(home, 1)).unsent() == []


def test_failed_run_is_an_error(tmp_path):
    # The ServerApp composes the config itself: a model that cannot take 8x8 inputs
    # passes the launcher's checks here but fails inside the run.
    args = overrides(tmp_path, "model=vit_b16")
    with pytest.raises(DeploymentError, match="finished:failed"):
        deploy(compose(args), args, tmp_path / "out")
    result = json.loads((tmp_path / "out" / "deployment.json").read_text())
    assert result["status"] == "finished:failed"
    assert_all_stopped(result["process_groups"])
