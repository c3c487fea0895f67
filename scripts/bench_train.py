"""Training throughput: this tool's loop against a standard PyTorch loop, in one process.

What it measures, for CIFAR ResNet-20 and ResNet-56 on synthetic CIFAR-shaped data, batch 128:

(a) ``standard``: the loop most research scripts use: a torchvision-style ``Dataset`` of uint8
    images returned as PIL images, host-side transforms (RandomCrop(32, padding=4),
    RandomHorizontalFlip, ToTensor, Normalize), ``DataLoader(num_workers=W, pin_memory=cuda)``,
    ``.to(device)`` per batch and ``loss.item()`` every step; always fp32, eager.
(b) ``tool``: ``prune_cli.train.train_phase`` on ``DeviceData`` (uint8 data on the device,
    crop/flip on the device), built by ``prune_cli.runner.build`` from the composed config
    ``model=<model> dataset=synthetic`` (the recipe of ``conf/train/cifar_resnet.yaml``) plus the
    fast-path switches given here (``train.precision``, ``runtime.channels_last``, ``runtime.compile``).
(c) ``tool, masked``: (b) with 90% of the prunable weights removed by one level of the run's
    pruner (``pruning=one_shot``: global magnitude to 90% sparsity) and re-applied after every
    step by ``pruner.after_step``; ``Masks.apply()`` timed alone over many calls, as a fraction
    of one training step.
(d) the data pipelines alone (no model): the standard DataLoader and ``DeviceData.train_batches``.

Each figure is the median of ``--repeats`` timed repetitions of ``--epochs`` epochs after a short
warm-up (CUDA is synchronized before every clock read). It prints images/s of each loop, the
ratio (b)/(a), the device, torch version and the load average (on a shared machine, compare only
figures taken under similar load).

    uv run python scripts/bench_train.py                                  # defaults
    uv run python scripts/bench_train.py --n-train 2048 --repeats 3 --workers 0,2
    uv run python scripts/bench_train.py --device cuda --precision bf16 --channels-last --compile
    uv run python scripts/bench_train.py --accuracy-check --precision bf16 --compile

``--accuracy-check`` trains ResNet-20 a few epochs on synthetic data twice, with the switches given
and in fp32 eager, from the same initial weights and data order, and prints both test accuracies.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from prune_cli.cli import _compose
from prune_cli.data.base import ArrayDataset
from prune_cli.data.synthetic import load_synthetic
from prune_cli.runner import Built, build, resolve_device
from prune_cli.train import Phase, evaluate, make_optimizer, train_phase

# ------------------------------------------------------------------------------------------------
# Environment
# ------------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    """Wait for queued device work, so that a clock read measures finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model with the thread count torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} logical CPUs, torch threads={torch.get_num_threads()})"


def load_average() -> str:
    try:
        return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        return "load average n/a"


def median_time(fn: Callable[[], None], repeats: int, device: torch.device) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ------------------------------------------------------------------------------------------------
# (a) The standard loop
# ------------------------------------------------------------------------------------------------


