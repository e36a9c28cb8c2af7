"""Config composition, validation and the payload that clients rebuild from."""

import subprocess

import pytest
import torch
from omegaconf import DictConfig

from fedunlearn import cli
from fedunlearn.commands import jobs
from fedunlearn.config import (
    CONF_DIR,
    ConfigError,
    compose,
    compose_sweep,
    fingerprint,
    from_payload,
    group_options,
    to_payload,
)
from fedunlearn.rules import rules


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
        (["partition=dirichlet", "partition.beta=0"], "partition.beta must be a number > 0"),
        (["partition=dirichlet", "partition.beta=-1"], "partition.beta must be a number > 0"),
        (["num_clients=0"], "num_clients must be an integer >= 1"),
        (["train.rounds=0"], "train.rounds must be an integer >= 1"),
        (["model=nope"], "unknown model 'nope'"),
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


README_VGG = "unknown model 'vgg'; known: cnn, cnn_nonorm, resnet18, vit_b16, vit_tiny"


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        # Values of the wrong type: once ValueError tracebacks from int()/float().
        (["train.rounds=abc"], "train.rounds must be an integer >= 1, got 'abc'"),
        (["train.lr=abc"], "train.lr must be a number > 0, got 'abc'"),
        (["train.lr=nan"], "train.lr must be a number > 0"),
        (["partition=dirichlet", "partition.beta=abc"], "partition.beta must be a number > 0"),
        (["partition=dirichlet", "partition.beta=null"], "partition.beta must be a number > 0"),
        (["train.fraction_train=abc"], "train.fraction_train must be a number in (0, 1]"),
        (["seed=1.5"], "seed must be an integer >= 0"),
        (["reuse_trained=maybe"], "reuse_trained must be true or false"),
        (["flower_log_level=LOUD"], "flower_log_level must be one of"),
        (["dataset.test_fraction=1"], "dataset.test_fraction must be a number in (0, 1)"),
        (["train.momentum=1"], "train.momentum must be a number in [0, 1)"),
        (["train.node_timeout=0"], "train.node_timeout must be a number > 0"),
        (["train.aggregation.name=mean"], "unknown aggregation 'mean'"),
        (["train.aggregation.beta=0.5"], "train.aggregation.beta must be a number in [0, 0.5)"),
        (["~train.lr"], "train.lr is missing"),
        (["model.options=3"], "model.options must be a mapping"),
        # Runtimes: ports, timeouts, Ray's resources.
        (["runtime=deployment", "runtime.superlink_port=99999"],
         "runtime.superlink_port must be an integer in 1..65535, got 99999"),
        (["runtime=deployment", "runtime.superlink_port=abc"], "runtime.superlink_port must be"),
        (["runtime=deployment", "runtime.clientappio_base_port=0"],
         "runtime.clientappio_base_port must be an integer in 1..65535"),
        (["runtime=deployment", "runtime.clientappio_base_port=65530"],
         "runtime.clientappio_base_port + num_clients - 1 must be <= 65535"),
        (["runtime=deployment", "runtime.superlink_port=9105"], "runtime.superlink_port 9105"),
        (["runtime=deployment", "runtime.run_timeout=0"], "runtime.run_timeout must be a number"),
        (["runtime=deployment", "runtime.resubmits=-1"], "runtime.resubmits must be an integer"),
        (["runtime.client_cpus=0.5"], "runtime.client_cpus must be an integer >= 1"),
        (["runtime.client_gpus=-1"], "runtime.client_gpus must be a number >= 0"),
        (["runtime.num_cpus=0"], "runtime.num_cpus must be an integer >= 1 or null"),
        (["runtime.num_cpus=2", "runtime.client_cpus=3"],
         "runtime.client_cpus is 3, but Ray may use 2 CPUs here: no client could ever start"),
        (["runtime.ray_address=127.0.0.1:6379", "runtime.launch=in-process",
          "runtime.num_cpus=2"], "runtime.num_cpus must be null with runtime.ray_address"),
        (["runtime.ray_address=127.0.0.1:6379"],
         "runtime.ray_address needs runtime.launch=in-process"),
        (["runtime.launch=ray"], "runtime.launch must be one of"),
        (["runtime.run_timeout=0"], "runtime.run_timeout must be a number"),
        (["runtime.ray_address=[1]"], "runtime.ray_address must be"),
        # The attack and the scenario's request.
        (["attack=backdoor", "attack.client=10"], "attack.client must be < num_clients (10)"),
        (["attack=backdoor", "attack.fraction=0"], "attack.fraction must be a number in (0, 1]"),
        (["attack=backdoor", "attack.corner=middle"], "attack.corner must be one of"),
        (["scenario=class", "scenario.request.cls=-1"], "scenario.request: class must be"),
        (["scenario=class", "scenario.request.cls=abc"], "scenario.request: class must be"),
        (["scenario=instance", "scenario.request.fraction=2"], "scenario.request: fraction"),
        (["scenario.request.kind=all"], "scenario.request: unknown request kind 'all'"),
        # unlearn.*: once unchecked until a method ran (or ran with nonsense).
        (["unlearn.recovery_rounds=-1"], "unlearn.recovery_rounds must be an integer >= 0"),
        (["unlearn.retrain_rounds=0"], "unlearn.retrain_rounds must be an integer >= 1"),
        (["unlearn.recovery_lr=0"], "unlearn.recovery_lr must be a number > 0 or null"),
        # A method's own section is checked by the method (strategies.registry).
        (["unlearn.methods=[GA]", "unlearn.ga.rounds=-1"], "unlearn.ga.rounds must be >= 0"),
        (["unlearn.methods=[GDA]", "unlearn.gda.rounds=-2"], "unlearn.gda.rounds must be >= 0"),
        (["unlearn.methods=[GDA]", "unlearn.gda.lr=-0.1"], "unlearn.gda.lr must be > 0"),
        (["unlearn.methods=[GA]", "unlearn.ga.lr=abc"], "unlearn.ga.lr must be a number, got"),
        (["unlearn.methods=[GA]", "unlearn.ga.grad_clip=-1"],
         "unlearn.ga.grad_clip must be >= 0"),
        (["unlearn.methods=[TIS]", "unlearn.tis.trim_rounds=-1"],
         "unlearn.tis.trim_rounds must be >= 0"),
        (["unlearn.methods=[TIS]", "unlearn.tis.gammas=[0.5,1.5]"],
         "unlearn.tis.gammas must hold values in (0, 1], got 1.5"),
        (["unlearn.methods=[TIS]", "unlearn.tis.gammas=[]"],
         "unlearn.tis.gammas must be a non-empty list"),
        (["unlearn.methods=[GA]", "+unlearn.ga.steps=3"], "unlearn.ga has unknown setting"),
        (["unlearn.curvature.estimator=magic"], "unlearn.curvature.estimator must be one of auto,"),
        (["unlearn.curvature.min_replies=0"],
         "unlearn.curvature.min_replies must be an integer >= 1"),
        (["unlearn.methods=[TIS]", "num_clients=1"], "unlearn.curvature.min_replies must be <="),
        (["unlearn.evaluate.mia_folds=1"], "unlearn.evaluate.mia_folds must be an integer >= 2"),
        (["unlearn.evaluate.owned_share=0"], "unlearn.evaluate.owned_share must be a number"),
        (["unlearn.methods=[NoT,Forget]"], "unlearn.methods: unknown unlearning method(s)"),
        (["unlearn.methods=[NoT,NoT]"], "unlearn.methods lists NoT more than once"),
        (["unlearn.not.layers=[]"], "unlearn.not.layers is empty"),
        (["unlearn.not.layers=[true]"], "unlearn.not.layers[0] must be"),
        (["unlearn.ledger=''"], "unlearn.ledger must be a non-empty string"),
        (["dataset=nope"], "unknown dataset 'nope'; known: caltech101, cifar10"),
        (["model=vgg"], README_VGG),
    ],
)
def test_every_key_is_typed_and_ranged(overrides, needle):
    with pytest.raises(ConfigError) as err:
        compose(overrides)
    message = str(err.value)
    assert needle in message and "\n" not in message


