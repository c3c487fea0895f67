"""A real SLURM: scripts/slurm_e2e.py starts a private single-node cluster (slurm-wlm, munge),
runs a 2-job sweep array through `launcher=slurm_cpu`, preempts it for real mid-training and
checks the requeued jobs resume at the step where they stopped, with the results of a run
that was never preempted. 2-3 minutes on 2 cores.

Needs `apt-get install slurm-wlm munge` and root (slurmd starts the jobs); skipped otherwise.
The default case is SLURM's default preemption (SIGTERM; SLURM requeues the job itself);
PRUNE_CLI_SLURM_ALL_MODES=1 adds a preemption GraceTime (SIGTERM; the job requeues itself
through submitit) and preempt_send_user_signal (SIGUSR2), two more minutes each.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import procs
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "slurm_e2e.py"
NEEDED = ("slurmctld", "slurmd", "munged", "sbatch")
MISSING = [n for n in NEEDED if shutil.which(n) is None]
ALL_MODES = os.environ.get("PRUNE_CLI_SLURM_ALL_MODES") == "1"

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(
        bool(MISSING),
        reason=f"SLURM not installed ({', '.join(MISSING)} missing): "
        "apt-get install slurm-wlm munge, or run scripts/slurm_e2e.py --install",
    ),
    pytest.mark.skipif(
        hasattr(os, "geteuid") and os.geteuid() != 0,
        reason="the private SLURM needs root (slurmd starts the jobs)",
    ),
]

MODES = {
    "sigterm-slurm-requeues": [],
    "sigterm-gracetime-job-requeues": ["--grace", "30"],
    "sigusr2-preempt_send_user_signal": ["--grace", "30", "--user-signal"],
}


@pytest.mark.parametrize("mode", list(MODES))
def test_preempted_sweep_array_on_a_real_slurm(mode, tmp_path):
    if mode != "sigterm-slurm-requeues" and not ALL_MODES:
        pytest.skip("PRUNE_CLI_SLURM_ALL_MODES=1 runs this preemption mode too")
    proc = procs.run(
        [sys.executable, str(SCRIPT), "--dir", str(tmp_path / "e2e"), *MODES[mode]],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    print(proc.stdout[-4000:])
    assert proc.returncode == 0, (
        f"slurm_e2e.py exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    )
    assert "resuming at step" in proc.stdout
