"""Sweeps through the real `prune-run -m`: shared dense models, concurrent jobs, re-runs, the
launchers, the quick start, and the paper presets of conf/experiment/.

Every sweep is LeNet-300-100 on the bundled digits, shrunk to seconds; subprocesses run with one
OpenMP thread (LeNet gains nothing from more, and idle threads spin under load).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import procs
import pytest
from conftest import cli_argv, cli_env, cli_run, compose

from prune_cli.cli import _jobs, prevalidate
from prune_cli.config import retrain_epochs
from prune_cli.runner import rewind_epochs
from prune_cli.store import dense_hash

# A sweep small enough for seconds: one level, short dense and retraining phases.
TINY = ["experiment=quickstart", "train.epochs=2", "pruning.levels=1"]
TRAINED = "training the dense model"
NOTHING = "nothing to do"

PRESETS = [
    "renda_resnet56_curve",
    "renda_resnet56_retrain_time",
    "renda_resnet56_oneshot",
    "lehua_restarting",
    "zimmer_bimp",
]


@pytest.fixture(scope="module", autouse=True)
def preset_checks():
    """``prevalidate`` of every preset (~280 jobs, ~30 s of one core), started first in a
    thread: it runs while the sweeps below wait on their single-threaded subprocesses.
    Hydra's global state is used by this thread alone until the preset tests join it."""
    with ThreadPoolExecutor(1) as pool:
        # dry_run: checked, nothing recorded (no snapshot requests in the working directory's cache)
        futures = {
            n: pool.submit(prevalidate, ["-m", f"experiment={n}"], dry_run=True) for n in PRESETS
        }
        yield futures


def prune_run(root: Path, *args: str) -> subprocess.CompletedProcess:
    """`prune-run ARGS` in `root` with a dense cache in `root/cache`; fails on a non-zero exit."""
    proc = cli_run(root, *args)
    assert proc.returncode == 0, f"prune-run {' '.join(args)}\n{proc.stdout}\n{proc.stderr}"
    return proc


def run_logs(sweep_dir: Path) -> dict[Path, str]:
    """Each run's `run.log` (Hydra's file handler writes one per job, whatever the launcher)."""
    return {p.parent: p.read_text() for p in sorted(sweep_dir.rglob("run.log"))}


def results(sweep_dir: Path) -> dict[Path, list[dict]]:
    return {
        p.parent: [json.loads(line) for line in p.read_text().splitlines() if line]
        for p in sorted(sweep_dir.rglob("results.jsonl"))
    }


def dense_entries(root: Path) -> list[Path]:
    return sorted(p for p in (root / "cache" / "dense").iterdir() if p.is_dir())


# ----------------------------------------------------------------------------------------------
# One 3-method x 2-seed sweep, then the same command again
# ----------------------------------------------------------------------------------------------

SWEEP_3X2 = [*TINY, "method=ft,wr,lrw", "seed=0,1"]


