"""``record.json``: what produced a run directory, for knowing later where a number came from.

Every ``prune-run`` session on a run directory (the first one, and each resume) appends one
entry to ``sessions``: start and end times, outcome (``complete``, ``failed``,
``interrupted``), host, pid, working directory, the exact command line and the job's
overrides, the git commit and dirty state of the prune-cli source checkout and of a user's
config directory (``-cd``) where it is in a repository, the versions of the main packages,
torch/CUDA/cuDNN, the CPU and the GPUs. Earlier sessions are never overwritten.

Writing a record never stops a run: anything that cannot be found (no ``git``, no checkout,
a directory that is not a repository) is recorded as ``null`` with a note, and a record that
cannot be written is a warning in the log. The record costs a few tens of milliseconds (the
git calls have a timeout).

The record is written outside :func:`prune_cli.runner.run`, which holds the run directory's
lock while it runs: each write takes the lock for the moment of the write, and writes nothing
into a directory that another live process holds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

RECORD_NAME = "record.json"
FORMAT = 1

# distributions whose versions are recorded (importlib.metadata names)
PACKAGES = (
    "prune-cli",
    "torch",
    "torchvision",
    "torch-pruning",
    "hydra-core",
    "omegaconf",
    "numpy",
    "scikit-learn",
    "submitit",
)
# environment variables that say where and how a job ran (no secrets)
ENV_KEYS = (
    "SLURM_JOB_ID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_JOB_NODELIST",
    "SLURM_NTASKS",
    "CUDA_VISIBLE_DEVICES",
    "WORLD_SIZE",
    "OMP_NUM_THREADS",
    "PRUNE_CLI_CACHE",
    "PRUNE_CLI_DATA",
)
GIT_TIMEOUT_S = 3.0
MAX_CHANGES = 50  # the changed paths of a dirty checkout that are listed

log = logging.getLogger("prune_cli")


def now() -> str:
    """The local time with its UTC offset, to the second (ISO 8601)."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def write_record(
    run_dir: Path,
    cfg: DictConfig,
    *,
    argv: Sequence[str],
    overrides: Sequence[str],
    config_dir: str | Path | Sequence[str | Path] | None = None,
    phase: str,
    outcome: str | None = None,
    error: str | None = None,
) -> bool:
    """Add this session's start (``phase="start"``) or end (``phase="end"``, with ``outcome``
    ``complete``, ``failed`` or ``interrupted`` and, for a failure, its one-line ``error``) to
    ``run_dir/record.json``; True if written.

    ``argv`` is the command line (``sys.argv``), ``overrides`` the job's overrides (Hydra's
    ``hydra.overrides.task``), ``config_dir`` a user's config directory or directories
    (``-cd``). Nothing is written by a non-zero DDP rank or into a directory that another live
    process holds; no error is raised (a problem is a warning in the log).
    """
    if phase not in ("start", "end"):
        raise ValueError(f"phase must be 'start' or 'end', not {phase!r}")
    if phase == "end" and outcome not in ("complete", "failed", "interrupted"):
        raise ValueError(f"outcome must be complete, failed or interrupted, not {outcome!r}")
    if _rank() > 0:  # rank 0 speaks for the run
        return False
    try:
        return _write(Path(run_dir), cfg, argv, overrides, config_dir, phase, outcome, error)
    except Exception as e:  # noqa: BLE001 - a record must never stop a run
        log.warning(
            "%s: record not written (%s: %s)", Path(run_dir) / RECORD_NAME, type(e).__name__, e
        )
        return False


