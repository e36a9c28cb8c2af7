"""Unlearning strategies on built inputs: perturbations, phases, who gets messages."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord

from strategies import METHODS, Settings, Targets, check_methods
from strategies.ascent import GradientAscent, GradientDescentAscent
from strategies.finetune import FineTune
from strategies.negation import NoT, negate
from strategies.retrain import Retrain

SETTINGS = Settings(train_rounds=20, recovery_rounds=4, recovery_lr=0.01, local_epochs=1,
                    extra={"ga": {"rounds": 1, "lr": 0.02, "local_epochs": 1, "grad_clip": 1.0},
                           "gda": {"rounds": 2, "lr": 0.03, "local_epochs": 1,
                                   "grad_clip": 1.0}})
# Client-wise: node 1 asked to be forgotten and holds no retained data.
CLIENT_WISE = Targets(retain_nodes=[2, 3], forget_nodes=[1], request_json='{"kind": "client"}')


class FakeGrid:
    def get_node_ids(self):
        return [1, 2, 3]


def state():
    g = torch.Generator().manual_seed(0)
    return {"conv1.weight": torch.randn(4, 1, 3, 3, generator=g),
            "conv1.bias": torch.randn(4, generator=g),
            "fc.weight": torch.randn(2, 4, generator=g),
            "steps": torch.tensor(7)}


def test_negation_flips_exactly_the_chosen_tensors():
    before = state()
    after = negate(before, ["conv1.weight", "conv1.bias"])
    assert torch.equal(after["conv1.weight"], -before["conv1.weight"])
    assert torch.equal(after["conv1.bias"], -before["conv1.bias"])
    for key in ("fc.weight", "steps"):
        assert after[key] is before[key]  # untouched, not even copied
    assert not torch.equal(after["conv1.weight"], before["conv1.weight"])
    with pytest.raises(KeyError, match="conv9.weight"):
        negate(before, ["conv9.weight"])


def test_not_perturbs_by_negation_and_fine_tunes_retained_data():
    strategy = NoT(CLIENT_WISE, SETTINGS, negated=["conv1.weight"])
    trained = state()
    out = strategy.perturb(trained, initial={})
    assert torch.equal(out["conv1.weight"], -trained["conv1.weight"])
    assert torch.equal(out["conv1.bias"], trained["conv1.bias"])
    (phase,) = strategy.phases()
    assert phase.rounds == 4 and phase.order["data"] == "retain"
    assert phase.order["mode"] == "descent"


@pytest.mark.parametrize("cls", [Retrain, FineTune, NoT, GradientAscent, GradientDescentAscent])
def test_client_wise_target_gets_no_recovery_message(cls):
    kwargs = {"negated": ["conv1.weight"]} if cls is NoT else {}
    strategy = cls(CLIENT_WISE, SETTINGS, **kwargs)
    arrays = ArrayRecord({"w": Array(np.zeros(2, np.float32))})
    recovery = [p for p in strategy.phases() if p.order["data"] == "retain"]
    assert recovery, "every method ends with training on retained data"
    for phase in recovery:
        strategy.participants = phase.participants
        messages = strategy.configure_train(1, arrays, ConfigRecord(), FakeGrid())
        assert sorted(m.metadata.dst_node_id for m in messages) == [2, 3]


def test_retrain_starts_from_initial_weights_for_as_many_rounds():
    strategy = Retrain(CLIENT_WISE, SETTINGS)
    initial = {k: torch.zeros_like(v) for k, v in state().items()}
    out = strategy.perturb(state(), initial)
    assert all(torch.equal(out[k], initial[k]) for k in initial)
    assert [p.rounds for p in strategy.phases()] == [20]


def test_ascent_phases():
    ga = GradientAscent(CLIENT_WISE, SETTINGS).phases()
    assert [p.name for p in ga] == ["ascent", "recovery"]
    assert ga[0].participants == [1] and ga[0].order["mode"] == "ascent"
    assert ga[0].order["data"] == "forget" and ga[0].order["lr"] == 0.02
    gda = GradientDescentAscent(CLIENT_WISE, SETTINGS).phases()
    assert gda[0].participants == [1, 2, 3] and gda[0].order["mode"] == "gda"
    assert gda[0].rounds == 2 and gda[0].order["grad-clip"] == 1.0


def test_method_names():
    assert set(METHODS) == {"Retrain", "FT", "NoT", "GA", "GDA", "TIS", "RandomReset"}
    check_methods(["NoT", "FT"])
    with pytest.raises(ValueError, match="unknown unlearning method"):
        check_methods(["NoT", "SISA"])
