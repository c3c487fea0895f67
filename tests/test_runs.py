"""prune-runs: listing real run directories (made by the real CLI) and diffing their configs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import procs
import pytest
from conftest import QUIET, compose
from omegaconf import OmegaConf

from prune_cli.rundir import RunLock
from prune_cli.runs import format_listing, list_runs, main, run_info

TINY = ["experiment=quickstart", "train.epochs=2", "pruning.levels=2"]


def _start(root: Path, run_dir: Path, *args: str) -> subprocess.Popen:
    argv = [
        sys.executable,
        "-m",
        "prune_cli.cli",
        *QUIET,
        f"runtime.cache_dir={root / 'cache'}",
        f"hydra.run.dir={run_dir}",
        *TINY,
        *args,
    ]
    env = {**os.environ, "PRUNE_CLI_DATA": str(root / "data"), "OMP_NUM_THREADS": "1"}
    return procs.Popen(
        argv, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two complete runs (LRW seed 0, FT seed 1) and one failed (diverged) run through the real
    CLI, started together; partial, running-to-be, corrupt and not-yet-dense copies of the
    first. Layout: ``root/outputs/...`` and ``root/multirun/sweep/...``."""
    root = tmp_path_factory.mktemp("runs")
    out = root / "outputs"
    dirs = {
        "complete": out / "lenet-digits" / "lrw-0",
        "other": out / "lenet-digits" / "ft-1",
        "failed": root / "multirun" / "sweep" / "diverged",
    }
    started = {
        "complete": _start(root, dirs["complete"], "method=lrw", "seed=0"),
        "other": _start(root, dirs["other"], "method=ft", "seed=1"),
        "failed": _start(root, dirs["failed"], "method=lrw", "seed=2", "train.lr=1e20"),
    }
    for name, proc in started.items():
        stdout, stderr = proc.communicate(timeout=600)
        expected = 2 if name == "failed" else 0
        assert proc.returncode == expected, f"{name}: exit {proc.returncode}\n{stdout}\n{stderr}"

    def copy(name: str, keep_rows: int | None) -> Path:
        dst = out / "copies" / name
        shutil.copytree(dirs["complete"], dst)
        results = dst / "results.jsonl"
        if keep_rows is not None:
            lines = results.read_text().splitlines(keepends=True)
            results.write_text("".join(lines[:keep_rows]))
        return dst

    dirs["partial"] = copy("partial", 2)  # dense and level 1 of 2
    dirs["running"] = copy("running", 1)  # dense done, level 1 in progress
    dirs["corrupt"] = copy("corrupt", None)
    lines = (dirs["corrupt"] / "results.jsonl").read_text().splitlines(keepends=True)
    (dirs["corrupt"] / "results.jsonl").write_text(lines[0] + lines[1] + lines[1])
    dirs["no_dense"] = copy("no_dense", None)  # killed while the dense model trained
    (dirs["no_dense"] / "results.jsonl").unlink()
    # not run directories: a dense cache entry and a sweep's own files
    (root / "multirun" / "sweep" / "multirun.yaml").write_text("{}\n")
    return {"root": root, **dirs}


@pytest.fixture
def holding(runs):
    """The 'running' run directory's lock, held by this process for the test."""
    with RunLock(runs["running"]):
        yield runs["running"]


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "results.jsonl").read_text().splitlines()]


def _table(text: str) -> dict[str, list[str]]:
    """The listing's rows by run path (the header and the lines after the table left out)."""
    lines = text.splitlines()
    assert lines[0].split() == ["RUN", "METHOD", "MODEL-DATA", "STATUS", "LEVELS", "ACC", "WHEN"]
    table = {}
    for line in lines[1:]:
        cells = line.split()
        if len(cells) == 8 and cells[0].startswith("/"):  # path ... date time
            table[cells[0]] = cells[1:]
        else:
            break
    return table


