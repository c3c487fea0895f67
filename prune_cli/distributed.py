"""Process groups and preemption: what the runner needs to know about where it runs.

One run can span N processes (``torchrun --nproc-per-node N -m prune_cli.cli ...`` or N SLURM
tasks): gradients are all-reduced by DistributedDataParallel, every rank holds the same weights
and masks, and only rank 0 writes files. On CPU the gloo backend is used, so this works anywhere.
"""

from __future__ import annotations

import os
import signal
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
    """Turns the preemption/timeout signal into a checkpoint at the next optimizer step.

    SLURM (through submitit, ``--signal=USR2@<signal_delay_s>``) sends SIGUSR2 before it
    preempts or times out a job. The handler installed here only sets a flag; the training loop
    saves its state at the next step boundary and then calls the handler that was installed
    before (submitit's, which requeues the same job into the same directory and exits). Outside
    the training loop (waiting for the dense cache, evaluating) the handler hands over at once:
    the last saved state is at most that phase's start.
    """

    def __init__(self) -> None:
        self.requested = False
        self.training = False  # set by the training loop, which saves its state first
        self._previous: Any = None
        self._signum: int | None = None

    def install(self) -> None:
        name = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
        sig = getattr(signal, name, None)
        if sig is None or not hasattr(signal, "getsignal"):
            return
        try:
            self._previous = signal.getsignal(sig)
            signal.signal(sig, self._handler)
            self._signum = sig
        except ValueError:  # not the main thread (e.g. a joblib worker thread)
            return

    def _handler(self, signum: int, frame: Any) -> None:
        self.requested = True
        if not self.training:  # waiting for a lock, evaluating, writing: nothing to save
            self.honor()

    def honor(self) -> None:
        """After the state is saved: hand over to the previous handler, or exit."""
        prev = self._previous
        if callable(prev):
            prev(self._signum, None)
        raise SystemExit(f"preempted (signal {self._signum}); state saved, re-run to resume")


PREEMPTION = Preemption()
