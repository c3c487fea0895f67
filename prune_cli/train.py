"""The one training loop (dense phase and every retraining) and evaluation.

The loop knows nothing about pruning except "re-apply the masks after each optimizer step".
It sets the LR of every step from a schedule ``lr(x)``, keeps loss on the device (one host sync
per epoch, which also brings the per-step losses for the loggers), and saves a resumable state at
every epoch end. With a :class:`prune_cli.loggers.PhaseLog` it evaluates the test set after
epochs (``eval_every``) and reports steps and epochs to the run's loggers; the console shows a
bar or one line per epoch (:mod:`prune_cli.console`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from prune_cli.console import PhaseProgress
from prune_cli.distributed import PREEMPTION
from prune_cli.loggers import PhaseLog
from prune_cli.pruning import Masks
from prune_cli.schedules import Schedule
from prune_cli.store import CorruptFileError, load_torch, save_torch, write_text

log = logging.getLogger("prune_cli")


class DivergenceError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class Phase:
    """One training phase: ``steps`` optimizer steps with LR ``lr(step / steps_per_epoch)``."""

    name: str
    lr: Schedule
    steps: int
    steps_per_epoch: int
    seed: int

    @property
    def epochs(self) -> int:
        return math.ceil(self.steps / self.steps_per_epoch)

    def epoch_seed(self, epoch: int) -> int:
        """The seed of one epoch's data order: a pure function of (seed, phase, epoch)."""
        key = f"{self.seed}/{self.name}/{epoch}".encode()
        return int(hashlib.sha256(key).hexdigest()[:15], 16)


@dataclass
class PhaseResult:
    images_seen: int = 0
    wall_s: float = 0.0
    lr_log: list[float] = field(default_factory=list)
    train_loss: float = float("nan")


def make_optimizer(model: nn.Module, train: DictConfig) -> torch.optim.Optimizer:
    """SGD of the recipe (the LR is set per step by the loop)."""
    return torch.optim.SGD(
        model.parameters(),
        lr=train.lr,
        momentum=train.momentum,
        weight_decay=train.weight_decay,
        nesterov=train.nesterov,
    )