@pytest.fixture(scope="module")
def sweep3x2(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("sweep3x2")
    proc = prune_run(root, "-m", *SWEEP_3X2, f"hydra.sweep.dir={root / 'sweep'}")
    return root, proc


@pytest.fixture(scope="module")
def rerun3x2(sweep3x2) -> tuple[Path, subprocess.CompletedProcess, dict[Path, bytes]]:
    root, _ = sweep3x2
    before = {p: p.read_bytes() for p in (root / "sweep").rglob("results.jsonl")}
    proc = prune_run(root, "-m", *SWEEP_3X2, f"hydra.sweep.dir={root / 'sweep'}")
    return root, proc, before


def test_sweep_keeps_one_dense_model_per_seed(sweep3x2):
    root, _ = sweep3x2
    runs = results(root / "sweep")
    assert len(runs) == 6 and all(len(rows) == 2 for rows in runs.values())
    assert len(dense_entries(root)) == 2
    by_seed: dict[int, set] = {}
    for rows in runs.values():
        by_seed.setdefault(rows[0]["seed"], set()).add((rows[0]["dense_cache"], rows[0]["acc"]))
    # every method of a seed starts from the same cache entry and the same dense accuracy
    assert sorted(by_seed) == [0, 1] and all(len(v) == 1 for v in by_seed.values())


class DenseRetrainedError(AssertionError):
    """More dense trainings than seeds (distinct from a failed sweep, which the xfail must not hide)."""


def test_sweep_trains_each_dense_model_once(sweep3x2):
    root, proc = sweep3x2
    in_logs = sum(log.count(TRAINED) for log in run_logs(root / "sweep").values())
    assert in_logs == proc.stdout.count(TRAINED)
    if in_logs != 2:
        raise DenseRetrainedError(f"{in_logs} dense trainings for 2 seeds:\n{proc.stdout}")


def test_rerun_of_a_finished_sweep_does_nothing(rerun3x2):
    root, proc, before = rerun3x2
    assert TRAINED not in proc.stdout + proc.stderr
    assert proc.stdout.count(NOTHING) == 6, proc.stdout
    after = {p: p.read_bytes() for p in (root / "sweep").rglob("results.jsonl")}
    assert after == before


# ----------------------------------------------------------------------------------------------
# Two jobs started at the same moment on an empty cache
# ----------------------------------------------------------------------------------------------


def _start_ft_and_lrw(tmp_path: Path, common: list[str]) -> dict[str, subprocess.Popen]:
    """An FT and an LRW run of the same config, started at once, each in its own run dir."""
    return {
        m: procs.Popen(
            cli_argv(tmp_path, *common, f"method={m}", f"hydra.run.dir={tmp_path / m}"),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=cli_env(tmp_path),
        )
        for m in ("ft", "lrw")
    }


def test_two_jobs_started_together_train_one_dense_model(tmp_path):
    # a dense phase long enough (20 epochs) that the second job usually arrives while the
    # first is still training; a short retraining keeps the test fast
    common = [*TINY, "train.epochs=20", "method.retrain_epochs=1", "seed=0"]
    jobs = _start_ft_and_lrw(tmp_path, common)
    outs = {m: p.communicate(timeout=600)[0] for m, p in jobs.items()}
    for method, proc in jobs.items():
        assert proc.returncode == 0, f"{method}:\n{outs[method]}"
    trained = [m for m, out in outs.items() if TRAINED in out]
    assert len(trained) == 1, outs
    (other,) = set(outs) - set(trained)
    waited = "being trained by another job; waiting" in outs[other]
    assert waited or "from the cache" in outs[other], outs[other]
    print(f"{trained[0]} trained the dense model; {other} {'waited' if waited else 'loaded it'}")
    assert len(dense_entries(tmp_path)) == 1
    # both read the complete entry: the same dense accuracy at level 0
    level0 = {m: results(tmp_path / m)[tmp_path / m][0] for m in outs}
    assert level0["ft"]["acc"] == level0["lrw"]["acc"]
    assert level0["ft"]["dense_cache"] == level0["lrw"]["dense_cache"]


def test_jobs_waiting_on_a_dense_model_in_training_train_it_once(tmp_path):
    """Deterministic version of the above: the test holds the entry's lock (as a job training it
    would) until both jobs have logged that they wait; then exactly one of them trains."""
    from filelock import FileLock

    from prune_cli.store import DenseCache, dense_hash

    common = [*TINY, "method.retrain_epochs=1", "seed=0"]
    key = dense_hash(compose(*common, f"runtime.cache_dir={tmp_path / 'cache'}"))
    lock = FileLock(str(DenseCache(tmp_path / "cache", key).dir / ".lock"))
    (tmp_path / "cache" / "dense" / key).mkdir(parents=True)
    lock.acquire()
    try:
        jobs = _start_ft_and_lrw(tmp_path, common)
        deadline = time.monotonic() + 300
        logs = [tmp_path / m / "run.log" for m in jobs]
        while not all(p.exists() and "waiting" in p.read_text() for p in logs):
            assert time.monotonic() < deadline, "the jobs never waited for the lock"
            assert all(p.poll() is None for p in jobs.values()), "a job ended early"
            time.sleep(0.2)
    finally:
        lock.release()
    outs = {m: p.communicate(timeout=600)[0] for m, p in jobs.items()}
    assert all(p.returncode == 0 for p in jobs.values()), outs
    assert sum(TRAINED in out for out in outs.values()) == 1, outs
    level0 = {m: results(tmp_path / m)[tmp_path / m][0] for m in outs}
    assert level0["ft"]["acc"] == level0["lrw"]["acc"]


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow  # fresh interpreters per job (25 s); the default run keeps submitit's requeue
def test_submitit_local_sweep_completes_and_reports(tmp_path):
    sweep = tmp_path / "sweep"
    prune_run(
        tmp_path,
        "-m",
        "launcher=submitit_local",
        *TINY,
        "method=ft,lrw",
        "method.retrain_epochs=1",
        f"hydra.sweep.dir={sweep}",
    )
    runs = results(sweep)
    assert sorted(rows[0]["method"] for rows in runs.values()) == ["ft", "lrw"]
    assert all(len(rows) == 2 for rows in runs.values())
    assert (sweep / "report.csv").is_file()
    assert len(dense_entries(tmp_path)) == 1


@pytest.mark.slow  # fresh loky interpreters (25 s); two jobs on one cache: test_two_jobs_started_together
def test_joblib_sweep_completes(tmp_path):
    sweep = tmp_path / "sweep"
    prune_run(
        tmp_path,
        "-m",
        "launcher=local",
        *TINY,
        "method=ft,lrw",
        "method.retrain_epochs=1",
        f"hydra.sweep.dir={sweep}",
    )
    runs = results(sweep)
    assert sorted(rows[0]["method"] for rows in runs.values()) == ["ft", "lrw"]
    assert all(len(rows) == 2 for rows in runs.values())
    assert (sweep / "report.csv").is_file()
    # the two jobs ran side by side on one empty cache: one of them trained
    assert sum(log.count(TRAINED) for log in run_logs(sweep).values()) == 1
    assert len(dense_entries(tmp_path)) == 1


# ----------------------------------------------------------------------------------------------
# The quick start, as the README gives it
# ----------------------------------------------------------------------------------------------


def test_quickstart_sweep_ends_with_the_comparison(tmp_path):
    sweep = tmp_path / "sweep"
    t0 = time.perf_counter()
    proc = prune_run(tmp_path, "-m", "experiment=quickstart", f"hydra.sweep.dir={sweep}")
    wall = time.perf_counter() - t0
    load = os.getloadavg()[0]
    print(f"quickstart sweep: {wall:.1f} s wall, load {load:.2f} on {os.cpu_count()} CPUs")
    head = proc.stdout[proc.stdout.rindex("lenet300_100 on digits") :]
    header = next(line for line in head.splitlines() if "level" in line and "compression" in line)
    assert all(name in header.split() for name in ("FT", "WR", "LRW")), head
    assert "9.31x" in head  # the table covers all 10 levels
    assert (sweep / "acc_vs_compression.png").is_file()
    assert (sweep / "report.csv").is_file()
    assert len(results(sweep)) == 3


# ----------------------------------------------------------------------------------------------
# The paper presets
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes_and_every_job_validates(name, preset_checks: dict[str, Future]):
    assert preset_checks[name].result() is None


def test_preset_grid_sizes(preset_checks):
    for future in preset_checks.values():
        future.result()  # Hydra's global state is free again
    sizes = {name: len(_jobs(["-m", f"experiment={name}"])[0]) for name in PRESETS}
    assert sizes == {
        "renda_resnet56_curve": 3 * 3,  # FT, LRW, WR(t=150) x 3 seeds
        "renda_resnet56_retrain_time": 3 * 10 * 3,  # methods x t x seeds
        "renda_resnet56_oneshot": 3 * 10 * 3,  # methods x densities x seeds
        "lehua_restarting": 4 * 2 * 3 * 3,  # methods x criteria x sparsities x seeds
        "zimmer_bimp": 2 * 3 * 3,  # ALLR (BIMP), LLR x sparsities x seeds
    }


@pytest.mark.parametrize("name", ["renda_resnet56_curve", "renda_resnet56_retrain_time"])
def test_renda_presets_share_one_dense_model_per_seed(name, preset_checks):
    """Every job of a seed has the same dense hash, and every WR rewind point is among the
    snapshots any job keeps, so whichever job trains a seed's dense model serves them all."""
    for future in preset_checks.values():
        future.result()
    jobs = [j for j in _jobs(["-m", f"experiment={name}"])[0] if "seed=0" in j]
    cfgs = [compose(*j) for j in jobs]
    assert len({dense_hash(c) for c in cfgs}) == 1
    kept = {tuple(c.train.snapshot_epochs) for c in cfgs}
    assert len(kept) == 1
    assert {e for c in cfgs for e in rewind_epochs(c)} <= set(kept.pop())
    if name == "renda_resnet56_curve":
        got = sorted((c.method.name, retrain_epochs(c)) for c in cfgs)
        assert got == [("ft", 182.0), ("lrw", 182.0), ("wr", 150.0)]


def test_a_sweeps_jobs_compose_as_hydra_composes_each_one():
    """Prevalidation composes each set of config-group choices once and applies the jobs' values
    with Hydra's own function: every job must equal Hydra's composition of it, and a bad value
    must still fail with one line naming its key."""
    from prune_cli.cli import _compose, _compose_jobs, _jobs, _same, prevalidate

    argv = [
        "-m",
        "experiment=quickstart",
        "method=ft,lrw",
        "seed=1",
        "train.lr=0.1,1e-2",
        "train.schedule.milestones=[1,2],[3]",
        "pruning.levels=2",
        "+tags=[a,b]",
    ]
    jobs, name, config_dir, multirun = _jobs(argv)
    assert multirun and len(jobs) == 2 * 2 * 2
    fast = list(_compose_jobs(name, config_dir, jobs))
    for job, cfg in zip(jobs, fast, strict=True):
        assert _same(cfg, _compose(name, config_dir, job)), job
    assert {(c.method.name, c.seed, c.train.lr) for c in fast} == {
        (m, 1, lr) for m in ("ft", "lrw") for lr in (0.1, 0.01)
    }
    line = prevalidate(["-m", "experiment=quickstart", "train.epochs=2,abc"], dry_run=True)
    assert line is not None and "train.epochs" in line and "\n" not in line
