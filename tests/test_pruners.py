"""The pruners and criteria as a researcher meets them: built from the real YAML presets
(``prune_cli.pruning.build_pruner(cfg.pruning)`` of a composed config), run through the real
runner or the real ``prune-run`` CLI, checked against independent computations in the test.

- a criterion from a user's own config directory (examples/user_criterion) runs through the CLI
- random filter pruning: L1's per-layer counts, other channels, seeded
- Taylor-FO-BN: its scores against an independent computation; the model left as it was
- Li et al.'s ResNet-34-A/B reductions; Le & Hua's ResNet-18 E/F, ResNet-50 DCP parameter counts
- GMP: the cubic schedule, in a real retraining phase; removed weights never come back
- nothing under ``runtime`` is hashed; experiment keys are
- no criterion-name dispatch outside prune_cli/pruning/
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import shutil
import sys
from pathlib import Path

import procs
import pytest
import torch
import torch.nn.functional as F
from conftest import compose, run_inprocess
from torch import nn

from prune_cli import runner
from prune_cli.errors import ConfigError
from prune_cli.models import build_model as _build_model
from prune_cli.models import resnet20
from prune_cli.pruning import Network, ScoreContext, build_pruner
from prune_cli.pruning.masks import select
from prune_cli.store import config_hash, dense_hash

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
NO_TIMING = "pruning.measure_inference=false"  # a channel pruner's speed measurement: seconds


def _logger_key() -> str:
    """The override key of the logger group (``logger@runtime.logger`` where config.yaml
    places the group under runtime, else ``logger``)."""
    text = (ROOT / "conf" / "config.yaml").read_text()
    m = re.search(r"^\s*-\s*(logger@[\w.]+)\s*:", text, re.M)
    return m[1] if m else "logger"


LOGGER = _logger_key()


def build_model(cfg) -> nn.Module:
    return _build_model(cfg.model.net)


# ----------------------------------------------------------------------------------------------
# 1. A criterion from the user's own config directory, through prune-run
# ----------------------------------------------------------------------------------------------


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "results.jsonl").read_text().splitlines()]


def test_user_criterion_from_own_config_dir_is_the_one_used(tmp_path):
    shutil.copytree(EXAMPLES / "user_criterion", tmp_path / "user")
    run_dir = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "prune_cli.cli",
        "-cd",
        "conf",
        "experiment=quickstart",
        "pruning=taylor_weight",
        "pruning.levels=2",
        "train.epochs=2",
        "runtime.progress=false",
        "runtime.threads=1",
        f"{LOGGER}=none",
        f"runtime.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={run_dir}",
    ]
    proc = procs.run(
        argv, cwd=tmp_path / "user", capture_output=True, text=True, env=ENV, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = _rows(run_dir)
    assert [r["level"] for r in rows] == [0, 1, 2]
    assert {r["criterion"] for r in rows} == {"global_taylor_weight"}
    assert [r["pruning"] for r in rows] == ["taylor_weight"] * 3
    assert [r["density"] for r in rows] == pytest.approx([1.0, 0.8, 0.64], abs=1e-4)

    # the masks of level 1 are not those global magnitude would have chosen on the same weights
    ckpt = run_dir / "checkpoints"
    dense = torch.load(ckpt / "level_00.pt")
    state = torch.load(ckpt / "level_01_pruning.pt")
    masks = state["masks"]
    alive = {n: torch.ones_like(m) for n, m in masks.items()}
    by_magnitude = select({n: dense[n].abs() for n in masks}, alive, 0.2, "global")
    removed = {n: ~m for n, m in masks.items()}
    assert sum(int(r.sum()) for r in removed.values()) == sum(
        int(r.sum()) for r in by_magnitude.values()
    )
    differ = sum(int((removed[n] ^ by_magnitude[n]).sum()) for n in masks)
    assert differ > 0.05 * sum(int(r.sum()) for r in removed.values()), differ
    # and the pruned weights are zero in the level's checkpoint
    level1 = torch.load(ckpt / "level_01.pt")
    assert all(int((level1[n][~m] != 0).sum()) == 0 for n, m in masks.items())


# ----------------------------------------------------------------------------------------------
# 2. Random filter pruning: L1's counts, other channels, seeded
# ----------------------------------------------------------------------------------------------

RATIOS = ["pruning.stage_ratios=[0.5,0.25,0.3]", "pruning.skip=[layer2.0.conv1]"]


def _prune_resnet20(preset: str, seed: int):
    cfg = compose("model=resnet20", f"pruning={preset}", NO_TIMING, *RATIOS)
    pruner = build_pruner(cfg.pruning)
    torch.manual_seed(0)  # the same weights for every call
    model = resnet20()
    pruner.attach(Network(model=model, input_shape=[3, 32, 32], make_model=resnet20))
    stats = pruner.prune(1, torch.Generator().manual_seed(seed * 1000 + 1))
    return pruner, stats, pruner.state_dict()["plans"][0], model


def test_random_filter_takes_l1_counts_at_other_channels_seeded():
    l1, l1_stats, l1_plan, _ = _prune_resnet20("l1_filter", 0)
    rnd, stats, plan, model = _prune_resnet20("random_filter", 0)
    assert (l1.criterion_label, rnd.criterion_label) == ("l1_filter", "random_filter")

    # the counts: n - floor(n (1 - r)) in each conv1 of a block, none in the skipped one
    widths, ratios = (
        {"layer1": 16, "layer2": 32, "layer3": 64},
        {"layer1": 0.5, "layer2": 0.25, "layer3": 0.3},
    )
    expected = {
        f"{stage}.{b}.conv1": widths[stage] - int(widths[stage] * (1 - ratios[stage]) + 1e-9)
        for stage in widths
        for b in range(3)
        if f"{stage}.{b}.conv1" != "layer2.0.conv1"
    }
    assert sorted(set(expected.values())) == [8, 20]  # 16 -> 8, 32 -> 24, 64 -> 44 filters
    assert stats["removed"] == l1_stats["removed"] == expected
    assert {k: len(v) for k, v in plan.items()} == expected
    for name, k in expected.items():  # cut out of the network, not masked
        stage = name.split(".")[0]
        assert model.get_submodule(name).out_channels == widths[stage] - k, name
        assert model.get_submodule(name.replace("conv1", "conv2")).in_channels == widths[stage] - k
    assert model.get_submodule("layer2.0.conv1").out_channels == 32
    assert stats["params_after"] == l1_stats["params_after"]
    assert stats["flops_after"] == l1_stats["flops_after"]

    # L1 removes the filters of smallest L1 norm (checked here on fresh weights of the same seed)
    torch.manual_seed(0)
    dense = resnet20()
    for name, idx in l1_plan.items():
        norms = dense.get_submodule(name).weight.detach().abs().flatten(1).sum(1)
        assert sorted(idx) == sorted(torch.argsort(norms)[: len(idx)].tolist()), name

    # random filters: not L1's choice, the same for the same seed, others for another seed
    assert plan != l1_plan
    differing = [n for n in plan if plan[n] != l1_plan[n]]
    assert len(differing) >= len(plan) - 1, differing
    assert _prune_resnet20("random_filter", 0)[2] == plan
    other = _prune_resnet20("random_filter", 1)[2]
    assert other != plan and {k: len(v) for k, v in other.items()} == expected


# ----------------------------------------------------------------------------------------------
# 3. Taylor-FO-BN
# ----------------------------------------------------------------------------------------------


class ConvBN(nn.Module):
    """conv -> BN -> ReLU -> conv -> BN -> ReLU -> pool -> linear (``bn1=False``: conv1 feeds the
    ReLU directly, no batch norm on its output)."""

    def __init__(self, bn1: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4) if bn1 else nn.Identity()
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _conv_bn(bn1: bool = True) -> ConvBN:
    torch.manual_seed(0)
    m = ConvBN(bn1)
    with torch.no_grad():  # gamma and beta both away from 1 / 0; running stats not the defaults
        for bn in (m.bn1, m.bn2):
            if isinstance(bn, nn.BatchNorm2d):
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.5, 0.5)
                bn.running_mean.uniform_(-1, 1)
                bn.running_var.uniform_(0.5, 2)
                bn.num_batches_tracked.fill_(7)
    return m


BATCHES = [
    (
        torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(i)),
        torch.randint(0, 3, (8,), generator=torch.Generator().manual_seed(100 + i)),
    )
    for i in range(3)
]


def _batches(n: int):
    return iter(BATCHES[:n])


def _independent_taylor(model: ConvBN) -> dict[str, torch.Tensor]:
    """mean over batches of (gamma dL/dgamma + beta dL/dbeta)^2, train-mode BN, mean CE."""
    m = copy.deepcopy(model).train()
    bns = {"conv1": m.bn1, "conv2": m.bn2}
    sums = {n: torch.zeros(bn.num_features, dtype=torch.float64) for n, bn in bns.items()}
    for x, y in BATCHES:
        loss = F.cross_entropy(m(x), y)
        params = [p for bn in bns.values() for p in (bn.weight, bn.bias)]
        grads = torch.autograd.grad(loss, params)
        for i, (n, bn) in enumerate(bns.items()):
            g_w, g_b = grads[2 * i], grads[2 * i + 1]
            sums[n] += (bn.weight.detach() * g_w + bn.bias.detach() * g_b).double().pow(2)
    return {n: (s / len(BATCHES)).float() for n, s in sums.items()}


def _taylor_criterion():
    """The criterion of the taylor_fo_bn preset (batches: 16; our data has 3)."""
    return build_pruner(compose("pruning=taylor_fo_bn").pruning).criterion


def _snapshot(model: nn.Module):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {
        n: (p.grad, None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()
    }
    flags = {n: m.training for n, m in model.named_modules()}
    return state, grads, flags


def _assert_unchanged(model: nn.Module, snap) -> None:
    state, grads, flags = snap
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(now[k], v), f"{k} changed"
    for n, p in model.named_parameters():
        obj, val = grads[n]
        assert p.grad is obj, f"{n}.grad replaced"
        assert (val is None and p.grad is None) or torch.equal(p.grad, val), f"{n}.grad changed"
    assert {n: m.training for n, m in model.named_modules()} == flags


def test_taylor_fo_bn_scores_match_an_independent_computation_and_change_nothing():
    model = _conv_bn()
    model.eval()
    model.bn2.train()  # mixed flags, as a model with some frozen parts has
    model.conv1.weight.grad = torch.full_like(model.conv1.weight, 0.25)  # a gradient in progress
    model.bn2.bias.grad = torch.ones_like(model.bn2.bias)
    snap = _snapshot(model)
    ctx = ScoreContext(
        targets={"conv1": model.conv1, "conv2": model.conv2},
        model=model,
        generator=torch.Generator().manual_seed(0),
        batches=_batches,
    )
    scores = _taylor_criterion()(ctx)
    want = _independent_taylor(model)
    assert scores.keys() == want.keys()
    for n in want:
        assert scores[n].shape == (model.get_submodule(n).out_channels,)
        torch.testing.assert_close(scores[n].float(), want[n], rtol=1e-6, atol=1e-6)
        assert bool((want[n] > 0).all())  # not vacuous: every channel has a score
    _assert_unchanged(model, snap)


def test_taylor_fo_bn_pruner_removes_the_lowest_scored_channels():
    cfg = compose("pruning=taylor_fo_bn", NO_TIMING, "pruning.stage_ratios=[0.5]")
    model = _conv_bn()
    want = _independent_taylor(model)
    pruner = build_pruner(cfg.pruning)
    pruner.attach(
        Network(model=model, input_shape=[3, 6, 6], make_model=_conv_bn, batches=_batches)
    )
    stats = pruner.prune(1, torch.Generator().manual_seed(1))
    plan = pruner.state_dict()["plans"][0]
    assert stats["removed"] == {"conv1": 2, "conv2": 3}
    for n, idx in plan.items():
        assert sorted(idx) == sorted(torch.argsort(want[n])[: len(idx)].tolist()), n
    assert (model.conv1.out_channels, model.bn1.num_features, model.conv2.in_channels) == (2, 2, 2)
    assert (model.conv2.out_channels, model.fc.in_features) == (3, 3)


def test_taylor_fo_bn_refuses_a_conv_without_batch_norm_in_one_line():
    model = _conv_bn(bn1=False)
    snap = _snapshot(model)
    ctx = ScoreContext(
        targets={"conv1": model.conv1, "conv2": model.conv2},
        model=model,
        generator=torch.Generator().manual_seed(0),
        batches=_batches,
    )
    with pytest.raises(ConfigError) as e:
        _taylor_criterion()(ctx)
    msg = str(e.value)
    assert "\n" not in msg and "conv1" in msg and "batch norm" in msg, msg
    _assert_unchanged(model, snap)


def test_taylor_fo_bn_on_a_model_without_batch_norm_is_refused_before_training():
    """Prevalidation (``Pruner.check``, what prune-run calls before the dense training) already
    refuses it: otherwise the run fails only when level 1 prunes, after the dense phase."""
    cfg = compose("pruning=taylor_fo_bn", NO_TIMING, "pruning.stage_ratios=[0.5]")
    pruner = build_pruner(cfg.pruning)
    net = Network(
        model=_conv_bn(bn1=False), input_shape=[3, 6, 6], make_model=lambda: _conv_bn(False)
    )
    with pytest.raises(ConfigError, match="conv1"):
        pruner.check(net)


# ----------------------------------------------------------------------------------------------
# 4. The published presets: Li et al.'s ResNet-34-A/B, Le & Hua's ResNet-18 E/F, ResNet-50 DCP
# ----------------------------------------------------------------------------------------------


def _prune_preset(model: str, preset: str, side: int) -> dict:
    cfg = compose(f"model={model}", f"pruning={preset}", NO_TIMING)
    torch.manual_seed(0)
    net = build_model(cfg)
    pruner = build_pruner(cfg.pruning)
    pruner.attach(
        Network(model=net, input_shape=[3, side, side], make_model=lambda: build_model(cfg))
    )
    return pruner.prune(1, torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    "preset, flops_pct, params_pct",
    [("l1_filter_resnet34_a", 15.5, 7.6), ("l1_filter_resnet34_b", 24.2, 10.8)],
)
def test_li_resnet34_reductions_match_table_1(preset, flops_pct, params_pct):
    stats = _prune_preset("resnet34", preset, 224)
    assert stats["params_before"] == 21_797_672  # torchvision's ResNet-34
    flops = 100 * (1 - stats["flops_after"] / stats["flops_before"])
    params = 100 * (1 - stats["params_after"] / stats["params_before"])
    assert flops == pytest.approx(flops_pct, abs=0.2)
    assert params == pytest.approx(params_pct, abs=0.2)
    # stage 4 and the skipped (sensitive) layers are kept whole
    assert not any(n.startswith("layer4") for n in stats["removed"])
    assert "layer1.0.conv1" not in stats["removed"] and "layer3.5.conv1" not in stats["removed"]


@pytest.mark.parametrize(
    "model, preset, left",
    [
        ("resnet18", "l1_filter_resnet18_e", 7_960_952),
        ("resnet18", "l1_filter_resnet18_f", 5_775_424),
        ("resnet50", "l1_filter_resnet50_dcp30", 16_945_246),
        ("resnet50", "l1_filter_resnet50_dcp50", 12_381_864),
        ("resnet50", "l1_filter_resnet50_dcp70", 8_665_318),
    ],
)
def test_lehua_presets_leave_their_parameter_counts(model, preset, left):
    stats = _prune_preset(model, preset, 64)  # parameter counts do not depend on the input size
    assert stats["params_after"] == left


# ----------------------------------------------------------------------------------------------
# 5. GMP: the cubic schedule, in a real retraining phase
# ----------------------------------------------------------------------------------------------

LENET_GMP = [
    "model=lenet300_100",
    "pruning=gmp",
    "method=lrw",
    "train.epochs=2",
    "train.batch_size=64",
    "pruning.every=2",
    "pruning.end=0.5",
    "runtime.device=cpu",
    "runtime.threads=1",
    "runtime.eval_every=0",
    f"{LOGGER}=none",
]


def _cubic(k: int, k0: int, k1: int, s_i: float, s_f: float) -> float:
    if k < k0:
        return 0.0
    if k >= k1:
        return s_f
    return s_f + (s_i - s_f) * (1 - (k - k0) / (k1 - k0)) ** 3


def test_gmp_sparsity_at_follows_the_cubic_schedule():
    cfg = compose(
        "model=lenet300_100",
        "pruning=gmp",
        "pruning.start=0.25",
        "pruning.end=0.5",
        "pruning.initial_sparsity=0.2",
        "pruning.every=3",
    )
    pruner = build_pruner(cfg.pruning)
    torch.manual_seed(0)
    pruner.attach(
        Network(model=build_model(cfg), input_shape=[1, 8, 8], make_model=lambda: build_model(cfg))
    )
    stats = pruner.prune(1, torch.Generator().manual_seed(1), steps=40)
    assert (pruner.first, pruner.last) == (10, 20)
    assert stats["removed"] == 0 and pruner.masks.density() == 1.0  # the ramp starts at step 10
    for k in range(0, 45):
        assert pruner.sparsity_at(k) == pytest.approx(_cubic(k, 10, 20, 0.2, 0.9), abs=1e-12), k
    assert pruner.sparsity_at(10) == pytest.approx(0.2) and pruner.sparsity_at(20) == 0.9

    # a ramp that starts at once prunes to the initial sparsity when the level begins
    cfg0 = compose("model=lenet300_100", "pruning=gmp", "pruning.initial_sparsity=0.3")
    p0 = build_pruner(cfg0.pruning)
    p0.attach(
        Network(
            model=build_model(cfg0), input_shape=[1, 8, 8], make_model=lambda: build_model(cfg0)
        )
    )
    s0 = p0.prune(1, torch.Generator().manual_seed(1), steps=100)
    total = p0.masks.total()
    assert p0.masks.alive() == round(0.7 * total) and s0["removed"] == total - round(0.7 * total)


def test_gmp_in_a_real_run_prunes_on_schedule_and_never_revives(tmp_path, monkeypatch):
    seen: list[tuple[int, int]] = []  # (step, alive weights) after every after_step
    built = []
    bad: list[str] = []
    real_build = runner.build

    def build(cfg):  # the real build; the real pruner, observed after each of its steps
        b = real_build(cfg)
        built.append(b)
        pruner, real_after = b.pruner, b.pruner.after_step
        prev = {"masks": None}

        def after_step(step: int) -> None:
            real_after(step)
            masks = pruner.masks.state_dict()
            if prev["masks"] is not None:
                back = sum(int((m & ~prev["masks"][n]).sum()) for n, m in masks.items())
                if back:
                    bad.append(f"step {step}: {back} removed weights came back")
            if pruner.masks.violations():
                bad.append(f"step {step}: pruned weights not zero")
            prev["masks"] = masks
            seen.append((step, pruner.masks.alive()))

        pruner.after_step = after_step
        return b

    monkeypatch.setattr(runner, "build", build)
    rows = run_inprocess(tmp_path / "run", *LENET_GMP)
    assert not bad, bad[:3]
    (b,) = built
    pruner = b.pruner
    total = pruner.masks.total()
    spe = b.steps_per_epoch
    steps = 2 * spe  # lrw: t = T = 2 epochs
    k1 = round(0.5 * steps)
    assert (pruner.first, pruner.last) == (0, k1)
    assert [s for s, _ in seen] == list(range(1, steps + 1))

    prune_steps = [k for k in range(1, steps + 1) if k <= k1 and (k % 2 == 0 or k == k1)]
    alive = total
    for step, got in seen:
        if step in prune_steps:
            s = _cubic(step, 0, k1, 0.0, 0.9)
            assert pruner.sparsity_at(step) == pytest.approx(s, abs=1e-12)
            alive = min(alive, round((1 - s) * total))
        assert got == alive, f"step {step}: {got} alive, the schedule says {alive}"
    assert len({a for _, a in seen}) > 5  # it rose gradually

    assert [r["level"] for r in rows] == [0, 1]
    assert rows[1]["criterion"] == "global_magnitude"
    assert rows[1]["prunable_alive"] == round(0.1 * total)
    assert rows[1]["density"] == pytest.approx(0.1, abs=1 / total)
    # the saved level: its masks, and zeros where they prune
    ckpt = tmp_path / "run" / "checkpoints"
    masks = torch.load(ckpt / "level_01_pruning.pt")["masks"]
    weights = torch.load(ckpt / "level_01.pt")
    assert sum(int(m.sum()) for m in masks.values()) == round(0.1 * total)
    assert all(int((weights[n][~m] != 0).sum()) == 0 for n, m in masks.items())


# ----------------------------------------------------------------------------------------------
# 7. Nothing under runtime is hashed
# ----------------------------------------------------------------------------------------------

RUNTIME = [
    "runtime.device=cuda:1",
    "runtime.device=auto",
    "runtime.threads=4",
    "runtime.progress=false",
    "runtime.cache_dir=/elsewhere/cache",
    "runtime.rerun=true",
    "runtime.workers=0",
    "runtime.compile=true",
    "runtime.channels_last=true",
    "runtime.eval_batch_size=17",
    "runtime.eval_every=0",
    "runtime.log_every_n_steps=3",
    f"{LOGGER}=wandb",
    f"{LOGGER}=none",
]


def test_runtime_keys_change_no_hash():
    base = compose("experiment=quickstart")
    want = (config_hash(base), dense_hash(base))
    for override in RUNTIME:
        cfg = compose("experiment=quickstart", override)
        assert cfg.runtime != base.runtime, f"{override} changed nothing"
        assert (config_hash(cfg), dense_hash(cfg)) == want, override


def test_experiment_keys_change_the_run_hash():
    base = compose("experiment=quickstart")
    for override, dense_changes in [
        ("train.lr=0.05", True),
        ("pruning.rate=0.3", False),
        ("method=ft", False),
        ("seed=1", True),
    ]:
        cfg = compose("experiment=quickstart", override)
        assert config_hash(cfg) != config_hash(base), override
        assert (dense_hash(cfg) != dense_hash(base)) == dense_changes, override


# ----------------------------------------------------------------------------------------------
# 8. Criteria are named by their functions, never dispatched on by name outside pruning/
# ----------------------------------------------------------------------------------------------

# criterion names and the labels rows give them (scope_name for mask pruners)
_CRITERIA = {"magnitude", "l1_filter", "random_filter", "taylor_fo_bn", "taylor_weight"}
CRITERION_NAMES = _CRITERIA | {
    f"{s}_{c}" for s in ("global", "layerwise") for c in _CRITERIA | {"random"}
}
PATTERNS = [
    re.compile(
        r"==\s*[\"'](l1_filter|global_magnitude|layerwise_magnitude|magnitude|random_filter|taylor_fo_bn)[\"']"
    ),
    re.compile(
        r"[\"'](l1_filter|global_magnitude|layerwise_magnitude|random_filter|taylor_fo_bn)[\"']\s*[!=]="
    ),
    re.compile(r"criterion\w*(\[[^\]]*\])?\)?\s*(==|!=)\s*[\"']"),
    re.compile(r"criterion\w*(\[[^\]]*\])?\)?\s*(not\s+)?in\s*[(\[{]\s*[\"']"),
]


def _literals(node: ast.AST) -> list[str]:
    """String constants of ``node`` (a constant, or a tuple/list/set of them)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [v for e in node.elts for v in _literals(e)]
    return []


