"""Structured L1 filter pruning (PFEC, Li et al. 2016): networks that are really smaller.

Whole output channels of convolutions are removed by the L1 norm of their filters, with one
ratio per *stage*; the convolution, its batch norm and the input channels of every consumer
are cut (not masked), so parameters, MACs and measured inference time all drop, and the
smaller network trains on like any other module.

What is prunable. A conv (``groups == 1``, not transposed) is prunable when removing its
output channels changes no other layer's *output*: its channel dependency group, traced by
Torch-Pruning's ``DependencyGraph``, holds no other conv or linear whose output channels would
have to go too. Residual additions tie every layer feeding them into one group, so in the CIFAR
ResNets only the first conv of each block (``layerX.Y.conv1``) qualifies, as in the paper; the
stem and every ``conv2`` (fixed by the option-A shortcuts) are left whole. In plain stacks
(CIFAR VGG) every conv qualifies, and a classifier fed by the last conv loses inputs with it.
A *stage* is a run of convs with the same output resolution, in forward order: the three
stages of a CIFAR ResNet are ``layer1``..``layer3`` (32×32, 16×16, 8×8), VGG has five.

A layer of ``n`` filters at ratio ``r`` keeps ``floor(n (1 − r))`` filters, those of largest
L1 norm, as in the reference re-implementation of Liu et al. (rethinking-network-pruning).

Why Torch-Pruning (PyPI ``torch-pruning``) and no surgery of our own: tried on the option-A
ResNets, its dependency graph traces through ``PadShortcut`` (an ``F.pad``) and gives for each
``conv1`` exactly the group conv1 → bn1 → conv2 (input channels); the shortcut-constrained
convs show up as coupled to other layers' outputs and are thereby excluded. The same code then
serves any traceable model (VGG, user models) without knowing its class. The graph is built by
one forward pass on a zero input of ``input_shape`` (eval mode; every train/eval flag restored).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping, Sequence

import torch
import torch_pruning as tp
from torch import nn

from prune_cli.config import ConfigError
from prune_cli.costs import count_flops, param_counts

_WEIGHT_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


# ----------------------------------------------------------------------------------------------
# Scores and the plan
# ----------------------------------------------------------------------------------------------


def filter_l1_scores(conv: nn.modules.conv._ConvNd) -> torch.Tensor:
    """L1 norm of each output channel's filter: a float tensor of ``conv.out_channels`` entries."""
    w = conv.weight.detach()
    return w.abs().flatten(1).sum(1).float()


def _example_input(model: nn.Module, input_shape: Sequence[int]) -> torch.Tensor:
    first = next(model.parameters())
    dtype = first.dtype if first.is_floating_point() else torch.float32
    return torch.zeros(1, *input_shape, device=first.device, dtype=dtype)


def _graph(model: nn.Module, input_shape: Sequence[int]) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model`` (train/eval flags left as they were)."""
    modes = {m: m.training for m in model.modules()}
    try:
        with torch.enable_grad():  # the graph is traced through autograd
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=_example_input(model, input_shape), verbose=False
            )
    finally:
        for m, training in modes.items():
            m.training = training


def _output_sizes(model: nn.Module, input_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """Spatial output size of every conv, by name, in forward order."""
    sizes: dict[str, tuple[int, ...]] = {}
    names = {m: n for n, m in model.named_modules()}

    def record(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        sizes.setdefault(
            names[module], tuple(output.shape[2:])
        )  # a returned value would replace the output

    hooks = [
        m.register_forward_hook(record)
        for m in model.modules()
        if isinstance(m, nn.modules.conv._ConvNd)
    ]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(_example_input(model, input_shape))
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.training = training
    return sizes


def _coupled(dg: tp.DependencyGraph, conv: nn.Module) -> list[nn.Module]:
    """The other conv/linear layers whose output channels go with ``conv``'s (empty when free)."""
    group = dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=[0])
    return [
        dep.target.module
        for dep, _ in group
        if dg.is_out_channel_pruning_fn(dep.handler)
        and isinstance(dep.target.module, _WEIGHT_LAYERS)
        and dep.target.module is not conv
    ]


def prunable_convs(model: nn.Module, input_shape: Sequence[int]) -> tuple[dict[str, int], int]:
    """The convs whose filters L1 filter pruning may remove, and the model's number of stages.

    The dict maps each such conv's name to its stage (0-based), in forward order; see the module
    docstring for the rule.
    """
    dg = _graph(model, input_shape)
    sizes = _output_sizes(model, input_shape)
    stage_of: dict[tuple[int, ...], int] = {}
    for size in sizes.values():
        stage_of.setdefault(size, len(stage_of))
    out: dict[str, int] = {}
    tied: set[nn.Module] = set()
    for name, size in sizes.items():
        conv = model.get_submodule(name)
        if conv in tied or conv.groups != 1 or getattr(conv, "transposed", False):
            continue
        coupled = _coupled(dg, conv)
        if coupled:  # one residual group: its members need not be traced again
            tied.update(coupled)
        else:
            out[name] = stage_of[size]
    return out, len(stage_of)