def test_lists_complete_partial_running_failed_and_corrupt_runs(runs, holding, capsys):
    root = runs["root"]
    assert main([str(root / "outputs"), str(root / "multirun")]) == 0
    out = capsys.readouterr().out
    table = _table(out)
    assert set(table) == {
        str(runs[k])
        for k in ("complete", "other", "failed", "partial", "running", "corrupt", "no_dense")
    }
    expected = {
        "complete": ("lrw", "complete", "2/2", _rows(runs["complete"])[-1]["acc"]),
        "other": ("ft", "complete", "2/2", _rows(runs["other"])[-1]["acc"]),
        "partial": ("lrw", "partial", "1/2", _rows(runs["partial"])[-1]["acc"]),
        "running": ("lrw", "running", "0/2", _rows(runs["running"])[-1]["acc"]),
        "no_dense": ("lrw", "partial", "0/2", None),
        "failed": ("lrw", "failed", "0/2", None),
        "corrupt": ("lrw", "corrupt", "?/2", None),
    }
    for name, (method, status, levels, acc) in expected.items():
        cells = table[str(runs[name])]
        assert cells[:4] == [method, "lenet300_100-digits", status, levels], (name, cells)
        assert cells[4] == ("-" if acc is None else f"{acc:.4f}"), (name, cells)
    # why the failed and corrupt runs stopped, who holds the running one
    assert f"  {runs['failed']}: " in out and "diverged" in out
    corrupt_line = next(x for x in out.splitlines() if x.startswith(f"  {runs['corrupt']}: "))
    assert "level 1 appears again" in corrupt_line
    running_line = next(x for x in out.splitlines() if x.startswith(f"  {runs['running']}: "))
    assert f"pid {os.getpid()}" in running_line and "level 1 in progress" in running_line
    assert out.splitlines()[-1] == "7 runs: 2 complete, 2 partial, 1 running, 1 failed, 1 corrupt"


def test_a_released_run_is_no_longer_running(runs):
    assert run_info(runs["running"]).status == "partial"
    with RunLock(runs["running"]):
        assert run_info(runs["running"]).status == "running"
    assert run_info(runs["running"]).status == "partial"


def test_default_directories_are_outputs_and_multirun(runs, monkeypatch, capsys):
    monkeypatch.chdir(runs["root"])
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "outputs/lenet-digits/lrw-0 " in out and "multirun/sweep/diverged " in out
    assert "cache" not in out  # the dense cache entries are not runs
    assert out.splitlines()[-1].startswith("7 runs: ")


def test_status_filter(runs, capsys):
    assert main([str(runs["root"]), "--status", "failed"]) == 0
    out = capsys.readouterr().out
    assert set(_table(out)) == {str(runs["failed"])}
    assert out.splitlines()[-1].startswith("showing 1 (failed) of 7 runs: ")
    assert main([str(runs["root"]), "--status", "complete,partial"]) == 0
    table = _table(capsys.readouterr().out)
    released = ("partial", "running", "no_dense")  # 'running' when its lock is held
    assert set(table) == {str(runs[k]) for k in ("complete", "other", *released)}


