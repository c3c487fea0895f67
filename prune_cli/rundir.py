"""A run directory: one writer at a time, and completion judged from its content.

- :class:`RunLock`: an exclusive ``flock`` on ``<run dir>/.lock`` held for the whole run. The
  kernel releases it when the process dies (``kill -9``, a requeued SLURM job), so nothing needs
  cleaning up; the file names the holder (host, pid, since when) for the refusal message.
- :func:`check_results`: ``results.jsonl`` must hold levels ``0..k`` exactly once, in order,
  each row a valid row of this configuration with its checkpoint on disk. Anything else is one
  line naming the file, the line and the fault, and how to recover.
- ``failed.json``: why a run stopped (divergence, bad data, out of memory), written by the job
  that failed and removed when the run is started again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prune_cli.errors import ConfigError, CorruptFileError
from prune_cli.store import FORMAT, read_json, write_text

LOCK_NAME = ".lock"
FAILED_NAME = "failed.json"

# what every results row must carry (the report and resume read these)
ROW_KEYS = ("level", "density", "acc", "config_hash", "retrain_epochs", "images_seen")


class RunBusyError(RuntimeError):
    """Another live process holds the run directory."""


class IncompleteRunError(CorruptFileError):
    """``results.jsonl`` does not describe a consistent (partial or complete) run."""


# ----------------------------------------------------------------------------------------------
# One writer
# ----------------------------------------------------------------------------------------------


def _holder(path: Path) -> str:
    try:
        h = json.loads(path.read_text() or "{}")
        return f"host {h['host']}, pid {h['pid']}, since {h['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


class RunLock:
    """Exclusive lock on a run directory, released by the kernel when its process ends."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock now or raise :class:`RunBusyError` naming the directory and holder."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise RunBusyError(
                f"{self.run_dir}: in use by another prune-run ({_holder(self.path)});"
                " wait for it to end, or stop it, then run the same command again"
            ) from None
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc) -> None:
        self.release()


def is_busy(run_dir: Path) -> str | None:
    """The holder's description if a live process holds ``run_dir``, else None (takes nothing)."""
    path = Path(run_dir) / LOCK_NAME
    if not path.exists():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return _holder(path)
    finally:
        os.close(fd)  # also drops the lock taken just now
    return None


@contextlib.contextmanager
def held(
    run_dir: Path, writer: bool = True, broadcast: Callable[[Any], Any] = lambda x: x
) -> Iterator[RunLock | None]:
    """The run directory's lock for the ``with`` block: the writer (DDP rank 0) takes it, and
    every rank learns through ``broadcast`` (rank 0's value on all) whether it is busy, so that
    all raise :class:`RunBusyError` together."""
    lock = RunLock(run_dir) if writer else None
    busy = None
    if lock is not None:
        try:
            lock.acquire()
        except RunBusyError as e:
            busy = str(e)
    busy = broadcast(busy)
    if busy:
        raise RunBusyError(busy)
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()


# ----------------------------------------------------------------------------------------------
# Completion from content
# ----------------------------------------------------------------------------------------------


def checkpoint_paths(run_dir: Path, level: int, fmt: int = FORMAT) -> list[Path]:
    """A level's files: its weights and the pruner's state (format 1: the masks)."""
    ckpt = Path(run_dir) / "checkpoints"
    state = "pruning" if fmt >= 2 else "masks"
    return [ckpt / f"level_{level:02d}.pt", ckpt / f"level_{level:02d}_{state}.pt"]


def run_format(run_dir: Path) -> int:
    """The format a run directory was written in (``run.json``'s, 1 before it was recorded)."""
    try:
        claim = read_json(Path(run_dir) / "run.json")
    except (OSError, CorruptFileError):
        return FORMAT
    return int(claim.get("format", 1)) if isinstance(claim, dict) else FORMAT