def plan_l1_filter(
    model: nn.Module,
    stage_ratios: Sequence[float],
    skip: Sequence[str],
    input_shape: Sequence[int],
) -> dict[str, torch.Tensor]:
    """Which output channels to remove: ``{conv name: sorted int64 indices}`` (lowest L1 first out).

    ``stage_ratios[k]`` is the fraction of filters removed in every prunable conv of stage ``k``
    (one ratio per stage of the model, each in [0, 1)); convs named in ``skip`` are kept whole.
    Only convs that lose at least one filter appear in the plan. The model is not changed.
    Raises :class:`ConfigError` (one line, naming the key) for a wrong number of ratios, a ratio
    outside [0, 1) or one that would empty a layer, and a ``skip`` entry that is no prunable conv.
    ``input_shape`` (one example, no batch dimension) is only used to trace the model.
    """
    ratios = [float(r) for r in stage_ratios]
    for r in ratios:
        if not 0.0 <= r < 1.0:
            raise ConfigError(f"pruning.stage_ratios: {r} is outside [0, 1)")
    convs, stages = prunable_convs(model, input_shape)
    if len(ratios) != stages:
        raise ConfigError(
            f"pruning.stage_ratios: {len(ratios)} ratios given, the model has {stages} stages"
            f" (output resolutions)"
        )
    unknown = [s for s in skip if s not in convs]
    if unknown:
        raise ConfigError(
            f"pruning.skip: {', '.join(unknown)} names no prunable conv"
            f" (prunable: {', '.join(list(convs)[:3])}, ...)"
        )
    plan: dict[str, torch.Tensor] = {}
    for name, stage in convs.items():
        ratio = ratios[stage]
        if name in skip or ratio == 0.0:
            continue
        conv = model.get_submodule(name)
        n = conv.out_channels
        keep = math.floor(n * (1.0 - ratio) + 1e-9)  # floor of the kept filters, as Liu et al.
        if keep < 1:
            raise ConfigError(
                f"pruning.stage_ratios: {ratio} removes all {n} filters of {name} (stage {stage + 1})"
            )
        if keep == n:
            continue
        order = torch.argsort(filter_l1_scores(conv).cpu(), stable=True)
        plan[name] = order[: n - keep].sort().values.to(torch.int64)
    return plan


# ----------------------------------------------------------------------------------------------
# Removal
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def apply_channel_removal(
    model: nn.Module, plan: Mapping[str, Sequence[int] | torch.Tensor], input_shape: Sequence[int]
) -> None:
    """Remove the planned output channels in place: the conv's filters, its BN entries and the
    matching input channels of its consumers; every other weight is kept as it was.

    The plan's indices refer to the layer's channels before this call, so one plan can be
    replayed on any model of the same (unpruned-at-these-layers) architecture, e.g. a dense
    snapshot for weight rewinding. Parameters are replaced by new, smaller ones: optimizers and
    masks built over the old ones must be rebuilt. ``plan`` maps conv names to lists (or 1-D
    integer tensors) of channel indices. ValueError if the plan is not that or does not fit the
    model.
    """
    if not isinstance(plan, Mapping):
        raise ValueError(
            f"a plan is a dict of conv name to channel indices, not {type(plan).__name__}"
        )
    for name, idxs in plan.items():
        if not isinstance(name, str) or not _indices(idxs):
            raise ValueError(f"plan entry {name!r}: not a conv name with a list of channel indices")
    dg = _graph(model, input_shape)
    names = dict(model.named_modules())
    channels_last = False
    for name, idxs in plan.items():
        conv = names.get(name)
        if not isinstance(conv, nn.modules.conv._ConvNd):
            raise ValueError(f"plan names {name!r}, which is no conv of the model")
        idx = [int(i) for i in idxs]
        if len(set(idx)) != len(idx) or not all(0 <= i < conv.out_channels for i in idx):
            raise ValueError(
                f"plan for {name}: indices do not fit its {conv.out_channels} channels"
            )
        if len(idx) >= conv.out_channels:
            raise ValueError(f"plan for {name}: would remove all {conv.out_channels} channels")
        if _coupled(dg, conv):
            raise ValueError(f"plan names {name}, whose channels are tied to other layers")
        channels_last |= conv.weight.is_contiguous(memory_format=torch.channels_last)
        dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=idx).prune()
    if channels_last:  # the new parameters are built contiguous; keep the model's layout
        model.to(memory_format=torch.channels_last)


