"""A user's own pruning criterion: one score function (this file) and one YAML
(conf/pruning/taylor_weight.yaml), used as `prune-run -cd conf pruning=taylor_weight ...` from
this directory. prune-cli calls it with a ScoreContext (prune_cli.pruning.ScoreContext):
`ctx.targets` are the prunable weights by name, `ctx.batches(n)` yields training batches, and it
returns one score tensor per weight; the lowest scores are pruned first.
"""

import torch
import torch.nn.functional as F


def taylor_weight(ctx, batches: int = 4):
    """First-order Taylor importance of each weight, |w * dL/dw| summed over `batches` training
    batches (connection sensitivity, as SNIP scores it; Molchanov et al. 2019 per weight)."""
    model = ctx.model
    scores = {n: torch.zeros_like(w) for n, w in ctx.targets.items()}
    was_training = model.training
    model.eval()  # no batch-norm statistics move while scoring
    try:
        for x, y in ctx.batches(batches):
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            for n, w in ctx.targets.items():
                scores[n] += (w * w.grad).detach().abs()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return scores
