"""Files the tool writes follow the umask; nothing it reads can run code; garbage is one line."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import procs
import pytest
import torch
from datafiles import write_cifar10
from omegaconf import OmegaConf

from prune_cli.data import DataError
from prune_cli.data.cifar import load_cifar10
from prune_cli.export import main as export_main
from prune_cli.models.cifar_resnet import cifar_resnet
from prune_cli.pruning import MaskPruner, Network, criteria
from prune_cli.pruning.channels import ChannelPruner, apply_channel_removal
from prune_cli.store import (
    CorruptFileError,
    DenseCache,
    append_row,
    atomic_path,
    load_torch,
    read_json,
    read_rows,
    remove_orphan_temps,
    save_torch,
    write_rows,
    write_text,
)
from prune_cli.train import rng_state, set_rng_state
from tests.conftest import QUIET, TINY, compose


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


class Payload:
    """Pickles as a call of ``os.system`` that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path: Path, marker: Path) -> None:
    """A torch checkpoint at ``path`` whose unpickling (weights_only=False) runs a command."""
    torch.save({"conv1.weight": torch.zeros(1), "x": Payload(marker)}, path)


def prune_run(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """The real ``prune-run`` (as tests/conftest.py's ``cli`` fixture), in ``tmp``."""
    argv = [
        sys.executable,
        "-m",
        "prune_cli.cli",
        *QUIET,
        f"runtime.cache_dir={tmp / 'cache'}",
        *args,
    ]
    return procs.run(
        argv,
        cwd=tmp,
        capture_output=True,
        text=True,
        env={**os.environ, "PRUNE_CLI_DATA": str(tmp / "data")},
        timeout=600,
    )


RUN = [*TINY, "pruning.levels=1"]


@pytest.fixture(scope="module")
def ran_under_022(tmp_path_factory) -> Path:
    """A finished quick run (and its dense cache entry) made by ``prune-run`` under umask 022."""
    tmp = tmp_path_factory.mktemp("umask022")
    with umask(0o022):  # the child process inherits it
        proc = prune_run(tmp, *RUN, f"hydra.run.dir={tmp / 'run'}")
    assert proc.returncode == 0, proc.stderr
    return tmp


# ----------------------------------------------------------------------------------------------
# Permissions
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_follow_the_umask(tmp_path, mask, expected) -> None:
    with umask(mask):
        save_torch({"w": torch.ones(2)}, tmp_path / "a.pt")
        write_text(tmp_path / "b.txt", "x\n")
        append_row(tmp_path / "results.jsonl", {"level": 0})
        write_rows(tmp_path / "rows.jsonl", [{"level": 0}])
        cache = DenseCache(tmp_path / "cache", "k")
        with cache.lock():
            cache.commit({"acc": 0.5, "epochs": 1, "images_seen": 10, "wall_s": 1.0})
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 6  # the five files and the cache's lock
    assert {p.name: oct(mode(p)) for p in files} == {p.name: oct(expected) for p in files}


def test_a_run_under_umask_022_is_readable_by_others(ran_under_022) -> None:
    run, (entry,) = ran_under_022 / "run", (ran_under_022 / "cache" / "dense").iterdir()
    for path in (
        run / "checkpoints" / "level_01.pt",
        run / "checkpoints" / "level_01_pruning.pt",
        run / "results.jsonl",
        entry / "meta.json",
        entry / "final.pt",
    ):
        assert mode(path) == 0o644, path
    unreadable = [
        p for p in (*run.rglob("*"), *entry.rglob("*")) if p.is_file() and mode(p) & 0o044 != 0o044
    ]
    assert unreadable == []


# ----------------------------------------------------------------------------------------------
# Checkpoints run no code
# ----------------------------------------------------------------------------------------------


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path) -> None:
    bad, marker = tmp_path / "final.pt", tmp_path / "PWNED"
    plant(bad, marker)
    with pytest.raises(CorruptFileError) as e:
        load_torch(bad)
    line = one_line(str(e.value))
    assert str(bad) in line and "system" in line and "never runs code" in line
    assert not marker.exists()
    # the payload is live: the loader the tool used before would have run it
    torch.load(bad, weights_only=False)
    assert marker.exists()


