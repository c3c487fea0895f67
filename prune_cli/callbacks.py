"""Hydra callbacks: build the prune-report of a sweep as soon as the sweep ends.

Registered in ``conf/config.yaml``::

    hydra:
      callbacks:
        report:
          _target_: prune_cli.callbacks.ReportOnMultirunEnd
          reference: null
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

OUTCOMES = ".jobs"
# the sweep this process launched: its directory and how many jobs it has (set by prune-run)
SWEEP: dict[str, Any] = {"dir": None, "jobs": None}


def write_outcome(sweep_dir: Path, num: int, outcome: dict) -> None:
    """How one job of a sweep ended (``complete``, ``failed`` or ``busy``), for the summary."""
    from prune_cli.store import write_text

    write_text(Path(sweep_dir) / OUTCOMES / f"{num:05d}.json", json.dumps(outcome) + "\n")


def read_outcomes(sweep_dir: Path) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for p in sorted((Path(sweep_dir) / OUTCOMES).glob("*.json")):
        try:
            out[int(p.stem)] = json.loads(p.read_text())
        except (OSError, ValueError):
            out[int(p.stem)] = {"status": "failed", "error": f"{p}: unreadable outcome"}
    return out


def sweep_summary() -> tuple[str, bool]:
    """The end-of-sweep summary of this process's sweep, and whether every job completed."""
    sweep_dir = Path(SWEEP["dir"])
    outcomes = read_outcomes(sweep_dir)
    n = SWEEP.get("jobs") or (max(outcomes) + 1 if outcomes else 0)
    counts: dict[str, int] = {}
    lines = []
    for num in range(n):
        o = outcomes.get(num, {"status": "lost", "error": "ended without an outcome (killed?)"})
        counts[o["status"]] = counts.get(o["status"], 0) + 1
        if o["status"] != "complete":
            where = o.get("run_dir", "")
            lines.append(f"  job {num + 1} {o['status']}: {where}: {o.get('error', '')}")
    ok = counts.get("complete", 0) == n
    head = f"sweep {sweep_dir}: {n} jobs, " + ", ".join(f"{v} {k}" for k, v in counts.items())
    return "\n".join([head, *lines]), ok


class ReportOnMultirunEnd(Callback):
    """After a multirun, aggregate its sweep directory into ``report.csv`` and the PNG figures.

    Prints the comparison table and logs where the files went. Never raises: a failed report
    is logged as a warning, so the finished sweep's exit status is untouched.
    """

    def __init__(self, reference: str | None = None) -> None:
        self.reference = reference

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Remember the sweep directory; forget the outcomes of an earlier sweep there."""
        sweep_dir = Path(str(config.hydra.sweep.dir))
        SWEEP["dir"] = str(sweep_dir)
        shutil.rmtree(sweep_dir / OUTCOMES, ignore_errors=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Report on ``config.hydra.sweep.dir`` (the report is written inside it)."""
        try:
            from prune_cli.report import build_report, comparison_table, report_outputs

            sweep_dir = Path(str(config.hydra.sweep.dir))
            csv_path = build_report([sweep_dir], sweep_dir, reference=self.reference)
            print(comparison_table(csv_path), end="", flush=True)
            written = ", ".join(p.name for p in report_outputs(sweep_dir))
            log.info("prune-report of the sweep: %s in %s", written, sweep_dir)
        except Exception as e:  # a report must never fail a finished sweep
            log.warning("prune-report of the sweep failed: %s: %s", type(e).__name__, e)
