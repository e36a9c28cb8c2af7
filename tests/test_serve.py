"""`fedunlearn serve` in simulation: two requests scheduled for the same round are answered
in one pass, its model served, their data never trained on again (not even after a
restart), each receipt signed, chained, delivered to its requesting node and checked
there, and a restarted server resumes without answering anything twice."""

import json
import subprocess

import pytest

from fedunlearn.ledger import Ledger
from fedunlearn.receipts import load_public_key, verify_chain

pytestmark = pytest.mark.integration

SCHEDULE = ("serve.schedule=[{round:2,request:{kind:class,client:1,cls:3}},"
            "{round:2,request:{kind:instance,client:0,fraction:0.5,clients:[0]}}]")


def test_serve_answers_mid_training_in_one_pass_then_resumes_after_a_restart(
        fedunlearn_cmd, tmp_path):
    out = tmp_path / "out"
    first = subprocess.run(
        [*fedunlearn_cmd, "serve", "dataset=digits", "num_clients=3", "runtime.num_cpus=2",
         "unlearn.recovery_rounds=1", SCHEDULE, f"cache_dir={tmp_path / 'cache'}",
         f"hydra.run.dir={out}", "serve.rounds=2"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "[serve] round 2: request" in first.stderr
    summary = json.loads((out / "serve.json").read_text())
    answers = summary["answered"]
    assert [(a["kind"], a["taken_in_round"], a["answered_in_round"]) for a in answers] == [
        ("class", 2, 2), ("instance", 2, 2)]
    ids = [a["request"] for a in answers]
    assert summary["test_accuracy"] > 0.3 and summary["active_at_end"] == [0, 1, 2]
    # 3 nodes, fewer than serve.poll_per_round: every node is asked every round.
    assert [(p["round"], p["nodes_polled"]) for p in summary["request_polls"]] == [(1, 3),
                                                                                 (2, 3)]
    with Ledger(out / "ledger.sqlite") as ledger:
        assert [e.state for e in ledger.all()] == ["done", "done"]
        chain = ledger.chain()
        confirmed = {i: ledger.confirmations(i) for i in ids}
    # One pass over both: one method run, two receipts that name each other and the model
    # the federation served from then on.
    assert [r["method"] for r in chain] == ["NoT", "NoT"]
    assert [r["shared_pass"] for r in chain] == [ids, ids]
    assert chain[0]["cost"] == chain[1]["cost"]
    assert {r["model_after"] for r in chain} == {answers[0]["served_model"]}
    # Every node holding class 3 confirmed deleting it; each requester checked its receipt
    # against the model it received and on its own forget samples.
    assert set(confirmed[ids[0]]) == {0, 1, 2} and set(confirmed[ids[1]]) == {0}
    for request_id, requester in zip(ids, (1, 0), strict=True):
        check = confirmed[request_id][requester]
        assert check["model-matches"] == 1 and check["num-forget"] > 0
        assert 0 <= check["forget-accuracy"] <= 100

    # A new server process, with new nodes, continues after round 2 to round 3.
    # (in-process: the resume is under test here; the first run took the default launch)
    second = subprocess.run([*fedunlearn_cmd, "serve", "--resume", str(out), "serve.rounds=3",
                             "runtime.launch=in-process"],
                            capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming after round 2" in second.stderr
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    serve_rounds = [r for r in rounds if r["phase"] == "serve"]
    assert [r["round"] for r in serve_rounds] == [1, 2, 3]
    # Answered at the start of round 2, the forget data is deleted on every node before
    # round 2 trains; the restarted nodes are told again, so it stays out of round 3 too.
    examples = [r["client_metrics"]["num-examples"] for r in serve_rounds]
    assert examples[0] > examples[1] == examples[2]
    with Ledger(out / "ledger.sqlite") as ledger:
        assert len(ledger.all()) == 2  # answered once, across the restart
        assert verify_chain(ledger.chain(), load_public_key(out / "ledger.pub.pem")) == 2
    assert len(json.loads((out / "serve.json").read_text())["answered"]) == 2

    # Starting afresh over a live federation's folder would lose it: refused, one line.
    again = subprocess.run(
        [*fedunlearn_cmd, "serve", "dataset=digits", "num_clients=3", f"hydra.run.dir={out}",
         "runtime.launch=in-process"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert again.returncode != 0 and "already holds a live federation" in again.stderr
    errors = [line for line in again.stderr.splitlines() if line.startswith("fedunlearn: error")]
    assert len(errors) == 1 and "already holds a live federation" in errors[0]