def test_a_planted_cache_checkpoint_is_refused_by_prune_run(ran_under_022, tmp_path) -> None:
    shutil.copytree(ran_under_022 / "cache", tmp_path / "cache")
    (final,) = (tmp_path / "cache").glob("dense/*/final.pt")
    marker = tmp_path / "PWNED"
    plant(final, marker)
    proc = prune_run(tmp_path, *RUN, f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode != 0
    line = one_line(proc.stderr)
    assert line.startswith("prune-run: error:") and str(final) in line and "system" in line
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not marker.exists()


@pytest.mark.parametrize(
    "content",
    [b"", b"\xff\xfe garbage \x00" * 20, b"PK\x03\x04 not really a zip"],
    ids=["empty", "garbage", "fake zip"],
)
def test_a_torn_or_foreign_checkpoint_is_one_line(tmp_path, content) -> None:
    path = tmp_path / "level_01.pt"
    path.write_bytes(content)
    with pytest.raises(CorruptFileError) as e:
        load_torch(path)
    assert str(path) in one_line(str(e.value))


def test_a_training_state_is_tensors_and_plain_data(tmp_path) -> None:
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    np.random.randn()  # a cached gaussian is part of numpy's state
    save_torch({"rng": rng_state()}, tmp_path / "state.pt")
    expected = (random.random(), np.random.randn(3).tolist(), torch.rand(3))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    set_rng_state(torch.load(tmp_path / "state.pt", weights_only=True)["rng"])
    again = (random.random(), np.random.randn(3).tolist(), torch.rand(3))
    assert again[:2] == expected[:2] and torch.equal(again[2], expected[2])


def test_a_channel_plan_is_plain_data(tmp_path) -> None:
    torch.manual_seed(0)
    model = cifar_resnet(20)
    fresh = cifar_resnet(20)
    fresh.load_state_dict(model.state_dict())
    pruner = ChannelPruner(
        "l1_filter", criteria.l1_filter, [0.5, 0.3, 0.1], [], measure_inference=False
    )
    pruner.attach(Network(model, [3, 32, 32], lambda: cifar_resnet(20)))
    pruner.prune(1, torch.Generator().manual_seed(0))
    state = pruner.state_dict()
    (plan,) = state["plans"]
    assert plan and all(
        isinstance(k, str) and isinstance(v, list) and all(type(i) is int for i in v)
        for k, v in plan.items()
    )
    save_torch(state, tmp_path / "level_01_pruning.pt")
    loaded = load_torch(tmp_path / "level_01_pruning.pt")  # weights_only: plain data loads
    assert loaded == state
    apply_channel_removal(fresh, loaded["plans"][0], (3, 32, 32))
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    with pytest.raises(ValueError, match="not a conv name with a list"):
        apply_channel_removal(fresh, {"conv1": [0.5]}, (3, 32, 32))
    with pytest.raises(ValueError, match="a plan is a dict"):
        apply_channel_removal(fresh, [1, 2], (3, 32, 32))


# ----------------------------------------------------------------------------------------------
# Dataset pickles run no code
# ----------------------------------------------------------------------------------------------


def test_a_cifar_batch_that_would_run_code_is_refused(tmp_path) -> None:
    folder = write_cifar10(tmp_path)
    marker = tmp_path / "PWNED"
    bad = folder / "data_batch_2"
    with open(bad, "wb") as f:
        pickle.dump({b"data": Payload(marker), b"labels": [0]}, f, protocol=2)
    with pytest.raises(DataError) as e:
        load_cifar10(str(tmp_path), download=False)
    line = one_line(str(e.value))
    assert str(bad) in line and "system" in line and "never runs code" in line
    assert not marker.exists()


def test_a_cifar_batch_of_python_objects_is_refused(tmp_path) -> None:
    folder = write_cifar10(tmp_path)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.array([1, "a"], dtype=object), b"labels": [0]}, f, protocol=2)
    with pytest.raises(DataError, match="objects"):
        load_cifar10(str(tmp_path), download=False)


