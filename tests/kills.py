"""Real kills for the resume tests: freeze a `prune-run` subprocess at a moment read from its
files, then SIGKILL it there."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable

import pytest


def kill_when(proc: subprocess.Popen, moment: Callable[[], bool], what: str) -> None:
    """SIGKILL ``proc`` at an instant where ``moment()`` holds on its (frozen) files."""
    while proc.poll() is None:
        if moment():
            os.kill(proc.pid, signal.SIGSTOP)
            if moment():  # still true now that nothing moves: this is the instant
                os.kill(proc.pid, signal.SIGKILL)
                proc.communicate()
                return
            os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.002)
    out, err = proc.communicate()
    pytest.fail(f"the run ended (exit {proc.returncode}) before {what}\n{out}\n{err}")
