"""The rules every config key must follow, and the checks of keys taken together.

Every key of the tree has a :class:`Rule` in :func:`rules` (its type, range or
choices); :func:`validate` checks them all, then what keys say only together
(:func:`_check_combinations`). A method's own section is checked by the method
(:func:`strategies.registry.plan`).

Why one module of ~360 lines: the table is one line per key of ``conf/``, kept in one
place so that a new key fails ``tests/test_config.py`` until it has its rule.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from fedunlearn.config import ConfigError, _first_line, group_options


def _is_int(value: object) -> bool:
    # bool is an int subclass, but `true` is not a number of rounds.
    return isinstance(value, int) and not isinstance(value, bool)


# What each Rule.kind accepts, and how a message calls it.
_KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "int": ("an integer", _is_int),
    "number": ("a number", lambda v: (_is_int(v) or isinstance(v, float)) and math.isfinite(v)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "text": ("a non-empty string", lambda v: isinstance(v, str) and bool(v.strip())),
    "mapping": ("a mapping", lambda v: isinstance(v, DictConfig | dict)),
    "list": ("a list", lambda v: isinstance(v, ListConfig | list)),
    "layer": ("a layer index or name", lambda v: _is_int(v) or (isinstance(v, str) and v != "")),
}


@dataclass(frozen=True)
class Rule:
    """What one config key must hold.

    Attributes
    ----------
    kind : str
        A key of ``_KINDS``: ``int``, ``number`` (int or float, finite), ``bool``,
        ``text`` (a non-empty string), ``mapping``, ``list``, or ``layer`` (a layer
        selector of :func:`fedunlearn.models.resolve_layers`: an index or a name).
    low, high : float, optional
        Bounds of an ``int`` or a ``number``, inclusive unless ``low_open``/``high_open``.
    low_open, high_open : bool
        Exclude the bound itself.
    null : bool
        ``null`` is accepted too (where the config reads it as "the default").
    choices : tuple of str
        The only values a ``text`` key may hold.
    noun : str
        With ``choices``: refuse as ``unknown <noun> 'x'; known: ...``, the wording of an
        unknown group option (``model=vgg``), rather than ``<key> must be one of ...``.
    item : Rule, optional
        What each entry of a ``list`` must hold.
    nonempty : bool
        A ``list`` must have an entry at least.
    when : tuple of str, optional
        ``(key, value)``: check this key only when ``key`` holds ``value``, for keys that
        only one option of a group has (the deployment's ports, the backdoor's trigger).
    """

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    null: bool = False
    choices: tuple[str, ...] = ()
    noun: str = ""
    item: Rule | None = None
    nonempty: bool = False
    when: tuple[str, str] | None = None

    def describe(self) -> str:
        """What the key must be, as a message puts it: ``an integer >= 1``."""
        if self.choices:
            text = f"one of {', '.join(self.choices)}"
        elif self.nonempty:
            text = f"a non-empty {_KINDS[self.kind][0].removeprefix('a ')}"
        else:
            text = _KINDS[self.kind][0] + self._bounds()
        return f"{text} or null" if self.null else text

    def _bounds(self) -> str:
        low, high = self.low, self.high
        if low is not None and high is not None:
            if self.kind == "int":
                return f" in {low}..{high}"
            return (f" in {'(' if self.low_open else '['}{low}, "
                    f"{high}{')' if self.high_open else ']'}")
        if low is not None:
            return f" {'>' if self.low_open else '>='} {low}"
        if high is not None:
            return f" {'<' if self.high_open else '<='} {high}"
        return ""

    def _in_bounds(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def check(self, key: str, value: object) -> None:
        """Refuse ``value`` for ``key`` unless it fits this rule.

        Raises
        ------
        ConfigError
            ``<key> must be <description>, got <value>``, or for a list the first entry
            that does not fit, named ``<key>[<index>]``.
        """
        if value is None and self.null:
            return
        if self.choices:
            if isinstance(value, str) and value in self.choices:
                return
            if self.noun:
                raise ConfigError(f"unknown {self.noun} {_show(value)}; "
                                  f"known: {', '.join(self.choices)}")
            raise ConfigError(f"{key} must be {self.describe()}, got {_show(value)}")
        fits = _KINDS[self.kind][1](value)
        if fits and self.kind in ("int", "number"):
            fits = self._in_bounds(value)
        if fits and self.nonempty:
            fits = len(value) > 0
        if not fits:
            raise ConfigError(f"{key} must be {self.describe()}, got {_show(value)}")
        if self.item is not None:
            for index, entry in enumerate(value):
                self.item.check(f"{key}[{index}]", entry)


def _show(value: object, limit: int = 40) -> str:
    """A value as a message shows it: YAML's ``null``, plain lists, cut to ``limit``."""
    if value is None:
        return "null"
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value)
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _int(low: int | None = None, high: int | None = None, **more: Any) -> Rule:
    return Rule("int", low=low, high=high, **more)


