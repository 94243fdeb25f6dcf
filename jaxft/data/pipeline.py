"""Deterministic, resumable batches of fixed shape built with grain.

Every batch is a dict of ``[batch_size, seq_len]`` int32 numpy arrays:

* ``input_ids``: token ids, ``pad_id`` after the real tokens (right padding);
* ``attention_mask``: 1 on real tokens;
* ``loss_mask``: 1 where ``input_ids[t]`` is a target of the logits at ``t - 1`` (see
  :mod:`jaxft.data.lm`); always 0 on the first token of each example, so with packing no loss
  crosses from one example into the next;
* ``segment_ids``: 1, 2, ... per example in a row, 0 on padding (without packing: the attention mask);
* ``positions``: 0, 1, ... restarting at every example, 0 on padding.

Resuming: the returned iterator's ``get_state()`` is a small JSON-serialisable dict and
``set_state(state)`` on a freshly built iterator (same records and arguments) continues exactly
where the saved one stopped. In an Orbax checkpoint save it next to the train state with grain's
handler, which writes one JSON file per process::

    import grain, orbax.checkpoint as ocp
    manager = ocp.CheckpointManager(directory, item_names=("state", "data"))
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               data=grain.checkpoint.CheckpointSave(batches)))
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                             data=grain.checkpoint.CheckpointRestore(batches)))

(or store ``json.dumps(batches.get_state())`` anywhere and call ``set_state(json.loads(...))``).

Sharding: process ``shard_index`` of ``shard_count`` reads records ``shard_index::shard_count``
only, so processes see disjoint data. With a finite ``num_epochs`` processes can yield different
numbers of batches; multi-host training should repeat forever and stop after a number of steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import numpy as np
from grain.experimental import FirstFitPackIterDataset, FlatMapIterDataset, FlatMapTransform

from jaxft.data.records import DataError

ExampleFn = Callable[[Any], "Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]]"]
EXAMPLE_KEYS = ("input_ids", "loss_mask")
BATCH_KEYS = ("input_ids", "attention_mask", "loss_mask", "segment_ids", "positions")


def shard_indices(count: int, shard_index: int, shard_count: int, *, seed: int, shuffle: bool,
                  num_epochs: int | None):
    """This process's record indices (every shard_count-th), reshuffled each epoch."""
    if count < shard_count:
        raise DataError(f"{count} records cannot feed {shard_count} processes: each needs at least one")
    indices = grain.MapDataset.range(count)[shard_index::shard_count]
    if shuffle:
        indices = indices.shuffle(seed=seed)
    return indices.repeat(num_epochs)


def make_batches(records: Sequence, *, example_fn: ExampleFn, batch_size: int, seq_len: int, seed: int = 0,
                 shuffle: bool = True, num_epochs: int | None = None, shard_index: int | None = None,
                 shard_count: int | None = None, packing: bool = False, pad_id: int = 0,
                 drop_remainder: bool = False, num_threads: int = 4) -> grain.DatasetIterator:
    """An iterator of fixed-shape batches (see the module docstring), resumable with ``get_state``/``set_state``.

    ``example_fn(record)`` returns ``{"input_ids": 1-D ints, "loss_mask": 1-D ints (optional)}`` of
    at most ``seq_len`` tokens, or a list of such dicts. ``num_epochs=None`` repeats forever, each
    epoch in a new order drawn from ``seed``. ``shard_index``/``shard_count`` default to this JAX
    process. ``packing`` fills rows with several examples (first fit) instead of one each. Unless
    ``drop_remainder``, a final short batch is filled up with empty rows (all masks 0).
    """
    shard_index, shard_count = _shard(shard_index, shard_count)
    if batch_size < 1 or seq_len < 2:
        raise ValueError(f"need batch_size >= 1 and seq_len >= 2, got batch_size={batch_size}, seq_len={seq_len}")
    indices = shard_indices(len(records), shard_index, shard_count, seed=seed, shuffle=shuffle, num_epochs=num_epochs)
    examples = indices.map(_BuildExamples(records, example_fn, seq_len)).to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(2 * batch_size, 16)))
    examples = FlatMapIterDataset(examples, _Flatten())
    if packing:
        rows = FirstFitPackIterDataset(examples, length_struct={k: seq_len for k in EXAMPLE_KEYS},
                                       num_packing_bins=batch_size, shuffle_bins=False).map(_PackedRow(pad_id))
    else:
        rows = examples.map(_PaddedRow(seq_len, pad_id))
    batches = rows.batch(batch_size, drop_remainder=drop_remainder)
    if not drop_remainder:
        batches = batches.map(_FillBatch(batch_size, pad_id))
    return iter(batches)


