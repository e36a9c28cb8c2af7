"""`fedunlearn serve` in simulation: a request scheduled mid-training is answered, its
model served, its data never trained on again, its receipt signed and chained."""

import json
import subprocess

import pytest

from fedunlearn.ledger import Ledger
from fedunlearn.receipts import load_public_key, verify_chain

pytestmark = pytest.mark.integration


def test_a_class_request_mid_training_is_answered_and_its_data_left_out(fedunlearn_cmd,
                                                                         tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [*fedunlearn_cmd, "serve", "dataset=digits", "num_clients=3", "runtime.num_cpus=2",
         "serve.rounds=4", "unlearn.recovery_rounds=1",
         "serve.schedule=[{round:2,request:{kind:class,client:1,cls:3}}]",
         f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={out}"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "serve.json").read_text())
    (answer,) = summary["answered"]
    assert (answer["kind"], answer["taken_in_round"], answer["answered_in_round"]) == (
        "class", 2, 2)
    assert summary["test_accuracy"] > 0.3 and summary["active_at_end"] == [0, 1, 2]
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    serve_rounds = [r for r in rounds if r["phase"] == "serve"]
    assert [r["round"] for r in serve_rounds] == [1, 2, 3, 4]
    # Answered at the start of round 2, class 3 is deleted on every node before round 2
    # trains: fewer samples from then on, and never again the forgotten ones.
    examples = [r["client_metrics"]["num-examples"] for r in serve_rounds]
    assert examples[0] > examples[1] == examples[2] == examples[3]
    with Ledger(out / "ledger.sqlite") as ledger:
        (entry,) = ledger.all()
        chain = ledger.chain()
    assert entry.state == "done" and [r["method"] for r in chain] == ["NoT"]
    assert verify_chain(chain, load_public_key(out / "ledger.pub.pem")) == 1
    # The receipt names the model the federation served from then on.
    assert chain[0]["model_after"] == answer["served_model"]
    assert "[serve] round 2: request" in done.stderr
