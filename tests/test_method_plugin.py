"""A method defined only in this test is registered by being defined, and runs end to end.

This is the promise to a newcomer: a new unlearning method is one class (plus its
YAML when it has settings, and its test); the config, the server, the receipts and
the report pick it up without learning its name.
"""

import json
import sqlite3
from typing import Any

import pytest
import torch

from fedunlearn.config import ConfigError, compose
from strategies import METHODS, Targets, UnlearningStrategy
from strategies.unlearning import StateDict

pytestmark = pytest.mark.integration

CALLS: list[str] = []


class Shrink(UnlearningStrategy):
    """Throw-away method: scale every float weight by ``factor``, then recover."""

    name = "ShrinkForTest"

    def __init__(self, targets: Targets, *args: Any, factor: float = 0.5, **base: Any) -> None:
        super().__init__(targets, *args, **base)
        if not 0 < factor < 1:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        self.factor = factor

    def perturb(self, trained: StateDict, initial: StateDict) -> StateDict:
        CALLS.append("perturb")
        return {k: v * self.factor if v.is_floating_point() else v for k, v in trained.items()}


def test_a_new_method_is_registered_by_its_definition_and_runs_in_a_simulation(tmp_path):
    from fedunlearn.runtime.simulation import simulate

    assert METHODS["ShrinkForTest"] is Shrink
    with pytest.raises(ConfigError, match="unknown unlearning method"):
        compose(["unlearn.methods=[ShrinkForTes]"])  # a misspelt name is still refused
    cfg = compose(["dataset=digits", "num_clients=2", "train.rounds=1", "runtime.num_cpus=2",
                   "unlearn.methods=[ShrinkForTest]", "unlearn.recovery_rounds=1",
                   f"cache_dir={tmp_path / 'cache'}"])
    out = tmp_path / "out"
    simulate(cfg, out, "run")
    assert CALLS == ["perturb"]
    db = sqlite3.connect(out / "ledger.sqlite")
    ((state,),) = db.execute("select state from requests").fetchall()
    ((method, body),) = db.execute("select method, body from receipts").fetchall()
    db.close()
    receipt = json.loads(body)
    assert (state, method) == ("done", "ShrinkForTest")
    assert receipt["settings"]["factor"] == 0.5  # its typed option, in its receipt
    assert receipt["cost"]["rounds"] == 1 and receipt["model_after"] != receipt["model_before"]
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {r["method"] for r in rows} >= {"Original", "ShrinkForTest"}
    saved = torch.load(out / "unlearned" / receipt["request"]["request_id"] /
                       "ShrinkForTest.pt", weights_only=True)
    assert set(saved) == set(torch.load(out / "global.pt", weights_only=True)["final"])
