"""Built-in models: shapes, parameter counts, option-A shortcuts, layouts, training, compilation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prune_cli.models import (
    CifarResNet,
    LeNet300100,
    PadShortcut,
    cifar_vgg,
    resnet20,
    resnet32,
    resnet44,
    resnet56,
    resnet110,
)
from prune_cli.models.cifar_resnet import cifar_resnet

CIFAR = (3, 32, 32)

# name -> (factory, input shape of one example)
MODELS = {
    "lenet_mnist": (lambda: LeNet300100((1, 28, 28), 10), (1, 28, 28)),
    "lenet_digits": (lambda: LeNet300100((1, 8, 8), 10), (1, 8, 8)),
    "resnet20": (resnet20, CIFAR),
    "resnet32": (resnet32, CIFAR),
    "resnet44": (resnet44, CIFAR),
    "resnet56": (resnet56, CIFAR),
    "resnet110": (resnet110, CIFAR),
    "vgg11": (lambda: cifar_vgg(11), CIFAR),
    "vgg13": (lambda: cifar_vgg(13), CIFAR),
    "vgg16": (lambda: cifar_vgg(16), CIFAR),
    "vgg19": (lambda: cifar_vgg(19), CIFAR),
    "vgg16_nobn": (lambda: cifar_vgg(16, batch_norm=False), CIFAR),
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_forward_shape(name: str) -> None:
    factory, shape = MODELS[name]
    model = factory()
    assert model(torch.randn(2, *shape)).shape == (2, 10)


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        # He et al. 2016, table 6: 0.27M, 0.46M, 0.66M, 0.85M, 1.7M
        (resnet20, 269_722),
        (resnet32, 464_154),
        (resnet44, 658_586),
        (resnet56, 853_018),
        (resnet110, 1_727_962),
        (lambda: cifar_vgg(16), 14_728_266),
        (lambda: LeNet300100((1, 28, 28), 10), 266_610),
    ],
)
def test_parameter_counts(factory, expected: int) -> None:
    assert n_params(factory()) == expected


@pytest.mark.parametrize(
    ("depth", "millions", "digits"),
    [(20, 0.27, 2), (32, 0.46, 2), (44, 0.66, 2), (56, 0.85, 2), (110, 1.7, 1)],
)
def test_resnet_parameter_counts_match_paper(depth: int, millions: float, digits: int) -> None:
    # the paper's table rounds to the digits it prints
    assert round(n_params(cifar_resnet(depth)) / 1e6, digits) == millions


def test_num_classes_and_width() -> None:
    model = cifar_resnet(20, num_classes=100, width=32)
    assert model.fc.in_features == 128
    assert model(torch.randn(1, *CIFAR)).shape == (1, 100)
    assert cifar_vgg(11, num_classes=7)(torch.randn(1, *CIFAR)).shape == (1, 7)


def test_resnet_structure_and_option_a_shortcut() -> None:
    model = resnet56()
    assert [len(stage) for stage in (model.layer1, model.layer2, model.layer3)] == [9, 9, 9]
    pads = [m for m in model.modules() if isinstance(m, PadShortcut)]
    # one downsampling shortcut at the start of layer2 and of layer3
    assert len(pads) == 2
    assert model.layer2[0].shortcut is pads[0] and model.layer3[0].shortcut is pads[1]
    assert all(sum(p.numel() for p in pad.parameters()) == 0 for pad in pads)
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in model.modules())
    for name in ("conv1", "bn1", "conv2", "bn2", "shortcut"):
        assert hasattr(model.layer1[0], name)


def test_pad_shortcut_subsamples_and_zero_pads() -> None:
    x = torch.randn(2, 16, 8, 8)
    y = PadShortcut(16, 32, stride=2)(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert not y[:, :8].any() and not y[:, 24:].any()


@pytest.mark.parametrize("depth", [0, 2, 19, 21, 57])
def test_resnet_depth_validation(depth: int) -> None:
    with pytest.raises(ValueError, match=f"depth={depth}"):
        cifar_resnet(depth)


def test_vgg_depth_validation() -> None:
    with pytest.raises(ValueError, match="depth=15"):
        cifar_vgg(15)


def test_vgg_follows_openlth() -> None:
    model = cifar_vgg(16)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256] + [512] * 6
    assert all(c.bias is not None for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 4
    assert isinstance(model.fc, nn.Linear) and model.fc.in_features == 512


def test_classifier_is_named_fc() -> None:
    for factory, _ in MODELS.values():
        assert isinstance(factory().get_submodule("fc"), nn.Linear)


@pytest.mark.parametrize("name", ["lenet_mnist", "resnet20", "vgg11"])
def test_channels_last_matches_contiguous(name: str) -> None:
    factory, shape = MODELS[name]
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(4, *shape)
    expected = model(x)
    model = model.to(memory_format=torch.channels_last)
    got = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["lenet_mnist", "resnet20", "vgg11"])
def test_bf16_autocast_forward(name: str) -> None:
    factory, shape = MODELS[name]
    model = factory()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 10) and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("name", ["lenet_digits", "resnet20", "vgg11"])
def test_forward_traces_as_one_graph(name: str) -> None:
    # aot_eager checks tracing (fullgraph: no graph breaks) without the cost of code generation
    factory, shape = MODELS[name]
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(2, *shape)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


@pytest.mark.parametrize("name", ["lenet_digits", "resnet20", "resnet110", "vgg16"])
def test_trains_a_few_sgd_steps(name: str) -> None:
    factory, shape = MODELS[name]
    torch.manual_seed(0)
    model = factory().train()
    x, y = torch.randn(4, *shape), torch.randint(0, 10, (4,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(p.grad is not None for p in model.parameters())


def test_resnet_is_a_cifar_resnet() -> None:
    model = cifar_resnet(32)
    assert isinstance(model, CifarResNet) and model.depth == 32


@pytest.mark.parametrize(
    ("node", "shape"),
    [
        ({"_target_": "prune_cli.models.resnet56", "num_classes": 10}, CIFAR),
        ({"_target_": "prune_cli.models.cifar_vgg", "depth": 16}, CIFAR),
        (
            {
                "_target_": "prune_cli.models.LeNet300100",
                "input_shape": [1, 8, 8],
                "num_classes": 10,
            },
            (1, 8, 8),
        ),
    ],
)
def test_built_by_hydra_instantiate(node: dict, shape: tuple[int, ...]) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    model = instantiate(OmegaConf.create(node))
    assert model(torch.randn(2, *shape)).shape == (2, 10)
