"""prune-export: files that load without prune_cli, and one-line errors."""

from __future__ import annotations

import sys
from pathlib import Path

import procs
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from prune_cli.export import TORCHSCRIPT_WARNING, main
from prune_cli.pruning import MaskPruner, Masks, Network, Pruner, build_pruner, criteria
from prune_cli.store import save_torch
from tests.conftest import compose


def attach(pruner: Pruner, model: nn.Module, cfg) -> Pruner:
    pruner.attach(
        Network(model, list(cfg.dataset.input_shape), lambda: instantiate(cfg.model.net).eval())
    )
    return pruner


def save_level(root: Path, level: int, model: nn.Module, pruner: Pruner) -> None:
    """A level's files as prune-run writes them: the weights and the pruner's state."""
    save_torch(model.state_dict(), root / "checkpoints" / f"level_{level:02d}.pt")
    save_torch(pruner.state_dict(), root / "checkpoints" / f"level_{level:02d}_pruning.pt")


def run_dir(tmp_path: Path, *overrides: str) -> tuple[Path, nn.Module, object]:
    """A run directory as prune-run leaves it: config.yaml and the level-0 checkpoint (weights
    and the dense pruning state) of the model ``overrides`` compose (default: ResNet-20 on
    CIFAR-shaped data); the model (eval mode) and the config."""
    cfg = compose(*(overrides or ("model=resnet20", "dataset=synthetic")))
    root = tmp_path / "run"
    (root / "checkpoints").mkdir(parents=True)
    (root / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    torch.manual_seed(0)
    model = instantiate(cfg.model.net).eval()
    save_level(root, 0, model, attach(build_pruner(cfg.pruning), model, cfg))
    return root, model, cfg


def masked_level(root: Path, model: nn.Module, cfg) -> Masks:
    """Level 1 of a masked run: half the weights pruned, the masks saved beside the weights."""
    pruner = attach(
        MaskPruner("global_magnitude", criteria.magnitude, rate=0.5, levels=1), model, cfg
    )
    pruner.prune(1, torch.Generator().manual_seed(0))
    pruner.masks.apply()
    save_level(root, 1, model, pruner)
    return pruner.masks


def structured_run(tmp_path: Path) -> tuple[Path, nn.Module]:
    """ResNet-56-pruned-A (Li et al.): level 1 removed filters, then "retrained" its weights."""
    root, model, cfg = run_dir(
        tmp_path,
        "model=resnet56",
        "dataset=synthetic",
        "pruning=l1_filter_resnet56_a",
        "pruning.measure_inference=false",
    )
    pruner = attach(build_pruner(cfg.pruning), model, cfg)
    pruner.prune(1, torch.Generator().manual_seed(0))
    with torch.no_grad():  # stands in for retraining: the export must carry the new weights
        for p in model.parameters():
            p.add_(0.01)
    save_level(root, 1, model, pruner)
    return root, model.eval()


def predictions(model, shape, batches=(1, 7)) -> list[tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(1)
    xs = [torch.randn(b, *shape) for b in batches]
    with torch.no_grad():
        return [(x, model(x)) for x in xs]


@pytest.mark.parametrize(
    "overrides",
    [
        ("model=lenet300_100",),  # LeNet-300-100 on digits: flatten of the batch
        ("model=resnet20", "dataset=synthetic"),  # CIFAR ResNet, option-A shortcuts, batch norm
        ("model=vgg16", "dataset=synthetic"),  # VGG with batch norm and pooling
    ],
    ids=["lenet", "resnet20", "vgg16"],
)
def test_masked_run_exports_a_program_with_a_dynamic_batch(tmp_path, capsys, overrides) -> None:
    root, model, cfg = run_dir(tmp_path, *overrides)
    masks = masked_level(root, model, cfg)
    main([str(root)])
    out = root / "export" / "level_01.pt2"
    assert capsys.readouterr().out.strip() == str(out)
    program = torch.export.load(out)
    name, mask = next(iter(masks.masks.items()))
    assert int(program.state_dict[name].count_nonzero()) == int(mask.sum())  # pruned: zeros
    exported = program.module()
    for x, expected in predictions(model, list(cfg.dataset.input_shape)):  # traced at batch 2
        with torch.no_grad():
            torch.testing.assert_close(exported(x), expected)


def test_structured_run_exports_the_small_network_loadable_without_prune_cli(tmp_path) -> None:
    root, model = structured_run(tmp_path)
    out = tmp_path / "small.pt2"
    main([str(root), "--level", "1", "--out", str(out)])
    cases = predictions(model, [3, 32, 32])
    save_torch(cases, tmp_path / "cases.pt")
    # a fresh interpreter that never imports prune_cli loads and runs it, at batch 1 and 7
    code = (
        "import sys, torch; m = torch.export.load(sys.argv[1]).module();"
        " cases = torch.load(sys.argv[2]); assert 'prune_cli' not in sys.modules\n"
        "for x, y in cases:\n"
        "    torch.testing.assert_close(m(x), y); print(tuple(m(x).shape))\n"
        "print(m.state_dict()['layer1.0.conv1.weight'].shape[0])"
    )
    proc = procs.run(
        [sys.executable, "-c", code, str(out), str(tmp_path / "cases.pt")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    # 16 filters less 10% in the first conv of every block: the smaller network itself
    assert proc.stdout.split() == ["(1,", "10)", "(7,", "10)", "14"]


def test_torchscript_is_a_legacy_format_that_warns(tmp_path, capsys) -> None:
    root, model = structured_run(tmp_path)
    out = tmp_path / "small.pt"
    main([str(root), "--format", "torchscript", "--out", str(out)])
    assert capsys.readouterr().err == f"prune-export: warning: {TORCHSCRIPT_WARNING}\n"
    with pytest.warns(FutureWarning):  # torch itself deprecates jit.load
        loaded = torch.jit.load(str(out))
    for x, expected in predictions(model, [3, 32, 32]):
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), expected)


def test_state_dict_format_is_plain_tensors_with_zeros_where_pruned(tmp_path, capsys) -> None:
    root, model, cfg = run_dir(tmp_path)
    masks = masked_level(root, model, cfg)
    main([str(root), "--format", "state_dict"])
    out = root / "export" / "level_01.pt"
    assert capsys.readouterr().out.strip() == str(out)
    state = torch.load(out, weights_only=True)  # tensors only: no prune_cli object inside
    fresh = instantiate(compose("model=resnet20", "dataset=synthetic").model.net).eval()
    fresh.load_state_dict(state)
    assert int((state["layer1.0.conv1.weight"] != 0).sum()) == int(
        masks.masks["layer1.0.conv1.weight"].sum()
    )
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))


