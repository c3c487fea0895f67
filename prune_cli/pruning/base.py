"""The pruning interface the runner calls, without knowing what kind of pruning it drives.

A *pruner* (chosen by ``pruning._target_``, like models and loaders) is attached to the run's
model once and then, for each level: ``prune`` removes weights and returns the level's
statistics; ``after_step`` runs after every optimizer step (masks re-apply; a gradual pruner may
prune there); ``state_dict``/``load_state_dict`` save and restore what has been removed (for
resume, export and weight rewinding); ``rewind`` loads a dense snapshot into the pruned network;
``flops`` counts the remaining multiply-accumulates. A *criterion* is a score function named by
``pruning.criterion._target_``: ``criterion(ctx) -> {name: scores}``, lowest score pruned first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prune_cli.errors import ConfigError

Batches = Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]
"""``batches(n)``: ``n`` training batches ``(x, y)`` on the model's device (for gradient-based
criteria); seeded, so that a resumed run scores on the same batches."""


@dataclass
class Network:
    """What a pruner is attached to: the run's model and how to build a fresh one."""

    model: nn.Module
    input_shape: list[int]
    make_model: Callable[[], nn.Module]
    exclude: list[str] = field(default_factory=list)
    batches: Batches | None = None


@dataclass
class ScoreContext:
    """What a criterion sees: ``targets`` (what to score: weight tensors by parameter name, or
    conv modules by module name), ``alive`` (for weights: which entries are still unpruned),
    the whole ``model``, a seeded ``generator`` and ``batches`` for gradient-based scores."""

    targets: Mapping[str, Any]
    model: nn.Module
    generator: torch.Generator
    alive: Mapping[str, torch.Tensor] = field(default_factory=dict)
    batches: Batches | None = None

    def need_batches(self, who: str) -> Batches:
        if self.batches is None:
            raise ConfigError(f"pruning.criterion: {who} needs training batches")
        return self.batches


def unwrap(fn: Callable) -> Callable:
    """The function under a criterion's ``functools.partial`` (its options bound)."""
    while hasattr(fn, "func"):
        fn = fn.func
    return fn


def criterion_name(fn: Callable) -> str:
    """A criterion's name: its function's (``functools.partial`` unwrapped)."""
    fn = unwrap(fn)
    return getattr(fn, "__name__", type(fn).__name__)


def norms_sq(model: nn.Module, names: list[str] | None = None) -> tuple[float, float]:
    """``(‖θ_prunable‖², ‖θ_all‖²)``: the squared norm of the named (prunable) parameters, and of
    every ``weight`` and ``bias`` of every module (conv, linear and batch-norm affine; not the
    running statistics), as Zimmer et al.'s code measures ‖θ‖ for ALLR."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        prunable = sum(float(params[n].float().pow(2).sum()) for n in (names or []))
        every = sum(
            float(p.float().pow(2).sum())
            for n, p in params.items()
            if n.rsplit(".", 1)[-1] in ("weight", "bias")
        )
    return prunable, every


def d1_stats(before: tuple[float, float], after: tuple[float, float], s: float) -> dict:
    """ALLR's relative change ``d1 = ‖θ − θ_p‖ / (‖θ‖ √s)`` of a prune, from the squared norms
    before and after it (exact: pruning only zeroes or deletes entries): ``d1`` over the
    prunable weights, ``d1_all`` over every weight and bias (Zimmer et al.'s code)."""
    if s <= 0:
        return {"d1": 0.0, "d1_all": 0.0}

    def d(b: float, a: float) -> float:
        return math.sqrt(abs(b - a)) / (math.sqrt(b) * math.sqrt(s)) if b > 0 else 0.0

    return {"d1": d(before[0], after[0]), "d1_all": d(before[1], after[1])}


class Pruner:
    """The protocol (and shared bookkeeping) of every pruner; see the module docstring.

    Subclasses set ``self.masks`` (a :class:`~prune_cli.pruning.masks.Masks` over the current
    model's prunable weights) in :meth:`attach`, so that counts and densities are read the same
    way whatever the kind of pruning.
    """

    name: str
    levels: int
    reshapes: bool = False
    """Whether pruning replaces parameters by smaller ones (channels cut out): then no optimizer
    state carries over a prune."""

    def __init__(self, name: str, criterion: Callable, levels: int = 1):
        if not callable(criterion):
            raise ConfigError(
                "pruning.criterion: not a function (give it _target_ and _partial_: true)"
            )
        if isinstance(levels, bool) or not float(levels).is_integer() or levels < 1:
            raise ConfigError(f"pruning.levels={levels}: must be a whole number >= 1")
        self.name = name
        self.criterion = criterion
        self.levels = int(levels)
        self.net: Network | None = None
        self.masks = None

    # --- what the runner calls -------------------------------------------------------------------
    def attach(self, net: Network) -> None:
        """Bind to the run's model (dense, or with earlier levels applied by load_state_dict)."""
        raise NotImplementedError

    def prune(self, level: int, generator: torch.Generator, steps: int = 0) -> dict:
        """Remove this level's weights; return its statistics (``s``, ``d1``, ``d1_all``,
        ``density``, ``removed`` and whatever else the kind measures). ``steps``: optimizer
        steps of the retraining that follows (a gradual pruner spreads its work over them)."""
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        """After each optimizer step of a retraining phase (``step`` = steps done so far)."""

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state: Any, source: object = None) -> None:
        raise NotImplementedError

    def rewind(self, dense_state: Mapping[str, torch.Tensor]) -> None:
        """Weight rewinding: load a dense snapshot into the pruned network (removed stays removed)."""
        raise NotImplementedError

    def flops(self, dense_flops: Mapping[str, int]) -> int:
        """Multiply-accumulates of one example through the pruned network."""
        raise NotImplementedError

    @property
    def criterion_label(self) -> str:
        """How results name the criterion (``global_magnitude``, ``l1_filter``, ...)."""
        return criterion_name(self.criterion)

    def check(self, net: Network) -> None:
        """Prevalidation: raise ConfigError (one line) if this pruner cannot prune ``net``'s
        model; nothing is changed."""
