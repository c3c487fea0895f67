"""Experiment tracking: TensorBoard, W&B (offline) and MLflow (SQLite) read back with their own
readers, metrics.csv, and no duplicated step after a kill and a resume.

One real `prune-run ... logger=many` is killed in the retraining of level 1 and run again; the
logs of that run are what every test of the module reads. Its level-1 state is deleted before the
second session, as if the kill had come after the loggers got the epoch and before the state
was saved: the second session logs those epochs again, which no logger may then show twice.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import procs
import pytest
from conftest import QUIET, compose, run_inprocess

from prune_cli import train
from prune_cli.config import ConfigError
from prune_cli.loggers import Tracker, check_loggers, read_history, read_metrics
from prune_cli.store import config_hash, dense_hash, read_rows

RUN = [
    "experiment=quickstart",
    "train.epochs=3",
    "train.batch_size=32",
    "train.schedule.milestones=[2]",
    "pruning.levels=2",
]
LEVELS, EPOCHS = [0, 1, 2], 3


def _env(root: Path) -> dict:
    return {
        **os.environ,
        "PRUNE_CLI_DATA": str(root / "data"),
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB__TRANSACTION_LOG_FLUSH_INTERVAL": "0.5",
        "WANDB_CONFIG_DIR": str(root / ".wandb-config"),
        "WANDB_CACHE_DIR": str(root / ".wandb-cache"),
        "WANDB_DATA_DIR": str(root / ".wandb-data"),
    }


def _start(root: Path, run: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "prune_cli.cli", *QUIET, f"runtime.cache_dir={root / 'cache'}"]
    return procs.Popen(
        [*argv, f"hydra.run.dir={run}", *RUN, "logger=many"],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(root),
    )


@pytest.fixture(scope="module")
def tracked(tmp_path_factory) -> Path:
    """The run directory of a `logger=many` run killed in level 1 and resumed (see above)."""
    root = tmp_path_factory.mktemp("tracked")
    run = root / "run"
    state, results = run / "train_state.pt", run / "results.jsonl"

    def in_level_1() -> bool:  # an epoch of level 1 logged and its state saved
        try:
            return len(read_rows(results)) == 1 and state.stat().st_mtime > results.stat().st_mtime
        except (OSError, ValueError):
            return False

    proc = _start(root, run)
    while proc.poll() is None and not in_level_1():
        time.sleep(0.002)
    if proc.poll() is not None:
        out, err = proc.communicate()
        pytest.fail(f"the run ended (exit {proc.returncode}) before level 1\n{out}\n{err}")
    # frozen at that instant; W&B's service process (not frozen) writes what it was sent to its
    # offline file every WANDB__TRANSACTION_LOG_FLUSH_INTERVAL seconds: let it, then kill
    os.kill(proc.pid, signal.SIGSTOP)
    assert in_level_1()
    time.sleep(2.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    logged = read_metrics(run / "metrics.csv")
    assert any(r["level"] == 1 for r in logged)  # level 1 was logged before the kill
    state.unlink()  # the kill came before the state: level 1 is logged again from its start
    proc = _start(root, run)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out + err
    return run


def _no_duplicates(steps: list[int], what: str) -> None:
    twice = sorted(s for s, n in Counter(steps).items() if n > 1)
    assert not twice, f"{what}: steps logged twice: {twice}"


def _epochs_of_every_level(pairs: list[tuple[int, int]]) -> None:
    """(level, step) of each epoch record: every epoch of every level, once."""
    per_level = Counter(level for level, _ in pairs)
    assert per_level == {level: EPOCHS for level in LEVELS}, per_level


# ----------------------------------------------------------------------------------------------
# The readers of each tool
# ----------------------------------------------------------------------------------------------


def test_tensorboard_reader_sees_every_epoch_of_every_level_once(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tracked / "tensorboard"), size_guidance={"scalars": 0})
    ea.Reload()
    assert len(list((tracked / "tensorboard").glob("events.out.tfevents.*"))) == 2  # 2 sessions
    for tag in ea.Tags()["scalars"]:
        _no_duplicates([e.step for e in ea.Scalars(tag)], tag)
    level_at = {e.step: int(e.value) for e in ea.Scalars("level")}
    acc = ea.Scalars("epoch/test_acc")
    _epochs_of_every_level([(level_at[e.step], e.step) for e in acc])
    rows = read_rows(tracked / "results.jsonl")
    summary = {level_at[e.step]: e.value for e in ea.Scalars("level/acc")}
    assert summary == pytest.approx({r["level"]: r["acc"] for r in rows})
    # the last epoch of each level is the level's accuracy
    last = {level_at[e.step]: e.value for e in acc}
    assert last == pytest.approx(summary)
    assert len(ea.Scalars("train/loss")) > len(acc)  # per-step records too


def test_metrics_csv_has_one_row_per_epoch(tracked):
    rows = read_metrics(tracked / "metrics.csv")
    _no_duplicates([r["step"] for r in rows], "metrics.csv")
    _epochs_of_every_level([(r["level"], r["step"]) for r in rows])
    assert [r["epoch"] for r in rows] == [1, 2, 3] * len(LEVELS)
    assert {r["phase"] for r in rows} == {"dense", "level_01", "level_02"}
    for r in rows:
        assert r["train_loss"] > 0 and 0 < r["test_acc"] <= 1 and r["images_per_s"] > 0


def _wandb_records(path: Path):
    """The records of a .wandb file (W&B's LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            break
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(buf)
            yield record


def test_wandb_offline_run_can_be_synced_and_has_no_step_twice(tracked):
    chash = json.loads((tracked / "run.json").read_text())["config_hash"]
    segments = sorted((tracked / "wandb").glob("offline-run-*"))
    assert len(segments) == 2  # one per session, of the same W&B run: the config hash
    assert {p.name.rsplit("-", 1)[1] for p in segments} == {chash[:10]}
    rows = []
    for seg in segments:
        (log,) = seg.glob("run-*.wandb")
        for record in _wandb_records(log):
            if record.WhichOneof("record_type") == "history":
                items = {
                    i.key or "/".join(i.nested_key): json.loads(i.value_json)
                    for i in record.history.item
                }
                rows.append((record.history.step.num, items))
    _no_duplicates([step for step, _ in rows], "wandb")
    _epochs_of_every_level([(r["level"], s) for s, r in rows if "epoch/test_acc" in r])
    assert {r["phase"] for _, r in rows} == {"dense", "level_01", "level_02"}
    sync = procs.run(
        [sys.executable, "-m", "wandb", "sync", "--dry-run", *map(str, segments)],
        capture_output=True,
        text=True,
        env=_env(tracked.parent),
        timeout=300,
    )
    assert sync.returncode == 0, sync.stdout + sync.stderr
    assert "Would sync 2 run(s)" in sync.stdout + sync.stderr


def test_mlflow_client_reads_the_sqlite_store(tracked):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tracked.parent / 'mlflow.db'}")
    exp = client.get_experiment_by_name("prune-cli")
    (run,) = client.search_runs([exp.experiment_id])  # the resumed session reopened its run
    assert run.info.status == "FINISHED"
    assert run.data.tags["prune_cli.run_dir"] == str(tracked)
    assert run.data.params["train.epochs"] == "3"
    history = {key: client.get_metric_history(run.info.run_id, key) for key in run.data.metrics}
    for key, points in history.items():
        _no_duplicates([m.step for m in points], key)
    level_at = {m.step: int(m.value) for m in history["level"]}
    _epochs_of_every_level([(level_at[m.step], m.step) for m in history["epoch/test_acc"]])
    assert len(history["level/density"]) == len(LEVELS)


