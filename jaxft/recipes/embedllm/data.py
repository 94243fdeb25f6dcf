"""Conversations: reading them, splitting them into turns, and turning them into fixed-shape examples.

A conversation is one string whose turns are separated by a literal separator
(``<|turn|>`` by default). Chat datasets whose column holds a list of messages
are joined with the separator, a ``{"role", "content"}`` message becoming
``role: content``. All turns but the last are the history; the last is the target.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxft.data.records import DataError

log = logging.getLogger("jaxft")

SEPARATOR = "<|turn|>"
# The columns looked for, in this order, when no text column is configured (as the reference does).
CANDIDATE_COLUMNS = ("text", "conversation", "input", "content", "prompt", "messages")


# --- reading -------------------------------------------------------------------------------------------------

def detect_text_column(columns: Sequence[str], override: str = "", where: str = "data") -> str:
    """``override`` if given (and present), else the first candidate column present, else the first column."""
    columns = list(columns)
    if override:
        if override not in columns:
            raise DataError(f"{where}: no column {override!r} (available: {', '.join(columns)})")
        return override
    if not columns:
        raise DataError(f"{where}: has no columns")
    return next((c for c in CANDIDATE_COLUMNS if c in columns), columns[0])


def _message_text(message: Any) -> str:
    if isinstance(message, dict):
        if "content" in message:
            role = message.get("role")
            return f"{role}: {message['content']}" if role else str(message["content"])
        if "text" in message:
            return str(message["text"])
    return str(message)


def conversation_text(value: Any, separator: str = SEPARATOR) -> str:
    """A column value as one conversation string: lists of messages joined by ``separator``."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return separator.join(_message_text(m) for m in value)
    if isinstance(value, dict):
        if isinstance(value.get("messages"), list):
            return conversation_text(value["messages"], separator)
        if "user" in value and "assistant" in value:
            return f"{value['user']}{separator}{value['assistant']}"
        return _message_text(value)
    if value is None:
        return ""
    return str(value)


def _json_rows(file: Path) -> Iterable[tuple[str, Any]]:
    text = file.read_text(encoding="utf-8")
    if file.suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    yield f"{file}:{number}", json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{file}:{number}: invalid JSON at column {err.colno}: {err.msg}") from None
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{file}:{err.lineno}:{err.colno}: invalid JSON: {err.msg}") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise DataError(f"{file}: expected a JSON list of objects, got {type(data).__name__}")
    for index, item in enumerate(data):
        yield f"{file}[{index}]", item


