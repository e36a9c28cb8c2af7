"""Unlearning strategies on built inputs: perturbations, phases, who gets messages,
and a strategy running itself over a grid of built replies."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedunlearn import protocol as P
from strategies import METHODS, Architecture, Recovery, Targets, check_methods
from strategies.ascent import GradientAscent, GradientDescentAscent
from strategies.finetune import FineTune
from strategies.negation import NoT, negate
from strategies.retrain import Retrain
from strategies.rounds import RoundError

RECOVERY = Recovery(train_rounds=20, recovery_rounds=4, lr=0.01, local_epochs=1)
# Client-wise: node 1 asked to be forgotten and holds no retained data.
CLIENT_WISE = Targets(retain_nodes=[2, 3], forget_nodes=[1], request_json='{"kind": "client"}')


def state():
    g = torch.Generator().manual_seed(0)
    return {"conv1.weight": torch.randn(4, 1, 3, 3, generator=g),
            "conv1.bias": torch.randn(4, generator=g),
            "fc.weight": torch.randn(2, 4, generator=g)}


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 4, 3)
        self.fc = torch.nn.Linear(4, 2, bias=False)


def built(cls, **options):
    strategy = cls(CLIENT_WISE, RECOVERY, **options)
    if "model" in cls.needs:
        strategy.provide({"model": Architecture("cnn", Tiny())})
    return strategy


def test_negation_flips_exactly_the_chosen_tensors():
    before = state()
    after = negate(before, ["conv1.weight", "conv1.bias"])
    assert torch.equal(after["conv1.weight"], -before["conv1.weight"])
    assert torch.equal(after["conv1.bias"], -before["conv1.bias"])
    assert after["fc.weight"] is before["fc.weight"]  # untouched, not even copied
    with pytest.raises(KeyError, match="conv9.weight"):
        negate(before, ["conv9.weight"])


def test_not_resolves_its_layers_on_the_provided_model_then_negates():
    strategy = built(NoT, layers=["conv1.weight"])
    trained = state()
    out = strategy.perturb(trained, initial={})
    assert torch.equal(out["conv1.weight"], -trained["conv1.weight"])
    assert torch.equal(out["conv1.bias"], trained["conv1.bias"])
    (phase,) = strategy.phases()
    assert phase.rounds == 4 and phase.order[P.DATA] == "retain"
    assert phase.order[P.MODE] == "descent"
    with pytest.raises(ValueError, match="conv9"):
        built(NoT, layers=["conv9"])
    with pytest.raises(ValueError, match="provide the model first"):
        NoT(CLIENT_WISE, RECOVERY).perturb(trained, {})


@pytest.mark.parametrize("cls", [Retrain, FineTune, NoT, GradientAscent, GradientDescentAscent])
def test_client_wise_target_gets_no_recovery_message(cls, fake_grid):
    strategy = built(cls)
    arrays = ArrayRecord({"w": Array(np.zeros(2, np.float32))})
    recovery = [p for p in strategy.phases() if p.order[P.DATA] == "retain"]
    assert recovery, "every method ends with training on retained data"
    for phase in recovery:
        strategy.phase, strategy.participants = phase, phase.participants
        messages = strategy.configure_train(1, arrays, ConfigRecord(), fake_grid())
        assert sorted(m.metadata.dst_node_id for m in messages) == [2, 3]
        # The phase's order rides with every message, the FedProx way.
        assert all(m.content.config_records["config"][P.DATA] == "retain" for m in messages)


def test_retrain_starts_from_initial_weights_for_as_many_rounds():
    strategy = built(Retrain)
    initial = {k: torch.zeros_like(v) for k, v in state().items()}
    out = strategy.perturb(state(), initial)
    assert all(torch.equal(out[k], initial[k]) for k in initial)
    assert [p.rounds for p in strategy.phases()] == [20]


def test_ascent_phases():
    ga = built(GradientAscent, lr=0.02).phases()
    assert [p.name for p in ga] == ["ascent", "recovery"]
    assert ga[0].participants == [1] and ga[0].order[P.MODE] == "ascent"
    assert ga[0].order[P.DATA] == "forget" and ga[0].order[P.LR] == 0.02
    gda = built(GradientDescentAscent, rounds=2).phases()
    assert gda[0].participants == [1, 2, 3] and gda[0].order[P.MODE] == "gda"
    assert gda[0].rounds == 2 and gda[0].order[P.GRAD_CLIP] == 1.0
    for bad, message in (({"lr": 0}, "unlearn.ga.lr must be > 0"),
                         ({"rounds": -1}, "unlearn.ga.rounds must be >= 0")):
        with pytest.raises(ValueError, match=message):
            built(GradientAscent, **bad)


def test_method_names():
    assert set(METHODS) >= {"Retrain", "FT", "NoT", "GA", "GDA", "TIS", "RandomReset"}
    check_methods(["NoT", "FT"])
    with pytest.raises(ValueError, match="unknown unlearning method"):
        check_methods(["NoT", "SISA"])


# ---- a strategy runs itself over a grid of built replies --------------------------
def echo(value):
    """Every node answers a training message with all weights ``value``."""
    def answer(msg):
        arrays = msg.content.array_records[P.ARRAYS]
        out = ArrayRecord({k: Array(np.full(a.shape, value, np.float32))
                           for k, a in arrays.items()})
        metrics = MetricRecord({P.NUM_EXAMPLES: 10, P.FLOPS: 5})
        return Message(RecordDict({P.ARRAYS: out, P.METRICS: metrics}), reply_to=msg)
    return answer


def test_ga_runs_its_phases_over_the_grid(fake_grid):
    grid = fake_grid([1, 2, 3], echo(0.5))
    strategy = built(GradientAscent, rounds=2)
    seen = []
    result = strategy.run(grid, state(), state(), config=ConfigRecord({P.PAYLOAD: "{}"}),
                          evaluate_fn=lambda rnd, arrays: MetricRecord({"rnd": rnd}),
                          timeout=1.0, on_round=seen.append)
    # 2 ascent rounds to the forget node, then 4 recovery rounds to the retain nodes.
    assert [r.phase for r in result.records] == ["GA:ascent"] * 2 + ["GA:recovery"] * 4
    assert seen == result.records and result.perturbed == {"rnd": 0}
    dst = [m.metadata.dst_node_id for m in grid.sent]
    assert dst == [1, 1] + [2, 3] * 4
    orders = [m.content.config_records["config"] for m in grid.sent]
    assert [o[P.MODE] for o in orders[:2]] == ["ascent"] * 2 and orders[2][P.MODE] == "descent"
    assert all(o[P.PAYLOAD] == "{}" for o in orders)
    assert np.allclose(result.arrays["fc.weight"].numpy(), 0.5)
    assert result.records[-1].client_metrics[P.FLOPS] == 10  # two replies, summed


def test_a_round_without_usable_replies_is_a_typed_error(fake_grid):
    from flwr.serverapp.exception import AggregationError

    strategy = built(FineTune)
    with pytest.raises(RoundError, match="FT:recovery round 1: no usable reply from 2") as err:
        strategy.run(fake_grid([1, 2, 3]), state(), state(), config=ConfigRecord(),
                     evaluate_fn=None, timeout=0.1)
    assert isinstance(err.value, AggregationError)  # Flower's own aggregation error


def test_adaptive_recovery_stops_when_validation_is_back(fake_grid):
    from flwr.app import MessageType

    # The nodes' validation accuracy: 0.9 for the trained model, then per recovery round.
    scores = iter([0.9, 0.9, 0.5, 0.5, 0.85, 0.85, 0.895, 0.895, 0.99, 0.99])
    train = echo(0.5)

    def answer(msg):
        if msg.metadata.message_type == MessageType.EVALUATE:
            metrics = MetricRecord({P.NUM_EXAMPLES: 5, "accuracy": next(scores)})
            return Message(RecordDict({P.METRICS: metrics}), reply_to=msg)
        return train(msg)

    adaptive = Recovery(train_rounds=20, recovery_rounds=4, lr=0.01, local_epochs=1,
                        epsilon=0.01, max_rounds=10)
    strategy = FineTune(CLIENT_WISE, adaptive)
    grid = fake_grid([1, 2, 3], answer)
    result = strategy.run(grid, state(), state(), config=ConfigRecord(), evaluate_fn=None,
                          timeout=1.0)
    # 0.5 and 0.85 are more than 1 point below 0.9; 0.895 is within: 3 rounds, not 4 or 10.
    assert len(result.records) == 3
    assert strategy.results() == pytest.approx({"val_before": 0.9, "val_after": 0.895,
                                                "recovery_rounds_used": 3})
    assert strategy.validation_bytes > 0
    # Retrain never stops early: the gold standard runs its rounds.
    assert [p.adaptive for p in built(Retrain).phases()] == [False]


def test_adaptive_recovery_runs_at_most_max_rounds(fake_grid):
    from flwr.app import MessageType

    evaluated = []

    def answer(msg):
        if msg.metadata.message_type == MessageType.EVALUATE:
            evaluated.append(msg)  # the trained model (2 retain nodes) scores 0.9, then 0.1
            metrics = MetricRecord({P.NUM_EXAMPLES: 5,
                                    "accuracy": 0.9 if len(evaluated) <= 2 else 0.1})
            return Message(RecordDict({P.METRICS: metrics}), reply_to=msg)
        return echo(0.5)(msg)

    grid = fake_grid([1, 2, 3], answer)
    strategy = FineTune(CLIENT_WISE, Recovery(20, 4, 0.01, 1, epsilon=0.0, max_rounds=3))
    result = strategy.run(grid, state(), state(), config=ConfigRecord(), evaluate_fn=None,
                          timeout=1.0)
    assert len(result.records) == 3 and strategy.results()["val_after"] == 0.1
