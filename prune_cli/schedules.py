"""Learning-rate schedules: the original training recipes and every retraining method.

Everything here is a pure function. A schedule is a function ``lr(x)`` of the fractional epoch
``x`` (``x = step / steps_per_epoch``) and is evaluated once per optimizer step.

Notation of DESIGN.md: ``T`` = length of the original training, ``eta`` = its schedule,
``t`` = retraining length of one level, ``s`` = fraction of the remaining weights pruned at
this level. A retraining method maps (eta, T, t, prune statistics) to a :class:`RetrainPlan`:
which weights to start from and the LR over ``[0, t)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Schedule = Callable[[float], float]


# ----------------------------------------------------------------------------------------------
# Original (dense) training schedules
# ----------------------------------------------------------------------------------------------


def step_schedule(
    lr: float, milestones: Sequence[float], gamma: float = 0.1, warmup_epochs: float = 0.0
) -> Schedule:
    """``lr`` multiplied by ``gamma`` at each milestone epoch; optional linear warm-up from 0."""
    ms = sorted(float(m) for m in milestones)

    def eta(x: float) -> float:
        base = lr * gamma ** sum(1 for m in ms if x >= m)
        if x < warmup_epochs:
            return base * x / warmup_epochs
        return base

    return eta


def constant_schedule(lr: float, warmup_epochs: float = 0.0) -> Schedule:
    """A constant ``lr`` (LeNet-300-100's recipe), optionally after a linear warm-up."""
    return step_schedule(lr, (), 1.0, warmup_epochs)


def linear_schedule(lr: float, epochs: float, warmup_epochs: float = 0.0) -> Schedule:
    """Linear decay from ``lr`` at the end of warm-up to 0 at ``epochs`` (BIMP's dense phase)."""

    def eta(x: float) -> float:
        if x < warmup_epochs:
            return lr * x / warmup_epochs
        return lr * max(0.0, 1.0 - (x - warmup_epochs) / (epochs - warmup_epochs))

    return eta


def cosine_schedule(lr: float, epochs: float, warmup_epochs: float = 0.0) -> Schedule:
    """Cosine decay from ``lr`` to 0 over ``epochs``, after an optional linear warm-up."""

    def eta(x: float) -> float:
        if x < warmup_epochs:
            return lr * x / warmup_epochs
        frac = min(1.0, (x - warmup_epochs) / (epochs - warmup_epochs))
        return 0.5 * lr * (1.0 + math.cos(math.pi * frac))

    return eta


def original_schedule(
    kind: str,
    lr: float,
    epochs: float,
    milestones: Sequence[float] = (),
    gamma: float = 0.1,
    warmup_epochs: float = 0.0,
) -> Schedule:
    """The schedule of a training recipe, by name: ``step``, ``constant``, ``linear``, ``cosine``."""
    if kind == "step":
        return step_schedule(lr, milestones, gamma, warmup_epochs)
    if kind == "constant":
        return constant_schedule(lr, warmup_epochs)
    if kind == "linear":
        return linear_schedule(lr, epochs, warmup_epochs)
    if kind == "cosine":
        return cosine_schedule(lr, epochs, warmup_epochs)
    raise ValueError(f"train.schedule.kind={kind!r}: expected step, constant, linear or cosine")


# ----------------------------------------------------------------------------------------------
# Retraining methods
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """What a retraining method may look at.

    ``eta`` is the original schedule, ``T`` its length, ``t`` the retraining length of this
    level, ``eta_max``/``eta_last`` the original schedule's maximum and its value at the last
    optimizer step, ``s`` the fraction of remaining weights pruned at this level and ``d1`` the
    relative L2 change of the prunable weights caused by this prune (``‖θ − θ_p‖ / (‖θ‖ √s)``).
    """

    eta: Schedule
    T: float
    t: float
    eta_max: float
    eta_last: float
    s: float = 0.0
    d1: float = 0.0
    warmup_fraction: float = 0.0
    eta_min_ratio: float = 0.001


@dataclass(frozen=True)
class RetrainPlan:
    """Start weights (``"final"`` = the previous level's, ``"rewind"`` = dense run at ``T - t``)
    and the learning rate ``lr(x)`` for ``x`` in ``[0, t)``; ``params`` are logged with the level."""

    start: str
    lr: Schedule
    params: dict = field(default_factory=dict)


def with_warmup(
    schedule: Schedule, t: float, fraction: float, peak: float | None = None
) -> Schedule:
    """Linear warm-up from 0 to ``peak`` (default ``schedule(0)``) over the first ``fraction · t``
    epochs, then ``schedule`` compressed into the remaining ``(1 − fraction) · t`` epochs (as
    Zimmer et al.'s code does)."""
    if fraction <= 0.0:
        return schedule
    w = fraction * t
    peak = schedule(0.0) if peak is None else peak

    def lr(x: float) -> float:
        if x < w:
            return peak * x / w
        return schedule((x - w) * t / (t - w))

    return lr


def ft(c: Context) -> RetrainPlan:
    """Fine-tuning: final weights, constant ``eta_last``."""
    eta_last = c.eta_last
    return RetrainPlan("final", lambda x: eta_last, {"lr_start": eta_last})


def lrw(c: Context) -> RetrainPlan:
    """Learning-rate rewinding: final weights, the last ``t`` epochs of the original schedule."""
    eta, offset = c.eta, c.T - c.t
    return RetrainPlan("final", lambda x: eta(offset + x), {"lr_start": eta(offset)})


def wr(c: Context) -> RetrainPlan:
    """Weight rewinding: dense weights of epoch ``T − t`` (masked), LR of the same epochs."""
    plan = lrw(c)
    return RetrainPlan("rewind", plan.lr, {**plan.params, "rewind_epoch": c.T - c.t})


def slr(c: Context) -> RetrainPlan:
    """Scaled LR restarting: the whole original schedule compressed into ``t``."""
    eta, scale = c.eta, c.T / c.t
    lr = with_warmup(lambda x: eta(x * scale), c.t, c.warmup_fraction, c.eta_max)
    return RetrainPlan("final", lr, {"lr_start": lr(0.0), "warmup_fraction": c.warmup_fraction})


def clr(c: Context) -> RetrainPlan:
    """Cyclic (1-cycle) LR restarting: linear warm-up from ``eta_min`` to ``eta_max`` over the
    first ``warmup_fraction · t``, then cosine down to ``eta_min``; ``eta_min = ratio · eta_max``."""
    hi, lo, t = c.eta_max, c.eta_min_ratio * c.eta_max, c.t
    w = c.warmup_fraction * t

    def lr(x: float) -> float:
        if x < w:
            return lo + (hi - lo) * x / w
        return lo + 0.5 * (hi - lo) * (1.0 + math.cos(math.pi * (x - w) / (t - w)))

    return RetrainPlan(
        "final", lr, {"lr_start": lr(0.0), "warmup_fraction": c.warmup_fraction, "eta_min": lo}
    )


def llr(c: Context) -> RetrainPlan:
    """Linear LR restarting: linear from ``eta_max`` to 0 over ``t``."""
    hi, t = c.eta_max, c.t
    lr = with_warmup(lambda x: hi * (1.0 - x / t), t, c.warmup_fraction)
    params = {"lr_start": lr(0.0), "lr_peak": hi, "warmup_fraction": c.warmup_fraction}
    return RetrainPlan("final", lr, params)


def allr_factor(d1: float, t: float, T: float) -> tuple[float, float, float]:
    """ALLR's ``(d, d1, d2)``: ``d = min(1, max(d1, d2))`` with ``d2 = t / T``."""
    d2 = t / T
    return min(1.0, max(d1, d2)), d1, d2


def allr(c: Context) -> RetrainPlan:
    """Adaptive linear LR restarting: linear from ``d · eta_max`` to 0 over ``t``."""
    d, d1, d2 = allr_factor(c.d1, c.t, c.T)
    start, t = d * c.eta_max, c.t
    lr = with_warmup(lambda x: start * (1.0 - x / t), t, c.warmup_fraction)
    params = {
        "lr_start": lr(0.0),
        "lr_peak": start,
        "d": d,
        "d1": d1,
        "d2": d2,
        "warmup_fraction": c.warmup_fraction,
    }
    return RetrainPlan("final", lr, params)


METHODS: dict[str, Callable[[Context], RetrainPlan]] = {
    "ft": ft,
    "wr": wr,
    "lrw": lrw,
    "slr": slr,
    "clr": clr,
    "llr": llr,
    "allr": allr,
    "bimp": allr,  # budgeted IMP retrains with ALLR; the budget lives in the config
}
"""Every retraining method by its config name. A new method is one function here and one YAML."""


def plan(method: str, c: Context) -> RetrainPlan:
    """The retraining plan of ``method`` (a key of :data:`METHODS`)."""
    try:
        return METHODS[method](c)
    except KeyError:
        raise ValueError(
            f"method.name={method!r}: unknown retraining method; choose from {', '.join(METHODS)}"
        ) from None


def per_step(schedule: Schedule, steps: int, steps_per_epoch: int) -> list[float]:
    """``schedule`` evaluated at every optimizer step ``i`` (``x = i / steps_per_epoch``)."""
    return [schedule(i / steps_per_epoch) for i in range(steps)]
