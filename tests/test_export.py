"""prune-export: files that load without prune_cli, and one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from prune_cli.export import main
from prune_cli.models.cifar_resnet import cifar_resnet
from prune_cli.pruning import Masks, prunable_parameters
from prune_cli.store import save_torch
from prune_cli.structured import structured_level
from tests.conftest import compose

SHAPE = (3, 32, 32)


def run_dir(tmp_path: Path) -> tuple[Path, object]:
    """A run directory as prune-run leaves it: config.yaml and the level-0 checkpoint."""
    cfg = compose("model=resnet20", "dataset=synthetic")
    root = tmp_path / "run"
    (root / "checkpoints").mkdir(parents=True)
    (root / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    torch.manual_seed(0)
    model = cifar_resnet(20).eval()
    save_torch(model.state_dict(), root / "checkpoints" / "level_00.pt")
    return root, model


def test_masked_run_exports_a_plain_state_dict(tmp_path, capsys) -> None:
    root, model = run_dir(tmp_path)
    masks = Masks(prunable_parameters(model))
    masks.prune(0.5)
    save_torch(model.state_dict(), root / "checkpoints" / "level_01.pt")
    save_torch(masks.state_dict(), root / "checkpoints" / "level_01_masks.pt")
    main([str(root)])
    out = root / "export" / "level_01.pt"
    assert capsys.readouterr().out.strip() == str(out)
    state = torch.load(out, weights_only=True)  # tensors only: no prune_cli object inside
    fresh = cifar_resnet(20).eval()
    fresh.load_state_dict(state)
    assert int((state["layer1.0.conv1.weight"] != 0).sum()) == int(
        masks.masks["layer1.0.conv1.weight"].sum()
    )
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))


def test_structured_run_exports_torchscript_of_the_small_network(tmp_path) -> None:
    root, model = run_dir(tmp_path)
    stats = structured_level(model, {"stage_ratios": [0.5, 0.3, 0.1], "skip": []}, SHAPE)
    with torch.no_grad():  # stands in for retraining: the export must carry the new weights
        for p in model.parameters():
            p.add_(0.01)
    save_torch(model.state_dict(), root / "checkpoints" / "level_01.pt")
    save_torch(stats["plan"], root / "checkpoints" / "level_01_plan.pt")
    out = tmp_path / "small.pt"
    main([str(root), "--level", "1", "--out", str(out)])
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(out))(x), model(x))
    # a fresh interpreter that never imports prune_cli loads and runs it
    code = (
        "import sys, torch; m = torch.jit.load(sys.argv[1]);"
        " assert 'prune_cli' not in sys.modules;"
        " print(tuple(m(torch.zeros(1, 3, 32, 32)).shape), getattr(m.layer1, '0').conv1.weight.shape[0])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["(1,", "10)", "8"]


def test_level_zero_of_a_structured_run_is_the_dense_state_dict(tmp_path) -> None:
    root, model = run_dir(tmp_path)
    main([str(root), "--level", "0"])
    state = torch.load(root / "export" / "level_00.pt", weights_only=True)
    assert torch.equal(state["conv1.weight"], model.conv1.weight)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["missing"], "no such run directory"),
        (["RUN", "--level", "3"], "no checkpoint for level 3 (levels: 0)"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, needle) -> None:
    root, _ = run_dir(tmp_path)
    argv = [str(root) if a == "RUN" else str(tmp_path / a) if a == "missing" else a for a in args]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and err.startswith("prune-export: error:")


def test_directory_without_config_is_refused(tmp_path, capsys) -> None:
    (tmp_path / "checkpoints").mkdir()
    save_torch({}, tmp_path / "checkpoints" / "level_00.pt")
    with pytest.raises(SystemExit):
        main([str(tmp_path)])
    assert "no config.yaml" in capsys.readouterr().err
