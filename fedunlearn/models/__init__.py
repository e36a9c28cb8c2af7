"""Models (NoT CNN, ResNet-18, ViTs) and layer selection for negation and resets."""

from fedunlearn.models.cnn import NoTCNN
from fedunlearn.models.registry import (
    MODELS,
    Layer,
    ModelSpec,
    Selector,
    build_model,
    conv_norm_pairs,
    default_negation_layers,
    layers,
    resolve_layers,
    seeded_model,
)

__all__ = [
    "MODELS",
    "Layer",
    "ModelSpec",
    "NoTCNN",
    "Selector",
    "build_model",
    "conv_norm_pairs",
    "default_negation_layers",
    "layers",
    "resolve_layers",
    "seeded_model",
]