def test_cifar_batches_of_numpy_1_and_of_protocol_5_load(tmp_path) -> None:
    folder = write_cifar10(tmp_path)
    reference = load_cifar10(str(tmp_path), download=False)
    for name in ("data_batch_1", "data_batch_2"):  # as numpy 1 wrote them (the official files)
        blob = (folder / name).read_bytes()
        if b"numpy._core.multiarray" in blob:
            blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        (folder / name).write_bytes(blob)
    batch = folder / "data_batch_3"
    with open(batch, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    with open(batch, "wb") as f:
        pickle.dump(d, f, protocol=5)
    again = load_cifar10(str(tmp_path), download=False)
    assert torch.equal(again.x_train, reference.x_train)
    assert torch.equal(again.y_train, reference.y_train)


# ----------------------------------------------------------------------------------------------
# Garbage in the JSON files the tool wrote
# ----------------------------------------------------------------------------------------------

GARBAGE = b"\xff\xfe\x00\x81garbage\n"


def test_garbage_results_rows_are_one_line_naming_file_and_line(tmp_path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_bytes(b'{"level": 0}\n' + GARBAGE)
    with pytest.raises(CorruptFileError) as e:
        read_rows(path)
    assert f"{path}, line 2" in one_line(str(e.value))
    path.write_bytes(b'{"level": 0}\n[1, 2]\n')
    with pytest.raises(CorruptFileError, match="line 2: not a JSON object"):
        read_rows(path)


@pytest.mark.parametrize(
    "content",
    [GARBAGE, b"", b"[1, 2]", b'{"acc": "high", "epochs": 1, "images_seen": 1, "wall_s": 1}'],
    ids=["garbage", "empty", "list", "no number"],
)
def test_garbage_meta_json_is_one_line_naming_it(tmp_path, content) -> None:
    cache = DenseCache(tmp_path, "k")
    cache.dir.mkdir(parents=True)
    cache.meta_path.write_bytes(content)
    with pytest.raises(CorruptFileError) as e:
        cache.meta()
    assert str(cache.meta_path) in one_line(str(e.value))


def test_read_json(tmp_path) -> None:
    path = tmp_path / "run.json"
    write_text(path, json.dumps({"config_hash": "abc"}))
    assert read_json(path) == {"config_hash": "abc"}
    path.write_bytes(GARBAGE)
    with pytest.raises(CorruptFileError, match="not UTF-8"):
        read_json(path)
    with pytest.raises(CorruptFileError, match="cannot be read"):
        read_json(tmp_path / "missing.json")


def test_garbage_results_file_through_prune_run_is_one_line(tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.jsonl").write_bytes(GARBAGE)
    proc = prune_run(tmp_path, *RUN, f"hydra.run.dir={run}")
    assert proc.returncode != 0
    line = one_line(proc.stderr)
    assert line.startswith("prune-run: error:") and str(run / "results.jsonl") in line


# ----------------------------------------------------------------------------------------------
# Masks of the wrong type
# ----------------------------------------------------------------------------------------------


def _pruner() -> MaskPruner:
    pruner = MaskPruner("global_magnitude", criteria.magnitude, rate=0.2, levels=1)
    pruner.attach(Network(cifar_resnet(20), [3, 32, 32], lambda: cifar_resnet(20)))
    return pruner


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda s: list(s.values()), "not the pruning state of this run (no masks)"),
        (lambda s: {"plans": [s]}, "not the pruning state of this run (no masks)"),
        (lambda s: {"masks": list(s["masks"].values())}, "a list, not a dict"),
        (
            lambda s: {"masks": {k: v.float() for k, v in s["masks"].items()}},
            "torch.float32, not a bool tensor",
        ),
        (lambda s: {"masks": {k: v[:1] for k, v in s["masks"].items()}}, "has shape"),
        (lambda s: {"masks": dict(list(s["masks"].items())[1:])}, "no mask for conv1.weight"),
        (
            lambda s: {"masks": {**s["masks"], "extra.weight": torch.ones(1, dtype=torch.bool)}},
            "unknown names",
        ),
        (lambda s: {"masks": {k: 1 for k in s["masks"]}}, "is int"),
    ],
    ids=["list", "plans", "masks list", "floats", "shape", "missing", "extra", "not tensors"],
)
def test_masks_of_the_wrong_type_are_one_line_naming_the_file(tmp_path, damage, needle) -> None:
    path = tmp_path / "level_01_pruning.pt"
    save_torch(damage(_pruner().state_dict()), path)
    pruner = _pruner()
    masks = pruner.masks
    before = [m.clone() for m in masks.tensors]
    with pytest.raises(CorruptFileError) as e:
        pruner.load_state_dict(load_torch(path), source=path)
    line = one_line(str(e.value))
    assert str(path) in line and needle in line
    assert all(torch.equal(a, b) for a, b in zip(before, masks.tensors))  # nothing changed


