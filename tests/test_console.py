"""What a run prints: one line per epoch when the output is not a terminal (a SLURM log), a bar
that moves at every step on a terminal, and log lines that never cut through a bar."""

from __future__ import annotations

import fcntl
import io
import logging
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import procs
import pytest
from tqdm import tqdm

from prune_cli import console
from prune_cli.console import ConsoleFilter, PhaseProgress, TqdmHandler, duration

RUN = ["experiment=quickstart", "train.epochs=2", "pruning.levels=1", "logger=none"]
EPOCH_LINE = re.compile(
    r"(?P<phase>dense|level_01) epoch (?P<epoch>\d+)/2: loss \d+\.\d{4}, acc \d\.\d{4},"
    r" [\d,]+ img/s, ETA \d+:\d\d:\d\d \(run \d+:\d\d:\d\d\)$"
)


def _argv(tmp_path: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "prune_cli.cli",
        f"runtime.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        *RUN,
        *args,
    ]


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "PRUNE_CLI_DATA": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"}


def _epoch_lines(text: str) -> list[tuple[str, int]]:
    found = [EPOCH_LINE.search(line) for line in text.splitlines()]
    return [(m["phase"], int(m["epoch"])) for m in found if m]


def test_not_a_terminal_prints_one_line_per_epoch(tmp_path):
    # runtime.progress=true (the default), but stdout and stderr are pipes, as in a SLURM job
    proc = procs.run(
        _argv(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    expected = [("dense", 1), ("dense", 2), ("level_01", 1), ("level_01", 2)]
    assert _epoch_lines(proc.stdout) == expected, proc.stdout
    assert "\r" not in proc.stdout + proc.stderr  # no bar redrawn into the log
    assert _epoch_lines((tmp_path / "run" / "run.log").read_text()) == expected


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_a_terminal_gets_bars_and_whole_log_lines(tmp_path):
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # 160 columns
    proc = procs.Popen(
        _argv(tmp_path, "train.batch_size=16"),
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        env={**_env(tmp_path), "TERM": "xterm"},
    )
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the terminal closed with the process
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    proc.wait(timeout=600)
    os.close(leader)
    screen = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, screen
    assert "img/s" in screen and "level_01 ep" in screen  # the bar of each phase
    # every log line is whole on its line (the bar is cleared before it, redrawn after)
    lines = [seg for line in screen.split("\n") for seg in line.split("\r")]
    logged = [s.strip() for s in lines if re.match(r"\s*\[\d\d:\d\d:\d\d\] ", s)]
    level = [s for s in logged if "level 1: density" in s]
    assert len(level) == 1 and re.fullmatch(r"\[[\d:]+\] level 1: density [^\x1b]*lrw", level[0])
    # the epoch lines stay off a terminal that shows bars, and go to run.log
    assert _epoch_lines(screen) == []
    assert len(_epoch_lines((tmp_path / "run" / "run.log").read_text())) == 4


def test_log_lines_are_written_above_the_bar():
    out = io.StringIO()
    handler = TqdmHandler(out)
    handler.setFormatter(logging.Formatter("%(message)s"))
    bar = tqdm(total=10, file=out, desc="dense", mininterval=0)
    bar.update(3)
    handler.emit(logging.LogRecord("prune_cli", logging.INFO, "", 0, "hello there", (), None))
    bar.update(3)
    bar.close()
    text = out.getvalue()
    assert "\nhello there\n" in text.replace("\r", "\n")  # a whole line of its own
    after = text.split("hello there\n", 1)[1]
    assert "dense" in after  # and the bar drawn again below it


def test_console_filter_keeps_file_only_records_off_the_console():
    record = logging.LogRecord("prune_cli", logging.INFO, "", 0, "x", (), None)
    assert ConsoleFilter().filter(record)
    record.console = False
    assert not ConsoleFilter().filter(record)


def test_epoch_lines_carry_the_job_tag_and_long_epochs_a_heartbeat(monkeypatch, caplog):
    monkeypatch.setattr(console, "JOB_TAG", "[job 2/6] ")
    monkeypatch.setattr(console, "HEARTBEAT_S", 0.0)
    caplog.set_level(logging.INFO, logger="prune_cli")
    p = PhaseProgress(
        "level_03",
        epochs=2,
        steps=8,
        steps_per_epoch=4,
        n_train=64,
        batch_size=16,
        start_step=0,
        steps_after=8,
        bar=False,
    )
    for step in range(1, 5):
        p.update(16, step)
    p.epoch_end(1, 4, 0.25, 0.875, 1234.0)
    p.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("[job 2/6] level_03 epoch 1/2: step 1/4, ETA ")
    assert len([m for m in lines if ": step " in m]) == 3  # steps 1..3 (step 4 ends the epoch)
    assert re.fullmatch(
        r"\[job 2/6\] level_03 epoch 1/2: loss 0\.2500, acc 0\.8750, 1,234 img/s,"
        r" ETA \d:\d\d:\d\d \(run \d:\d\d:\d\d\)",
        lines[-1],
    )


def test_duration():
    assert duration(0) == "0:00:00"
    assert duration(3725.4) == "1:02:05"
    assert duration(2 * 86400 + 61) == "2d 0:01:01"
    assert duration(float("nan")) == "?"
