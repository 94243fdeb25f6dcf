"""The training loop's decisions, each a small object: when to eval and checkpoint, when to stop early,
when too many updates were skipped, and what to do on SIGTERM or Ctrl-C."""

from __future__ import annotations

import dataclasses
import logging
import signal

import jax
from tqdm.auto import tqdm

from jaxft.interrupts import interrupt
from jaxft.settings import EarlyStoppingSettings

log = logging.getLogger("jaxft")


class Preempted(Exception):
    """SIGTERM or SIGINT: a checkpoint was saved; ``exit_code`` is 0 for SIGTERM (a job queue's
    preemption: the same command resumes) and 130 for Ctrl-C, as shells expect."""

    def __init__(self, message: str, exit_code: int = 0):
        super().__init__(message)
        self.exit_code = exit_code


class Diverged(Exception):
    """Every one of the last ``train.max_skipped_updates`` updates was non-finite: nothing is exported."""


@dataclasses.dataclass(frozen=True)
class Cadence:
    """Every ``every`` steps (0: none) and at step ``last`` (logs, checkpoints: at the run's last step)."""

    every: int
    last: int

    def due(self, step: int) -> bool:
        return step == self.last or (bool(self.every) and step % self.every == 0)

    @classmethod
    def evals(cls, every: int, total: int) -> Cadence:
        """Evals: every ``every`` steps and at the end of the whole run, or never when ``every`` is 0."""
        return cls(every, total if every else 0)


@dataclasses.dataclass
class EarlyStopping:
    """``train.early_stopping``: the best value of its metric so far and the evals since it improved."""

    rule: EarlyStoppingSettings
    best: float | None = None
    bad_evals: int = 0

    def check_metric(self, eval_metrics: dict[str, float]) -> None:
        metric = self.rule.metric
        if eval_metrics and metric and metric not in eval_metrics:
            raise ValueError(f"config key 'train.early_stopping.metric': '{metric}' is not an eval "
                             f"metric of this recipe (available: {', '.join(sorted(eval_metrics))})")

    def observe(self, eval_metrics: dict[str, float]) -> str | None:
        """Count this eval; the reason to stop, or None."""
        metric = self.rule.metric
        if metric and metric in eval_metrics:
            value = eval_metrics[metric]
            improved = self.best is None or (value < self.best if self.rule.mode == "min" else value > self.best)
            self.best, self.bad_evals = (value, 0) if improved else (self.best, self.bad_evals + 1)
        if self.rule.patience and self.bad_evals >= self.rule.patience:
            return f"{metric} did not improve for {self.bad_evals} evals"
        return None


class SkipMonitor:
    """Reads back each step's finite flag in batches (a sync per step would stall the device), counts the
    skipped updates and raises ``Diverged`` after ``max_in_a_row`` of them in a row (0: never)."""

    def __init__(self, max_in_a_row: int, batch_size: int):
        self.max_in_a_row = max_in_a_row
        self.per_process = batch_size // jax.process_count()
        self.skipped = 0
        self.in_a_row = 0
        self._pending: list = []  # (step, finite flag) not yet read back

    def add(self, step: int, finite) -> None:
        self._pending.append((step, finite))

    def full(self) -> bool:
        return bool(self.max_in_a_row) and len(self._pending) >= self.max_in_a_row

    def flush(self) -> None:
        for step, finite in self._pending:
            if bool(jax.device_get(finite)):
                self.in_a_row = 0
                continue
            self.skipped += 1
            self.in_a_row += 1
            log.warning("step %d: non-finite loss or gradient on the batch of step %d (process %d rows "
                        "%d-%d of the data stream); the update was skipped", step, step, jax.process_index(),
                        (step - 1) * self.per_process, step * self.per_process - 1)
        self._pending = []

    def check(self, step: int) -> None:
        if self.max_in_a_row and self.in_a_row >= self.max_in_a_row:
            raise Diverged(f"the last {self.in_a_row} updates (to step {step}) were all skipped "
                           f"for non-finite loss or gradients ({self.skipped} skipped updates "
                           "in this run); stopping without an export (lower optim.schedule.peak_lr "
                           "or check the data)")

    def summary(self) -> str:
        return f"skipped updates (non-finite loss or gradient): {self.skipped}"


def _reached_preemption_sync_point(step: int) -> bool:
    """True on every process at the same step once any of them got SIGTERM (jax.distributed runs)."""
    from jax.experimental import multihost_utils

    return bool(multihost_utils.reached_preemption_sync_point(step))


class PreemptionWatch:
    """SIGTERM and Ctrl-C ask for a save and a stop after the current step (a second Ctrl-C stops at once).
    With several processes a per-process SIGTERM flag could make one process save while another steps on:
    there JAX's preemption notifier takes SIGTERM and every process asks it at every step instead."""

    def __init__(self, announce: bool):
        self.announce = announce
        self.multi_process = jax.process_count() > 1
        self.requested: int | None = None  # the signal asking to stop, once one came
        self._previous: dict = {}

    def __enter__(self) -> PreemptionWatch:
        signals = (signal.SIGINT,) if self.multi_process else (signal.SIGTERM, signal.SIGINT)
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in signals}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum, frame):
        if signum == signal.SIGINT and self.requested == signal.SIGINT:
            interrupt(frame)  # a second Ctrl-C: stop now, without the save
            return
        self.requested = signum
        if signum == signal.SIGINT and self.announce:
            tqdm.write("Ctrl-C: saving a checkpoint after this step (Ctrl-C again to stop without saving)")

    def stop_requested(self, step: int) -> bool:
        if self.multi_process and not self.requested and _reached_preemption_sync_point(step):
            self.requested = signal.SIGTERM
        return bool(self.requested)

    def error(self, step: int, skipped: str) -> Preempted:
        if self.requested == signal.SIGINT:
            return Preempted(f"Ctrl-C at step {step}: checkpoint saved; the same command resumes; {skipped}", 130)
        return Preempted(f"SIGTERM at step {step}: checkpoint saved; {skipped}")
