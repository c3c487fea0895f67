"""Run directories that stay whole: one writer, completion judged from content, one dense
training per sweep, sweeps that survive a failing job, Ctrl-C as one line.

All through the real `prune-run` in subprocesses (LeNet-300-100 on the bundled digits).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import procs
import pytest
from conftest import QUIET, cli_argv, cli_env, cli_run

from prune_cli.rundir import IncompleteRunError, RunBusyError, RunLock, check_results, is_busy
from prune_cli.store import read_rows

# ~90 steps per epoch (batch 16): long enough to catch a run in the act
SLOW = [
    "experiment=quickstart",
    "train.epochs=4",
    "train.batch_size=16",
    "train.schedule.milestones=[2,3]",
    "pruning.levels=2",
    "method.retrain_epochs=2",
]
FAST = ["experiment=quickstart", "train.epochs=2", "pruning.levels=1"]
COMPARED = ("level", "acc", "acc_after_prune", "density", "nonzero_params", "images_seen")


def start(root: Path, *args: str) -> subprocess.Popen:
    return procs.Popen(
        cli_argv(root, *args),
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(root),
    )


def run(root: Path, *args: str) -> subprocess.CompletedProcess:
    return cli_run(root, *args)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def assert_one_line(proc, *needles: str) -> str:
    lines = error_lines(proc.stderr)
    assert proc.returncode != 0, proc.stdout
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def wait_for(cond, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.02)


# ----------------------------------------------------------------------------------------------
# One writer
# ----------------------------------------------------------------------------------------------


def test_lock_names_holder_and_dies_with_process(tmp_path):
    lock = RunLock(tmp_path).acquire()
    holder = is_busy(tmp_path)
    assert holder is not None and f"pid {os.getpid()}" in holder
    # a second taker in another process is refused with the holder's name
    code = (
        "import sys; from prune_cli.rundir import RunLock, RunBusyError\n"
        f"try: RunLock({str(tmp_path)!r}).acquire()\n"
        "except RunBusyError as e: print(e); sys.exit(3)\n"
    )
    proc = procs.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 3 and f"pid {os.getpid()}" in proc.stdout
    lock.release()
    assert is_busy(tmp_path) is None
    # a holder killed with SIGKILL leaves a free lock (the kernel drops it)
    holder_proc = procs.Popen(
        [
            sys.executable,
            "-c",
            f"from prune_cli.rundir import RunLock; RunLock({str(tmp_path)!r}).acquire();"
            "print('held', flush=True); import time; time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder_proc.stdout.readline().strip() == "held"
    assert is_busy(tmp_path) is not None
    with pytest.raises(RunBusyError, match=f"pid {holder_proc.pid}"):
        RunLock(tmp_path).acquire()
    holder_proc.kill()
    holder_proc.wait()
    RunLock(tmp_path).acquire().release()


def test_same_command_twice_at_once(tmp_path):
    """One run, one clear refusal, results identical to a single run."""
    run_dir = tmp_path / "run"
    first = start(tmp_path, f"hydra.run.dir={run_dir}", *SLOW)
    wait_for(lambda: is_busy(run_dir) is not None or first.poll() is not None)
    second = run(tmp_path, f"hydra.run.dir={run_dir}", *SLOW)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    line = assert_one_line(second, str(run_dir), "in use by another prune-run", f"pid {first.pid}")
    assert "host" in line and "since" in line
    rows = read_rows(run_dir / "results.jsonl")
    assert [r["level"] for r in rows] == [0, 1, 2]
    # the same command alone, in a fresh directory with the same dense cache
    alone = run(tmp_path, f"hydra.run.dir={tmp_path / 'alone'}", *SLOW)
    assert alone.returncode == 0, alone.stderr
    ref = read_rows(tmp_path / "alone" / "results.jsonl")
    assert [{k: r[k] for k in COMPARED} for r in rows] == [{k: r[k] for k in COMPARED} for r in ref]


# ----------------------------------------------------------------------------------------------
# Completion from content
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("finished")
    proc = run(root, f"hydra.run.dir={root / 'run'}", *FAST, "pruning.levels=2")
    assert proc.returncode == 0, proc.stderr
    return root


def _copy(finished: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    import shutil

    shutil.copytree(finished / "run", tmp_path / "run")
    shutil.copytree(finished / "cache", tmp_path / "cache")
    return tmp_path / "run", (tmp_path / "run" / "results.jsonl").read_text().splitlines()


@pytest.mark.parametrize(
    "edit, fault, line",
    [
        (lambda ls: [ls[0], ls[0], ls[1], ls[1], ls[2]], "appears again", 2),
        (lambda ls: [ls[0], "{}", ls[1]], "not a results row", 2),
        (lambda ls: [ls[0], ls[1][: len(ls[1]) // 2]], "not a JSON row", 2),
        (lambda ls: [ls[0], "", ls[1]], "empty line", 2),
        (lambda ls: [ls[0], ls[2]], "where level 1 was expected", 2),
        (lambda ls: ["\x00\xff garbage"], "not a JSON row", 1),
    ],
    ids=["duplicated", "empty-object", "torn", "blank", "gap", "garbage"],
)
def test_bad_rows_one_line(finished, tmp_path, edit, fault, line):
    run_dir, lines = _copy(finished, tmp_path)
    (run_dir / "results.jsonl").write_text("\n".join(edit(lines)) + "\n")
    before = (run_dir / "results.jsonl").read_bytes()
    proc = run(tmp_path, f"hydra.run.dir={run_dir}", *FAST, "pruning.levels=2")
    msg = assert_one_line(proc, str(run_dir / "results.jsonl"), f"line {line}", fault)
    assert "runtime.rerun=true" in msg
    assert (run_dir / "results.jsonl").read_bytes() == before  # nothing touched


@pytest.mark.parametrize("name", ["level_02.pt", "level_02_pruning.pt"])
def test_missing_checkpoint_is_not_complete(finished, tmp_path, name):
    """A level is its weights and its pruner's state: without either it is not done."""
    run_dir, _ = _copy(finished, tmp_path)
    (run_dir / "checkpoints" / name).unlink()
    proc = run(tmp_path, f"hydra.run.dir={run_dir}", *FAST, "pruning.levels=2")
    assert_one_line(proc, "line 3", f"{name} is missing", "keep only its first 2 line(s)")