def _num(low: float | None = None, high: float | None = None, **more: Any) -> Rule:
    return Rule("number", low=low, high=high, **more)


def _one_of(choices: Iterable[str], **more: Any) -> Rule:
    return Rule("text", choices=tuple(choices), **more)


@functools.cache
def rules() -> dict[str, Rule]:
    """Every key of the config tree and what it must hold, in the order they are checked.

    A key whose rule has ``when`` comes after the key ``when`` reads. Built on first use:
    the known names come from modules that import torch.

    Returns
    -------
    dict of str to Rule
        Dotted key (``"train.lr"``) to its rule.
    """
    from fedunlearn.data import CORNERS, DATASETS
    from fedunlearn.data.partition import SCHEMES
    from fedunlearn.models import MODELS
    from fedunlearn.unlearning.curvature import ESTIMATORS
    from strategies.robust import AGGREGATORS

    simulation = ("runtime.name", "simulation")
    deployment = ("runtime.name", "deployment")
    backdoor = ("attack.name", "backdoor")
    hub = ("dataset.name", "hf")
    fraction = _num(0, 1, low_open=True)  # a share of something: (0, 1]
    port = _int(1, 65535, when=deployment)
    table: dict[str, Rule] = {
        "seed": _int(0),
        "num_clients": _int(1),
        "cache_dir": Rule("text"),
        "reuse_trained": Rule("bool"),
        "flower_log_level": _one_of(logging.getLevelNamesMapping()),
        "dataset.name": _one_of(DATASETS, noun="dataset"),
        "dataset.root": Rule("text", null=True),
        "dataset.download": Rule("bool"),
        "dataset.image_size": _int(1, null=True),
        "dataset.test_fraction": _num(0, 1, low_open=True, high_open=True),
        "dataset.train_copies": _int(1),
        "dataset.hf.subset": Rule("text", null=True, when=hub),
        "dataset.hf.data_files": Rule("mapping", null=True, when=hub),
        "dataset.hf.image_column": Rule("text", null=True, when=hub),
        "dataset.hf.label_column": Rule("text", null=True, when=hub),
        "dataset.hf.train_split": Rule("text", when=hub),
        "dataset.hf.test_split": Rule("text", null=True, when=hub),
        "partition.scheme": _one_of(SCHEMES, noun="partition scheme"),
        "partition.beta": _num(0, low_open=True, null=True),
        "partition.val_fraction": _num(0, 1, high_open=True),
        "partition.min_size": _int(0),
        "partition.classes_per_client": _int(1),
        "partition.shards_per_client": _int(1),
        "model.name": _one_of(MODELS, noun="model"),
        "model.options": Rule("mapping"),
        "train.rounds": _int(1),
        "train.local_epochs": _int(1),
        "train.batch_size": _int(1),
        "train.lr": _num(0, low_open=True),
        "train.momentum": _num(0, 1, high_open=True),
        "train.weight_decay": _num(0),
        "train.eval_batch_size": _int(1),
        "train.fraction_train": fraction,
        "train.round_timeout": _num(0, low_open=True),
        "train.node_timeout": _num(0, low_open=True),
        "train.aggregation.name": _one_of(AGGREGATORS, noun="aggregation"),
        # trimmed_mean cuts this share at each end: half or more would leave nothing.
        "train.aggregation.beta": _num(0, 0.5, high_open=True),
        "train.aggregation.num_malicious_nodes": _int(0),
        "train.aggregation.num_nodes_to_select": _int(1),
        "runtime.name": _one_of(group_options("runtime"), noun="runtime"),
        "runtime.device": _one_of(("auto", "cpu", "cuda")),
        # Flower's Ray backend takes whole CPUs only.
        "runtime.client_cpus": _int(1, when=simulation),
        "runtime.client_gpus": _num(0, when=simulation),
        "runtime.num_cpus": _int(1, null=True, when=simulation),
        "runtime.ray_address": Rule("text", null=True, when=simulation),
        "runtime.launch": _one_of(("flwr-run", "in-process"), when=simulation),
        "runtime.host": Rule("text", when=deployment),
        "runtime.superlink_port": port,
        "runtime.clientappio_base_port": port,
        "runtime.flwr_home": Rule("text", null=True, when=deployment),
        "runtime.state_file": Rule("text", null=True, when=deployment),
        "runtime.max_restarts": _int(0, when=deployment),
        "runtime.insecure": Rule("bool", when=deployment),
        "runtime.restart_spacing": _num(0, when=deployment),
        "runtime.resubmits": _int(0, when=deployment),
        "runtime.superlink_timeout": _num(0, low_open=True, when=deployment),
        "runtime.run_timeout": _num(0, low_open=True),
        "runtime.executor": _one_of(("warm", "stock"), when=deployment),
        "runtime.task_poll_interval": _num(0.01, 60, when=deployment),
        "runtime.node_threads": _int(1, null=True, when=deployment),
        "runtime.collect_interval": _num(0, 60, low_open=True),
        "attack.name": _one_of(group_options("attack"), noun="attack"),
        "attack.client": _int(0, when=backdoor),
        "attack.fraction": _num(0, 1, low_open=True, when=backdoor),
        "attack.target": _int(0, when=backdoor),
        "attack.size": _int(1, when=backdoor),
        "attack.corner": _one_of(CORNERS, when=backdoor),
        "scenario.name": Rule("text"),
        # Its fields are checked as a forget request (_check_combinations).
        "scenario.request": Rule("mapping", null=True),
        "unlearn.methods": Rule("list", item=Rule("text")),
        "unlearn.recovery_rounds": _int(0),
        # null means "as many as training"; so would 0 (`retrain_rounds or train.rounds`).
        "unlearn.retrain_rounds": _int(1, null=True),
        "unlearn.recovery_lr": _num(0, low_open=True, null=True),
        "unlearn.recovery_epsilon": _num(0, 1, null=True),
        "unlearn.recovery_max_rounds": _int(1),
    }
    # Each method's own section (unlearn.<section>, conf/unlearn/method/) is checked by
    # the method itself: strategies.registry, in _check_combinations.
    table |= {
        # Cross-validation needs two folds at least.
        "unlearn.evaluate.mia_folds": _int(2),
        "unlearn.evaluate.max_retain": _int(1, null=True),
        "unlearn.evaluate.owned_share": fraction,
        "unlearn.ledger": Rule("text"),
        "unlearn.state_dir": Rule("text", null=True),
        "serve.rounds": _int(1),
        "serve.method": Rule("text"),
        # Each entry is checked as a round and a forget request (_check_combinations).
        "serve.schedule": Rule("list", item=Rule("mapping")),
        "serve.resume": Rule("bool"),
        "serve.one_pass": Rule("bool"),
        "serve.snapshots": Rule("bool"),
        "serve.round_timeout": _num(0, low_open=True),
        "serve.min_nodes": _int(1),
        "serve.round_retries": _int(0),
        "serve.poll_per_round": _int(1, null=True),
        "unlearn.curvature.estimator": _one_of(ESTIMATORS),
        "unlearn.curvature.batch_size": _int(1),
        "unlearn.curvature.mc_samples": _int(1),
        "unlearn.curvature.hutchinson_samples": _int(1),
        "unlearn.curvature.min_replies": _int(1),
        "unlearn.curvature.retain_samples": _int(0),
    }
    return table


