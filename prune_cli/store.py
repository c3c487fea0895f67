"""Files of a run: config hashes, atomic writes, results rows, checkpoints, the dense cache.

Every write here is atomic (temporary file in the same directory, fsync, ``os.replace``), so a
kill at any instant leaves either the old or the new complete file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

# Keys that do not change what a run computes (where it reads data, how it reports progress).
_NOT_HASHED = {"hydra", "progress", "cache_dir", "rerun", "device", "threads"}
_NOT_HASHED_DATASET = {"root", "download"}


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _drop_unset(obj: Any) -> Any:
    # a key added later with default null (or empty) leaves the hashes of existing configs as
    # they were
    if isinstance(obj, dict):
        return {k: _drop_unset(v) for k, v in obj.items() if v is not None and v != [] and v != {}}
    if isinstance(obj, list):
        return [_drop_unset(v) for v in obj]
    return obj


def run_spec(cfg: DictConfig) -> dict:
    """The part of a config that determines a run's results, as plain data (null and empty
    values are left out, so that adding an optional key does not rename existing runs and caches)."""
    spec = {k: _drop_unset(_plain(cfg[k])) for k in cfg if k not in _NOT_HASHED}
    data = {k: v for k, v in spec["dataset"].items() if k not in _NOT_HASHED_DATASET}
    if isinstance(data.get("loader"), dict):  # the loader repeats root/download by interpolation
        data["loader"] = {k: v for k, v in data["loader"].items() if k not in _NOT_HASHED_DATASET}
    spec["dataset"] = data
    spec["train"] = {k: v for k, v in spec["train"].items() if k != "snapshot_epochs"}
    return spec


def dense_spec(cfg: DictConfig) -> dict:
    """What determines the dense model: model, data, recipe, seed and precision.

    Settings that change only speed (channels-last, torch.compile) or which snapshots are kept
    are left out, so that runs differing only in those share one dense model.
    """
    spec = run_spec(cfg)
    train = {k: v for k, v in spec["train"].items() if k not in ("channels_last", "compile")}
    return {
        # the architecture, not its name or which layers later pruning leaves alone
        "model": {k: v for k, v in spec["model"].items() if k not in ("name", "prune_exclude")},
        "dataset": spec["dataset"],
        "train": train,
        "seed": spec["seed"],
        "deterministic": spec["deterministic"],
    }


def digest(obj: Any) -> str:
    """A stable hex digest of JSON-able data (sorted keys, so key order never matters)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def config_hash(cfg: DictConfig) -> str:
    """Hash of everything that determines a run's results."""
    return digest(run_spec(cfg))


def dense_hash(cfg: DictConfig) -> str:
    """Hash that keys the dense cache."""
    return digest(dense_spec(cfg))


# ----------------------------------------------------------------------------------------------
# Atomic files
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: Path, text: str) -> None:
    """Atomically write ``text`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_torch(obj: Any, path: Path) -> None:
    """Atomically ``torch.save`` ``obj`` to ``path``."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


class CorruptFileError(RuntimeError):
    """A checkpoint or cache file that exists but cannot be read."""


def load_torch(path: Path, map_location: Any = "cpu") -> Any:
    """``torch.load`` that names the file when it is torn or corrupt."""
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing
        raise CorruptFileError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from e


# ----------------------------------------------------------------------------------------------
# Results rows
# ----------------------------------------------------------------------------------------------


def read_rows(path: Path) -> list[dict]:
    """The rows of a ``results.jsonl`` (empty if the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    return [_json(path, line) for line in path.read_text().splitlines() if line.strip()]


def _json(path: Path, text: str) -> Any:
    """``json.loads(text)``, or :class:`CorruptFileError` naming ``path`` if it is torn."""
    try:
        return json.loads(text)
    except ValueError as e:
        raise CorruptFileError(f"{path}: unreadable ({type(e).__name__}: {e})") from e


def append_row(path: Path, row: dict) -> None:
    """Append one JSON row to ``path`` atomically (the file is rewritten whole and replaced)."""
    path = Path(path)
    old = path.read_bytes() if path.exists() else b""
    with atomic_path(path) as tmp:
        tmp.write_bytes(old + (json.dumps(row, sort_keys=True) + "\n").encode())


def write_rows(path: Path, rows: list[dict]) -> None:
    """Atomically replace ``path`` with ``rows``."""
    write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


# ----------------------------------------------------------------------------------------------
# The dense cache
# ----------------------------------------------------------------------------------------------


class DenseCache:
    """Dense models keyed by :func:`dense_hash`, shared by every run and sweep job.

    ``cache_dir/dense/<hash>/`` holds ``final.pt`` (state_dict), ``snap_<epoch>.pt`` for weight
    rewinding, ``meta.json`` (accuracy, images, seconds, the spec) written last, and a lock file:
    the first job to take the lock trains; the others wait and then read the finished entry.
    """

    def __init__(self, root: Path, key: str):
        self.dir = Path(root) / "dense" / key
        self.key = key

    @property
    def meta_path(self) -> Path:
        return self.dir / "meta.json"

    def lock(self) -> FileLock:
        self.dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.dir / ".lock"))

    def meta(self) -> dict | None:
        """The entry's metadata if it is complete, else ``None``."""
        if not self.meta_path.exists():
            return None
        return _json(self.meta_path, self.meta_path.read_text())

    def snapshot_path(self, epoch: int) -> Path:
        return self.dir / f"snap_{epoch:04d}.pt"

    def has_snapshots(self, epochs: list[int]) -> bool:
        return all(self.snapshot_path(e).exists() for e in epochs)

    def final_path(self) -> Path:
        return self.dir / "final.pt"

    def state_path(self) -> Path:
        """Where the training phase that fills this entry keeps its resume state."""
        return self.dir / "train_state.pt"

    def commit(self, meta: dict) -> None:
        """Mark the entry complete (``meta.json`` is written last, atomically)."""
        write_text(self.meta_path, json.dumps(meta, indent=1, sort_keys=True))
