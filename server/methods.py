"""Build an unlearning strategy by name from the config (layer names resolved here)."""

from __future__ import annotations

import logging

import torch
from omegaconf import DictConfig, OmegaConf

from fedunlearn.models import conv_norm_pairs, default_negation_layers, resolve_layers
from strategies import METHODS, NoT, Settings, Targets, UnlearningStrategy, check_methods

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


def make_strategy(
    name: str, cfg: DictConfig, targets: Targets, model: torch.nn.Module
) -> UnlearningStrategy:
    """The strategy of method ``name`` for one request.

    Raises
    ------
    ValueError
        For an unknown method name or layer selector (one line).
    """
    check_methods([name])
    cls = METHODS[name]
    common = {"targets": targets, "settings": settings(cfg), "seed": int(cfg.seed),
              "fraction_train": float(cfg.train.fraction_train)}
    if cls is NoT:
        return NoT(**common, negated=negation_layers(cfg, model))
    return cls(**common)
