"""The benchmark scripts run end to end in a tiny configuration and print their figures.

Timings are never asserted: only that every line a reader (or the README) relies on is there.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import procs
import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
NUMBER = r"[0-9]+(?:\.[0-9]+)?"


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_train_prints_throughput_ratio_device_and_mask_overhead(tmp_path, capsys):
    out_json = tmp_path / "train.json"
    load_script("bench_train").main(
        [
            "--device=cpu",
            "--models=resnet20",
            "--n-train=64",
            "--n-test=32",
            "--batch-size=32",
            "--epochs=1",
            "--repeats=1",
            "--warmup-steps=1",
            "--workers=0",
            "--apply-calls=5",
            f"--json={out_json}",
        ]
    )
    out = capsys.readouterr().out
    assert re.search(r"^device: .+\(\d+ logical CPUs, torch threads=\d+\)$", out, re.M)
    assert re.search(r"^torch \S+; load average", out, re.M)
    assert re.search(rf"resnet20\s+standard \(workers=0\)\s+{NUMBER} images/s", out)
    assert re.search(rf"resnet20\s+tool\s+{NUMBER} images/s", out)
    assert re.search(rf"resnet20\s+tool, 90% sparse\s+{NUMBER} images/s", out)
    assert re.search(rf"ratio tool/standard \(best workers\) = {NUMBER}", out)
    assert re.search(rf"mask re-application: {NUMBER} ms/call = {NUMBER}% of a step", out)
    assert re.search(rf"data only: DeviceData\s+{NUMBER} images/s", out)
    saved = json.loads(out_json.read_text())
    loops = {r["loop"] for r in saved["throughput"]}
    assert {"standard (workers=0)", "tool", "tool, 90% sparse"} <= loops
    tool = next(r for r in saved["throughput"] if r["loop"] == "tool")
    assert tool["images_per_s"] > 0 and tool["ratio_vs_standard"] > 0


def test_bench_train_accuracy_check_prints_both_accuracies(capsys):
    load_script("bench_train").main(
        ["--device=cpu", "--accuracy-check", "--n-train=64", "--n-test=32", "--epochs=1"]
    )
    out = capsys.readouterr().out
    assert re.search(rf"switches given .*test accuracy {NUMBER}%", out)
    assert re.search(rf"fp32 eager .*test accuracy {NUMBER}%", out)
    assert "accuracy difference" in out


@pytest.mark.slow  # starts fresh interpreters for 1 and 2 parallel runs: 25 s
def test_bench_parallel_reports_aggregate_speedup_and_recommendation(tmp_path):
    out_json = tmp_path / "parallel.json"
    proc = procs.run(
        [
            sys.executable,
            str(SCRIPTS / "bench_parallel.py"),
            "--device=cpu",
            "--k=1,2",
            "--steps=1",
            "--warmup-steps=1",
            "--n-train=32",
            "--batch-size=16",
            f"--json={out_json}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert re.search(r"^device: ", out, re.M)
    for k in (1, 2):
        assert re.search(
            rf"K={k}: per-run\s+{NUMBER} images/s \(median\), aggregate\s+{NUMBER} images/s,"
            rf" speedup vs K=1 {NUMBER}x",
            out,
        )
    assert re.search(r"recommendation: hydra.launcher.n_jobs=[12] ", out)
    saved = json.loads(out_json.read_text())
    assert [r["k"] for r in saved["rows"]] == [1, 2] and saved["n_jobs"] in (1, 2)


def test_recommendation_is_where_aggregate_growth_falls_to_10_percent():
    recommend = load_script("bench_parallel").recommend

    def rows(*agg: float) -> list[dict]:
        return [{"k": 2**i, "aggregate_images_per_s": a} for i, a in enumerate(agg)]

    assert recommend(rows(100, 180, 250, 260)) == 4
    assert recommend(rows(100, 105, 300)) == 1
    assert recommend(rows(100, 200, 400, 800)) == 8


def test_bench_structured_prints_counts_and_speed():
    import sys
    from pathlib import Path

    script = Path(__file__).parent.parent / "scripts" / "bench_structured.py"
    proc = procs.run(
        [
            sys.executable,
            str(script),
            "--device",
            "cpu",
            "--models",
            "resnet56",
            "--batch-size",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "l1_filter_resnet56_b: 735,712 params" in proc.stdout
    assert "measured speedup" in proc.stdout
