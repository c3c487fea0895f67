"""The one training loop (dense phase and every retraining) and evaluation.

The loop knows nothing about pruning except "tell the pruner after each optimizer step" (it
re-applies its masks; a gradual schedule may prune). It sets the LR (and optionally the momentum)
of every step from a schedule of the fractional epoch, keeps loss on the device (one host sync per
epoch, which also brings the per-step losses for the loggers), and saves a resumable state at
every epoch end. With a validation split (``dataset.val_fraction``) it can keep the epoch of best
validation accuracy (``train.select=best_val``). With a :class:`prune_cli.loggers.PhaseLog` it
evaluates the test set after epochs (``eval_every``) and reports steps and epochs to the run's
loggers; the console shows a bar or one line per epoch (:mod:`prune_cli.console`).
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
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from prune_cli.console import PhaseProgress
from prune_cli.distributed import PREEMPTION
from prune_cli.errors import ConfigError, CorruptFileError
from prune_cli.layers import modes_kept
from prune_cli.schedules import Schedule
from prune_cli.store import load_torch, save_torch, write_text

if TYPE_CHECKING:  # a type only: the loggers module imports much of the package
    from prune_cli.loggers import PhaseLog

log = logging.getLogger("prune_cli")


class DivergenceError(RuntimeError):
    """The training loss became NaN or infinite."""


class Pruner(Protocol):
    """What the loop needs of the pruning side of a phase (masks, a gradual schedule)."""

    def after_step(self, step: int) -> None:
        """Called after every optimizer step with the phase's step count after it: re-apply the
        masks (and, for a gradual schedule, prune when it is time)."""

    def state_dict(self) -> Any:
        """What the phase's saved state keeps (under ``"masks"``) to resume the pruner."""

    def load_state_dict(self, state: Any, source: object = None) -> None:
        """Restore :meth:`state_dict`'s data (``source``: the file, for error messages)."""


SELECT = ("final", "best_val")
"""``train.select``: return the last epoch's model, or the one of best validation accuracy."""


@dataclass
class Phase:
    """One training phase: ``steps`` optimizer steps with LR ``lr(step / steps_per_epoch)`` and,
    if ``momentum`` is given, every parameter group's momentum ``momentum(step /
    steps_per_epoch)`` (as OneCycleLR cycles it); else the optimizer's momentum stays."""

    name: str
    lr: Schedule
    steps: int
    steps_per_epoch: int
    seed: int
    momentum: Schedule | None = None

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
    # the momentum of every step, when the phase sets it per step (CLR with cycled momentum)
    momentum_log: list[float] = field(default_factory=list)
    train_loss: float = float("nan")
    # validation accuracy of the returned model (best_val: the best epoch's; final: the last
    # epoch's), None without a validation split
    val_acc: float | None = None
    # best_val: the phase epoch (1-based) whose weights are returned; final: None
    best_epoch: int | None = None
    # the optimizer's state_dict at the end of the phase, tensors on the CPU (to carry over)
    optimizer_state: dict | None = None


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
def evaluate(
    model: nn.Module, data, batch_size: int, precision: str = "fp32", split: str = "test"
) -> float:
    """Top-1 accuracy on the test set, or with ``split="val"`` on the held-out validation part of
    the training set (counted on the device, one host sync). Every rank evaluates all of it."""
    if split == "test":
        batches = data.test_batches(batch_size)
    elif split == "val":
        if not getattr(data, "n_val", 0):
            raise ConfigError(
                f"dataset.val_fraction: {data.name} has no validation split to evaluate"
                " (set dataset.val_fraction, e.g. 0.1)"
            )
        batches = data.val_batches(batch_size)
    else:
        raise ValueError(f"split={split!r}: expected 'test' or 'val'")
    device = next(model.parameters()).device
    correct = torch.zeros((), dtype=torch.long, device=device)
    total = 0
    with modes_kept(model, training=False):
        for x, y in batches:
            with autocast(device, precision):
                out = model(x)
            correct += (out.argmax(1) == y).sum()
            total += y.shape[0]
    return correct.item() / total


def _to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor replaced by a CPU copy (dicts, lists and tuples walked)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _load_optimizer_state(opt: torch.optim.Optimizer, state: dict) -> None:
    """Carry the per-parameter state (momentum buffers) of ``state`` into ``opt``, keeping
    ``opt``'s own hyperparameters (momentum, weight decay, Nesterov: the recipe of this phase)."""
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    opt.load_state_dict(state)
    for g, h in zip(opt.param_groups, hyper):
        g.update(h)


