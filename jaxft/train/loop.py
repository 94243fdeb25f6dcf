"""The training loop: steps, logs, evals and saves as the policies decide, until the last step or a stop."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxft.train.metrics import summarize
from jaxft.train.policies import Cadence, EarlyStopping, PreemptionWatch

if TYPE_CHECKING:
    from jaxft.train.trainer import Trainer


class _Throughput:
    """Tokens per second between two logged steps."""

    def __init__(self):
        self.since, self.tokens = time.perf_counter(), 0.0

    def add(self, tokens: float) -> None:
        self.tokens += tokens

    def rate(self) -> float:
        now = time.perf_counter()
        rate = self.tokens / max(now - self.since, 1e-9)
        self.since, self.tokens = now, 0.0
        return rate


def train_loop(trainer: Trainer, start: int, last: int, history: dict[str, Any]) -> None:
    """Steps ``start + 1 .. last`` of ``trainer``; fills ``history``; raises ``Preempted`` or ``Diverged``."""
    cfg = trainer.settings.train
    logs, saves = Cadence(cfg.log_every, last), Cadence(trainer.settings.checkpoint.every, last)
    evals = Cadence.evals(cfg.eval_every, cfg.steps)
    skips = trainer.skips
    stopping, throughput = EarlyStopping(cfg.early_stopping), _Throughput()
    bar = tqdm(total=cfg.steps, initial=start, disable=not trainer.is_main, dynamic_ncols=True, desc="train")
    try:
        with PreemptionWatch(announce=trainer.is_main) as preemption:
            if start == 0 and cfg.eval_at_start:
                trainer.eval_and_log(0, history, stopping)
            for step in range(start + 1, last + 1):
                host_batch = next(trainer.task.train_batches)
                throughput.add(float(np.sum(host_batch[trainer.task.tokens_key])) * jax.process_count())
                metrics = trainer.train_step(host_batch)
                skips.add(step, metrics["finite"])
                if jax.process_count() == 1:  # (several processes learn of it together, at the next save)
                    trainer.checkpointer.raise_background_error()
                if logs.due(step) or skips.full():
                    skips.flush()
                    skips.check(step)
                if logs.due(step):
                    _log_train(trainer, step, metrics, throughput.rate(), history, bar)
                bar.update(1)
                eval_metrics = trainer.eval_and_log(step, history, stopping) if evals.due(step) else None
                if eval_metrics:  # every eval is a candidate for the best checkpoint
                    trainer.save(metrics=eval_metrics)
                elif saves.due(step):
                    trainer.save()
                if eval_metrics and _stop_early(trainer, step, eval_metrics, stopping, history):
                    break
                if preemption.stop_requested(step):
                    trainer.save(force=True)
                    trainer.checkpointer.wait()
                    skips.flush()
                    raise preemption.error(step, skips.summary())
    finally:
        bar.close()


def _log_train(trainer: Trainer, step: int, metrics: dict, tokens_per_s: float, history: dict, bar) -> None:
    m = jax.device_get(metrics)
    scalars = summarize({k: float(v) for k, v in m.items() if k not in ("finite",)})
    scalars["tokens_per_s"] = tokens_per_s
    scalars.update(trainer.learning_rates())
    history["train_loss"].append((step, scalars["loss"]))
    trainer.write(trainer.writer.scalars, step, scalars, prefix="train/")
    bar.set_postfix(loss=f"{scalars['loss']:.4f}", lr=f"{scalars.get('lr', 0):.2e}",
                    tok_s=f"{scalars['tokens_per_s']:.0f}")


def _stop_early(trainer: Trainer, step: int, eval_metrics: dict, stopping: EarlyStopping, history: dict) -> bool:
    """``train.early_stopping`` or the task's own ``stop_fn``: a forced save and True when either says stop."""
    reason = stopping.observe(eval_metrics)
    if trainer.task.stop_fn is not None:
        reason = trainer.task.stop_fn(eval_records(history)) or reason
    if not reason:
        return False
    if trainer.is_main:
        tqdm.write(f"early stopping at step {step}: {reason}")
    history["stopped"] = {"step": step, "reason": reason}
    trainer.save(force=True)
    return True


def eval_records(history: dict) -> list[dict]:
    """Each eval with the train loss last logged at or before it, for ``TrainTask.stop_fn``."""
    records = []
    for step, metrics in history["eval"]:
        losses = [loss for s, loss in history["train_loss"] if s <= step]
        records.append({"step": step, "train_loss": losses[-1] if losses else float("nan"), **metrics})
    return records