def _indices(idxs: object) -> bool:
    """Whether ``idxs`` is a list/tuple of ints or a 1-D integer tensor."""
    if isinstance(idxs, torch.Tensor):
        return idxs.dim() == 1 and not idxs.is_floating_point() and idxs.dtype != torch.bool
    return isinstance(idxs, (list, tuple)) and all(
        isinstance(i, int) and not isinstance(i, bool) for i in idxs
    )


def _weight_sq(model: nn.Module) -> tuple[float, int]:
    """Sum of squares and count of all conv/linear weights."""
    ws = [m.weight.detach() for m in model.modules() if isinstance(m, _WEIGHT_LAYERS)]
    return float(sum(w.float().pow(2).sum() for w in ws)), sum(w.numel() for w in ws)


def structured_level(model: nn.Module, cfg_pruning: Mapping, input_shape: Sequence[int]) -> dict:
    """Plan and apply one level of L1 filter pruning to ``model`` (in place); return its statistics.

    ``cfg_pruning`` needs ``stage_ratios`` and ``skip`` (the ``pruning`` config node). Returns
    ``plan`` (``{conv name: [channel indices]}``, plain data: save it, ``apply_channel_removal``
    replays it), ``removed`` (channels per conv), ``params_before``/``params_after`` (all
    parameters), ``flops_before``/``flops_after`` (MACs of one example), and for the retraining
    schedules ``s`` (fraction of conv/linear weights removed)
    and ``d1 = ‖θ − θ_p‖₂ / (‖θ‖₂ √s)``, with ``density`` = remaining fraction of those weights.
    """
    plan = plan_l1_filter(
        model, list(cfg_pruning["stage_ratios"]), list(cfg_pruning["skip"]), input_shape
    )
    params_before = param_counts(model)["total_params"]
    flops_before = count_flops(model, input_shape)["total"]
    sq_before, n_before = _weight_sq(model)
    apply_channel_removal(model, plan, input_shape)
    sq_after, n_after = _weight_sq(model)
    s = 1.0 - n_after / n_before
    # pruning only deletes entries, so ‖θ − θ_p‖² is the squared norm of what was deleted
    d1 = math.sqrt(max(sq_before - sq_after, 0.0) / sq_before / s) if s > 0 else 0.0
    return {
        # plain data (saved beside the level's checkpoint, loaded with weights_only=True)
        "plan": {name: [int(i) for i in idx] for name, idx in plan.items()},
        "removed": {name: len(idx) for name, idx in plan.items()},
        "params_before": params_before,
        "params_after": param_counts(model)["total_params"],
        "flops_before": flops_before,
        "flops_after": count_flops(model, input_shape)["total"],
        "s": s,
        "d1": d1,
        "density": n_after / n_before,
    }


# ----------------------------------------------------------------------------------------------
# Measured speed
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def measure_inference(
    dense_model: nn.Module,
    pruned_model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int = 64,
    device: str | torch.device | None = None,
    warmup: int = 5,
    repeats: int = 20,
) -> dict:
    """Median wall time of one forward pass of a batch, dense vs pruned, in this process.

    Both models run in eval mode on ``device`` (default: where ``dense_model`` lives) on the same
    random batch; ``warmup`` untimed passes each, then ``repeats`` timed passes alternating
    between the two (so drift in clock or load hits both alike), synchronising CUDA around each.
    Returns ``dense_ms``, ``pruned_ms`` (medians), ``speedup`` = dense_ms / pruned_ms,
    ``batch_size``, ``repeats`` and ``device``. The models' devices and train flags are restored.
    """
    device = torch.device(device) if device is not None else next(dense_model.parameters()).device
    models = (dense_model, pruned_model)
    homes = [next(m.parameters()).device for m in models]
    modes = [{x: x.training for x in m.modules()} for m in models]
    x = torch.randn(batch_size, *input_shape, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: list[list[float]] = [[], []]
    try:
        for m in models:
            m.to(device).eval()
            for _ in range(warmup):
                m(x)
        for _ in range(repeats):
            for i, m in enumerate(models):
                sync()
                t0 = time.perf_counter()
                m(x)
                sync()
                times[i].append((time.perf_counter() - t0) * 1e3)
    finally:
        for m, home, mode in zip(models, homes, modes):
            m.to(home)
            for mod, training in mode.items():
                mod.training = training
    dense_ms, pruned_ms = (statistics.median(t) for t in times)
    return {
        "dense_ms": dense_ms,
        "pruned_ms": pruned_ms,
        "speedup": dense_ms / pruned_ms,
        "batch_size": batch_size,
        "repeats": repeats,
        "device": str(device),
    }
