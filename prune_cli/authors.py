"""The authors' retraining schedules, rebuilt with PyTorch's own scheduler classes.

Each function configures and steps ``torch.optim.lr_scheduler`` classes on a one-parameter SGD
optimizer exactly as the authors' training scripts do, and records the LR (and momentum) that
every optimizer step uses. It shares no code with :mod:`prune_cli.schedules`: it is the
independent reference that the presets ``conf/method/*_lehua2021.yaml`` and
``*_zimmer2023.yaml`` are tested against, and that ``prune-schedules --authors`` draws.

- Le & Hua 2021, ``lehduong/NPTM`` @ e1b8ec3, ``norm-pruning/cifar/*/main_finetune.py`` and
  ``cifar_finetune.py``, with their ``WarmupLR`` (``lehduong/torch-warmup-lr`` @ 2fd49a7).
  FT, LRW, SLR, CLR.
- Zimmer et al. 2023, ``ZIB-IOL/BIMP`` @ 7bad593, ``runners/baseRunner.py::
  define_retrain_schedule`` and ``utilities/lr_schedulers.py``. FT, LRW, SLR, CLR, LLR, ALLR.

Where the authors' code is written for one recipe (Le & Hua's LRW and SLR hard-code the CIFAR
recipe of 160 epochs, 0.1 ×0.1 at 80 and 120), its rule is applied to the recipe given; each
function's docstring says how. See ``/work/shared/reference/*/settings.md`` for the sources.
"""

from __future__ import annotations

import math
import warnings
from bisect import bisect_right
from collections.abc import Sequence

import torch
from torch.optim import lr_scheduler as sched

LEHUA_METHODS = ("ft", "lrw", "slr", "clr")
ZIMMER_METHODS = ("ft", "lrw", "slr", "clr", "llr", "allr", "bimp")
PAPERS = {"lehua2021": LEHUA_METHODS, "zimmer2023": ZIMMER_METHODS}


def _optimizer(lr: float, momentum: float) -> torch.optim.SGD:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr, momentum=momentum)


def _now(opt: torch.optim.Optimizer) -> tuple[float, float]:
    g = opt.param_groups[0]
    return float(g["lr"]), float(g["momentum"])


def _whole(t: float, what: str) -> int:
    if float(t) != int(t) or t < 1:
        raise ValueError(f"t={t:g}: {what} retrains whole epochs (an integer >= 1)")
    return int(t)


# ----------------------------------------------------------------------------------------------
# Le & Hua 2021
# ----------------------------------------------------------------------------------------------


class WarmupLR:
    """Le & Hua's ``torch_warmup_lr.WarmupLR`` (its LR logic, verbatim): ``num_warmup`` steps from
    ``init_lr`` to the wrapped scheduler's LR, then the wrapped scheduler."""

    def __init__(self, scheduler, init_lr=1e-3, num_warmup=1, warmup_strategy="linear"):
        self._scheduler = scheduler
        self._init_lr = init_lr
        self._num_warmup = num_warmup
        self._step_count = 0
        self._warmup_func = {
            "cos": self._warmup_cos,
            "linear": self._warmup_linear,
            "constant": self._warmup_const,
        }[warmup_strategy]
        for group in self._scheduler.optimizer.param_groups:
            group["warmup_max_lr"] = group["lr"]
            group["warmup_initial_lr"] = min(self._init_lr, group["lr"])

    def _warmup_cos(self, start, end, pct):
        cos_out = math.cos(math.pi * pct) + 1
        return end + (start - end) / 2.0 * cos_out

    def _warmup_const(self, start, end, pct):
        return start if pct < 0.9999 else end

    def _warmup_linear(self, start, end, pct):
        return (end - start) * pct + start

    def get_lr(self):
        lrs = []
        step_num = self._step_count
        if step_num <= self._num_warmup:
            for group in self._scheduler.optimizer.param_groups:
                computed_lr = self._warmup_func(
                    group["warmup_initial_lr"], group["warmup_max_lr"], step_num / self._num_warmup
                )
                lrs.append(computed_lr)
        else:
            lrs = self._scheduler.get_lr()
        return lrs

    def step(self, *args):
        if self._step_count <= self._num_warmup:
            values = self.get_lr()
            for param_group, lr in zip(self._scheduler.optimizer.param_groups, values):
                param_group["lr"] = lr
            self._step_count += 1
        else:
            self._scheduler.step(*args)


