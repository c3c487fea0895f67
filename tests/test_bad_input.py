"""Bad input: exit status 2, one line `prune-run: error: ...` naming the problem, nothing started
and nothing that was there overwritten.

Config-level problems are checked in this process through `prevalidate` (what `prune-run` runs
before Hydra starts anything); a set of problems that show only when the run builds its data and
model, plus a few config-level ones, go through the real CLI in subprocesses (started together).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import procs
import pytest
import torch
from conftest import QUIET
from datafiles import write_mnist

from prune_cli.cli import prevalidate

BASE = ["experiment=quickstart"]

# (overrides, a substring the line must contain)
CONFIG = [
    # unknown groups, options and keys
    (["model=bogus"], "model/bogus"),
    (["method=bogus"], "method/bogus"),
    (["dataset=bogus"], "dataset/bogus"),
    (["pruning=bogus"], "pruning/bogus"),
    (["experiment=nope"], "experiment/nope"),
    (["launcher=bogus"], "launcher/bogus"),
    (["train.bogus_key=1"], "train.bogus_key"),
    (["bogus=1"], "bogus"),
    (["method.name=bogus"], "method.name"),
    (["pruning.criterion=biggest"], "pruning.criterion"),
    (["pruning.criterion._target_=prune_cli.pruning.criteria.biggest"], "criteria.biggest"),
    (["pruning._target_=prune_cli.pruning.NoPruner"], "pruning._target_"),
    (["pruning._target_=prune_cli.pruning.Network"], "not an option of Network"),
    (["pruning.scope=blockwise"], "pruning.scope=blockwise"),
    (["+pruning.one_shot=true"], "one_shot"),
    (["train.schedule.kind=exp"], "train.schedule.kind"),
    (["train.precision=fp16"], "train.precision"),
    (["runtime.device=tpu"], "device"),
    # wrong types
    (["train.epochs=abc"], "train.epochs"),
    (["train.epochs=3.5"], "train.epochs"),
    (["train.lr=fast"], "train.lr"),
    (["pruning.levels=1.5"], "pruning.levels"),
    (["runtime.progress=maybe"], "progress"),
    (["seed=abc"], "seed"),
    (["train.schedule.milestones=[a]"], "train.schedule.milestones"),
    # out of range
    (["train.epochs=0"], "train.epochs"),
    (["train.batch_size=-1"], "train.batch_size"),
    (["runtime.eval_batch_size=0"], "runtime.eval_batch_size"),
    (["train.lr=-0.1"], "train.lr"),
    (["train.momentum=1.0"], "train.momentum"),
    (["train.weight_decay=-1"], "train.weight_decay"),
    (["pruning.rate=1.5"], "pruning.rate"),
    (["pruning.rate=0"], "pruning.rate"),
    (["pruning.levels=0"], "pruning.levels"),
    (["pruning.rate=null", "pruning.target_sparsity=1"], "pruning.target_sparsity"),
    (["method.retrain_epochs=0"], "method.retrain_epochs"),
    (["method.warmup_fraction=1.5"], "method.warmup_fraction"),
    (["method.eta_min_ratio=0"], "method.eta_min_ratio"),
    (["train.schedule.warmup_epochs=10"], "train.schedule.warmup_epochs"),
    (["train.snapshot_epochs=[-1]"], "train.snapshot_epochs"),
    # impossible combinations
    (["pruning.target_sparsity=0.5"], "exactly two"),
    (["pruning.rate=null", "pruning.levels=null"], "exactly two"),
    # (the quick start sets pruning.rate and pruning.levels: one-shot on top of it unsets them)
    (
        [
            "pruning=one_shot",
            "pruning.rate=null",
            "pruning.levels=1",
            "pruning.target_sparsity=null",
        ],
        "pruning.target_sparsity",
    ),
    (["method=wr", "method.retrain_epochs=500"], "method.retrain_epochs"),
    (["method=lrw", "method.retrain_epochs=11"], "method.retrain_epochs"),
    (["method=bimp", "method.budget_epochs=5"], "method.budget_epochs"),
    (["method=wr", "method.retrain_epochs=2.5"], "whole epoch"),
    # structured pruning, checked on a fresh model before the dense training (the quick start's
    # pruning.rate is no option of the channel pruner: removed with ~pruning.rate)
    (
        [
            *["model=resnet20", "dataset=synthetic", "pruning=l1_filter", "~pruning.rate"],
            "pruning.stage_ratios=[0.99,0.1,0.1]",
        ],
        "pruning.stage_ratios",
    ),
    (
        [
            *["model=resnet20", "dataset=synthetic", "pruning=l1_filter", "~pruning.rate"],
            "pruning.stage_ratios=[0.1,1.0,0.1]",
        ],
        "pruning.stage_ratios",
    ),
    (
        [
            *["model=resnet20", "dataset=synthetic", "pruning=l1_filter", "~pruning.rate"],
            "pruning.skip=[layer9.conv1]",
        ],
        "pruning.skip",
    ),
    (
        ["pruning=l1_filter", "~pruning.rate"],
        "pruning.stage_ratios: 3 ratios given, the model has 0 stages",
    ),
    # an option of another pruner (the quick start's level plan of mask pruning)
    (
        ["model=resnet20", "dataset=synthetic", "pruning=l1_filter"],
        "pruning.rate: not an option of ChannelPruner",
    ),
    (["method=bimp", "method.retrain_epochs=2"], "method.retrain_epochs"),
    # malformed command lines, sweeps with one bad point
    (["train.epochs"], "train.epochs"),
    (["-m", "method=ft,bogus"], "method/bogus"),
    (["-m", "pruning.rate=0.2,2"], "pruning.rate"),
    pytest.param(
        ["+train.epoch=3"],
        "train.epoch",
        id="+train.epoch=3",
    ),
    pytest.param(
        ["train.schedule.gamma=-1"],
        "train.schedule.gamma",
        id="train.schedule.gamma=-1",
    ),
    pytest.param(
        ["method=ft", "-m", "seed=0,1"],
        "unrecognized arguments",
        id="overrides then -m",
    ),
    # a sweep of no job, an empty element of a sweep
    (["-m", "seed=range(0,0)"], "seed: the sweep 'seed=range(0,0)' has no values"),
    (["-m", "hydra.sweeper.params.seed=range(3,1)"], "the sweep"),
    (["-m", "method=ft,"], "method: cannot parse the override 'method=ft,'"),
    (["-m", "method=ft,,wr"], "method: cannot parse the override 'method=ft,,wr'"),
    (["method=ft,"], "method: cannot parse the override"),
    # devices that do not exist (here: cuda:999 on any machine, cpu and mps have index 0 only)
    (["runtime.device=cpu:7"], "runtime.device=cpu:7"),
    (["runtime.device=mps:1"], "runtime.device=mps:1"),
    (["runtime.device=cuda:999"], "runtime.device=cuda:999"),
    (["runtime.device=cuda:x"], "runtime.device=cuda:x"),
    # bounds on epochs, levels and seeds
    (["train.epochs=100000"], "train.epochs"),
    (["train.epochs=1e8"], "train.epochs"),
    (["method.retrain_epochs=20000"], "method.retrain_epochs"),
    (["pruning.levels=100000"], "pruning.levels=100000"),
    (
        ["pruning.rate=0.001", "pruning.levels=null", "pruning.target_sparsity=0.999"],
        "pruning.rate=0.001",
    ),
    (["seed=9223372036854775809"], "seed"),
    (["seed=-1"], "seed"),
    # a level plan whose density leaves less than one weight (LeNet: 50,200 prunable weights)
    (["pruning.levels=90"], "pruning.levels=90"),
    (
        ["pruning=layerwise_magnitude", "pruning.levels=40"],
        "pruning.levels=40",
    ),
    (
        ["pruning.scope=layerwise", "pruning.levels=40"],
        "pruning.levels=40",
    ),
    (
        ["pruning=one_shot", "pruning.target_sparsity=0.99999999"],
        "pruning.target_sparsity",
    ),
    (
        ["pruning.levels=1", "pruning.rate=null", "pruning.target_sparsity=0.99999999"],
        "pruning.target_sparsity",
    ),
    # one-shot pruning (one level) with the quick start's level plan: exactly two of the three;
    # the old `pruning.one_shot` key is gone (one-shot is `pruning=one_shot`: pruning.levels=1)
    (["pruning=one_shot"], "exactly two"),
    (["pruning=one_shot", "pruning.rate=0.2"], "exactly two"),
    (["pruning.one_shot=true", "pruning.target_sparsity=0.9"], "pruning.one_shot"),
    # directories
    (["hydra.run.dir=''"], "hydra.run.dir"),
    (["-m", "hydra.sweep.dir=''"], "hydra.sweep.dir"),
    (["-m", "hydra.sweep.subdir=''"], "hydra.sweep.subdir"),
    (["runtime.cache_dir=''"], "cache_dir"),
    (["runtime.cache_dir= "], "cache_dir"),
    (["runtime.cache_dir=" + __file__], "cache_dir"),
    (["runtime.cache_dir=" + __file__ + "/cache"], "cache_dir"),
    # recipes
    (["train.schedule.milestones=[20,5]"], "train.schedule.milestones"),
    (["train.schedule.milestones=[5,5]"], "train.schedule.milestones"),
    (["train.schedule.milestones=[-1,5]"], "train.schedule.milestones"),
    (["train.snapshot_epochs=[1000]"], "train.snapshot_epochs"),
    (["train.lr_reference_batch=0"], "train.lr_reference_batch"),
    # the model against the data, checked by a forward pass of a dummy batch before anything runs
    (["model=resnet20", "dataset=digits"], "model=resnet20 on dataset=digits"),
    (["model.net.input_shape=[1,28,28]"], "dataset.input_shape"),
    (["model.net.num_classes=7"], "dataset.num_classes"),
    (["model.net.num_classes=-1"], "model.net"),
]


def _id(case) -> str:
    return case.id if hasattr(case, "id") else " ".join(case[0])


def _argv(args: list[str]) -> list[str]:
    """The command line: the quick start plus ``args`` (a leading ``-m`` stays first)."""
    return ["-m", *BASE, *args[1:]] if args[:1] == ["-m"] else [*BASE, *args]


@pytest.mark.parametrize(("args", "names"), CONFIG, ids=[_id(c) for c in CONFIG])
def test_config_error_is_one_line_naming_the_key(args, names):
    argv = _argv(args)
    try:
        line = prevalidate(argv)
    except SystemExit as e:
        pytest.fail(f"prevalidate exited ({e.code}) instead of returning one line")
    assert line is not None, f"{argv}: accepted"
    assert "\n" not in line and names in line, line


def test_good_input_passes_prevalidation():
    assert prevalidate(BASE) is None
    assert prevalidate(["-m", *BASE]) is None  # the quick start's own sweep: ft, wr, lrw


@pytest.mark.parametrize(
    "args",
    [
        ["pruning=one_shot"],
        ["pruning=random"],
        ["pruning=layerwise_magnitude"],
        ["pruning.scope=layerwise"],
        ["pruning.levels=1", "pruning.rate=null", "pruning.target_sparsity=0.9"],
        ["model=resnet20", "dataset=synthetic", "pruning=l1_filter"],
        ["model=resnet56", "pruning=l1_filter_resnet56_b"],
        *[[*BASE, "pruning=one_shot", "pruning.rate=null", "pruning.levels=1"]],
        *[[*BASE, "pruning=random"], [*BASE, "pruning=layerwise_magnitude"]],
    ],
    ids=" ".join,
)
def test_pruning_presets_pass_prevalidation(args, tmp_path):
    """Each preset on its own (LeNet-300-100 unless the case names a model), or over the quick
    start, whose level plan a one-shot preset must unset."""
    base = (
        []
        if "experiment=quickstart" in args or any(a.startswith("model=") for a in args)
        else ["model=lenet300_100"]
    )
    assert prevalidate([*base, *args, f"runtime.cache_dir={tmp_path}"]) is None


EXPERIMENTS = sorted(
    p.stem for p in (Path(__file__).parent.parent / "conf" / "experiment").iterdir()
)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_preset_passes_prevalidation(name, tmp_path):
    """Each preset as a single run (its sweep's grid: see the README's timings)."""
    assert prevalidate([f"experiment={name}", f"runtime.cache_dir={tmp_path}"]) is None


def test_a_run_shorter_than_its_recipe_keeps_the_snapshots_it_reaches(tmp_path):
    from conftest import compose

    assert list(compose("model=resnet56", "train.epochs=100").train.snapshot_epochs) == [
        *[12, 32, 52, 72, 92]
    ]
    assert list(compose("model=resnet56", "train.epochs=2").train.snapshot_epochs) == []
    short = [
        "model=resnet20",
        "dataset=synthetic",
        "train.epochs=2",
        f"runtime.cache_dir={tmp_path}",
    ]
    assert prevalidate(short) is None


def test_a_user_model_that_does_not_fit_the_data_is_one_line(monkeypatch):
    example = Path(__file__).parent.parent / "examples" / "user_model"
    monkeypatch.syspath_prepend(str(example))
    argv = ["-cd", str(example / "conf"), "model=tiny_convnet"]
    assert prevalidate(argv) is None
    line = prevalidate([*argv, "model.net.input_shape=[3,8,8]"])
    assert line is not None and "\n" not in line
    assert "model=tiny_convnet on dataset=digits" in line and "dataset.input_shape" in line


def test_the_device_is_checked_where_the_job_runs():
    from conftest import compose

    from prune_cli.checks import check_job, runs_here
    from prune_cli.config import ConfigError

    cfg = compose(*BASE, "runtime.device=cuda:999")
    with pytest.raises(ConfigError, match="runtime.device=cuda:999"):
        check_job(cfg)
    check_job(cfg, here=False)  # a SLURM job: its node's GPUs are not this machine's

    def launcher(*overrides: str) -> str:
        return compose(*BASE, *overrides, hydra_cfg=True).hydra.launcher._target_

    assert runs_here(None) and runs_here(launcher())  # Hydra's basic launcher
    assert runs_here(launcher("launcher=local")) and runs_here(launcher("launcher=submitit_local"))
    assert not runs_here(launcher("launcher=slurm"))
    assert not runs_here("hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher")


def test_cuda_indices_are_checked_against_this_machines_gpus(monkeypatch):
    from prune_cli.checks import check_device
    from prune_cli.config import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for ok in ("cuda", "cuda:0", "cuda:1", "cpu", "auto"):
        check_device(ok)
    with pytest.raises(
        ConfigError, match=r"runtime.device=cuda:2: this machine has 2 CUDA devices"
    ):
        check_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="runtime.device=cuda: no CUDA device"):
        check_device("cuda")


def test_models_are_built_once_per_distinct_model_config(monkeypatch, tmp_path):
    from prune_cli import checks

    built = []
    build = checks.build_model
    monkeypatch.setattr(checks, "_PLANS", set())
    monkeypatch.setattr(checks, "_MODELS", {})
    monkeypatch.setattr(checks, "build_model", lambda cfg: built.append(1) or build(cfg))
    sweep = ["-m", *BASE, "seed=0,1,2", "method=ft,lrw", f"runtime.cache_dir={tmp_path}"]
    assert prevalidate(sweep) is None
    assert len(built) == 1
    assert prevalidate([*sweep, "pruning=global_magnitude,random"]) is None
    assert len(built) == 1
    assert prevalidate([*sweep, "model.prune_exclude=[fc1],[fc2]"]) is None
    assert len(built) == 3


# ----------------------------------------------------------------------------------------------
# Through the real CLI
# ----------------------------------------------------------------------------------------------

OTHER_RUN = {
    "run.json": json.dumps({"config_hash": "0" * 64, "format": 2}) + "\n",
    "results.jsonl": json.dumps({"level": 0, "acc": 0.5}) + "\n",
    "summary.txt": "another run's table\n",
    ".hydra/config.yaml": "another: run\n",
}


def _another_run(tmp: Path) -> list[str]:
    for name, text in OTHER_RUN.items():
        (tmp / "run" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / "run" / name).write_text(text)
    (tmp / "run" / "checkpoints").mkdir()
    torch.save({"w": torch.ones(3)}, tmp / "run" / "checkpoints" / "level_00.pt")
    return []


def _earlier_run(tmp: Path) -> list[str]:
    """A run directory of an earlier prune-cli: its run.json has no format."""
    _another_run(tmp)
    (tmp / "run" / "run.json").write_text(json.dumps({"config_hash": "0" * 64}) + "\n")
    return []


def _torn_mnist(tmp: Path) -> list[str]:
    raw = write_mnist(tmp / "mnist", n_train=20, n_test=10)
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:500])
    return ["dataset=mnist", f"dataset.root={tmp / 'mnist'}", "dataset.download=false"]


def _no_mnist(tmp: Path) -> list[str]:
    return ["dataset=mnist", f"dataset.root={tmp / 'nowhere'}", "dataset.download=false"]


# name: (setup returning extra overrides, or plain overrides; a substring of the line)
CLI = {
    "unknown group option": (["model=bogus"], "model/bogus"),
    "exclusion naming no layer": (["model.prune_exclude=[fc9]"], "model.prune_exclude"),
    "classes differ from the data": (["dataset.num_classes=5"], "dataset.num_classes"),
    "loader that cannot be imported": (
        ["dataset.loader._target_=nope.load"],
        "dataset.loader._target_",
    ),
    "missing data, no download": (_no_mnist, "nowhere"),
    "torn data file": (_torn_mnist, "train-images-idx3-ubyte"),
    "run dir holding another config's run": (_another_run, "another configuration's run"),
    "run dir of an earlier prune-cli": (_earlier_run, "written by an earlier prune-cli"),
    "input shape differs from the data": (["dataset.input_shape=[3,32,32]"], "dataset.input_shape"),
    "device that does not exist": (["runtime.device=cpu:7"], "runtime.device=cpu:7"),
    "model that cannot take the data": (
        ["model=resnet20", "dataset=digits"],
        "model=resnet20 on dataset=digits",
    ),
    "density below one weight": (["pruning.levels=90"], "pruning.levels=90"),
    "one-shot with a level plan": (["pruning=one_shot"], "exactly two"),
    "removed one_shot key": (["pruning.one_shot=true"], "pruning.one_shot"),
    "sweep of no job": (["-m", "seed=range(0,0)"], "seed"),
    "empty sweep element": (["-m", "method=ft,"], "method=ft,"),
}


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory) -> dict[str, tuple]:
    """Every CLI case started at once (each in its own directory); their results."""
    started = {}
    for name, (how, _) in CLI.items():
        tmp = tmp_path_factory.mktemp("bad")
        extra = how(tmp) if callable(how) else how
        sweep, extra = (extra[:1], extra[1:]) if extra[:1] == ["-m"] else ([], extra)
        argv = [  # a sweep's -m goes first; its directory is then tmp/multirun/quickstart
            *[sys.executable, "-m", "prune_cli.cli", *sweep, *QUIET],
            *[f"runtime.cache_dir={tmp / 'cache'}", f"hydra.run.dir={tmp / 'run'}", *BASE, *extra],
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PRUNE_CLI_DATA": str(tmp / "data")}
        before = snapshot(tmp)
        started[name] = (
            procs.Popen(argv, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE),
            tmp,
            before,
        )
    out = {}
    for name, (p, tmp, before) in started.items():
        stdout, stderr = p.communicate(timeout=600)
        out[name] = (p.returncode, stdout.decode(), stderr.decode(), tmp, before)
    return out


def snapshot(tmp: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in tmp.rglob("*") if p.is_file()}


CLI_PARAMS = list(CLI)


@pytest.mark.parametrize("case", CLI_PARAMS)
def test_cli_bad_input_exits_2_with_one_line_and_starts_nothing(cli_results, case):
    rc, out, err, tmp, before = cli_results[case]
    assert rc == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prune-run: error:"), err
    assert CLI[case][1] in lines[0], lines[0]
    # nothing started: no level recorded, no dense model trained or cached
    assert not (tmp / "cache" / "dense").exists()
    assert not any(p.name == "results.jsonl" and p not in before for p in tmp.rglob("*"))
    # nothing that was there is overwritten (Hydra's own log and config copy: see below)
    for path, data in before.items():
        if path.name != "run.log" and ".hydra" not in path.parts:
            assert path.read_bytes() == data, f"{path} was overwritten"


PREVALIDATED = [
    *["device that does not exist", "model that cannot take the data", "density below one weight"],
    *["one-shot with a level plan", "sweep of no job", "empty sweep element"],
    "removed one_shot key",
]


@pytest.mark.parametrize("case", PREVALIDATED)
def test_cli_refusal_before_hydra_writes_nothing(cli_results, case):
    rc, out, err, tmp, before = cli_results[case]
    assert rc == 2 and not before and list(tmp.rglob("*")) == [], err  # not even a directory


def test_another_configs_run_keeps_its_hydra_files(cli_results):
    rc, out, err, tmp, before = cli_results["run dir holding another config's run"]
    assert rc == 2
    assert (tmp / "run" / ".hydra" / "config.yaml").read_text() == OTHER_RUN[".hydra/config.yaml"]