# ----------------------------------------------------------------------------------------------
# prune-export of a corrupt checkpoint
# ----------------------------------------------------------------------------------------------


def _export_run(tmp_path: Path) -> Path:
    root = tmp_path / "run"
    (root / "checkpoints").mkdir(parents=True)
    cfg = compose("model=resnet20", "dataset=synthetic")
    (root / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    pruner = _pruner()
    save_torch(pruner.net.model.state_dict(), root / "checkpoints" / "level_00.pt")
    save_torch(pruner.state_dict(), root / "checkpoints" / "level_00_pruning.pt")
    return root


@pytest.mark.parametrize(
    "damage",
    ["truncated", "planted", "masks list", "masks in a list", "pruning planted", "foreign"],
)
def test_export_of_a_corrupt_checkpoint_is_one_line(tmp_path, capsys, damage) -> None:
    root = _export_run(tmp_path)
    weights, masks = (
        root / "checkpoints" / "level_00.pt",
        root / "checkpoints" / "level_00_pruning.pt",
    )
    marker = tmp_path / "PWNED"
    bad = weights
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "planted":
        plant(weights, marker)
    elif damage == "masks list":
        save_torch([1, 2, 3], masks)
        bad = masks
    elif damage == "masks in a list":
        save_torch({"masks": [1, 2, 3]}, masks)
        bad = masks
    elif damage == "pruning planted":
        plant(masks, marker)
        bad = masks
    else:
        save_torch({"fc.weight": torch.zeros(3, 3)}, weights)
    with pytest.raises(SystemExit) as exit_:
        export_main([str(root), "--level", "0"])
    assert exit_.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("prune-export: error:") and str(bad) in line
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------
# Orphan temporary files
# ----------------------------------------------------------------------------------------------


def test_orphan_temps_of_killed_writes_are_removed(tmp_path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    keep = [
        run / "results.jsonl",
        run / ".lock",
        run / ".hydra" / "config.yaml",
        run / "notes.tmp",
        run / ".short.tmp",
        run / "checkpoints" / "level_01.pt",
    ]
    for p in keep:
        p.write_text("x")
    # writes killed between creating their temporary file and renaming it
    code = (
        "import os, sys; from pathlib import Path; from prune_cli.store import atomic_path\n"
        "with atomic_path(Path(sys.argv[1])) as tmp:\n"
        "    tmp.write_text('half')\n"
        "    os._exit(9)\n"
    )
    for target in (run / "results.jsonl", run / "checkpoints" / "level_02.pt"):
        proc = procs.run([sys.executable, "-c", code, str(target)], timeout=120)
        assert proc.returncode == 9
    old_style = run / "checkpoints" / ".level_01.pt.k2_x9q0a.tmp"  # as tempfile.mkstemp named them
    old_style.write_text("x")
    orphans = {p for p in run.rglob(".*.tmp") if p.name != ".short.tmp"}
    assert len(orphans) == 3
    assert set(remove_orphan_temps(run)) == orphans
    assert sorted(p for p in run.rglob("*") if p.is_file()) == sorted(keep)
    assert remove_orphan_temps(run) == []


def test_a_failed_write_leaves_no_temp_and_the_old_file(tmp_path) -> None:
    path = tmp_path / "results.jsonl"
    write_text(path, "old\n")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("new")
        raise RuntimeError("disk full")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == [path.name]
