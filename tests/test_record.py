"""record.json: what produced a run directory (code, packages, devices, command, times)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import procs
import pytest
import torch
from conftest import QUIET, compose
from omegaconf import OmegaConf

from prune_cli import record as rec
from prune_cli.config import CONF_DIR
from prune_cli.record import RECORD_NAME, hydra_sources, recording, write_record
from prune_cli.rundir import RunLock, record_failure
from prune_cli.store import config_hash, dense_hash

REPO = Path(rec.__file__).resolve().parent.parent
TINY = ["experiment=quickstart", "train.epochs=2", "pruning.levels=2"]
ARGV = ["/usr/bin/prune-run", "experiment=quickstart", "seed=1", "note=two words"]

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


@pytest.fixture(scope="module")
def cfg():
    return compose(*TINY)


def _record(run_dir: Path) -> dict:
    return json.loads((run_dir / RECORD_NAME).read_text())


def _git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.org",
    }
    return procs.run(
        ["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True, env=env
    ).stdout


def _start(run_dir: Path, cfg, **kw) -> bool:
    return write_record(run_dir, cfg, argv=ARGV, overrides=["seed=1"], phase="start", **kw)


def _end(run_dir: Path, cfg, outcome: str = "complete", **kw) -> bool:
    return write_record(
        run_dir, cfg, argv=ARGV, overrides=["seed=1"], phase="end", outcome=outcome, **kw
    )


def test_start_records_everything_static(tmp_path, cfg):
    assert _start(tmp_path, cfg)
    r = _record(tmp_path)
    assert r["config_hash"] == config_hash(cfg) and r["dense_hash"] == dense_hash(cfg)
    assert (r["method"], r["model"], r["dataset"], r["levels"]) == (
        "lrw",
        "lenet300_100",
        "digits",
        2,
    )
    (s,) = r["sessions"]
    assert r["start"] == s["start"] and s["end"] is None and s["outcome"] is None
    assert s["host"] == platform.node() and s["pid"] == os.getpid() and s["cwd"] == os.getcwd()
    assert s["argv"] == ARGV and s["overrides"] == ["seed=1"]
    assert s["command"] == "/usr/bin/prune-run experiment=quickstart seed=1 'note=two words'"
    assert s["rows_at_start"] == 0
    packages = s["packages"]
    assert packages["torch"] == torch.__version__.split("+")[0]
    for name in ("torchvision", "hydra-core", "omegaconf", "numpy", "torch-pruning", "prune-cli"):
        assert packages[name], name
    assert s["torch"]["version"] == torch.__version__ and s["torch"]["cuda"] == torch.version.cuda
    assert set(s["torch"]["cudnn"]) == {"compiled", "runtime"}
    assert s["devices"]["device"] == "cpu" and s["devices"]["cpu"]
    assert s["devices"]["cpu_count"] == os.cpu_count()
    assert s["git"]["config_dirs"] == []
    assert s["python"] == platform.python_version()


def test_start_is_fast(tmp_path, cfg):
    _start(tmp_path / "warm", cfg)  # imports and the first git call out of the way
    t0 = time.perf_counter()
    _start(tmp_path, cfg)
    _end(tmp_path, cfg)
    # < 100 ms on an idle machine; generous here, the test machine is shared
    assert time.perf_counter() - t0 < 2.0


@needs_git
def test_project_git_state_is_that_of_the_source_checkout(tmp_path, cfg):
    try:
        head = _git(REPO, "rev-parse", "HEAD").strip()
    except subprocess.CalledProcessError:
        pytest.skip("prune_cli does not run from a git checkout here")
    dirty = bool(_git(REPO, "status", "--porcelain").strip())
    _start(tmp_path, cfg)
    project = _record(tmp_path)["sessions"][0]["git"]["project"]
    assert project["commit"] == head and project["dirty"] is dirty
    assert Path(project["root"]) == REPO
    assert bool(project["changes"]) is dirty


def test_an_installed_wheel_has_no_checkout(monkeypatch):
    fake = Path("/opt/venv/lib/python3.11/site-packages/prune_cli/record.py")
    monkeypatch.setattr(rec, "__file__", str(fake))
    project = rec.project_git()
    assert project["commit"] is None and project["dirty"] is None
    assert project["note"] == "installed package, not a source checkout"


@needs_git
def test_a_user_config_dir_in_a_repository(tmp_path, cfg):
    repo = tmp_path / "mine"
    (repo / "conf" / "experiment").mkdir(parents=True)
    (repo / "conf" / "experiment" / "x.yaml").write_text("seed: 3\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "x")
    head = _git(repo, "rev-parse", "HEAD").strip()
    plain = tmp_path / "plain"  # not in a repository
    plain.mkdir()
    run = tmp_path / "run"
    _start(run, cfg, config_dir=repo / "conf")
    mine = _record(run)["sessions"][0]["git"]["config_dirs"][0]
    assert mine["commit"] == head and mine["dirty"] is False and mine["changes"] == []
    assert mine["path"] == str((repo / "conf").resolve())
    assert mine["root"] == str(repo.resolve())
    # edited after the commit: dirty, the file named; a second session of the same run
    (repo / "conf" / "experiment" / "x.yaml").write_text("seed: 4\n")
    _end(run, cfg)
    _start(run, cfg, config_dir=[repo / "conf", plain])
    first, second = _record(run)["sessions"]
    assert first["git"]["config_dirs"][0]["dirty"] is False
    mine, other = second["git"]["config_dirs"]
    assert mine["commit"] == head and mine["dirty"] is True
    assert mine["changes"] == [" M conf/experiment/x.yaml"]
    assert other["commit"] is None and other["dirty"] is None
    assert other["note"] == "not in a git repository"


def test_without_git_the_record_says_so(tmp_path, cfg, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert _start(tmp_path / "run", cfg, config_dir=tmp_path)
    git = _record(tmp_path / "run")["sessions"][0]["git"]
    for state in (git["project"], git["config_dirs"][0]):
        assert state["commit"] is None and state["dirty"] is None
        assert state["note"] == "git not found"


def test_end_keeps_the_start_and_a_resume_appends_a_session(tmp_path, cfg):
    _start(tmp_path, cfg)
    first_start = _record(tmp_path)["sessions"][0]
    (tmp_path / "results.jsonl").write_text('{"level": 0}\n')
    _end(tmp_path, cfg, "interrupted")
    (s,) = _record(tmp_path)["sessions"]
    assert {k: s[k] for k in first_start if k not in ("end", "outcome")} == {
        k: v for k, v in first_start.items() if k not in ("end", "outcome")
    }
    assert s["outcome"] == "interrupted" and s["end"] and s["wall_s"] >= 0
    assert s["rows_at_start"] == 0 and s["rows_at_end"] == 1
    _start(tmp_path, cfg)
    _end(tmp_path, cfg, "failed", error="dense, epoch 1: training loss is nan")
    r = _record(tmp_path)
    old, new = r["sessions"]
    assert old == s  # history is kept as it was
    assert new["rows_at_start"] == 1 and new["outcome"] == "failed"
    assert new["error"] == "dense, epoch 1: training loss is nan"
    assert r["start"] == old["start"] and r["end"] == new["end"] and r["outcome"] == "failed"


def test_an_end_without_a_recorded_start_still_records(tmp_path, cfg):
    _end(tmp_path, cfg)
    (s,) = _record(tmp_path)["sessions"]
    assert s["start"] is None and s["end"] and s["outcome"] == "complete"
    assert s["packages"]["torch"]


def test_nothing_is_written_into_a_directory_another_process_holds(tmp_path, cfg):
    with RunLock(tmp_path):
        assert not _start(tmp_path, cfg)
    assert not (tmp_path / RECORD_NAME).exists()


def test_ranks_other_than_0_write_nothing(tmp_path, cfg, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert not _start(tmp_path, cfg)
    assert not (tmp_path / RECORD_NAME).exists()


def test_an_unreadable_record_is_kept_aside(tmp_path, cfg):
    (tmp_path / RECORD_NAME).write_text('{"sessions": [')
    assert _start(tmp_path, cfg)
    assert (tmp_path / (RECORD_NAME + ".bad")).read_text() == '{"sessions": ['
    r = _record(tmp_path)
    assert len(r["sessions"]) == 1 and "record.json.bad" in r["note"]


def test_a_record_that_cannot_be_written_does_not_stop_the_run(tmp_path, cfg, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert not _start(blocker / "run", cfg)  # a path under a file: no directory
    assert "record not written" in caplog.text


def test_bad_phase_or_outcome_is_a_programming_error(tmp_path, cfg):
    with pytest.raises(ValueError):
        write_record(tmp_path, cfg, argv=[], overrides=[], phase="middle")
    with pytest.raises(ValueError):
        write_record(tmp_path, cfg, argv=[], overrides=[], phase="end", outcome="done")


def _raise(e: BaseException):
    raise e


@pytest.mark.parametrize(
    "body, raises, outcome, error",
    [
        (lambda d: None, None, "complete", None),
        (lambda d: _raise(KeyboardInterrupt()), KeyboardInterrupt, "interrupted", None),
        (lambda d: sys.exit(130), SystemExit, "interrupted", None),
        (
            lambda d: sys.exit("preempted (SIGUSR2); state saved, re-run to resume"),
            SystemExit,
            "interrupted",
            "preempted (SIGUSR2); state saved, re-run to resume",
        ),
        (lambda d: _raise(ValueError("a bug")), ValueError, "failed", "ValueError: a bug"),
        # a sweep job: failed.json written, the job returns so that the sweep goes on
        (
            lambda d: record_failure(d, "out of memory", "OutOfMemoryError"),
            None,
            "failed",
            "out of memory",
        ),
        (
            lambda d: (record_failure(d, "bad data", "DataError"), sys.exit(2)),
            SystemExit,
            "failed",
            "bad data",
        ),
    ],
    ids=["complete", "ctrl-c", "exit-130", "preempted", "bug", "sweep-job-failed", "exit-2"],
)
def test_recording_judges_the_outcome(tmp_path, cfg, body, raises, outcome, error):
    try:
        with recording(tmp_path, cfg, argv=ARGV, overrides=[]):
            body(tmp_path)
    except BaseException as e:  # noqa: BLE001 - the body's own exception passes through
        assert raises is not None and isinstance(e, raises)
    else:
        assert raises is None
    (s,) = _record(tmp_path)["sessions"]
    assert (s["outcome"], s["error"]) == (outcome, error)


def test_a_failure_written_by_another_process_is_not_ours(tmp_path, cfg):
    (tmp_path / "failed.json").write_text(
        json.dumps({"error": "old", "host": "elsewhere", "pid": 1}) + "\n"
    )
    with recording(tmp_path, cfg, argv=ARGV, overrides=[]):
        pass
    assert _record(tmp_path)["sessions"][0]["outcome"] == "complete"


def test_hydra_sources_names_only_a_users_config_dirs(tmp_path):
    hc = OmegaConf.create(
        {
            "overrides": {"task": ["seed=1", "method=ft"]},
            "runtime": {
                "config_sources": [
                    {"path": "hydra.conf", "schema": "pkg", "provider": "hydra"},
                    {"path": str(CONF_DIR), "schema": "file", "provider": "main"},
                    {"path": str(tmp_path), "schema": "file", "provider": "command-line"},
                    {"path": "", "schema": "structured", "provider": "schema"},
                ]
            },
        }
    )
    got = hydra_sources(hc)
    assert got == {
        "argv": sys.argv,
        "overrides": ["seed=1", "method=ft"],
        "config_dir": [str(tmp_path.resolve())],
    }


# ----------------------------------------------------------------------------------------------
# Through the real CLI (prune_cli.cli.hydra_main records every session)
# ----------------------------------------------------------------------------------------------


@needs_git
def test_every_cli_run_directory_holds_the_record(tmp_path):
    user = tmp_path / "user"
    (user / "conf" / "experiment").mkdir(parents=True)
    (user / "conf" / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - quickstart\n  - _self_\nseed: 5\n"
    )
    _git(user, "init", "-q")
    _git(user, "add", ".")
    _git(user, "commit", "-q", "-m", "mine")
    run = tmp_path / "run"
    # Hydra's options go before the overrides (the cli fixture puts its overrides first)
    args = [
        "-cd",
        str(user / "conf"),
        *QUIET,
        f"runtime.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={run}",
        "experiment=mine",
        "train.epochs=2",
        "pruning.levels=2",
    ]

    def prune_run():
        proc = procs.run(
            [sys.executable, "-m", "prune_cli.cli", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env={**os.environ, "PRUNE_CLI_DATA": str(tmp_path / "data")},
            timeout=600,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr

    prune_run()
    r = _record(run)
    (s,) = r["sessions"]
    assert s["outcome"] == "complete" and s["error"] is None and s["start"] <= s["end"]
    assert s["rows_at_start"] == 0 and s["rows_at_end"] == 3
    assert "experiment=mine" in s["overrides"] and "train.epochs=2" in s["overrides"]
    assert s["argv"][-len(args) :] == args and "prune_cli" in s["command"]
    (mine,) = s["git"]["config_dirs"]
    assert mine["commit"] == _git(user, "rev-parse", "HEAD").strip() and mine["dirty"] is False
    cfg = OmegaConf.load(run / "config.yaml")
    assert (
        r["config_hash"]
        == config_hash(cfg)
        == json.loads((run / "run.json").read_text())["config_hash"]
    )
    # the same command again: nothing to do, a second session
    prune_run()
    first, second = _record(run)["sessions"]
    assert first == s and second["outcome"] == "complete" and second["rows_at_start"] == 3


def test_a_failed_cli_run_records_its_error(cli, tmp_path):
    run = tmp_path / "run"
    proc = cli(*TINY, "train.lr=1e20", run_dir=run, check=False)
    assert proc.returncode == 2
    (s,) = _record(run)["sessions"]
    assert s["outcome"] == "failed" and "diverged" in s["error"]
    assert s["error"] == json.loads((run / "failed.json").read_text())["error"]