def test_level_zero_state_dict_is_the_dense_model(tmp_path) -> None:
    root, model, _ = run_dir(tmp_path)
    main([str(root), "--level", "0", "--format", "state_dict"])
    state = torch.load(root / "export" / "level_00.pt", weights_only=True)
    assert torch.equal(state["conv1.weight"], model.conv1.weight)


class FixedBatch(nn.Module):
    """A network whose code fixes the batch size at 1: torch.export cannot make it dynamic."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.view(1, -1))


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["missing"], "no such run directory"),
        (["RUN", "--level", "3"], "no checkpoint for level 3 (levels: 0)"),
        (["RUN", "--out", "OUT/model.pt"], "torch.export.load expects a .pt2 file"),
        (["FIXED"], "torch.export cannot capture the run's model with a dynamic batch"),
        (["OLD"], "level_00_pruning.pt: missing (a run of an earlier prune-cli"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, needle) -> None:
    root, _, cfg = run_dir(tmp_path)
    if "FIXED" in args:
        cfg.model.net = {"_target_": f"{__name__}.FixedBatch"}
        (root / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        fixed = FixedBatch()
        save_level(root, 0, fixed, attach(build_pruner(cfg.pruning), fixed, cfg))
    if "OLD" in args:  # a run directory of an earlier prune-cli: no pruning state per level
        (root / "checkpoints" / "level_00_pruning.pt").unlink()
    where = {"RUN": str(root), "FIXED": str(root), "OLD": str(root)}
    where["missing"] = str(tmp_path / "missing")
    argv = [where.get(a, a.replace("OUT", str(tmp_path / "out"))) for a in args]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and err.startswith("prune-export: error:")
    assert not (root / "export").exists() and not (tmp_path / "out").exists()  # nothing written


def test_directory_without_config_is_refused(tmp_path, capsys) -> None:
    (tmp_path / "checkpoints").mkdir()
    save_torch({}, tmp_path / "checkpoints" / "level_00.pt")
    with pytest.raises(SystemExit):
        main([str(tmp_path)])
    assert "no config.yaml" in capsys.readouterr().err
