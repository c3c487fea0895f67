"""Structured L1 filter pruning (ChannelPruner): the plan, real channel removal, costs,
equivalence, training, the pruner's state and statistics."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import compose
from torch import nn

from prune_cli.costs import count_flops, param_counts
from prune_cli.errors import ConfigError, CorruptFileError
from prune_cli.models.cifar_resnet import resnet20, resnet56, resnet110
from prune_cli.models.vgg import cifar_vgg
from prune_cli.pruning import Network, ScoreContext, build_pruner, criteria
from prune_cli.pruning.channels import (
    ChannelPruner,
    apply_channel_removal,
    filter_counts,
    measure_inference,
    plan_filters,
    prunable_convs,
)

SHAPE = (3, 32, 32)


def preset(name: str):
    """A pruning preset as prune-run composes it (conf/pruning/<name>.yaml with its defaults)."""
    return compose(f"pruning={name}").pruning


def filter_l1_scores(conv: nn.Module) -> torch.Tensor:
    """The l1_filter criterion's scores of one conv."""
    ctx = ScoreContext(targets={"c": conv}, model=conv, generator=torch.Generator())
    return criteria.l1_filter(ctx)["c"]


def plan_l1_filter(model: nn.Module, ratios, skip, shape) -> dict[str, torch.Tensor]:
    """The L1 filter plan of ``model`` (channels.plan_filters with the l1_filter criterion)."""

    def scores(convs):
        return criteria.l1_filter(
            ScoreContext(targets=convs, model=model, generator=torch.Generator())
        )

    return plan_filters(model, scores, list(ratios), list(skip), shape)


