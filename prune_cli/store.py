"""Files of a run: config hashes, atomic writes, results rows, checkpoints, the dense cache.

Every write here is atomic (temporary file in the same directory, fsync, ``os.replace``), so a
kill at any instant leaves either the old or the new complete file; the temporary files such a
kill leaves behind are removed by :func:`remove_orphan_temps`. Files are created with the
permissions the umask (and a directory's default ACL) gives, like any other program's.

Nothing read here can run code: checkpoints load with ``torch.load(weights_only=True)`` (tensors
and plain data only), and any file that is torn, foreign or needs more is a
:class:`CorruptFileError` with one line naming it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import math
import os
import re
import secrets
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf

from prune_cli.errors import CorruptFileError, MissingSnapshotError

log = logging.getLogger("prune_cli")

# What does not change what a run computes: how it executes (`runtime`), Hydra's own settings,
# and where the data is read from.
_NOT_HASHED = {"hydra", "runtime"}
_NOT_HASHED_DATASET = {"root", "download"}
FORMAT = 2
"""Layout of run directories and hashes: 2 = the ``runtime`` node (never hashed) and pruners by
``_target_``; 1 = earlier versions (device, threads, compile, ... at other places)."""


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
    """What determines the dense model: model, data, recipe, seed and precision (which
    snapshots are kept, and everything under ``runtime``, are left out)."""
    spec = run_spec(cfg)
    return {
        # the architecture, not its name or which layers later pruning leaves alone
        "model": {k: v for k, v in spec["model"].items() if k not in ("name", "prune_exclude")},
        "dataset": spec["dataset"],
        "train": spec["train"],
        "seed": spec["seed"],
        "deterministic": spec["deterministic"],
    }


def legacy_dense_hash(cfg: DictConfig) -> str:
    """The key format-1 prune-cli gave this dense model: the recipe's evaluation batch size and
    the loader's worker count were hashed then (they live in ``runtime`` now)."""
    spec = dense_spec(cfg)
    spec["train"] = {**spec["train"], "eval_batch_size": int(cfg.runtime.eval_batch_size)}
    loader = spec["dataset"].get("loader")
    if isinstance(loader, dict) and str(loader.get("_target_", "")).endswith("load_imagenet"):
        spec["dataset"] = {
            **spec["dataset"],
            "loader": {**loader, "workers": int(cfg.runtime.workers)},
        }
    return digest(spec)


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


# the temporary names of atomic_path (the same as tempfile.mkstemp's, so that the orphans of
# earlier versions are recognised too): .<name>.<8 of [a-z0-9_]>.tmp
_TEMP_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"
_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``/proc/self/status``);
    elsewhere set and restored once (a moment in which another thread could create a file)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    return _umask_once()


