"""`fedunlearn serve` in simulation: a request scheduled mid-training is answered, its
model served, its data never trained on again (not even after a restart), its receipt
signed and chained, and a restarted server resumes without answering it twice."""

import json
import subprocess

import pytest

from fedunlearn.ledger import Ledger
from fedunlearn.receipts import load_public_key, verify_chain

pytestmark = pytest.mark.integration


def test_serve_answers_mid_training_then_resumes_after_a_restart(fedunlearn_cmd, tmp_path):
    out = tmp_path / "out"
    common = [*fedunlearn_cmd, "serve", "dataset=digits", "num_clients=3", "runtime.num_cpus=2",
              "unlearn.recovery_rounds=1",
              "serve.schedule=[{round:2,request:{kind:class,client:1,cls:3}}]",
              f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={out}"]
    first = subprocess.run([*common, "serve.rounds=2"], capture_output=True, text=True,
                           timeout=900, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "[serve] round 2: request" in first.stderr
    summary = json.loads((out / "serve.json").read_text())
    (answer,) = summary["answered"]
    assert (answer["kind"], answer["taken_in_round"], answer["answered_in_round"]) == (
        "class", 2, 2)
    assert summary["test_accuracy"] > 0.3 and summary["active_at_end"] == [0, 1, 2]
    with Ledger(out / "ledger.sqlite") as ledger:
        (entry,) = ledger.all()
        chain = ledger.chain()
    assert entry.state == "done" and [r["method"] for r in chain] == ["NoT"]
    # The receipt names the model the federation served from then on.
    assert chain[0]["model_after"] == answer["served_model"]

    # A new server process, with new nodes, continues after round 2 to round 3.
    second = subprocess.run([*common, "serve.rounds=3", "serve.resume=true"],
                            capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming after round 2" in second.stderr
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    serve_rounds = [r for r in rounds if r["phase"] == "serve"]
    assert [r["round"] for r in serve_rounds] == [1, 2, 3]
    # Answered at the start of round 2, class 3 is deleted on every node before round 2
    # trains; the restarted nodes are told again, so it stays out of round 3 too.
    examples = [r["client_metrics"]["num-examples"] for r in serve_rounds]
    assert examples[0] > examples[1] == examples[2]
    with Ledger(out / "ledger.sqlite") as ledger:
        assert len(ledger.all()) == 1  # answered once, across the restart
        assert verify_chain(ledger.chain(), load_public_key(out / "ledger.pub.pem")) == 1
    assert len(json.loads((out / "serve.json").read_text())["answered"]) == 1
