"""Learning-rate schedules: the original training recipes and every retraining method.

Everything here is a pure function. A schedule is a function ``lr(x)`` of the fractional epoch
``x`` (``x = step / steps_per_epoch``) and is evaluated once per optimizer step.

Notation (Renda et al., Le & Hua, Zimmer et al.): ``T`` = length of the original training, ``eta`` = its schedule,
``t`` = retraining length of one level, ``s`` = fraction of the remaining weights pruned at
this level. A retraining method maps (eta, T, t, prune statistics) to a :class:`RetrainPlan`:
which weights to start from, the LR over ``[0, t)`` and, for CLR with cycled momentum, the
momentum over ``[0, t)``.

The textbook form of every method is the default. Each way in which the authors' code differs
from it (Le & Hua 2021: ``lehduong/NPTM``; Zimmer et al. 2023: ``ZIB-IOL/BIMP``) is a method
option (the fields of :class:`Context` after ``d1_all``, the keys of ``conf/method/*.yaml``), so
that a preset (``method=clr_lehua2021``) runs the authors' schedule step for step;
:mod:`prune_cli.authors` rebuilds those schedules with PyTorch's own scheduler classes, and the
tests hold the two to 1e-9.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields

Schedule = Callable[[float], float]


# ----------------------------------------------------------------------------------------------
# Original (dense) training schedules
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """An original schedule ``eta(x)`` that remembers how it was made: ``kind`` (``step``,
    ``constant``, ``linear``, ``cosine``), peak ``lr``, length ``epochs`` (linear, cosine), the
    step ``milestones`` and ``gamma``, and a linear warm-up from 0 over ``warmup_epochs``.
    SLR reads the milestones (Le & Hua's rounding) and the warm-up (Zimmer's replacement)."""

    kind: str
    lr: float
    epochs: float | None = None
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    warmup_epochs: float = 0.0

    def __call__(self, x: float) -> float:
        w = self.warmup_epochs
        if self.kind in ("step", "constant"):
            base = self.lr * self.gamma ** sum(1 for m in self.milestones if x >= m)
            return base * x / w if x < w and w > 0 else base
        if x < w and w > 0:
            return self.lr * x / w
        frac = (x - w) / (self.epochs - w)
        if self.kind == "linear":
            return self.lr * max(0.0, 1.0 - frac)
        return 0.5 * self.lr * (1.0 + math.cos(math.pi * min(1.0, frac)))


def step_schedule(
    lr: float, milestones: Sequence[float], gamma: float = 0.1, warmup_epochs: float = 0.0
) -> Recipe:
    """``lr`` multiplied by ``gamma`` at each milestone epoch; optional linear warm-up from 0."""
    ms = tuple(sorted(float(m) for m in milestones))
    return Recipe("step", lr, None, ms, gamma, warmup_epochs)


def constant_schedule(lr: float, warmup_epochs: float = 0.0) -> Recipe:
    """A constant ``lr`` (LeNet-300-100's recipe), optionally after a linear warm-up."""
    return Recipe("constant", lr, None, (), 1.0, warmup_epochs)


def linear_schedule(lr: float, epochs: float, warmup_epochs: float = 0.0) -> Recipe:
    """Linear decay from ``lr`` at the end of warm-up to 0 at ``epochs`` (BIMP's dense phase)."""
    return Recipe("linear", lr, epochs, (), 1.0, warmup_epochs)


def cosine_schedule(lr: float, epochs: float, warmup_epochs: float = 0.0) -> Recipe:
    """Cosine decay from ``lr`` to 0 over ``epochs``, after an optional linear warm-up."""
    return Recipe("cosine", lr, epochs, (), 1.0, warmup_epochs)


def original_schedule(
    kind: str,
    lr: float,
    epochs: float,
    milestones: Sequence[float] = (),
    gamma: float = 0.1,
    warmup_epochs: float = 0.0,
) -> Recipe:
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

CHOICES: dict[str, tuple[str, ...]] = {
    "warmup_shape": ("linear", "cosine"),
    "rounding": ("none", "step", "epoch"),
    "granularity": ("step", "epoch"),
    "clr_end": ("ratio", "last"),
    "clr_anneal": ("cosine", "linear"),
    "original_warmup": ("replay", "peak"),
    "d1_scope": ("prunable", "all"),
    # not read here: the runner's (optimizer state per level) and the config's (budget split)
    "optimizer_state": ("fresh", "keep", "rewind"),
    "budget_split": ("even", "whole"),
}
"""The allowed values of every string-valued method option (checked by ``config.validate``)."""


@dataclass(frozen=True)
class Context:
    """What a retraining method may look at.

    Measurements: ``eta`` is the original schedule (a :class:`Recipe` from the runner), ``T`` its
    length, ``t`` the retraining length of this level, ``eta_max``/``eta_last`` the original
    schedule's maximum and its value at the last optimizer step (for every recipe here also its
    minimum after warm-up, Zimmer's ``minLR``), ``s`` the fraction of remaining weights pruned at
    this level, ``d1`` the relative L2 change caused by this prune over the prunable weights
    (``‖θ − θ_p‖ / (‖θ‖ √s)``) and ``d1_all`` the same over every weight and bias of the model
    (BatchNorm affine included, as Zimmer et al.'s ``get_model_norm_square``).
    ``steps_per_epoch`` is needed by ``rounding=step`` and by ``endpoint`` per step.

    Options (``conf/method/*.yaml``, defaults = textbook; the authors' values in brackets):

    - ``warmup_fraction``: warm-up over this fraction of ``t`` (SLR, CLR, LLR, ALLR) [both 0.1].
    - ``warmup_shape``: ``linear`` or ``cosine`` (a half cosine wave, Zimmer's
      ``CosineAnnealingLR`` from 0, Le & Hua's ``_warmup_cos`` and ``OneCycleLR``) [cosine].
    - ``warmup_start``: where the warm-up starts, as a factor of its peak; ``None``: 0, and for
      CLR its own end LR (``eta_min``) [Le & Hua 0.01: ``init_lr`` 0.001 and ``max_lr /
      div_factor``; Zimmer 0].
    - ``rounding``: the warm-up length. ``none``: ``warmup_fraction · t`` epochs; ``step``:
      ``int(warmup_fraction · t · steps_per_epoch)`` whole steps, and SLR reads the original
      per-step LRs at whole steps ``int(j · T·spe / (t·spe − W))`` [Zimmer]; ``epoch``:
      ``int(warmup_fraction · t)`` whole epochs, and SLR puts a step recipe's milestone ``m`` at
      ``int(m / T · (1 − warmup_fraction) · t)`` epochs after the warm-up [Le & Hua's SLR].
    - ``granularity``: ``step`` (a new LR every optimizer step) or ``epoch`` (the LR of
      ``floor(x)``: stepped once per epoch) [Le & Hua's LRW and SLR: epoch].
    - ``endpoint``: the schedule's end is at the last optimizer step, ``t − 1 step``, and the
      warm-up's peak one step before ``warmup_fraction · t`` (torch ``OneCycleLR``: peak at step
      ``pct_start · N − 1``, end at step ``N − 1``); default: end at ``t``, never reached
      [Le & Hua's CLR: true].
    - ``eta_min_ratio``: CLR's end LR as a factor of ``eta_max`` when ``clr_end=ratio`` [Le &
      Hua's code 1e-4: ``max_lr / div_factor / final_div_factor``].
    - ``clr_peak``: CLR's peak LR as a factor of ``eta_max`` [both 1].
    - ``clr_end``: ``ratio`` (``eta_min_ratio · eta_max``) or ``last`` (``eta_last``, Zimmer's
      ``minLR``) [Zimmer: last].
    - ``clr_anneal``: CLR's decay, ``cosine`` or ``linear`` [both cosine].
    - ``cycle_momentum``, ``base_momentum``, ``max_momentum``: CLR moves the momentum inversely
      to the LR, from ``max_momentum`` down to ``base_momentum`` over the warm-up and back up
      over the decay, in the warm-up's and the decay's shapes [Le & Hua: true, 0.85, 0.95;
      ``OneCycleLR``'s defaults].
    - ``original_warmup``: what SLR makes of the original schedule's own warm-up: ``replay`` it
      compressed, or ``peak``: ``eta_max`` in its place [Zimmer: peak].
    - ``d1_scope``: ALLR's ``d1`` over the ``prunable`` weights (``d1``) or ``all`` weights and
      biases (``d1_all``) [Zimmer: all].
    """

    eta: Schedule
    T: float
    t: float
    eta_max: float
    eta_last: float
    s: float = 0.0
    d1: float = 0.0
    d1_all: float | None = None
    steps_per_epoch: int | None = None
    warmup_fraction: float = 0.0
    warmup_shape: str = "linear"
    warmup_start: float | None = None
    rounding: str = "none"
    granularity: str = "step"
    endpoint: bool = False
    eta_min_ratio: float = 0.001
    clr_peak: float = 1.0
    clr_end: str = "ratio"
    clr_anneal: str = "cosine"
    cycle_momentum: bool = False
    base_momentum: float = 0.85
    max_momentum: float = 0.95
    original_warmup: str = "replay"
    d1_scope: str = "prunable"


_FIELDS = [f.name for f in fields(Context)]
OPTIONS: tuple[str, ...] = tuple(_FIELDS[_FIELDS.index("warmup_fraction") :])
"""The method options of :class:`Context` (its fields after the measurements)."""


def options(method: Mapping) -> dict:
    """The :class:`Context` options a method config sets (``cfg.method``; keys it lacks keep
    their defaults): ``Context(eta=..., ..., **options(cfg.method))``."""
    return {k: method[k] for k in OPTIONS if k in method}


def level_context(
    method: Mapping,
    *,
    eta: Schedule,
    T: float,
    t: float,
    eta_max: float,
    eta_last: float,
    steps_per_epoch: int,
    stats: Mapping,
) -> Context:
    """The :class:`Context` of one level: the original schedule and its measurements, this
    level's ``t``, the prune statistics ``stats`` of the level (``s``, ``d1``, ``d1_all``) and the
    options of the ``method`` config node."""
    return Context(
        eta=eta,
        T=T,
        t=t,
        eta_max=eta_max,
        eta_last=eta_last,
        s=float(stats.get("s", 0.0)),
        d1=float(stats.get("d1", 0.0)),
        d1_all=stats.get("d1_all"),
        steps_per_epoch=steps_per_epoch,
        **options(method),
    )


@dataclass(frozen=True)
class RetrainPlan:
    """Start weights (``"final"`` = the previous level's, ``"rewind"`` = dense run at ``T - t``),
    the learning rate ``lr(x)`` for ``x`` in ``[0, t)`` and the momentum ``momentum(x)`` (``None``:
    the recipe's constant ``train.momentum``); ``params`` are logged with the level."""

    start: str
    lr: Schedule
    params: dict = field(default_factory=dict)
    momentum: Schedule | None = None


def _spe(c: Context) -> int:
    if not c.steps_per_epoch:
        raise ValueError(
            "steps_per_epoch: needed by method.rounding=step and method.endpoint (per step);"
            " the runner passes it in the Context"
        )
    return int(c.steps_per_epoch)


def _steps(c: Context) -> int:
    """Optimizer steps of the level, as the runner counts them."""
    return max(1, round(c.t * _spe(c)))


def warmup_epochs(c: Context) -> float:
    """The warm-up length in epochs under ``c.rounding`` (0: no warm-up)."""
    f = c.warmup_fraction
    if f <= 0.0:
        return 0.0
    if c.rounding == "step":
        return int(f * _steps(c)) / _spe(c)  # Zimmer: int(0.1 * n_total_iterations)
    if c.rounding == "epoch":
        return float(int(f * c.t))  # Le & Hua: int(pct_start * epochs)
    return f * c.t


def _shape(kind: str, start: float, end: float, p: float) -> float:
    """From ``start`` (``p = 0``) to ``end`` (``p = 1``): a line or a half cosine wave (the
    formula of ``OneCycleLR._annealing_cos`` and of Le & Hua's ``_warmup_cos``)."""
    if kind == "linear":
        return (end - start) * p + start
    return end + (start - end) / 2.0 * (math.cos(math.pi * p) + 1.0)


def _granular(c: Context, f: Schedule | None) -> Schedule | None:
    """``f`` stepped once per epoch (the value at ``floor(x)``) under ``granularity=epoch``."""
    if f is None or c.granularity != "epoch":
        return f
    return lambda x: f(math.floor(x))


Decay = Callable[[float, float], float]
"""The part after the warm-up: LR at time ``u`` after the peak, of a decay ``span`` long."""


def _restart(
    c: Context, peak: float, start: float, decay: Decay, cycle: bool = False
) -> tuple[Schedule, Schedule | None, float]:
    """Warm-up from ``start`` to ``peak`` (``c``'s length, shape, rounding, endpoint), then
    ``decay``; with ``cycle``, the momentum cycled inversely. Returns ``(lr, momentum, w)``, ``w``
    the epoch at which the peak is reached."""
    w, end = warmup_epochs(c), c.t
    if c.endpoint:
        unit = 1.0 if c.granularity == "epoch" else 1.0 / _spe(c)
        end -= unit
        w = max(0.0, w - unit)
    span = end - w if end > w else 1.0  # (a level of one step under endpoint: just the peak)

    def lr(x: float) -> float:
        if x < w:
            return _shape(c.warmup_shape, start, peak, x / w)
        return decay(x - w, span)

    momentum = None
    if cycle:
        lo, hi = c.base_momentum, c.max_momentum

        def momentum(x: float) -> float:
            if x < w:
                return _shape(c.warmup_shape, hi, lo, x / w)
            return _shape(c.clr_anneal, lo, hi, (x - w) / span)

    return _granular(c, lr), _granular(c, momentum), w


def _start(c: Context, peak: float, default: float = 0.0) -> float:
    return default if c.warmup_start is None else c.warmup_start * peak


def ft(c: Context) -> RetrainPlan:
    """Fine-tuning: final weights, constant ``eta_last``."""
    eta_last = c.eta_last
    return RetrainPlan("final", lambda x: eta_last, {"lr_start": eta_last})


def lrw(c: Context) -> RetrainPlan:
    """Learning-rate rewinding: final weights, the last ``t`` epochs of the original schedule."""
    eta, offset = c.eta, c.T - c.t
    lr = _granular(c, lambda x: eta(offset + x))
    return RetrainPlan("final", lr, {"lr_start": lr(0.0)})


def wr(c: Context) -> RetrainPlan:
    """Weight rewinding: dense weights of epoch ``T − t`` (masked), LR of the same epochs."""
    plan = lrw(c)
    return RetrainPlan("rewind", plan.lr, {**plan.params, "rewind_epoch": c.T - c.t})


def _slr_decay(c: Context, w: float) -> Decay:
    """SLR after its warm-up: the original schedule compressed into the rest of ``t``."""
    eta, rec = c.eta, c.eta if isinstance(c.eta, Recipe) else None
    w0 = rec.warmup_epochs if rec is not None else 0.0
    peak = c.original_warmup == "peak"

    def orig(y: float) -> float:
        return c.eta_max if peak and y < w0 else eta(y)

    if c.rounding == "step":  # Zimmer: sub-sample the logged per-step LRs at whole steps
        spe = _spe(c)
        width = round(c.T * spe) / (_steps(c) - round(w * spe))
        return lambda u, span: orig(int(round(u * spe) * width) / spe)
    if c.rounding != "epoch":
        return lambda u, span: orig(u * c.T / span)
    # Le & Hua: compressed into (1 - warmup_fraction) t, milestones rounded down to whole epochs
    fit = (1.0 - c.warmup_fraction) * c.t
    if rec is None or rec.kind not in ("step", "constant"):
        return lambda u, span: orig(u * c.T / fit)
    ms = [int(m / c.T * (1.0 - c.warmup_fraction) * c.t) for m in rec.milestones if m < c.T]

    def decay(u: float, span: float) -> float:
        base = rec.lr * rec.gamma ** sum(1 for m in ms if u >= m)
        y = u * c.T / fit
        if y < w0:
            return c.eta_max if peak else base * y / w0
        return base

    return decay


def slr(c: Context) -> RetrainPlan:
    """Scaled LR restarting: the whole original schedule compressed into ``t`` (after the
    warm-up, if any, into the rest of ``t``)."""
    w = warmup_epochs(c)
    lr, _, w = _restart(c, c.eta_max, _start(c, c.eta_max), _slr_decay(c, w))
    params = {"lr_start": lr(0.0), "warmup_fraction": c.warmup_fraction, "warmup_epochs": w}
    return RetrainPlan("final", lr, params)


def clr(c: Context) -> RetrainPlan:
    """Cyclic (1-cycle) LR restarting: warm-up from ``warmup_start · peak`` (default: from
    ``eta_min``) to ``peak = clr_peak · eta_max`` over the first ``warmup_fraction · t``, then
    ``clr_anneal`` down to ``eta_min`` (``eta_min_ratio · eta_max``, or ``eta_last``); the
    momentum cycled inversely if ``cycle_momentum``."""
    hi = c.clr_peak * c.eta_max
    lo = c.eta_min_ratio * c.eta_max if c.clr_end == "ratio" else c.eta_last
    anneal = c.clr_anneal

    def decay(u: float, span: float) -> float:
        return _shape(anneal, hi, lo, u / span)

    lr, momentum, w = _restart(c, hi, _start(c, hi, lo), decay, c.cycle_momentum)
    params = {
        "lr_start": lr(0.0),
        "warmup_fraction": c.warmup_fraction,
        "warmup_epochs": w,
        "eta_min": lo,
    }
    return RetrainPlan("final", lr, params, momentum)


def _linear_to_zero(peak: float) -> Decay:
    return lambda u, span: peak * (1.0 - u / span)


def llr(c: Context) -> RetrainPlan:
    """Linear LR restarting: linear from ``eta_max`` to 0 over ``t``."""
    hi = c.eta_max
    lr, _, w = _restart(c, hi, _start(c, hi), _linear_to_zero(hi))
    params = {
        "lr_start": lr(0.0),
        "lr_peak": hi,
        "warmup_fraction": c.warmup_fraction,
        "warmup_epochs": w,
    }
    return RetrainPlan("final", lr, params)


def allr_factor(d1: float, t: float, T: float) -> tuple[float, float, float]:
    """ALLR's ``(d, d1, d2)``: ``d = min(1, max(d1, d2))`` with ``d2 = t / T``."""
    d2 = t / T
    return min(1.0, max(d1, d2)), d1, d2


def allr(c: Context) -> RetrainPlan:
    """Adaptive linear LR restarting: linear from ``d · eta_max`` to 0 over ``t``; ``d1`` over
    the prunable weights or over all weights and biases (``d1_scope``)."""
    if c.d1_scope == "all":
        if c.d1_all is None:
            raise ValueError("method.d1_scope=all: the prune statistics lack d1_all")
        d1 = c.d1_all
    else:
        d1 = c.d1
    d, d1, d2 = allr_factor(d1, c.t, c.T)
    peak = d * c.eta_max
    lr, _, w = _restart(c, peak, _start(c, peak), _linear_to_zero(peak))
    params = {
        "lr_start": lr(0.0),
        "lr_peak": peak,
        "d": d,
        "d1": d1,
        "d2": d2,
        "warmup_fraction": c.warmup_fraction,
        "warmup_epochs": w,
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
        method_plan = METHODS[method]
    except KeyError:
        raise ValueError(
            f"method.name={method!r}: unknown retraining method; choose from {', '.join(METHODS)}"
        ) from None
    return method_plan(c)


def per_step(schedule: Schedule, steps: int, steps_per_epoch: int) -> list[float]:
    """``schedule`` evaluated at every optimizer step ``i`` (``x = i / steps_per_epoch``)."""
    return [schedule(i / steps_per_epoch) for i in range(steps)]
