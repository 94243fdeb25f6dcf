"""Deterministic, resumable batches of fixed shape built with grain, for any example keys.

A recipe declares its example keys as ``fields``: name -> :class:`Field`. A field with
``shape=None`` is *per token*: a 1-D array aligned with ``input_ids``, right-padded to
``seq_len`` (and packed with it when ``packing``). A field with a tuple shape is a fixed
per-example array (``()`` for a class label, ``(n,)`` for prefix ids, ``(turns, tokens)`` for a
history), padded up to that shape. The default fields are ``input_ids`` and ``loss_mask``.

When ``input_ids`` is a field, every batch also holds, as ``[batch, seq_len]`` int32:

* ``attention_mask``: 1 on real tokens;
* ``segment_ids``: 1, 2, ... per example in a row, 0 on padding (without packing: the attention mask);
* ``positions``: 0, 1, ... restarting at every example, 0 on padding.

``loss_mask[t] = 1`` means ``input_ids[t]`` is a target of the logits at ``t - 1`` (see
:mod:`jaxft.data.lm`); its first entry in each example is forced to 0, so with packing no loss
crosses from one example into the next.

Order and sharding: the record indices of all epochs form one global stream (shuffled per epoch
from ``seed``); process ``p`` of ``P`` takes every ``P``-th element of it. So without packing the
union of the processes' batches at step ``b`` is exactly the single-process global batch ``b``,
whatever the number of processes, and a finite stream is padded with empty rows to whole
global batches so every process yields the same number of batches (and eval sees every example).

Resuming: ``get_state()`` is a small JSON-serialisable dict holding the number of global batches
consumed; ``set_state`` on a freshly built iterator (same records and arguments) continues where
the saved one stopped, also on a different process count (not with packing, whose rows depend on
what each process saw).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import numpy as np
from grain.experimental import FirstFitPackIterDataset, FlatMapIterDataset, FlatMapTransform

from jaxft.data.records import DataError

ExampleFn = Callable[[Any], "Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]]"]
DERIVED_KEYS = ("attention_mask", "segment_ids", "positions")
EMPTY = -1  # index of an empty (all-padding) row in the stream


@dataclasses.dataclass(frozen=True)
class Field:
    """One example key: per token (``shape=None``) or of a fixed per-example shape."""

    shape: tuple[int, ...] | None = None
    pad: int | float | bool = 0
    dtype: str = "int32"

    @property
    def per_token(self) -> bool:
        return self.shape is None


def token_fields(pad_id: int = 0) -> dict[str, Field]:
    """The fields of a causal-LM example: ``input_ids`` and ``loss_mask``."""
    return {"input_ids": Field(pad=pad_id), "loss_mask": Field()}


def make_batches(records: Sequence, *, example_fn: ExampleFn, batch_size: int, seq_len: int | None = None,
                 fields: Mapping[str, Field] | None = None, seed: int = 0, shuffle: bool = True,
                 num_epochs: int | None = None, shard_index: int | None = None, shard_count: int | None = None,
                 packing: bool = False, pad_id: int = 0, drop_remainder: bool = False,
                 num_threads: int = 4) -> Batches:
    """An iterator of fixed-shape batches (see the module docstring), resumable with ``get_state``/``set_state``.

    ``example_fn(record)`` returns a dict of the declared fields (``loss_mask`` may be left out and
    defaults to ones), or a list of such dicts. ``batch_size`` is this process's share of the global
    batch. ``num_epochs=None`` repeats forever. ``shard_index``/``shard_count`` default to this JAX process.
    """
    shard_index, shard_count = _shard(shard_index, shard_count)
    fields = dict(token_fields(pad_id) if fields is None else fields)
    has_tokens = any(f.per_token for f in fields.values())
    if has_tokens and "input_ids" not in fields:
        raise ValueError("make_batches: per-token fields need an 'input_ids' field to align with")
    if batch_size < 1 or (has_tokens and (seq_len is None or seq_len < 2)):
        raise ValueError(f"need batch_size >= 1 and seq_len >= 2, got batch_size={batch_size}, seq_len={seq_len}")
    if packing and not all(f.per_token for f in fields.values()):
        fixed = sorted(k for k, f in fields.items() if not f.per_token)
        raise ValueError(f"make_batches: packing needs per-token fields only; {fixed} have fixed shapes")
    if len(records) == 0:
        raise DataError("no records to batch")
    return Batches(records, example_fn, fields, dict(
        batch_size=batch_size, seq_len=seq_len, seed=seed, shuffle=shuffle, num_epochs=num_epochs,
        shard_index=shard_index, shard_count=shard_count, packing=packing, drop_remainder=drop_remainder,
        num_threads=num_threads))


def global_indices(count: int, *, seed: int, shuffle: bool, num_epochs: int | None,
                   global_batch: int, pad_to_batches: bool) -> grain.MapDataset:
    """Record indices of all epochs, in order; a finite stream padded with ``EMPTY`` to whole global batches."""
    indices = grain.MapDataset.range(count)
    if shuffle:
        indices = indices.shuffle(seed=seed)  # a new order each epoch once repeated
    indices = indices.repeat(num_epochs)
    if num_epochs is not None and pad_to_batches and len(indices) % global_batch:
        missing = global_batch - len(indices) % global_batch
        indices = grain.MapDataset.concatenate([indices, grain.MapDataset.source([EMPTY] * missing)])
    return indices


class Batches:
    """The batch iterator returned by :func:`make_batches`."""

    def __init__(self, records: Sequence, example_fn: ExampleFn, fields: dict[str, Field], options: dict):
        self._records, self._example_fn, self._fields, self._o = records, example_fn, fields, options
        self._consumed = 0  # global batches yielded so far
        self._iterator = self._build(0)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._iterator)
        self._consumed += 1
        return batch

    def get_state(self) -> dict:
        o = self._o
        state = {"global_batches": self._consumed, "shard_count": o["shard_count"]}
        if o["packing"]:
            state["iterator"] = self._iterator.get_state()
        return state

    def set_state(self, state: dict) -> None:
        o = self._o
        if "global_batches" not in state:
            raise DataError("the saved data position comes from an older data pipeline; resume with the "
                            "jaxft version that wrote it or start a new --workdir")
        consumed = int(state["global_batches"])
        if o["packing"]:
            if int(state.get("shard_count", 1)) != o["shard_count"]:
                raise DataError(f"the checkpoint's data position was saved by {state.get('shard_count')} "
                                f"processes and packed rows depend on it; resume with that many processes")
            self._iterator = self._build(0)
            self._iterator.set_state(state["iterator"])
        else:
            self._iterator = self._build(consumed)
        self._consumed = consumed

    def _build(self, skip_global_batches: int):
        o, fields = self._o, self._fields
        global_batch = o["batch_size"] * o["shard_count"]
        indices = global_indices(len(self._records), seed=o["seed"], shuffle=o["shuffle"],
                                 num_epochs=o["num_epochs"], global_batch=global_batch,
                                 pad_to_batches=not o["drop_remainder"] and not o["packing"])
        if skip_global_batches:
            indices = indices[skip_global_batches * global_batch:]
        indices = indices[o["shard_index"]::o["shard_count"]]
        examples = indices.map(_BuildExamples(self._records, self._example_fn, fields, o["seq_len"]))
        examples = examples.to_iter_dataset(grain.ReadOptions(
            num_threads=o["num_threads"], prefetch_buffer_size=max(2 * o["batch_size"], 16)))
        examples = FlatMapIterDataset(examples, _Flatten())
        if o["packing"]:
            rows = FirstFitPackIterDataset(examples, length_struct={k: o["seq_len"] for k in fields},
                                           num_packing_bins=o["batch_size"], shuffle_bins=False
                                           ).map(_PackedRow(fields))
        else:
            rows = examples.map(_PaddedRow(fields, o["seq_len"]))
        batches = rows.batch(o["batch_size"], drop_remainder=o["drop_remainder"])
        if not o["drop_remainder"]:
            batches = batches.map(_FillBatch(o["batch_size"], fields, o["seq_len"]))
        return iter(batches)


def _shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    if shard_index is None or shard_count is None:
        import jax  # only when needed: jax.distributed must be initialised before asking

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index={shard_index} is not in [0, shard_count={shard_count})")
    return shard_index, shard_count


def _empty(fields: Mapping[str, Field], seq_len: int | None) -> dict[str, np.ndarray]:
    """A row of padding: masks 0, ids the pad id."""
    row = {k: np.full(seq_len if f.per_token else f.shape, f.pad, f.dtype) for k, f in fields.items()}
    if "input_ids" in fields:
        row.update({k: np.zeros(seq_len, np.int32) for k in DERIVED_KEYS})
    return row


class _BuildExamples:
    """Record index -> list of validated examples; errors name the record."""

    def __init__(self, records: Sequence, example_fn: ExampleFn, fields: dict[str, Field], seq_len: int | None):
        self._records, self._example_fn, self._fields, self._seq_len = records, example_fn, fields, seq_len
        self._origins = getattr(records, "origins", None)  # file:line of each record, from read_records

    def __call__(self, index: int) -> list[dict[str, np.ndarray]]:
        if index == EMPTY:
            return [{"__empty__": np.zeros((), np.int32)}]
        where = self._origins[index] if self._origins else f"record {index}"
        try:
            made = self._example_fn(self._records[index])
        except ValueError as err:  # DataError included: whatever example_fn refuses, named by record
            raise DataError(f"{where}: {err}") from err
        made = [made] if isinstance(made, Mapping) else list(made)
        return [self._check(where, example) for example in made]

    def _check(self, where: str, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
        fields = self._fields
        example = dict(example)
        if "loss_mask" in fields and "loss_mask" not in example and "input_ids" in example:
            example["loss_mask"] = np.ones(len(example["input_ids"]), np.int32)
        if set(example) != set(fields):
            raise DataError(f"{where}: example_fn returned keys {sorted(example)}, the declared fields are "
                            f"{sorted(fields)}")
        out, length = {}, None
        for key, field in fields.items():
            value = np.asarray(example[key], field.dtype)
            if field.per_token:
                if value.ndim != 1 or len(value) == 0 or (length is not None and len(value) != length):
                    raise DataError(f"{where}: per-token fields must be equal-length, non-empty 1-D arrays; "
                                    f"'{key}' has shape {value.shape}")
                length = len(value)
                if length > self._seq_len:
                    raise DataError(f"{where}: {length} tokens, more than seq_len={self._seq_len}; "
                                    "let example_fn truncate or chunk (see jaxft.data.lm_example)")
            elif value.ndim != len(field.shape) or any(v > s for v, s in zip(value.shape, field.shape)):
                raise DataError(f"{where}: field '{key}' has shape {value.shape}, declared at most {field.shape}")
            out[key] = value
        if "loss_mask" in out and fields["loss_mask"].per_token:
            out["loss_mask"] = out["loss_mask"].copy()
            out["loss_mask"][0] = 0  # nothing in this example predicts its first token
        return out


class _Flatten(FlatMapTransform):
    # grain asks for a bound on examples per record; only the map-style flat map enforces it.
    max_fan_out = 1 << 16

    def flat_map(self, element: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        return element


def _pad_fixed(value: np.ndarray, field: Field) -> np.ndarray:
    if value.shape == tuple(field.shape):
        return value
    out = np.full(field.shape, field.pad, field.dtype)
    out[tuple(slice(0, n) for n in value.shape)] = value
    return out


class _PaddedRow:
    def __init__(self, fields: dict[str, Field], seq_len: int | None):
        self._fields, self._seq_len = fields, seq_len

    def __call__(self, example: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        row = _empty(self._fields, self._seq_len)
        if "__empty__" in example:
            return row
        for key, field in self._fields.items():
            if field.per_token:
                row[key][: len(example[key])] = example[key]
            else:
                row[key] = _pad_fixed(example[key], field)
        if "input_ids" in self._fields:
            n = len(example["input_ids"])
            row["attention_mask"][:n] = 1
            row["segment_ids"][:n] = 1
            row["positions"][:n] = np.arange(n)
        return row


class _PackedRow:
    """grain's packed features -> our batch keys."""

    def __init__(self, fields: dict[str, Field]):
        self._fields = fields

    def __call__(self, packed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        segment_ids = packed["input_ids_segment_ids"].astype(np.int32)
        positions = packed["input_ids_positions"].astype(np.int32)
        real = segment_ids > 0
        row = {k: np.where(real, packed[k], f.pad).astype(f.dtype) for k, f in self._fields.items()}
        if "loss_mask" in row:
            row["loss_mask"] = (row["loss_mask"] * (positions > 0)).astype(self._fields["loss_mask"].dtype)
        row.update(attention_mask=real.astype(np.int32), segment_ids=segment_ids,
                   positions=np.where(real, positions, 0).astype(np.int32))
        return row


class _FillBatch:
    """Pads a short final batch with empty rows so every batch has the same shape (no recompiles)."""

    def __init__(self, batch_size: int, fields: dict[str, Field], seq_len: int | None):
        self._batch_size, self._empty = batch_size, _empty(fields, seq_len)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = self._batch_size - len(next(iter(batch.values())))
        if missing == 0:
            return batch
        return {k: np.concatenate([v, np.broadcast_to(self._empty[k], (missing,) + v.shape[1:])]) for k, v in
                batch.items()}