def test_truncated_rows_resume_and_rerun_recovers(finished, tmp_path):
    run_dir, lines = _copy(finished, tmp_path)
    chash = json.loads(lines[0])["config_hash"]
    (run_dir / "results.jsonl").write_text("\n".join(lines[:2]) + "\n")
    assert len(check_results(run_dir, chash, 2)) == 2
    proc = run(tmp_path, f"hydra.run.dir={run_dir}", *FAST, "pruning.levels=2")
    assert proc.returncode == 0, proc.stderr
    assert "resuming" in proc.stdout + proc.stderr
    assert [r["level"] for r in read_rows(run_dir / "results.jsonl")] == [0, 1, 2]
    # a duplicated file is recovered by runtime.rerun=true
    (run_dir / "results.jsonl").write_text("\n".join([lines[0], lines[0]]) + "\n")
    with pytest.raises(IncompleteRunError):
        check_results(run_dir, chash, 2)
    proc = run(
        tmp_path, f"hydra.run.dir={run_dir}", *FAST, "pruning.levels=2", "runtime.rerun=true"
    )
    assert proc.returncode == 0, proc.stderr
    rows = read_rows(run_dir / "results.jsonl")
    assert [r["level"] for r in rows] == [0, 1, 2]
    assert [r["acc"] for r in rows] == [json.loads(x)["acc"] for x in lines]


# ----------------------------------------------------------------------------------------------
# One dense training per sweep
# ----------------------------------------------------------------------------------------------


