"""Shared fixtures: compose the real configs, and run the real `prune-run` CLI."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import procs
import pytest
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir

# importing the CLI registers the run_id resolver that hydra.run.dir uses; its lock serialises
# compositions (Hydra's compose API keeps global state) with those prevalidation makes
from prune_cli.cli import _COMPOSE_LOCK
from prune_cli.config import CONF_DIR, register

# The suite runs on 2 cores with 2 pytest workers: one torch thread each (also in subprocesses)
# avoids oversubscription, which slows these tiny models down several times.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"

# Settings every tiny run shares: no progress bars, a private dense cache.
QUIET = ["runtime.progress=false"]


def compose(*overrides: str, hydra_cfg: bool = False):
    """The config `prune-run` would run for these overrides (real conf/, real schema), composed
    with Hydra's public compose API; ``hydra_cfg``: with Hydra's own node (``hydra.run.dir``)."""
    register()
    with _COMPOSE_LOCK, initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides), return_hydra_config=hydra_cfg)


@pytest.fixture(autouse=True)
def private_dense_cache(tmp_path, monkeypatch):
    """The default dense cache (`runtime.cache_dir`: $PRUNE_CLI_CACHE, else ./.prune-cache) of a
    test is its own: checks and runs that name none write nothing into the working directory."""
    monkeypatch.setenv("PRUNE_CLI_CACHE", str(tmp_path / ".prune-cache"))


@pytest.fixture
def cli(tmp_path):
    """Run `prune-run ARGS` in its own process inside `tmp_path`; returns the CompletedProcess.

    The run directory is `tmp_path/run` unless the args give one, the dense cache `tmp_path/cache`.
    """

    def run(
        *args: str,
        run_dir: Path | None = None,
        check: bool = True,
        env: dict | None = None,
        installed: bool = False,
    ):
        # installed: the console script itself, in a fresh interpreter (tests/procs.py forks
        # `python -m prune_cli.cli` from a server that has imported it)
        command = [str(Path(sys.executable).parent / "prune-run")]
        argv = [
            *(command if installed else [sys.executable, "-m", "prune_cli.cli"]),
            *QUIET,
            f"runtime.cache_dir={tmp_path / 'cache'}",
        ]
        if not any(a.startswith("hydra.run.dir") or a in ("-m", "--multirun") for a in args):
            argv.append(f"hydra.run.dir={run_dir or tmp_path / 'run'}")
        argv += list(args)
        proc = procs.run(
            argv,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env={**os.environ, "PRUNE_CLI_DATA": str(tmp_path / "data"), **(env or {})},
            timeout=600,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"prune-run {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    return run


def cli_env(root: Path) -> dict:
    """The environment of a `prune-run` subprocess in ``root``: its data there, one thread."""
    return {**os.environ, "PRUNE_CLI_DATA": str(root / "data"), "OMP_NUM_THREADS": "1"}


def cli_argv(root: Path, *args: str) -> list[str]:
    """`prune-run ARGS` quietly, with its dense cache in ``root/cache``; Hydra's flags (`-m`)
    go before the overrides."""
    flags = [a for a in args if a.startswith("-")]
    overrides = [a for a in args if not a.startswith("-")]
    return [
        sys.executable,
        "-m",
        "prune_cli.cli",
        *flags,
        *QUIET,
        f"runtime.cache_dir={root / 'cache'}",
        *overrides,
    ]


def cli_run(root: Path, *args: str) -> procs.CompletedProcess:
    """`prune-run ARGS` in ``root`` (see `cli_argv`, `cli_env`), output captured as text."""
    return procs.run(
        cli_argv(root, *args),
        cwd=root,
        capture_output=True,
        text=True,
        env=cli_env(root),
        timeout=600,
    )


def run_inprocess(run_dir: Path, *overrides: str) -> list[dict]:
    """Compose the real config and run the real runner in this process (no Hydra job wrapper)."""
    from prune_cli.config import validate
    from prune_cli.runner import run

    cfg = compose(*QUIET, f"runtime.cache_dir={run_dir.parent / 'cache'}", *overrides)
    validate(cfg)
    return run(cfg, run_dir)


# A small LeNet-on-digits setup whose dense schedule has steps, so every method's LR differs.
TINY = [
    "experiment=quickstart",
    "train.epochs=6",
    "train.batch_size=256",
    "train.schedule.kind=step",
    "train.schedule.milestones=[3,5]",
    "pruning.levels=2",
]


# The longest files first (seconds per file in a 2-worker run on the 2-core machine): xdist's
# --dist loadfile hands whole files to the workers in collection order, so the long ones start
# early and the short ones fill the end instead of one worker finishing a long file alone.
LONGEST_FIRST = [
    "test_presets.py",
    "test_sweeps.py",
    "test_integrity.py",
    "test_slurm.py",
    "test_bad_input.py",
    "test_resume.py",
    "test_cli.py",
    "test_loggers.py",
    "test_presets_imagenet.py",
    "test_report.py",
    "test_distributed.py",
    "test_fidelity.py",
    "test_export.py",
    "test_dryrun.py",
]


def pytest_collection_modifyitems(items) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)).name, len(rank)))  # stable