def autocast(device: torch.device, precision: str):
    """bf16 autocast when asked for, else a no-op context."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def rng_state() -> dict:
    """Every generator's state as tensors and plain data (loads with ``weights_only=True``)."""
    version, mt, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": {"version": version, "mt": list(mt), "gauss": gauss},
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the generators from :func:`rng_state`'s data."""
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["mt"]), py["gauss"]))
    np.random.set_state(
        {
            "bit_generator": npy["bit_generator"],
            "state": {"key": npy["key"].numpy().astype(np.uint32), "pos": npy["pos"]},
            "has_gauss": npy["has_gauss"],
            "gauss": npy["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _resume_state(state_path: Path, phase: Phase) -> dict | None:
    """The saved state of ``phase`` at ``state_path`` (``None`` if it holds another phase's).

    Raises :class:`CorruptFileError` naming the file if it is not a training state.
    """
    state = load_torch(state_path)
    if not isinstance(state, dict) or not isinstance(state.get("phase"), str):
        raise CorruptFileError(f"{state_path}: not a training state (no phase recorded)")
    if state["phase"] != phase.name:
        return None
    missing = [k for k in _STATE_KEYS if k not in state]
    if missing:
        raise CorruptFileError(f"{state_path}: not a training state (no {', '.join(missing)})")
    return state


_STATE_KEYS = ("step", "model", "optimizer", "masks", "rng", "images_seen", "wall_s", "lr_log")


@torch.no_grad()
def evaluate(model: nn.Module, data, batch_size: int, precision: str = "fp32") -> float:
    """Top-1 accuracy on the test set (counted on the device, one host sync)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = torch.zeros((), dtype=torch.long, device=device)
    total = 0
    for x, y in data.test_batches(batch_size):
        with autocast(device, precision):
            out = model(x)
        correct += (out.argmax(1) == y).sum()
        total += y.shape[0]
    model.train(was_training)
    return correct.item() / total


def train_phase(
    model: nn.Module,
    data,
    phase: Phase,
    train_cfg: DictConfig,
    masks: Masks | None = None,
    *,
    forward: nn.Module | None = None,
    state_path: Path | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
    progress: bool = True,
    world_size: int = 1,
    writer: bool = True,
    track: PhaseLog | None = None,
) -> PhaseResult:
    """Train ``model`` for ``phase.steps`` optimizer steps.

    ``forward`` is the module called on batches (a compiled or DDP-wrapped ``model``);
    ``on_epoch_end(e)`` runs after epoch ``e`` (and with ``e = 0`` before the first), e.g. to
    keep snapshots for weight rewinding. With ``state_path`` the phase saves its full state at
    every epoch end (and at the next step after a preemption signal) and, when a state of the
    same phase exists there, continues from it at that step. ``track`` (rank 0): the run's
    loggers, which get the per-step losses and LRs and each epoch's loss, test accuracy
    (evaluated after the epochs it names) and throughput; ``progress``: a bar on a terminal
    (without one, rank 0 logs a line per epoch).
    Raises :class:`DivergenceError` when the epoch's mean loss is not finite.
    """
    forward = model if forward is None else forward  # (a compiled module has no truth value)
    device = next(model.parameters()).device
    opt = make_optimizer(model, train_cfg)
    result = PhaseResult()
    step = 0
    if state_path is not None and Path(state_path).exists():
        state = _resume_state(Path(state_path), phase)
        if state is not None:
            try:
                model.load_state_dict(state["model"])
                opt.load_state_dict(state["optimizer"])
                if masks is not None:
                    masks.load_state_dict(state["masks"], source=state_path)
                set_rng_state(state["rng"])
            except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
                if isinstance(e, CorruptFileError):
                    raise
                first = (str(e).strip().splitlines() or [""])[0]
                raise CorruptFileError(
                    f"{state_path}: not a training state of this run ({type(e).__name__}: {first})"
                ) from e
            step = state["step"]
            result = PhaseResult(
                state["images_seen"],
                state["wall_s"],
                state["lr_log"],
                state.get("train_loss", math.nan),
            )
            log.info(
                "%s: resuming at step %d of %d (%s)", phase.name, step, phase.steps, state_path
            )
    if step == 0 and on_epoch_end is not None:
        on_epoch_end(0)
    if track is not None:
        track.start(step)

    def save_state() -> None:
        if state_path is None or not writer:
            return
        save_torch(
            {
                "phase": phase.name,
                "step": step,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "masks": masks.state_dict() if masks is not None else None,
                "rng": rng_state(),
                "images_seen": result.images_seen,
                "wall_s": result.wall_s,
                "lr_log": result.lr_log,
                "train_loss": result.train_loss,
            },
            state_path,
        )

    spe, bs = phase.steps_per_epoch, train_cfg.batch_size
    # a state saved after the last step (the run was killed before recording it): nothing left
    start_epoch = phase.epochs if step >= phase.steps else step // spe
    model.train()
    shown = PhaseProgress(
        phase.name,
        epochs=phase.epochs,
        steps=phase.steps,
        steps_per_epoch=spe,
        n_train=data.n_train,
        batch_size=bs,
        start_step=min(step, phase.steps),
        steps_after=track.steps_after if track is not None else 0,
        show=writer,
        bar=progress,
    )

    def send_steps(first: int, step_ce: torch.Tensor, counts: list[int], lrs: list[float]):
        """The step records of phase steps ``first ..`` (their losses: one device sync)."""
        if track is None or not counts:
            return []
        j = first % spe
        ce = step_ce[j : j + len(counts)].tolist()
        return track.steps(first, spe, ce, counts, lrs)

    lr = float("nan")
    PREEMPTION.training = True
    try:
        for epoch in range(start_epoch, phase.epochs):
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            # each step's summed loss, on the device until the epoch's sync (for the loggers)
            step_ce = torch.zeros(spe, device=device)
            counts: list[int] = []
            lrs: list[float] = []
            seen = 0
            done_in_epoch = step - epoch * spe  # > 0 only when resuming inside this epoch
            first = step
            for i, (x, y) in enumerate(data.train_batches(bs, phase.epoch_seed(epoch))):
                if i < done_in_epoch:
                    continue
                lr = phase.lr(step / spe)
                result.lr_log.append(lr)
                for g in opt.param_groups:
                    g["lr"] = lr
                # the mean over the *global* batch, so that N ranks (whose gradients DDP averages)
                # compute exactly the gradient of one process, also when shards differ in size
                n_global = min(bs, data.n_train - i * bs)
                with autocast(device, train_cfg.precision):
                    ce = F.cross_entropy(forward(x), y, reduction="sum")
                loss = ce * (world_size / n_global)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if masks is not None:
                    masks.apply()
                loss_sum += ce.detach().float()
                step_ce[i] = ce.detach().float()
                counts.append(n_global)
                lrs.append(lr)
                seen += y.shape[0]
                step += 1
                shown.update(n_global, step)
                if step == phase.steps:
                    break
                if _preempted(step, world_size, device):
                    result.images_seen += seen * world_size
                    result.wall_s += time.perf_counter() - t0
                    if world_size > 1:
                        torch.distributed.all_reduce(step_ce)
                    if track is not None:
                        track.flush(send_steps(first, step_ce, counts, lrs))
                    save_state()
                    PREEMPTION.honor()
            seen_global = seen
            if world_size > 1:  # every rank sees the same mean loss, so all stop together on NaN
                totals = torch.cat(
                    [torch.stack([loss_sum, torch.tensor(float(seen), device=device)]), step_ce]
                )
                torch.distributed.all_reduce(totals)
                loss_sum, seen_global, step_ce = totals[0], int(totals[1].item()), totals[2:]
            mean = loss_sum / max(seen_global, 1)
            if track is None:
                mean_loss = mean.item()
                records = []
            else:  # the losses of the steps travel with the mean: still one sync
                step_ce = torch.cat([mean.reshape(1), step_ce]).cpu()
                mean_loss, step_ce = step_ce[0].item(), step_ce[1:]
                records = send_steps(first, step_ce, counts, lrs)
            epoch_s = time.perf_counter() - t0
            result.images_seen += seen_global
            result.wall_s += epoch_s
            result.train_loss = mean_loss
            if not math.isfinite(mean_loss):
                raise DivergenceError(
                    f"{phase.name}, epoch {epoch + 1}: training loss is {mean_loss}"
                    " (diverged; try a smaller train.lr)"
                )
            last = step >= phase.steps
            acc = None
            if track is not None and track.evaluate_after(epoch + 1, last):
                acc = evaluate(model, data, train_cfg.eval_batch_size, train_cfg.precision)
            images_per_s = seen_global / max(epoch_s, 1e-9)
            if track is not None:
                # sent before the state is saved: a kill in between repeats the epoch, whose
                # steps the loggers then drop, and loses nothing
                epoch_metrics = {
                    "train_loss": mean_loss,
                    "test_acc": acc,
                    "lr": lr,
                    "images_per_s": images_per_s,
                    "seconds": epoch_s,
                }
                track.flush([*records, track.epoch(epoch + 1, step - 1, epoch_metrics)])
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1)
            save_state()
            shown.epoch_end(epoch + 1, step, mean_loss, acc, images_per_s)
    finally:
        PREEMPTION.training = False
        shown.close()
    return result


def _preempted(step: int, world_size: int, device: torch.device, every: int = 16) -> bool:
    """Whether to stop for a preemption now. Under DDP the ranks agree every ``every`` steps
    (signals reach ranks at different steps; one rank leaving alone would hang the others)."""
    if world_size == 1:
        return PREEMPTION.requested
    if step % every:
        return False
    flag = torch.tensor(float(PREEMPTION.requested), device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def write_lr_log(path: Path, lr_log: list[float], steps_per_epoch: int) -> None:
    """The per-step LR actually applied, as CSV ``step,epoch,lr`` (epoch is fractional)."""
    lines = ["step,epoch,lr"] + [
        f"{i},{i / steps_per_epoch:.6f},{lr:.10g}" for i, lr in enumerate(lr_log)
    ]
    write_text(path, "\n".join(lines) + "\n")
