"""Aggregate training throughput when K small runs share one device (CPU or one GPU).

The joblib launcher preset (``launcher=local``, ``hydra.launcher.n_jobs``) runs Hydra jobs as
separate processes, so this benchmark launches K separate processes, each a small run of this
tool's training loop (``prune_cli.runner.build`` + ``prune_cli.train.train_phase``; ResNet-20 on
synthetic CIFAR-shaped data, batch 128 by default). Every process builds its model and data,
warms up, and waits at a barrier; then all train ``--steps`` steps at the same time. Each
process reports its own images/s; the aggregate is all images over the span from the first
start to the last end. Like joblib's loky backend, each process gets ``cpu_count // K`` CPU
threads (``OMP_NUM_THREADS``) unless ``--threads`` says otherwise.

It prints, for each K, per-run and aggregate images/s and the speedup over K=1, then the
recommended ``n_jobs``: the K after which aggregate throughput stops growing by more than 10%.

    uv run python scripts/bench_parallel.py                          # K = 1, 2, 4, 8
    uv run python scripts/bench_parallel.py --device cuda --k 1,2,4,8 --steps 200
    uv run python scripts/bench_parallel.py --k 1,2 --steps 10 --json parallel.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GROWTH = 0.10  # more K is recommended only while aggregate throughput grows by more than this
BARRIER_TIMEOUT_S = 900


def load_average() -> str:
    try:
        return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        return "load average n/a"


# ------------------------------------------------------------------------------------------------
# One run (a child process)
# ------------------------------------------------------------------------------------------------


def worker(args: argparse.Namespace) -> None:
    """Build, warm up, signal ready, wait for go, train ``steps`` steps; write the figures."""
    import torch

    from prune_cli.cli import _compose
    from prune_cli.runner import build
    from prune_cli.train import Phase, train_phase

    cfg = _compose(
        "config",
        None,
        [
            f"model={args.model}",
            "dataset=synthetic",
            f"runtime.device={args.device}",
            f"dataset.loader.n_train={args.n_train}",
            "dataset.loader.n_test=128",
            f"train.batch_size={args.batch_size}",
            f"train.precision={args.precision}",
            f"runtime.channels_last={str(args.channels_last).lower()}",
            f"runtime.compile={str(args.compile).lower()}",
            f"seed={args.worker_id}",
            "runtime.progress=false",
        ],
    )
    b = build(cfg)

    def run(name: str, steps: int) -> int:
        phase = Phase(name, b.eta, steps, b.steps_per_epoch, cfg.seed)
        res = train_phase(b.model, b.data, phase, cfg.train, forward=b.forward, progress=False)
        if b.device.type == "cuda":
            torch.cuda.synchronize(b.device)
        return res.images_seen

    run("warmup", args.warmup_steps)
    sync_dir = Path(args.sync_dir)
    (sync_dir / f"ready-{args.worker_id}").touch()
    deadline = time.monotonic() + BARRIER_TIMEOUT_S
    while not (sync_dir / "go").exists():
        if time.monotonic() > deadline:
            raise SystemExit("bench_parallel worker: no go signal")
        time.sleep(0.01)
    start = time.time()
    images = run("timed", args.steps)
    end = time.time()
    result = {
        "images": images,
        "start": start,
        "end": end,
        "threads": torch.get_num_threads(),
    }
    (sync_dir / f"result-{args.worker_id}.json").write_text(json.dumps(result))


# ------------------------------------------------------------------------------------------------
# K runs at once (the parent)
# ------------------------------------------------------------------------------------------------


def threads_for(k: int, threads: str) -> int:
    """CPU threads per process: joblib/loky's default ``cpu_count // n_jobs``, or as given."""
    if threads == "auto":
        return max((os.cpu_count() or 1) // k, 1)
    return int(threads)


def run_k(k: int, args: argparse.Namespace) -> dict:
    """Launch ``k`` concurrent runs, release them together, and collect their figures."""
    n_threads = threads_for(k, args.threads)
    env = {**os.environ}
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(n_threads)
    with tempfile.TemporaryDirectory(prefix="bench_parallel-") as tmp:
        sync_dir = Path(tmp)
        common = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            "--sync-dir",
            tmp,
            "--model",
            args.model,
            "--device",
            args.device,
            "--n-train",
            str(args.n_train),
            "--batch-size",
            str(args.batch_size),
            "--steps",
            str(args.steps),
            "--warmup-steps",
            str(args.warmup_steps),
            "--precision",
            args.precision,
        ]
        common += ["--channels-last"] * args.channels_last + ["--compile"] * args.compile
        logs = [sync_dir / f"log-{i}.txt" for i in range(k)]
        procs = [
            subprocess.Popen(
                [*common, "--worker-id", str(i)],
                env=env,
                stdout=log.open("w"),
                stderr=subprocess.STDOUT,
            )
            for i, log in enumerate(logs)
        ]

        def check_alive() -> None:
            for p, log in zip(procs, logs):
                if p.poll() not in (None, 0):
                    for q in procs:
                        if q.poll() is None:
                            q.kill()
                    out = log.read_text()[-3000:]
                    raise SystemExit(f"a run failed (exit {p.returncode}):\n{out}")

        while len(list(sync_dir.glob("ready-*"))) < k:
            check_alive()
            time.sleep(0.05)
        (sync_dir / "go").touch()
        for p in procs:
            p.wait()
        check_alive()
        results = [json.loads((sync_dir / f"result-{i}.json").read_text()) for i in range(k)]
    per_run = [r["images"] / (r["end"] - r["start"]) for r in results]
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    return {
        "k": k,
        "threads_per_run": results[0]["threads"],
        "per_run_images_per_s": per_run,
        "per_run_median": statistics.median(per_run),
        "aggregate_images_per_s": sum(r["images"] for r in results) / span,
        "load": load_average(),
    }


