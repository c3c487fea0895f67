"""Unstructured pruning (MaskPruner): exact counts, criteria, scopes, exclusions, the prune
statistics, the zero invariant, and building pruners from the pruning presets."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from conftest import compose
from torch import nn

from prune_cli.errors import ConfigError, CorruptFileError
from prune_cli.models.cifar_resnet import resnet20
from prune_cli.models.lenet import LeNet300100
from prune_cli.pruning import (
    MaskPruner,
    Masks,
    Network,
    build_pruner,
    criteria,
    prunable_parameters,
)


def lenet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return LeNet300100([1, 8, 8], 10)


def attached(
    model: nn.Module,
    rate: float | None = 0.2,
    criterion=criteria.magnitude,
    scope: str = "global",
    levels: int | None = 1,
    target_sparsity: float | None = None,
    input_shape: tuple[int, ...] = (1, 8, 8),
) -> MaskPruner:
    """A MaskPruner of ``criterion`` bound to ``model``."""
    pruner = MaskPruner(
        "test", criterion, scope=scope, rate=rate, levels=levels, target_sparsity=target_sparsity
    )
    pruner.attach(Network(model, list(input_shape), lambda: type(model)()))
    return pruner


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_prunable_are_conv_and_linear_weights_only():
    names = set(prunable_parameters(resnet20()))
    assert "conv1.weight" in names and "fc.weight" in names
    assert not any("bn" in n or n.endswith("bias") for n in names)


def test_global_magnitude_removes_exactly_the_smallest():
    pruner = attached(lenet(), 0.2)
    masks = pruner.masks
    before = torch.cat([p.detach().abs().flatten().clone() for p in masks.params.values()])
    stats = pruner.prune(1, gen())
    k = round(0.2 * before.numel())
    assert stats["removed"] == k == masks.total() - masks.alive()
    assert stats["s"] == 0.2
    assert stats["density"] == pytest.approx(masks.alive() / masks.total())
    kept = torch.cat([p.detach().abs().flatten() for p in masks.params.values()])
    # every removed weight was no larger than every kept one
    assert before[kept == 0].max() <= before[kept != 0].min()


def test_iterative_density_follows_rate_power_k():
    pruner = attached(lenet(), 0.2, levels=7)
    masks = pruner.masks
    assert pruner.levels == 7 and pruner.fraction == 0.2
    for k in range(1, 8):
        pruner.prune(k, gen(k))
        assert abs(masks.alive() - masks.total() * 0.8**k) <= k  # rounding of one weight per level


def test_levels_rate_target_sparsity_exactly_two():
    # levels + target: the per-level fraction that reaches the target in that many levels
    pruner = MaskPruner("t", criteria.magnitude, levels=3, target_sparsity=0.875)
    assert pruner.levels == 3 and pruner.fraction == pytest.approx(0.5)
    # rate + target: the fewest levels of that rate that reach it
    pruner = MaskPruner("t", criteria.magnitude, rate=0.5, target_sparsity=0.875)
    assert pruner.levels == 3 and pruner.fraction == 0.5
    # one-shot = one level straight to the target
    one = attached(lenet(), rate=None, levels=1, target_sparsity=0.9)
    stats = one.prune(1, gen())
    assert one.levels == 1 and stats["s"] == pytest.approx(0.9)
    assert one.masks.alive() == one.masks.total() - round(0.9 * one.masks.total())
    for given in ({"rate": 0.2}, {"rate": 0.2, "levels": 3, "target_sparsity": 0.9}, {}):
        with pytest.raises(ConfigError, match="exactly two of pruning.rate, pruning.levels"):
            MaskPruner("t", criteria.magnitude, **given)
    with pytest.raises(ConfigError, match="pruning.scope=blockwise"):
        MaskPruner("t", criteria.magnitude, scope="blockwise", rate=0.2, levels=1)


def test_layerwise_gives_every_tensor_the_same_density():
    pruner = attached(resnet20(), 0.5, scope="layerwise", levels=2, input_shape=(3, 32, 32))
    pruner.prune(1, gen(1))
    pruner.prune(2, gen(2))
    masks = pruner.masks
    for name, density in masks.layer_density().items():
        n = masks.masks[name + ".weight"].numel()
        assert abs(density - 0.25) <= 2 / n, name


def test_layerwise_removes_the_smallest_of_each_tensor():
    pruner = attached(lenet(), 0.3, scope="layerwise")
    before = {n: p.detach().abs().clone() for n, p in pruner.masks.params.items()}
    pruner.prune(1, gen())
    for n, m in pruner.masks.state_dict().items():
        assert int((~m).sum()) == round(0.3 * m.numel()), n
        assert before[n][~m].max() <= before[n][m].min(), n


def test_random_same_counts_other_positions_reproducible():
    def pruned(criterion, seed):
        pruner = attached(lenet(), 0.3, criterion=criterion)
        pruner.prune(1, gen(seed))
        return pruner.masks.state_dict()

    mag, r1, r1b, r2 = (
        pruned(criteria.magnitude, 0),
        pruned(criteria.random, 1),
        pruned(criteria.random, 1),
        pruned(criteria.random, 2),
    )
    for n in mag:
        assert int(mag[n].sum()) == int(r1[n].sum()) == int(r2[n].sum())
        assert torch.equal(r1[n], r1b[n])
    assert any(not torch.equal(mag[n], r1[n]) for n in mag)
    assert any(not torch.equal(r1[n], r2[n]) for n in mag)


def test_random_keeps_magnitudes_per_layer_counts_over_levels():
    """At every level, random pruning takes from each tensor as many of its alive weights as
    global magnitude pruning takes at that level (of the same network), and never an already
    pruned one."""
    mag = attached(lenet(), 0.3, levels=3)
    rnd = attached(lenet(), 0.3, criterion=criteria.random, levels=3)
    for level in (1, 2, 3):
        mag_before = {n: int(m.sum()) for n, m in mag.masks.state_dict().items()}
        rnd_before = rnd.masks.state_dict()
        mag_stats, rnd_stats = mag.prune(level, gen(level)), rnd.prune(level, gen(level))
        assert mag_stats["removed"] == rnd_stats["removed"]
        rnd_after = rnd.masks.state_dict()
        assert all(not (rnd_after[n] & ~rnd_before[n]).any() for n in rnd_after)  # none revived
        assert rnd.masks.violations() == 0
        if level == 1:  # from the same dense weights: exactly magnitude's count per tensor
            for n, m in mag.masks.state_dict().items():
                assert mag_before[n] - int(m.sum()) == int(rnd_before[n].sum() - rnd_after[n].sum())
    assert rnd.criterion_label == "global_random" and mag.criterion_label == "global_magnitude"


def test_d1_is_relative_change_over_sqrt_s():
    model = lenet()
    pruner = attached(model, 0.2)
    masks = pruner.masks
    theta = torch.cat([p.detach().flatten().clone() for p in masks.params.values()])
    every = [p for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] in ("weight", "bias")]
    theta_all = torch.cat([p.detach().flatten().clone() for p in every])
    stats = pruner.prune(1, gen())
    theta_p = torch.cat([p.detach().flatten() for p in masks.params.values()])
    expected = (theta - theta_p).norm() / (theta.norm() * math.sqrt(0.2))
    assert stats["d1"] == pytest.approx(float(expected), rel=1e-5)
    theta_all_p = torch.cat([p.detach().flatten() for p in every])
    expected_all = (theta_all - theta_all_p).norm() / (theta_all.norm() * math.sqrt(0.2))
    assert stats["d1_all"] == pytest.approx(float(expected_all), rel=1e-5)
    assert stats["d1_all"] < stats["d1"]  # the biases are never pruned


def test_exclusions():
    model = resnet20()
    params = prunable_parameters(model, ["fc"])
    assert "fc.weight" not in params and "conv1.weight" in params
    with pytest.raises(ConfigError, match="model.prune_exclude: classifier names no"):
        prunable_parameters(model, ["classifier"])
    pruner = MaskPruner("t", criteria.magnitude, rate=0.5, levels=1)
    pruner.attach(Network(model, [3, 32, 32], resnet20, exclude=["fc"]))
    fc = model.fc.weight.detach().clone()
    pruner.prune(1, gen())
    assert "fc.weight" not in pruner.masks.masks and torch.equal(model.fc.weight, fc)


def test_masks_survive_momentum_and_weight_decay():
    model = lenet()
    pruner = attached(model, 0.6)
    masks = pruner.masks
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-2)
    pruner.prune(1, gen())
    for step in range(5):
        loss = model(torch.randn(16, 1, 8, 8)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert masks.violations() > 0  # the optimizer does bring pruned weights back ...
        pruner.after_step(step + 1)
        assert masks.violations() == 0  # ... and re-applying the masks removes them again


def test_masks_remove_marks_and_zeroes():
    model = lenet()
    masks = Masks(prunable_parameters(model))
    name = next(iter(masks.params))
    remove = {n: torch.zeros_like(a) for n, a in masks.alive_masks().items()}
    remove[name].view(-1)[:7] = True
    assert masks.remove(remove) == 7
    assert masks.alive() == masks.total() - 7
    assert not masks.alive_masks()[name].view(-1)[:7].any()
    assert (masks.params[name].detach().view(-1)[:7] == 0).all() and masks.violations() == 0


def test_mask_state_roundtrip():
    pruner = attached(lenet(), 0.5)
    pruner.prune(1, gen())
    state = pruner.state_dict()
    assert set(state) == {"masks"}
    assert all(v.dtype == torch.bool for v in state["masks"].values())
    other_model = lenet(1)
    other = attached(other_model, 0.5)
    other.load_state_dict(state)
    assert other.masks.alive() == pruner.masks.alive()
    assert other.masks.violations() == 0  # loading applies the masks to the weights
    assert all(
        torch.equal(a, b)
        for a, b in zip(state["masks"].values(), other.state_dict()["masks"].values())
    )
    with pytest.raises(CorruptFileError, match="f.pt: not the pruning state of this run"):
        other.load_state_dict({"plans": []}, source="f.pt")
    with pytest.raises(CorruptFileError, match="f.pt: not pruning masks of this model"):
        other.load_state_dict(
            {"masks": {"x.weight": torch.ones(2, dtype=torch.bool)}}, source="f.pt"
        )


def test_rewind_loads_dense_weights_and_keeps_removed_removed():
    model = lenet()
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    pruner = attached(model, 0.5)
    pruner.prune(1, gen())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    pruner.rewind(dense)
    alive = pruner.masks.alive_masks()
    for n, p in model.named_parameters():
        if n in alive:
            assert torch.equal(p.detach(), dense[n] * alive[n]), n
        else:
            assert torch.equal(p.detach(), dense[n]), n


@pytest.mark.parametrize(
    "preset, label, scope, levels, fraction",
    [
        ("global_magnitude", "global_magnitude", "global", 17, 0.2),
        ("layerwise_magnitude", "layerwise_magnitude", "layerwise", 17, 0.2),
        ("random", "global_random", "global", 17, 0.2),
        ("one_shot", "global_magnitude", "global", 1, 0.9),
    ],
)
def test_presets_build_their_pruner(preset, label, scope, levels, fraction):
    pruner = build_pruner(compose(f"pruning={preset}").pruning)
    assert isinstance(pruner, MaskPruner)
    assert pruner.name == preset and pruner.criterion_label == label
    assert pruner.scope == scope and pruner.levels == levels
    assert pruner.fraction == pytest.approx(fraction)
    assert isinstance(pruner.criterion, partial)


def test_build_pruner_errors_are_one_line_naming_the_key():
    with pytest.raises(ConfigError, match="exactly two of pruning.rate"):
        build_pruner(compose("pruning.levels=null").pruning)
    with pytest.raises(ConfigError, match="pruning.criterion._target_: missing"):
        build_pruner(
            {"_target_": "prune_cli.pruning.MaskPruner", "name": "x", "rate": 0.2, "levels": 1}
        )
    with pytest.raises(ConfigError, match="pruning._target_: missing"):
        build_pruner({"name": "x"})
