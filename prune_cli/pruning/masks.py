"""Unstructured pruning: :class:`MaskPruner` removes the lowest-scored weights, :class:`Masks`
keeps them removed.

Prunable = the weights of conv and linear layers; biases and norm layers never. Masks live
beside the model (never inside it), so a saved ``state_dict`` is a plain model state_dict.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from prune_cli.costs import remaining_flops
from prune_cli.errors import ConfigError, CorruptFileError
from prune_cli.layers import weight_layers
from prune_cli.pruning.base import Network, Pruner, ScoreContext, criterion_name, d1_stats, norms_sq


def _excluded(name: str, exclude: Sequence[str]) -> bool:
    return any(name == e or name.startswith(e + ".") for e in exclude)


def prunable_parameters(model: nn.Module, exclude: Sequence[str] = ()) -> dict[str, nn.Parameter]:
    """Conv and linear weights by parameter name, minus modules named (or prefixed) in ``exclude``.

    Raises :class:`ConfigError` if an exclusion names no module of the model.
    """
    params: dict[str, nn.Parameter] = {}
    matched = set()
    for mod_name, module in weight_layers(model).items():
        hits = [e for e in exclude if _excluded(mod_name, [e])]
        matched.update(hits)
        if not hits:
            params[f"{mod_name}.weight"] = module.weight
    unknown = [e for e in exclude if e not in matched]
    if unknown:
        raise ConfigError(
            f"model.prune_exclude: {', '.join(unknown)} names no conv or linear layer of the model"
        )
    if not params:
        raise ConfigError("model.prune_exclude: nothing left to prune")
    return params


def _smallest(scores: torch.Tensor, alive: torch.Tensor, k: int) -> torch.Tensor:
    """Flat indices of the ``k`` smallest scores among alive entries (exactly ``k``)."""
    s = torch.where(alive, scores.float(), torch.full_like(scores, math.inf, dtype=torch.float))
    return torch.topk(s.flatten(), k, largest=False, sorted=False).indices


class Masks:
    """Binary masks for the prunable weights of one model."""

    def __init__(self, params: dict[str, nn.Parameter]):
        """All-ones masks for ``params`` (name -> parameter), in the parameters' dtype so that
        re-applying them is one fused multiply."""
        self.params = params
        self.masks = {n: torch.ones_like(p, dtype=p.dtype) for n, p in params.items()}
        self._p = list(params.values())
        self.tensors = list(self.masks.values())

    # --- counts --------------------------------------------------------------------------------
    def alive(self) -> int:
        return int(sum(int(m.count_nonzero()) for m in self.tensors))

    def total(self) -> int:
        return sum(m.numel() for m in self.tensors)

    def density(self) -> float:
        return self.alive() / self.total()

    def layer_density(self) -> dict[str, float]:
        """Density of each masked tensor, keyed by its module name (``conv1``, ``fc``)."""
        return {
            n.rsplit(".", 1)[0]: int(m.count_nonzero()) / m.numel() for n, m in self.masks.items()
        }

    # --- the invariant ---------------------------------------------------------------------------
    @torch.no_grad()
    def apply(self) -> None:
        """Zero every pruned weight (one fused call over all masked tensors)."""
        torch._foreach_mul_(self._p, self.tensors)

    @torch.no_grad()
    def violations(self) -> int:
        """Number of pruned weights that are not exactly zero (0 when the invariant holds)."""
        return int(sum(int(((m == 0) & (p != 0)).sum()) for p, m in zip(self._p, self.tensors)))

    # --- removal ---------------------------------------------------------------------------------
    def alive_masks(self) -> dict[str, torch.Tensor]:
        """Which entries are still unpruned: bool tensors by parameter name."""
        return {n: m.bool() for n, m in self.masks.items()}

    @torch.no_grad()
    def remove(self, remove: dict[str, torch.Tensor]) -> int:
        """Prune the entries marked True in ``remove`` (bool tensors by name) and zero them;
        the number of entries removed."""
        for n, r in remove.items():
            self.masks[n][r] = 0
        self.apply()
        return int(sum(int(r.sum()) for r in remove.values()))

    # --- persistence ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Masks as CPU bool tensors, keyed by parameter name."""
        return {n: m.detach().bool().cpu() for n, m in self.masks.items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor], source: object = None) -> None:
        """Load masks saved by :meth:`state_dict`: exactly this model's names, bool tensors of
        the weights' shapes. Anything else is a :class:`CorruptFileError`, one line naming
        ``source`` (the file they came from) and the fault; nothing is changed then."""

        def bad(why: str) -> CorruptFileError:
            where = f"{source}: " if source is not None else ""
            return CorruptFileError(f"{where}not pruning masks of this model ({why})")

        if not isinstance(state, dict):
            raise bad(f"a {type(state).__name__}, not a dict of bool tensors")
        missing = [n for n in self.masks if n not in state]
        extra = [str(n) for n in state if n not in self.masks]
        if missing:
            raise bad(f"no mask for {', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}")
        if extra:
            raise bad(f"unknown names {', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''}")
        for n, m in self.masks.items():
            t = state[n]
            if not isinstance(t, torch.Tensor) or t.dtype != torch.bool:
                kind = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
                raise bad(f"{n} is {kind}, not a bool tensor")
            if t.shape != m.shape:
                raise bad(f"{n} has shape {list(t.shape)}, the weight {list(m.shape)}")
        for n, m in self.masks.items():
            m.copy_(state[n].to(m.device, m.dtype))


