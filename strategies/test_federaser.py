"""FedEraser on built replies: training keeps the updates every interval rounds, the
calibrated aggregate against a hand computation, the target's updates left out, its
settings, and its refusal where no history is kept."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedunlearn import protocol as P
from fedunlearn.config import compose
from fedunlearn.models import build_model
from fedunlearn.settings import Job
from server.history import Recorder, UpdateHistory
from server.methods import Provider, check_methods_fit
from strategies import Recovery, Targets, registry
from strategies.fedavg import FederatedAveraging
from strategies.federaser import FedEraser

RECOVERY = Recovery(train_rounds=6, recovery_rounds=4, lr=0.01, local_epochs=4, train_lr=0.05)
# Nodes 11, 12, 13 hold partitions 0, 1, 2; partition 0 asked to be forgotten whole.
RANKS = {11: 0, 12: 1, 13: 2}
CLIENT_WISE = Targets(retain_nodes=[12, 13], forget_nodes=[11], request_json='{"kind": "client"}')
# What each node's training adds to the weights it receives (per tensor, not parallel).
STEPS = {11: {"w": [[9.0, -9.0, 9.0], [0.0, 9.0, 1.0]], "b": [50.0, 0.0]},
         12: {"w": [[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]], "b": [0.5, -0.25]},
         13: {"w": [[0.0, 0.0, -2.0], [4.0, 1.0, 0.0]], "b": [0.0, 2.0]}}
COUNTS = {11: 30, 12: 10, 13: 20}


def arrays(**named):
    return ArrayRecord({k: Array(np.asarray(v, np.float32)) for k, v in named.items()})


def start():
    return {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3) / 10,
            "b": torch.tensor([1.0, -1.0])}


def trained_by(steps, counts, refuse=()):
    """Nodes answer with the received weights plus their step; ``refuse``: (node, round)
    pairs answering NaN."""
    def answer(msg):
        node = msg.metadata.dst_node_id
        rnd = msg.content.config_records["config"]["server-round"]
        got = msg.content.array_records[P.ARRAYS]
        out = {k: got[k].numpy() + np.asarray(steps[node][k], np.float32) for k in got}
        if (node, rnd) in refuse:
            out = {k: np.full_like(v, np.nan) for k, v in out.items()}
        metrics = MetricRecord({P.NUM_EXAMPLES: counts[node], P.FLOPS: 1})
        return Message(RecordDict({P.ARRAYS: arrays(**out), P.METRICS: metrics}), reply_to=msg)
    return answer


def trained_history(tmp_path, fake_grid, interval=2, rounds=6, refuse=()):
    """A history kept the way train_global keeps it: FedAvg rounds and the recorder."""
    history = UpdateHistory.create(tmp_path / "history", interval)
    strategy = FederatedAveraging(participants=list(RANKS), ranks=RANKS,
                                  observer=Recorder(history, RANKS))
    grid = fake_grid(list(RANKS), trained_by(STEPS, COUNTS, refuse))
    strategy.run_rounds(grid, ArrayRecord(start()), rounds=rounds, config=ConfigRecord(),
                        evaluate_fn=None, timeout=1.0, phase="train")
    return history, grid


def provided(history, targets=CLIENT_WISE, **options):
    strategy = FedEraser(targets, RECOVERY, ranks=RANKS, **options)
    strategy.provide({"history": history})
    return strategy


def test_training_keeps_rounds_1_plus_delta_with_each_partitions_update(tmp_path, fake_grid):
    history, grid = trained_history(tmp_path, fake_grid, interval=2, rounds=6,
                                    refuse={(13, 3)})
    assert history.rounds == [1, 3, 5]
    assert history.counts(1) == {0: 30, 1: 10, 2: 20}
    assert history.counts(3) == {0: 30, 1: 10}  # node 13's refused reply is not kept
    sent = [m for m in grid.sent if m.content.config_records["config"]["server-round"] == 3]
    stored = history.load(3)
    for name, value in sent[0].content.array_records[P.ARRAYS].items():
        np.testing.assert_array_equal(stored.global_state[name].numpy(), value.numpy())
    for node, pid in RANKS.items():  # update = returned weights - global sent
        if pid in stored.updates:
            for name in ("w", "b"):
                np.testing.assert_allclose(stored.updates[pid][name].numpy(),
                                           np.asarray(STEPS[node][name]), rtol=1e-6)
    assert [t for t in range(1, 8) if (tmp_path / "history" / f"round-{t:04d}.pt").exists()] \
        == [1, 3, 5]


def hand_calibration(history, steps, start_state, partitions):
    """The paper's step by hand, in numpy: per kept round and tensor,
    G += sum n_k ||U_k|| Û_k / ||Û_k|| / sum n_k over ``partitions``."""
    g = {k: v.numpy().astype(np.float64) for k, v in start_state.items()}
    node = {pid: n for n, pid in RANKS.items()}
    for stored in history:
        used = [p for p in partitions if p in stored.updates]
        total = sum(stored.counts[p] for p in used)
        for name in g:
            step = np.zeros_like(g[name])
            for p in used:
                u_hat = np.asarray(steps[node[p]][name], np.float64)
                u = stored.updates[p][name].numpy().astype(np.float64)
                step += stored.counts[p] * np.linalg.norm(u) * u_hat / np.linalg.norm(u_hat)
            g[name] = g[name] + step / total
    return g


def test_calibrated_aggregate_matches_a_hand_computation(tmp_path, fake_grid):
    # Node 13's reply in training round 3 was refused: no update of it is kept there.
    history, _ = trained_history(tmp_path, fake_grid, refuse={(13, 3)})
    strategy = provided(history)
    # Calibration moves differ from training's: the direction comes from these.
    calibration = {11: STEPS[11], 12: {"w": [[0.0, 1.0, 1.0], [2.0, 0.0, 0.0]],
                                       "b": [-1.0, 0.0]},
                   13: {"w": [[3.0, 0.0, 0.0], [0.0, 0.0, -1.0]], "b": [0.0, 0.5]}}
    grid = fake_grid(list(RANKS), trained_by(calibration, {11: 1, 12: 2, 13: 3}))
    initial = start()
    result = strategy.run(grid, {k: v + 100 for k, v in initial.items()}, initial,
                          config=ConfigRecord(), evaluate_fn=None, timeout=1.0)
    # As many rounds as kept rounds, each to the retained nodes with a kept update only.
    assert len(result.records) == len(history.rounds) == 3
    assert {r.phase for r in result.records} == {"FedEraser:calibration"}
    assert [m.metadata.dst_node_id for m in grid.sent] == [12, 13, 12, 12, 13]
    orders = [m.content.config_records["config"] for m in grid.sent]
    assert {(o[P.DATA], o[P.EPOCHS], o[P.LR]) for o in orders} == {("retain", 2, 0.05)}
    expected = hand_calibration(history, calibration, initial, partitions=[1, 2])
    for name, value in expected.items():
        np.testing.assert_allclose(result.arrays[name].numpy(), value, rtol=1e-6)
    # Had the target's kept updates (partition 0, long ones) been used, it would differ.
    with_target = hand_calibration(history, calibration, initial, partitions=[0, 1, 2])
    assert not np.allclose(with_target["b"], expected["b"], rtol=1e-3)
    assert strategy.results() == {"history_bytes": history.bytes(), "history_rounds": 3,
                                  "calibration_rounds": 3, "calibration_epochs": 2}


def test_a_kept_round_without_a_retained_client_is_skipped(tmp_path):
    history = UpdateHistory.create(tmp_path, 2)
    zero = {k: torch.zeros_like(v) for k, v in start().items()}
    history.record(1, start(), {0: zero, 1: zero}, {0: 1, 1: 1})
    history.record(3, start(), {0: zero}, {0: 1})  # only the forgotten client trained
    history.record(5, start(), {2: zero}, {2: 1})
    (calibration,) = provided(history).phases()
    assert calibration.rounds == 2 and calibration.participants == [12, 13]
    strategy = provided(history, recovery_rounds=3, lr=0.2)
    calibration, recovery = strategy.phases()
    assert strategy.schedule == [1, 5] and calibration.order[P.LR] == 0.2
    assert (recovery.name, recovery.rounds, recovery.order[P.LR]) == ("recovery", 3, 0.01)


def test_an_uncalibrated_tensor_keeps_its_place():
    from strategies.federaser import calibrate

    current = {"w": torch.ones(2), "n": torch.tensor(4)}
    calibrated = {1: {"w": torch.ones(2), "n": torch.tensor(6)},
                  2: {"w": torch.tensor([1.0, 4.0]), "n": torch.tensor(5)}}
    stored = {1: {"w": torch.tensor([3.0, 4.0]), "n": torch.tensor(3)},
              2: {"w": torch.tensor([0.0, 2.0]), "n": torch.tensor(1)}}
    out = calibrate(current, calibrated, stored, {1: 1, 2: 3})
    # Client 1 did not move w: no direction, no step; client 2: length 2 along +y.
    torch.testing.assert_close(out["w"], torch.tensor([1.0, 1.0 + 3 * 2 / 4]))
    assert out["n"].dtype == torch.int64 and int(out["n"]) == 4 + round((1 * 3 + 3 * 1) / 4)


@pytest.mark.parametrize(("bad", "message"), [
    ({"interval": 0}, "unlearn.federaser.interval must be >= 1, got 0"),
    ({"calibration_ratio": 0.0}, "unlearn.federaser.calibration_ratio must be > 0"),
    ({"lr": -0.1}, "unlearn.federaser.lr must be > 0 or null"),
    ({"recovery_rounds": -1}, "unlearn.federaser.recovery_rounds must be >= 0"),
])
def test_bad_settings_name_their_key(bad, message):
    with pytest.raises(ValueError, match=message) as err:
        FedEraser(CLIENT_WISE, RECOVERY, **bad)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("section", "message"), [
    ({"interval": 1.5}, "unlearn.federaser.interval must be an integer, got 1.5"),
    ({"lr": "fast"}, "unlearn.federaser.lr must be a number, got 'fast'"),
    ({"steps": 3}, r"unlearn.federaser has unknown setting\(s\) \['steps'\]"),
])
def test_mistyped_settings_are_refused_by_the_registry(section, message):
    with pytest.raises(ValueError, match=message):
        registry.plan(["FedEraser"], {"federaser": section})
    ((_, _, options),) = registry.plan(["FedEraser"], {"federaser": {"lr": None}})
    assert options == {"interval": 2, "calibration_ratio": 0.5, "lr": None,
                       "recovery_rounds": 0}


def test_a_history_kept_at_another_interval_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unlearn.federaser.interval is 3, but the update "
                                         r"history keeps every 2 round\(s\)"):
        provided(UpdateHistory.create(tmp_path, 2), interval=3)


def test_serve_refuses_fedEraser_before_it_starts():
    settings = Job.from_config(compose(["serve.method=FedEraser"]))
    with pytest.raises(ValueError, match="^serve.method: FedEraser needs the clients' "
                                         "updates kept during training") as err:
        check_methods_fit(settings, build_model("cnn", 10, (1, 28, 28)))
    assert "\n" not in str(err.value)
    # And where no history was kept, the provider says so rather than run without it.
    outcome = SimpleNamespace(settings=settings, history=None)
    with pytest.raises(ValueError, match="no update history was kept"):
        Provider(None, outcome, CLIENT_WISE)(("history",))
