"""The experiment presets (conf/experiment/*.yaml) and the pruning presets of the paper grids.

(a) Every shipped preset composes, and every job of its sweep composes and validates: the real
    ``prevalidate`` of prune-run on the sweep pinned to its first point (under debug=tiny, so the
    multirun path, the sweep directory and the job checks all run), then every job of the grid,
    composed once per combination of config-group choices (Hydra's compose costs ~0.3 s and a
    grid has up to 1,152 jobs) with the job's value overrides applied on top, as Hydra applies
    them after the defaults, and validated at full size (``config.validate``; jobs that differ
    only in their seed once, each seed once); each group combination also shrunk by debug=tiny,
    validated and checked against its model (``checks.check_job``). The job count a preset's
    comment states must be its grid's; a paper preset's own values must be its first point.
(b) Every preset runs end to end as one job, the first point of its grid (on the command line),
    under debug=tiny through the real CLI in a subprocess (``python -m prune_cli.cli
    experiment=NAME <first point> debug=tiny``, one OpenMP thread), which must exit 0 and leave a
    complete results.jsonl. A module-wide dense cache lets presets with the same tiny dense model
    share it. ChannelPruner presets run with ``pruning.measure_inference=false``: the
    dense-vs-pruned timing (2 x 25 forward passes of a batch of 64) is not shrunk by debug=tiny
    and takes ~55 s of a ResNet-110 run on one thread; it changes no result.
(c) The pruning presets translated from the authors' code, against that code's rules.

This file holds the CIFAR and digits presets (~6 min alone on the 2-core machine, of which ~4.3
min are the 17 subprocess runs of (b), ~10 s each of start-up alone);
tests/test_presets_imagenet.py the ImageNet ones (~4 min), so that `-n 2 --dist loadfile` runs
them on both workers.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import sys
from collections import defaultdict
from pathlib import Path

import procs
import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from prune_cli.checks import check_job
from prune_cli.cli import _compose, _jobs, prevalidate
from prune_cli.config import CONF_DIR, apply_debug, n_levels, validate
from prune_cli.pruning import Network, build_pruner
from prune_cli.pruning.channels import filter_counts
from prune_cli.rundir import check_results, is_complete
from prune_cli.store import config_hash

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
IMAGENET = [n for n in EXPERIMENTS if "imagenet" in n]
HERE = [n for n in EXPERIMENTS if n not in IMAGENET]
PAPER = ("lehua2021_", "zimmer2023_")  # presets of a paper's table or figure


def _is_group(key: str) -> bool:
    """Whether an override key selects a config group option (``method=...``), not a value."""
    return (CONF_DIR / key.split("@")[0]).is_dir()


def grid(name: str) -> tuple[list[list[str]], dict[tuple[str, ...], list[list[tuple]]]]:
    """Every job of the preset's sweep (its override lists, as prune-run expands them), and the
    jobs by group choices: ``{(group overrides...): [[(key, value), ...] per job]}``."""
    jobs = _jobs(["-m", f"experiment={name}"])[0]
    parser = OverridesParser.create()
    combos: dict[tuple[str, ...], list[list[tuple]]] = defaultdict(list)
    for job in jobs:
        parsed = parser.parse_overrides(job)
        assert not any(o.is_delete() or o.is_add() for o in parsed), job
        groups = tuple(o.input_line for o in parsed if _is_group(o.key_or_group))
        values = [(o.key_or_group, o.value()) for o in parsed if not _is_group(o.key_or_group)]
        combos[groups].append(values)
    return jobs, combos


def stated_jobs(name: str) -> int | None:
    """The job count a preset's comment states ("... = 288 jobs."), None if it states none."""
    text = (CONF_DIR / "experiment" / f"{name}.yaml").read_text()
    comment = " ".join(line[1:] for line in text.splitlines() if line.startswith("#"))
    found = re.findall(r"(\d[\d,]*) jobs\b", comment)
    return int(found[-1].replace(",", "")) if found else None


