"""Frozen, typed settings, read from the composed config once, at the edge.

The ServerApp's job builds a :class:`Job` from the config it composed, a node
builds one from the config the server sent with a message; below that, no code
reads a ``DictConfig``. Building one assumes :func:`fedunlearn.rules.validate`
accepted the config (types and ranges are checked there, not here).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from fedunlearn.config import fingerprint, to_payload, training_view
from fedunlearn.federation import Federation, model_for


@dataclass(frozen=True)
class Training:
    """``cfg.train``: FedAvg rounds, local SGD, timeouts and the aggregation rule."""

    rounds: int
    local_epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    eval_batch_size: int
    fraction_train: float
    round_timeout: float
    node_timeout: float
    aggregation: str
    aggregation_options: Mapping[str, Any]


@dataclass(frozen=True)
class Evaluation:
    """``cfg.unlearn.evaluate``: how a request's answers are judged."""

    mia_folds: int
    max_retain: int | None
    owned_share: float


@dataclass(frozen=True)
class CurvatureEstimation:
    """``cfg.unlearn.curvature``: how clients estimate curvature, how many must answer."""

    estimator: str
    batch_size: int
    mc_samples: int
    hutchinson_samples: int
    min_replies: int
    # Retained samples per client its h_r is estimated from (0: all). h_r is a mean, so
    # a sample estimates it; the client still reports its full retained count, which
    # weights its h_r in Eq. 30.
    retain_samples: int = 0


@dataclass(frozen=True)
class Backdoor:
    """``cfg.attack`` of a backdoor run: the trigger and its target class."""

    target: int
    size: int
    corner: str


@dataclass(frozen=True)
class Job:
    """Everything the server's job and a node read from the config, typed.

    ``payload`` is the config as sent to the nodes; ``fingerprint`` and
    ``training_view`` key the trained-model cache; ``config`` is the resolved config
    as a plain dict, for reports.
    """

    seed: int
    num_clients: int
    model: str
    model_options: Mapping[str, Any]
    device: str
    train: Training
    evaluate: Evaluation
    curvature: CurvatureEstimation
    backdoor: Backdoor | None
    methods: tuple[str, ...]
    unlearn: Mapping[str, Any]
    recovery_rounds: int
    retrain_rounds: int
    recovery_lr: float
    recovery_epsilon: float | None
    recovery_max_rounds: int
    scenario: str
    request: Mapping[str, Any] | None
    serve_rounds: int
    serve_method: str
    serve_schedule: tuple[tuple[int, Mapping[str, Any]], ...]
    serve_resume: bool
    serve_round_timeout: float
    serve_one_pass: bool
    serve_snapshots: bool
    serve_min_nodes: int
    serve_round_retries: int
    serve_poll_per_round: int | None
    cache_dir: str
    reuse_trained: bool
    ledger: str
    state_dir: str | None
    flower_log_level: str
    payload: str
    fingerprint: str
    training_view: Mapping[str, Any]
    config: Mapping[str, Any]

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Job:
        """Read a validated config once."""
        plain = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(plain, dict)
        plain.pop("hydra", None)
        t, un = plain["train"], plain["unlearn"]
        agg = dict(t["aggregation"])
        attack = plain["attack"]
        return cls(
            seed=int(plain["seed"]),
            num_clients=int(plain["num_clients"]),
            model=str(plain["model"]["name"]),
            model_options=dict(plain["model"].get("options") or {}),
            device=str(plain["runtime"]["device"]),
            train=Training(
                rounds=int(t["rounds"]), local_epochs=int(t["local_epochs"]),
                batch_size=int(t["batch_size"]), lr=float(t["lr"]),
                momentum=float(t["momentum"]), weight_decay=float(t["weight_decay"]),
                eval_batch_size=int(t["eval_batch_size"]),
                fraction_train=float(t["fraction_train"]),
                round_timeout=float(t["round_timeout"]), node_timeout=float(t["node_timeout"]),
                aggregation=str(agg.pop("name")), aggregation_options=agg),
            evaluate=Evaluation(**un["evaluate"]),
            curvature=CurvatureEstimation(**un["curvature"]),
            backdoor=(Backdoor(int(attack["target"]), int(attack["size"]), str(attack["corner"]))
                      if attack["name"] == "backdoor" else None),
            methods=tuple(un["methods"]),
            unlearn=un,
            recovery_rounds=int(un["recovery_rounds"]),
            # null means "as many rounds as the original training", "the training lr".
            retrain_rounds=int(un["retrain_rounds"] or t["rounds"]),
            recovery_lr=float(un["recovery_lr"] or t["lr"]),
            recovery_epsilon=(None if un["recovery_epsilon"] is None
                              else float(un["recovery_epsilon"])),
            recovery_max_rounds=int(un["recovery_max_rounds"]),
            scenario=str(plain["scenario"]["name"]),
            request=plain["scenario"].get("request"),
            serve_rounds=int(plain["serve"]["rounds"]),
            serve_method=str(plain["serve"]["method"]),
            serve_schedule=tuple((int(item["round"]), dict(item["request"]))
                                 for item in plain["serve"]["schedule"]),
            serve_resume=bool(plain["serve"]["resume"]),
            serve_round_timeout=float(plain["serve"]["round_timeout"]),
            serve_one_pass=bool(plain["serve"]["one_pass"]),
            serve_snapshots=bool(plain["serve"]["snapshots"]),
            serve_min_nodes=int(plain["serve"]["min_nodes"]),
            serve_round_retries=int(plain["serve"]["round_retries"]),
            serve_poll_per_round=(None if plain["serve"]["poll_per_round"] is None
                                  else int(plain["serve"]["poll_per_round"])),
            cache_dir=str(plain["cache_dir"]),
            reuse_trained=bool(plain["reuse_trained"]),
            ledger=str(un["ledger"]),
            state_dir=un.get("state_dir"),
            flower_log_level=str(plain["flower_log_level"]),
            payload=to_payload(cfg),
            fingerprint=fingerprint(cfg),
            training_view=training_view(cfg),
            config=plain,
        )

    def torch_device(self) -> torch.device:
        """The device this process computes on (``auto``: CUDA when present)."""
        from fedunlearn.training import pick_device

        return pick_device(self.device)

    def build_model(self, federation: Federation, seed: int | None = None) -> torch.nn.Module:
        """A model of the configured architecture for ``federation``'s data."""
        return model_for(self.model, self.model_options, federation, seed)