_ABSENT = object()


def _select(cfg: DictConfig, key: str) -> Any:
    """The value of a dotted key, resolved; refused when absent or unresolvable."""
    try:
        value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=True)
    except Exception as exc:  # an interpolation that does not resolve, a '???'
        raise ConfigError(f"{key}: {_first_line(exc)}") from exc
    if value is _ABSENT:
        raise ConfigError(f"{key} is missing")
    return value


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: DictConfig) -> None:
    """Check every key's type and range (:func:`rules`), then what keys say together.

    The checks that need the data or a model (NoT's layers, the scenario's request on
    the partitions) are :func:`fedunlearn.commands.jobs.preflight`'s.

    Raises
    ------
    ConfigError
        With one line naming the first bad key.
    """
    for key, rule in rules().items():
        if rule.when is None or OmegaConf.select(cfg, rule.when[0]) == rule.when[1]:
            rule.check(key, _select(cfg, key))
    _check_combinations(cfg)


def _check_ray_resources(runtime: DictConfig) -> None:
    """Client resources Ray could never grant would leave the simulation waiting forever
    (or fail deep in Ray): refuse them here. On an existing cluster (``ray_address``) the
    cluster owns its resources, so only what cannot be asked of it is refused."""
    if runtime.ray_address is not None:
        _need(runtime.launch == "in-process",
              f"runtime.ray_address needs runtime.launch=in-process: `flwr run`'s "
              f"simulation starts its own Ray instance, got launch={runtime.launch}")
        _need(runtime.num_cpus is None,
              f"runtime.num_cpus must be null with runtime.ray_address (the cluster at "
              f"{runtime.ray_address} has its own CPUs), got {runtime.num_cpus}")
        return
    cpus = runtime.num_cpus if runtime.num_cpus is not None else os.cpu_count() or 1
    _need(runtime.client_cpus <= cpus,
          f"runtime.client_cpus is {runtime.client_cpus}, but Ray may use {cpus} CPUs here: "
          "no client could ever start")
    if runtime.client_gpus > 0:
        import torch

        gpus = torch.cuda.device_count()
        _need(gpus > 0, f"runtime.client_gpus is {runtime.client_gpus}, but this machine has "
                        "no CUDA device: no client could ever start")
        _need(runtime.client_gpus <= gpus, f"runtime.client_gpus is {runtime.client_gpus}, "
                                           f"but this machine has {gpus} GPUs")