# ----------------------------------------------------------------------------------------------
# The dense phase: interrupted between its logs and its state, resumed
# ----------------------------------------------------------------------------------------------


def test_interrupted_dense_phase_keeps_one_history(tmp_path, monkeypatch):
    """Stopped after epoch 2's records were sent and before its state was saved (the worst
    instant): the resumed dense phase cuts the cache's history back and logs epoch 2 again."""
    args = [*RUN, "pruning.levels=1"]
    real, saves = train.save_torch, []

    def save(obj, path):
        if isinstance(obj, dict) and obj.get("phase") == "dense":
            saves.append(obj["step"])
            if len(saves) == 2:
                raise KeyboardInterrupt  # instead of saving the second epoch's state
        real(obj, path)

    monkeypatch.setattr(train, "save_torch", save)
    with pytest.raises(KeyboardInterrupt):
        run_inprocess(tmp_path / "run", *args)
    (history,) = (tmp_path / "cache").glob("dense/*/history.jsonl")
    assert Counter(r.kind for r in read_history(history))["epoch"] == 2
    monkeypatch.setattr(train, "save_torch", real)
    run_inprocess(tmp_path / "run", *args)
    records = read_history(history)
    _no_duplicates([r.step for r in records if r.kind == "epoch"], "history")
    assert [r.metrics["epoch/epoch"] for r in records if r.kind == "epoch"] == [1, 2, 3]
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    _no_duplicates([r["step"] for r in rows], "metrics.csv")
    assert [(r["level"], r["epoch"]) for r in rows] == [
        (0, 1),
        (0, 2),
        (0, 3),
        (1, 1),
        (1, 2),
        (1, 3),
    ]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"scalars": 0})
    ea.Reload()
    for tag in ea.Tags()["scalars"]:
        _no_duplicates([e.step for e in ea.Scalars(tag)], tag)
    assert len(ea.Scalars("epoch/test_acc")) == 6