def check_preset_grid(name: str, cache: Path) -> None:
    """(a) for one preset (see the module docstring)."""
    jobs, combos = grid(name)
    stated = stated_jobs(name)
    if name.startswith(PAPER):
        assert stated is not None, f"{name}: its comment states no job count"
    if stated is not None:
        assert len(jobs) == stated, f"{name}: {len(jobs)} jobs, its comment says {stated}"
    if name.startswith(PAPER):  # a single run of the preset is its grid's first point
        single = _compose("config", None, [f"experiment={name}"])
        assert config_hash(single) == config_hash(_compose("config", None, jobs[0])), name
    # the real prevalidation of prune-run, on the sweep pinned to its first point
    first = [o for o in jobs[0] if not o.startswith("experiment=")]
    argv = ["-m", f"experiment={name}", *first, "debug=tiny", f"runtime.cache_dir={cache}"]
    assert prevalidate(argv, dry_run=True) is None
    # every job: its group choices composed, its values applied, validated at full size. A seed
    # enters validation only through its range: the jobs that differ only in their seed are
    # validated once, and each seed once, with the first group combination.
    seeds = sorted({v for jv in combos.values() for values in jv for k, v in values if k == "seed"})
    for number, (groups, jobs_values) in enumerate(combos.items()):
        cfg = _compose("config", None, list(groups))
        distinct = dict.fromkeys(
            tuple(kv for kv in values if kv[0] != "seed") for values in jobs_values
        )
        checks = [*distinct, *([(("seed", s),) for s in seeds] if number == 0 else [])]
        for values in checks:
            # each job of a group combination sets the same keys: cfg is updated in place
            for key, value in values:
                OmegaConf.update(cfg, key, value, merge=False)
            try:
                validate(cfg)
            except Exception as e:  # noqa: BLE001 - name the job
                pytest.fail(f"{name}: job {[*groups, *(f'{k}={v}' for k, v in values)]}: {e}")
        tiny = apply_debug(copy.deepcopy(cfg))
        validate(tiny)
        check_job(tiny, here=True)