def _leaves(node: DictConfig, prefix: str, covered: dict) -> list[str]:
    """Dotted keys of ``node`` that no rule covers (a rule covers everything below it)."""
    missing = []
    for key, value in node.items_ex(resolve=False):
        path = f"{prefix}{key}"
        if path in covered:
            continue
        if isinstance(value, DictConfig) and len(value):
            missing += _leaves(value, f"{path}.", covered)
        else:
            missing.append(path)
    return missing


def test_every_key_of_every_group_option_has_a_rule():
    from strategies import METHODS

    # A method's own section (conf/unlearn/method/) is checked by the method's constructor.
    sections = {f"unlearn.{cls.section}" for cls in METHODS.values() if cls.section}
    table = {**rules(), **dict.fromkeys(sections)}
    groups = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir())
    assert {"attack", "dataset", "model", "partition", "runtime", "scenario", "train",
            "unlearn"} <= set(groups)
    for group in groups:
        for option in group_options(group):
            if option == "base":  # conf/partition/base.yaml: the schemes' shared keys
                continue
            cfg = compose([f"{group}={option}"])
            assert _leaves(cfg, "", table) == [], f"{group}={option}"


def test_sweep_expands_like_hydra_and_checks_every_job():
    jobs = compose_sweep(["seed=0,1,2", "model=cnn,cnn_nonorm"])
    assert [(c.seed, c.model.name) for c in jobs] == [
        (s, m) for s in (0, 1, 2) for m in ("cnn", "cnn_nonorm")]
    assert [c.model.name for c in compose_sweep(["model=glob(cnn*)"])] == ["cnn", "cnn_nonorm"]
    assert len(compose_sweep([])) == 1
    # The bad value is in the last job: refused before the first would start.
    with pytest.raises(ConfigError, match=r"^train.lr must be a number > 0, got 'abc'$"):
        compose_sweep(["seed=0,1", "train.lr=0.01,abc"])
    with pytest.raises(ConfigError) as err:
        compose_sweep(["seed=0,1", "model=cnn,vgg"])
    assert str(err.value) == README_VGG
    with pytest.raises(ConfigError, match="bad sweep"):
        compose_sweep(["train.lr=interval(0,1)"])


