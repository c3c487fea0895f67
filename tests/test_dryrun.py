"""prune-run --dry-run: the plan names the jobs and dense models, writes nothing, and its epoch
and image counts are what the real sweep then records."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import procs
import pytest

from prune_cli.costs import count_flops
from prune_cli.dryrun import Probe, dry_run, phase_images, plan
from prune_cli.models.cifar_resnet import cifar_resnet
from prune_cli.store import DenseCache, read_rows
from tests.conftest import run_inprocess

# the quick-start sweep (FT, WR, LRW sharing one dense model), shrunk to seconds
QUICK = ["experiment=quickstart", "train.epochs=2", "pruning.levels=2"]


def no_probe(arch, cfg, device, label, num_classes) -> Probe:
    """Stands in for the throughput probe where a test needs only the counts."""
    return Probe(label, 1000.0, 5)


def files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*"))


def prune_run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    flags = [a for a in args if a.startswith("-")]
    overrides = [a for a in args if not a.startswith("-")]
    proc = procs.run(
        [sys.executable, "-m", "prune_cli.cli", *flags, *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PRUNE_CLI_DATA": str(cwd / "data"), "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """The dry run of the quick-start sweep (its output, its plan, what it left on disk), then
    the real sweep of the same command."""
    root = tmp_path_factory.mktemp("quick")
    argv = [
        "-m",
        *QUICK,
        "runtime.progress=false",
        f"runtime.cache_dir={root / 'cache'}",
        f"hydra.sweep.dir={root / 'sweep'}",
    ]
    cwd = os.getcwd()
    os.chdir(root)  # the default run and sweep directories are relative to it
    try:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            status = dry_run(argv)
        before = plan(argv, measure=no_probe)
        left = files(root)
    finally:
        os.chdir(cwd)
    prune_run(root, *argv)
    return {
        "root": root,
        "argv": argv,
        "status": status,
        "out": out.getvalue(),
        "plan": before,
        "left": left,
    }


def test_dry_run_of_the_quickstart_sweep_names_3_jobs_and_1_dense_model_and_writes_nothing(
    quickstart,
) -> None:
    out, p = quickstart["out"], quickstart["plan"]
    assert quickstart["status"] == 0
    assert quickstart["left"] == []  # no run directory, no cache entry, no .hydra: nothing
    assert "3 jobs, 1 dense model (1 to train, 0 from the cache)" in out
    assert "images/s" in out  # the probe ran on the run's device (the CPU)
    assert [j.label for j in p.jobs] == ["method=ft", "method=wr", "method=lrw"]
    assert [j.status for j in p.jobs] == ["new"] * 3
    assert len(p.dense) == 1 and [j.trains_dense for j in p.jobs] == [True, False, False]
    assert len({j.dense_key for j in p.jobs}) == 1
    for j in p.jobs:
        assert str(j.run_dir) in out
        assert [ph.name for ph in j.phases] == (["dense"] if j.index == 1 else []) + [
            "level 1",
            "level 2",
        ]


def test_counts_equal_what_the_sweep_recorded(quickstart) -> None:
    root, p = quickstart["root"], quickstart["plan"]
    sweep = root / "sweep"
    ran = sorted(r.parent for r in sweep.rglob("results.jsonl"))
    assert sorted(j.run_dir for j in p.jobs) == ran  # the same run directories
    (trainer,) = [j for j in p.jobs if j.trains_dense]
    meta = json.loads(DenseCache(root / "cache", trainer.dense_key).meta_path.read_text())
    (dense,) = [ph for ph in trainer.phases if ph.name == "dense"]
    assert (dense.epochs, dense.images) == (meta["epochs"], meta["images_seen"])
    for j in p.jobs:
        rows = read_rows(j.run_dir / "results.jsonl")
        assert rows[0]["images_seen"] == meta["images_seen"]  # level 0 is the dense model
        levels = [ph for ph in j.phases if ph.name != "dense"]
        assert sum(ph.images for ph in levels) == sum(r["images_seen"] for r in rows[1:])
        assert sum(ph.epochs for ph in levels) == sum(r["retrain_epochs"] for r in rows[1:])
        assert [ph.macs_per_image for ph in levels] == pytest.approx(
            [r["flops"] for r in rows[1:]], rel=0.05
        )  # theoretical: uniform density over the prunable layers


def test_after_the_sweep_the_dense_model_is_cached_and_the_jobs_are_complete(
    quickstart, capsys
) -> None:
    argv = quickstart["argv"]
    assert dry_run(argv) == 0
    out = capsys.readouterr().out
    assert "3 jobs, 1 dense model (0 to train, 1 from the cache)" in out
    assert "total: 0 of 3 jobs run, 0 dense trainings; 0 epochs, 0 images" in out
    p = plan(argv, measure=no_probe)
    assert [j.status for j in p.jobs] == ["complete"] * 3
    assert all(not j.phases for j in p.jobs)
    assert [d.status for d in p.dense.values()] == ["cache"]
    # a partial run resumes after its last level; a masked run needs no dense model to do so
    results = p.jobs[0].run_dir / "results.jsonl"
    level_2 = read_rows(results)[2]
    kept = results.read_text().splitlines()[:2]
    results.write_text("\n".join(kept) + "\n")
    p = plan(argv, measure=no_probe)
    first = p.jobs[0]
    assert (first.status, first.status_note) == ("partial", "resumes after level 1 of 2")
    assert [ph.name for ph in first.phases] == ["level 2"] and first.dense_note == "not needed"
    assert (first.images, first.epochs) == (level_2["images_seen"], level_2["retrain_epochs"])


def test_a_fractional_retraining_counts_the_epoch_last_batch(tmp_path) -> None:
    # digits: 1,437 training images; batch 100 gives 15 steps per epoch, the last of 37 images;
    # t = 1.5 is round(22.5) = 22 steps: one epoch (1,437) and 7 full batches
    args = [
        "experiment=quickstart",
        "train.epochs=1",
        "train.batch_size=100",
        "pruning.levels=1",
        "method=ft",
        "method.retrain_epochs=1.5",
    ]
    assert phase_images(1.5, 1437, 100) == (22, 2137)
    where = [f"runtime.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"]
    p = plan([*args, *where], measure=no_probe)
    assert not p.multirun and p.jobs[0].run_dir == tmp_path / "run"
    assert [(ph.name, ph.steps, ph.images) for ph in p.jobs[0].phases] == [
        ("dense", 15, 1437),
        ("level 1", 22, 2137),
    ]
    rows = run_inprocess(tmp_path / "run", *args)  # the real runner, same cache_dir
    assert [r["images_seen"] for r in rows] == [1437, 2137]


def test_cifar_counts_with_its_known_size_and_fetches_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PRUNE_CLI_DATA", str(tmp_path / "data"))
    args = [
        "model=resnet20",
        "train.epochs=2",
        "pruning.levels=1",
        f"runtime.cache_dir={tmp_path / 'c'}",
    ]
    p = plan(args, measure=no_probe)
    (job,) = p.jobs
    assert [ph.images for ph in job.phases] == [100_000, 100_000]  # 2 epochs of 50,000 images
    assert any("CIFAR-10's official size" in n for n in p.notes)
    assert job.phases[0].macs_per_image == count_flops(cifar_resnet(20), [3, 32, 32])["total"]
    assert files(tmp_path) == []


def test_structured_levels_count_the_smaller_network(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = [
        "model=resnet20",
        "dataset=synthetic",
        "dataset.input_shape=[3,16,16]",
        "pruning=l1_filter",
        "pruning.levels=2",
        "train.epochs=2",
        f"runtime.cache_dir={tmp_path / 'c'}",
    ]
    p = plan(args, measure=no_probe)
    macs = [ph.macs_per_image for ph in p.jobs[0].phases]
    assert macs[0] > macs[1] > macs[2]  # each level removes filters
    assert not any(ph.theoretical for ph in p.jobs[0].phases)
    assert files(tmp_path) == []


def test_bad_input_is_one_line_and_informational_commands_plan_nothing(capsys) -> None:
    assert dry_run(["pruning.levels=oops"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prune-run: error:") and err.count("\n") == 1
    assert dry_run(["--help"]) == 0
    assert "runs no job" in capsys.readouterr().out


def test_prune_run_dry_run_prints_the_plan_and_writes_nothing(tmp_path) -> None:
    # through the console entry point: prevalidation (which must not record WR's snapshot
    # request in the cache during a dry run), then the plan, then exit 0 before Hydra starts
    proc = prune_run(
        tmp_path,
        "--dry-run",
        "-m",
        *QUICK,
        f"runtime.cache_dir={tmp_path / 'cache'}",
        "runtime.progress=false",
    )
    assert "3 jobs, 1 dense model (1 to train, 0 from the cache)" in proc.stdout
    assert "multirun/quickstart/lenet300_100-digits/wr-" in proc.stdout
    assert files(tmp_path) == []