def test_a_run_reusing_a_cached_dense_model_logs_its_epochs(tmp_path):
    run_inprocess(tmp_path / "a", *RUN, "pruning.levels=1", "logger=none")
    run_inprocess(tmp_path / "b", *RUN, "pruning.levels=1", "method=ft", "logger=none")
    a = read_metrics(tmp_path / "a" / "metrics.csv")
    b = read_metrics(tmp_path / "b" / "metrics.csv")
    dense = [r for r in b if r["level"] == 0]
    assert dense == [r for r in a if r["level"] == 0] and len(dense) == EPOCHS
    assert not (tmp_path / "a" / "tensorboard").exists()  # logger=none: only metrics.csv


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


def test_logger_settings_change_no_hash():
    base = compose("experiment=quickstart")
    other = compose(
        "experiment=quickstart",
        "logger=many",
        "runtime.eval_every=0",
        "runtime.log_every_n_steps=1",
    )
    assert config_hash(other) == config_hash(base)
    assert dense_hash(other) == dense_hash(base)
    # the `logger` group lands at runtime.logger (never hashed); `logger=...` picks it as before
    assert set(compose("experiment=quickstart", "logger=[tensorboard,mlflow]").runtime.logger) == {
        "tensorboard",
        "mlflow",
    }
    assert dict(compose("experiment=quickstart", "logger=none").runtime.logger) == {}
    assert set(base.runtime.logger) == {"tensorboard"} and "logger" not in base


def test_a_missing_extra_is_one_line_naming_it(monkeypatch):
    import importlib.util

    from prune_cli import loggers

    real = importlib.util.find_spec
    monkeypatch.setattr(
        loggers.importlib.util, "find_spec", lambda m: None if m == "mlflow" else real(m)
    )
    with pytest.raises(ConfigError) as e:
        check_loggers(compose("experiment=quickstart", "logger=many"))
    line = str(e.value)
    assert "\n" not in line and "logger=mlflow" in line and "uv sync --extra mlflow" in line


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("+runtime.logger.wandb.colour=red", "runtime.logger.wandb.colour: unknown setting"),
        ("runtime.logger.wandb.mode=sideways", "runtime.logger.wandb.mode=sideways"),
        ("runtime.eval_every=-1", "runtime.eval_every=-1"),
        ("runtime.log_every_n_steps=0", "runtime.log_every_n_steps=0"),
        ("runtime.logger.wandb._target_=no.such.Logger", "cannot be imported"),
    ],
)
def test_bad_logger_settings_are_one_line(override, needle):
    with pytest.raises(ConfigError) as e:
        check_loggers(compose("experiment=quickstart", "logger=wandb", override))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_global_steps_of_levels_and_summaries(tmp_path):
    cfg = compose("experiment=quickstart", "train.epochs=3", "method.retrain_epochs=2")
    tracker = Tracker(cfg, tmp_path, "0" * 64, enabled=False)
    tracker.start(steps_per_epoch=10)  # dense: 30 steps, each level: 20
    assert [tracker.base(k) for k in range(3)] == [0, 31, 52]
    assert [tracker.summary_step(k) for k in range(3)] == [30, 51, 72]