def lehua_schedule(
    method: str,
    t: int,
    steps_per_epoch: int,
    *,
    T: int,
    lr: float,
    milestones: Sequence[float],
    gamma: float = 0.1,
    pct_start: float = 0.1,
    div_factor: float = 100.0,
    final_div_factor: float = 100.0,
    init_lr: float = 0.001,
    momentum: float = 0.9,
) -> tuple[list[float], list[float] | None]:
    """Per-step LR (and, for CLR, momentum) of Le & Hua's ``main_finetune.py`` retraining ``t``
    epochs of ``steps_per_epoch`` steps after a dense step recipe of ``T`` epochs (``lr``, times
    ``gamma`` at each of ``milestones``). The momentum list is ``None`` where it stays constant.

    - ``ft`` (no flag): constant ``--lr`` = the recipe's last LR, no scheduler.
    - ``lrw`` (``--use_lr_rewind``): ``MultiStepLR`` at the recipe's milestones that fall in the
      last ``t`` epochs, shifted by ``T − t`` (theirs: ``[t − 80, t − 40]`` for T = 160), from
      the last LR ``× (1/gamma)^(their number)`` (theirs: ``args.lr *= 10**len(schedule)``);
      stepped once per epoch.
    - ``slr`` (``--use_llr``): ``MultiStepLR`` at ``int(m/T · 0.9 · t)`` (theirs:
      ``int(0.5*0.9*t)``, ``int(0.75*0.9*t)``), wrapped in ``WarmupLR(init_lr, num_warmup=
      int(pct_start · t), 'cos')``, one ``step()`` before training and one per epoch. Their
      ``WarmupLR`` divides by ``num_warmup``: for ``t < 10`` it fails, and so does this.
    - ``clr`` (``--use_onecycle``): ``OneCycleLR(max_lr=lr, div_factor, epochs=t,
      steps_per_epoch, pct_start, final_div_factor)`` with torch's defaults (``anneal_strategy=
      'cos'``, ``cycle_momentum=True``, momentum 0.85 .. 0.95), stepped once per iteration.
    """
    t = _whole(t, "Le & Hua's code")
    spe = steps_per_epoch
    ms = [float(m) for m in milestones if m < T]
    last = lr * gamma ** len(ms)  # the recipe's last LR: their --lr for FT and LRW
    lrs: list[float] = []
    moms: list[float] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's "step() before optimizer.step()" notices
        if method == "ft":
            return [last] * (t * spe), None
        if method == "lrw":
            schedule = [int(m - (T - t)) for m in ms if m > T - t]
            opt = _optimizer(last * (1.0 / gamma) ** len(schedule), momentum)
            scheduler = sched.MultiStepLR(opt, milestones=schedule, gamma=gamma)
            per_iteration = False
        elif method == "slr":
            num_warmup = int(pct_start * t)
            if num_warmup == 0:
                raise ValueError(
                    f"t={t}: Le & Hua's SLR needs t >= 10 epochs (their WarmupLR divides by"
                    f" num_warmup = int({pct_start:g} * t) = 0)"
                )
            schedule = [int(m / T * (1 - pct_start) * t) for m in ms]
            opt = _optimizer(lr, momentum)
            multistep = sched.MultiStepLR(opt, milestones=schedule, gamma=gamma)
            scheduler = WarmupLR(
                multistep, init_lr=init_lr, num_warmup=num_warmup, warmup_strategy="cos"
            )
            opt.step()
            scheduler.step()  # "set warm up learning rate"
            per_iteration = False
        elif method == "clr":
            opt = _optimizer(lr, momentum)
            scheduler = sched.OneCycleLR(
                opt,
                max_lr=lr,
                div_factor=div_factor,
                epochs=t,
                steps_per_epoch=spe,
                pct_start=pct_start,
                final_div_factor=final_div_factor,
            )
            per_iteration = True
        else:
            raise ValueError(f"method={method!r}: Le & Hua's code has {', '.join(LEHUA_METHODS)}")
        for _ in range(t):
            for _ in range(spe):
                now_lr, now_m = _now(opt)
                lrs.append(now_lr)
                moms.append(now_m)
                opt.step()
                if per_iteration:
                    scheduler.step()
            if not per_iteration:
                scheduler.step()
    return lrs, (moms if method == "clr" else None)


# ----------------------------------------------------------------------------------------------
# Zimmer et al. 2023
# ----------------------------------------------------------------------------------------------


class FixedLR(sched.LRScheduler):
    """Zimmer et al.'s ``FixedLR``: the LR of iteration ``k`` is ``lrList[k]``."""

    def __init__(self, optimizer, lrList, last_epoch=-1):
        self.lrList = lrList
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [self.lrList[self.last_epoch] for _ in self.optimizer.param_groups]


class SequentialSchedulers:
    """Zimmer et al.'s ``SequentialSchedulers`` as it ran under torch 1.10–1.12: torch 1.10's
    ``SequentialLR.__init__`` (it only stores its arguments; from torch 1.13 on it resets the LR
    and re-steps the first scheduler, which starts the second one a step late) and the authors'
    ``step()`` (no ``step(0)`` at the milestone)."""

    def __init__(self, optimizer, schedulers, milestones, last_epoch=-1):
        self.optimizer = optimizer
        self._schedulers = schedulers
        self._milestones = milestones
        self.last_epoch = last_epoch + 1

    def step(self):
        self.last_epoch += 1
        idx = bisect_right(self._milestones, self.last_epoch)
        self._schedulers[idx].step()


