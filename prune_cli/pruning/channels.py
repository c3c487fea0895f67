"""Structured filter pruning (PFEC, Li et al. 2016, and any filter criterion): networks that are
really smaller.

Whole output channels of convolutions are removed by a filter criterion (the L1 norm of their
filters for PFEC; random or Taylor-FO-BN scores alike), with one ratio per *stage*; the convolution, its batch norm and the input channels of every consumer
are cut (not masked), so parameters, MACs and measured inference time all drop, and the
smaller network trains on like any other module.

What is prunable. A conv (``groups == 1``, not transposed) is prunable when removing its
output channels changes no other layer's *output*: its channel dependency group, traced by
Torch-Pruning's ``DependencyGraph``, holds no other conv or linear whose output channels would
have to go too. Residual additions tie every layer feeding them into one group, so in the CIFAR
ResNets only the first conv of each block (``layerX.Y.conv1``) qualifies, as in the paper; the
stem and every ``conv2`` (fixed by the option-A shortcuts) are left whole. In plain stacks
(CIFAR VGG) every conv qualifies, and a classifier fed by the last conv loses inputs with it.
A *stage* is a run of prunable convs with the same output resolution, in forward order: the
three stages of a CIFAR ResNet are ``layer1``..``layer3`` (32×32, 16×16, 8×8), the four of a
torchvision ResNet ``layer1``..``layer4`` (56×56 .. 7×7 at 224 pixels; the stem is tied to
``layer1``'s residual additions and not prunable), VGG has five.

A layer of ``n`` filters at ratio ``r`` keeps ``floor(n (1 − r))`` filters, those of largest
score, as in the reference re-implementation of Liu et al. (rethinking-network-pruning).

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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from prune_cli.costs import count_flops, param_counts
from prune_cli.errors import ConfigError, CorruptFileError
from prune_cli.layers import WEIGHT_LAYERS, modes_kept
from prune_cli.pruning.base import Network, Pruner, ScoreContext, d1_stats, norms_sq, unwrap
from prune_cli.pruning.masks import Masks, prunable_parameters

# ----------------------------------------------------------------------------------------------
# Scores and the plan
# ----------------------------------------------------------------------------------------------


def _example_input(model: nn.Module, input_shape: Sequence[int]) -> torch.Tensor:
    first = next(model.parameters())
    dtype = first.dtype if first.is_floating_point() else torch.float32
    return torch.zeros(1, *input_shape, device=first.device, dtype=dtype)


def _graph(model: nn.Module, input_shape: Sequence[int]) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model`` (train/eval flags left as they were)."""
    with modes_kept(model), torch.enable_grad():  # the graph is traced through autograd
        return tp.DependencyGraph().build_dependency(
            model, example_inputs=_example_input(model, input_shape), verbose=False
        )


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
    try:
        with modes_kept(model, training=False), torch.no_grad():
            model(_example_input(model, input_shape))
    finally:
        for h in hooks:
            h.remove()
    return sizes