def test_json_lines(runs, capsys):
    assert main([str(runs["root"] / "outputs"), "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    by_path = {r["path"]: r for r in rows}
    assert by_path[str(runs["complete"])]["status"] == "complete"
    assert by_path[str(runs["complete"])]["levels_done"] == 2
    assert by_path[str(runs["partial"])]["levels_total"] == 2


def test_a_pipe_gets_no_colour_and_a_terminal_does(runs):
    proc = procs.run(
        [Path(sys.executable).parent / "prune-runs", str(runs["root"])],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "NO_COLOR"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "\033[" not in proc.stdout and proc.stderr == ""
    assert "complete" in proc.stdout
    coloured = format_listing(list_runs([runs["root"] / "outputs"]), colour=True)
    assert "\033[32mcomplete" in coloured


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["/nonexistent/dir"], "/nonexistent/dir: no such directory"),
        (["--status", "bogus", "."], "--status bogus: unknown status bogus"),
        (["diff", "only-one"], "the following arguments are required: RUN_B"),
        (["diff", "/nonexistent/a", "/nonexistent/b"], "/nonexistent/a: no such run directory"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("prune-runs: error: "), captured.err
    assert fragment in lines[0]


def test_no_default_directories_is_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([]) == 2
    assert capsys.readouterr().err.startswith("prune-runs: error: no outputs/ or multirun/ here")


def test_an_empty_directory_has_no_runs(tmp_path, capsys):
    assert main([str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"no runs under {tmp_path}\n"


def _diff(capsys, a, b) -> tuple[dict[str, tuple[str, str]], list[str]]:
    assert main(["diff", str(a), str(b)]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith("  key "))
    keys = {}
    for line in lines[start + 1 :]:
        if not line.startswith("  "):
            break
        key, va, vb = line.split()
        keys[key] = (va, vb)
    return keys, lines


def test_diff_of_runs_differing_in_method_and_seed(runs, capsys):
    keys, lines = _diff(capsys, runs["complete"], runs["other"])
    assert keys["method.name"] == ("lrw", "ft")
    assert keys["seed"] == ("0", "1")
    assert all(k == "seed" or k.startswith("method.") for k in keys), keys
    assert lines[0] == f"A: {runs['complete']}" and lines[1] == f"B: {runs['other']}"
    assert lines[2] == f"{len(keys)} config keys differ:"
    assert lines[-2].startswith("run hash: differs (A ")
    assert lines[-1].startswith("dense hash: differs (A ")  # another seed: another dense model
    # the hashes shown are those the runs were made under
    chash = json.loads((runs["complete"] / "run.json").read_text())["config_hash"]
    assert f"A {chash[:10]}" in lines[-2]


def test_diff_of_the_same_config_and_of_a_shared_dense_model(runs, tmp_path, capsys):
    _, lines = _diff_plain(capsys, runs["complete"], runs["partial"])
    assert lines[2] == "the configs are identical"
    assert lines[3].startswith("run hash: same (") and lines[4].startswith("dense hash: same (")
    # config files as arguments; only the method differs, so the dense model is shared
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    OmegaConf.save(compose(*TINY, "method=lrw"), a, resolve=True)
    OmegaConf.save(compose(*TINY, "method=ft"), b, resolve=True)
    keys, lines = _diff(capsys, a, b)
    assert keys["method.name"] == ("lrw", "ft") and "seed" not in keys
    assert lines[-2].startswith("run hash: differs")
    assert lines[-1].startswith("dense hash: same (") and "share one dense model" in lines[-1]


def _diff_plain(capsys, a, b):
    assert main(["diff", str(a), str(b)]) == 0
    return None, capsys.readouterr().out.splitlines()


def _as_format_1(run_dir: Path) -> None:
    """Turn a run directory into what format-1 prune-cli wrote: run.json without "format", the
    settings now under `runtime` at their old places, pruning by name (no `_target_`), and each
    level's masks in level_XX_masks.pt instead of the pruner's state in level_XX_pruning.pt."""
    import torch

    claim = json.loads((run_dir / "run.json").read_text())
    assert claim.pop("format") == 2
    (run_dir / "run.json").write_text(json.dumps(claim) + "\n")
    cfg = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    rt = cfg.pop("runtime")
    for key in ("device", "threads", "progress", "cache_dir", "rerun", "logger", "eval_every"):
        cfg[key] = rt[key]
    cfg["log_every_n_steps"] = rt["log_every_n_steps"]
    cfg["train"].update(compile=rt["compile"], channels_last=rt["channels_last"])
    cfg["train"]["eval_batch_size"] = rt["eval_batch_size"]
    p = cfg["pruning"]
    cfg["pruning"] = {
        "name": p["name"],
        "criterion": "global_magnitude",
        "rate": p["rate"],
        "levels": p["levels"],
        "target_sparsity": p["target_sparsity"],
        "one_shot": False,
        "stage_ratios": [],
        "skip": [],
    }
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    for state in sorted((run_dir / "checkpoints").glob("level_*_pruning.pt")):
        masks = torch.load(state)["masks"]
        torch.save(masks, state.with_name(state.name.replace("_pruning", "_masks")))
        state.unlink()


def test_a_run_of_an_earlier_prune_cli_stays_listed(runs, tmp_path, capsys):
    """A run directory that format-1 prune-cli wrote cannot be continued (prune-run refuses
    it), but prune-runs still reads it: complete, its levels and accuracy."""
    old = tmp_path / "old"
    shutil.copytree(runs["complete"], old)
    _as_format_1(old)
    info = run_info(old)
    assert (info.status, info.levels_done, info.levels_total) == ("complete", 2, 2), info.detail
    assert (info.method, info.model, info.dataset) == ("lrw", "lenet300_100", "digits")
    assert info.acc == _rows(runs["complete"])[-1]["acc"]