def read_local(path: str | Path, text_column: str = "", separator: str = SEPARATOR) -> list[str]:
    """Conversation strings of a local ``.json`` (a list of objects) or ``.jsonl`` file."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"no such file: {file}")
    if file.suffix not in (".json", ".jsonl"):
        raise DataError(f"{file}: expected a .json or .jsonl file of conversations")
    texts, column = [], ""
    for where, row in _json_rows(file):
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object, got {type(row).__name__}")
        if not column:  # detected on the first row, as a dataset's column list would be
            column = detect_text_column(list(row), text_column, where)
            log.info("data: text column %r", column)
        if column not in row:
            raise DataError(f"{where}: column {column!r} is missing")
        texts.append(conversation_text(row[column], separator))
    if not texts:
        raise DataError(f"{file}: no records")
    return texts


def open_hf_split(name_or_dir: str, split: str = "train"):
    """A ``datasets.Dataset``: the ``split`` if the dataset has it, else its first split.

    A ``save_to_disk`` directory is opened with ``load_from_disk``, anything else with ``load_dataset``.
    """
    import datasets

    local = Path(name_or_dir).expanduser()
    try:
        if local.is_dir() and any((local / m).exists() for m in (datasets.config.DATASET_STATE_JSON_FILENAME,
                                                                 datasets.config.DATASETDICT_JSON_FILENAME)):
            loaded = datasets.load_from_disk(str(local))
        else:
            loaded = datasets.load_dataset(str(local) if local.is_dir() else name_or_dir)
    except Exception as err:  # noqa: BLE001 - network, unknown dataset, bad files: reported alike
        raise DataError(f"could not load dataset {name_or_dir!r}: {type(err).__name__}: {err}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if not loaded:
            raise DataError(f"{name_or_dir}: the dataset has no splits")
        chosen = split if split in loaded else next(iter(loaded))
        if chosen != split:
            log.info("data: %s has no split %r; using %r", name_or_dir, split, chosen)
        return loaded[chosen]
    return loaded


def read_hf(name_or_dir: str, split: str = "train", text_column: str = "", separator: str = SEPARATOR,
            max_records: int = 0) -> list[str]:
    """Conversation strings of a Hugging Face dataset (hub name or local directory)."""
    dataset = open_hf_split(name_or_dir, split)
    column = detect_text_column(dataset.column_names, text_column, name_or_dir)
    log.info("data: text column %r of %s", column, name_or_dir)
    values = dataset[column] if not max_records else dataset.select(range(min(max_records, len(dataset))))[column]
    return [conversation_text(v, separator) for v in values]


def _first_local_row(path: str) -> dict | None:
    """The first object of a single local .json/.jsonl file (None for other files, directories or globs)."""
    file = Path(path).expanduser()
    if not file.is_file() or file.suffix not in (".json", ".jsonl"):
        return None
    row = next(iter(_json_rows(file)), (None, None))[1]
    return row if isinstance(row, dict) else None


def read_conversations(data_cfg, separator: str = SEPARATOR) -> tuple[list[str], str]:
    """Conversation strings of ``config.data`` and where they came from, or ([], "") when none is configured.

    A column of strings is read through ``jaxft.loaders.load_records`` (files of every format it reads, hub
    or local datasets with ``hf_config``, ``streaming``, ``max_records``, ``on_error``). With no
    ``text_column`` it is detected (``CANDIDATE_COLUMNS``, as the reference did); a detected column of
    message lists is joined with ``separator`` instead (``read_local`` / ``read_hf``).
    """
    from jaxft.loaders import load_records

    column, origin = data_cfg.text_column, str(data_cfg.path or data_cfg.hf_dataset)
    if not origin:
        return [], ""
    if not column and data_cfg.path:
        row = _first_local_row(data_cfg.path)
        column = detect_text_column(list(row), "", data_cfg.path) if row else "text"
        if row is not None and not isinstance(row.get(column), str):
            return read_local(data_cfg.path, column, separator), origin
    elif not column:
        dataset = open_hf_split(data_cfg.hf_dataset, data_cfg.hf_split)
        column = detect_text_column(dataset.column_names, "", data_cfg.hf_dataset)
        if len(dataset) and not isinstance(dataset[0][column], str):
            return read_hf(data_cfg.hf_dataset, data_cfg.hf_split, column, separator,
                           int(data_cfg.max_records)), origin
    log.info("data: text column %r of %s", column, origin)
    records = load_records(data_cfg, (column,))
    return [r[column] for r in records], origin


# --- turns ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class TurnStats:
    """What parsing kept, dropped and cut; ``str()`` is the one summary line."""

    records: int = 0
    kept: int = 0
    empty_turns: int = 0  # empty turns dropped
    no_turns: int = 0  # conversations skipped: no non-empty turn at all
    single_turn: int = 0  # conversations with no history (trained with the empty-history prefix)
    histories_cut: int = 0  # conversations that lost their oldest history turns (max_turns or the token budget)
    turns_dropped: int = 0  # history turns dropped that way, over all conversations
    last_turns_cut: int = 0  # last turns longer than max_last_turn_tokens (tail dropped)

    def __str__(self) -> str:
        return (f"{self.kept} of {self.records} conversations kept ({self.single_turn} without history); skipped "
                f"{self.no_turns} with no turn; dropped {self.empty_turns} empty turns; {self.histories_cut} "
                f"histories lost {self.turns_dropped} oldest turns (max_turns / max_conversation_tokens); "
                f"{self.last_turns_cut} last turns were cut to max_last_turn_tokens")


def split_turns(text: str, separator: str = SEPARATOR) -> tuple[list[str], int]:
    """Non-empty, stripped turns of ``text`` and how many empty ones were dropped."""
    parts = [t.strip() for t in text.split(separator)]
    turns = [t for t in parts if t]
    return turns, len(parts) - len(turns)


def parse_conversations(texts: Iterable[str], separator: str = SEPARATOR) -> tuple[list[list[str]], TurnStats]:
    """The conversations with at least one non-empty turn, and the counts of what was skipped.

    A single-turn conversation is kept: its history is empty and the prefix is the empty-history vector.
    """
    stats, kept = TurnStats(), []
    for text in texts:
        stats.records += 1
        turns, empty = split_turns(text, separator)
        stats.empty_turns += empty
        if not turns:
            stats.no_turns += 1
            continue
        stats.single_turn += len(turns) == 1
        kept.append(turns)
    stats.kept = len(kept)
    return kept, stats


@dataclasses.dataclass(frozen=True)
class Layout:
    """Fixed shapes of an example: history [max_turns, history_width], decoder row 1 + max_last_turn_tokens.

    History turns are kept whole: the newest ones that fit, with the last turn, in
    ``max_conversation_tokens``; older turns are dropped, never cut.
    """

    max_turns: int
    max_conversation_tokens: int
    max_last_turn_tokens: int
    separator: str = SEPARATOR
    append_eos: bool = True  # the target turn ends with EOS, so generation learns where a turn stops

    def __post_init__(self):
        if self.max_conversation_tokens <= self.max_last_turn_tokens:
            raise ValueError(f"config key 'embedllm.max_conversation_tokens'={self.max_conversation_tokens}: must "
                             f"exceed embedllm.max_last_turn_tokens={self.max_last_turn_tokens}")

    @property
    def seq_len(self) -> int:
        return 1 + self.max_last_turn_tokens  # slot 0 holds the prefix vector

    @property
    def history_width(self) -> int:
        """The longest history turn that can fit: the budget less a one-token last turn."""
        return self.max_conversation_tokens - 1


def history_fields(layout: Layout, pad_id: int) -> dict:
    """The ``jaxft.data.Field``s of an example (history arrays, the decoder row, the answer position)."""
    from jaxft.data import Field

    shape = (layout.max_turns, layout.history_width)
    return {"input_ids": Field(pad=pad_id), "loss_mask": Field(),
            "history_ids": Field(shape=shape, pad=pad_id), "history_mask": Field(shape=shape, pad=0),
            "answer_pos": Field(shape=(1,), pad=-1)}


class ExampleBuilder:
    """Turns of one conversation -> the example arrays; counts the drops and cuts it makes in ``stats``.

    ``input_ids`` is ``[pad, last-turn tokens]``: slot 0 is where the prefix vector goes, so the
    prefix's logits predict the first token of the last turn (``loss_mask`` 1 on every last-turn token).
    ``answer_fn(last-turn tokens)`` gives the index in the last turn of the token a recall metric scores
    (-1: none), e.g. the recalled word of the demo conversations.
    """

    def __init__(self, tokenizer, layout: Layout, stats: TurnStats | None = None, answer_fn=None):
        self.tokenizer, self.layout = tokenizer, layout
        self.stats = stats if stats is not None else TurnStats()
        self.answer_fn = answer_fn
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self.eos_id = tokenizer.eos_token_id

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def history_tokens(self, turns: Sequence[str], target_len: int) -> list[list[int]]:
        """Token ids of the newest whole turns (oldest first) that fit ``max_turns`` and, with a last turn
        of ``target_len`` tokens, ``max_conversation_tokens``; the older ones are dropped and counted."""
        lay = self.layout
        budget = lay.max_conversation_tokens - target_len
        kept: list[list[int]] = []
        for turn in reversed(turns):
            tokens = self.encode(turn)
            if len(kept) == lay.max_turns or len(tokens) > budget:
                break
            budget -= len(tokens)
            kept.append(tokens)
        if len(kept) < len(turns):
            self.stats.histories_cut += 1
            self.stats.turns_dropped += len(turns) - len(kept)
        return kept[::-1]

    def history_arrays(self, turns_tokens: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """``history_ids``/``history_mask`` [max_turns, history_width] of tokenized turns (padding after them)."""
        lay = self.layout
        ids = np.full((lay.max_turns, lay.history_width), self.pad_id, np.int32)
        mask = np.zeros((lay.max_turns, lay.history_width), np.int32)
        for row, tokens in enumerate(turns_tokens):
            ids[row, :len(tokens)] = tokens
            mask[row, :len(tokens)] = 1
        return ids, mask

    def history(self, turns: Sequence[str], target_len: int) -> tuple[np.ndarray, np.ndarray]:
        return self.history_arrays(self.history_tokens(turns, target_len))

    def last_turn(self, text: str, append_eos: bool | None = None) -> list[int]:
        tokens = self.encode(text) if text else []
        if (self.layout.append_eos if append_eos is None else append_eos) and self.eos_id is not None:
            tokens = tokens + [int(self.eos_id)]
        if len(tokens) > self.layout.max_last_turn_tokens:
            self.stats.last_turns_cut += 1
            tokens = tokens[:self.layout.max_last_turn_tokens]
        return tokens

    def tokenize(self, turns: Sequence[str]) -> dict[str, Any]:
        """The conversation as compact token lists (what a dataset keeps in memory); cuts are counted here."""
        target = self.last_turn(turns[-1])
        answer = self.answer_fn(target) if self.answer_fn is not None else -1
        return {"history": [np.asarray(t, np.int32) for t in self.history_tokens(turns[:-1], len(target))],
                "target": np.asarray(target, np.int32), "answer": int(answer)}

    def arrays(self, tokenized: dict[str, Any]) -> dict[str, np.ndarray]:
        """The padded example arrays of a ``tokenize`` result."""
        history_ids, history_mask = self.history_arrays(tokenized["history"])
        target = tokenized["target"]
        input_ids = np.concatenate([np.asarray([self.pad_id], np.int32), target])
        loss_mask = np.concatenate([np.zeros(1, np.int32), np.ones(len(target), np.int32)])
        # the answer token sits at slot 1 + its index in the last turn; its logits are those of the slot before
        answer = int(tokenized.get("answer", -1))
        return {"input_ids": input_ids, "loss_mask": loss_mask, "history_ids": history_ids,
                "history_mask": history_mask, "answer_pos": np.asarray([1 + answer if answer >= 0 else -1], np.int32)}

    def __call__(self, turns: Sequence[str]) -> dict[str, np.ndarray]:
        return self.arrays(self.tokenize(turns))