DIGITS = ["dataset=digits", "num_clients=3"]


def test_preflight_accepts_the_defaults():
    jobs.preflight(compose(DIGITS))
    jobs.preflight(compose([*DIGITS, "attack=backdoor", "scenario=backdoor",
                            "unlearn.methods=[TIS]", "unlearn.not.layers=[conv2,4]"]))


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        # Once found after training, as a failed request, with exit code 0.
        (["unlearn.not.layers=[99]"], "unlearn.not.layers: unknown layer selector 99"),
        (["unlearn.not.layers=[conv9]"], "unlearn.not.layers: unknown layer selector 'conv9'"),
        (["unlearn.methods=[TIS]", "unlearn.curvature.estimator=diag_hessian"],
         "unlearn.curvature.estimator: estimator 'diag_hessian' does not work"),
        (["scenario=class", "scenario.request.cls=12"], "scenario.request: class 12 is unknown"),
        (["scenario=backdoor"], "scenario.request: client 0 holds no poisoned samples"),
        (["scenario=instance", "scenario.request.clients=[7]"], "scenario.request:"),
        (["model=vit_b16"], "model: vit_b16 takes 3-channel images"),
        (["+model.options.hidden=-1"], "model:"),
        (["+model.options.depth=3"], "model:"),
    ],
)
def test_preflight_checks_against_data_and_model(overrides, needle):
    with pytest.raises(ConfigError) as err:
        jobs.preflight(compose([*DIGITS, *overrides]))
    message = str(err.value)
    assert needle in message and "\n" not in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here")
def test_gpus_for_clients_are_refused_without_cuda():
    with pytest.raises(ConfigError, match=r"^runtime.client_gpus is 0.1, but this machine has "
                                          r"no CUDA device: no client could ever start$"):
        compose(["runtime.client_gpus=0.1"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here")
def test_preflight_refuses_cuda_without_cuda():
    with pytest.raises(ConfigError, match="^runtime.device: device 'cuda' requested"):
        jobs.preflight(compose([*DIGITS, "runtime.device=cuda"]))


def test_cli_checks_every_job_before_hydra_starts(monkeypatch, capsys):
    def hydra_started(*args, **kwargs):
        raise AssertionError("Hydra started a job")

    monkeypatch.setattr(jobs.hydra, "main", hydra_started)
    # Only the second job is bad, and only its model tells.
    with pytest.raises(SystemExit) as stop:
        cli.main(["train", "--multirun", *DIGITS, "unlearn.not.layers=[0],[99]"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("fedunlearn: error: unlearn.not.layers: unknown layer selector 99")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["train", "train.rounds=abc"],
         "fedunlearn: error: train.rounds must be an integer >= 1, got 'abc'"),
        (["train", "runtime=deployment", "runtime.superlink_port=99999"],
         "fedunlearn: error: runtime.superlink_port must be an integer in 1..65535, got 99999"),
        (["train", "--multirun", "model=vgg"], f"fedunlearn: error: {README_VGG}"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args, line, fedunlearn_cmd):
    done = subprocess.run([*fedunlearn_cmd, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [line]


def test_overrides_with_spaces_survive_the_run_config() -> None:
    from fedunlearn.config import join_overrides, parse_overrides

    overrides = ["num_clients=3", "serve.schedule=[{round: 2, request: {kind: client, client: 1}}]",
                 "dataset.hf.subset='a b'"]
    assert parse_overrides(join_overrides(overrides)) == overrides
    assert parse_overrides("a=1  b=x") == ["a=1", "b=x"]  # a plain string, as before
    cfg = compose(parse_overrides(join_overrides(overrides[:2])))
    assert cfg.serve.schedule[0]["request"]["client"] == 1
