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
import math
import os
import re
import secrets
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

# Keys that do not change what a run computes (where it reads data, how it reports progress).
_NOT_HASHED = {
    "hydra",
    "progress",
    "cache_dir",
    "rerun",
    "device",
    "threads",
    # what is logged and where, and how often the test set is evaluated, change no weight
    "logger",
    "eval_every",
    "log_every_n_steps",
}
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


class CorruptFileError(RuntimeError):
    """A checkpoint, state or cache file that exists but cannot be read (one-line message)."""


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

    def has_snapshots(self, epochs: list[int]) -> bool:
        return all(self.snapshot_path(e).exists() for e in epochs)

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