def recommend(rows: list[dict]) -> int:
    """The K after which aggregate throughput stops growing by more than ``GROWTH``."""
    best = rows[0]
    for r in rows[1:]:
        if r["aggregate_images_per_s"] <= (1 + GROWTH) * best["aggregate_images_per_s"]:
            break
        best = r
    return best["k"]


def device_name(device: str) -> str:
    """The GPU's name, or the CPU model and count (read without importing torch here)."""
    if device.startswith("cuda"):
        out = subprocess.run(
            [sys.executable, "-c", f"import torch; print(torch.cuda.get_device_name('{device}'))"],
            capture_output=True,
            text=True,
        )
        return out.stdout.strip() or device
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} logical CPUs)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda")
    p.add_argument("--k", default="1,2,4,8", help="numbers of concurrent runs")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--steps", type=int, default=None, help="timed steps per run (20 CPU, 300 CUDA)")
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--n-train", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--threads", default="auto", help="CPU threads per run: auto = cpu_count // K")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-id", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--sync-dir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.steps is None:
        args.steps = 300 if args.device.startswith("cuda") else 20
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    ks = sorted({int(v) for v in args.k.split(",") if v})
    print(f"device: {device_name(args.device)}")
    print(
        f"{args.model}, synthetic, batch {args.batch_size}, {args.steps} timed steps per run,"
        f" precision={args.precision} channels_last={args.channels_last} compile={args.compile};"
        f" {load_average()}",
        flush=True,
    )
    rows = []
    for k in ks:
        r = run_k(k, args)
        r["speedup"] = (
            r["aggregate_images_per_s"] / (rows[0] if rows else r)["aggregate_images_per_s"]
        )
        rows.append(r)
        print(
            f"  K={k}: per-run {r['per_run_median']:8.1f} images/s (median),"
            f" aggregate {r['aggregate_images_per_s']:8.1f} images/s,"
            f" speedup vs K={ks[0]} {r['speedup']:.2f}x"
            f" ({r['threads_per_run']} threads/run; {r['load']})",
            flush=True,
        )
    n_jobs = recommend(rows)
    why = (
        f"aggregate throughput still grows by > {GROWTH:.0%} at the largest K measured"
        if n_jobs == ks[-1]
        else f"aggregate throughput grows by <= {GROWTH:.0%} beyond it"
    )
    print(f"recommendation: hydra.launcher.n_jobs={n_jobs} ({why})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"device": device_name(args.device), "rows": rows, "n_jobs": n_jobs}, indent=2
            )
            + "\n"
        )
        print(f"figures saved to {args.json}")


if __name__ == "__main__":
    main()