def _write(run_dir, cfg, argv, overrides, config_dir, phase, outcome, error) -> bool:
    from prune_cli.rundir import RunBusyError, RunLock

    try:
        lock = RunLock(run_dir).acquire()
    except RunBusyError:
        log.debug("%s: held by another process; no record written", run_dir)
        return False
    try:
        path = run_dir / RECORD_NAME
        record = _read_existing(path)
        record.update(_identity(cfg))
        sessions = record.setdefault("sessions", [])
        me = (socket.gethostname(), os.getpid())
        if phase == "start":
            sessions.append(_session(run_dir, cfg, argv, overrides, config_dir))
        else:
            open_ = [
                s for s in sessions if (s.get("host"), s.get("pid")) == me and s.get("end") is None
            ]
            if open_:
                session = open_[-1]
            else:  # the start was not recorded (the directory was not writable then)
                session = _session(run_dir, cfg, argv, overrides, config_dir)
                session |= {"start": None, "start_unix": None}
                sessions.append(session)
            session["end"] = now()
            if session.get("start_unix") is not None:
                session["wall_s"] = round(time.time() - session["start_unix"], 3)
            session["outcome"] = outcome
            session["error"] = error
            session["rows_at_end"] = _rows_done(run_dir)
            if _cuda_initialized():  # the run used CUDA after all: what it ran on
                devs, tinfo = session.get("devices"), session.get("torch")
                if isinstance(devs, dict) and not devs.get("gpus"):
                    devs["gpus"] = _gpu_names()
                if isinstance(tinfo, dict) and isinstance(tinfo.get("cudnn"), dict):
                    runtime = torch_info("cuda")["cudnn"]["runtime"]
                    tinfo["cudnn"]["runtime"] = runtime
        starts = [s["start"] for s in sessions if s.get("start")]
        record["start"] = starts[0] if starts else None
        record["end"] = sessions[-1].get("end")
        record["outcome"] = sessions[-1].get("outcome")
        from prune_cli.store import write_text

        write_text(path, json.dumps(record, indent=1, default=str) + "\n")
        return True
    finally:
        lock.release()


def _read_existing(path: Path) -> dict:
    """The record so far; an unreadable one is kept beside it (``record.json.bad``)."""
    if not path.exists():
        return {"format": FORMAT}
    try:
        data = json.loads(path.read_bytes().decode())
        if isinstance(data, dict) and isinstance(data.get("sessions", []), list):
            return data
        why = "not a record"
    except (OSError, ValueError) as e:
        why = f"{type(e).__name__}: {e}"
    bad = path.with_name(RECORD_NAME + ".bad")
    os.replace(path, bad)
    log.warning("%s: unreadable (%s); kept as %s, a new record starts", path, why, bad.name)
    return {"format": FORMAT, "note": f"an unreadable earlier record was kept as {bad.name}"}


def _identity(cfg: DictConfig) -> dict:
    """What the run is: its hashes, method, model, dataset and number of levels."""
    from prune_cli.config import n_levels
    from prune_cli.store import config_hash, dense_hash

    out: dict[str, Any] = {}
    for key, fn in (
        ("config_hash", config_hash),
        ("dense_hash", dense_hash),
        ("levels", n_levels),
    ):
        try:
            out[key] = fn(cfg)
        except Exception:  # noqa: BLE001 - an invalid config: the run reports it
            out[key] = None
    for key in ("method", "model", "dataset"):
        out[key] = _select(cfg, f"{key}.name")
    return out


def _select(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, default=None)
    except Exception:  # noqa: BLE001 - an interpolation that cannot be resolved here
        return None


def _session(run_dir: Path, cfg: DictConfig, argv, overrides, config_dir) -> dict:
    argv = [str(a) for a in argv]
    if isinstance(config_dir, (str, Path)):
        config_dirs = [config_dir]
    else:
        config_dirs = list(config_dir or [])
    device = _select(cfg, "runtime.device")
    return {
        "start": now(),
        "start_unix": round(time.time(), 3),
        "end": None,
        "outcome": None,
        "error": None,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "cwd": os.getcwd(),
        "argv": argv,
        "command": shlex.join(argv),
        "overrides": [str(o) for o in overrides],
        "rows_at_start": _rows_done(run_dir),
        "git": {
            "project": project_git(),
            "config_dirs": [dir_git(Path(d)) for d in config_dirs],
        },
        "packages": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch_info(device),
        "devices": devices(device),
        "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ},
    }


def _rows_done(run_dir: Path) -> int:
    """Rows in ``results.jsonl`` (level 0 = dense): a count of lines, no validation."""
    try:
        return sum(
            1 for line in (run_dir / "results.jsonl").read_bytes().splitlines() if line.strip()
        )
    except OSError:
        return 0


def _rank() -> int:
    try:
        return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) or 0)
    except ValueError:
        return 0


# ----------------------------------------------------------------------------------------------
# Git
# ----------------------------------------------------------------------------------------------


