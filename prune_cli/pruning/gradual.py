"""Gradual magnitude pruning (GMP, Zhu & Gupta 2017): the sparsity rises along a cubic schedule
during one training phase, the pruning-stable baseline of Zimmer et al. 2023's comparison.

It is a mask pruner whose work happens in :meth:`after_step` (the training loop's callback), not
a copy of the loop: the level's retraining phase of ``n`` steps prunes at steps
``start·n, start·n + every, ..., end·n`` to

    s(k) = s_f + (s_i − s_f) · (1 − (k − k_0) / (k_1 − k_0))³

of the prunable weights (lowest scores first, among those still alive: removed weights never
come back), and keeps the masks applied after every step. The sparsity of a step is a function
of the step alone, so a phase resumed after a kill prunes exactly as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from prune_cli.errors import ConfigError
from prune_cli.pruning.masks import MaskPruner, select


class GradualMaskPruner(MaskPruner):
    """GMP over one level: ``target_sparsity`` reached at ``end`` (a fraction of the phase),
    starting from ``initial_sparsity`` at ``start``, pruning every ``every`` optimizer steps."""

    def __init__(
        self,
        name: str,
        criterion: Callable,
        target_sparsity: float,
        initial_sparsity: float = 0.0,
        start: float = 0.0,
        end: float = 0.75,
        every: int = 100,
        scope: str = "global",
    ):
        super().__init__(
            name, criterion, scope, rate=None, levels=1, target_sparsity=target_sparsity
        )
        if not 0.0 <= initial_sparsity < target_sparsity:
            raise ConfigError(
                f"pruning.initial_sparsity={initial_sparsity}: must be in [0, target_sparsity)"
            )
        if not 0.0 <= start < end <= 1.0:
            raise ConfigError(
                f"pruning.start={start}, pruning.end={end}: need 0 <= start < end <= 1"
            )
        if every < 1:
            raise ConfigError(f"pruning.every={every}: must be >= 1")
        self.initial, self.start, self.end, self.every = initial_sparsity, start, end, int(every)
        self.first = self.last = 0
        self.plan = f"pruning.target_sparsity={target_sparsity}"

    def sparsity_at(self, step: int) -> float:
        """The scheduled sparsity after optimizer step ``step`` of the phase."""
        if step < self.first:
            return 0.0
        if step >= self.last:
            return float(self.target_sparsity)
        frac = (step - self.first) / (self.last - self.first)
        s_i, s_f = self.initial, float(self.target_sparsity)
        return s_f + (s_i - s_f) * (1.0 - frac) ** 3

    def _prune_to(self, sparsity: float, generator: torch.Generator) -> int:
        alive = self.masks.alive()
        keep = round((1.0 - sparsity) * self.masks.total())
        if keep >= alive:
            return 0
        fraction = (alive - keep) / alive
        masks = self.masks.alive_masks()
        remove = select(self.scores(generator, masks), masks, fraction, self.scope)
        return self.masks.remove(remove)

    @torch.no_grad()
    def prune(self, level: int, generator: torch.Generator, steps: int = 0) -> dict:
        """Plan the phase's schedule; prune to the initial sparsity if the ramp starts at once."""
        steps = max(int(steps), 1)
        self.first = round(self.start * steps)
        self.last = max(self.first + 1, round(self.end * steps))
        self.seed = int(torch.randint(2**62, (1,), generator=generator))
        removed = self._prune_to(self.initial, generator) if self.first == 0 else 0
        return {
            "s": self.initial,
            "removed": removed,
            "density": self.masks.density(),
            "d1": 0.0,
            "d1_all": 0.0,
            "gradual": {"first_step": self.first, "last_step": self.last, "every": self.every},
        }

    def after_step(self, step: int) -> None:
        if self.first <= step <= self.last and (
            (step - self.first) % self.every == 0 or step == self.last
        ):
            gen = torch.Generator().manual_seed(self.seed + step)
            with torch.no_grad():
                self._prune_to(self.sparsity_at(step), gen)
        self.masks.apply()
