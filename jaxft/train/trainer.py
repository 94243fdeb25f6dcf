"""The trainer shared by every recipe (its setup is in ``setup``, its loop in ``loop``, the loop's
decisions in ``policies``).

Builds the mesh and the recipe's task, places trainable and frozen trees on
their shardings, restores the latest checkpoint if there is one, then runs the
jitted step with a progress bar, TensorBoard metrics and a JSONL metric log,
periodic eval with early stopping, checkpoints (last K + best) and a clean
save on SIGTERM or Ctrl-C. It never imports a recipe: the task (or the function
that builds it from the config and the mesh) is handed to it.

Before the model is built it checks that the workdir and the checkpoint
directory are writable and locks the workdir against a second run. Resuming
falls back from a damaged newest checkpoint to the previous intact one, and
refuses (one line) a workdir written with another model shape or other data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from tqdm.auto import tqdm

from jaxft.settings import Settings, parse_settings, resolve_epochs
from jaxft.train.loop import train_loop
from jaxft.train.metrics import MetricWriter, summarize
from jaxft.train.policies import Diverged, EarlyStopping, Preempted, SkipMonitor
from jaxft.train.resume import WorkdirMismatch, check_same_data, layout_message
from jaxft.train.placement import Placement
from jaxft.train.setup import global_batch, place, place_task, prepare_workdir
from jaxft.train.step import jit_step
from jaxft.train.task import TrainTask

__all__ = ["Diverged", "Preempted", "Trainer", "WorkdirMismatch", "global_batch", "place"]

log = logging.getLogger("jaxft")

TaskOrBuilder = TrainTask | Callable[[Any, Any], TrainTask]


class Trainer:
    """``Trainer(config, workdir, task)``: ``task`` is a ``TrainTask`` or a ``build(config, placement)``
    that makes one on this trainer's ``Placement`` (``jaxft.main`` passes the recipe's ``build``). ``settings``:
    the config's engine sections, when already parsed (``jaxft.settings.validate``)."""

    def __init__(self, config, workdir: str | Path, task: TaskOrBuilder, settings: Settings | None = None):
        self.config = config
        s = self.settings = settings if settings is not None else parse_settings(config)
        self.is_main = jax.process_index() == 0
        self.workdir = prepare_workdir(workdir, s.checkpoint, self.is_main)
        self.placement = Placement.of(s.mesh.shape, s.mesh.rules)
        self.rules, self.mesh = self.placement.rules, self.placement.mesh
        if not isinstance(task, TrainTask):
            with jax.set_mesh(self.mesh):
                task = task(config, self.placement)  # the recipe's build(config, placement)
        self.task: TrainTask = task
        s = self.settings = resolve_epochs(config, s, task.train_records)
        placed = place_task(task, s, self.mesh, self.rules)
        self.frozen, self.frozen_sh, self.trainable_sh = placed.frozen, placed.frozen_sh, placed.trainable_sh
        self.optimizer, self.state, self.state_sh = placed.optimizer, placed.state, placed.state_sh
        self.step_fn = placed.step_fn
        self._compiled = None
        self._eval = None
        self.checkpointer = self._make_checkpointer()
        self.writer = MetricWriter(self.workdir / "tb", enabled=self.is_main,
                                   wandb_project=s.logging.wandb_project if s.logging.wandb else None,
                                   run_config=config.to_dict(), jsonl=self.workdir / "metrics.jsonl")
        if self.is_main:
            (self.workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
        self.skips = SkipMonitor(s.train.max_skipped_updates, s.train.batch_size)
        self.exported_step: int | None = None

    @property
    def skipped_updates(self) -> int:
        return self.skips.skipped

    # -- checkpoints -----------------------------------------------------------------
    def _make_checkpointer(self):
        from jaxft.checkpoint.train_state import TrainCheckpointer

        ck = self.settings.checkpoint
        directory = ck.dir or str(self.workdir / "checkpoints")
        es = self.settings.train.early_stopping
        return TrainCheckpointer(directory, max_to_keep=ck.keep, best_metric=es.metric or None,
                                 best_mode=es.mode, async_save=ck.async_save)

    def _abstract_state(self):
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), self.state, self.state_sh)

    def maybe_restore(self) -> int:
        from jaxft.checkpoint.train_state import CheckpointLayoutError

        if self.checkpointer.latest_step() is None:
            return 0
        # EMA may be switched on for a resumed run: then it restarts from the params.
        try:
            found = self.checkpointer.restore_latest_intact(self._abstract_state(), optional_keys=("ema",))
        except CheckpointLayoutError as err:
            raise WorkdirMismatch(layout_message(err, self.checkpointer.directory)) from None
        if found is None:
            return 0
        step, state, data_state, metadata = found
        check_same_data(self.workdir, metadata, data_state, self.task.data_fingerprint)
        if "ema" in self.state and "ema" not in state:
            state["ema"] = jax.tree.map(jnp.copy, state["params"])
        self.state = state
        if data_state is not None:
            self.task.train_batches.set_state(data_state)
        log.info("resumed from step %d (%s)", step, self.checkpointer.directory)
        return int(step)

    def save(self, metrics: dict | None = None, force: bool = False):
        step = int(jax.device_get(self.state["step"]))
        metadata = {"recipe": self.settings.recipe}
        if self.task.data_fingerprint is not None:
            metadata["data"] = self.task.data_fingerprint
        self.checkpointer.save(step, self.state, data_state=self.task.train_batches.get_state(),
                               metadata=metadata, metrics=metrics, force=force)

    # -- steps -----------------------------------------------------------------------
    def train_step(self, host_batch: dict) -> dict:
        batch = global_batch(host_batch, self.mesh, self.rules)
        if self._compiled is None:
            batch_sh = jax.tree.map(lambda x: x.sharding, batch)
            self._compiled = jit_step(self.step_fn, self.state_sh, self.frozen_sh, batch_sh)
        with jax.set_mesh(self.mesh):
            self.state, metrics = self._compiled(self.state, self.frozen, batch)
        return metrics

    def current_params(self, state: dict | None = None):
        """The params eval, samples and export use: the EMA when ``optim.eval_with_ema``, else the params."""
        state = self.state if state is None else state
        use_ema = "ema" in state and self.settings.optim.eval_with_ema
        return state["ema"] if use_ema else state["params"]

    def evaluate(self) -> dict[str, float]:
        task = self.task
        metrics = self._batched_eval() if task.eval_batches is not None else {}
        if task.host_eval_fn is not None and self.is_main:
            metrics.update(task.host_eval_fn(jax.device_get(self.current_params()), self.frozen))
        return metrics

    def _batched_eval(self) -> dict[str, float]:
        task = self.task
        params = self.current_params()
        if self._eval is None:
            def eval_sums(p, f, b):
                if task.eval_fn is not None:
                    return task.eval_fn(p, f, b)
                loss_sum, weight_sum, metrics = task.loss_fn(p, f, b, None)
                return {"loss": loss_sum, "loss_count": weight_sum, **metrics}

            self._eval = jax.jit(eval_sums)
        totals: dict[str, float] = {}
        limit = self.settings.train.eval_batches or None
        for i, host_batch in enumerate(task.eval_batches()):
            if limit is not None and i >= limit:
                break
            with jax.set_mesh(self.mesh):
                sums = jax.device_get(self._eval(params, self.frozen, global_batch(host_batch, self.mesh, self.rules)))
            for k, v in sums.items():
                totals[k] = totals.get(k, 0.0) + float(v)
        return summarize(totals)

    # -- loop ------------------------------------------------------------------------
    def close(self) -> None:
        """Release the workdir lock (``run`` does when it stops; also released when the process exits)."""
        from jaxft.train.workdir import release_lock

        if self.is_main:
            release_lock(self.workdir)

    def run(self, until_step: int | None = None) -> dict[str, Any]:
        """Train to ``train.steps`` (or stop early at ``until_step``, checkpointing
        there as a preemption would: the schedule still spans the full run)."""
        from jaxft.train.workdir import acquire_lock

        if self.is_main:
            acquire_lock(self.workdir)  # (taken in __init__; again here for a second run() after close())
        start = self.maybe_restore()
        total = self.settings.train.steps
        last = min(total, until_step) if until_step else total
        history: dict[str, Any] = {"train_loss": [], "eval": [], "stopped": None}
        failed = True  # until the loop ends normally: then cleanup errors must not hide the first error
        try:
            train_loop(self, start, last, history)
            failed = False
        finally:
            try:
                self._finish(quiet=failed)
            finally:
                self.close()  # the workdir is free again once this run has stopped
        history["checkpoints"] = str(self.checkpointer.directory)
        history["final_step"] = int(jax.device_get(self.state["step"]))
        history["skipped_updates"] = self.skipped_updates
        history["best_step"] = self.checkpointer.best_step()
        return history

    def write(self, method, *args, **kwargs) -> None:
        try:
            method(*args, **kwargs)
        except OSError as err:  # e.g. a full disk: the file's own error names no file
            raise OSError(f"writing the metric logs in {self.workdir} failed: {err.strerror or err}") from err

    def _finish(self, quiet: bool) -> None:
        """Close the metric writer and wait for the last save; while another error is on its way
        out (``quiet``), failures here are logged instead of replacing it."""
        for name, close in (("metric logs", lambda: self.write(self.writer.close)),
                            ("checkpoint", self.checkpointer.wait)):
            try:
                close()
            except Exception as err:  # noqa: BLE001
                if not quiet:
                    raise
                log.warning("closing the %s after the error below also failed: %s", name, err)

    def eval_and_log(self, step: int, history: dict, stopping: EarlyStopping) -> dict[str, float]:
        eval_metrics = self.evaluate()
        stopping.check_metric(eval_metrics)
        if eval_metrics:
            history["eval"].append((step, eval_metrics))
            self.write(self.writer.scalars, step, eval_metrics, prefix="eval/")
            if self.is_main:
                tqdm.write(f"step {step}: eval " + ", ".join(f"{k}={v:.4f}" for k, v in eval_metrics.items()))
        self._log_samples(step)
        return eval_metrics

    def learning_rates(self) -> dict[str, float]:
        from jaxft.train.optim import current_learning_rates

        rates = jax.device_get(current_learning_rates(self.state["opt_state"]))
        out = {f"lr/{g}": float(v) for g, v in rates.items()}
        if rates:
            out["lr"] = float(max(rates.values()))
        return out

    def _log_samples(self, step: int):
        if self.task.samples_fn is None or not self.is_main:
            return
        params = jax.device_get(self.current_params())
        for name, text in self.task.samples_fn(params, self.frozen).items():
            self.write(self.writer.text, step, f"samples/{name}", text)
            tqdm.write(f"[{name}] {text}")

    def export_params(self) -> tuple[int, Any]:
        """``(step, params)`` to export: the best checkpoint's when ``export.source`` is ``best`` and one
        exists (as ``load_best_model_at_end`` users expect), else the current (last) state's."""
        source = self.settings.export.source
        if source not in ("best", "last"):
            raise ValueError(f"config key 'export.source'={source!r}: expected best or last")
        step = int(jax.device_get(self.state["step"]))
        best = self.checkpointer.best_step() if source == "best" else None
        if best is None or best == step:
            return step, self.current_params()
        try:
            state, _, _ = self.checkpointer.restore(best, self._abstract_state(), optional_keys=("ema",))
        except Exception as err:  # noqa: BLE001 - a damaged best checkpoint: the last state is still good
            log.warning("the best checkpoint (step %d in %s) cannot be read (%s); exporting the last state "
                        "(step %d) instead", best, self.checkpointer.directory, " ".join(str(err).split())[:200],
                        step)
            return step, self.current_params()
        return best, self.current_params(state)

    def export(self, directory: str | Path | None = None) -> Path | None:
        if self.task.export_fn is None:
            return None
        directory = Path(directory or self.workdir / "export")
        self.checkpointer.wait()
        step, params = self.export_params()
        if self.is_main:
            self.task.export_fn(str(directory), jax.device_get(params), self.frozen)
        self.exported_step = step
        return directory
