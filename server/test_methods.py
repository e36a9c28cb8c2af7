"""Planning method runs from the config, building them, and checking them against the model."""

import logging

import pytest

from fedunlearn.config import compose as compose_config
from fedunlearn.models import build_model
from fedunlearn.settings import Job
from server.methods import check_methods_fit, make_strategy, plan
from strategies import Architecture, Targets
from strategies.negation import NoT
from strategies.reset import RandomReset, TargetedReset

MODEL = build_model("cnn", 10, (1, 28, 28))


def compose(overrides=()):
    """The job's settings for ``overrides``, as the ServerApp reads them."""
    return Job.from_config(compose_config(list(overrides)))
TARGETS = Targets([2, 3], [1], "{}")


def negated(cfg):
    (spec,) = [s for s in plan(cfg) if s.cls is NoT]
    strategy = make_strategy(spec, cfg, TARGETS)
    strategy.provide({"model": Architecture(cfg.model, MODEL)})
    return strategy.negated


def test_default_negation_is_the_first_layer():
    # The paper's default (NoT, Section 5.3 and the code of Section 11): the first layer's
    # weight only; its bias keeps its sign.
    assert negated(compose()) == ["conv1.weight"]
    assert negated(compose(["unlearn.not.layers=[0]"])) == ["conv1.weight", "conv1.bias"]
    assert negated(compose(["unlearn.not.layers=[conv2,4]"])) == [
        "conv2.weight", "conv2.bias", "fc1.weight", "fc1.bias"]


def test_negating_a_conv_and_its_norm_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="fedunlearn"):
        negated(compose(["unlearn.not.layers=[0,1]"]))
    assert "conv1" in caplog.text and "norm1" in caplog.text and "cancel" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fedunlearn"):
        negated(compose())
    assert "cancel" not in caplog.text


def test_a_layer_the_model_lacks_is_refused_before_any_round():
    cfg = compose(["unlearn.not.layers=[conv9]"])
    with pytest.raises(ValueError) as err:
        check_methods_fit(cfg, MODEL)
    assert "conv9" in str(err.value) and "\n" not in str(err.value)


def test_reset_methods_expand_per_gamma():
    cfg = compose(["unlearn.methods=[NoT,TIS,RandomReset]", "unlearn.tis.gammas=[0.5,0.7]"])
    assert [s.label for s in plan(cfg)] == ["NoT", "TIS@0.5", "TIS@0.7", "RandomReset@0.5",
                                            "RandomReset@0.7"]
    assert [s.label for s in plan(compose(["unlearn.methods=[TIS]"]))] == ["TIS"]


def test_make_strategy_passes_the_typed_options():
    cfg = compose(["unlearn.methods=[TIS,RandomReset]", "unlearn.tis.trim_rounds=2",
                   "unlearn.tis.gammas=[0.5]", "train.aggregation.name=median"])
    tis, rr = (make_strategy(spec, cfg, TARGETS, {2: 10}) for spec in plan(cfg))
    assert isinstance(tis, TargetedReset) and tis.gamma == 0.5 and tis.trim_rounds == 2
    assert isinstance(rr, RandomReset) and rr.label == "RandomReset"
    assert tis.limits == {2: 10} and type(tis.aggregator).__name__ == "FedMedian"
