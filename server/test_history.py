"""The update history on disk: kept rounds, atomic files, lazy loading, storage, and
when training reuses a cached model with it."""

import logging

import pytest
import torch

from fedunlearn.config import compose as compose_config
from fedunlearn.digest import digest
from fedunlearn.settings import Job
from server.checkpoint import Checkpoint, cache_path
from server.history import HistoryUnavailable, UpdateHistory, history_path
from server.training import history_interval, reusable


def compose(overrides=()):
    return Job.from_config(compose_config(list(overrides)))


def model(value):
    return {"w": torch.full((3, 2), float(value)), "b": torch.full((2,), float(value))}


def filled(folder, interval=2, rounds=(1, 3)):
    history = UpdateHistory.create(folder, interval)
    for t in rounds:
        history.record(t, model(t), {0: model(-t), 2: model(10 * t)}, {0: 5, 2: 7 + t})
    return history


def test_rounds_kept_every_interval():
    assert [t for t in range(1, 9) if UpdateHistory(".", 3).keeps(t)] == [1, 4, 7]
    assert [t for t in range(0, 4) if UpdateHistory(".", 1).keeps(t)] == [1, 2, 3]
    with pytest.raises(ValueError, match="interval must be >= 1"):
        UpdateHistory(".", 0)


def test_each_round_is_one_file_read_back_alone(tmp_path, monkeypatch):
    history = filled(tmp_path / "h")
    assert history.rounds == [1, 3] and history.counts(3) == {0: 5, 2: 10}
    assert sorted(p.name for p in (tmp_path / "h").iterdir()) == ["round-0001.pt",
                                                                  "round-0003.pt"]
    loads = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    stored = history.load(3)
    assert loads == [history.path(3)]  # only that round is read
    assert stored.round == 3 and stored.counts == {0: 5, 2: 10}
    assert torch.equal(stored.global_state["w"], model(3)["w"])
    assert torch.equal(stored.updates[2]["b"], model(30)["b"])
    assert [s.round for s in history] == [1, 3]
    with pytest.raises(HistoryUnavailable, match="round 2 is not in"):
        history.load(2)


def test_storage_is_the_kept_files(tmp_path):
    history = filled(tmp_path / "h", rounds=(1,))
    one = history.bytes()
    assert one == history.path(1).stat().st_size > 0
    history.record(3, model(3), {0: model(1)}, {0: 1})
    assert history.bytes() == one + history.path(3).stat().st_size


def test_recording_again_replaces_the_round_and_create_starts_empty(tmp_path):
    history = filled(tmp_path / "h")
    history.record(3, model(0), {1: model(4)}, {1: 9})
    assert history.counts(3) == {1: 9} and list(history.load(3).updates) == [1]
    assert not list((tmp_path / "h").glob("*.tmp"))  # written through a renamed temp file
    history.seal("abc")
    again = UpdateHistory.create(tmp_path / "h", 2)
    assert again.rounds == [] and not list((tmp_path / "h").iterdir())


def test_open_needs_a_sealed_history_of_the_same_interval_and_model(tmp_path):
    folder = tmp_path / "h"
    history = filled(folder)
    with pytest.raises(HistoryUnavailable, match="no update history"):
        UpdateHistory.open(folder, 2, "abc")  # not sealed: training did not finish
    history.seal("abc")
    opened = UpdateHistory.open(folder, 2, "abc")
    assert opened.rounds == [1, 3] and opened.counts(1) == {0: 5, 2: 8}
    with pytest.raises(HistoryUnavailable, match="every 2 round.*every 3 needed"):
        UpdateHistory.open(folder, 3, "abc")
    with pytest.raises(HistoryUnavailable, match="another trained model"):
        UpdateHistory.open(folder, 2, "def")
    history.path(3).unlink()
    with pytest.raises(HistoryUnavailable, match=r"lacks round\(s\) \[3\]"):
        UpdateHistory.open(folder, 2, "abc")


def test_the_interval_training_keeps_is_the_planned_methods(tmp_path):
    assert history_interval(compose()) is None  # no method needs a history
    assert history_interval(compose(["unlearn.methods=[NoT,FedEraser]"])) == 2
    assert history_interval(compose(["unlearn.methods=[FedEraser]",
                                      "unlearn.federaser.interval=3"])) == 3


def test_a_cached_model_is_reused_only_with_the_history_it_needs(tmp_path, caplog):
    settings = compose([f"cache_dir={tmp_path}"])
    assert reusable(settings, None) == (None, None)
    final = model(1)
    Checkpoint(settings.fingerprint, model(0), final, [], {}).save(
        cache_path(tmp_path, settings.fingerprint))
    ckpt, history = reusable(settings, None)  # no method needs a history
    assert torch.equal(ckpt.final["w"], final["w"]) and history is None
    with caplog.at_level(logging.WARNING, logger="fedunlearn"):
        assert reusable(settings, 2) == (None, None)  # trained without one: train again
    assert "training again" in caplog.text and "no update history" in caplog.text
    folder = history_path(tmp_path, settings.fingerprint)
    assert folder.parent == cache_path(tmp_path, settings.fingerprint).parent
    filled(folder).seal(digest(final))
    ckpt, history = reusable(settings, 2)
    assert ckpt is not None and history.rounds == [1, 3]
    assert reusable(settings, 3) == (None, None)  # kept at another interval
