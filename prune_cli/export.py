"""prune-export: turn one level of a run directory into a file that needs no prune_cli to load.

``prune-export RUN_DIR [--level K] [--out FILE]``

- masked (unstructured) runs: a plain ``state_dict`` ``.pt`` (zeros where pruned, the masks
  applied once more), for ``model.load_state_dict(torch.load(FILE))`` into the architecture;
- structured runs (a ``checkpoints/level_<kk>_plan.pt`` exists for some level ≤ K): a TorchScript
  ``.pt`` of the smaller network, for ``torch.jit.load(FILE)``. The small architecture is
  rebuilt by instantiating ``model.net`` of the run's ``config.yaml`` and replaying the plans of
  levels 1..K in order, then the level's weights are loaded and the network is traced (eval mode).

``--level`` defaults to the last level checkpointed; ``--out`` to ``RUN_DIR/export/level_<kk>.pt``.
Errors (no run directory, no config, no such level) are one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from prune_cli.store import load_torch, save_torch
from prune_cli.structured import apply_channel_removal

_LEVEL = re.compile(r"level_(\d+)\.pt")


class ExportError(Exception):
    """A run directory or level that cannot be exported; the message is one line."""


def _levels(ckpt: Path) -> list[int]:
    return sorted(
        int(m.group(1)) for p in ckpt.glob("level_*.pt") if (m := _LEVEL.fullmatch(p.name))
    )


def _plans(ckpt: Path, level: int) -> list[Path]:
    """The plan files of levels 1..``level``, in order (empty for a masked run)."""
    return [p for k in range(1, level + 1) if (p := ckpt / f"level_{k:02d}_plan.pt").exists()]


def build_model(run_dir: Path, level: int) -> tuple[nn.Module, list[int], bool]:
    """The run's model at ``level`` on the CPU (eval mode), its input shape, and whether it is structured.

    Raises :class:`ExportError` for a missing directory, config or checkpoint.
    """
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: no such run directory")
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise ExportError(f"{run_dir}: no config.yaml (not a prune-run run directory)")
    ckpt = run_dir / "checkpoints"
    weights = ckpt / f"level_{level:02d}.pt"
    if not weights.is_file():
        have = ", ".join(str(k) for k in _levels(ckpt)) or "none"
        raise ExportError(f"{run_dir}: no checkpoint for level {level} (levels: {have})")
    cfg = OmegaConf.load(config)
    input_shape = [int(d) for d in cfg.dataset.input_shape]
    model = instantiate(cfg.model.net)
    plans = _plans(ckpt, level)
    for path in plans:  # each plan's indices refer to the network the previous plans left
        apply_channel_removal(model, load_torch(path), input_shape)
    state = load_torch(weights)
    masks_path = ckpt / f"level_{level:02d}_masks.pt"
    if not plans and masks_path.is_file():
        for name, mask in load_torch(masks_path).items():
            if name in state and mask.shape == state[name].shape:
                state[name] = state[name] * mask.to(state[name].dtype)
    model.load_state_dict(state)
    return model.eval(), input_shape, bool(plans)


def export(run_dir: Path, level: int | None = None, out: Path | None = None) -> Path:
    """Write the export of ``level`` (default: the last) of ``run_dir``; return the file written."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: no such run directory")
    if level is None:
        levels = _levels(run_dir / "checkpoints")
        if not levels:
            raise ExportError(f"{run_dir}: no level checkpoints in {run_dir / 'checkpoints'}")
        level = levels[-1]
    model, input_shape, structured = build_model(run_dir, level)
    out = Path(out) if out is not None else run_dir / "export" / f"level_{level:02d}.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    if structured:
        # TorchScript is deprecated in favour of torch.export but still the one format that
        # loads with a single call anywhere (C++ included); keep the run's output free of it
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
            traced = torch.jit.trace(model, torch.zeros(1, *input_shape))
        traced.save(str(out))
    else:
        save_torch({k: v.detach().cpu() for k, v in model.state_dict().items()}, out)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point of ``prune-export``; exits 2 with one line on stderr on bad input."""
    parser = argparse.ArgumentParser(
        prog="prune-export",
        description="Export one level of a prune-run run directory: a plain state_dict for masked"
        " runs, a TorchScript module of the smaller network for structured runs.",
    )
    parser.add_argument("run_dir", type=Path, help="the run directory (holds config.yaml)")
    parser.add_argument("--level", type=int, default=None, help="level to export (default: last)")
    parser.add_argument(
        "--out", type=Path, default=None, help="output file (default: RUN_DIR/export/level_<kk>.pt)"
    )
    args = parser.parse_args(argv)
    try:
        path = export(args.run_dir, args.level, args.out)
    except ExportError as e:
        print(f"prune-export: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(path)


if __name__ == "__main__":
    main()