def _git(cwd: Path, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}  # status takes no index lock
    proc = subprocess.run(
        ["git", "-C", str(cwd), *args],
        capture_output=True,
        text=True,
        timeout=GIT_TIMEOUT_S,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    return proc.returncode, proc.stdout, proc.stderr


def git_state(path: Path) -> dict:
    """``commit`` (HEAD), ``dirty`` and the first changed paths of the repository holding
    ``path``, with its ``root``; ``null`` values and a ``note`` where that cannot be known."""
    info: dict[str, Any] = {"path": str(path), "root": None, "commit": None, "dirty": None}
    if shutil.which("git") is None:
        return info | {"note": "git not found"}
    if not Path(path).is_dir():
        return info | {"note": "no such directory"}
    try:
        rc, out, err = _git(path, "rev-parse", "--show-toplevel")
        if rc != 0:
            first = (err.strip().splitlines() or ["git rev-parse failed"])[0]
            note = "not in a git repository" if "not a git repository" in first else first
            return info | {"note": note}
        info["root"] = out.strip()
        # from the root: the changed paths relative to it, the whole repository's state
        rc, out, err = _git(Path(info["root"]), "status", "--porcelain=v2", "--branch")
    except subprocess.TimeoutExpired:
        return info | {"note": f"git timed out after {GIT_TIMEOUT_S:g} s"}
    except OSError as e:
        return info | {"note": f"git could not run ({e})"}
    if rc != 0:
        return info | {"note": (err.strip().splitlines() or ["git status failed"])[0]}
    changes = []
    for line in out.splitlines():
        if line.startswith("# branch.oid "):
            oid = line.split()[-1]
            info["commit"] = None if oid == "(initial)" else oid
        elif line.startswith("# branch.head "):
            head = line.split(maxsplit=2)[-1]
            info["branch"] = None if head == "(detached)" else head
        elif line and not line.startswith("#"):
            changes.append(_change(line))
    if info["commit"] is None:
        info["note"] = "no commit yet"
    info["dirty"] = bool(changes)
    info["changes"] = changes[:MAX_CHANGES]
    if len(changes) > MAX_CHANGES:
        info["changes_not_listed"] = len(changes) - MAX_CHANGES
    return info


def _change(line: str) -> str:
    """``XY path`` of one ``git status --porcelain=v2`` entry."""
    kind = line[0]
    if kind == "?":
        return f"?? {line[2:]}"
    fields = {"1": 8, "2": 9, "u": 10}.get(kind)
    if fields is None:
        return line
    parts = line.split(" ", fields)
    path = parts[-1].replace("\t", " <- ")  # a rename: "new\told"
    return f"{parts[1].replace('.', ' ')} {path}"


def project_git() -> dict:
    """The git state of the prune-cli source checkout this process runs from, if any."""
    pkg = Path(__file__).resolve().parent
    if any(part in ("site-packages", "dist-packages") for part in pkg.parts):
        return {
            "path": str(pkg),
            "root": None,
            "commit": None,
            "dirty": None,
            "note": "installed package, not a source checkout",
            "install": _install_source(),
        }
    state = git_state(pkg.parent)
    root = state.get("root")
    if root and not pkg.is_relative_to(Path(root).resolve()):
        return state | {
            "root": None,
            "commit": None,
            "dirty": None,
            "note": "not in a git repository",
        }
    return state


def _install_source() -> Any:
    """How pip/uv installed prune-cli (``direct_url.json``: a VCS commit where there is one)."""
    from importlib import metadata

    try:
        text = metadata.distribution("prune-cli").read_text("direct_url.json")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        return None
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def dir_git(path: Path) -> dict:
    """The git state of a user's config directory (``null`` commit when not in a repository)."""
    return git_state(Path(path).expanduser().resolve())


# ----------------------------------------------------------------------------------------------
# Packages and devices
# ----------------------------------------------------------------------------------------------


def package_versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def torch_info(device: Any = None) -> dict:
    """torch's version, its CUDA version and cuDNN's: the version torch was built with, and for
    a run on CUDA the one loaded (loading cuDNN for a CPU run would cost time for nothing)."""
    import torch

    cudnn: dict[str, Any] = {"compiled": None, "runtime": None}
    with contextlib.suppress(Exception):
        cudnn["compiled"] = ".".join(map(str, torch._C._cudnn.getCompileVersion()))
    if _uses_cuda(device):
        with contextlib.suppress(Exception):
            if torch.backends.cudnn.is_available():
                cudnn["runtime"] = torch.backends.cudnn.version()
    return {
        "version": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "git_version": getattr(torch.version, "git_version", None),
    }


def _uses_cuda(device: Any) -> bool:
    """Whether the run uses (or has already initialised) CUDA: not for ``device=cpu``."""
    return _cuda_initialized() or not (device is not None and str(device).startswith("cpu"))


def devices(device: Any) -> dict:
    """The CPU model and, for a run on CUDA, the name of every visible GPU.

    For ``device=cpu`` CUDA is not touched (initialising it costs time and GPU memory); the
    end of the run adds the GPU names if the run initialised CUDA after all.
    """
    out: dict[str, Any] = {
        "device": None if device is None else str(device),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpus": [],
    }
    if not _uses_cuda(device):
        return out
    try:
        import torch

        if torch.cuda.is_available():
            out["gpus"] = _gpu_names()
    except Exception as e:  # noqa: BLE001 - a broken driver: the run reports it
        out["gpus_note"] = f"{type(e).__name__}: {e}".splitlines()[0]
    return out


def _cuda_initialized() -> bool:
    torch = sys.modules.get("torch")
    try:
        return bool(torch is not None and torch.cuda.is_initialized())
    except Exception:  # noqa: BLE001
        return False


def _gpu_names() -> list[str]:
    import torch

    try:
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001
        return []


def cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``)."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "cpu model") and value.strip():
                    return value.strip()
    return platform.processor() or platform.machine() or None