def zimmer_schedule(
    method: str,
    t: int,
    steps_per_epoch: int,
    *,
    original: Sequence[float],
    original_warmup_epochs: int = 0,
    d1: float = 0.0,
    momentum: float = 0.9,
) -> tuple[list[float], None]:
    """Per-step LR of Zimmer et al.'s ``define_retrain_schedule`` for a phase of ``t`` epochs of
    ``steps_per_epoch`` iterations. ``original`` is the dense run's per-iteration LR (their
    ``lr_dict``; its length / ``steps_per_epoch`` is their ``n_epochs`` = ALLR's T, BIMP's T0),
    ``original_warmup_epochs`` its warm-up (``n_epochs_warmup``), ``d1`` ALLR's
    ``relative_norm_drop / sqrt(pruning_sparsity)`` over all weights and biases. The momentum
    is the recipe's constant (``None``). ``bimp`` is ``allr`` (BIMP retrains with ALLR)."""
    t = _whole(t, "Zimmer et al.'s code")
    spe = steps_per_epoch
    if len(original) % spe:
        raise ValueError("original: one LR per iteration of whole epochs")
    n_epochs = len(original) // spe
    method = "allr" if method == "bimp" else method
    if method not in ZIMMER_METHODS:
        raise ValueError(f"method={method!r}: Zimmer et al.'s code has {', '.join(ZIMMER_METHODS)}")
    lr_dict = list(original)

    maxLR = max(lr_dict)
    after_warmup_index = (original_warmup_epochs or 0) * spe
    minLR = min(lr_dict[after_warmup_index:])
    n_total_iterations = spe * t
    n_warmup_iterations = 0 if method in ("ft", "lrw") else int(0.1 * n_total_iterations)
    if method == "ft":
        after_warmup_lr = minLR
    elif method == "lrw":
        after_warmup_lr = lr_dict[-n_total_iterations]
    elif method == "allr":
        minLRThreshold = min(float(t) / n_epochs, 1.0) * maxLR
        discounted_LR = float(d1) * maxLR
        after_warmup_lr = float(min(max(discounted_LR, minLRThreshold), maxLR))  # np.clip
    else:
        after_warmup_lr = maxLR

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = _optimizer(lr_dict[-1], momentum)  # their SGD(lr=last_training_lr)
        for group in opt.param_groups:
            group["lr"] = 0.0 if n_warmup_iterations > 0 else after_warmup_lr
        warmup_scheduler, milestone = None, None
        if n_warmup_iterations > 0:
            warmup_scheduler = sched.CosineAnnealingLR(
                opt, T_max=n_warmup_iterations, eta_min=after_warmup_lr
            )
            milestone = n_warmup_iterations + 1
        n_remaining_iterations = n_total_iterations - n_warmup_iterations
        if method == "ft":
            scheduler = sched.ConstantLR(opt, factor=1.0, total_iters=n_remaining_iterations)
        elif method == "lrw":
            iterationsLR = lr_dict[(-n_remaining_iterations):]
            iterationsLR.append(iterationsLR[-1])
            scheduler = FixedLR(optimizer=opt, lrList=iterationsLR)
        elif method == "slr":
            iterationsLR = [
                lr if it >= after_warmup_index else maxLR for it, lr in enumerate(lr_dict)
            ]
            interpolation_width = len(lr_dict) / n_remaining_iterations
            reducedLRs = [
                iterationsLR[int(j * interpolation_width)] for j in range(n_remaining_iterations)
            ]
            reducedLRs = reducedLRs + [reducedLRs[-1]]
            scheduler = sched.LambdaLR(opt, lr_lambda=lambda it: reducedLRs[it] / float(maxLR))
        elif method == "clr":
            scheduler = sched.CosineAnnealingLR(opt, T_max=n_remaining_iterations, eta_min=minLR)
        else:  # llr, allr
            scheduler = sched.LinearLR(
                opt, start_factor=1.0, end_factor=0.0, total_iters=n_remaining_iterations
            )
        scheduler.base_lrs = [after_warmup_lr for _ in opt.param_groups]
        if warmup_scheduler is not None:
            scheduler = SequentialSchedulers(
                optimizer=opt, schedulers=[warmup_scheduler, scheduler], milestones=[milestone]
            )
        lrs = []
        for _ in range(n_total_iterations):
            lrs.append(_now(opt)[0])
            opt.step()
            scheduler.step()
    return lrs, None


def authors_schedule(
    paper: str,
    method: str,
    t: int,
    steps_per_epoch: int,
    *,
    T: int,
    lr: float,
    milestones: Sequence[float],
    gamma: float,
    original: Sequence[float],
    original_warmup_epochs: int = 0,
    d1: float = 0.0,
) -> tuple[list[float], list[float] | None]:
    """``paper``'s schedule (``lehua2021`` or ``zimmer2023``) of ``method`` for one level of ``t``
    epochs after the dense recipe (step recipe ``T``, ``lr``, ``milestones``, ``gamma``; its
    per-step LRs ``original``)."""
    if paper == "lehua2021":
        return lehua_schedule(
            method, t, steps_per_epoch, T=T, lr=lr, milestones=milestones, gamma=gamma
        )
    if paper == "zimmer2023":
        return zimmer_schedule(
            method,
            t,
            steps_per_epoch,
            original=original,
            original_warmup_epochs=original_warmup_epochs,
            d1=d1,
        )
    raise ValueError(f"authors={paper!r}: expected {' or '.join(PAPERS)}")
