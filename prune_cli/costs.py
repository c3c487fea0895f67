"""Cost figures of a (pruned) network: multiply-accumulates and parameter counts.

Conventions follow the pruning papers: only convolutions and linear layers are counted
(batch norm, activations, pooling and residual additions are negligible and excluded), and
the cost of a pruned layer is its dense cost scaled by its weight density (Zimmer et al.'s
theoretical speedup = dense MACs / remaining MACs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from prune_cli.layers import modes_kept
from prune_cli.layers import weight_layers as _weight_layers


def _lookup(table: Mapping[str, object], module_name: str) -> object | None:
    """The entry for a module, keyed either by the module name or by its ``<name>.weight``."""
    if module_name in table:
        return table[module_name]
    return table.get(f"{module_name}.weight")


def _macs(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    """Multiply-accumulates of one call of a conv or linear ``module`` (FlopCounterMode's
    formulas halved: a convolution is out elements × (in channels / groups × kernel area), a
    transposed one in elements × (out channels / groups × kernel area), a linear layer out
    elements × in features; biases are not counted)."""
    w = module.weight
    if isinstance(module, nn.Linear):
        return output.numel() * w.shape[1]
    per_element = math.prod(w.shape[1:])
    return (inputs[0] if module.transposed else output).numel() * per_element


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """Multiply-accumulates (MACs) of one forward pass of a single example.

    Returns one entry per conv/linear module whose weight is a parameter (key = qualified
    module name, e.g. ``layer1.0.conv1``) plus ``"total"``, their sum. ``input_shape`` excludes
    the batch dimension. Each layer's calls are counted by a forward hook with the formulas of
    ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs = 2 × MACs; tests/test_costs.py checks
    that both agree), which imports torch's compiler stack: seconds for a dry run or a refused
    command, which never build an optimizer (a training run imports it with its optimizer).
    Biases, batch norm, activations, pooling and additions are not counted. The forward runs
    on a zero tensor on the model's device, in eval mode under ``torch.no_grad``; every
    module's train/eval flag is restored afterwards. A module called k times counts k times.
    A ``torch.compile``d model is measured through its original module (same key names).
    """
    # the compiled wrapper would prefix every name with "_orig_mod."
    model = getattr(model, "_orig_mod", model)
    layers = _weight_layers(model)
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    per_module = dict.fromkeys(layers, 0)

    def counter(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            per_module[name] += _macs(module, inputs, output)

        return hook

    handles = [m.register_forward_hook(counter(name)) for name, m in layers.items()]
    try:
        with modes_kept(model, training=False), torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
    per_module["total"] = sum(per_module.values())
    return per_module


def remaining_flops(per_module: Mapping[str, int], densities: Mapping[str, float]) -> int:
    """MACs that the unpruned weights still need: sum over layers of MACs × weight density.

    ``per_module`` is the output of :func:`count_flops` (its ``"total"`` entry is ignored).
    ``densities`` maps a module name (or its ``<name>.weight`` parameter name) to the fraction
    of its weights that remain; layers absent from ``densities`` count as dense.
    """
    remaining = 0.0
    for name, macs in per_module.items():
        if name == "total":
            continue
        density = _lookup(densities, name)
        remaining += macs * (1.0 if density is None else float(density))
    return round(remaining)


def param_counts(
    model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None
) -> dict[str, int]:
    """Parameter counts of ``model``, with ``masks`` applied if given.

    Keys: ``total_params`` (every parameter), ``prunable_params`` (conv and linear weights),
    ``unpruned_params`` (``total_params`` minus the entries that a mask removes) and
    ``nonzero_params`` (nonzero entries over all parameters, each multiplied by its mask;
    this also misses values that are zero without pruning, such as freshly initialised batch
    norm biases, so compression ratios should use ``unpruned_params`` or the masks). ``masks``
    maps parameter names (``layer1.0.conv1.weight``) or, for weights, module names
    (``layer1.0.conv1``) to 0/1 tensors of the parameter's shape; unmasked parameters count whole.
    """
    masks = masks or {}
    prunable = {f"{name}.weight" for name in _weight_layers(model)}
    counts = dict.fromkeys(
        ("total_params", "prunable_params", "unpruned_params", "nonzero_params"), 0
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            mask = masks.get(name)
            if mask is None and name.endswith(".weight"):
                mask = masks.get(name.removesuffix(".weight"))
            counts["total_params"] += param.numel()
            if name in prunable:
                counts["prunable_params"] += param.numel()
            if mask is None:
                counts["unpruned_params"] += param.numel()
                counts["nonzero_params"] += int(torch.count_nonzero(param))
            else:
                mask = mask.to(param.device)
                counts["unpruned_params"] += int(torch.count_nonzero(mask.expand_as(param)))
                counts["nonzero_params"] += int(torch.count_nonzero(param * mask))
    return counts
