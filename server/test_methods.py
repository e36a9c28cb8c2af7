"""Method construction from the config: layer resolution, the conv+norm warning, specs."""

import logging

import pytest

from fedunlearn.config import compose
from fedunlearn.models import build_model
from server.methods import MethodSpec, make_strategy, method_specs, negation_layers
from strategies import NoT, RandomReset, TargetedReset, Targets

MODEL = build_model("cnn", 10, (1, 28, 28))
TARGETS = Targets([2, 3], [1], "{}")


def test_default_negation_is_the_first_layer():
    assert negation_layers(compose(), MODEL) == ["conv1.weight", "conv1.bias"]
    cfg = compose(["unlearn.not.layers=[conv2,4]"])
    assert negation_layers(cfg, MODEL) == ["conv2.weight", "conv2.bias", "fc1.weight",
                                           "fc1.bias"]


def test_negating_a_conv_and_its_norm_warns(caplog):
    cfg = compose(["unlearn.not.layers=[0,1]"])
    with caplog.at_level(logging.WARNING, logger="fedunlearn"):
        negation_layers(cfg, MODEL)
    assert "conv1" in caplog.text and "norm1" in caplog.text and "cancel" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fedunlearn"):
        negation_layers(compose(), MODEL)
    assert "cancel" not in caplog.text


def test_unknown_layer_is_one_line():
    with pytest.raises(ValueError) as err:
        negation_layers(compose(["unlearn.not.layers=[conv9]"]), MODEL)
    assert "conv9" in str(err.value) and "\n" not in str(err.value)


def test_reset_methods_expand_per_gamma():
    cfg = compose(["unlearn.methods=[NoT,TIS,RandomReset]", "unlearn.tis.gammas=[0.5,0.7]"])
    specs = method_specs(cfg)
    assert [s.label for s in specs] == ["NoT", "TIS@0.5", "TIS@0.7", "RandomReset@0.5",
                                        "RandomReset@0.7"]
    single = method_specs(compose(["unlearn.methods=[TIS]"]))
    assert [s.label for s in single] == ["TIS"]


def test_make_strategy():
    cfg = compose(["unlearn.tis.trim_rounds=2"])
    assert isinstance(make_strategy(MethodSpec("NoT", "NoT"), cfg, TARGETS, MODEL), NoT)
    curvature = ({}, {})
    tis = make_strategy(MethodSpec("TIS@0.5", "TIS", {"gamma": 0.5}), cfg, TARGETS, MODEL,
                        curvature)
    assert isinstance(tis, TargetedReset) and tis.gamma == 0.5 and tis.trim_rounds == 2
    rr = make_strategy(MethodSpec("RandomReset", "RandomReset", {"gamma": 0.7}), cfg, TARGETS,
                       MODEL, curvature)
    assert isinstance(rr, RandomReset)
    with pytest.raises(ValueError, match="needs the clients' curvature"):
        make_strategy(MethodSpec("TIS", "TIS", {"gamma": 0.5}), cfg, TARGETS, MODEL)
    with pytest.raises(ValueError, match="unknown unlearning method"):
        make_strategy(MethodSpec("X", "X"), cfg, TARGETS, MODEL)
