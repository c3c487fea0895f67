"""prune-export: turn one level of a run directory into a file that needs no prune_cli to load.

``prune-export RUN_DIR [--level K] [--format pt2|state_dict|torchscript] [--out FILE]``

The network of level K is rebuilt on the CPU: ``model.net`` of the run's ``config.yaml`` is
instantiated, the run's pruner restores level K's state (``checkpoints/level_<kk>_pruning.pt``:
the channel plans of levels 1..K replayed in order, or the masks), the level's weights are loaded
and the masks applied once more (zeros where pruned). Then, by ``--format``:

- ``pt2`` (default): a ``torch.export`` program of the network in eval mode, with a dynamic
  batch dimension (any batch >= 1), for ``torch.export.load(FILE).module()(x)``; the smaller
  architecture of a structured run is inside it, no model code is needed to load it;
- ``state_dict``: a plain ``.pt`` state_dict, for ``model.load_state_dict(torch.load(FILE))``
  into the architecture (for a structured run: the smaller one);
- ``torchscript``: legacy (PyTorch deprecates TorchScript; a warning says so), a traced module
  for ``torch.jit.load(FILE)``.

``--level`` defaults to the last level checkpointed; ``--out`` to ``RUN_DIR/export/level_<kk>``
with ``.pt2`` (pt2) or ``.pt`` (state_dict, torchscript).
Errors (no run directory, no config, no such level, a torn or foreign file: checkpoints load with
``weights_only=True``, so nothing in them runs; a network ``torch.export`` cannot capture) are one
line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import io
import logging
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from prune_cli.errors import CorruptFileError, one_line
from prune_cli.store import atomic_path, load_torch, save_torch

_LEVEL = re.compile(r"level_(\d+)\.pt")


class ExportError(Exception):
    """A run directory or level that cannot be exported; the message is one line."""


def _levels(ckpt: Path) -> list[int]:
    return sorted(
        int(m.group(1)) for p in ckpt.glob("level_*.pt") if (m := _LEVEL.fullmatch(p.name))
    )


def build_model(run_dir: Path, level: int) -> tuple[nn.Module, list[int], bool]:
    """The run's model at ``level`` on the CPU (eval mode), its input shape, and whether it is
    physically smaller than the dense network (channels cut out).

    Raises :class:`ExportError` for a missing directory, config or checkpoint, or files that do
    not fit the run's model, :class:`~prune_cli.store.CorruptFileError` for an unreadable file.
    """
    from prune_cli.models import build_model as build
    from prune_cli.pruning import Network, build_pruner

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
    pruning = ckpt / f"level_{level:02d}_pruning.pt"
    if not pruning.is_file():
        raise ExportError(
            f"{pruning}: missing (a run of an earlier prune-cli, or an incomplete level)"
        )
    try:
        cfg = OmegaConf.load(config)
        input_shape = [int(d) for d in cfg.dataset.input_shape]
        model = build(cfg.model.net)
        pruner = build_pruner(cfg.pruning)
    except Exception as e:  # noqa: BLE001 - a config prune-run did not write, or its model's code
        raise ExportError(f"{config}: cannot build the run's model ({_one_line(e)})") from e
    dense_params = [tuple(p.shape) for p in model.parameters()]
    net = Network(model, input_shape, lambda: build(cfg.model.net), list(cfg.model.prune_exclude))
    pruner.attach(net)
    pruner.load_state_dict(load_torch(pruning), source=pruning)
    state = load_torch(weights)
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ExportError(f"{weights}: not a state_dict (a dict of tensors)")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ExportError(f"{weights}: does not fit the run's model ({_one_line(e)})") from e
    pruner.masks.apply()  # zeros where pruned, once more
    smaller = [tuple(p.shape) for p in model.parameters()] != dense_params
    return model.eval(), input_shape, smaller


def _one_line(e: BaseException) -> str:
    """``e`` squeezed onto one line (e.g. load_state_dict's list of missing keys)."""
    text = one_line(e)
    return text if len(text) <= 300 else text[:297] + "..."


FORMATS = ("pt2", "state_dict", "torchscript")
"""``--format`` choices; the first is the default."""

SUFFIX = {"pt2": ".pt2", "state_dict": ".pt", "torchscript": ".pt"}

TORCHSCRIPT_WARNING = (
    "TorchScript is deprecated by PyTorch and kept here as a legacy format;"
    " --format pt2 (torch.export) is the maintained one"
)


def export(
    run_dir: Path, level: int | None = None, out: Path | None = None, fmt: str = "pt2"
) -> Path:
    """Write the export of ``level`` (default: the last) of ``run_dir`` in format ``fmt`` (one of
    :data:`FORMATS`); return the file written. ``torchscript`` warns (:class:`FutureWarning`)."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt}: unknown; choose from {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: no such run directory")
    if level is None:
        levels = _levels(run_dir / "checkpoints")
        if not levels:
            raise ExportError(f"{run_dir}: no level checkpoints in {run_dir / 'checkpoints'}")
        level = levels[-1]
    model, input_shape, _ = build_model(run_dir, level)
    if out is None:
        out = run_dir / "export" / f"level_{level:02d}{SUFFIX[fmt]}"
    out = Path(out)
    if fmt == "pt2" and out.suffix != ".pt2":
        raise ExportError(
            f"--out {out}: torch.export.load expects a .pt2 file; name it {out.stem}.pt2"
        )
    if fmt == "state_dict":
        save_torch({k: v.detach().cpu() for k, v in model.state_dict().items()}, out)
        return out
    buf = io.BytesIO()  # the whole file first: a full disk is then an OSError naming it
    if fmt == "pt2":
        torch.export.save(export_program(model, input_shape), buf)
    else:
        warnings.warn(TORCHSCRIPT_WARNING, FutureWarning, stacklevel=2)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
            torch.jit.save(torch.jit.trace(model, torch.zeros(1, *input_shape)), buf)
    with atomic_path(out) as tmp:
        tmp.write_bytes(buf.getbuffer())
    return out


def export_program(model: nn.Module, input_shape: list[int]) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` (eval mode, CPU) whose batch dimension is dynamic (>= 1).

    Traced with an example batch of 2: a batch of 1 would be specialised (torch.export treats
    sizes 0 and 1 as constants), and the program would then refuse every other batch size.
    A network whose code fixes the batch (e.g. ``x.view(1, -1)``) cannot be exported this way:
    :class:`ExportError`, naming the other formats.
    """
    batch = torch.export.Dim("batch", min=1)
    example = torch.zeros(2, *input_shape)
    quiet = logging.root.manager.disable  # torch logs a traceback before raising: the line says it
    logging.disable(logging.ERROR)
    try:
        with torch.no_grad():
            return torch.export.export(
                model.eval(), (example,), dynamic_shapes=({0: batch},), strict=False
            )
    except Exception as e:  # noqa: BLE001 - torch.export's errors are many and long
        raise ExportError(
            f"torch.export cannot capture the run's model with a dynamic batch ({_one_line(e)});"
            " --format state_dict (or the legacy --format torchscript) exports it otherwise"
        ) from e
    finally:
        logging.disable(quiet)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point of ``prune-export``; exits 2 with one line on stderr on bad input."""
    parser = argparse.ArgumentParser(
        prog="prune-export",
        description="Export one level of a prune-run run directory as a file that loads without"
        " prune_cli: a torch.export program (.pt2, any batch size) by default, or a plain"
        " state_dict, or (legacy) TorchScript.",
    )
    parser.add_argument("run_dir", type=Path, help="the run directory (holds config.yaml)")
    parser.add_argument("--level", type=int, default=None, help="level to export (default: last)")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default=FORMATS[0],
        dest="fmt",
        help="pt2: torch.export program, load with torch.export.load(FILE).module() (default);"
        " state_dict: plain state_dict for model.load_state_dict(torch.load(FILE));"
        " torchscript: legacy, torch.jit.load(FILE)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output file (default: RUN_DIR/export/level_<kk>.pt2, or .pt for the other formats)",
    )
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", FutureWarning)
            path = export(args.run_dir, args.level, args.out, args.fmt)
    except (ExportError, CorruptFileError) as e:
        print(f"prune-export: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as e:  # e.g. --out in a read-only directory
        print(f"prune-export: error: {e.filename}: {e.strerror}", file=sys.stderr)
        raise SystemExit(2) from None
    if any(str(w.message) == TORCHSCRIPT_WARNING for w in caught):
        print(f"prune-export: warning: {TORCHSCRIPT_WARNING}", file=sys.stderr)
    print(path)


if __name__ == "__main__":
    main()