def _check_combinations(cfg: DictConfig) -> None:
    """What no single key can say: bounds set by other keys, names known elsewhere."""
    from fedunlearn.requests import RequestRefused, scenario_request
    from strategies import METHODS
    from strategies.registry import check_methods, plan

    clients = cfg.num_clients
    if cfg.partition.scheme == "dirichlet":
        _need(cfg.partition.beta is not None,
              "partition.beta must be a number > 0 for the dirichlet scheme, got null")
    if cfg.attack.name == "backdoor":
        _need(cfg.attack.client < clients,
              f"attack.client must be < num_clients ({clients}), got {cfg.attack.client}")
    if cfg.runtime.name == "simulation":
        _check_ray_resources(cfg.runtime)
    if cfg.runtime.name == "deployment":
        # SuperNode i listens on clientappio_base_port + i.
        first, link = cfg.runtime.clientappio_base_port, cfg.runtime.superlink_port
        last = first + clients - 1
        _need(last <= 65535, f"runtime.clientappio_base_port + num_clients - 1 must be <= 65535"
                             f", got {last}")
        _need(not first <= link <= last, f"runtime.superlink_port {link} is one of the "
                                         f"SuperNodes' ports {first}..{last}")
    methods = list(cfg.unlearn.methods)
    try:
        check_methods(methods)
    except ValueError as exc:
        raise ConfigError(f"unlearn.methods: {exc}") from exc
    repeated = sorted({name for name in methods if methods.count(name) > 1})
    _need(not repeated, f"unlearn.methods lists {', '.join(repeated)} more than once")
    sections = OmegaConf.to_container(cfg.unlearn, resolve=True)
    assert isinstance(sections, dict)
    try:  # each method checks its own settings (types by its constructor, then ranges)
        plan(methods, sections)
    except (ValueError, TypeError) as exc:
        raise ConfigError(_first_line(exc)) from exc
    if any("curvature" in METHODS[name].needs for name in methods):
        # Curvature comes from at most every client; more replies can never arrive.
        _need(cfg.unlearn.curvature.min_replies <= clients,
              f"unlearn.curvature.min_replies must be <= num_clients ({clients}), "
              f"got {cfg.unlearn.curvature.min_replies}")
    _need(cfg.serve.method in METHODS,
          f"serve.method: unknown method '{cfg.serve.method}'; known: {', '.join(METHODS)}")
    # A round can never hear from more nodes than there are clients.
    _need(cfg.serve.min_nodes <= clients,
          f"serve.min_nodes must be <= num_clients ({clients}), got {cfg.serve.min_nodes}")
    for i, item in enumerate(cfg.serve.schedule):
        where = f"serve.schedule[{i}]"
        _need(set(item) == {"round", "request"}, f"{where} must have a round and a request")
        _need(_is_int(item["round"]) and 1 <= item["round"] <= cfg.serve.rounds,
              f"{where}.round must be an integer in 1..serve.rounds, got {item['round']!r}")
        content = OmegaConf.to_container(item["request"], resolve=True)
        try:
            scenario_request(content if isinstance(content, dict) else {})
        except RequestRefused as exc:
            raise ConfigError(f"{where}.request: {exc}") from exc
    if cfg.scenario.request is not None:
        content = OmegaConf.to_container(cfg.scenario.request, resolve=True)
        assert isinstance(content, dict)
        try:
            scenario_request(content)
        except RequestRefused as exc:
            raise ConfigError(f"scenario.request: {exc}") from exc