def _dispatches(tree: ast.AST) -> list[tuple[int, str]]:
    """Comparisons against a criterion name, or of a criterion against a string literal; and
    ``<criterion>.startswith("...")``."""
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            for a, b in zip(sides, sides[1:]):
                for x, y in ((a, b), (b, a)):
                    names = [v for v in _literals(y) if v]
                    about = "criterion" in ast.unparse(x)
                    if any(v in CRITERION_NAMES for v in names) or (about and names):
                        hits.append((node.lineno, ast.unparse(node)))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("startswith", "endswith")
            and "criterion" in ast.unparse(node.func.value)
        ):
            hits.append((node.lineno, ast.unparse(node)))
    return hits


def test_no_criterion_name_dispatch_outside_the_pruning_package():
    package = ROOT / "prune_cli"
    found: dict[tuple[str, int], str] = {}
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[:2] == ("prune_cli", "pruning"):
            continue
        source = path.read_text()
        lines = source.splitlines()
        hits = [n for n, _ in _dispatches(ast.parse(source))]
        hits += [
            i
            for i, line in enumerate(lines, 1)
            if any(p.search(line.split("#", 1)[0]) for p in PATTERNS)
        ]
        for n in hits:
            found[(str(rel), n)] = lines[n - 1].strip()
    listing = "\n".join(f"{f}:{n}: {text}" for (f, n), text in sorted(found.items()))
    assert not found, f"criterion names compared outside prune_cli/pruning/:\n{listing}"


def test_the_dispatch_check_finds_what_it_looks_for():
    """The check above is not vacuous: the forms it must catch are caught, plain data is not."""
    caught = [
        'if cfg.pruning.criterion == "l1_filter":\n    pass',
        'x = criterion in ("a", "b")',
        'ok = "global_magnitude" != row["criterion"]',
        'if name in ("random_filter", "l1_filter"): pass',
        'if rec["criterion"].startswith("l1"): pass',
    ]
    for src in caught:
        assert _dispatches(ast.parse(src)) or any(p.search(src) for p in PATTERNS), src
    fine = [
        'LABELS = {"global_magnitude": "Unstructured"}',
        'row = {"criterion": pruner.criterion_label}',
        "same = self.criterion == criterion_of(rec)",
        'if split == "random": pass',
    ]
    for src in fine:
        assert not _dispatches(ast.parse(src)) and not any(p.search(src) for p in PATTERNS), src
