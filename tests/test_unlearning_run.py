"""`fedunlearn run` end to end in simulation: request, every method, ledger, report."""

import json
import sqlite3
import subprocess

import pytest

pytestmark = pytest.mark.integration

METHODS = ["Retrain", "FT", "NoT", "GA", "GDA"]


def run(cmd, tmp_path, *extra):
    args = ["dataset=digits", "num_clients=3", "train.rounds=2", "runtime.num_cpus=2",
            "unlearn.recovery_rounds=1", "unlearn.retrain_rounds=2", "unlearn.gda.rounds=1",
            f"unlearn.methods=[{','.join(METHODS)}]", f"cache_dir={tmp_path / 'cache'}",
            f"unlearn.ledger={tmp_path / 'ledger.sqlite'}", *extra]
    return subprocess.run([*cmd, "run", *args, f"hydra.run.dir={tmp_path / 'out'}"],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)


def test_client_wise_request_answered_by_every_method(fedunlearn_cmd, tmp_path):
    done = run(fedunlearn_cmd, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    methods = {row["method"] for row in results["rows"]}
    assert set(METHODS) <= methods
    for row in results["rows"]:
        for key in ("retain", "forget", "test", "mia"):
            assert 0.0 <= row[key] <= 100.0
    by_method = {row["method"]: row for row in results["rows"]}
    assert by_method["Retrain"]["gap"] == 0.0
    # NoT recovers for 1 round, Retrain trains 2: NoT costs half of Retrain's bytes.
    assert by_method["NoT"]["bytes"] == pytest.approx(by_method["Retrain"]["bytes"] / 2)
    assert by_method["NoT"]["flops"] < by_method["Retrain"]["flops"]
    # The client-wise target (client 0 of 3) gets no message in any recovery round.
    recovery = [c for c in results["curves"] if c.get("phase", "").endswith(":recovery")]
    assert recovery and all(c["nodes"] == 2 for c in recovery)
    report = (out / "report.md").read_text()
    assert "| Method" in report and report.index("Retrain") < report.index("| NoT")
    assert list(out.glob("curves_*.png"))

    db = sqlite3.connect(tmp_path / "ledger.sqlite")
    (state,) = db.execute("select state from requests").fetchone()
    receipts = db.execute("select method, body from receipts").fetchall()
    assert state == "done" and {m for m, _ in receipts} == set(METHODS)
    receipt = json.loads(dict(receipts)["NoT"])
    assert receipt["model_before"] != receipt["model_after"]
    # Every receipt is signed by the server and chained: it verifies with the public key
    # written beside the ledger, the key itself stays private in the state folder.
    from fedunlearn.ledger import Ledger
    from fedunlearn.receipts import load_public_key, verify_chain

    public = load_public_key(tmp_path / "ledger.pub.pem")
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        assert verify_chain(ledger.chain(), public) == len(METHODS)
    assert (tmp_path / "state" / "server-key.pem").stat().st_mode & 0o077 == 0
    assert receipt["cost"]["bytes"] > 0 and receipt["metrics_after"]["test"] > 0
    db.close()

    # A restarted server with the same ledger neither loses nor repeats the request.
    again = run(fedunlearn_cmd, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "no request to answer" in again.stderr
    db = sqlite3.connect(tmp_path / "ledger.sqlite")
    assert db.execute("select count(*) from requests").fetchone() == (1,)
    assert db.execute("select count(*) from receipts").fetchone() == (len(METHODS),)
    db.close()


def test_an_impossible_scenario_request_is_refused_before_training(fedunlearn_cmd, tmp_path):
    # Class 42 does not exist: the scenario is the user's config, refused in one line
    # before any round (a node's impossible request is refused into the ledger instead:
    # server/test_intake.py and tests/test_rogue.py).
    done = run(fedunlearn_cmd, tmp_path, "scenario=class", "scenario.request.cls=42")
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("fedunlearn: error:")]
    assert len(errors) == 1 and "scenario.request" in errors[0] and "42" in errors[0]
    assert not (tmp_path / "ledger.sqlite").exists()
