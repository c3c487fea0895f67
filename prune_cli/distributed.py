"""Process groups and preemption: what the runner needs to know about where it runs.

One run can span N processes (``torchrun --nproc-per-node N -m prune_cli.cli ...`` or N SLURM
tasks): gradients are all-reduced by DistributedDataParallel, every rank holds the same weights
and masks, and only rank 0 writes files. On CPU the gloo backend is used, so this works anywhere.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def writer(self) -> bool:
        """Only rank 0 writes results, checkpoints, caches and progress bars."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def _env_int(*names: str, default: int) -> int:
    for n in names:
        if os.environ.get(n):
            return int(os.environ[n])
    return default


def init(device: torch.device) -> Dist:
    """Join the process group that ``torchrun`` or SLURM describes (no-op for one process).

    torchrun sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT; under SLURM tasks the
    SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID variables are used with MASTER_ADDR/PORT.
    """
    world = _env_int("WORLD_SIZE", "SLURM_NTASKS", default=1)
    if world <= 1:
        return Dist()
    rank = _env_int("RANK", "SLURM_PROCID", default=0)
    local = _env_int("LOCAL_RANK", "SLURM_LOCALID", default=0)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return Dist(rank, world, local)


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def broadcast(d: Dist, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not d.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@torch.no_grad()
def broadcast_tensors(d: Dist, tensors: list[torch.Tensor]) -> None:
    """Overwrite ``tensors`` in place with rank 0's values."""
    if d.active:
        for t in tensors:
            dist.broadcast(t, src=0)


# ----------------------------------------------------------------------------------------------
# Preemption
# ----------------------------------------------------------------------------------------------


class Preemption:
    """Turns a preemption, timeout or termination signal into a checkpoint at the next step.

    Two signals are caught, and both save the training state at the next optimizer step:

    - SIGUSR2 (``SUBMITIT_PREEMPT_SIGNAL``): submitit asks SLURM for ``--signal=USR2@<delay>``,
      sent ``signal_delay_s`` seconds before the time limit, and at preemption when the cluster
      sets ``SlurmctldParameters=preempt_send_user_signal`` (with a GraceTime). After the save,
      the handler installed before (submitit's) requeues the same job into the same directory
      and exits.
    - SIGTERM: what SLURM sends by default at preemption (followed by SIGKILL ``KillWait``
      seconds later, 30 s by default), what ``scancel`` and ``kill`` send. After the save:
      under a submitit SLURM job that SLURM keeps running (a preemption GraceTime), submitit's
      USR2 handler requeues the job as above; a job that SLURM is already ending (preemption
      without GraceTime: SLURM requeues it itself; ``scancel``: it must stay cancelled) and a
      run outside SLURM end with one line saying how to resume.

    The handlers only set a flag; the training loop saves its state at the next step boundary
    and calls :meth:`honor`. Outside the training loop (waiting for the dense cache,
    evaluating) the handler honours the signal at once: the last saved state is at most that
    phase's start.
    """

    def __init__(self) -> None:
        self.requested = False
        self.training = False  # set by the training loop, which saves its state first
        self._previous: Any = None  # the preemption signal's handler before ours (submitit's)
        self._signum: int | None = None  # the preemption signal (SIGUSR2)
        self._received: int | None = None  # the signal being honoured
        self._honoring = False

    def install(self) -> None:
        name = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
        sig = getattr(signal, name, None)
        if sig is None or not hasattr(signal, "getsignal"):
            return
        self._received, self._honoring = None, False  # a new run in this process
        try:
            for s in dict.fromkeys((sig, signal.SIGTERM)):
                previous = signal.getsignal(s)
                if previous == self._handler:  # installed by an earlier run of this process
                    continue
                signal.signal(s, self._handler)
                if s == sig:
                    self._previous = previous
            self._signum = sig
        except ValueError:  # not the main thread (e.g. a joblib worker thread)
            return

    def _handler(self, signum: int, frame: Any) -> None:
        if self._honoring:  # SLURM sends SIGTERM to the step and srun forwards it once more
            return
        if self._received is None or signum == self._signum:
            self._received = signum
        self.requested = True
        if not self.training:  # waiting for a lock, evaluating, writing: nothing to save
            self.honor()

    def honor(self) -> None:
        """After the state is saved: hand over to the previous handler, or exit."""
        self._honoring = True
        if self._received == signal.SIGTERM:
            self._terminated()
        prev = self._previous
        if callable(prev):
            prev(self._signum, None)
        name = signal.Signals(self._signum).name if self._signum else "signal"
        raise SystemExit(f"preempted ({name}); state saved, re-run to resume")

    def _terminated(self) -> None:
        """SIGTERM, the state saved: requeue a SLURM job that SLURM keeps running, else exit."""
        job = os.environ.get("SLURM_JOB_ID")
        if os.environ.get("SLURM_ARRAY_TASK_ID"):  # squeue's id of a task: the array's one
            job = f"{os.environ.get('SLURM_ARRAY_JOB_ID')}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        if not job:
            raise SystemExit(
                "terminated (SIGTERM); state saved, run the same command again to resume"
            )
        if os.environ.get("SUBMITIT_EXECUTOR") != "slurm" or not callable(self._previous):
            raise SystemExit(
                f"terminated (SIGTERM): SLURM job {job}; state saved, submit the same command "
                "again to resume (unless SLURM requeues the job itself)"
            )
        if _env_int("SLURM_PROCID", default=0) != 0:  # rank 0 requeues the job
            raise SystemExit(f"terminated (SIGTERM); rank 0 of SLURM job {job} requeues it")
        state = _slurm_job_state(job)
        if state == "RUNNING":
            # SLURM lets the job run on (a preemption GraceTime, `scancel --signal=TERM`):
            # submitit's USR2 handler requeues it (`scontrol requeue`) and exits
            try:
                self._previous(signal.SIGTERM, None)
            except (OSError, subprocess.SubprocessError) as e:
                raise SystemExit(
                    f"terminated (SIGTERM): state saved, but SLURM job {job} could not be "
                    f"requeued ({e}); submit the same command again to resume"
                ) from None
        # not requeued here: preempted without GraceTime, SLURM has already requeued the job
        # (`scontrol requeue` would fail); cancelled, it must stay cancelled
        raise SystemExit(
            f"terminated (SIGTERM): SLURM is ending job {job} (state {state or 'unknown'}); "
            "state saved. SLURM requeues a preempted job (PreemptMode=REQUEUE), which then "
            "resumes; otherwise submit the same command again to resume"
        )


def _slurm_job_state(job: str) -> str | None:
    """The job's state as squeue shows it (RUNNING, COMPLETING, ...), or None if unknown."""
    for attempt in range(3):  # slurmctld may be busy with the preemption that sent the signal
        if attempt:
            time.sleep(0.5)
        try:
            out = subprocess.run(
                ["squeue", "--noheader", "--jobs", job, "--format", "%T"],
                capture_output=True,
                text=True,
                timeout=5,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        states = out.stdout.split()
        if out.returncode == 0 and len(states) == 1:
            return states[0]
    return None


PREEMPTION = Preemption()