def _shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    if shard_index is None or shard_count is None:
        import jax  # only when needed: jax.distributed must be initialised before asking

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index={shard_index} is not in [0, shard_count={shard_count})")
    return shard_index, shard_count


class _BuildExamples:
    """Record index -> list of validated examples; errors name the record."""

    def __init__(self, records: Sequence, example_fn: ExampleFn, seq_len: int):
        self._records, self._example_fn, self._seq_len = records, example_fn, seq_len
        self._origins = getattr(records, "origins", None)  # file:line of each record, from read_records

    def __call__(self, index: int) -> list[dict[str, np.ndarray]]:
        where = self._origins[index] if self._origins else f"record {index}"
        try:
            made = self._example_fn(self._records[index])
        except DataError as err:
            raise DataError(f"{where}: {err}") from err
        made = [made] if isinstance(made, Mapping) else list(made)
        return [self._check(where, example) for example in made]

    def _check(self, where: str, example: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        unknown = set(example) - set(EXAMPLE_KEYS)
        if "input_ids" not in example or unknown:
            raise DataError(f"{where}: example_fn must return 'input_ids' and optionally 'loss_mask', "
                            f"got keys {sorted(example)}")
        ids = np.asarray(example["input_ids"], np.int32)
        mask = np.asarray(example.get("loss_mask", np.ones_like(ids)), np.int32)
        if ids.ndim != 1 or mask.shape != ids.shape or len(ids) == 0:
            raise DataError(f"{where}: input_ids and loss_mask must be equal-length, non-empty 1-D arrays, "
                            f"got shapes {ids.shape} and {mask.shape}")
        if len(ids) > self._seq_len:
            raise DataError(f"{where}: {len(ids)} tokens, more than seq_len={self._seq_len}; "
                            "let example_fn truncate or chunk (see jaxft.data.lm_example)")
        mask = mask.copy()
        mask[0] = 0  # nothing in this example predicts its first token
        return {"input_ids": ids, "loss_mask": mask}


class _Flatten(FlatMapTransform):
    # grain asks for a bound on examples per record; only the map-style flat map enforces it.
    max_fan_out = 1 << 16

    def flat_map(self, element: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        return element


class _PaddedRow:
    def __init__(self, seq_len: int, pad_id: int):
        self._seq_len, self._pad_id = seq_len, pad_id

    def __call__(self, example: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n, ids = len(example["input_ids"]), example["input_ids"]
        row = {key: np.zeros(self._seq_len, np.int32) for key in BATCH_KEYS}
        row["input_ids"][:] = self._pad_id
        row["input_ids"][:n] = ids
        row["attention_mask"][:n] = 1
        row["loss_mask"][:n] = example["loss_mask"]
        row["segment_ids"][:n] = 1
        row["positions"][:n] = np.arange(n)
        return row


class _PackedRow:
    """grain's packed features -> our batch keys."""

    def __init__(self, pad_id: int):
        self._pad_id = pad_id

    def __call__(self, packed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        segment_ids = packed["input_ids_segment_ids"].astype(np.int32)
        positions = packed["input_ids_positions"].astype(np.int32)
        real = segment_ids > 0
        return {
            "input_ids": np.where(real, packed["input_ids"], self._pad_id).astype(np.int32),
            "attention_mask": real.astype(np.int32),
            "loss_mask": (packed["loss_mask"] * (positions > 0)).astype(np.int32),
            "segment_ids": segment_ids,
            "positions": np.where(real, positions, 0).astype(np.int32),
        }


class _FillBatch:
    """Pads a short final batch with empty rows so every batch has the same shape (no recompiles)."""

    def __init__(self, batch_size: int, pad_id: int):
        self._batch_size, self._pad_id = batch_size, pad_id

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = self._batch_size - len(batch["input_ids"])
        if missing == 0:
            return batch
        return {key: np.pad(value, ((0, missing), (0, 0)), constant_values=self._pad_id if key == "input_ids" else 0)
                for key, value in batch.items()}
