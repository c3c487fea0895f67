"""Hydra callbacks: build the prune-report of a sweep as soon as the sweep ends.

Registered in ``conf/config.yaml``::

    hydra:
      callbacks:
        report:
          _target_: prune_cli.callbacks.ReportOnMultirunEnd
          reference: null
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class ReportOnMultirunEnd(Callback):
    """After a multirun, aggregate its sweep directory into ``report.csv`` and the PNG figures.

    Prints the comparison table and logs where the files went. Never raises: a failed report
    is logged as a warning, so the finished sweep's exit status is untouched.
    """

    def __init__(self, reference: str | None = None) -> None:
        self.reference = reference

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
