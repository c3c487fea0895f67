"""Experiment tracking: the ``logger`` config group (TensorBoard, Weights & Biases, MLflow) and
``metrics.csv``, the plain per-epoch file every run writes whatever the loggers.

What is logged (rank 0 only), each record tagged with its level (0 = the dense phase) and phase:

- every ``log_every_n_steps`` optimizer steps: ``train/loss`` (the mean loss of those steps) and
  ``train/lr`` (the LR of the last). The losses stay on the device and are sent once per epoch
  (the loop keeps its one host sync per epoch), so a logger sees an epoch's steps at its end.
- every epoch: ``epoch/train_loss``, ``epoch/test_acc`` (after every ``eval_every``-th epoch
  and the last of each phase), ``epoch/images_per_s``, ``epoch/seconds`` (training only),
  ``epoch/epoch`` (1-based, within the phase); also a row of ``metrics.csv``.
- every level, once it is retrained: ``level/density``, ``level/compression``,
  ``level/nonzero_params``, ``level/flops``, ``level/acc_after_prune`` and ``level/acc``.
- the tag: ``level`` with every epoch and level record (TensorBoard, MLflow), and ``level`` and
  ``phase`` with every row (W&B, metrics.csv).

**Global step.** One axis for the whole run: the optimizer steps in the order they happen, plus
one step per level for its summary. The dense phase's ``D = train.epochs x steps/epoch`` steps
are ``0 .. D-1`` and its summary is step ``D``; level ``k >= 1`` retrains ``n`` steps at
``D + 1 + (k-1)(n+1) + j`` (``j = 0 .. n-1``) and its summary is the step after. An epoch's record
is at its last optimizer step. So a level's steps and summaries never share a step, and steps only
grow. A run that takes its dense model from the cache (trained once for a whole sweep) replays the
dense phase's records, kept in the cache entry's ``history.jsonl``, so every run shows all levels.

**Resume never duplicates a step.** TensorBoard (``purge_step``) and ``metrics.csv`` drop what an
earlier session logged from the first step a session logs on; MLflow skips, per metric, the steps
its store already has; W&B skips the steps its run already has (offline: those in the run's
segment files; online: up to the server's step). The W&B run id is the config hash (the run
directory's suffix), so a resumed or requeued run continues the same W&B run (offline: a new
segment directory of the same id; ``wandb sync`` uploads them in order). ``runtime.rerun=true`` starts the
logs over (W&B and MLflow: a new run, id ``<hash>-<N>``).

Any class with the interface of :class:`Logger` can be added: ``+logger.mine._target_=pkg.Cls``.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from prune_cli.config import n_levels, retrain_epochs
from prune_cli.errors import ConfigError, import_object
from prune_cli.store import run_spec, write_text

log = logging.getLogger("prune_cli")

STEP, EPOCH, LEVEL = "step", "epoch", "level"
METRICS_FILE = "metrics.csv"
STATE_FILE = "tracking.json"
HISTORY_FILE = "history.jsonl"
"""In a dense cache entry: the records of the dense phase, for the runs that reuse it."""


@dataclass
class Record:
    """What one global step contributes: ``metrics`` of one ``kind`` (step, epoch, level)."""

    step: int
    kind: str
    level: int
    phase: str
    metrics: dict[str, float]

    def to_json(self) -> str:
        return json.dumps(
            {"step": self.step, "kind": self.kind, "level": self.level, "phase": self.phase}
            | {"metrics": self.metrics},
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, line: str) -> Record:
        d = json.loads(line)
        return cls(int(d["step"]), str(d["kind"]), int(d["level"]), str(d["phase"]), d["metrics"])


@dataclass
class RunInfo:
    """What a logger knows of the run it logs."""

    run_dir: Path
    config_hash: str
    run_id: str  # config hash prefix (the run directory's suffix), "-N" after N reruns
    name: str  # the run directory's name
    spec: dict  # what determines the results (store.run_spec): the run's hyperparameters
    tags: dict[str, str]  # method, model, dataset, pruning, seed
    sweep: str | None  # the sweep directory's name, None for a single run
    config_yaml: str


class Logger:
    """The interface of a logger (the ``_target_`` of a ``logger`` entry).

    It is built as ``Cls(run: RunInfo, **settings)`` and gets the run's records in flushes
    (``log``), steps never decreasing across flushes; ``close(status)`` ends it with ``complete``,
    ``failed`` or ``killed``. Before the process's first flush it knows nothing of what an earlier
    session logged: avoiding duplicates is its own job (see the module's doc).
    """

    requires: tuple[str, ...] = ()  # modules it imports
    extra: str | None = None  # the optional dependency group that installs them

    def log(self, records: list[Record]) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self, status: str) -> None:  # pragma: no cover - interface
        pass


# ----------------------------------------------------------------------------------------------
# metrics.csv
# ----------------------------------------------------------------------------------------------


class MetricsFile:
    """``metrics.csv``: one row per epoch of every phase (a torn last line, left by a kill, is
    dropped when the next session starts writing)."""

    COLUMNS = (
        "level",
        "phase",
        "epoch",
        "step",
        "train_loss",
        "test_acc",
        "lr",
        "images_per_s",
        "seconds",
    )
    _KEYS = {
        "epoch": "epoch/epoch",
        "train_loss": "epoch/train_loss",
        "test_acc": "epoch/test_acc",
        "lr": "epoch/lr",
        "images_per_s": "epoch/images_per_s",
        "seconds": "epoch/seconds",
    }

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.opened = False

    def log(self, records: list[Record]) -> None:
        if not self.opened:
            self._start(records[0].step)
        lines = [self._line(r) for r in records if r.kind == EPOCH]
        if lines:
            with open(self.path, "a") as f:
                f.write("".join(lines))
                f.flush()
                os.fsync(f.fileno())

    def _start(self, first: int) -> None:
        """Keep the rows of earlier sessions before step ``first``, atomically."""
        header = ",".join(self.COLUMNS) + "\n"
        kept = []
        if self.path.exists():
            for line in self.path.read_text().splitlines(keepends=True)[1:]:
                cells = line.rstrip("\n").split(",")
                if not line.endswith("\n") or len(cells) != len(self.COLUMNS):
                    continue  # torn by a kill
                try:
                    if int(cells[3]) < first:
                        kept.append(line)
                except ValueError:
                    continue
        write_text(self.path, header + "".join(kept))
        self.opened = True

    def _line(self, r: Record) -> str:
        cells = [str(r.level), r.phase]
        for column in self.COLUMNS[2:]:
            if column == "step":
                cells.append(str(r.step))
                continue
            v = r.metrics.get(self._KEYS[column])
            if v is None:
                cells.append("")
            elif column == "epoch":
                cells.append(str(int(v)))
            else:
                cells.append(f"{v:.6g}")
        return ",".join(cells) + "\n"

    def close(self, status: str) -> None:
        pass


def read_metrics(path: Path) -> list[dict]:
    """The rows of a ``metrics.csv`` (numbers as numbers, an empty cell as ``None``)."""
    lines = Path(path).read_text().splitlines()
    head = lines[0].split(",")
    rows = []
    for line in lines[1:]:
        cells = line.split(",")
        if len(cells) != len(head):
            continue
        row: dict[str, Any] = {}
        for k, v in zip(head, cells):
            if k == "phase":
                row[k] = v
            elif v == "":
                row[k] = None
            else:
                row[k] = int(v) if k in ("level", "epoch", "step") else float(v)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# TensorBoard
# ----------------------------------------------------------------------------------------------


class TensorBoardLogger(Logger):
    """Event files in ``<run dir>/<save_dir>``, summaries made by ``torch.utils.tensorboard``.

    Each session writes one file, opened at its first flush with a ``purge_step`` = its first
    step (as ``SummaryWriter(purge_step=...)`` does): the readers (TensorBoard, its
    EventAccumulator) drop what earlier sessions wrote from there on, which this session writes
    again. The events are written in the calling thread and flushed at every flush, so a kill
    loses nothing already logged and a full disk is an exception here (not in a writer thread).
    """

    requires = ("tensorboard",)

    def __init__(self, run: RunInfo, save_dir: str = "tensorboard") -> None:
        self.run = run
        self.dir = run.run_dir / save_dir
        self.file = None

    def _write(self, step: int, **fields) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.summary.writer.record_writer import RecordWriter

        event = Event(wall_time=time.time(), step=step, **fields)
        RecordWriter(self.file).write(event.SerializeToString())

    def log(self, records: list[Record]) -> None:
        from tensorboard.compat.proto.event_pb2 import SessionLog
        from torch.utils.tensorboard.summary import scalar, text

        if self.file is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            name = (
                f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
            )
            self.file = open(self.dir / name, "ab")  # noqa: SIM115 - open until close()
            first = records[0].step
            self._write(first, file_version="brain.Event:2")
            self._write(first, session_log=SessionLog(status=SessionLog.START))
            if first == 0:
                yaml = "\n".join("    " + line for line in self.run.config_yaml.splitlines())
                self._write(0, summary=text("config", yaml))
        for r in records:
            for key, value in r.metrics.items():
                self._write(r.step, summary=scalar(key, value))
            if r.kind != STEP:
                self._write(r.step, summary=scalar("level", r.level))
        self.file.flush()

    def close(self, status: str) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


# ----------------------------------------------------------------------------------------------
# Weights & Biases
# ----------------------------------------------------------------------------------------------


class WandbLogger(Logger):
    """A W&B run of id ``run.run_id`` (resume="allow"), in ``<run dir>/wandb``; offline unless
    ``mode=online``. Each global step is one W&B step (one row), with ``level`` and ``phase``.

    Steps already logged are skipped: online, those the server has (W&B's resumed step);
    offline, those in the run's segments on disk (``offline-run-*-<id>/run-<id>.wandb``), else
    up to the step ``tracking.json`` recorded before they were sent.
    """

    requires = ("wandb",)
    extra = "wandb"

    def __init__(
        self,
        run: RunInfo,
        project: str = "prune-cli",
        entity: str | None = None,
        mode: str = "offline",
        group: str | None = None,
        tags: list[str] | None = None,
    ) -> None:
        import wandb

        self.state = TrackingState(run.run_dir)
        self.last = int(self.state.get("wandb_last_step", -1))
        if mode == "offline":
            on_disk = wandb_offline_steps(run.run_dir / "wandb", run.run_id)
            if on_disk is not None:
                self.last = max(on_disk, default=-1)
        self.run = wandb.init(
            id=run.run_id,
            resume="allow",
            project=project,
            entity=entity,
            mode=mode,
            group=group or run.sweep,
            name=run.name,
            job_type=run.tags.get("method"),
            tags=list(tags) if tags else [run.tags[k] for k in ("method", "model", "dataset")],
            config=run.spec,
            dir=str(run.run_dir),
            settings=wandb.Settings(console="off", silent=True),
        )
        if mode == "online":
            self.last = int(self.run.step) - 1  # the server's: W&B drops lower steps itself

    def log(self, records: list[Record]) -> None:
        rows: dict[int, dict] = {}
        for r in records:
            if r.step > self.last:
                row = rows.setdefault(r.step, {"level": r.level, "phase": r.phase})
                row.update(r.metrics)
        if not rows:
            return
        last = max(rows)
        self.state.set(wandb_last_step=last)  # before sending: a kill loses, never repeats
        for step, row in rows.items():
            self.run.log(row, step=step)
        self.last = last

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "complete" else 1)


def wandb_offline_steps(wandb_dir: Path, run_id: str) -> list[int] | None:
    """The history steps in the offline segments of W&B run ``run_id`` under ``wandb_dir``
    (a torn record at a file's end, left by a kill, ends that file); ``None`` if a file cannot
    be read as W&B's log of protobuf records (an unknown format)."""
    import struct

    try:
        from wandb.proto import wandb_internal_pb2 as pb
    except ImportError:
        return None
    steps: list[int] = []
    for path in sorted(Path(wandb_dir).glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")):
        data = path.read_bytes()
        if data[:4] != b":W&B":
            return None
        pos, block, buf = 7, 32768, b""  # LevelDB's log: 32 KiB blocks of 7-byte-headed chunks
        while pos + 7 <= len(data):
            room = block - pos % block
            if room < 7:
                pos += room
                continue
            _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
            if (length == 0 and kind == 0) or pos + 7 + length > len(data):
                break
            chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
            buf = chunk if kind in (1, 2) else buf + chunk
            if kind not in (1, 4):
                continue
            record = pb.Record()
            try:
                record.ParseFromString(buf)
            except Exception:  # noqa: BLE001 - torn by a kill
                break
            if record.WhichOneof("record_type") == "history":
                steps.append(int(record.history.step.num))
    return steps


# ----------------------------------------------------------------------------------------------
# MLflow
# ----------------------------------------------------------------------------------------------


class MlflowLogger(Logger):
    """An MLflow run in ``tracking_uri`` (a SQLite file by default), found again on resume by
    its tags; its params are the run's hyperparameters (``store.run_spec``)."""

    requires = ("mlflow", "sqlalchemy", "alembic")
    extra = "mlflow"
    BATCH = 1000  # MLflow's limit of metrics per request

    def __init__(
        self,
        run: RunInfo,
        tracking_uri: str = "sqlite:///mlflow.db",
        experiment_name: str = "prune-cli",
    ) -> None:
        from mlflow.entities import Param, RunStatus
        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "alembic"):  # their INFO lines (creating tables) are noise here
            logging.getLogger(name).setLevel(logging.WARNING)
        uri = _absolute_sqlite(tracking_uri)
        with _store_lock(uri):  # the first use of a SQLite store creates its tables
            self.client = MlflowClient(tracking_uri=uri)
            exp = self.client.get_experiment_by_name(experiment_name)
            if exp is None:
                try:
                    exp_id = self.client.create_experiment(experiment_name)
                except Exception:  # noqa: BLE001 - another process created it just now
                    exp = self.client.get_experiment_by_name(experiment_name)
                    if exp is None:
                        raise
                    exp_id = exp.experiment_id
            else:
                exp_id = exp.experiment_id
        self.done: dict[str, int] = {}  # metric -> the last step the store has
        runs = self.client.search_runs(
            [exp_id], filter_string=f"tags.`prune_cli.run_id` = '{run.run_id}'"
        )
        mine = [r for r in runs if r.data.tags.get("prune_cli.run_dir") == str(run.run_dir)]
        if mine:
            self.run_id = mine[0].info.run_id
            for key in mine[0].data.metrics:
                history = self.client.get_metric_history(self.run_id, key)
                self.done[key] = max((m.step for m in history), default=-1)
            self.client.update_run(self.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        else:
            tags = {f"prune_cli.{k}": v for k, v in run.tags.items()} | {
                "prune_cli.run_id": run.run_id,
                "prune_cli.config_hash": run.config_hash,
                "prune_cli.run_dir": str(run.run_dir),
            }
            if run.sweep:
                tags["prune_cli.sweep"] = run.sweep
            created = self.client.create_run(exp_id, run_name=run.name, tags=tags)
            self.run_id = created.info.run_id
            params = [Param(k, str(v)[:6000]) for k, v in _flatten(run.spec).items()]
            for i in range(0, len(params), 100):
                self.client.log_batch(self.run_id, params=params[i : i + 100])

    def log(self, records: list[Record]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = []
        for r in records:
            values = dict(r.metrics)
            if r.kind != STEP:
                values["level"] = float(r.level)
            for key, value in values.items():
                if r.step > self.done.get(key, -1):
                    metrics.append(Metric(key, float(value), now, r.step))
        for i in range(0, len(metrics), self.BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + self.BATCH])

    def close(self, status: str) -> None:
        final = {"complete": "FINISHED", "failed": "FAILED"}.get(status, "KILLED")
        self.client.set_terminated(self.run_id, status=final)


def _absolute_sqlite(uri: str) -> str:
    """A ``sqlite:///relative/path`` made absolute (its directory made), other URIs as given."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return uri
    path = Path(uri[len(prefix) :])
    if not path.is_absolute():
        path = Path.cwd() / path
    path.parent.mkdir(parents=True, exist_ok=True)
    return prefix + str(path)


def _store_lock(uri: str):
    import contextlib

    from filelock import FileLock

    if uri.startswith("sqlite:///"):
        return FileLock(uri[len("sqlite:///") :] + ".lock")
    return contextlib.nullcontext()


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out |= _flatten(v, key + ".")
        else:
            out[key] = v
    return out


# ----------------------------------------------------------------------------------------------
# The run's tracker
# ----------------------------------------------------------------------------------------------


class TrackingState:
    """``tracking.json`` in the run directory: the rerun generation and W&B's last step."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / STATE_FILE

    def read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.read().get(key, default)

    def set(self, **values: Any) -> None:
        write_text(self.path, json.dumps(self.read() | values, sort_keys=True) + "\n")


def _sweep_name() -> str | None:
    """The sweep directory's name inside a Hydra multirun job, else None."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return None
        hc = HydraConfig.get()
        if hc.mode != RunMode.MULTIRUN:
            return None
        return Path(str(hc.sweep.dir)).name or None
    except Exception:  # noqa: BLE001 - no Hydra job here
        return None


class Tracker:
    """Every logger of a run, behind one ``log``; a context manager (closed with the run's end).

    ``enabled=False`` (ranks other than 0) logs nothing. Loggers open at :meth:`start` (errors
    surface before training); TensorBoard and ``metrics.csv`` at their first flush.
    """

    def __init__(self, cfg: DictConfig, run_dir: Path, config_hash: str, enabled: bool = True):
        check_loggers(cfg)
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.config_hash = config_hash
        self.enabled = enabled
        self.eval_every = int(cfg.runtime.eval_every)
        self.every = int(cfg.runtime.log_every_n_steps)
        self.loggers: list[tuple[str, Any]] | None = None
        self.done = -1  # the last step of this session's last flush
        self.dense_steps: int | None = None
        self.level_steps: int | None = None
        self._rerun_counted = False

    # -- the global step ----------------------------------------------------------------------

    def start(self, steps_per_epoch: int) -> None:
        """The run's layout of steps (and its loggers opened)."""
        self.dense_steps = int(self.cfg.train.epochs) * steps_per_epoch
        self.level_steps = max(1, round(retrain_epochs(self.cfg) * steps_per_epoch))
        if self.enabled:
            self._open()

    def base(self, level: int) -> int:
        """The global step of the first optimizer step of ``level`` (0: the dense phase)."""
        if level == 0:
            return 0
        return self.dense_steps + 1 + (level - 1) * (self.level_steps + 1)

    def summary_step(self, level: int) -> int:
        return self.base(level) + (self.dense_steps if level == 0 else self.level_steps)

    def phase(self, level: int, phase, history: Path | None = None) -> PhaseLog | None:
        """What ``train_phase`` reports to for ``phase`` (a :class:`prune_cli.train.Phase`) of
        ``level``; ``history``: also keep the records there (the dense cache entry's)."""
        if not self.enabled:
            return None
        if level > 0:
            self.level_steps = phase.steps
        levels = n_levels(self.cfg)
        after = (levels - level) * self.level_steps
        return PhaseLog(self, level, phase.name, self.base(level), after, history)

    # -- records ------------------------------------------------------------------------------

    def log(self, records: list[Record]) -> None:
        """One flush to every logger; steps this session already logged are left out."""
        if not self.enabled:
            return
        records = [r for r in records if r.step > self.done]
        if not records:
            return
        if self.loggers is None:
            self._open()
        for name, logger in list(self.loggers):
            try:
                logger.log(records)
            except Exception as e:  # noqa: BLE001 - tracking must not stop a training
                log.warning(
                    "logger %s failed (%s: %s); the run goes on without it",
                    name,
                    type(e).__name__,
                    e,
                )
                self.loggers.remove((name, logger))
        self.done = records[-1].step

    def summary(self, level: int, row: dict) -> None:
        """The level's record, from its row of ``results.jsonl``."""
        if not self.enabled:
            return
        metrics = {
            "level/density": row["density"],
            "level/compression": row["compression"],
            "level/nonzero_params": row["nonzero_params"],
            "level/flops": row["flops"],
            "level/acc": row["acc"],
        }
        if row.get("acc_after_prune") is not None:
            metrics["level/acc_after_prune"] = row["acc_after_prune"]
        phase = "dense" if level == 0 else f"level_{level:02d}"
        metrics = {k: float(v) for k, v in metrics.items()}
        self.log([Record(self.summary_step(level), LEVEL, level, phase, metrics)])

    def replay(self, history: Path) -> None:
        """Log the records kept in a dense cache entry (those this session has are skipped)."""
        if self.enabled:
            self.log(read_history(history))

    # -- opening and closing ------------------------------------------------------------------

    def _open(self) -> None:
        if self.loggers is not None:
            return
        state = TrackingState(self.run_dir)
        generation = int(state.get("generation", 0))
        if self.cfg.runtime.rerun and not self._rerun_counted:
            generation += 1  # a new W&B / MLflow run; TensorBoard and metrics.csv start over
            state.set(generation=generation, wandb_last_step=-1)
            self._rerun_counted = True
        run_id = self.config_hash[:10] + (f"-{generation}" if generation else "")
        c = self.cfg
        info = RunInfo(
            run_dir=self.run_dir.absolute(),
            config_hash=self.config_hash,
            run_id=run_id,
            name=self.run_dir.name,
            spec=run_spec(c),
            tags={
                "method": str(c.method.name),
                "model": str(c.model.name),
                "dataset": str(c.dataset.name),
                "pruning": str(c.pruning.name),
                "seed": str(c.seed),
            },
            sweep=_sweep_name(),
            config_yaml=OmegaConf.to_yaml(c, resolve=True),
        )
        self.loggers = [("metrics.csv", MetricsFile(self.run_dir / METRICS_FILE))]
        for name, node in _entries(c):
            settings = {k: v for k, v in node.items() if k != "_target_"}
            cls = _locate(f"runtime.logger.{name}._target_", node["_target_"])
            try:
                self.loggers.append((name, cls(info, **settings)))
            except Exception as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                self.close("failed")
                raise ConfigError(
                    f"runtime.logger.{name}: cannot start ({type(e).__name__}: {first})"
                ) from e

    def close(self, status: str = "complete") -> None:
        """End every logger with ``status`` (complete, failed, killed)."""
        for name, logger in self.loggers or []:
            try:
                logger.close(status)
            except Exception as e:  # noqa: BLE001 - closing must not hide the run's outcome
                log.warning("logger %s: closing failed (%s: %s)", name, type(e).__name__, e)
        self.loggers = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            status = "complete"
        elif issubclass(kind, (KeyboardInterrupt, SystemExit)):
            status = "killed"
        else:
            status = "failed"
        self.close(status)


class PhaseLog:
    """One phase's side of the tracker, for ``train_phase`` (rank 0): turns the loop's numbers
    into records at global steps ``base + phase step``."""

    def __init__(
        self,
        tracker: Tracker,
        level: int,
        phase: str,
        base: int,
        steps_after: int,
        history: Path | None = None,
    ) -> None:
        self.tracker = tracker
        self.level, self.phase, self.base = level, phase, base
        self.steps_after = steps_after
        self.history = history
        self.eval_every = tracker.eval_every
        self.every = tracker.every

    def evaluate_after(self, epoch: int, last: bool) -> bool:
        """Whether the test set is evaluated after epoch ``epoch`` (1-based)."""
        return self.eval_every > 0 and (last or epoch % self.eval_every == 0)

    def start(self, step: int) -> None:
        """The phase starts at its step ``step`` (0, or where a saved state resumes it): the
        kept history is cut there and replayed (the steps before came from an earlier session,
        maybe another job's)."""
        if self.history is None:
            return
        kept = [r for r in read_history(self.history) if r.step < self.base + step]
        write_text(self.history, "".join(r.to_json() + "\n" for r in kept))
        self.tracker.log(kept)

    def steps(
        self, first: int, steps_per_epoch: int, ce: list[float], n: list[int], lrs: list[float]
    ) -> list[Record]:
        """Step records of the phase's steps ``first ..`` (one epoch's, or up to a preemption):
        ``ce`` summed losses and ``n`` images of each step, ``lrs`` its LR."""
        records = []
        ce_w, n_w = 0.0, 0
        for k, (c, m, lr) in enumerate(zip(ce, n, lrs)):
            p = first + k
            ce_w, n_w = ce_w + c, n_w + m
            j = p % steps_per_epoch
            if (j + 1) % self.every == 0 or k == len(ce) - 1:
                loss = ce_w / max(n_w, 1)
                records.append(
                    Record(
                        self.base + p,
                        STEP,
                        self.level,
                        self.phase,
                        {"train/loss": loss, "train/lr": lr},
                    )
                )
                ce_w, n_w = 0.0, 0
        return records

    def epoch(self, epoch: int, last_step: int, metrics: dict[str, float | None]) -> Record:
        """Epoch ``epoch``'s record at the phase's step ``last_step`` (its last)."""
        values = {f"epoch/{k}": float(v) for k, v in metrics.items() if v is not None}
        values["epoch/epoch"] = float(epoch)
        return Record(self.base + last_step, EPOCH, self.level, self.phase, values)

    def flush(self, records: list[Record]) -> None:
        if not records:
            return
        if self.history is not None:
            with open(self.history, "a") as f:
                f.write("".join(r.to_json() + "\n" for r in records))
                f.flush()
                os.fsync(f.fileno())
        self.tracker.log(records)


def read_history(path: Path) -> list[Record]:
    """The records of a ``history.jsonl`` (none if absent; a torn last line is dropped)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        try:
            records.append(Record.from_json(line))
        except (ValueError, KeyError, TypeError):
            break
    return records


# ----------------------------------------------------------------------------------------------
# Checks (prevalidation)
# ----------------------------------------------------------------------------------------------


def _entries(cfg: DictConfig) -> list[tuple[str, Any]]:
    node = OmegaConf.select(cfg, "runtime.logger")
    if node is None:
        return []
    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    return list(plain.items())


def _locate(key: str, target: Any) -> type:
    if not isinstance(target, str) or not target:
        raise ConfigError(f"{key}: name the logger class (e.g. prune_cli.loggers.WandbLogger)")
    try:
        cls = import_object(target)
    except ImportError as e:
        raise ConfigError(f"{key}={target}: cannot be imported ({e})") from e
    if not callable(cls):
        raise ConfigError(f"{key}={target}: not a class")
    return cls


def check_loggers(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` (one line) if the ``logger`` entries cannot run: an unknown
    class or setting, or a package of an optional extra that is not installed. Imports no
    logger package (cheap: for prevalidation)."""
    every = OmegaConf.select(cfg, "runtime.eval_every")
    n = OmegaConf.select(cfg, "runtime.log_every_n_steps")
    if every is not None and every < 0:
        raise ConfigError(
            f"runtime.eval_every={every}: must be >= 0 (0: only at the end of each level)"
        )
    if n is not None and n < 1:
        raise ConfigError(f"runtime.log_every_n_steps={n}: must be >= 1")
    for name, node in _entries(cfg):
        if not isinstance(node, dict) or "_target_" not in node:
            raise ConfigError(
                f"runtime.logger.{name}: expected a mapping with _target_ (choose logger=tensorboard,"
                " wandb, mlflow, many or none)"
            )
        cls = _locate(f"runtime.logger.{name}._target_", node["_target_"])
        for module in getattr(cls, "requires", ()):
            if importlib.util.find_spec(module) is None:
                extra = getattr(cls, "extra", None)
                how = (
                    f"the optional extra '{extra}' is not installed: uv sync --extra {extra}"
                    f" (or pip install 'prune-cli[{extra}]')"
                    if extra
                    else f"the package '{module}' is not installed"
                )
                raise ConfigError(f"logger={name}: {how}")
        try:
            params = inspect.signature(cls).parameters
        except (TypeError, ValueError):
            continue
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            continue
        known = [p for p in params if p != "run"]
        for key in node:
            if key != "_target_" and key not in known:
                raise ConfigError(
                    f"runtime.logger.{name}.{key}: unknown setting of {cls.__name__}"
                    f" (known: {', '.join(known)})"
                )
        if name == "wandb" or cls is WandbLogger:
            mode = node.get("mode", "offline")
            if mode not in ("offline", "online", "disabled"):
                raise ConfigError(
                    f"runtime.logger.{name}.mode={mode}: expected offline, online or disabled"
                )