def run_preset(name: str, root: Path, cache: Path) -> None:
    """(b) for one preset: its first job, shrunk by debug=tiny, through the real CLI."""
    first = _jobs(["-m", f"experiment={name}"])[0][0]
    overrides = [
        f"experiment={name}",
        *(o for o in first if not o.startswith("experiment=")),
        "debug=tiny",
    ]
    cfg = _compose("config", None, list(overrides))
    if str(cfg.pruning._target_).endswith("ChannelPruner"):
        overrides.append("pruning.measure_inference=false")
        cfg = _compose("config", None, list(overrides))
    run_dir = root / "run"
    argv = [
        sys.executable,
        "-m",
        "prune_cli.cli",
        *overrides,
        "runtime.progress=false",
        f"runtime.cache_dir={cache}",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PRUNE_CLI_DATA": str(root / "data")}
    proc = procs.run(argv, cwd=root, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"{' '.join(argv[3:])}\n{proc.stdout}\n{proc.stderr}"
    assert not (run_dir / "failed.json").exists()
    chash = json.loads((run_dir / "run.json").read_text())["config_hash"]
    levels = n_levels(cfg)
    rows = check_results(run_dir, chash, levels)
    assert is_complete(rows, levels), f"{name}: {len(rows)} rows for {levels} levels"
    assert [r["level"] for r in rows] == list(range(levels + 1))
    assert all(r["method"] == cfg.method.name and r["pruning"] == cfg.pruning.name for r in rows)
    assert all(math.isfinite(r["acc"]) for r in rows)
    assert (run_dir / "summary.txt").is_file()


@pytest.fixture(scope="module")
def dense_cache(tmp_path_factory) -> Path:
    """One dense cache for the module's runs: presets of the same tiny dense model share it."""
    return tmp_path_factory.mktemp("dense-cache")


# ----------------------------------------------------------------------------------------------
# (a) and (b)
# ----------------------------------------------------------------------------------------------


def test_the_presets_are_split_between_the_two_files():
    assert EXPERIMENTS and IMAGENET and set(HERE) | set(IMAGENET) == set(EXPERIMENTS)


# the ResNet-110 and VGG-16 siblings of the ResNet-56 grids (same keys, other model and pruning
# presets): in the slow group, like the runs
SIBLINGS = {n for n in HERE if n.startswith(PAPER) and ("resnet110" in n or "vgg16" in n)}


@pytest.mark.parametrize(
    "name", [n if n not in SIBLINGS else pytest.param(n, marks=pytest.mark.slow) for n in HERE]
)
def test_every_job_of_the_preset_composes_and_validates(name, tmp_path):
    check_preset_grid(name, tmp_path / "cache")


# every preset runs in the slow group (`uv run pytest -m slow`); these few in every suite run
QUICK = {"lehua2021_pfec_cifar10_resnet56", "zimmer2023_bimp_cifar10_resnet56", "quickstart"}


@pytest.mark.parametrize(
    "name", [n if n in QUICK else pytest.param(n, marks=pytest.mark.slow) for n in HERE]
)
def test_the_preset_runs_end_to_end_under_debug_tiny(name, tmp_path, dense_cache):
    run_preset(name, tmp_path, dense_cache)


# ----------------------------------------------------------------------------------------------
# (c) The PFEC presets against Le & Hua's code
# ----------------------------------------------------------------------------------------------

# lehduong/NPTM@e1b8ec3 norm-pruning/cifar/l1-norm-pruning/res56prune.py and res110prune.py:
# `skip[v]` (layer ids kept whole) and `prune_prob[v]` (per-stage ratios) of each variant.
THEIR_RESNET = {
    56: {
        "a": ([16, 20, 38, 54], [0.1, 0.1, 0.1]),
        "b": ([16, 18, 20, 34, 38, 54], [0.6, 0.3, 0.1]),
        "c": ([16, 18, 20, 34, 38, 54], [0.6, 0.5, 0.4]),
        "d": ([16, 18, 20, 34, 38, 54], [0.6, 0.6, 0.6]),
        "i": ([], [0.1, 0.15, 0.2]),
    },
    110: {
        "a": ([36], [0.5, 0.0, 0.0]),
        "b": ([36, 38, 74], [0.5, 0.4, 0.3]),
        "c": ([36, 38, 74], [0.5, 0.5, 0.5]),
        "d": ([36, 38, 74], [0.5, 0.6, 0.7]),
        "i": ([], [0.1, 0.15, 0.2]),
    },
}


def their_resnet_cfg(depth: int, skip: list[int], prob: list[float]) -> dict[str, int]:
    """The filters each block's conv1 keeps in their code: layer ids count the convs (stem = 1,
    then conv1, conv2 of each block), even ids are conv1s, the stage is "id <= 2n / <= 4n / else"
    (n blocks per stage), and a conv keeps int(out_channels * (1 - p)) unless its id is skipped."""
    n = (depth - 2) // 6
    kept = {}
    for block in range(3 * n):
        layer_id = 2 + 2 * block
        stage = 0 if layer_id <= 2 * n else 1 if layer_id <= 4 * n else 2
        width = 16 * 2**stage
        keep = width if layer_id in skip else int(width * (1 - prob[stage]))
        kept[f"layer{block // n + 1}.{block % n}.conv1"] = keep
    return kept


def preset_keeps(model: torch.nn.Module, pruning: str, shape=(3, 32, 32)) -> dict[str, int]:
    """The filters every prunable conv keeps at a pruning preset's first level."""
    pruner = build_pruner(_compose("config", None, [f"pruning={pruning}"]).pruning)
    counts = filter_counts(
        model, pruner.stage_ratios, pruner.skip, list(shape), pruner.layer_ratios
    )
    convs = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    return {n: m.out_channels - counts.get(n, 0) for n, m in convs.items()}


@pytest.mark.parametrize("depth", [56, 110])
def test_resnet_pfec_presets_keep_the_filters_their_code_keeps(depth):
    from prune_cli.models.cifar_resnet import cifar_resnet

    model = cifar_resnet(depth=depth)
    for variant, (skip, prob) in THEIR_RESNET[depth].items():
        name = "l1_filter_pfec_i" if variant == "i" else f"l1_filter_resnet{depth}_{variant}"
        ours = preset_keeps(model, name)
        theirs = their_resnet_cfg(depth, skip, prob)
        assert {n: ours[n] for n in theirs} == theirs, name
        # nothing else is pruned: the stem and every conv2 keep all their filters
        assert all(
            k == model.get_submodule(n).out_channels for n, k in ours.items() if n not in theirs
        )


def test_iterative_pfec_levels_reprune_what_is_left_as_their_code():
    """pruning=l1_filter_pfec_i on ResNet-56: 8 levels, each keeping int(n (1 - r)) of the n
    filters the previous level left (their res56prune.py run on the previous checkpoint)."""
    from prune_cli.models.cifar_resnet import cifar_resnet

    cfg = _compose("config", None, ["model=resnet56", "pruning=l1_filter_pfec_i"]).pruning
    cfg = OmegaConf.merge(cfg, {"measure_inference": False})
    pruner = build_pruner(cfg)
    assert pruner.levels == 8
    model = cifar_resnet(depth=56)
    pruner.attach(Network(model, [3, 32, 32], lambda: cifar_resnet(depth=56)))
    widths = {1: 16, 2: 32, 3: 64}
    for level in range(1, 9):
        pruner.prune(level, torch.Generator().manual_seed(level))
        widths = {s: int(w * (1 - (0.1, 0.15, 0.2)[s - 1])) for s, w in widths.items()}
        for stage, w in widths.items():
            assert model.get_submodule(f"layer{stage}.3.conv1").out_channels == w, (level, stage)
    assert widths[1] == 5  # 16, 14, 12, 10, 9, 8, 7, 6, 5


VGG_CFG = {  # lehduong/NPTM@e1b8ec3 norm-pruning/cifar/l1-norm-pruning/vggprune.py, cfg of -v A/B/C
    "a": [32, 64, "M", 128, 128, "M", 256, 256, 256, "M", 256, 256, 256, "M", 256, 256, 256],
    "b": [32, 64, "M", 128, 128, "M", 196, 196, 196, "M", 196, 196, 256, "M", 256, 256, 256],
    "c": [32, 64, "M", 64, 128, "M", 128, 128, 128, "M", 196, 196, 196, "M", 196, 196, 196],
}


@pytest.mark.parametrize("variant", sorted(VGG_CFG))
def test_vgg16_pfec_presets_keep_exactly_their_cfg(variant):
    from prune_cli.models.vgg import PLANS, cifar_vgg

    model = cifar_vgg(depth=16)
    kept = preset_keeps(model, f"l1_filter_vgg16_{variant}")
    ours = [x if x == "M" else kept[f"layers.{i}.conv"] for i, x in enumerate(PLANS[16])]
    assert ours == VGG_CFG[variant]


def test_random_filter_presets_have_the_counts_of_their_l1_presets():
    names = sorted(p.stem for p in (CONF_DIR / "pruning").glob("random_filter_*.yaml"))
    assert len(names) == 9
    for name in names:
        rand = OmegaConf.to_container(_compose("config", None, [f"pruning={name}"]).pruning)
        l1 = name.replace("random_filter_", "l1_filter_")
        ref = OmegaConf.to_container(_compose("config", None, [f"pruning={l1}"]).pruning)
        assert rand.pop("name") == name and ref.pop("name") == l1
        assert rand.pop("criterion")["_target_"] == "prune_cli.pruning.criteria.random_filter"
        assert ref.pop("criterion")["_target_"] == "prune_cli.pruning.criteria.l1_filter"
        assert rand == ref, name


def test_the_lehua2021_overlay_names_only_shipped_pruning_presets():
    """Every pruning preset a published Le & Hua cell names (report --reference lehua2021) exists,
    and a preset of an experiment here sweeps each of them."""
    from prune_cli.report.references import load_reference

    named = {c.pruning for c in load_reference("lehua2021").cells if c.pruning}
    assert named, "no cell names a preset"
    shipped = {p.stem for p in (CONF_DIR / "pruning").glob("*.yaml")}
    assert named <= shipped, named - shipped
    swept = set()
    for name in IMAGENET:
        params = OmegaConf.load(CONF_DIR / "experiment" / f"{name}.yaml").hydra.sweeper.params
        swept |= set(str(params.get("pruning", "")).split(","))
    assert named <= swept, named - swept


@pytest.mark.parametrize("name", [n for n in EXPERIMENTS if n.startswith(PAPER)])
def test_paper_presets_name_their_sources(name):
    """A paper preset's comment names the settings files it follows and its grid's size."""
    text = (CONF_DIR / "experiment" / f"{name}.yaml").read_text()
    comment = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    paper = name.split("_")[0]
    assert f"../shared/reference/{paper}/" in comment, name
    assert stated_jobs(name) is not None and "Cost:" in comment, name
