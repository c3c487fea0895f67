"""Masks: exact counts, criteria, exclusions, the prune statistics and the zero invariant."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prune_cli.config import ConfigError
from prune_cli.models.cifar_resnet import resnet20
from prune_cli.models.lenet import LeNet300100
from prune_cli.pruning import Masks, prunable_parameters


def lenet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return LeNet300100([1, 8, 8], 10)


def test_prunable_are_conv_and_linear_weights_only():
    names = set(prunable_parameters(resnet20()))
    assert "conv1.weight" in names and "fc.weight" in names
    assert not any("bn" in n or n.endswith("bias") for n in names)


def test_global_magnitude_removes_exactly_the_smallest():
    model = lenet()
    masks = Masks(prunable_parameters(model))
    before = torch.cat([p.detach().abs().flatten() for p in masks.params.values()])
    stats = masks.prune(0.2, "global_magnitude")
    k = round(0.2 * before.numel())
    assert stats["removed"] == k == masks.total() - masks.alive()
    kept = torch.cat([p.detach().abs().flatten() for p in masks.params.values()])
    # every removed weight was no larger than every kept one
    assert before[kept == 0].max() <= before[kept != 0].min()


def test_iterative_density_follows_rate_power_k():
    masks = Masks(prunable_parameters(lenet()))
    for k in range(1, 8):
        masks.prune(0.2, "global_magnitude")
        assert abs(masks.alive() - masks.total() * 0.8**k) <= k  # rounding of one weight per level


def test_layerwise_gives_every_tensor_the_same_density():
    masks = Masks(prunable_parameters(resnet20()))
    masks.prune(0.5, "layerwise_magnitude")
    masks.prune(0.5, "layerwise_magnitude")
    for name, density in masks.layer_density().items():
        n = masks.masks[name + ".weight"].numel()
        assert abs(density - 0.25) <= 2 / n, name


def test_random_same_counts_other_positions_reproducible():
    def pruned(criterion, seed):
        masks = Masks(prunable_parameters(lenet()))
        masks.prune(0.3, criterion, torch.Generator().manual_seed(seed))
        return masks.state_dict()

    mag, r1, r1b, r2 = (
        pruned("global_magnitude", 0),
        pruned("random", 1),
        pruned("random", 1),
        pruned("random", 2),
    )
    for n in mag:
        assert int(mag[n].sum()) == int(r1[n].sum()) == int(r2[n].sum())
        assert torch.equal(r1[n], r1b[n])
    assert any(not torch.equal(mag[n], r1[n]) for n in mag)
    assert any(not torch.equal(r1[n], r2[n]) for n in mag)


def test_d1_is_relative_change_over_sqrt_s():
    masks = Masks(prunable_parameters(lenet()))
    theta = torch.cat([p.detach().flatten().clone() for p in masks.params.values()])
    stats = masks.prune(0.2, "global_magnitude")
    theta_p = torch.cat([p.detach().flatten() for p in masks.params.values()])
    expected = (theta - theta_p).norm() / (theta.norm() * math.sqrt(0.2))
    assert stats["d1"] == pytest.approx(float(expected), rel=1e-5)


def test_exclusions():
    model = resnet20()
    params = prunable_parameters(model, ["fc"])
    assert "fc.weight" not in params and "conv1.weight" in params
    with pytest.raises(ConfigError, match="model.prune_exclude: classifier names no"):
        prunable_parameters(model, ["classifier"])


def test_masks_survive_momentum_and_weight_decay():
    model = lenet()
    masks = Masks(prunable_parameters(model))
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-2)
    masks.prune(0.6, "global_magnitude")
    for _ in range(5):
        loss = model(torch.randn(16, 1, 8, 8)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert masks.violations() > 0  # the optimizer does bring pruned weights back ...
        masks.apply()
        assert masks.violations() == 0  # ... and re-applying the masks removes them again


def test_mask_state_roundtrip():
    masks = Masks(prunable_parameters(lenet()))
    masks.prune(0.5)
    other = Masks(prunable_parameters(lenet(1)))
    other.load_state_dict(masks.state_dict())
    assert other.alive() == masks.alive()
    assert all(v.dtype == torch.bool for v in masks.state_dict().values())
