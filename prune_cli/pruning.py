"""Unstructured pruning: criteria score weights, :class:`Masks` removes and re-applies.

Prunable = the weights of conv and linear layers; biases and norm layers never. Masks live
beside the model (never inside it), so a saved ``state_dict`` is a plain model state_dict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from prune_cli.config import ConfigError
from prune_cli.store import CorruptFileError

PRUNABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _excluded(name: str, exclude: Sequence[str]) -> bool:
    return any(name == e or name.startswith(e + ".") for e in exclude)


def prunable_parameters(model: nn.Module, exclude: Sequence[str] = ()) -> dict[str, nn.Parameter]:
    """Conv and linear weights by parameter name, minus modules named (or prefixed) in ``exclude``.

    Raises :class:`ConfigError` if an exclusion names no module of the model.
    """
    params: dict[str, nn.Parameter] = {}
    matched = set()
    for mod_name, module in model.named_modules():
        if not isinstance(module, PRUNABLE_TYPES) or module.weight is None:
            continue
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
    @torch.no_grad()
    def prune(
        self, fraction: float, criterion: str = "global_magnitude", generator=None
    ) -> dict[str, float]:
        """Remove ``fraction`` of the still-alive weights and zero them.

        ``global_magnitude`` ranks |w| over all tensors together; ``layerwise_magnitude``
        removes the same fraction inside each tensor; ``random`` removes, in each tensor, as many
        weights as global magnitude would, at random positions. Returns the prune statistics:
        ``s``, ``removed``, ``density`` and ``d1 = ‖θ − θ_p‖₂ / (‖θ‖₂ √s)``.
        """
        if not 0.0 < fraction < 1.0:
            raise ConfigError(f"pruning fraction {fraction}: must be in (0, 1)")
        before_norm = torch.sqrt(sum(p.float().pow(2).sum() for p in self._p))
        alive = {n: m.bool() for n, m in self.masks.items()}
        if criterion == "layerwise_magnitude":
            remove = {
                n: self._pick(self.params[n].abs(), a, round(fraction * int(a.sum())))
                for n, a in alive.items()
            }
        elif criterion in ("global_magnitude", "random"):
            remove = self._global_pick(fraction, alive)
            if criterion == "random":  # same count per tensor as magnitude, random positions
                remove = {
                    n: self._pick(
                        torch.rand(a.shape, generator=generator).to(a.device), a, int(r.sum())
                    )
                    for (n, a), r in zip(alive.items(), remove.values())
                }
        else:
            raise ConfigError(f"pruning.criterion={criterion}: unknown")
        removed_sq = sum(self.params[n].detach().float()[r].pow(2).sum() for n, r in remove.items())
        for n, r in remove.items():
            self.masks[n][r] = 0
        self.apply()
        d1 = float(torch.sqrt(removed_sq) / (before_norm * math.sqrt(fraction)))
        return {
            "s": fraction,
            "removed": int(sum(int(r.sum()) for r in remove.values())),
            "density": self.density(),
            "d1": d1,
        }

    @staticmethod
    def _pick(scores: torch.Tensor, alive: torch.Tensor, k: int) -> torch.Tensor:
        """Bool tensor marking the ``k`` alive entries with the smallest scores."""
        out = torch.zeros(alive.numel(), dtype=torch.bool, device=alive.device)
        if k > 0:
            out[_smallest(scores, alive, k)] = True
        return out.view(alive.shape)

    def _global_pick(self, fraction: float, alive: dict[str, torch.Tensor]) -> dict:
        """Per-tensor bool tensors of the weights global magnitude pruning of ``fraction`` removes."""
        names = list(self.params)
        flat = torch.cat([self.params[n].detach().abs().float().flatten() for n in names])
        live = torch.cat([alive[n].flatten() for n in names])
        picked = self._pick(flat, live, round(fraction * int(live.sum())))
        sizes = [self.params[n].numel() for n in names]
        return {n: c.view(self.params[n].shape) for n, c in zip(names, torch.split(picked, sizes))}

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
