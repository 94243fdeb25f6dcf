"""The training loop shared by every recipe.

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
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxft.settings import Settings, parse_settings, resolve_epochs
from jaxft.train import mesh as mesh_lib
from jaxft.train.metrics import MetricWriter, summarize
from jaxft.train.placement import Placement
from jaxft.train.sharding import tree_shardings
from jaxft.train.step import init_state, jit_step, make_step_fn
from jaxft.train.task import TrainTask

log = logging.getLogger("jaxft")


class Preempted(Exception):
    """SIGTERM or SIGINT: a checkpoint was saved; ``exit_code`` is 0 for SIGTERM (a job queue's
    preemption: the same command resumes) and 130 for Ctrl-C, as shells expect."""

    def __init__(self, message: str, exit_code: int = 0):
        super().__init__(message)
        self.exit_code = exit_code


class WorkdirMismatch(ValueError):
    """The workdir's checkpoints were written by a run this config cannot continue."""


class Diverged(Exception):
    """Every one of the last ``train.max_skipped_updates`` updates was non-finite: nothing is exported."""


def place(tree, shardings):
    """``tree`` on ``shardings``; leaves already there (a loader streamed them onto their placement) stay put."""
    def put(x, s):
        if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(s, x.ndim):
            return x
        return jax.device_put(x, s)

    return jax.tree.map(put, tree, shardings)


def global_batch(batch: dict, mesh, rules) -> dict:
    """Host batch (this process's rows) -> global arrays sharded over the batch axes."""
    def put(x):
        x = np.asarray(x)
        global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
        sharding = mesh_lib.batch_sharding(mesh, rules, global_shape)
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return {k: put(v) for k, v in batch.items()}


def _reached_preemption_sync_point(step: int) -> bool:
    """True on every process at the same step once any of them got SIGTERM (jax.distributed runs)."""
    from jax.experimental import multihost_utils

    return bool(multihost_utils.reached_preemption_sync_point(step))


TaskOrBuilder = TrainTask | Callable[[Any, Any], TrainTask]


