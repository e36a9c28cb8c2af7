"""Model registry, layer listing and layer selection."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedunlearn.models import (
    MODELS,
    build_model,
    conv_norm_pairs,
    default_negation_layers,
    layers,
    resolve_layers,
    seeded_model,
)

SHAPES = [(1, 28, 28), (1, 8, 8), (3, 32, 32), (3, 64, 64)]
SMALL_MODELS = ["cnn", "cnn_nonorm", "resnet18", "vit_tiny"]


@pytest.mark.parametrize("in_shape", SHAPES)
@pytest.mark.parametrize("name", SMALL_MODELS)
def test_output_shape(name: str, in_shape: tuple[int, int, int]) -> None:
    model = build_model(name, 7, in_shape)
    assert model(torch.randn(2, *in_shape)).shape == (2, 7)


def test_vit_b16_forward_at_32() -> None:
    model = build_model("vit_b16", 5, (3, 32, 32)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    assert model.encoder.pos_embedding.shape[1] == (32 // 16) ** 2 + 1


@pytest.mark.parametrize(
    ("in_shape", "message"),
    [((1, 32, 32), "3-channel"), ((3, 40, 40), "patch size 16"), ((3, 32, 48), "square")],
)
def test_vit_b16_rejects_bad_shapes(in_shape: tuple[int, int, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model("vit_b16", 10, in_shape)


def test_resnet18_small_input_stem() -> None:
    model = build_model("resnet18", 10, (1, 32, 32), small_input=True)
    assert (model.conv1.in_channels, model.conv1.kernel_size, model.conv1.stride) == (
        1,
        (3, 3),
        (1, 1),
    )
    assert isinstance(model.maxpool, nn.Identity)
    plain = build_model("resnet18", 10, (1, 32, 32))
    assert (plain.conv1.in_channels, plain.conv1.kernel_size) == (1, (7, 7))
    assert isinstance(plain.maxpool, nn.MaxPool2d)


def test_vit_tiny_one_channel_keeps_conv_proj_name() -> None:
    model = build_model("vit_tiny", 10, (1, 28, 28))
    assert model.conv_proj.in_channels == 1
    names = [name for name, _ in model.named_parameters()]
    assert names[:3] == ["class_token", "conv_proj.weight", "conv_proj.bias"]


@pytest.mark.parametrize(
    ("name", "in_shape", "options", "message"),
    [
        ("nope", (1, 8, 8), {}, "unknown model 'nope'; known: cnn, cnn_nonorm"),
        ("cnn", (1, 2, 2), {}, "at least 4x4"),
        ("cnn", (8, 8), {}, r"\(C, H, W\)"),
        ("cnn", (1, 8, 8), {"widths": 3}, "no option.*widths.*options: channels, hidden"),
        ("vit_tiny", (1, 10, 10), {}, "patch size 4"),
        ("vit_tiny", (1, 8, 8), {"hidden_dim": 30, "num_heads": 4}, "divisible by num_heads"),
    ],
)
def test_build_errors(name: str, in_shape: tuple, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        build_model(name, 10, in_shape, **options)
    assert "\n" not in str(info.value)


def test_cnn_options_change_widths() -> None:
    model = build_model("cnn", 10, (3, 32, 32), channels=[8, 16], hidden=20)
    assert model.conv2.out_channels == 16
    assert model.fc1.in_features == 16 * 8 * 8
    assert model.fc1.out_features == 20


def test_cnn_layers_in_forward_order() -> None:
    model = build_model("cnn", 10, (1, 28, 28))
    assert layers(model) == [
        (0, "conv1", "Conv2d", ["conv1.weight", "conv1.bias"]),
        (1, "norm1", "LayerNorm", ["norm1.weight", "norm1.bias"]),
        (2, "conv2", "Conv2d", ["conv2.weight", "conv2.bias"]),
        (3, "norm2", "LayerNorm", ["norm2.weight", "norm2.bias"]),
        (4, "fc1", "Linear", ["fc1.weight", "fc1.bias"]),
        (5, "fc2", "Linear", ["fc2.weight", "fc2.bias"]),
    ]
    assert model.norm1.normalized_shape == (32, 28, 28)
    assert [layer.name for layer in layers(build_model("cnn_nonorm", 10, (1, 8, 8)))] == [
        "conv1",
        "conv2",
        "fc1",
        "fc2",
    ]


def test_cnn_relus_are_not_in_place() -> None:
    model = build_model("cnn", 10, (1, 8, 8))
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 3
    assert not any(relu.inplace for relu in relus)


def test_vit_layers_include_directly_owned_parameters() -> None:
    listing = layers(build_model("vit_tiny", 10, (3, 8, 8)))
    assert listing[:3] == [
        (0, "", "VisionTransformer", ["class_token"]),
        (1, "conv_proj", "Conv2d", ["conv_proj.weight", "conv_proj.bias"]),
        (2, "encoder", "Encoder", ["encoder.pos_embedding"]),
    ]
    attention = "encoder.layers.encoder_layer_0.self_attention"
    by_name = {layer.name: layer for layer in listing}
    assert by_name[attention].params == [f"{attention}.in_proj_weight", f"{attention}.in_proj_bias"]
    assert by_name[f"{attention}.out_proj"].params == [
        f"{attention}.out_proj.weight",
        f"{attention}.out_proj.bias",
    ]
    assert listing[-1].name == "heads.head"


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_layers_cover_every_parameter_once_in_order(name: str) -> None:
    model = build_model(name, 10, (3, 32, 32))
    listed = [param for layer in layers(model) for param in layer.params]
    assert listed == [param for param, _ in model.named_parameters()]
    assert [layer.index for layer in layers(model)] == list(range(len(layers(model))))


def test_resolve_layers_by_index_name_and_parameter() -> None:
    model = build_model("cnn", 10, (1, 8, 8))
    assert resolve_layers(model, [0]) == ["conv1.weight", "conv1.bias"]
    assert resolve_layers(model, ["conv1"]) == ["conv1.weight", "conv1.bias"]
    assert resolve_layers(model, ["conv1.bias"]) == ["conv1.bias"]
    assert resolve_layers(model, [-1]) == ["fc2.weight", "fc2.bias"]
    # Result follows the model's parameter order, without duplicates.
    assert resolve_layers(model, ["fc2.bias", 0, "conv1.weight", 1]) == [
        "conv1.weight",
        "conv1.bias",
        "norm1.weight",
        "norm1.bias",
        "fc2.bias",
    ]
    assert resolve_layers(model, []) == []


def test_resolve_layers_module_names_select_subtrees() -> None:
    model = build_model("vit_tiny", 10, (1, 8, 8))
    block = "encoder.layers.encoder_layer_0"
    selected = resolve_layers(model, [block])
    assert selected == [
        name for name, _ in model.named_parameters() if name.startswith(block + ".")
    ]
    assert resolve_layers(model, [f"{block}.ln_1"]) == [
        f"{block}.ln_1.weight",
        f"{block}.ln_1.bias",
    ]
    assert resolve_layers(model, ["class_token", 1]) == [
        "class_token",
        "conv_proj.weight",
        "conv_proj.bias",
    ]


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("conv3", "unknown layer selector 'conv3' for NoTCNN; did you mean conv2, conv1"),
        (6, r"unknown layer selector 6 .*layer indices 0\.\.5; layers: conv1, norm1"),
        (-7, "unknown layer selector -7"),
        (True, "unknown layer selector True"),
        ("", "unknown layer selector ''"),
        ("relu1", "'relu1' has no parameters"),
    ],
)
def test_resolve_layers_errors(selector: str | int, message: str) -> None:
    model = build_model("cnn", 10, (1, 8, 8))
    with pytest.raises(ValueError, match=message) as info:
        resolve_layers(model, [selector])
    assert "\n" not in str(info.value)


def test_default_negation_layers() -> None:
    # NoT negates the first layer's weight only, not its bias (paper, Section 5.3; its
    # code negates parameter index 0), which the int selector 0 would not give: it counts
    # layers and takes conv1.bias too.
    assert default_negation_layers("cnn") == ["conv1.weight"]
    assert default_negation_layers("cnn_nonorm") == ["conv1.weight"]
    assert default_negation_layers("resnet18") == ["conv1.weight"]
    assert default_negation_layers("vit_b16") == ["conv_proj.weight"]
    assert default_negation_layers("vit_tiny") == ["conv_proj.weight"]
    for name in SMALL_MODELS:
        model = build_model(name, 10, (3, 32, 32))
        first = resolve_layers(model, default_negation_layers(name))
        assert len(first) == 1 and first[0] in ("conv1.weight", "conv_proj.weight")
        # The weight of the first layer that has a weight (a ViT's class_token comes first).
        owner = next(layer for layer in layers(model) if any(
            p.endswith(".weight") for p in layer.params))
        assert first == [f"{owner.name}.weight"]
    with pytest.raises(ValueError, match="unknown model"):
        default_negation_layers("vgg")
    assert set(MODELS) == {"cnn", "cnn_nonorm", "resnet18", "vit_b16", "vit_tiny"}


def test_conv_norm_pairs() -> None:
    cnn = build_model("cnn", 10, (1, 8, 8))
    assert conv_norm_pairs(cnn, resolve_layers(cnn, [0, 1])) == [("conv1", "norm1")]
    assert conv_norm_pairs(cnn, resolve_layers(cnn, list(range(4)))) == [
        ("conv1", "norm1"),
        ("conv2", "norm2"),
    ]
    assert conv_norm_pairs(cnn, resolve_layers(cnn, [0])) == []
    # Only part of the normalization selected: the negations do not cancel.
    assert conv_norm_pairs(cnn, resolve_layers(cnn, ["conv1", "norm1.weight"])) == []
    nonorm = build_model("cnn_nonorm", 10, (1, 8, 8))
    assert conv_norm_pairs(nonorm, resolve_layers(nonorm, [0, 1])) == []
    resnet = build_model("resnet18", 10, (3, 32, 32))
    assert conv_norm_pairs(resnet, resolve_layers(resnet, ["conv1", "bn1"])) == [("conv1", "bn1")]


@pytest.mark.parametrize("name", ["cnn", "resnet18", "vit_tiny"])
def test_seeded_model_is_deterministic_and_leaves_global_rng(name: str) -> None:
    options = {"small_input": True} if name == "resnet18" else {}
    before = torch.get_rng_state()
    first = seeded_model(name, 10, (1, 8, 8), seed=3, **options).state_dict()
    second = seeded_model(name, 10, (1, 8, 8), seed=3, **options).state_dict()
    other = seeded_model(name, 10, (1, 8, 8), seed=4, **options).state_dict()
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not all(torch.equal(first[key], other[key]) for key in first)


# BackPACK hooks every module; torch warns since the input needs no gradient.
@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_cnn_nonorm_works_with_backpack() -> None:
    backpack = pytest.importorskip("backpack")
    from backpack.extensions import DiagGGNExact

    model = backpack.extend(seeded_model("cnn_nonorm", 10, (1, 8, 8), seed=0))
    loss_fn = backpack.extend(nn.CrossEntropyLoss())
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    with backpack.backpack(DiagGGNExact()):
        loss_fn(model(x), y).backward()
    for param in model.parameters():
        assert param.diag_ggn_exact.shape == param.shape
        assert torch.all(param.diag_ggn_exact >= 0)
