"""The contract between a recipe and the training engine.

A recipe builds a ``TrainTask``: which trees train and which stay frozen, how
to compute the loss of a batch, where batches come from, and optional eval,
samples and export. The engine (``jaxft.train``) owns everything else: the
mesh and shardings, the jitted step, optimizer state, checkpoints, logging.
The engine never imports a recipe; ``jaxft.main`` resolves ``config.recipe``
and hands the built task to ``Trainer(config, workdir, task)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import jax

PyTree = Any
Batch = dict[str, Any]  # numpy arrays with a leading (process-local) batch axis
Path_ = tuple[str, ...]

# Keys the step itself reports; a recipe metric may not reuse them.
RESERVED_METRICS = frozenset({"loss", "weight_sum", "grad_norm", "finite"})


class LossFn(Protocol):
    def __call__(self, trainable: PyTree, frozen: PyTree, batch: Batch, rng: jax.Array | None
                 ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
        """Return ``(loss_sum, weight_sum, metric_sums)``.

        Sums, not means: the engine adds them over micro-batches (and devices)
        and divides once, so gradient accumulation is exact. ``metric_sums``
        values are summed too; a metric ``"x"`` with a companion ``"x_count"``
        is logged as their ratio. ``rng`` is None at eval (no dropout).
        """


class CheckpointableIterator(Protocol):
    def __next__(self) -> Batch: ...

    def get_state(self) -> dict: ...

    def set_state(self, state: dict) -> None: ...


def no_decay_rank1(path: Path_, leaf: Any) -> bool:
    """Default ``no_decay``: scalars and vectors (biases, norm scales of an unstacked tree)."""
    return len(getattr(leaf, "shape", ())) <= 1


@dataclasses.dataclass
class TrainTask:
    trainable: PyTree  # dict of named groups, e.g. {"lora": ..., "projector": ...}
    frozen: PyTree  # anything the loss reads but does not train (base LLMs, maybe quantized)
    loss_fn: LossFn
    train_batches: CheckpointableIterator
    # Optimizer group of each trainable leaf (per-group learning rates); default: its top-level key.
    group_fn: Callable[[Path_, Any], str] = lambda path, leaf: path[0]
    # Leaves that get no weight decay, declared by the recipe (it knows its trees).
    no_decay: Callable[[Path_, Any], bool] = no_decay_rank1
    # Logical axis names per leaf (same structure as the tree, tuples or None); None -> inferred.
    trainable_axes: PyTree | None = None
    frozen_axes: PyTree | None = None
    eval_batches: Callable[[], Iterable[Batch]] | None = None
    # Eval metric sums of one batch (default: the loss_fn's sums, without dropout rng).
    eval_fn: Callable[[PyTree, PyTree, Batch], dict[str, jax.Array]] | None = None
    # Host-side metrics at each eval (e.g. ROUGE of generations), merged into the eval metrics.
    host_eval_fn: Callable[[PyTree, PyTree], dict[str, float]] | None = None
    # Custom early stopping: every eval so far ({"step", "train_loss", **metrics}) -> a reason, or None.
    stop_fn: Callable[[list[dict]], str | None] | None = None
    # Called at each eval with host-side params: returns text samples to log ({name: text}).
    samples_fn: Callable[[PyTree, PyTree], dict[str, str]] | None = None
    # Writes a deployable artifact (e.g. PEFT adapter, merged model) for the given params.
    export_fn: Callable[[str, PyTree, PyTree], None] | None = None
    tokens_key: str = "loss_mask"  # batch entry whose sum counts tokens for tokens/s
    description: str = ""
    # Where the training records come from (``data_fingerprint(config.data)``): saved with each checkpoint,
    # so a resume on other data is refused; None: not checked.
    data_fingerprint: dict[str, str] | None = None
    # How many training records there are, for ``train.epochs``; None: the recipe does not count them.
    train_records: int | None = None


DATA_SOURCE_KEYS = ("path", "hf_dataset", "hf_config", "hf_split")


def data_fingerprint(data: Any) -> dict[str, str] | None:
    """The keys of a data section (``jaxft.config.data_section``) that name where its records come from."""
    if data is None or not hasattr(data, "keys"):
        return None
    return {k: str(data[k]) for k in DATA_SOURCE_KEYS if k in data}
