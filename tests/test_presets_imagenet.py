"""The ImageNet experiment presets (conf/experiment/*imagenet*.yaml): (a) every job of each sweep
composes and validates, (b) each preset runs end to end as one job under debug=tiny (64x64
synthetic images, 10 classes) through the real CLI; see tests/test_presets.py, which holds the
helpers and the other presets (two files, so that `-n 2 --dist loadfile` runs them on both
workers). And the Taylor-FO-BN presets against the reductions Le & Hua publish."""

from __future__ import annotations

import csv
from importlib import resources
from pathlib import Path

import pytest
import torchvision
from test_presets import IMAGENET, check_preset_grid, run_preset

from prune_cli.cli import _compose
from prune_cli.costs import count_flops, param_counts
from prune_cli.pruning import build_pruner
from prune_cli.pruning.channels import apply_channel_removal, filter_counts


@pytest.fixture(scope="module")
def dense_cache(tmp_path_factory) -> Path:
    """One dense cache for the module's runs: presets of the same tiny dense model share it."""
    return tmp_path_factory.mktemp("dense-cache")


@pytest.mark.parametrize(
    "name",  # the _ft siblings (FT alone, beside their preset's methods): in the slow group
    [n if not n.endswith("_ft") else pytest.param(n, marks=pytest.mark.slow) for n in IMAGENET],
)
def test_every_job_of_the_preset_composes_and_validates(name, tmp_path):
    check_preset_grid(name, tmp_path / "cache")


# every ImageNet preset runs in the slow group (`uv run pytest -m slow`); the default run composes
# and validates every job of each (and tests/test_imagenet.py runs ImageNet's loader and ResNet-18)
QUICK: set[str] = set()


@pytest.mark.parametrize(
    "name", [n if n in QUICK else pytest.param(n, marks=pytest.mark.slow) for n in IMAGENET]
)
def test_the_preset_runs_end_to_end_under_debug_tiny(name, tmp_path, dense_cache):
    run_preset(name, tmp_path, dense_cache)


def test_taylor_presets_reproduce_the_published_reductions():
    """pruning=taylor_fo_bn_resnet50_{56,72,81} remove, from torchvision's ResNet-50 at 224
    pixels, the parameters and FLOPs that Le & Hua's slide gives (to 0.1 percentage points)."""
    table = (
        resources.files("prune_cli") / "reference" / "lehua2021" / "imagenet_taylor_ft_vs_clr.csv"
    )
    with table.open(newline="") as f:
        published = {
            r["pruning_config"]: (float(r["params_reduction_pct"]), float(r["flops_reduction_pct"]))
            for r in csv.DictReader(f)
        }
    shape = [3, 224, 224]
    dense = torchvision.models.resnet50()
    p0, f0 = param_counts(dense)["total_params"], count_flops(dense, shape)["total"]
    for variant in ("56", "72", "81"):
        cfg = _compose(
            "config", None, ["model=resnet50", f"pruning=taylor_fo_bn_resnet50_{variant}"]
        )
        pruner = build_pruner(cfg.pruning)
        model = torchvision.models.resnet50()
        counts = filter_counts(model, pruner.stage_ratios, pruner.skip, shape, pruner.layer_ratios)
        apply_channel_removal(model, {n: list(range(k)) for n, k in counts.items()}, shape)
        params = 100 * (1 - param_counts(model)["total_params"] / p0)
        flops = 100 * (1 - count_flops(model, shape)["total"] / f0)
        want = published[f"Taylor-FO-BN-{variant}%"]
        assert (params, flops) == pytest.approx(want, abs=0.1), variant
