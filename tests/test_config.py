"""Config composition, validation and the payload that clients rebuild from."""

import pytest

from fedunlearn.config import ConfigError, compose, fingerprint, from_payload, to_payload


def test_defaults_compose():
    cfg = compose()
    assert cfg.dataset.name == "mnist_embedded"
    assert cfg.model.name == "cnn" and cfg.partition.scheme == "iid"
    assert cfg.runtime.name == "simulation" and cfg.num_clients == 10
    assert cfg.train.momentum == 0.9 and cfg.train.weight_decay == 5e-4


def test_overrides_and_groups():
    cfg = compose(["model=cnn_nonorm", "partition=dirichlet", "partition.beta=0.1",
                   "train.rounds=3", "runtime=deployment"])
    assert cfg.model.name == "cnn_nonorm" and cfg.partition.beta == 0.1
    assert cfg.train.rounds == 3 and cfg.runtime.superlink_port == 9091


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["dataset.name=imagenet"], "unknown dataset 'imagenet'"),
        (["model.name=vgg"], "unknown model 'vgg'"),
        (["partition=dirichlet", "partition.beta=0"], "partition.beta must be > 0"),
        (["partition=dirichlet", "partition.beta=-1"], "partition.beta must be > 0"),
        (["num_clients=0"], "num_clients must be a positive integer"),
        (["train.rounds=0"], "train.rounds must be >= 1"),
        (["model=nope"], "bad config override"),
        (["train.rounds=="], "bad config override"),
        (["no_such_key=1"], "bad config override"),
        (["runtime.device=tpu"], "runtime.device"),
    ],
)
def test_bad_config_is_one_clear_line(overrides, needle):
    with pytest.raises(ConfigError) as err:
        compose(overrides)
    message = str(err.value)
    assert needle in message and "\n" not in message


def test_fingerprint_tracks_what_makes_the_model():
    base = fingerprint(compose())
    assert base == fingerprint(compose())
    assert base == fingerprint(compose(["train.round_timeout=5", "runtime=deployment"]))
    assert base != fingerprint(compose(["train.rounds=3"]))
    assert base != fingerprint(compose(["seed=1"]))


def test_payload_round_trip():
    cfg = compose(["dataset=digits", "num_clients=3"])
    back = from_payload(to_payload(cfg))
    assert back == cfg
    with pytest.raises(ConfigError, match="not valid JSON"):
        from_payload("{oops")