# ----------------------------------------------------------------------------------------------
# The unstructured pruner
# ----------------------------------------------------------------------------------------------


def pick(scores: torch.Tensor, alive: torch.Tensor, k: int) -> torch.Tensor:
    """Bool tensor marking the ``k`` alive entries with the smallest scores."""
    out = torch.zeros(alive.numel(), dtype=torch.bool, device=alive.device)
    if k > 0:
        out[_smallest(scores, alive, k)] = True
    return out.view(alive.shape)


def select(
    scores: dict[str, torch.Tensor], alive: dict[str, torch.Tensor], fraction: float, scope: str
) -> dict[str, torch.Tensor]:
    """The entries to remove: ``fraction`` of the alive ones with the lowest scores, ranked over
    all tensors together (``global``) or inside each tensor separately (``layerwise``)."""
    if scope == "layerwise":
        return {n: pick(scores[n], a, round(fraction * int(a.sum()))) for n, a in alive.items()}
    names = list(alive)
    flat = torch.cat([scores[n].detach().float().flatten() for n in names])
    live = torch.cat([alive[n].flatten() for n in names])
    picked = pick(flat, live, round(fraction * int(live.sum())))
    sizes = [alive[n].numel() for n in names]
    return {n: c.view(alive[n].shape) for n, c in zip(names, torch.split(picked, sizes))}


def fraction_per_level(
    rate: float | None, levels: int | None, target_sparsity: float | None
) -> tuple[int, float]:
    """``(L, s)`` from exactly two of rate / levels / target sparsity: the number of levels and
    the fraction of the remaining weights each prunes. One-shot pruning is one level."""
    given = [
        k
        for k, v in (("rate", rate), ("levels", levels), ("target_sparsity", target_sparsity))
        if v is not None
    ]
    if len(given) != 2:
        raise ConfigError(
            "pruning: give exactly two of pruning.rate, pruning.levels, pruning.target_sparsity"
            f" (given: {', '.join(given) or 'none'})"
        )
    if rate is not None and not 0 < rate < 1:
        raise ConfigError(f"pruning.rate={rate}: must be in (0, 1)")
    if levels is not None and (levels < 1 or not float(levels).is_integer()):
        raise ConfigError(f"pruning.levels={levels}: must be a whole number >= 1")
    if target_sparsity is not None and not 0 < target_sparsity < 1:
        raise ConfigError(f"pruning.target_sparsity={target_sparsity}: must be in (0, 1)")
    if rate is None:
        return int(levels), 1.0 - (1.0 - target_sparsity) ** (1.0 / levels)
    if levels is not None:
        return int(levels), float(rate)
    # the fewest levels of rate s whose density reaches 1 - S (tolerant to float rounding)
    n = math.log(1.0 - target_sparsity) / math.log(1.0 - rate)
    return max(1, math.ceil(n - 1e-9)), float(rate)