def _coupled(dg: tp.DependencyGraph, conv: nn.Module) -> list[nn.Module]:
    """The other conv/linear layers whose output channels go with ``conv``'s (empty when free)."""
    group = dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=[0])
    return [
        dep.target.module
        for dep, _ in group
        if dg.is_out_channel_pruning_fn(dep.handler)
        and isinstance(dep.target.module, WEIGHT_LAYERS)
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
    out: dict[str, int] = {}
    tied: set[nn.Module] = set()
    for name, size in sizes.items():
        conv = model.get_submodule(name)
        if conv in tied or conv.groups != 1 or getattr(conv, "transposed", False):
            continue
        coupled = _coupled(dg, conv)
        if coupled:  # one residual group: its members need not be traced again
            tied.update(coupled)
        else:  # stages are counted over prunable convs (an ImageNet stem's resolution is none)
            out[name] = stage_of.setdefault(size, len(stage_of))
    return out, len(stage_of)


def plan_filters(
    model: nn.Module,
    scores: Callable[[Mapping[str, nn.Module]], Mapping[str, torch.Tensor]],
    stage_ratios: Sequence[float],
    skip: Sequence[str],
    input_shape: Sequence[int],
    layer_ratios: Mapping[str, float] | None = None,
) -> dict[str, torch.Tensor]:
    """Which output channels to remove: ``{conv name: sorted int64 indices}`` (lowest score first out).

    ``scores(convs)`` gives one score per output channel of each prunable conv (a criterion
    bound to its context). ``stage_ratios[k]`` is the fraction of filters removed in every
    prunable conv of stage ``k`` (one ratio per stage of the model, each in [0, 1)); convs named
    in ``skip`` are kept whole. Only convs that lose at least one filter appear in the plan. The
    model is not changed. Raises :class:`ConfigError` (one line, naming the key) for a wrong
    number of ratios, a ratio outside [0, 1) or one that would empty a layer, and a ``skip``
    entry that is no prunable conv. ``input_shape`` (one example, no batch dimension) is only
    used to trace the model.
    """
    counts = filter_counts(model, stage_ratios, skip, input_shape, layer_ratios)
    convs = {name: model.get_submodule(name) for name in counts}
    scored = scores(convs) if convs else {}
    plan: dict[str, torch.Tensor] = {}
    for name, k in counts.items():
        score = scored.get(name)
        n = convs[name].out_channels
        if score is None or tuple(score.shape) != (n,):
            got = "nothing" if score is None else f"shape {list(score.shape)}"
            raise ConfigError(f"pruning.criterion: gave {got} for {name}, which has {n} filters")
        order = torch.argsort(score.detach().float().cpu(), stable=True)
        plan[name] = order[:k].sort().values.to(torch.int64)
    return plan


def filter_counts(
    model: nn.Module,
    stage_ratios: Sequence[float],
    skip: Sequence[str],
    input_shape: Sequence[int],
    layer_ratios: Mapping[str, float] | None = None,
) -> dict[str, int]:
    """How many filters each prunable conv loses: ``n − floor(n (1 − r))`` at its stage's ratio
    ``r``, or at its own ratio in ``layer_ratios`` (convs that lose none are left out). Errors
    as :func:`plan_filters`."""
    layer_ratios = dict(layer_ratios or {})
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
    for key, names in (("skip", skip), ("layer_ratios", list(layer_ratios))):
        unknown = [s for s in names if s not in convs]
        if unknown:
            raise ConfigError(
                f"pruning.{key}: {', '.join(unknown)} names no prunable conv"
                f" (prunable: {', '.join(list(convs)[:3])}, ...)"
            )
    for name, r in layer_ratios.items():
        if not 0.0 <= float(r) < 1.0:
            raise ConfigError(f"pruning.layer_ratios.{name}: {r} is outside [0, 1)")
    counts: dict[str, int] = {}
    for name, stage in convs.items():
        ratio = float(layer_ratios.get(name, ratios[stage]))
        if name in skip or ratio == 0.0:
            continue
        n = model.get_submodule(name).out_channels
        keep = math.floor(n * (1.0 - ratio) + 1e-9)  # floor of the kept filters, as Liu et al.
        if keep < 1:
            raise ConfigError(
                f"pruning.stage_ratios: {ratio} removes all {n} filters of {name} (stage {stage + 1})"
            )
        if keep < n:
            counts[name] = n - keep
    return counts


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


def _weight_count(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, WEIGHT_LAYERS))


def _conv_weight_names(model: nn.Module) -> list[str]:
    return [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)]


