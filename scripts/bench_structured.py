"""Measured inference of L1-filter-pruned CIFAR ResNets against the dense network, in one process.

For each preset (Li et al. 2016's ResNet-56-A/B, ResNet-110-A/B) its pruner (``ChannelPruner``,
built from ``conf/pruning/<preset>.yaml``) plans and removes the filters of a freshly initialised
network and prints parameters, multiply-accumulates (PyTorch's
FlopCounterMode) and the median forward time of a batch, dense vs pruned, on the same device:

    uv run python scripts/bench_structured.py [--device cpu] [--batch-size 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy

import torch

from prune_cli.cli import _compose
from prune_cli.costs import count_flops, param_counts
from prune_cli.models.cifar_resnet import cifar_resnet
from prune_cli.pruning import Network, build_pruner
from prune_cli.pruning.channels import measure_inference

PRESETS = {
    "resnet56": ["l1_filter_resnet56_a", "l1_filter_resnet56_b"],
    "resnet110": ["l1_filter_resnet110_a", "l1_filter_resnet110_b"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--models", default="resnet56,resnet110")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = [3, 32, 32]
    for name in args.models.split(","):
        torch.manual_seed(0)
        dense = cifar_resnet(int(name.removeprefix("resnet"))).to(args.device)
        p0, f0 = param_counts(dense)["total_params"], count_flops(dense, shape)["total"]
        print(f"{name} dense: {p0:,} params, {f0 / 1e6:.1f} M MACs")
        for preset in PRESETS[name]:
            pruned = copy.deepcopy(dense)
            # inference is measured below, at this script's batch size and device
            overrides = [f"pruning={preset}", "pruning.measure_inference=false"]
            pruner = build_pruner(_compose("config", None, overrides).pruning)
            pruner.attach(Network(pruned, shape, lambda dense=dense: copy.deepcopy(dense)))
            pruner.prune(1, torch.Generator().manual_seed(0))
            p1, f1 = param_counts(pruned)["total_params"], count_flops(pruned, shape)["total"]
            t = measure_inference(
                dense, pruned, shape, batch_size=args.batch_size, device=args.device
            )
            print(
                f"  {preset}: {p1:,} params ({1 - p1 / p0:.1%} fewer), {f1 / 1e6:.1f} M MACs"
                f" ({1 - f1 / f0:.1%} fewer, theoretical speedup {f0 / f1:.2f}x);"
                f" batch {args.batch_size} on {t['device']}: dense {t['dense_ms']:.1f} ms,"
                f" pruned {t['pruned_ms']:.1f} ms, measured speedup {t['speedup']:.2f}x"
            )


if __name__ == "__main__":
    main()