def _selection(train_cfg: DictConfig, data) -> str:
    """``train.select`` (null: final), checked against the data."""
    select = train_cfg.get("select") or "final"
    if select not in SELECT:
        raise ConfigError(f"train.select={select}: expected {' or '.join(SELECT)}")
    if select == "best_val" and not getattr(data, "n_val", 0):
        raise ConfigError(
            "train.select=best_val: needs a validation split; set dataset.val_fraction (e.g. 0.1)"
        )
    return select


def train_phase(
    model: nn.Module,
    data,
    phase: Phase,
    train_cfg: DictConfig,
    pruner: Pruner | None = None,
    *,
    forward: nn.Module | None = None,
    state_path: Path | None = None,
    on_epoch_end: Callable[[int, torch.optim.Optimizer], None] | None = None,
    progress: bool = True,
    world_size: int = 1,
    writer: bool = True,
    track: PhaseLog | None = None,
    optimizer_state: dict | None = None,
    eval_batch_size: int = 1000,
) -> PhaseResult:
    """Train ``model`` for ``phase.steps`` optimizer steps.

    ``pruner.after_step(step)`` runs after every optimizer step (its state is saved with the
    phase's). ``forward`` is the module called on batches (a compiled or DDP-wrapped ``model``);
    ``on_epoch_end(e, optimizer)`` runs after epoch ``e`` (and with ``e = 0`` before the first), e.g. to
    keep snapshots for weight rewinding. With ``state_path`` the phase saves its full state at
    every epoch end (and at the next step after a preemption signal) and, when a state of the
    same phase exists there, continues from it at that step. ``optimizer_state`` (a state_dict,
    e.g. an earlier phase's :attr:`PhaseResult.optimizer_state`) seeds the fresh optimizer's
    per-parameter state when the phase does not resume; the recipe's hyperparameters stay.
    ``eval_batch_size``: the batch of the evaluations inside the phase (memory only).
    ``track`` (rank 0): the run's loggers, which get the per-step losses and LRs and each
    epoch's loss, test accuracy (evaluated after the epochs it names), validation accuracy
    (when evaluated) and throughput; ``progress``: a bar on a terminal (without one, rank 0
    logs a line per epoch).

    ``train_cfg.select``: ``final`` (or null) returns the last epoch's model; ``best_val``
    evaluates the validation split after every epoch and, at the end, restores the weights of
    the epoch of best validation accuracy (the first of equals; kept as a CPU copy, saved with
    the state so that a resumed phase selects the same). With a validation split, ``final``
    evaluates it after the last epoch (and with the test set) for :attr:`PhaseResult.val_acc`.
    Raises :class:`DivergenceError` when the epoch's mean loss is not finite, and
    :class:`ConfigError` for ``best_val`` without a validation split.
    """
    select = _selection(train_cfg, data)
    has_val = bool(getattr(data, "n_val", 0))
    forward = model if forward is None else forward  # (a compiled module has no truth value)
    device = next(model.parameters()).device
    opt = make_optimizer(model, train_cfg)
    result = PhaseResult()
    step = 0
    # best_val: the best epoch so far, its accuracy and its weights (CPU)
    best: dict[str, Any] = {"acc": None, "epoch": None, "model": None}
    resumed = False
    if state_path is not None and Path(state_path).exists():
        state = _resume_state(Path(state_path), phase)
        if state is not None:
            try:
                model.load_state_dict(state["model"])
                opt.load_state_dict(state["optimizer"])
                if pruner is not None:
                    pruner.load_state_dict(state["masks"], source=state_path)
                set_rng_state(state["rng"])
                if select == "best_val" and state.get("best_model") is not None:
                    best = {
                        "acc": float(state["best_val_acc"]),
                        "epoch": int(state["best_epoch"]),
                        "model": state["best_model"],
                    }
            except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
                if isinstance(e, CorruptFileError):
                    raise
                first = (str(e).strip().splitlines() or [""])[0]
                raise CorruptFileError(
                    f"{state_path}: not a training state of this run ({type(e).__name__}: {first})"
                ) from e
            step = state["step"]
            resumed = True
            result = PhaseResult(
                state["images_seen"],
                state["wall_s"],
                state["lr_log"],
                train_loss=state.get("train_loss", math.nan),
                val_acc=state.get("val_acc"),
                momentum_log=list(state.get("momentum_log") or []),
            )
            log.info(
                "%s: resuming at step %d of %d (%s)", phase.name, step, phase.steps, state_path
            )
    if not resumed and optimizer_state is not None:
        _load_optimizer_state(opt, optimizer_state)
    if step == 0 and on_epoch_end is not None:
        on_epoch_end(0, opt)
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
                "masks": pruner.state_dict() if pruner is not None else None,
                "rng": rng_state(),
                "images_seen": result.images_seen,
                "wall_s": result.wall_s,
                "lr_log": result.lr_log,
                "momentum_log": result.momentum_log,
                "train_loss": result.train_loss,
                "val_acc": result.val_acc,
                "best_val_acc": best["acc"],
                "best_epoch": best["epoch"],
                "best_model": best["model"],
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
                if phase.momentum is not None:
                    momentum = phase.momentum(step / spe)
                    result.momentum_log.append(momentum)
                    for g in opt.param_groups:
                        g["momentum"] = momentum
                # the mean over the *global* batch, so that N ranks (whose gradients DDP averages)
                # compute exactly the gradient of one process, also when shards differ in size
                n_global = min(bs, data.n_train - i * bs)
                with autocast(device, train_cfg.precision):
                    ce = F.cross_entropy(forward(x), y, reduction="sum")
                loss = ce * (world_size / n_global)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                if pruner is not None:
                    pruner.after_step(step)
                loss_sum += ce.detach().float()
                step_ce[i] = ce.detach().float()
                counts.append(n_global)
                lrs.append(lr)
                seen += y.shape[0]
                shown.update(n_global, step)
                if step == phase.steps:
                    break
                # not at an epoch's last step: the epoch's end (validation, best model,
                # snapshot) comes first and stops there
                if i + 1 < spe and _preempted(step, world_size, device):
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
            acc = val_acc = None
            test_now = track is not None and track.evaluate_after(epoch + 1, last)
            if has_val and (select == "best_val" or last or test_now):
                val_acc = evaluate(model, data, eval_batch_size, train_cfg.precision, split="val")
                result.val_acc = val_acc
                if select == "best_val" and (best["acc"] is None or val_acc > best["acc"]):
                    best = {
                        "acc": val_acc,
                        "epoch": epoch + 1,
                        "model": _to_cpu(model.state_dict()),
                    }
            if test_now:
                acc = evaluate(model, data, eval_batch_size, train_cfg.precision)
            images_per_s = seen_global / max(epoch_s, 1e-9)
            if track is not None:
                # sent before the state is saved: a kill in between repeats the epoch, whose
                # steps the loggers then drop, and loses nothing
                epoch_metrics = {
                    "train_loss": mean_loss,
                    "test_acc": acc,
                    "val_acc": val_acc,
                    "lr": lr,
                    "images_per_s": images_per_s,
                    "seconds": epoch_s,
                }
                track.flush([*records, track.epoch(epoch + 1, step - 1, epoch_metrics)])
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, opt)
            save_state()
            shown.epoch_end(epoch + 1, step, mean_loss, acc, images_per_s)
            if not last and _preempted(step, world_size, device, every=1):
                PREEMPTION.honor()  # the state of this epoch's end is saved
    finally:
        PREEMPTION.training = False
        shown.close()
    if select == "best_val" and best["model"] is not None:
        model.load_state_dict(best["model"])
        result.val_acc, result.best_epoch = best["acc"], best["epoch"]
    result.optimizer_state = _to_cpu(opt.state_dict())
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


def write_lr_log(
    path: Path, lr_log: list[float], steps_per_epoch: int, momentum_log: list[float] | None = None
) -> None:
    """The per-step LR actually applied, as CSV ``step,epoch,lr`` (epoch is fractional), with a
    ``momentum`` column when the phase set the momentum per step; 17 significant digits, so the
    file holds the exact doubles."""
    if momentum_log:
        lines = ["step,epoch,lr,momentum"] + [
            f"{i},{i / steps_per_epoch:.6f},{lr:.17g},{m:.17g}"
            for i, (lr, m) in enumerate(zip(lr_log, momentum_log))
        ]
    else:
        lines = ["step,epoch,lr"] + [
            f"{i},{i / steps_per_epoch:.6f},{lr:.17g}" for i, lr in enumerate(lr_log)
        ]
    write_text(path, "\n".join(lines) + "\n")
