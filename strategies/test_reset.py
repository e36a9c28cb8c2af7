"""TIS and Random Reset strategies on built inputs: reset, counts, TRIM's guarantee."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from strategies import Recovery, Targets
from strategies.reset import RandomReset, TargetedReset
from tests.fakes import FakeGrid

TARGETS = Targets(retain_nodes=[2, 3], forget_nodes=[1], request_json="{}")
RECOVERY = Recovery(train_rounds=5, recovery_rounds=2, lr=0.01, local_epochs=1)


def made(cls, **options):
    """A reset strategy given its curvature statistics, as the server provides them."""
    strategy = cls(TARGETS, RECOVERY, **options)
    strategy.provide({"curvature": curvature()})
    return strategy


def curvature():
    g = torch.Generator().manual_seed(1)
    h = {"w": torch.ones(6, 5), "b": torch.ones(5)}  # TIS = h'^2
    h_prime = {"w": torch.rand(6, 5, generator=g), "b": torch.rand(5, generator=g)}
    h_prime["w"][0, :] = 5.0  # row 0 carries most information about the forget set
    return h, h_prime


def states():
    trained = {"w": torch.full((6, 5), 2.0), "b": torch.full((5,), 3.0)}
    initial = {"w": torch.full((6, 5), -1.0), "b": torch.full((5,), -2.0)}
    return trained, initial


def test_tis_resets_its_mask_to_initial_values_only():
    strategy = made(TargetedReset, gamma=0.5)
    trained, initial = states()
    out = strategy.perturb(trained, initial)
    for name, mask in strategy.mask.items():
        assert torch.equal(out[name][mask], initial[name][mask])
        assert torch.equal(out[name][~mask], trained[name][~mask])
    # Row 0 holds most of w's TIS: half of it is reached inside that row.
    assert strategy.mask["w"][0].any() and not strategy.mask["w"][1:].any()
    assert strategy.phases() == []  # reset only, no TRIM rounds


def test_random_reset_has_the_same_counts_elsewhere():
    tis = made(TargetedReset, gamma=0.5, seed=3)
    rnd = made(RandomReset, gamma=0.5, seed=3)
    tis.perturb(*states())
    rnd.perturb(*states())
    for name in tis.mask:
        assert int(tis.mask[name].sum()) == int(rnd.mask[name].sum())
    assert any(not torch.equal(tis.mask[n], rnd.mask[n]) for n in tis.mask)


def reply(msg, w, b):
    arrays = ArrayRecord({"w": Array(np.asarray(w, np.float32)),
                          "b": Array(np.asarray(b, np.float32))})
    return Message(RecordDict({"arrays": arrays,
                               "metrics": MetricRecord({"num-examples": 3})}), reply_to=msg)


def test_trim_keeps_every_unmasked_entry_bit_identical():
    strategy = made(TargetedReset, gamma=0.5, trim_rounds=2)
    trained, initial = states()
    start = strategy.perturb(trained, initial)
    (phase,) = strategy.phases()
    assert phase.name == "trim" and phase.rounds == 2 and phase.participants == [2, 3]
    strategy.phase, strategy.participants = phase, phase.participants
    arrays = ArrayRecord({k: Array(v.numpy()) for k, v in start.items()})
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), FakeGrid()))
    sent_mask = messages[0].content.array_records["mask"]
    assert np.array_equal(sent_mask["w"].numpy().astype(bool), strategy.mask["w"].numpy())
    # One client ignores the mask and moves every entry; the aggregate must not follow.
    new, _ = strategy.aggregate_train(1, [
        reply(messages[0], start["w"] + 1.0, start["b"] + 1.0),
        reply(messages[1], start["w"] + 0.1234567, start["b"]),
    ])
    for name, mask in strategy.mask.items():
        got = torch.from_numpy(new[name].numpy())
        assert torch.equal(got[~mask], start[name][~mask])  # bit-identical
        if mask.any():
            assert not torch.equal(got[mask], start[name][mask])  # the reset entries train


def test_gammas_make_one_run_each():
    runs = TargetedReset.variants({"gammas": [0.5, 0.7], "trim_rounds": 1})
    assert runs == [("TIS@0.5", {"gamma": 0.5, "trim_rounds": 1}),
                    ("TIS@0.7", {"gamma": 0.7, "trim_rounds": 1})]
    assert RandomReset.variants({"gammas": [0.7]}) == [("RandomReset", {"gamma": 0.7})]


def test_a_reset_without_statistics_is_refused():
    with pytest.raises(ValueError, match="no curvature statistics"):
        TargetedReset(TARGETS, RECOVERY).perturb(*states())