def check_results(run_dir: Path, chash: str, n_levels: int, fmt: int = FORMAT) -> list[dict]:
    """The rows of ``run_dir/results.jsonl`` if they are levels ``0..k`` (k <= n_levels) exactly
    once and in order, each a valid row of configuration ``chash`` whose checkpoint exists.

    Raises :class:`IncompleteRunError`: one line naming the file, the line, the fault and how to
    recover.
    """
    path = Path(run_dir) / "results.jsonl"
    if not path.exists():
        return []
    try:
        text = path.read_bytes().decode()
    except (OSError, UnicodeDecodeError) as e:
        raise IncompleteRunError(f"{path}: unreadable ({e}); {_recover(0)}") from e
    rows: list[dict] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        where = f"{path}, line {lineno}"
        if not line.strip():
            raise IncompleteRunError(f"{where}: empty line; {_recover(len(rows))}")
        try:
            row = json.loads(line)
        except ValueError:
            raise IncompleteRunError(
                f"{where}: not a JSON row (torn or edited); {_recover(len(rows))}"
            ) from None
        if not isinstance(row, dict) or any(k not in row for k in ROW_KEYS):
            missing = [k for k in ROW_KEYS if not isinstance(row, dict) or k not in row]
            raise IncompleteRunError(
                f"{where}: not a results row (missing {', '.join(missing)}); {_recover(len(rows))}"
            )
        level = row["level"]
        if row["config_hash"] != chash:
            raise IncompleteRunError(
                f"{where}: a row of another configuration (hash {str(row['config_hash'])[:10]},"
                f" this run's is {chash[:10]}); {_recover(len(rows))}"
            )
        if level != len(rows):
            fault = (
                f"level {level} appears again (two processes wrote this directory)"
                if isinstance(level, int) and level < len(rows)
                else f"level {level} where level {len(rows)} was expected"
            )
            raise IncompleteRunError(f"{where}: {fault}; {_recover(len(rows))}")
        if level > n_levels:
            raise IncompleteRunError(
                f"{where}: level {level} beyond this run's {n_levels} levels; {_recover(len(rows))}"
            )
        missing = [p.name for p in checkpoint_paths(run_dir, level, fmt) if not p.exists()]
        if missing:
            raise IncompleteRunError(
                f"{where}: level {level}'s checkpoint {', '.join(missing)} is missing;"
                f" {_recover(len(rows))}"
            )
        rows.append(row)
    return rows


def _recover(good: int) -> str:
    if good == 0:
        return "to recover, run again with runtime.rerun=true (recomputes the run)"
    return (
        f"to recover, keep only its first {good} line(s) to resume after level {good - 1}"
        ", or run again with runtime.rerun=true"
    )


def is_complete(rows: list[dict], n_levels: int) -> bool:
    return len(rows) == n_levels + 1


# ----------------------------------------------------------------------------------------------
# Failures
# ----------------------------------------------------------------------------------------------


def record_failure(run_dir: Path, message: str, kind: str, detail: str = "") -> None:
    """Write ``failed.json``: why the run stopped (read by prune-report and the sweep summary)."""
    info = {
        "error": message,
        "type": kind,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    if detail:
        info["traceback"] = detail
    write_text(Path(run_dir) / FAILED_NAME, json.dumps(info, indent=1) + "\n")


def read_failure(run_dir: Path) -> dict | None:
    path = Path(run_dir) / FAILED_NAME
    if not path.exists():
        return None
    try:
        info = read_json(path)
    except CorruptFileError as e:
        return {"error": str(e), "type": "CorruptFileError"}
    return info if isinstance(info, dict) else {"error": f"{path}: not a failure record"}


def clear_failure(run_dir: Path) -> None:
    (Path(run_dir) / FAILED_NAME).unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# Which configuration a directory belongs to
# ----------------------------------------------------------------------------------------------


def check_run_dir(run_dir: Path, chash: str) -> None:
    """Refuse a run directory that holds another configuration's run, or one written by an
    earlier prune-cli whose hashes are not comparable (writes nothing)."""
    marker = Path(run_dir) / "run.json"
    if not marker.exists():
        return
    try:
        claim = json.loads(marker.read_bytes().decode())
        other = claim["config_hash"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorruptFileError(
            f"{marker}: unreadable ({type(e).__name__}); it names the configuration this"
            " directory belongs to: delete it only if the directory holds this run"
        ) from None
    if claim.get("format", 1) != FORMAT:
        raise ConfigError(
            f"hydra.run.dir={run_dir}: written by an earlier prune-cli (run-directory format"
            f" {claim.get('format', 1)}, this one writes {FORMAT}: `device`, `threads`, `compile`,"
            " ... moved under `runtime`, pruners are named by `_target_`); its results stay"
            " readable by prune-report and prune-runs, but it cannot be continued: run into a"
            " new directory (the cached dense model is reused)"
        )
    if other != chash:
        raise ConfigError(
            f"hydra.run.dir={run_dir}: holds another configuration's run"
            f" (hash {str(other)[:10]} != {chash[:10]}); choose another directory"
        )


def claim_run_dir(run_dir: Path, chash: str) -> None:
    """Refuse a run directory that holds another configuration's run; claim a new one."""
    check_run_dir(run_dir, chash)
    marker = Path(run_dir) / "run.json"
    if not marker.exists():
        write_text(marker, json.dumps({"config_hash": chash, "format": FORMAT}) + "\n")