class Trainer:
    """``Trainer(config, workdir, task)``: ``task`` is a ``TrainTask`` or a ``build(config, placement)``
    that makes one on this trainer's ``Placement`` (``jaxft.main`` passes the recipe's ``build``)."""

    def __init__(self, config, workdir: str | Path, task: TaskOrBuilder, settings: Settings | None = None):
        from jaxft.train.optim import make_optimizer  # heavy import kept local

        from jaxft.train.workdir import acquire_lock, check_writable

        self.config = config
        s = self.settings = settings if settings is not None else parse_settings(config)
        self.is_main = jax.process_index() == 0
        # Checked before the model loads: a bad workdir should cost seconds, not a model load.
        self.workdir = check_writable(workdir).resolve()
        ck_dir = s.checkpoint.dir or str(self.workdir / "checkpoints")
        if "://" not in ck_dir:
            check_writable(ck_dir, "checkpoint directory")
        if self.is_main:
            acquire_lock(self.workdir)
        self.placement = Placement.of(s.mesh.shape, s.mesh.rules)
        self.rules, self.mesh = self.placement.rules, self.placement.mesh
        if not isinstance(task, TrainTask):
            with jax.set_mesh(self.mesh):
                task = task(config, self.placement)
        self.task: TrainTask = task
        s = self.settings = resolve_epochs(config, s, task.train_records)
        self.trainable_sh = tree_shardings(task.trainable, self.mesh, self.rules, task.trainable_axes)
        self.frozen_sh = tree_shardings(task.frozen, self.mesh, self.rules, task.frozen_axes)
        self.frozen = place(task.frozen, self.frozen_sh)
        trainable = place(task.trainable, self.trainable_sh)
        self.optimizer = make_optimizer(s.optim, trainable, task.group_fn, task.no_decay)
        use_ema = s.optim.ema_decay > 0
        state_shapes = jax.eval_shape(lambda p: init_state(p, self.optimizer, s.seed, use_ema), trainable)
        self.state_sh = tree_shardings(state_shapes, self.mesh, self.rules)
        self.state_sh["params"] = self.trainable_sh
        if use_ema:
            self.state_sh["ema"] = self.trainable_sh
        self.state = jax.jit(lambda p: init_state(p, self.optimizer, s.seed, use_ema),
                             out_shardings=self.state_sh)(trainable)
        self.step_fn = make_step_fn(task.loss_fn, self.optimizer, accum_steps=s.optim.accum_steps,
                                    ema_decay=s.optim.ema_decay or 0.999)
        self._compiled = None
        self._eval = None
        self.checkpointer = self._make_checkpointer()
        self.writer = MetricWriter(self.workdir / "tb", enabled=self.is_main,
                                   wandb_project=s.logging.wandb_project if s.logging.wandb else None,
                                   run_config=config.to_dict(), jsonl=self.workdir / "metrics.jsonl")
        if self.is_main:
            (self.workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
        self._preempted: int | None = None  # the signal asking to stop, once one came
        self.skipped_updates = 0
        self.exported_step: int | None = None

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
            raise WorkdirMismatch(_layout_message(err, self.checkpointer.directory)) from None
        if found is None:
            return 0
        step, state, data_state, metadata = found
        self._check_same_data(metadata, data_state)
        if "ema" in self.state and "ema" not in state:
            state["ema"] = jax.tree.map(jnp.copy, state["params"])
        self.state = state
        if data_state is not None:
            self.task.train_batches.set_state(data_state)
        log.info("resumed from step %d (%s)", step, self.checkpointer.directory)
        return int(step)

    def _check_same_data(self, metadata: dict | None, data_state: dict | None) -> None:
        saved = (metadata or {}).get("data")
        current = self.task.data_fingerprint
        if saved is None or current is None or saved == current:
            return
        changed = ", ".join(f"data.{k}: {saved.get(k, '')!r} -> {current.get(k, '')!r}"
                            for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k))
        position = (data_state or {}).get("global_batches")
        where = f" (data position: {position} batches)" if position is not None else ""
        raise WorkdirMismatch(f"workdir {self.workdir} was trained on other data ({changed}); its saved data "
                              f"position{where} would not mean the same on this data: use a new --workdir, "
                              "or the data that run used")

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
    def _on_signal(self, signum, frame):
        if signum == signal.SIGINT and self._preempted == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the save
        self._preempted = signum
        if signum == signal.SIGINT and self.is_main:
            tqdm.write("Ctrl-C: saving a checkpoint after this step (Ctrl-C again to stop without saving)")

    def close(self) -> None:
        """Release the workdir lock (``run`` does when it stops; also released when the process exits)."""
        from jaxft.train.workdir import release_lock

        if self.is_main:
            release_lock(self.workdir)

    def run(self, until_step: int | None = None) -> dict[str, Any]:
        """Train to ``config.train.steps`` (or stop early at ``until_step``, checkpointing
        there as a preemption would: the schedule still spans the full run)."""
        from jaxft.train.workdir import acquire_lock

        cfg = self.settings.train
        if self.is_main:
            acquire_lock(self.workdir)  # (taken in __init__; again here for a second run() after close())
        start = self.maybe_restore()
        total = cfg.steps
        last = min(total, until_step) if until_step else total
        # With several processes a per-process SIGTERM flag could make one process save while another steps on:
        # there JAX's preemption notifier takes SIGTERM and every process asks it at every step instead.
        multi_process = jax.process_count() > 1
        signals = (signal.SIGINT,) if multi_process else (signal.SIGTERM, signal.SIGINT)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in signals}
        history: dict[str, Any] = {"train_loss": [], "eval": [], "stopped": None}
        es = cfg.early_stopping
        best, bad_evals = None, 0
        bar = tqdm(total=total, initial=start, disable=not self.is_main, dynamic_ncols=True, desc="train")
        t_last, tokens = time.perf_counter(), 0.0
        pending_checks: list = []  # (step, finite flag) not yet read back, to avoid a sync every step
        failed = True  # until the loop ends normally: then cleanup errors must not hide the first error
        try:
            if start == 0 and cfg.eval_at_start:
                self._eval_and_log(0, history)
            for step in range(start + 1, last + 1):
                host_batch = next(self.task.train_batches)
                tokens += float(np.sum(host_batch[self.task.tokens_key])) * jax.process_count()
                metrics = self.train_step(host_batch)
                pending_checks.append((step, metrics["finite"]))
                if jax.process_count() == 1:  # (several processes learn of it together, at the next save)
                    self.checkpointer.raise_background_error()
                max_skipped = cfg.max_skipped_updates
                if (step % cfg.log_every == 0 or step == last
                        or (max_skipped and len(pending_checks) >= max_skipped)):
                    self._report_skipped(pending_checks)
                    pending_checks = []
                    if max_skipped and self._skipped_in_a_row >= max_skipped:
                        raise Diverged(f"the last {self._skipped_in_a_row} updates (to step {step}) were all skipped "
                                       f"for non-finite loss or gradients ({self.skipped_updates} skipped updates "
                                       "in this run); stopping without an export (lower optim.schedule.peak_lr "
                                       "or check the data)")
                if step % cfg.log_every == 0 or step == last:
                    m = jax.device_get(metrics)
                    now = time.perf_counter()
                    scalars = summarize({k: float(v) for k, v in m.items() if k not in ("finite",)})
                    scalars["tokens_per_s"] = tokens / max(now - t_last, 1e-9)
                    scalars.update(self._learning_rates(step))
                    t_last, tokens = now, 0.0
                    history["train_loss"].append((step, scalars["loss"]))
                    self._write(self.writer.scalars, step, scalars, prefix="train/")
                    bar.set_postfix(loss=f"{scalars['loss']:.4f}", lr=f"{scalars.get('lr', 0):.2e}",
                                    tok_s=f"{scalars['tokens_per_s']:.0f}")
                bar.update(1)
                eval_now = cfg.eval_every and (step % cfg.eval_every == 0 or step == total)
                eval_metrics = None
                if eval_now:
                    eval_metrics = self._eval_and_log(step, history)
                    if eval_metrics:
                        if es.metric and es.metric in eval_metrics:
                            value = eval_metrics[es.metric]
                            improved = best is None or (value < best if es.mode == "min" else value > best)
                            best, bad_evals = (value, 0) if improved else (best, bad_evals + 1)
                if eval_metrics:  # every eval is a candidate for the best checkpoint
                    self.save(metrics=eval_metrics)
                elif step % self.settings.checkpoint.every == 0 or step == last:
                    self.save()
                reason = None
                if eval_metrics and es.patience and bad_evals >= es.patience:
                    reason = f"{es.metric} did not improve for {bad_evals} evals"
                if eval_metrics and self.task.stop_fn is not None:
                    reason = self.task.stop_fn(self._eval_records(history)) or reason
                if reason:
                    if self.is_main:
                        tqdm.write(f"early stopping at step {step}: {reason}")
                    history["stopped"] = {"step": step, "reason": reason}
                    self.save(force=True)
                    break
                if multi_process and not self._preempted and _reached_preemption_sync_point(step):
                    self._preempted = signal.SIGTERM
                if self._preempted:
                    self.save(force=True)
                    self.checkpointer.wait()
                    self._report_skipped(pending_checks)
                    pending_checks = []
                    skipped = f"skipped updates (non-finite loss or gradient): {self.skipped_updates}"
                    if self._preempted == signal.SIGINT:
                        raise Preempted(f"Ctrl-C at step {step}: checkpoint saved; the same command resumes; "
                                        f"{skipped}", 130)
                    raise Preempted(f"SIGTERM at step {step}: checkpoint saved; {skipped}")
            failed = False
        finally:
            bar.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            try:
                self._finish(quiet=failed)
            finally:
                self.close()  # the workdir is free again once this run has stopped
        history["checkpoints"] = str(self.checkpointer.directory)
        history["final_step"] = int(jax.device_get(self.state["step"]))
        history["skipped_updates"] = self.skipped_updates
        history["best_step"] = self.checkpointer.best_step()
        return history

    def _write(self, method, *args, **kwargs) -> None:
        try:
            method(*args, **kwargs)
        except OSError as err:  # e.g. a full disk: the file's own error names no file
            raise OSError(f"writing the metric logs in {self.workdir} failed: {err.strerror or err}") from err

    def _finish(self, quiet: bool) -> None:
        """Close the metric writer and wait for the last save; while another error is on its way
        out (``quiet``), failures here are logged instead of replacing it."""
        for name, close in (("metric logs", lambda: self._write(self.writer.close)),
                            ("checkpoint", self.checkpointer.wait)):
            try:
                close()
            except Exception as err:  # noqa: BLE001
                if not quiet:
                    raise
                log.warning("closing the %s after the error below also failed: %s", name, err)

    @staticmethod
    def _eval_records(history: dict) -> list[dict]:
        """Each eval with the train loss last logged at or before it, for ``TrainTask.stop_fn``."""
        records = []
        for step, metrics in history["eval"]:
            losses = [loss for s, loss in history["train_loss"] if s <= step]
            records.append({"step": step, "train_loss": losses[-1] if losses else float("nan"), **metrics})
        return records

    def _eval_and_log(self, step: int, history: dict) -> dict[str, float]:
        es = self.settings.train.early_stopping
        eval_metrics = self.evaluate()
        if eval_metrics and es.metric and es.metric not in eval_metrics:
            raise ValueError(f"config key 'train.early_stopping.metric': '{es.metric}' is not an eval "
                             f"metric of this recipe (available: {', '.join(sorted(eval_metrics))})")
        if eval_metrics:
            history["eval"].append((step, eval_metrics))
            self._write(self.writer.scalars, step, eval_metrics, prefix="eval/")
            if self.is_main:
                tqdm.write(f"step {step}: eval " + ", ".join(f"{k}={v:.4f}" for k, v in eval_metrics.items()))
        self._log_samples(step)
        return eval_metrics

    _skipped_in_a_row = 0

    def _report_skipped(self, checks):
        per_process = self.settings.train.batch_size // jax.process_count()
        for step, finite in checks:
            if bool(jax.device_get(finite)):
                self._skipped_in_a_row = 0
            else:
                self.skipped_updates += 1
                self._skipped_in_a_row += 1
                log.warning("step %d: non-finite loss or gradient on the batch of step %d (process %d rows "
                            "%d-%d of the data stream); the update was skipped", step, step, jax.process_index(),
                            (step - 1) * per_process, step * per_process - 1)

    def _learning_rates(self, step: int) -> dict[str, float]:
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
            self._write(self.writer.text, step, f"samples/{name}", text)
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


def _layout_message(err, directory) -> str:
    """One line from a ``CheckpointLayoutError``: the first difference (params first) and what to do."""
    def params_first(path: str):
        return (not path.startswith("params"), path)

    def more(items: list) -> str:
        return f" (and {len(items) - 1} more)" if len(items) > 1 else ""

    if err.shapes:
        shapes = sorted(err.shapes, key=lambda item: params_first(item[0]))
        path, saved, requested = shapes[0]
        what = f"'{path}' has shape {saved} in the checkpoint and {requested} in this config{more(shapes)}"
    else:
        parts = []
        if err.extra:
            extra = sorted(err.extra, key=params_first)
            parts.append(f"the checkpoint has '{extra[0]}'{more(extra)} that this config does not")
        if err.missing:
            missing = sorted(err.missing, key=params_first)
            parts.append(f"this config needs '{missing[0]}'{more(missing)} that the checkpoint lacks")
        what = "; ".join(parts)
    return (f"the checkpoint in {directory} (step {err.step}) was written with another model or LoRA setup: "
            f"{what}; use a new --workdir or the same config")
