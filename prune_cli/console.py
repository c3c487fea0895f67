"""What a run shows while it trains: a progress bar on a terminal, one line per epoch elsewhere.

On a terminal (and with ``progress=true``) each training phase has a bar that moves at every
optimizer step: images done of the phase, images/s, the phase's ETA, and after each epoch its
loss, test accuracy and the ETA of the whole run. When the output is not a terminal (a SLURM log,
a pipe) the bar is off and each epoch is one line instead::

    [12:00:00] level_02 epoch 3/10: loss 0.4123, acc 0.9051, 12,345 img/s, ETA 0:01:10 (run 0:20:31)

(``acc -`` after an epoch that ``eval_every`` skips; inside an epoch that takes longer than
:data:`HEARTBEAT_S` seconds, a line with its step and the ETAs). :data:`JOB_TAG`, when a sweep
sets it, starts each of these lines and the bars. The epoch
lines always go to the run's ``run.log``; on a terminal with the bar they stay out of the console.

Log lines reach the console through :class:`TqdmHandler` (``tqdm.write``), so that they appear
above the bars instead of through them; ``conf/hydra/job_logging/prune_cli.yaml`` sets it up.
"""

from __future__ import annotations

import logging
import math
import time

from tqdm.auto import tqdm

log = logging.getLogger("prune_cli")

JOB_TAG = ""
"""Put in front of every epoch line and bar (e.g. ``"[job 2/6] "`` by a sweep); empty: nothing."""

HEARTBEAT_S = 60.0
"""Without a bar, a progress line inside an epoch at most this often (only long epochs get one)."""


class TqdmHandler(logging.StreamHandler):
    """A stream handler that writes through ``tqdm.write``: bars are cleared, the line written,
    and the bars redrawn below it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)


class ConsoleFilter(logging.Filter):
    """Keeps records logged with ``extra={"console": False}`` off the console (they are for
    ``run.log``: the epoch lines while a bar shows the same)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "console", True)


def duration(seconds: float) -> str:
    """``H:MM:SS`` (days as ``Nd H:MM:SS``); ``?`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    days, s = divmod(s, 86400)
    text = f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{days}d {text}" if days else text


def phase_images(steps: int, steps_per_epoch: int, n_train: int, batch_size: int) -> int:
    """Training images (all ranks) in ``steps`` optimizer steps of epochs of ``n_train`` images."""
    epochs, rest = divmod(steps, steps_per_epoch)
    return epochs * n_train + min(rest * batch_size, n_train)


class PhaseProgress:
    """The progress display of one training phase (rank 0 only; others pass ``show=False``).

    ``update`` is called at every step (cheap: no host sync, the bar redraws at most 10 times
    a second); ``epoch_end`` after each epoch, with the numbers already on the host.
    """

    def __init__(
        self,
        name: str,
        *,
        epochs: int,
        steps: int,
        steps_per_epoch: int,
        n_train: int,
        batch_size: int,
        start_step: int,
        steps_after: int = 0,
        show: bool = True,
        bar: bool = True,
    ) -> None:
        self.name, self.epochs, self.steps = name, epochs, steps
        self.spe, self.n_train, self.bs = steps_per_epoch, n_train, batch_size
        self.steps_after = steps_after
        self.show = show
        self.start_step = start_step
        self.t0 = time.perf_counter()
        self.bar = tqdm(
            total=phase_images(steps, steps_per_epoch, n_train, batch_size),
            initial=phase_images(start_step, steps_per_epoch, n_train, batch_size),
            desc=f"{JOB_TAG}{name} ep {start_step // steps_per_epoch + 1}/{epochs}",
            unit="img",
            unit_scale=True,
            leave=False,
            disable=None if (show and bar) else True,
            dynamic_ncols=True,
        )
        # no bar: the epoch lines (and heartbeats) are the console's progress
        self.lines = show and bool(self.bar.disable)
        self.next_beat = self.t0 + HEARTBEAT_S

    def update(self, images: int, step: int) -> None:
        """One optimizer step of ``images`` (all ranks) done; ``step`` steps of the phase done."""
        self.bar.update(images)
        if self.lines and time.perf_counter() >= self.next_beat:
            self.next_beat = time.perf_counter() + HEARTBEAT_S
            epoch, j = divmod(step, self.spe)
            if j:  # not at an epoch end (its line follows)
                phase_eta, run_eta = self.etas(step)
                log.info(
                    "%s%s epoch %d/%d: step %d/%d, ETA %s (run %s)",
                    JOB_TAG,
                    self.name,
                    epoch + 1,
                    self.epochs,
                    j,
                    self.spe,
                    duration(phase_eta),
                    duration(run_eta),
                )

    def etas(self, step: int) -> tuple[float, float]:
        """Seconds left of the phase and of the run, at this session's pace (evaluation
        included; later phases assumed as fast per step as this one)."""
        done = step - self.start_step
        if done <= 0:
            return math.nan, math.nan
        per_step = (time.perf_counter() - self.t0) / done
        left = (self.steps - step) * per_step
        return left, left + self.steps_after * per_step

    def epoch_end(
        self, epoch: int, step: int, loss: float, acc: float | None, images_per_s: float
    ) -> None:
        """Epoch ``epoch`` (1-based) ended after ``step`` steps of the phase."""
        if not self.show:
            return
        phase_eta, run_eta = self.etas(step)
        acc_text = f"{acc:.4f}" if acc is not None else "-"
        self.bar.set_description_str(
            f"{JOB_TAG}{self.name} ep {min(epoch + 1, self.epochs)}/{self.epochs}", refresh=False
        )
        self.bar.set_postfix_str(f"loss {loss:.4f}, acc {acc_text}, run ETA {duration(run_eta)}")
        self.next_beat = time.perf_counter() + HEARTBEAT_S
        log.info(
            "%s%s epoch %d/%d: loss %.4f, acc %s, %s img/s, ETA %s (run %s)",
            JOB_TAG,
            self.name,
            epoch,
            self.epochs,
            loss,
            acc_text,
            f"{images_per_s:,.0f}",
            duration(phase_eta),
            duration(run_eta),
            extra={"console": self.lines},
        )

    def close(self) -> None:
        self.bar.close()