@functools.cache
def _umask_once() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The permissions a new file gets: ``0o666`` less the umask (e.g. ``0o644`` under ``022``)."""
    return 0o666 & ~umask()


def _create_temp(directory: Path, name: str) -> Path:
    """Create an empty, new ``.<name>.XXXXXXXX.tmp`` in ``directory``; the kernel applies the
    umask and default ACLs to mode ``0o666`` (``mkstemp`` would force ``0o600``)."""
    for _ in range(100):
        suffix = "".join(secrets.choice(_TEMP_CHARS) for _ in range(8))
        tmp = directory / f".{name}.{suffix}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"{directory}: no free temporary name for {name}")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step.

    The new file has the permissions of any file created under the current umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(path.parent, path.name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.filename or not e.strerror:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from e  # name the file (a full disk)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_orphan_temps(directory: Path) -> list[Path]:
    """Delete the temporary files (``.<name>.XXXXXXXX.tmp``) that writes killed midway left in
    ``directory`` and its subfolders (symbolic links are not followed); return those deleted.

    Call it only while holding the lock of everything written there: a temporary file of a
    write in progress looks the same.
    """
    removed = []
    for top, _dirs, names in os.walk(directory):
        for name in names:
            if _TEMP_NAME.fullmatch(name):
                p = Path(top) / name
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed.append(p)
    return removed


def write_text(path: Path, text: str) -> None:
    """Atomically write ``text`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def save_torch(obj: Any, path: Path) -> None:
    """Atomically ``torch.save`` ``obj`` to ``path``.

    Serialised in memory first: torch's own file writer turns a full disk into an opaque
    ``RuntimeError``; a plain write raises the ``OSError`` (ENOSPC) that names the file.
    """
    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(buf.getbuffer())


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_OPERAND = re.compile(r"Unsupported operand \S+")


def load_torch(path: Path, map_location: Any = "cpu") -> Any:
    """``torch.load`` of tensors and plain data only (``weights_only=True``: a file whose pickle
    would call any other function is refused and nothing of it runs).

    Raises :class:`CorruptFileError`, one line naming the file, when it is missing, torn, not a
    torch file, or needs more than tensors and plain data to load.
    """
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error says it
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as e:
        raise CorruptFileError(f"{path}: no such file") from e
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing
        text = str(e)
        if m := _GLOBAL.search(text):
            why = (
                f"its pickle calls {m.group(1)}; prune-cli loads only tensors and plain data"
                " and never runs code from a file"
            )
        elif "Weights only load failed" in text:
            detail = m.group(0) if (m := _OPERAND.search(text)) else "not tensors and plain data"
            why = f"torn, foreign, or it needs code to load ({detail}), which prune-cli refuses"
        else:
            why = f"torn or not a torch file ({_first_line(e)})"
        raise CorruptFileError(f"{path}: not a readable plain tensor/state file: {why}") from e


def _first_line(e: BaseException) -> str:
    """``e`` as ``Type: first sentence of its first line``."""
    lines = str(e).strip().splitlines()
    if not lines:
        return type(e).__name__
    first = lines[0]
    if len(first) > 100 and ". " in first:
        first = first[: first.index(". ") + 1]
    return f"{type(e).__name__}: {first}"


# ----------------------------------------------------------------------------------------------
# JSON files the tool wrote
# ----------------------------------------------------------------------------------------------


def read_json(path: Path) -> Any:
    """The JSON document in ``path``; :class:`CorruptFileError` naming it if it cannot be read,
    is not UTF-8 or is not JSON (torn, or overwritten with something else)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CorruptFileError(f"{path}: cannot be read ({_first_line(e)})") from e
    return _json(path, data)


# ----------------------------------------------------------------------------------------------
# Results rows
# ----------------------------------------------------------------------------------------------


def read_rows(path: Path) -> list[dict]:
    """The rows of a ``results.jsonl`` (empty if the file does not exist; blank lines skipped).

    Raises :class:`CorruptFileError` naming the file and line for a line that is not UTF-8, not
    JSON, or not a JSON object.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise CorruptFileError(f"{path}: cannot be read ({_first_line(e)})") from e
    rows = []
    for number, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        row = _json(path, line, number)
        if not isinstance(row, dict):
            raise CorruptFileError(f"{path}, line {number}: not a JSON object")
        rows.append(row)
    return rows


def _json(path: Path, data: bytes | str, line: int | None = None) -> Any:
    """``json.loads(data)``, or :class:`CorruptFileError` naming ``path`` (and ``line``) if it
    is torn or not UTF-8 JSON."""
    where = f"{path}, line {line}" if line is not None else str(path)
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text)
    except UnicodeDecodeError as e:
        raise CorruptFileError(
            f"{where}: unreadable (not UTF-8 text: byte {e.object[e.start]:#04x} at offset"
            f" {e.start})"
        ) from e
    except (ValueError, RecursionError) as e:
        raise CorruptFileError(f"{where}: unreadable ({_first_line(e)})") from e


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


# the numbers of meta.json that runs read
_META_NUMBERS = ("acc", "epochs", "images_seen", "wall_s")


WANTED_NAME = "wanted_snapshots.json"


class DenseCache:
    """Dense models keyed by :func:`dense_hash`, shared by every run and sweep job.

    ``cache_dir/dense/<hash>/`` holds ``final.pt`` (state_dict), ``snap_<epoch>.pt`` for weight
    rewinding, ``meta.json`` (accuracy, images, seconds, the spec) written last, and a lock file:
    the first job to take the lock trains; the others wait and then read the finished entry
    (:meth:`obtain`).
    """

    def __init__(self, root: Path, key: str):
        self.dir = Path(root) / "dense" / key
        self.key = key

    @classmethod
    def of(cls, cfg: DictConfig) -> DenseCache:
        """The entry of ``cfg``'s dense model. A complete entry that format-1 prune-cli wrote
        under its old key is moved to the new one (once, under the new entry's lock)."""
        cache = cls(Path(cfg.runtime.cache_dir), dense_hash(cfg))
        old = cls(Path(cfg.runtime.cache_dir), legacy_dense_hash(cfg))
        if old.key != cache.key and not cache.meta_path.exists() and old.meta_path.exists():
            with cache.lock():
                if not cache.meta_path.exists() and old.meta_path.exists():
                    for f in old.dir.iterdir():
                        if f.name != ".lock":
                            os.replace(f, cache.dir / f.name)
                    log.info(
                        "dense model %s: moved from %s (prune-cli format 1)",
                        cache.key[:10],
                        old.dir,
                    )
        return cache

    def obtain(
        self,
        train: Callable[[], None],
        *,
        keep: list[int],
        need: list[int],
        steps_per_epoch: int,
        need_key: str = "",
        writer: bool = True,
        broadcast: Callable[[Any], Any] = lambda x: x,
        barrier: Callable[[], None] = lambda: None,
    ) -> dict:
        """The complete entry's metadata, after ``train()`` has filled it if it was missing.

        One job trains (the lock's holder; under DDP all ranks train and the ``writer`` holds
        the lock), the others wait. ``keep``: snapshot epochs this job's training keeps (besides
        those other jobs :meth:`request`); ``need``: epochs this run reads. A complete entry is
        never retrained in place: one without a needed epoch is a :class:`MissingSnapshotError`.
        An interrupted training that has passed an epoch now wanted without keeping it starts
        over.
        """
        meta = broadcast(self.meta() if writer else None)
        if meta is None:
            lock = self.lock() if writer else None
            if lock is not None:
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    log.info(
                        "dense model %s is being trained by another job; waiting", self.key[:10]
                    )
                    lock.acquire()
            try:
                if broadcast(self.meta() is None if writer else None):
                    if writer:
                        remove_orphan_temps(self.dir)
                        self._drop_state_without(set(keep) | self.wanted(), steps_per_epoch)
                    train()
            finally:
                if lock is not None:
                    lock.release()
        else:
            log.info("dense model %s from the cache (%s)", self.key[:10], self.dir)
        barrier()
        meta = self.meta()
        missing = self.missing(need)
        if missing:
            raise MissingSnapshotError(self.missing_error(missing, need_key))
        return meta

    def _drop_state_without(self, keep: set[int], steps_per_epoch: int) -> None:
        """Start an interrupted training over if it passed an epoch in ``keep`` without saving it."""
        state = self.state_path()
        if not state.exists():
            return
        saved = load_torch(state)
        if not isinstance(saved, dict) or not isinstance(saved.get("step"), int):
            raise CorruptFileError(
                f"{state}: not a training state; delete it to start that training over"
            )
        done = saved["step"] // steps_per_epoch
        lost = sorted(e for e in keep if e <= done and not self.snapshot_path(e).exists())
        if lost:
            log.info(
                "dense model %s: the interrupted training did not keep epochs %s; starting it over",
                self.key[:10],
                lost,
            )
            state.unlink()

    def missing(self, need: list[int]) -> list[int]:
        """Epochs of ``need`` that this entry, if complete, lacks (none while incomplete)."""
        if not self.meta_path.exists():
            return []
        return [e for e in need if not self.snapshot_path(e).exists()]

    def missing_error(self, missing: list[int], key: str = "") -> str:
        """One line: ``key`` (the setting that needs the epochs), what is missing, what to do."""
        return (
            f"{key + ': ' if key else ''}weight rewinding needs the dense model of epoch {', '.join(map(str, missing))},"
            f" but the cached dense model {self.dir} kept only epochs {self.kept()}; run the"
            " same sweep's WR jobs together with the job that trains it, or delete"
            f" {self.dir} (when no run reads it) to retrain it with the snapshot"
        )

    def kept(self) -> list[int]:
        """The snapshot epochs on disk."""
        return sorted(
            int(p.stem.split("_")[1]) for p in self.dir.glob("snap_*.pt") if p.stem.count("_") == 1
        )

    @property
    def meta_path(self) -> Path:
        return self.dir / "meta.json"

    def lock(self) -> FileLock:
        self.dir.mkdir(parents=True, exist_ok=True)
        # an explicit mode: filelock before 4 made lock files 0o644 whatever the umask, which
        # shuts the other members of a group out of a group-shared cache
        return FileLock(str(self.dir / ".lock"), mode=file_mode())

    def meta(self) -> dict | None:
        """The entry's metadata if it is complete, else ``None``.

        Raises :class:`CorruptFileError` naming ``meta.json`` if it is torn, not JSON, or lacks
        a number the runs read from it.
        """
        if not self.meta_path.exists():
            return None
        meta = read_json(self.meta_path)
        if not isinstance(meta, dict):
            raise self._bad_meta("not a JSON object")
        for key in _META_NUMBERS:
            value = meta.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise self._bad_meta(f"no number {key!r}")
            if not math.isfinite(value):
                raise self._bad_meta(f"{key!r} is {value}")
        snapshots = meta.get("snapshots", [])
        if not isinstance(snapshots, list) or not all(
            isinstance(e, int) and not isinstance(e, bool) for e in snapshots
        ):
            raise self._bad_meta("'snapshots' is not a list of epochs")
        return meta

    def _bad_meta(self, why: str) -> CorruptFileError:
        return CorruptFileError(
            f"{self.meta_path}: not a dense-cache record ({why});"
            f" delete {self.dir} to train this dense model again"
        )

    def snapshot_path(self, epoch: int) -> Path:
        return self.dir / f"snap_{epoch:04d}.pt"

    def optimizer_path(self, epoch: int) -> Path:
        """The optimizer's state at that snapshot (momentum buffers, for a rewind of both)."""
        return self.dir / f"snap_{epoch:04d}_optimizer.pt"

    def final_path(self) -> Path:
        return self.dir / "final.pt"

    def state_path(self) -> Path:
        """Where the training phase that fills this entry keeps its resume state."""
        return self.dir / "train_state.pt"

    def request(self, epochs: list[int]) -> None:
        """Ask whichever job trains this entry to keep these snapshot epochs too (prune-run
        asks for every WR job of a command before any starts, so one dense training serves the
        whole sweep)."""
        if epochs:
            merged = set(epochs) | self.wanted()
            write_text(self.dir / WANTED_NAME, json.dumps(sorted(merged)) + "\n")

    def wanted(self) -> set[int]:
        """Epochs asked for through :meth:`request` (an unreadable request counts as none)."""
        try:
            return {int(e) for e in json.loads((self.dir / WANTED_NAME).read_text())}
        except (OSError, ValueError, TypeError):
            return set()

    def commit(self, meta: dict) -> None:
        """Mark the entry complete (``meta.json`` is written last, atomically)."""
        write_text(self.meta_path, json.dumps(meta, indent=1, sort_keys=True))
