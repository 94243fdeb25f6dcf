"""Resumable train-state checkpoints on Orbax: keep-last-K plus best, atomic, sharding-aware.

A step directory holds up to three Orbax items:

* ``state``: the train-state pytree (params, optimizer state, step, rng, ...),
  written by every process straight from its shards.
* ``data_state``: JSON position of the input pipeline.
* ``metadata``: JSON about the run (config, model name, ...).

Orbax writes each step into a temporary directory and renames it on commit
(on GCS, where there is no rename, a commit marker file plays that part), so a
process killed mid-save leaves the previous steps intact; leftovers of the
interrupted save are ignored and deleted when a checkpointer is next opened.

Restoring checks the saved tree against the requested one *before* reading
any array and explains layout changes in terms of tree paths, instead of
surfacing an Orbax traceback. ``restore_latest_intact`` falls back from a
damaged newest step to the previous intact one.

A save that fails (read-only directory, full disk) raises ``CheckpointSaveError``
in the caller's thread -- from ``save``, ``wait`` or ``raise_background_error`` --
naming the directory; the previous complete step stays the latest.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

PyTree = Any
log = logging.getLogger(__name__)

STATE, DATA_STATE, METADATA = "state", "data_state", "metadata"
_MAX_LISTED = 12


class CheckpointLayoutError(ValueError):
    """The saved state tree does not match the tree asked for on restore.

    ``missing``/``extra`` list tree paths only the request / only the checkpoint has; ``shapes``
    holds ``(path, saved shape, requested shape)`` for leaves present in both with other shapes.
    """

    def __init__(self, message: str, *, step: int = -1, missing: Sequence[str] = (), extra: Sequence[str] = (),
                 shapes: Sequence[tuple[str, tuple, tuple]] = ()):
        super().__init__(message)
        self.step, self.missing, self.extra, self.shapes = step, list(missing), list(extra), list(shapes)


class CheckpointSaveError(OSError):
    """Writing a checkpoint failed (e.g. a read-only directory or a full disk)."""


class CheckpointDamagedError(ValueError):
    """No step of a checkpoint directory could be read back."""


def _path_str(path: tuple[str, ...]) -> str:
    return "/".join(path)


def _listing(title: str, items: list[str]) -> str:
    shown = items[:_MAX_LISTED]
    more = f"\n    ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
    return f"  {title} ({len(items)}):\n    " + "\n    ".join(shown) + more


def _as_abstract(tree: PyTree) -> PyTree:
    """Arrays become ShapeDtypeStructs on the same sharding; other leaves pass through."""
    def one(x):
        if isinstance(x, jax.ShapeDtypeStruct):
            return x
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        if isinstance(x, (np.ndarray, np.generic)):
            return jax.ShapeDtypeStruct(x.shape, x.dtype)
        return x

    return jax.tree.map(one, tree)


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _keys_as_data(tree: PyTree) -> PyTree:
    """Typed PRNG keys (``jax.random.key``) are stored as their uint32 key data."""
    def one(x):
        if not _is_key(x):
            return x
        if isinstance(x, jax.ShapeDtypeStruct):
            data = jax.eval_shape(jax.random.key_data, x)
            return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=x.sharding)
        return jax.random.key_data(x)

    return jax.tree.map(one, tree)


def _keys_from_data(restored: PyTree, target: PyTree) -> PyTree:
    def one(x, t):
        if not _is_key(t):
            return x
        key = jax.random.wrap_key_data(x)
        if key.dtype != t.dtype:
            raise TypeError(f"restored PRNG key has dtype {key.dtype}, the target asks for {t.dtype}; "
                            "set jax_default_prng_impl to the implementation the run used")
        return key

    return jax.tree.map(one, restored, target)


class TrainCheckpointer:
    """Save and restore the train state every N steps, keeping the last K and the best.

    Args:
      directory: local path or ``gs://`` URL holding one sub-directory per step.
      max_to_keep: newest checkpoints kept (None keeps all).
      best_metric: name of a metric passed to ``save(metrics=...)``; the best
        checkpoint by it is kept in addition to the last ``max_to_keep``.
      best_mode: ``"min"`` (losses) or ``"max"`` (accuracies).
      async_save: write in a background thread; ``save`` returns once the
        arrays are copied off the device, so the caller may donate them.
      save_interval_steps: ``save`` only writes on multiples of this (and on
        the first call, and whenever ``force=True``).
      read_only: for readers of a directory another job is writing (e.g. an
        evaluator): never saves or deletes, and leaves in-progress saves alone.
        A writable checkpointer deletes unfinished saves when it opens.
    """

    def __init__(self, directory: str | epath.PathLike, *, max_to_keep: int | None = 3,
                 best_metric: str | None = None, best_mode: str = "min", async_save: bool = True,
                 save_interval_steps: int = 1, read_only: bool = False):
        if best_mode not in ("min", "max"):
            raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}")
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1 or None, got {max_to_keep}")
        # Orbax needs absolute local paths; URLs (gs://...) pass through unchanged.
        text = os.fspath(directory)
        self.directory = epath.Path(text if "://" in text else os.path.abspath(os.path.expanduser(text)))
        self.best_metric = best_metric
        keep: ocp.checkpoint_managers.PreservationPolicy = ocp.checkpoint_managers.LatestN(n=max_to_keep)
        best_fn = None
        if best_metric is not None:
            best_fn = lambda metrics: float(metrics[best_metric])  # noqa: E731
            keep = ocp.checkpoint_managers.AnyPreservationPolicy([keep, ocp.checkpoint_managers.BestN(
                get_metric_fn=best_fn, reverse=best_mode == "min", n=1, keep_checkpoints_without_metrics=False)])
        self._options = ocp.CheckpointManagerOptions(
            save_interval_steps=0 if read_only else save_interval_steps, preservation_policy=keep, best_fn=best_fn,
            best_mode=best_mode, enable_async_checkpointing=async_save, cleanup_tmp_directories=not read_only,
            create=not read_only, read_only=read_only,
            # Step directories are made in the caller's thread: when that fails in Orbax's background
            # thread, the thread waiting for it blocks for the 20-minute timeout and the process hangs at exit.
            async_options=ocp.AsyncOptions(create_directories_asynchronously=False))
        self.read_only = read_only
        # Opened lazily for writing so that restoring from a mistyped path does not create it.
        self._manager: ocp.CheckpointManager | None = None
        self._saving: int | None = None  # step of the save that may still be running in the background
        self._damaged: set[int] = set()  # steps found unreadable: a new save of that step replaces them
        self._open_if_exists()

    def _open_if_exists(self) -> ocp.CheckpointManager | None:
        if self._manager is None and self.directory.exists():
            self._manager = self._open()
        return self._manager

    def _open(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.directory, options=self._options, item_names=(STATE, DATA_STATE, METADATA),
            item_handlers={STATE: ocp.PyTreeCheckpointHandler(), DATA_STATE: ocp.JsonCheckpointHandler(),
                           METADATA: ocp.JsonCheckpointHandler()})

    # ------------------------------------------------------------------ queries

    def _current(self) -> ocp.CheckpointManager | None:
        manager = self._open_if_exists()
        if manager is not None and self.read_only:
            manager.reload()  # a reader follows the steps the writer commits
        return manager

    def all_steps(self) -> list[int]:
        manager = self._current()
        return sorted(manager.all_steps()) if manager else []

    def latest_step(self) -> int | None:
        manager = self._current()
        return manager.latest_step() if manager else None

    def best_step(self) -> int | None:
        """Best step by ``best_metric`` among those saved with metrics; None without a best_metric."""
        manager = self._current()
        if manager is None or self.best_metric is None:
            return None
        return manager.best_step()

    # ------------------------------------------------------------------ save

    def save(self, step: int, state: PyTree, *, data_state: Mapping[str, Any] | None = None,
             metadata: Mapping[str, Any] | None = None, metrics: Mapping[str, Any] | None = None,
             force: bool = False) -> bool:
        """Write ``state`` (and the JSON items) as ``step``; returns whether a save started.

        Skipped (False) off the save interval unless ``force``, and when ``step``
        is already saved (so a final forced save may repeat the last periodic one).
        ``metrics`` rank checkpoints for keep-best; JSON scalars or 0-d arrays.
        """
        step = int(step)
        if self.read_only:
            raise PermissionError(f"TrainCheckpointer for {self.directory} is read-only")
        try:
            if self._manager is None:
                self._manager = self._open()
            if step in self._damaged and step in self._manager.all_steps():
                log.warning("replacing the damaged checkpoint of step %d in %s", step, self.directory)
                self._manager.delete(step)
            self._damaged.discard(step)
            if step in self._manager.all_steps():
                log.info("checkpoint for step %d already exists in %s; not saving it again", step, self.directory)
                return False
        except Exception as err:  # noqa: BLE001 - a failed earlier save surfaces here, or the directory is unusable
            raise self._save_error(self._saving if self._saving is not None else step, err) from err
        items = {STATE: ocp.args.PyTreeSave(_keys_as_data(state))}
        if data_state is not None:
            items[DATA_STATE] = ocp.args.JsonSave(dict(data_state))
        if metadata is not None:
            items[METADATA] = ocp.args.JsonSave(dict(metadata))
        metrics = self._json_metrics(metrics)
        if self._saving is not None:
            # Orbax waits for the previous save before starting this one anyway; waiting here first
            # tells a failure of that save (blame it) from a failure to start this one (blame this step).
            try:
                self._manager.wait_until_finished()
            except Exception as err:  # noqa: BLE001
                raise self._save_error(self._saving, err) from err
            self._saving = None
        try:
            started = self._manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=force)
        except Exception as err:  # noqa: BLE001
            raise self._save_error(step, err) from err
        if started:
            self._saving = step
        return started

    def _save_error(self, step: int, err: BaseException) -> CheckpointSaveError:
        self._saving = None
        reason = err.strerror if isinstance(err, OSError) and err.strerror else (str(err) or type(err).__name__)
        reason = " ".join(str(reason).split())
        code = re.search(r"os_error_code='(\d+)'", reason)  # TensorStore's long messages end in the errno
        if code:
            reason = os.strerror(int(code.group(1)))
        elif len(reason) > 300:
            reason = reason[:300] + "..."
        try:
            # (Orbax lists a step from the start of its save: the failed one is not complete)
            steps = self._manager.all_steps() if self._manager else []
            done = [s for s in steps if (step < 0 or s < step) and s not in self._damaged]
        except Exception:  # noqa: BLE001 - the directory may be unreadable too
            done = []
        last = f"the last complete checkpoint is step {max(done)}" if done else "no complete checkpoint was written"
        return CheckpointSaveError(f"saving checkpoint step {step} in {self.directory} failed: {reason} ({last})")

    def raise_background_error(self) -> None:
        """Raise ``CheckpointSaveError`` now if a background save has already failed (a cheap check)."""
        if self._manager is None or self._saving is None:
            return
        try:
            self._manager.check_for_errors()
        except Exception as err:  # noqa: BLE001
            raise self._save_error(self._saving, err) from err

    def _json_metrics(self, metrics: Mapping[str, Any] | None) -> dict[str, float] | None:
        if metrics is None:
            return None
        if self.best_metric is not None and self.best_metric not in metrics:
            raise KeyError(f"TrainCheckpointer.save: metrics {sorted(metrics)} lack best_metric "
                           f"{self.best_metric!r}")
        return {k: float(np.asarray(v)) for k, v in metrics.items()}

    def wait(self) -> None:
        """Block until a background save has committed; ``CheckpointSaveError`` if it failed."""
        if self._manager is not None:
            try:
                self._manager.wait_until_finished()
            except Exception as err:  # noqa: BLE001
                raise self._save_error(self._saving if self._saving is not None else -1, err) from err
            self._saving = None

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()

    def __enter__(self) -> TrainCheckpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ restore

    def restore(self, step: int | None = None, abstract_state: PyTree | None = None, *,
                optional_keys: Sequence[str] = ()) -> tuple[PyTree, dict | None, dict | None]:
        """Read a step (default: the latest) as ``(state, data_state, metadata)``.

        ``abstract_state`` is the state tree with ``jax.ShapeDtypeStruct`` (or
        array) leaves; each array is read straight onto the leaf's ``sharding``,
        so no host ever holds the whole state. Dtypes follow the target (a
        float32 checkpoint can be read as bfloat16). Without it, the tree comes
        back as Orbax stores it (containers as dicts and lists) on the saved
        shardings, which needs the same device topology.

        ``optional_keys`` names top-level entries of a dict state that may be
        absent on either side: one the target has but the checkpoint lacks
        (e.g. a newly enabled ``ema``) is left out of the returned state, with a
        warning, for the caller to initialise; one only the checkpoint has is
        not read. Any other difference raises ``CheckpointLayoutError``.
        ``data_state``/``metadata`` are None when that step saved none.
        """
        manager, step = self._resolve_step(step)
        saved_items = manager.item_metadata(step)
        saved_tree = saved_items[STATE].tree

        if abstract_state is None:
            state = manager.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.PyTreeRestore()}))[STATE]
        else:
            target = _as_abstract(abstract_state)
            target, partial = self._checked_target(step, target, saved_tree, optional_keys)
            stored = _keys_as_data(target)
            restore = ocp.args.PyTreeRestore(item=stored, partial_restore=partial,
                                             restore_args=ocp.checkpoint_utils.construct_restore_args(stored))
            state = manager.restore(step, args=ocp.args.Composite(**{STATE: restore}))[STATE]
            state = _keys_from_data(state, target)

        # A JSON item's metadata is None, but its name is listed only if that step saved it.
        json_items = {name: ocp.args.JsonRestore() for name in (DATA_STATE, METADATA) if name in saved_items.keys()}
        extras = manager.restore(step, args=ocp.args.Composite(**json_items)) if json_items else {}
        return state, extras.get(DATA_STATE), extras.get(METADATA)

    def restore_latest_intact(self, abstract_state: PyTree, *, optional_keys: Sequence[str] = ()
                              ) -> tuple[int, PyTree, dict | None, dict | None] | None:
        """``(step, state, data_state, metadata)`` of the newest step that reads back, or None without any.

        A step that fails to read (truncated or missing files) is logged as damaged and the
        previous one is tried; a later ``save`` of a damaged step replaces it. A layout mismatch
        (``CheckpointLayoutError``) is not damage and is raised at once. When no step reads,
        ``CheckpointDamagedError`` names each step with its error.
        """
        steps = self.all_steps()
        failures = []
        for step in reversed(steps):
            try:
                state, data_state, metadata = self.restore(step, abstract_state, optional_keys=optional_keys)
            except CheckpointLayoutError:
                raise
            except Exception as err:  # noqa: BLE001 - any read failure means this step cannot be resumed from
                reason = " ".join((str(err) or type(err).__name__).split())[:300]
                log.warning("checkpoint step %d in %s is damaged and is skipped (%s: %s)", step, self.directory,
                            type(err).__name__, reason)
                self._damaged.add(step)
                failures.append(f"step {step}: {reason}")
                continue
            if failures:
                log.warning("resuming from step %d in %s, the newest intact checkpoint (skipped damaged step%s %s)",
                            step, self.directory, "s" if len(failures) > 1 else "",
                            ", ".join(str(s) for s in sorted(self._damaged, reverse=True)))
            return step, state, data_state, metadata
        if failures:
            raise CheckpointDamagedError(
                f"no checkpoint in {self.directory} can be read (damaged: {'; '.join(failures)}); "
                f"move {self.directory} aside to start afresh")
        return None

    def _resolve_step(self, step: int | None) -> tuple[ocp.CheckpointManager, int]:
        manager = self._current()
        if manager is None:
            raise FileNotFoundError(f"checkpoint directory {self.directory} does not exist")
        steps = self.all_steps()
        if not steps:
            hint = ""
            if (self.directory / "_CHECKPOINT_METADATA").exists():
                hint = f"; it looks like a single step directory, pass its parent {self.directory.parent}"
            raise FileNotFoundError(f"no checkpoints in {self.directory}{hint}")
        if step is None:
            return manager, steps[-1]
        if int(step) not in steps:
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; saved steps: {steps}")
        return manager, int(step)

    def _checked_target(self, step: int, target: PyTree, saved_tree: PyTree,
                        optional_keys: Sequence[str]) -> tuple[PyTree, bool]:
        """The restore target after optional-key handling, or a CheckpointLayoutError."""
        saved = ocp.tree.to_flat_dict(saved_tree)
        wanted = ocp.tree.to_flat_dict(_keys_as_data(target))
        saved_tops = {path[0] for path in saved}
        wanted_tops = {path[0] for path in wanted}
        optional = set(optional_keys)
        if optional and not isinstance(target, Mapping):
            raise TypeError(f"optional_keys needs a dict-like state at the top level, got {type(target).__name__}")

        dropped = sorted(k for k in optional & wanted_tops if k not in saved_tops)
        if dropped:
            log.warning("checkpoint %s step %d has no %s; restoring without it, initialise it afresh",
                        self.directory, step, dropped)
            target = {k: v for k, v in target.items() if k not in dropped}
            wanted = {p: v for p, v in wanted.items() if p[0] not in dropped}
        skipped = sorted(k for k in optional & saved_tops if k not in wanted_tops)
        if skipped:
            log.info("checkpoint %s step %d also holds %s; not restoring it", self.directory, step, skipped)
            saved = {p: v for p, v in saved.items() if p[0] not in skipped}

        missing = sorted(_path_str(p) for p in wanted.keys() - saved.keys())
        extra = sorted(_path_str(p) for p in saved.keys() - wanted.keys())
        differing = sorted((_path_str(p), tuple(saved[p].shape), tuple(wanted[p].shape))
                           for p in wanted.keys() & saved.keys()
                           if hasattr(saved[p], "shape") and hasattr(wanted[p], "shape")
                           and tuple(saved[p].shape) != tuple(wanted[p].shape))
        shapes = [f"{path}: saved {old}, requested {new}" for path, old, new in differing]
        if missing or extra or shapes:
            parts = [f"checkpoint {self.directory} step {step} does not match the state layout asked for:"]
            if missing:
                parts.append(_listing("requested but not in the checkpoint", missing))
            if extra:
                parts.append(_listing("in the checkpoint but not requested", extra))
            if shapes:
                parts.append(_listing("shape differs", shapes))
            parts.append("This usually means the model, LoRA targets/rank or optimizer groups changed since the "
                         "checkpoint was written. A top-level entry added or removed on purpose (e.g. 'ema') "
                         "can be passed in optional_keys.")
            raise CheckpointLayoutError("\n".join(parts), step=step, missing=missing, extra=extra, shapes=differing)
        return target, bool(skipped)
