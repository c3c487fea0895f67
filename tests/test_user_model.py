"""A user's own model, and a user's own pruning criterion, from their own config directory, as
the README shows."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import procs

EXAMPLE = Path(__file__).parent.parent / "examples" / "user_model"
CRITERION = Path(__file__).parent.parent / "examples" / "user_criterion"


def test_user_model_from_own_config_dir(tmp_path):
    shutil.copytree(EXAMPLE, tmp_path / "user")
    cwd = tmp_path / "user"
    argv = [
        sys.executable,
        "-m",
        "prune_cli.cli",
        "-cd",
        "conf",
        "model=tiny_convnet",
        "train.epochs=2",
        "pruning.levels=2",
        "runtime.progress=false",
        f"runtime.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = procs.run(argv, cwd=cwd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(x) for x in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert [r["model"] for r in rows] == ["tiny_convnet"] * 3
    assert rows[-1]["density"] < 0.65
    state = __import__("torch").load(tmp_path / "run" / "checkpoints" / "level_02_pruning.pt")
    masks = state["masks"]
    assert "classifier.weight" not in masks and "features.0.weight" in masks  # exclusion honoured

    bad = procs.run(
        [*argv[:6], "model.net._target_=nowhere.Net"],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "nowhere.Net" in bad.stderr