def test_mixed_sweep_trains_dense_once(tmp_path):
    """FT runs first and trains the dense model; the WR job's rewind epoch (T - t = 2, not a
    default snapshot) was asked for before any job started, so nothing is trained twice."""
    proc = run(
        tmp_path,
        "-m",
        *FAST,
        "train.epochs=3",
        "method=ft,wr",
        "method.retrain_epochs=1",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    assert proc.returncode == 0, proc.stderr
    logs = [p.read_text() for p in (tmp_path / "sweep").rglob("run.log")]
    assert len(logs) == 2
    assert sum(log.count("training the dense model") for log in logs) == 1
    (entry,) = (tmp_path / "cache" / "dense").iterdir()
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["snapshots"] == [0, 2]
    # a later WR job whose rewind epoch the complete entry lacks: refused before anything runs
    again = run(tmp_path, *FAST, "train.epochs=3", "method=wr", "method.retrain_epochs=2")
    line = assert_one_line(again, "method.retrain_epochs=2", "epoch 1", str(entry))
    assert "kept only epochs" in line


# ----------------------------------------------------------------------------------------------
# Sweeps survive a failing job
# ----------------------------------------------------------------------------------------------


def test_sweep_survives_diverging_job(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run(tmp_path, "-m", *FAST, "method=lrw", "train.lr=0.1,1e9", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    # the other job finished and the report was still written
    assert (sweep / "report.csv").exists()
    failed = [p.parent for p in sweep.rglob("failed.json")]
    done = [p.parent for p in sweep.rglob("summary.txt")]
    assert len(failed) == 1 and len(done) == 1
    info = json.loads((failed[0] / "failed.json").read_text())
    assert info["type"] == "DivergenceError" and "diverged" in info["error"]
    summary = proc.stderr[proc.stderr.index("sweep ") :]
    assert "2 jobs" in summary and "1 complete" in summary and "1 failed" in summary
    assert "diverged" in summary and str(failed[0]) in summary
    report = procs.run(
        [sys.executable, "-m", "prune_cli.report", str(sweep), "--out", str(tmp_path / "rep")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert report.returncode == 0, report.stderr
    assert "failed" in report.stdout + report.stderr and str(failed[0].name) in (
        report.stdout + report.stderr
    )


# ----------------------------------------------------------------------------------------------
# Ctrl-C
# ----------------------------------------------------------------------------------------------


def test_ctrl_c_is_one_line_and_resumable(tmp_path):
    run_dir = tmp_path / "run"
    proc = start(tmp_path, f"hydra.run.dir={run_dir}", *SLOW)
    wait_for(lambda: (run_dir / "results.jsonl").exists() or proc.poll() is not None)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = error_lines(err)
    assert lines == [lines[0]] and "interrupted" in lines[0] and "resume" in lines[0], err
    again = run(tmp_path, f"hydra.run.dir={run_dir}", *SLOW)
    assert again.returncode == 0, again.stderr
    assert [r["level"] for r in read_rows(run_dir / "results.jsonl")] == [0, 1, 2]


# ----------------------------------------------------------------------------------------------
# The file system says no
# ----------------------------------------------------------------------------------------------


def _tmpfs(tmp_path: Path, size: str):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if (
        os.geteuid() != 0
        or procs.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True
        ).returncode
    ):
        pytest.skip("needs root and mount")
    return mnt


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs (root only; skipped where mounting is not allowed)."""
    yield _tmpfs(tmp_path, "1m")
    procs.run(["umount", "-l", str(tmp_path / "disk")], capture_output=True)


@pytest.fixture
def disk(tmp_path):
    """A 16 MB tmpfs (root only; skipped where mounting is not allowed)."""
    yield _tmpfs(tmp_path, "16m")
    procs.run(["umount", "-l", str(tmp_path / "disk")], capture_output=True)


def test_disk_full_is_one_line_and_loses_nothing(small_disk, tmp_path):
    run_dir = small_disk / "run"
    proc = run(tmp_path, f"hydra.run.dir={run_dir}", *FAST, "pruning.levels=8")
    line = assert_one_line(proc, "No space left on device", "run the same command again")
    assert str(small_disk) in line
    rows = read_rows(run_dir / "results.jsonl")  # what was written is whole
    assert [r["level"] for r in rows] == list(range(len(rows)))
    assert not list(run_dir.rglob("*.tmp"))  # no partial files left behind


def test_read_only_run_dir_is_one_line(disk, tmp_path):
    run_dir = disk / "run"
    proc = run(tmp_path, f"hydra.run.dir={run_dir}", *FAST, "pruning.levels=2")
    assert proc.returncode == 0, proc.stderr
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    (run_dir / "results.jsonl").write_text("\n".join(lines[:2]) + "\n")  # level 2 to redo
    before = (run_dir / "results.jsonl").read_bytes()
    procs.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    proc = run(tmp_path, f"hydra.run.dir={run_dir}", *FAST, "pruning.levels=2")
    assert_one_line(proc, str(run_dir), "read-only")
    assert (run_dir / "results.jsonl").read_bytes() == before


def test_cache_dir_is_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    proc = procs.run(
        [
            sys.executable,
            "-m",
            "prune_cli.cli",
            *QUIET,
            *FAST,
            f"runtime.cache_dir={tmp_path / 'afile'}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=cli_env(tmp_path),
    )
    assert_one_line(proc, "cache_dir", "afile", "not a directory")
    assert not (tmp_path / "outputs").exists()
