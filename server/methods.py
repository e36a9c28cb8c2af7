"""Build an unlearning strategy by name from the config (layer names resolved here)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from fedunlearn.models import conv_norm_pairs, default_negation_layers, resolve_layers
from server.training import aggregator
from strategies import (
    METHODS,
    RESET_METHODS,
    NoT,
    Settings,
    Targets,
    UnlearningStrategy,
    check_methods,
)

LOG = logging.getLogger("fedunlearn")


def settings(cfg: DictConfig) -> Settings:
    """The :class:`Settings` every method reads, from ``cfg.unlearn`` and ``cfg.train``."""
    un = cfg.unlearn
    extra = OmegaConf.to_container(un, resolve=True)
    assert isinstance(extra, dict)
    return Settings(
        train_rounds=int(un.retrain_rounds or cfg.train.rounds),
        recovery_rounds=int(un.recovery_rounds),
        recovery_lr=float(un.recovery_lr or cfg.train.lr),
        local_epochs=int(cfg.train.local_epochs),
        extra=extra,
    )


def negation_layers(cfg: DictConfig, model: torch.nn.Module) -> list[str]:
    """Parameter names NoT negates: ``unlearn.not.layers`` or the model's default.

    Warns when a convolution and the normalization right after it are both
    negated, since their negations cancel out (NoT paper, footnote to 5.3).
    """
    selectors = cfg.unlearn["not"].layers
    chosen = list(selectors) if selectors else default_negation_layers(cfg.model.name)
    names = resolve_layers(model, chosen)
    for conv, norm in conv_norm_pairs(model, names):
        LOG.warning("NoT negates %s and the normalization %s after it: "
                    "their negations cancel out", conv, norm)
    return names


@dataclass(frozen=True)
class MethodSpec:
    """One method run: its report label, the method name and its extra arguments."""

    label: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)


def method_specs(cfg: DictConfig) -> list[MethodSpec]:
    """Expand ``unlearn.methods``: reset methods run once per ``unlearn.tis.gammas``."""
    check_methods(list(cfg.unlearn.methods))
    gammas = [float(g) for g in cfg.unlearn.tis.gammas]
    specs = []
    for name in cfg.unlearn.methods:
        if name in RESET_METHODS:
            specs.extend(MethodSpec(name if len(gammas) == 1 else f"{name}@{g:g}", name,
                                    {"gamma": g}) for g in gammas)
        else:
            specs.append(MethodSpec(name, name))
    return specs


def make_strategy(
    spec: MethodSpec, cfg: DictConfig, targets: Targets, model: torch.nn.Module,
    curvature: tuple[dict, dict] | None = None, limits: dict[int, int] | None = None,
) -> UnlearningStrategy:
    """The strategy of one method run for one request.

    Parameters
    ----------
    curvature : tuple of dicts, optional
        ``(h, h')`` for the reset methods (TIS, RandomReset).
    limits : dict of int to int, optional
        Per node id, the most examples a reply may claim (see ``TrainOutcome.limits``).

    Raises
    ------
    ValueError
        For an unknown method name or layer selector, or a reset method without
        curvature statistics (one line).
    """
    check_methods([spec.name])
    cls = METHODS[spec.name]
    common = {"targets": targets, "settings": settings(cfg), "seed": int(cfg.seed),
              "fraction_train": float(cfg.train.fraction_train), "limits": limits,
              "aggregator": aggregator(cfg)}
    if cls is NoT:
        return NoT(**common, negated=negation_layers(cfg, model))
    if spec.name in RESET_METHODS:
        if curvature is None:
            raise ValueError(f"{spec.name} needs the clients' curvature statistics")
        return cls(**common, curvature=curvature, gamma=float(spec.options["gamma"]),
                   trim_rounds=int(cfg.unlearn.tis.trim_rounds))
    return cls(**common)
