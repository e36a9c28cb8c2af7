"""Model registry, deterministic construction, and layer listing / selection.

Layers are what NoT negates and what the per-layer TIS reset works on: "the first
layer", "conv_proj", "layer 3". This module turns such selectors into parameter names.

An int selector counts layers here (modules that own parameters: ``0`` is ``conv1``, i.e.
``conv1.weight`` and ``conv1.bias``), whereas the NoT paper's code counts parameters
(its index 0 is ``conv1.weight`` alone). NoT's defaults are therefore parameter names.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.instancenorm import _InstanceNorm

from fedunlearn.models.cnn import build_cnn, build_cnn_nonorm
from fedunlearn.models.resnet import build_resnet18
from fedunlearn.models.vit import build_vit_b16, build_vit_tiny

Selector = str | int


@dataclass(frozen=True)
class ModelSpec:
    """A registered model.

    Attributes
    ----------
    build
        ``build(in_shape, num_classes, **options) -> nn.Module``.
    negation_layers
        NoT's default parameters to negate, as selectors for :func:`resolve_layers`.
    """

    build: Callable[..., nn.Module]
    negation_layers: tuple[Selector, ...]


# NoT negates the WEIGHT of the first layer only (paper, Section 5.3: "we only negate the
# weights of the first layer"; its Section 11 code negates parameter index 0, the weight,
# not the bias): conv1.weight of the CNNs and ResNet-18, the patch projection's weight of
# the ViTs (Section 14). Names, not the int 0, because an int selects a whole layer here.
MODELS: dict[str, ModelSpec] = {
    "cnn": ModelSpec(build_cnn, ("conv1.weight",)),
    "cnn_nonorm": ModelSpec(build_cnn_nonorm, ("conv1.weight",)),
    "resnet18": ModelSpec(build_resnet18, ("conv1.weight",)),
    "vit_b16": ModelSpec(build_vit_b16, ("conv_proj.weight",)),
    "vit_tiny": ModelSpec(build_vit_tiny, ("conv_proj.weight",)),
}

# Normalizations are invariant to the sign of their input up to the sign of their affine
# parameters, so negating them together with the convolution right before undoes the
# negation (NoT, footnote in Section 5.3). RMSNorm has no shift but cancels all the same.
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, _BatchNorm, _InstanceNorm)


class Layer(NamedTuple):
    """A module that owns parameters directly, as listed by :func:`layers`.

    Attributes
    ----------
    index
        Position in :func:`layers` (what an int selector refers to).
    name
        Module name from ``named_modules()`` (``""`` for the root module).
    type
        The module's class name, e.g. ``"Conv2d"``.
    params
        Full names of the parameters the module owns directly.
    """

    index: int
    name: str
    type: str
    params: list[str]


def _spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None


def build_model(
    name: str, num_classes: int, in_shape: tuple[int, int, int], **options: Any
) -> nn.Module:
    """Build a registered model with fresh random weights (from the global RNG).

    Parameters
    ----------
    name
        A key of :data:`MODELS`: ``cnn``, ``cnn_nonorm``, ``resnet18``, ``vit_b16``,
        ``vit_tiny``.
    num_classes
        Number of output logits.
    in_shape
        Input shape ``(C, H, W)`` of one sample.
    **options
        Model-specific keyword options (e.g. ``small_input`` for ``resnet18``,
        ``channels``/``hidden`` for the CNNs); unknown ones raise ``ValueError``.

    Returns
    -------
    torch.nn.Module
        The model, on the CPU, in training mode.

    Raises
    ------
    ValueError
        Unknown model or option, or an ``in_shape`` the model cannot take.
    """
    spec = _spec(name)
    in_shape = tuple(int(d) for d in in_shape)  # Hydra hands over ListConfig
    if len(in_shape) != 3 or min(in_shape) < 1:
        raise ValueError(f"in_shape must be (C, H, W) with positive sizes, got {in_shape}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    accepted = [
        p.name
        for p in inspect.signature(spec.build).parameters.values()
        if p.kind is p.KEYWORD_ONLY
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"model {name!r} has no option(s) {', '.join(unknown)}; "
            f"options: {', '.join(accepted) or 'none'}"
        )
    return spec.build(in_shape, num_classes, **options)


def seeded_model(
    name: str, num_classes: int, in_shape: tuple[int, int, int], seed: int, **options: Any
) -> nn.Module:
    """Build a model whose initial weights depend only on ``seed``.

    The seed is applied inside ``torch.random.fork_rng``, so the caller's global RNG
    state is the same afterwards as before.

    Parameters
    ----------
    name, num_classes, in_shape, **options
        As in :func:`build_model`.
    seed
        Seed of the weight initialisation.

    Returns
    -------
    torch.nn.Module
        The model, on the CPU (initialisation always draws from the CPU generator).
    """
    # Construction draws from the CPU generator only; torch.manual_seed would also
    # reseed every CUDA generator, which fork_rng(devices=[]) would not restore.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return build_model(name, num_classes, in_shape, **options)


def default_negation_layers(model_name: str) -> list[Selector]:
    """NoT's default parameters to negate for a registered model: the first layer's weight.

    NoT negates ``theta'_l = -theta_l`` for ``l`` in ``L_neg`` (paper, Algorithm 1) with
    ``L_neg`` the weight of the first layer only, not its bias (Section 5.3; the code of
    Section 11 negates parameter index 0).

    Parameters
    ----------
    model_name
        A key of :data:`MODELS`.

    Returns
    -------
    list of str or int
        Selectors for :func:`resolve_layers`: ``["conv1.weight"]`` for the CNNs and
        ResNet-18, ``["conv_proj.weight"]`` for the ViTs.
    """
    return list(_spec(model_name).negation_layers)


def layers(model: nn.Module) -> list[Layer]:
    """List the modules that own parameters directly, in registration order.

    A layer is any module with parameters of its own (``recurse=False``): leaf modules
    like ``conv1`` or ``fc2`` but also containers with a parameter attribute, such as a
    ViT's root module (``class_token``, layer name ``""``), its ``encoder``
    (``pos_embedding``) and ``MultiheadAttention`` (``in_proj_weight``; its ``out_proj``
    is a layer of its own).

    The order is ``named_modules()`` order, i.e. registration order, which is the
    order of ``named_parameters()`` as well. For the models here it is forward order,
    with one exception: a ViT's ``class_token`` (owned by the root) comes before
    ``conv_proj``, consistent with the NoT paper calling ViT's ``conv_proj`` layer 1.

    Parameters
    ----------
    model
        Any module.

    Returns
    -------
    list of Layer
        ``(index, module name, module class name, full parameter names)``.
    """
    seen: set[int] = set()
    result: list[Layer] = []
    for module_name, module in model.named_modules():
        params = []
        for param_name, param in module.named_parameters(recurse=False):
            # A parameter shared between modules belongs to the first, as in
            # named_parameters().
            if id(param) in seen:
                continue
            seen.add(id(param))
            params.append(f"{module_name}.{param_name}" if module_name else param_name)
        if params:
            result.append(Layer(len(result), module_name, type(module).__name__, params))
    return result


def _unknown_selector(model: nn.Module, selector: Selector, known: Sequence[str]) -> ValueError:
    close = difflib.get_close_matches(str(selector), known, n=3)
    layer_names = [layer.name or "<root>" for layer in layers(model)]
    shown = ", ".join(layer_names[:8]) + (", ..." if len(layer_names) > 8 else "")
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ValueError(
        f"unknown layer selector {selector!r} for {type(model).__name__}{hint} "
        f"(layer indices 0..{len(layer_names) - 1}; layers: {shown})"
    )


def resolve_layers(model: nn.Module, selectors: Sequence[Selector]) -> list[str]:
    """Turn layer selectors into parameter names.

    Parameters
    ----------
    model
        The model the selectors refer to.
    selectors
        Each one is an int, an index into :func:`layers` (negative counts from the end,
        so ``-1`` is the classifier) selecting every parameter of that layer, weight and
        bias: it counts layers, unlike the NoT paper's code, whose index counts parameters
        (its ``0`` is ``"conv1.weight"`` here); a module name, selecting all parameters
        of that module and its submodules (``"conv1"``, ``"conv_proj"``,
        ``"encoder.layers.encoder_layer_0"``); or a full parameter name
        (``"conv1.weight"``, ``"class_token"``).

    Returns
    -------
    list of str
        The selected parameter names, without duplicates, in ``named_parameters()``
        order.

    Raises
    ------
    ValueError
        A selector matches nothing (the message lists a few valid layer names).
    """
    all_layers = layers(model)
    params = [name for name, _ in model.named_parameters()]
    modules = dict(model.named_modules())
    selected: set[str] = set()
    for selector in selectors:
        # bool is an int subclass: True must not silently mean layer 1.
        if isinstance(selector, int) and not isinstance(selector, bool):
            if not -len(all_layers) <= selector < len(all_layers):
                raise _unknown_selector(model, selector, [])
            selected.update(all_layers[selector].params)
        elif isinstance(selector, str) and selector in params:
            selected.add(selector)
        elif isinstance(selector, str) and selector and selector in modules:
            prefix = f"{selector}."
            owned = [name for name in params if name.startswith(prefix)]
            if not owned:
                raise ValueError(f"module {selector!r} has no parameters to select")
            selected.update(owned)
        else:
            raise _unknown_selector(model, selector, [*params, *modules])
    return [name for name in params if name in selected]


def conv_norm_pairs(model: nn.Module, param_names: Sequence[str]) -> list[tuple[str, str]]:
    """Find convolutions selected together with the normalization right after them.

    Negating a convolution and the normalization layer that follows it cancels out
    (NoT, footnote to Section 5.3): ``(-N)(-C)(x) = N(C(x))``. Callers warn when this
    returns anything.

    Parameters
    ----------
    model
        The model.
    param_names
        Selected parameter names (e.g. from :func:`resolve_layers`).

    Returns
    -------
    list of tuple of str
        ``(conv module name, normalization module name)`` for each convolution whose
        next layer in :func:`layers` order is a normalization, with all parameters of
        both selected.
    """
    chosen = set(param_names)
    all_layers = layers(model)
    pairs = []
    for conv, norm in zip(all_layers, all_layers[1:], strict=False):
        if (
            isinstance(model.get_submodule(conv.name), _ConvNd)
            and isinstance(model.get_submodule(norm.name), _NORMS)
            and chosen.issuperset(conv.params)
            and chosen.issuperset(norm.params)
        ):
            pairs.append((conv.name, norm.name))
    return pairs
