"""Criteria: score functions, lowest score pruned first. A criterion is named in a pruning
config by ``criterion: {_target_: <dotted path>, _partial_: true, <its options>}`` and called as
``criterion(ctx)`` with a :class:`~prune_cli.pruning.base.ScoreContext`; it returns one score
tensor per target: the weight's shape for unstructured pruning (``MaskPruner``), one score per
output channel for filter pruning (``ChannelPruner``). A user's criterion is one such function
in their own module and one YAML in their config directory (``examples/user_criterion``).
"""

from __future__ import annotations

import torch

from prune_cli.pruning.base import ScoreContext

# --- weights ---------------------------------------------------------------------------------


def magnitude(ctx: ScoreContext) -> dict[str, torch.Tensor]:
    """|w| (Han et al. 2015; Renda et al. 2020): global or layerwise by the pruner's scope."""
    return {n: w.detach().abs() for n, w in ctx.targets.items()}


def random(ctx: ScoreContext) -> dict[str, torch.Tensor]:
    """Random positions at magnitude pruning's per-layer counts (the control of Le & Hua 2021):
    each layer's alive magnitudes, shuffled among its alive positions (seeded). Ranked globally,
    every layer loses exactly as many weights as global magnitude pruning would take from it,
    but at random positions; ranked layerwise it is plain random pruning."""
    out = {}
    for n, w in ctx.targets.items():
        mags = w.detach().abs().flatten().clone()
        alive = (
            ctx.alive[n].flatten() if n in ctx.alive else torch.ones_like(mags, dtype=torch.bool)
        )
        idx = alive.nonzero().flatten()
        perm = torch.randperm(idx.numel(), generator=ctx.generator).to(idx.device)
        mags[idx] = mags[idx[perm]]
        out[n] = mags.view(w.shape)
    return out


# --- filters (output channels of convolutions) -----------------------------------------------


def l1_filter(ctx: ScoreContext) -> dict[str, torch.Tensor]:
    """L1 norm of each output channel's filter (PFEC, Li et al. 2017)."""
    return {
        n: conv.weight.detach().abs().flatten(1).sum(1).float() for n, conv in ctx.targets.items()
    }


def random_filter(ctx: ScoreContext) -> dict[str, torch.Tensor]:
    """Random filters at the pruner's per-layer counts (Le & Hua 2021's control for PFEC: their
    ``--random_rank`` replaces the L1 norms by uniform random numbers); seeded by the level."""
    return {
        n: torch.rand(conv.out_channels, generator=ctx.generator) for n, conv in ctx.targets.items()
    }


def taylor_fo_bn(ctx: ScoreContext, batches: int = 16) -> dict[str, torch.Tensor]:
    """Taylor-FO-BN importance (Molchanov et al. 2019, the criterion of Le & Hua's ImageNet
    ResNet-50 rows): for the batch norm that follows each conv, ``(γ ∂L/∂γ + β ∂L/∂β)²`` per
    channel (the first-order change of the loss when the channel's output is removed), computed
    on each of ``batches`` training batches and averaged. The model runs in training mode (batch
    statistics) as during training; its weights, running statistics, gradients and train/eval
    flags are left as they were. A conv without a batch norm on its output is refused."""
    import torch.nn.functional as F

    from prune_cli.errors import ConfigError
    from prune_cli.layers import modes_kept

    model = ctx.model
    bn_of = _batch_norms_after(model, ctx.targets, ctx.need_batches("taylor_fo_bn"))
    missing = [n for n in ctx.targets if n not in bn_of]
    if missing:
        raise ConfigError(
            f"pruning.criterion: taylor_fo_bn needs a batch norm on the output of {missing[0]}"
        )
    buffers = {
        k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k
    }
    grads = {p: p.grad for p in model.parameters()}
    sums = {
        n: torch.zeros(conv.out_channels, device=conv.weight.device)
        for n, conv in ctx.targets.items()
    }
    count = 0
    try:
        with modes_kept(model, training=True):
            for x, y in ctx.need_batches("taylor_fo_bn")(batches):
                model.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                for n, bn in bn_of.items():
                    g = bn.weight.grad * bn.weight + (
                        bn.bias.grad * bn.bias if bn.bias is not None else 0
                    )
                    sums[n] += g.detach().float().pow(2)
                count += 1
    finally:
        with torch.no_grad():
            state = model.state_dict()
            for k, v in buffers.items():
                state[k].copy_(v)
        for p, g in grads.items():
            p.grad = g
    if count == 0:
        raise ConfigError("pruning.criterion.batches: no training batch to score on")
    return {n: s / count for n, s in sums.items()}


def _check_taylor_fo_bn(model, convs, input_shape) -> None:
    """Prevalidation: every conv to score has a batch norm on its output (traced on zeros)."""
    from prune_cli.errors import ConfigError

    def zeros(n: int):
        first = next(model.parameters())
        yield torch.zeros(2, *input_shape, device=first.device), None

    found = _batch_norms_after(model, convs, zeros)
    missing = [n for n in convs if n not in found]
    if missing:
        raise ConfigError(
            f"pruning.criterion: taylor_fo_bn needs a batch norm on the output of {missing[0]}"
        )


taylor_fo_bn.check = _check_taylor_fo_bn  # called by ChannelPruner.check before anything trains


def _batch_norms_after(model, convs, batches) -> dict:
    """The batch norm whose input is each conv's output, found by one traced forward pass."""
    from torch import nn

    from prune_cli.layers import modes_kept

    out_of: dict[int, str] = {}
    alive: list = []  # the outputs stay referenced, so that no later tensor reuses their id
    found: dict[str, nn.Module] = {}
    names = {m: n for n, m in convs.items()}
    hooks = []
    for m in model.modules():
        if m in names:

            def post(mod, inputs, out):
                alive.append(out)
                out_of[id(out)] = names[mod]

            hooks.append(m.register_forward_hook(post))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:

            def pre(mod, inputs):
                conv = out_of.get(id(inputs[0]))
                if conv is not None:
                    found.setdefault(conv, mod)

            hooks.append(m.register_forward_pre_hook(pre))
    try:
        x, _ = next(iter(batches(1)))
        with modes_kept(model, training=False), torch.no_grad():
            model(x[:2])
    finally:
        for h in hooks:
            h.remove()
    return found