# ----------------------------------------------------------------------------------------------
# Hydra glue
# ----------------------------------------------------------------------------------------------


def hydra_sources(hc: Any) -> dict:
    """``argv``, ``overrides`` and ``config_dir`` of the current Hydra job
    (``HydraConfig.get()``): the command line, the job's overrides, and the config
    directories a user added (``-cd``, ``hydra.searchpath``; not prune-cli's own ``conf/``)."""
    from prune_cli.config import CONF_DIR

    own = CONF_DIR.resolve()
    dirs = []
    for src in hc.runtime.config_sources or []:
        if src.get("schema") != "file" or not src.get("path"):
            continue
        p = Path(src.path).expanduser()
        with contextlib.suppress(OSError):
            p = p.resolve()
        if p != own and str(p) not in dirs:
            dirs.append(str(p))
    return {"argv": list(sys.argv), "overrides": list(hc.overrides.task), "config_dir": dirs}


@contextlib.contextmanager
def recording(
    run_dir: Path,
    cfg: DictConfig,
    *,
    argv: Sequence[str],
    overrides: Sequence[str],
    config_dir: str | Path | Sequence[str | Path] | None = None,
) -> Iterator[None]:
    """Record the start of the ``with`` block and its end, with the outcome judged from how the
    block ended: an exception or a non-zero exit is ``failed`` (its line from ``failed.json``
    where this process wrote one), Ctrl-C, exit status 130 and a preemption's message are
    ``interrupted``, a normal end is ``complete`` unless this process recorded a failure.
    """
    args = {"argv": argv, "overrides": overrides, "config_dir": config_dir}
    write_record(run_dir, cfg, phase="start", **args)
    outcome, error = "complete", None
    try:
        yield
    except KeyboardInterrupt:
        outcome = "interrupted"
        raise
    except SystemExit as e:
        if isinstance(e.code, str):  # a preemption's or termination's message
            outcome, error = "interrupted", e.code
        elif e.code == 130:
            outcome = "interrupted"
        elif e.code not in (None, 0):
            outcome = "failed"
        raise
    except BaseException as e:
        outcome = "failed"
        error = (f"{type(e).__name__}: {e}".strip().splitlines() or [type(e).__name__])[0]
        raise
    finally:
        mine = _own_failure(Path(run_dir))
        if mine is not None and outcome != "interrupted":
            outcome, error = "failed", mine
        write_record(run_dir, cfg, phase="end", outcome=outcome, error=error, **args)


def _own_failure(run_dir: Path) -> str | None:
    """The error of ``failed.json`` if this process wrote it, else None."""
    from prune_cli.rundir import read_failure

    info = read_failure(run_dir)
    if info and info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
        return str(info.get("error"))
    return None