class MaskPruner(Pruner):
    """Unstructured pruning with masks: each level removes the fraction ``s`` of the remaining
    prunable weights that the criterion scores lowest, ranked over the whole network
    (``scope: global``) or in each layer (``scope: layerwise``). Give exactly two of ``rate``
    (= s), ``levels`` and ``target_sparsity``; one-shot pruning is ``levels: 1``."""

    def __init__(
        self,
        name: str,
        criterion: Callable,
        scope: str = "global",
        rate: float | None = None,
        levels: int | None = None,
        target_sparsity: float | None = None,
    ):
        n, s = fraction_per_level(rate, levels, target_sparsity)
        super().__init__(name, criterion, n)
        if scope not in ("global", "layerwise"):
            raise ConfigError(f"pruning.scope={scope}: expected global or layerwise")
        self.scope = scope
        self.fraction = s
        self.target_sparsity = target_sparsity
        if rate is None:
            self.plan = f"pruning.levels={levels} to pruning.target_sparsity={target_sparsity}"
        elif levels is None:
            self.plan = (
                f"pruning.rate={rate} to pruning.target_sparsity={target_sparsity} ({n} levels)"
            )
        else:
            self.plan = f"pruning.levels={levels} of pruning.rate={rate}"

    @property
    def criterion_label(self) -> str:
        return f"{self.scope}_{criterion_name(self.criterion)}"

    def attach(self, net: Network) -> None:
        self.net = net
        self.masks = Masks(prunable_parameters(net.model, net.exclude))

    def check(self, net: Network) -> None:
        """At least one weight is left: of the network (global), of its smallest layer
        (layerwise: every layer is pruned alike)."""
        params = prunable_parameters(net.model, net.exclude)
        density = (1.0 - self.fraction) ** self.levels
        plan = self.plan
        if self.scope == "layerwise":
            name, w = min(params.items(), key=lambda kv: kv[1].numel())
            if density * w.numel() < 1:
                raise ConfigError(
                    f"{plan}: density {density:.3g} leaves less than one weight of layer"
                    f" {name.removesuffix('.weight')} ({w.numel()} weights; layerwise pruning"
                    " prunes every layer alike)"
                )
        total = sum(p.numel() for p in params.values())
        if density * total < 1:
            raise ConfigError(
                f"{plan}: density {density:.3g} leaves less than one of the {total} prunable"
                " weights of the model"
            )

    @torch.no_grad()
    def scores(
        self, generator: torch.Generator, alive: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The criterion's scores of every prunable weight (``alive``: the unpruned entries)."""
        ctx = ScoreContext(
            targets=self.masks.params,
            model=self.net.model,
            generator=generator,
            alive=alive,
            batches=self.net.batches,
        )
        with torch.enable_grad():  # a gradient-based criterion computes its own gradients
            out = self.criterion(ctx)
        missing = [n for n in self.masks.params if n not in out]
        if missing:
            raise ConfigError(
                f"pruning.criterion: {self.criterion_label} gave no scores for {missing[0]}"
            )
        for n, p in self.masks.params.items():
            if tuple(out[n].shape) != tuple(p.shape):
                raise ConfigError(
                    f"pruning.criterion: {self.criterion_label} scored {n} with shape"
                    f" {list(out[n].shape)}, the weight has {list(p.shape)}"
                )
        return out

    @torch.no_grad()
    def prune(self, level: int, generator: torch.Generator, steps: int = 0) -> dict:
        names = list(self.masks.params)
        before = norms_sq(self.net.model, names)
        alive = self.masks.alive_masks()
        remove = select(self.scores(generator, alive), alive, self.fraction, self.scope)
        removed = self.masks.remove(remove)
        after = norms_sq(self.net.model, names)
        return {
            "s": self.fraction,
            "removed": removed,
            "density": self.masks.density(),
            **d1_stats(before, after, self.fraction),
        }

    def after_step(self, step: int) -> None:
        self.masks.apply()

    def state_dict(self) -> dict:
        return {"masks": self.masks.state_dict()}

    def load_state_dict(self, state: Any, source: object = None) -> None:
        if not isinstance(state, dict) or "masks" not in state:
            where = f"{source}: " if source is not None else ""
            raise CorruptFileError(f"{where}not the pruning state of this run (no masks)")
        self.masks.load_state_dict(state["masks"], source=source)
        self.masks.apply()

    @torch.no_grad()
    def rewind(self, dense_state: Mapping[str, torch.Tensor]) -> None:
        self.net.model.load_state_dict(dense_state)
        self.masks.apply()

    def flops(self, dense_flops: Mapping[str, int]) -> int:
        return remaining_flops(dense_flops, self.masks.layer_density())