class UInt8Images(Dataset):
    """A torchvision-style dataset: HWC uint8 arrays, returned as PIL images through ``transform``."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform: Callable) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def standard_loader(
    data: ArrayDataset, batch_size: int, workers: int, device: torch.device
) -> DataLoader:
    """The usual CIFAR DataLoader: PIL images, host-side augmentation, shuffling, pinned memory."""
    transform = T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(data.mean, data.std),
        ]
    )
    images = UInt8Images(data.x_train.permute(0, 2, 3, 1).numpy(), data.y_train.numpy(), transform)
    return DataLoader(
        images,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )


def standard_epoch(
    model: torch.nn.Module,
    loader: DataLoader,
    opt: torch.optim.Optimizer,
    device: torch.device,
    max_steps: int | None = None,
) -> None:
    """One epoch (or ``max_steps`` steps) of the loop most research scripts run."""
    model.train()
    running = 0.0
    for i, (x, y) in enumerate(loader):
        if max_steps is not None and i >= max_steps:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        running += loss.item()


# ------------------------------------------------------------------------------------------------
# (b) The tool's loop
# ------------------------------------------------------------------------------------------------


def compose(model: str, args: argparse.Namespace, *, fast: bool = True) -> object:
    """The run config of ``prune-run model=<model> dataset=synthetic`` at this benchmark's size;
    with ``fast`` the fast-path switches of the command line, else fp32 eager."""
    overrides = [
        f"model={model}",
        "dataset=synthetic",
        f"runtime.device={args.device}",
        f"dataset.loader.n_train={args.n_train}",
        f"dataset.loader.n_test={args.n_test}",
        f"train.batch_size={args.batch_size}",
        f"seed={args.seed}",
        "runtime.progress=false",
        "pruning=one_shot",  # one level to 90% sparsity: the masked loop's masks
    ]
    if fast:
        overrides += [
            f"train.precision={args.precision}",
            f"runtime.channels_last={str(args.channels_last).lower()}",
            f"runtime.compile={str(args.compile).lower()}",
        ]
    return _compose("config", None, overrides)


def tool_run(b: Built, steps: int, name: str, masked: bool) -> None:
    """``steps`` optimizer steps of ``train_phase`` as the runner calls it (no state file)."""
    phase = Phase(name, b.eta, steps, b.steps_per_epoch, b.cfg.seed)
    train_phase(
        b.model,
        b.data,
        phase,
        b.cfg.train,
        b.pruner if masked else None,
        forward=b.forward,
        progress=False,
    )


def tool_data_epoch(b: Built, seed: int) -> None:
    """Every batch of one epoch of ``DeviceData``, nothing else."""
    total = torch.zeros((), device=b.device)
    for x, _ in b.data.train_batches(b.cfg.train.batch_size, seed):
        total += x[0, 0, 0, 0]  # every batch is really materialized; one host sync at the end
    total.item()


# ------------------------------------------------------------------------------------------------
# Throughput
# ------------------------------------------------------------------------------------------------


def bench_model(model_name: str, args: argparse.Namespace, device: torch.device) -> list[dict]:
    """All figures of one model: standard loop per worker count, tool loop, masked, data alone.

    The training loops are timed in turns (one repetition of each, then the next round), so that
    a load change on a shared machine affects all of them alike instead of whichever runs last.
    """
    cfg = compose(model_name, args)
    b = build(cfg)
    n, bs = b.data.n_train, cfg.train.batch_size
    images = n * args.epochs
    steps = b.steps_per_epoch * args.epochs
    rows: list[dict] = []

    def row(loop: str, seconds: float, **extra) -> dict:
        r = {
            "model": model_name,
            "loop": loop,
            "images_per_s": images / seconds,
            "step_ms": 1000 * seconds / steps,
            "load": load_average(),
            **extra,
        }
        rows.append(r)
        print(
            f"  {model_name:9s} {loop:28s} {r['images_per_s']:9.1f} images/s"
            f"  {r['step_ms']:8.1f} ms/step   ({r['load']})",
            flush=True,
        )
        return r

    # 90% sparse masks; the unmasked runs ignore them (dense kernels cost the same on zeros)
    b.pruner.prune(1, torch.Generator().manual_seed(args.seed))
    seeds = itertools.count()
    names = (f"rep{i}" for i in seeds)
    loops: dict[str, Callable[[], None]] = {}

    # (a) the standard loop, on the same data and recipe, fresh weights from the same seed
    data = load_synthetic(n_train=args.n_train, n_test=args.n_test, seed=0)
    for w in args.workers:
        torch.manual_seed(args.seed)
        model = instantiate(cfg.model.net).to(device)
        opt = make_optimizer(model, cfg.train)
        loader = standard_loader(data, bs, w, device)
        standard_epoch(model, loader, opt, device, max_steps=args.warmup_steps)

        def run_standard(model=model, loader=loader, opt=opt) -> None:
            for _ in range(args.epochs):
                standard_epoch(model, loader, opt, device)

        loops[f"standard (workers={w})"] = run_standard

    # (b) the tool's loop at the switches given; (c) the same with the masks re-applied
    tool_run(b, args.warmup_steps, "warmup", masked=False)
    tool_run(b, args.warmup_steps, "warmup-masked", masked=True)
    loops["tool"] = lambda: tool_run(b, steps, next(names), masked=False)
    loops["tool, 90% sparse"] = lambda: tool_run(b, steps, next(names), masked=True)

    times: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(args.repeats):
        for name, fn in loops.items():
            times[name].append(median_time(fn, 1, device))
    for name, ts in times.items():
        extra = {"workers": int(name[18:-1])} if name.startswith("standard") else {}
        row(name, statistics.median(ts), all_s=ts, **extra)

    by_loop = {r["loop"]: r for r in rows}
    tool, masked = by_loop["tool"], by_loop["tool, 90% sparse"]
    best_standard = max(r["images_per_s"] for r in rows if r["loop"].startswith("standard"))
    tool["ratio_vs_standard"] = tool["images_per_s"] / best_standard
    print(f"  {model_name:9s} ratio tool/standard (best workers) = {tool['ratio_vs_standard']:.2f}")

    # Masks.apply() alone, as a fraction of an (unmasked) step of the tool's loop
    calls = args.apply_calls
    masks = b.pruner.masks
    for _ in range(10):
        masks.apply()
    per_apply = median_time(lambda: [masks.apply() for _ in range(calls)], 3, device) / calls
    masked["apply_ms"] = 1000 * per_apply
    masked["apply_fraction_of_step"] = per_apply / (tool["step_ms"] / 1000)
    masked["masked_slowdown"] = tool["images_per_s"] / masked["images_per_s"] - 1
    print(
        f"  {model_name:9s} mask re-application: {1000 * per_apply:.3f} ms/call ="
        f" {100 * masked['apply_fraction_of_step']:.2f}% of a step"
        f" (masked loop {100 * masked['masked_slowdown']:+.1f}% vs unmasked, noisy)",
        flush=True,
    )

    # (d) the data pipelines alone
    w = max(args.workers)
    loader = standard_loader(data, bs, w, device)

    def standard_data() -> None:
        for x, _ in loader:
            x.to(device, non_blocking=True)

    per_epoch = median_time(standard_data, args.repeats, device)
    row(f"data only: standard (w={w})", per_epoch * args.epochs, data_only=True)
    per_epoch = median_time(lambda: tool_data_epoch(b, next(seeds)), args.repeats, device)
    row("data only: DeviceData", per_epoch * args.epochs, data_only=True)
    return rows


# ------------------------------------------------------------------------------------------------
# Accuracy check
# ------------------------------------------------------------------------------------------------


def accuracy_check(args: argparse.Namespace) -> list[dict]:
    """ResNet-20 for ``epochs`` epochs with the switches given and in fp32 eager: test accuracy."""
    rows = []
    for label, fast in (("switches given", True), ("fp32 eager", False)):
        cfg = compose("resnet20", args, fast=fast)
        b = build(cfg)
        spe = b.steps_per_epoch
        t0 = time.perf_counter()
        res = train_phase(
            b.model,
            b.data,
            Phase("dense", b.eta, args.epochs * spe, spe, cfg.seed),
            cfg.train,
            forward=b.forward,
            progress=False,
        )
        acc = evaluate(b.model, b.data, cfg.runtime.eval_batch_size, cfg.train.precision)
        tr, rt = cfg.train, cfg.runtime
        rows.append(
            {
                "run": label,
                "precision": tr.precision,
                "channels_last": rt.channels_last,
                "compile": rt.compile,
                "epochs": args.epochs,
                "train_loss": res.train_loss,
                "test_accuracy": acc,
                "wall_s": time.perf_counter() - t0,
            }
        )
        print(
            f"  resnet20 {label:15s} precision={tr.precision} channels_last={rt.channels_last}"
            f" compile={rt.compile}: train loss {res.train_loss:.4f},"
            f" test accuracy {100 * acc:.2f}% ({rows[-1]['wall_s']:.0f} s; {load_average()})",
            flush=True,
        )
    diff = rows[0]["test_accuracy"] - rows[1]["test_accuracy"]
    print(f"  accuracy difference (switches given - fp32 eager): {100 * diff:+.2f} points")
    return rows


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1")
    p.add_argument("--models", default="resnet20,resnet56", help="comma-separated model configs")
    p.add_argument("--n-train", type=int, default=None, help="10000 on CPU, 50000 on CUDA")
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=None, help="per repetition (1; 3 for accuracy)")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions (median)")
    p.add_argument("--warmup-steps", type=int, default=3, help="untimed steps before timing")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int_list, default=[2], help="DataLoader workers, e.g. 0,2")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--apply-calls", type=int, default=200, help="Masks.apply() calls to time")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--accuracy-check", action="store_true", help="accuracy instead of throughput")
    p.add_argument("--json", type=Path, default=None, help="save every figure here")
    args = p.parse_args(argv)
    args.device = str(resolve_device(args.device))
    if args.n_train is None:
        args.n_train = 50_000 if args.device.startswith("cuda") else 10_000
    if args.epochs is None:
        args.epochs = 3 if args.accuracy_check else 1
    args.models = [m for m in args.models.split(",") if m]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    meta = {
        "device": device_name(device),
        "torch": torch.__version__,
        "load_start": load_average(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    print(f"device: {meta['device']}")
    print(f"torch {torch.__version__}; {meta['load_start']}")
    switches = (
        f"precision={args.precision} channels_last={args.channels_last} compile={args.compile}"
    )
    if args.accuracy_check:
        print(f"accuracy check: ResNet-20, synthetic n_train={args.n_train}, {args.epochs} epochs")
        out = {"meta": meta, "accuracy": accuracy_check(args)}
    else:
        print(
            f"throughput: batch {args.batch_size}, n_train={args.n_train}, {args.epochs} epoch(s) per repetition,"
            f" median of {args.repeats}; tool switches: {switches}"
        )
        rows = [r for m in args.models for r in bench_model(m, args, device)]
        print("summary (images/s):")
        for m in args.models:
            mine = [r for r in rows if r["model"] == m and not r.get("data_only")]
            std = max(r["images_per_s"] for r in mine if r["loop"].startswith("standard"))
            tool = next(r for r in mine if r["loop"] == "tool")
            masked = next(r for r in mine if r["loop"].startswith("tool, 90%"))
            print(
                f"  {m:9s} standard {std:8.1f}  tool {tool['images_per_s']:8.1f}"
                f"  ratio {tool['ratio_vs_standard']:.2f}"
                f"  mask apply {100 * masked['apply_fraction_of_step']:.2f}% of a step"
            )
        out = {"meta": meta, "throughput": rows}
    meta["load_end"] = load_average()
    print(f"done; {meta['load_end']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"figures saved to {args.json}")


if __name__ == "__main__":
    main()