class ChannelPruner(Pruner):
    """Structured pruning: each level removes whole filters of the prunable convs at one ratio
    per stage (``stage_ratios``; ``layer_ratios``: a conv's own ratio instead of its stage's;
    ``skip`` = conv names kept whole), those the filter criterion
    scores lowest, and cuts them out of the network (see the module docstring). ``levels`` > 1
    repeats the ratios on what the previous levels left (iterative PFEC).

    Its state is the list of channel plans of the levels so far (plain data, replayed in order on
    a fresh model); masks are all ones over the smaller weights (nothing is masked)."""

    reshapes = True

    def __init__(
        self,
        name: str,
        criterion: Callable,
        stage_ratios: Sequence[float],
        skip: Sequence[str] = (),
        levels: int = 1,
        measure_inference: bool = True,
        layer_ratios: Mapping[str, float] | None = None,
    ):
        super().__init__(name, criterion, levels)
        if self.levels < 1:
            raise ConfigError(f"pruning.levels={levels}: must be >= 1")
        if not stage_ratios:
            raise ConfigError("pruning.stage_ratios: give one ratio per stage")
        for r in stage_ratios:
            if not 0 <= float(r) < 1:
                raise ConfigError(f"pruning.stage_ratios: {r} is outside [0, 1)")
        self.stage_ratios = [float(r) for r in stage_ratios]
        self.skip = list(skip)
        self.layer_ratios = {str(k): float(v) for k, v in (layer_ratios or {}).items()}
        self.plans: list[dict[str, list[int]]] = []
        self.measure = measure_inference

    def attach(self, net: Network) -> None:
        self.net = net
        self.plans = []
        self._remask()

    def _remask(self) -> None:
        self.masks = Masks(prunable_parameters(self.net.model, self.net.exclude))

    def check(self, net: Network) -> None:
        counts = filter_counts(
            net.model, self.stage_ratios, self.skip, net.input_shape, self.layer_ratios
        )
        check = getattr(unwrap(self.criterion), "check", None)
        if check is not None:  # what the criterion needs of the model (taylor_fo_bn: a BN)
            check(net.model, {n: net.model.get_submodule(n) for n in counts}, net.input_shape)

    def _scores(self, generator: torch.Generator):
        def scores(convs: Mapping[str, nn.Module]) -> Mapping[str, torch.Tensor]:
            ctx = ScoreContext(
                targets=convs, model=self.net.model, generator=generator, batches=self.net.batches
            )
            with torch.enable_grad():
                return self.criterion(ctx)

        return scores

    def prune(self, level: int, generator: torch.Generator, steps: int = 0) -> dict:
        model, shape = self.net.model, self.net.input_shape
        plan = plan_filters(
            model, self._scores(generator), self.stage_ratios, self.skip, shape, self.layer_ratios
        )
        params_before = param_counts(model)["total_params"]
        flops_before = count_flops(model, shape)["total"]
        n_before = _weight_count(model)
        before = norms_sq(model, _conv_weight_names(model))
        apply_channel_removal(model, plan, shape)
        after = norms_sq(model, _conv_weight_names(model))
        n_after = _weight_count(model)
        s = 1.0 - n_after / n_before
        self.plans.append({name: [int(i) for i in idx] for name, idx in plan.items()})
        self._remask()
        stats = {
            "removed": {name: len(idx) for name, idx in plan.items()},
            "params_before": params_before,
            "params_after": param_counts(model)["total_params"],
            "flops_before": flops_before,
            "flops_after": count_flops(model, shape)["total"],
            "s": s,
            "density": n_after / n_before,
            **d1_stats(before, after, s),
        }
        if self.measure:  # timing does not depend on the weights: a fresh dense model serves
            dense = self.net.make_model()
            stats["inference"] = measure_inference(dense, model, shape)
        return stats

    def state_dict(self) -> dict:
        return {"plans": [dict(p) for p in self.plans]}

    def load_state_dict(self, state: Any, source: object = None) -> None:
        """Replay the saved plans that this model does not have yet (the model is dense or has
        the first k of them already)."""
        where = f"{source}: " if source is not None else ""
        if not isinstance(state, dict) or not isinstance(state.get("plans"), list):
            raise CorruptFileError(f"{where}not the channel plans of this run")
        plans = state["plans"]
        if plans[: len(self.plans)] != self.plans:
            raise CorruptFileError(f"{where}channel plans that do not extend this model's")
        for plan in plans[len(self.plans) :]:
            try:
                apply_channel_removal(self.net.model, plan, self.net.input_shape)
            except ValueError as e:
                raise CorruptFileError(f"{where}not a channel plan of this model ({e})") from e
            self.plans.append(dict(plan))
        self._remask()

    @torch.no_grad()
    def rewind(self, dense_state: Mapping[str, torch.Tensor]) -> None:
        fresh = self.net.make_model()
        fresh.load_state_dict(dense_state)
        for plan in self.plans:
            apply_channel_removal(fresh, plan, self.net.input_shape)
        self.net.model.load_state_dict(fresh.state_dict())

    def flops(self, dense_flops: Mapping[str, int]) -> int:
        return count_flops(self.net.model, self.net.input_shape)["total"]


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
    x = torch.randn(batch_size, *input_shape, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: list[list[float]] = [[], []]
    try:
        with modes_kept(dense_model, training=False), modes_kept(pruned_model, training=False):
            for m in models:
                m.to(device)
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
        for m, home in zip(models, homes):
            m.to(home)
    dense_ms, pruned_ms = (statistics.median(t) for t in times)
    return {
        "dense_ms": dense_ms,
        "pruned_ms": pruned_ms,
        "speedup": dense_ms / pruned_ms,
        "batch_size": batch_size,
        "repeats": repeats,
        "device": str(device),
    }
