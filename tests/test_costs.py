"""Cost figures: MAC counts against hand counts and published numbers, remaining MACs, params."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prune_cli.costs import count_flops, param_counts, remaining_flops
from prune_cli.models import LeNet300100, cifar_vgg, resnet20, resnet56


def test_linear_macs_by_hand() -> None:
    model = LeNet300100((1, 8, 8), 10)
    flops = count_flops(model, (1, 8, 8))
    assert flops == {"fc1": 64 * 300, "fc2": 300 * 100, "fc": 100 * 10, "total": 50_200}


def test_conv_macs_by_hand() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1, stride=2)
    )
    flops = count_flops(model, (3, 10, 10))
    # out channels × out pixels × (in channels × kernel area); BN and ReLU are not counted
    assert flops["0"] == 8 * 10 * 10 * 3 * 3 * 3
    assert flops["3"] == 4 * 5 * 5 * 8
    assert flops["total"] == flops["0"] + flops["3"]
    assert set(flops) == {"0", "3", "total"}


@pytest.mark.parametrize(("factory", "published"), [(resnet20, 41e6), (resnet56, 125e6)])
def test_resnet_macs_match_published(factory, published: float) -> None:
    flops = count_flops(factory(), (3, 32, 32))
    assert flops["total"] == pytest.approx(published, rel=0.03)
    assert flops["total"] == sum(v for k, v in flops.items() if k != "total")


def test_exact_macs() -> None:
    assert count_flops(resnet20(), (3, 32, 32))["total"] == 40_551_040
    assert count_flops(resnet56(), (3, 32, 32))["total"] == 125_485_696
    assert count_flops(cifar_vgg(16), (3, 32, 32))["total"] == 313_201_664


def test_remaining_flops() -> None:
    per_module = count_flops(resnet20(), (3, 32, 32))
    layers = [k for k in per_module if k != "total"]
    assert remaining_flops(per_module, {}) == per_module["total"]
    half = remaining_flops(per_module, dict.fromkeys(layers, 0.5))
    assert half == pytest.approx(per_module["total"] / 2, abs=1)
    # parameter names are accepted too, and absent layers stay dense
    only_fc = remaining_flops(per_module, {"fc.weight": 0.0})
    assert only_fc == per_module["total"] - per_module["fc"]


def test_restores_each_modules_mode() -> None:
    model = resnet20().train()
    model.layer2.eval()
    count_flops(model, (3, 32, 32))
    assert model.training and model.layer1.training and model.fc.training
    assert not model.layer2.training and not model.layer2[0].bn1.training
    model.eval()
    count_flops(model, (3, 32, 32))
    assert not any(m.training for m in model.modules())


def test_does_not_touch_batchnorm_statistics() -> None:
    model = resnet20().train()
    before = model.bn1.running_mean.clone(), int(model.bn1.num_batches_tracked)
    count_flops(model, (3, 32, 32))
    assert torch.equal(model.bn1.running_mean, before[0])
    assert int(model.bn1.num_batches_tracked) == before[1]


def test_param_counts_dense_and_masked() -> None:
    model = LeNet300100((1, 8, 8), 10)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    total = 64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    prunable = 64 * 300 + 300 * 100 + 100 * 10
    dense = param_counts(model)
    assert dense == {
        "total_params": total,
        "prunable_params": prunable,
        "unpruned_params": total,
        "nonzero_params": total,
    }
    mask = torch.ones(300, 64)
    mask[:, :32] = 0
    by_param = param_counts(model, {"fc1.weight": mask})
    by_module = param_counts(model, {"fc1": mask})
    assert by_param == by_module
    assert by_param["unpruned_params"] == by_param["nonzero_params"] == total - 300 * 32
    assert by_param["total_params"] == total and by_param["prunable_params"] == prunable


def test_param_counts_of_resnet() -> None:
    counts = param_counts(resnet56())
    assert counts["total_params"] == 853_018
    assert counts["prunable_params"] == 848_944


class _Mixed(nn.Module):
    """Grouped, strided, dilated and transposed convolutions, a 1-d and a 3-d convolution, a
    linear layer on a sequence and one layer called twice: every case of the MAC formulas."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4, bias=False)
        self.up = nn.ConvTranspose2d(8, 6, 4, stride=2, padding=1, groups=2)
        self.line = nn.Conv1d(6, 5, 3)
        self.cube = nn.Conv3d(1, 2, (2, 3, 3))
        self.seq = nn.Linear(12, 7)
        self.twice = nn.Linear(7, 7)

    def forward(self, x):
        x = self.up(self.grouped(self.stem(x)))  # (1, 6, 12, 12)
        y = self.line(x.flatten(2)[..., :40])  # (1, 5, 38)
        z = self.cube(x[:, :4].unsqueeze(1))  # (1, 2, 3, 10, 10)
        s = self.twice(self.twice(self.seq(x[:, :, 0, :])))  # a (1, 6, 12) sequence
        return y.sum() + z.sum() + s.sum()


@pytest.mark.parametrize(
    ("factory", "shape"),
    [
        (lambda: LeNet300100((1, 8, 8), 10), (1, 8, 8)),
        (resnet20, (3, 32, 32)),
        (lambda: cifar_vgg(11), (3, 32, 32)),
        (_Mixed, (3, 12, 12)),
    ],
)
def test_hooks_count_what_torchs_flop_counter_counts(factory, shape) -> None:
    """count_flops counts with forward hooks (FlopCounterMode imports torch's compiler stack,
    seconds of a dry run); both must agree on every layer."""
    from torch.utils.flop_counter import FlopCounterMode

    model = factory().eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, *shape))
    by_module = counter.get_flop_counts()
    root = type(model).__name__
    ours = count_flops(model, shape)
    theirs = {name: sum(by_module.get(f"{root}.{name}", {}).values()) // 2 for name in ours}
    theirs["total"] = sum(v for k, v in theirs.items() if k != "total")
    assert ours == theirs
    assert all(v > 0 for v in ours.values())