def channel_pruner(model: nn.Module, ratios, skip=(), measure: bool = False, **kw) -> ChannelPruner:
    """An L1 filter ChannelPruner attached to ``model`` (a fresh one is built like it)."""
    pruner = ChannelPruner(
        "l1_filter", criteria.l1_filter, list(ratios), list(skip), measure_inference=measure, **kw
    )
    dense = copy.deepcopy(model)
    pruner.attach(Network(model, list(SHAPE), lambda: copy.deepcopy(dense)))
    return pruner


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` with non-trivial BN statistics and affine parameters (as after training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def dense56() -> nn.Module:
    torch.manual_seed(0)
    return randomized(resnet56())


def masked_equivalent(dense: nn.Module, plan: dict[str, torch.Tensor]) -> nn.Module:
    """The dense net with the planned filters zeroed and their BN outputs forced to zero."""
    model = copy.deepcopy(dense)
    with torch.no_grad():
        for name, idx in plan.items():
            model.get_submodule(name).weight[idx] = 0
            bn = model.get_submodule(name.removesuffix("conv1") + "bn1")
            bn.weight[idx] = 0
            bn.bias[idx] = 0
    return model


def test_filter_l1_scores_by_hand() -> None:
    conv = nn.Conv2d(2, 3, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.0], [-3.0, 3.0]]).view(3, 2, 1, 1))
    assert filter_l1_scores(conv).tolist() == [3.0, 0.5, 6.0]


def test_resnet_prunes_only_block_first_convs_by_stage() -> None:
    convs, stages = prunable_convs(resnet20(), SHAPE)
    assert stages == 3
    assert convs == {f"layer{s + 1}.{b}.conv1": s for s in range(3) for b in range(3)}


def test_plan_removes_the_lowest_l1_filters(dense56) -> None:
    plan = plan_l1_filter(dense56, [0.6, 0.3, 0.1], [], SHAPE)
    for name, idx in plan.items():
        scores = filter_l1_scores(dense56.get_submodule(name))
        kept = torch.ones_like(scores, dtype=torch.bool)
        kept[idx] = False
        assert scores[idx].max() <= scores[kept].min()
    # floor(n (1 - r)) filters kept: 16 -> 6, 32 -> 22, 64 -> 57
    assert [len(plan[f"layer{s}.0.conv1"]) for s in (1, 2, 3)] == [10, 10, 7]


# Li et al. 2016, Table 1: MACs ("FLOP") and parameters of the pruned CIFAR ResNets.
PAPER = {
    "l1_filter_resnet56_a": (resnet56, 1.12e8, 7.7e5),
    "l1_filter_resnet56_b": (resnet56, 9.09e7, 7.3e5),
    "l1_filter_resnet110_a": (resnet110, 2.13e8, 1.68e6),
    "l1_filter_resnet110_b": (resnet110, 1.55e8, 1.16e6),
}


@pytest.mark.parametrize("name", list(PAPER))
def test_presets_shrink_params_and_flops_as_planned(name: str, dense56) -> None:
    factory, paper_macs, paper_params = PAPER[name]
    cfg = preset(name)
    model = copy.deepcopy(dense56) if factory is resnet56 else factory()
    dense_flops = count_flops(model, SHAPE)
    dense_params = param_counts(model)["total_params"]
    plan = plan_l1_filter(model, cfg.stage_ratios, cfg.skip, SHAPE)
    assert not set(cfg.skip) & set(plan)
    # expected from the plan alone: conv1 loses k filters and bn1 k entries, conv2 k inputs
    params, macs = dense_params, dense_flops["total"]
    for conv1, idx in plan.items():
        k, block = len(idx), conv1.removesuffix("conv1")
        c1, c2 = model.get_submodule(conv1), model.get_submodule(block + "conv2")
        params -= k * c1.weight[0].numel() + 2 * k + k * c2.weight[:, 0].numel()
        macs -= round(dense_flops[conv1] * k / c1.out_channels)
        macs -= round(dense_flops[block + "conv2"] * k / c2.in_channels)
    apply_channel_removal(model, plan, SHAPE)
    assert param_counts(model)["total_params"] == params
    assert count_flops(model, SHAPE)["total"] == macs
    assert macs == pytest.approx(paper_macs, rel=0.005)
    assert params == pytest.approx(paper_params, rel=0.01)


def test_pruned_equals_masked_equivalent(dense56) -> None:
    cfg = preset("l1_filter_resnet56_b")
    plan = plan_l1_filter(dense56, cfg.stage_ratios, cfg.skip, SHAPE)
    pruned = copy.deepcopy(dense56)
    apply_channel_removal(pruned, plan, SHAPE)
    assert pruned.layer1.get_submodule("0").conv1.out_channels == 6
    assert pruned.layer1.get_submodule("0").conv2.in_channels == 6
    x = torch.randn(8, *SHAPE)
    with torch.no_grad():
        expected = masked_equivalent(dense56, plan)(x)
        torch.testing.assert_close(pruned(x), expected, rtol=1e-4, atol=1e-5)


def test_plan_replays_on_a_dense_snapshot(dense56) -> None:
    """Weight rewinding: the plan chosen on the final weights cuts the same channels of a snapshot."""
    final = copy.deepcopy(dense56)
    with torch.no_grad():
        for p in final.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    plan = plan_l1_filter(final, [0.5, 0.3, 0.1], ["layer2.0.conv1"], SHAPE)
    snapshot = copy.deepcopy(dense56)
    apply_channel_removal(final, plan, SHAPE)
    apply_channel_removal(snapshot, plan, SHAPE)
    assert {k: v.shape for k, v in snapshot.state_dict().items()} == {
        k: v.shape for k, v in final.state_dict().items()
    }
    keep = torch.ones(16, dtype=torch.bool)
    keep[plan["layer1.3.conv1"]] = False
    block, dense_block = snapshot.layer1.get_submodule("3"), dense56.layer1.get_submodule("3")
    assert torch.equal(block.conv1.weight, dense_block.conv1.weight[keep])
    assert torch.equal(block.bn1.running_var, dense_block.bn1.running_var[keep])
    assert torch.equal(block.conv2.weight, dense_block.conv2.weight[:, keep])
    # the same plan no longer fits the already smaller network
    with pytest.raises(ValueError, match="layer1.0.conv1"):
        apply_channel_removal(snapshot, plan, SHAPE)


def test_pruned_network_trains() -> None:
    torch.manual_seed(0)
    model = resnet20()
    apply_channel_removal(model, plan_l1_filter(model, [0.5, 0.5, 0.5], [], SHAPE), SHAPE)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(32, *SHAPE), torch.randint(0, 10, (32,))
    losses = []
    for _ in range(8):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert model.layer3.get_submodule("0").conv1.weight.shape[0] == 32


def test_vgg_every_conv_is_prunable_and_the_classifier_follows() -> None:
    torch.manual_seed(0)
    model = randomized(cifar_vgg(11))
    convs, stages = prunable_convs(model, SHAPE)
    assert stages == 5 and len(convs) == 8
    plan = plan_l1_filter(model, [0.5, 0.5, 0.25, 0.25, 0.5], ["layers.0.conv"], SHAPE)
    dense = copy.deepcopy(model)
    apply_channel_removal(model, plan, SHAPE)
    assert model.fc.in_features == 256 and "layers.0.conv" not in plan
    masked = copy.deepcopy(dense)
    with torch.no_grad():
        for name, idx in plan.items():
            module = masked.get_submodule(name.removesuffix(".conv"))
            module.conv.weight[idx], module.conv.bias[idx] = 0, 0
            module.bn.weight[idx], module.bn.bias[idx] = 0, 0
        x = torch.randn(4, *SHAPE)
        torch.testing.assert_close(model(x), masked(x), rtol=1e-4, atol=1e-5)


def test_channel_pruner_reports_its_statistics() -> None:
    torch.manual_seed(0)
    model = randomized(resnet20())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    pruner = channel_pruner(model, [0.5, 0.25, 0.0])
    stats = pruner.prune(1, torch.Generator().manual_seed(0))
    assert stats["removed"] == {
        f"layer{s}.{b}.conv1": r for s, r in ((1, 8), (2, 8)) for b in range(3)
    }
    assert stats["params_after"] == param_counts(model)["total_params"] < stats["params_before"]
    assert stats["flops_after"] == count_flops(model, SHAPE)["total"] < stats["flops_before"]
    assert "inference" not in stats  # measure_inference=False
    # the pruner's state is the plan it applied, and its masks cover the smaller weights
    (plan,) = pruner.state_dict()["plans"]
    assert {k: len(v) for k, v in plan.items()} == stats["removed"]
    assert (
        pruner.masks.alive()
        == pruner.masks.total()
        == sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    )
    # d1 from the removed weights themselves: conv/linear weights (d1), every weight and bias
    # (d1_all: the removed filters' BN weight and bias too)
    removed_sq, total_sq, removed_n, total_n = 0.0, 0.0, 0, 0
    removed_all, total_all = 0.0, 0.0
    for name, w in before.items():
        module, kind = name.rsplit(".", 1)
        if kind in ("weight", "bias"):
            total_all += float(w.pow(2).sum())
        if module.endswith("bn1") and module.replace("bn1", "conv1") in plan:
            removed_all += float(w[plan[module.replace("bn1", "conv1")]].pow(2).sum())
        if w.dim() < 2:
            continue
        total_sq, total_n = total_sq + float(w.pow(2).sum()), total_n + w.numel()
        if module.endswith("conv1") and module in plan:
            gone = w[plan[module]]
        elif module.endswith("conv2") and module.replace("conv2", "conv1") in plan:
            gone = w[:, plan[module.replace("conv2", "conv1")]]
        else:
            continue
        removed_sq, removed_n = removed_sq + float(gone.pow(2).sum()), removed_n + gone.numel()
        removed_all += float(gone.pow(2).sum())
    assert stats["s"] == pytest.approx(removed_n / total_n)
    assert stats["density"] == pytest.approx(1 - removed_n / total_n)
    assert stats["d1"] == pytest.approx((removed_sq / total_sq / stats["s"]) ** 0.5, rel=1e-4)
    assert stats["d1_all"] == pytest.approx((removed_all / total_all / stats["s"]) ** 0.5, rel=1e-4)


def test_channel_pruner_state_replays_and_rewinds(dense56) -> None:
    """load_state_dict replays the saved plans on a dense model (resume); rewind loads a dense
    snapshot into the pruned network, cut by the same plans (weight rewinding); levels > 1
    prune the smaller network again."""
    model = copy.deepcopy(dense56)
    pruner = channel_pruner(model, [0.5, 0.25, 0.0], levels=2)
    pruner.prune(1, torch.Generator().manual_seed(1))
    pruner.prune(2, torch.Generator().manual_seed(2))
    state = pruner.state_dict()
    assert len(state["plans"]) == 2
    assert model.layer1.get_submodule("0").conv1.out_channels == 4  # 16 -> 8 -> 4
    other = channel_pruner(copy.deepcopy(dense56), [0.5, 0.25, 0.0], levels=2)
    other.load_state_dict(state)
    assert {k: v.shape for k, v in other.net.model.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    assert other.state_dict() == state and other.masks.total() == pruner.masks.total()
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():  # the same channels were kept (nothing trained in between)
        torch.testing.assert_close(other.net.model(x), model(x))
        for p in model.parameters():
            p.add_(0.1)
    # rewinding: the dense weights at the kept channels
    pruner.rewind(dense56.state_dict())
    replayed = copy.deepcopy(dense56)
    for plan in state["plans"]:
        apply_channel_removal(replayed, plan, SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(model(x), replayed(x))
    with pytest.raises(CorruptFileError, match="f.pt: not the channel plans of this run"):
        other.load_state_dict({"masks": {}}, source="f.pt")
    with pytest.raises(CorruptFileError, match="f.pt: channel plans that do not extend"):
        other.load_state_dict({"plans": [{"layer1.0.conv1": [0]}]}, source="f.pt")
    fresh = channel_pruner(resnet20(), [0.5, 0.25, 0.0])
    with pytest.raises(CorruptFileError, match="f.pt: not a channel plan of this model"):
        fresh.load_state_dict({"plans": [{"layer9.0.conv1": [0]}]}, source="f.pt")


def test_l1_filter_presets_build_channel_pruners() -> None:
    pruner = build_pruner(preset("l1_filter_resnet56_a"))
    assert isinstance(pruner, ChannelPruner)
    assert pruner.name == "l1_filter_resnet56_a" and pruner.criterion_label == "l1_filter"
    assert pruner.levels == 1 and pruner.stage_ratios == [0.1, 0.1, 0.1]
    assert pruner.skip == ["layer1.7.conv1", "layer2.0.conv1", "layer3.0.conv1", "layer3.8.conv1"]
    counts = filter_counts(resnet56(), pruner.stage_ratios, pruner.skip, SHAPE)
    assert len(counts) == 27 - 4 and counts["layer1.0.conv1"] == 2  # 16 -> floor(14.4) = 14


def test_measure_inference_of_resnet56_b(dense56) -> None:
    pruned = copy.deepcopy(dense56)
    cfg = preset("l1_filter_resnet56_b")
    channel_pruner(pruned, cfg.stage_ratios, cfg.skip).prune(1, torch.Generator())
    pruned.train()
    r = measure_inference(dense56, pruned, SHAPE, batch_size=32, device="cpu", warmup=2, repeats=5)
    print(
        f"\nResNet-56-B on CPU, batch 32: dense {r['dense_ms']:.1f} ms, pruned {r['pruned_ms']:.1f} ms, speedup {r['speedup']:.2f}x"
    )
    assert r["dense_ms"] > 0 and r["pruned_ms"] > 0
    assert r["speedup"] == pytest.approx(r["dense_ms"] / r["pruned_ms"])
    assert r["batch_size"] == 32 and r["device"] == "cpu"
    assert pruned.training and not dense56.training  # flags restored


@pytest.mark.parametrize(
    ("ratios", "skip", "needle"),
    [
        ([0.1, 1.0, 0.1], [], "pruning.stage_ratios: 1.0 is outside [0, 1)"),
        ([-0.1, 0.1, 0.1], [], "pruning.stage_ratios: -0.1 is outside [0, 1)"),
        ([0.95, 0.1, 0.1], [], "removes all 16 filters of layer1.0.conv1"),
        ([0.1, 0.1], [], "pruning.stage_ratios: 2 ratios given, the model has 3 stages"),
        (
            [0.1, 0.1, 0.1],
            ["layer4.0.conv1"],
            "pruning.skip: layer4.0.conv1 names no prunable conv",
        ),
        (
            [0.1, 0.1, 0.1],
            ["layer1.0.conv2"],
            "pruning.skip: layer1.0.conv2 names no prunable conv",
        ),
    ],
)
def test_bad_settings_raise_one_line(ratios, skip, needle) -> None:
    with pytest.raises(ConfigError) as err:
        plan_l1_filter(resnet20(), ratios, skip, SHAPE)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_plan_that_does_not_fit_is_refused() -> None:
    model = resnet20()
    with pytest.raises(ValueError, match="no conv"):
        apply_channel_removal(model, {"layer9.conv1": torch.tensor([0])}, SHAPE)
    with pytest.raises(ValueError, match="tied to other layers"):
        apply_channel_removal(model, {"layer1.0.conv2": torch.tensor([0])}, SHAPE)
    with pytest.raises(ValueError, match="would remove all"):
        apply_channel_removal(model, {"layer1.0.conv1": torch.arange(16)}, SHAPE)
