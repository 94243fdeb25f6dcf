"""Text -> one fixed-shape condense example, tokenized for both models.

The encoder and the decoder have their own tokenizers. A text is cut to
``max_characters``, tokenized by both, and shortened further (at a decoder
token end) until its decoder tokens fit ``max_decoder_tokens``. The encoder
reads its first ``max_tokens`` tokens (the condensed context), split into
segments of ``segment_length`` tokens; segment ``i`` covers the characters
from the first character of its first token, ``b_i``, onward. The text after
the context (from ``b_S``, the first encoder token past it) is the remainder:
the continuation target once every segment has been read.

Decoder tokens are mapped to segments through character offsets: a decoder
token belongs to the first segment whose range holds the *last* character of
the token (its end offset minus one). So the continuation target of level
``i`` (every decoder token from segment ``i`` on, up to the end of the text,
capped at ``max_continuation_tokens`` when that is set) starts with the token that
covers character ``b_i``: no character the encoder has not condensed is
missing from the target, even when the two tokenizers split a word at
different places or attach spaces differently.

Every array has a static shape set by ``Layout``, so a batch compiles once. ``ExampleBuilder.tokens``
does all the tokenizing of a record; the recipe keeps those ``Tokens`` (int32 ids, a few bytes per
token on each side) and ``ExampleBuilder.example`` makes the arrays from them with numpy alone.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np


Example = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Layout:
    """Static shapes of a condense example (and so of every compiled program)."""

    num_condense_tokens: int  # n: condensed states per segment
    segment_length: int  # L: encoder tokens per segment
    max_segments: int  # S
    max_decoder_tokens: int  # D: decoder tokens of the whole text (condensed context and remainder)
    max_continuation_tokens: int  # cap on each continuation target; 0: the whole rest of the text (up to D)
    max_characters: int  # 0: no cut
    max_prompt_tokens: int = 0  # instruction objective: prompt and completion budgets (0: no instruction fields)
    max_completion_tokens: int = 0

    @property
    def max_tokens(self) -> int:
        return self.segment_length * self.max_segments

    @property
    def total_condense_tokens(self) -> int:
        return self.num_condense_tokens * self.max_segments

    @property
    def num_levels(self) -> int:
        """Continuation levels 1..S: level i reads segments 0..i-1 and predicts what follows them."""
        return self.max_segments

    @property
    def continuation_width(self) -> int:
        return self.max_continuation_tokens or self.max_decoder_tokens

    @property
    def instruction_width(self) -> int:
        return self.max_prompt_tokens + self.max_completion_tokens

    @classmethod
    def create(cls, *, max_tokens: int, compression_ratio: float, num_segments: int = 1, max_decoder_tokens: int,
               max_continuation_tokens: int = 0, max_characters: int = 0, max_prompt_tokens: int = 0,
               max_completion_tokens: int = 0) -> Layout:
        """``max_tokens`` encoder tokens in ``num_segments`` equal segments, condensed into
        ``max_tokens / compression_ratio`` states in all (an equal share per segment)."""
        for key, value in (("max_tokens", max_tokens), ("num_segments", num_segments),
                           ("max_decoder_tokens", max_decoder_tokens)):
            if value <= 0:
                raise ValueError(f"config key 'condense.{key}' must be positive, got {value}")
        for key, value in (("max_continuation_tokens", max_continuation_tokens), ("max_characters", max_characters),
                           ("instruction.max_prompt_tokens", max_prompt_tokens),
                           ("instruction.max_completion_tokens", max_completion_tokens)):
            if value < 0:
                raise ValueError(f"config key 'condense.{key}' must be >= 0, got {value}")
        if compression_ratio <= 0:
            raise ValueError(f"config key 'condense.compression_ratio' must be positive, got {compression_ratio}")
        total = max_tokens / compression_ratio
        if abs(total - round(total)) > 1e-6 or round(total) < 1:
            raise ValueError(f"config key 'condense.compression_ratio'={compression_ratio}: max_tokens {max_tokens} / "
                             f"ratio = {total:g} condensed states, not a positive whole number")
        total = int(round(total))
        if max_tokens % num_segments or total % num_segments:
            raise ValueError(f"config key 'condense.num_segments'={num_segments} does not divide max_tokens "
                             f"{max_tokens} and the {total} condensed states into equal segments")
        return cls(num_condense_tokens=total // num_segments, segment_length=max_tokens // num_segments,
                   max_segments=num_segments, max_decoder_tokens=max_decoder_tokens,
                   max_continuation_tokens=max_continuation_tokens, max_characters=max_characters,
                   max_prompt_tokens=max_prompt_tokens, max_completion_tokens=max_completion_tokens)


def _tokenize(tokenizer, text: str) -> tuple[list[int], np.ndarray]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = np.asarray(enc["offset_mapping"], np.int64).reshape(-1, 2)
    return list(enc["input_ids"]), offsets


def check_fast_tokenizer(tokenizer, name: str) -> None:
    """Character offsets need a Rust ("fast") tokenizer."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"condense: the {name} tokenizer ({type(tokenizer).__name__}) is not a fast tokenizer; "
                         "character offsets (return_offsets_mapping) need one -- load it with use_fast=True")


def fit_text(text: str, enc_tok, dec_tok, max_decoder_tokens: int, max_characters: int
             ) -> tuple[str, list[int], np.ndarray, list[int], np.ndarray]:
    """Cut ``text`` to ``max_characters`` and then at a decoder token end until its decoder tokens
    fit ``max_decoder_tokens``; return it with both tokenizations (the encoder reads its first
    ``max_tokens`` tokens, the rest of the text is the continuation after them). Only the decoder's
    tokens decide the cut, so the encoder tokenizes the final text once."""
    text = text[:max_characters] if max_characters else text
    for _ in range(16):
        dec_ids, dec_off = _tokenize(dec_tok, text)
        if len(dec_ids) <= max_decoder_tokens:
            enc_ids, enc_off = _tokenize(enc_tok, text)
            return text, enc_ids, enc_off, dec_ids, dec_off
        # Re-tokenizing a prefix can merge differently at the cut; shrink by at
        # least one character per round so the loop always ends.
        limit = int(dec_off[max_decoder_tokens - 1, 1])
        tokenized, text = text, text[:min(limit, len(text) - 1)]
    enc_ids, enc_off = _tokenize(enc_tok, tokenized)  # the text the last decoder tokens are of
    keep = np.searchsorted(enc_off[:, 1], int(dec_off[max_decoder_tokens - 1, 1]), side="right")
    return text, enc_ids[:keep], enc_off[:keep], dec_ids[:max_decoder_tokens], dec_off[:max_decoder_tokens]


def context_end(fitted: str, enc_ids: list[int], enc_off: np.ndarray, max_tokens: int) -> int:
    """The character where the condensed context (the first ``max_tokens`` encoder tokens) ends."""
    return int(enc_off[max_tokens, 0]) if len(enc_ids) > max_tokens else len(fitted)


def segment_char_starts(enc_offsets: np.ndarray, segment_length: int) -> np.ndarray:
    """``b_i``: the first character of segment i (0 for the first segment)."""
    starts = enc_offsets[::segment_length, 0].astype(np.int64)
    if len(starts):
        starts[0] = 0
    return starts


def decoder_segment_starts(dec_offsets: np.ndarray, char_starts: np.ndarray) -> np.ndarray:
    """Index of the first decoder token of each segment (see the module docstring for the rule).

    A decoder token ``[s, e)`` is in segment i when ``b_i <= e - 1 < b_{i+1}``;
    so segment i starts at the first token with ``e > b_i``.
    """
    ends = dec_offsets[:, 1] if len(dec_offsets) else np.zeros((0,), np.int64)
    # Offsets are non-decreasing in practice; the running max makes searchsorted safe regardless.
    ends = np.maximum.accumulate(ends) if len(ends) else ends
    starts = np.searchsorted(ends, char_starts, side="right").astype(np.int64)
    if len(starts):
        starts[0] = 0
    return starts


def pad_to(values, length: int, dtype=np.int32) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values, dtype)[:length]
    out = np.zeros((length,), dtype)
    out[: len(values)] = values
    mask = np.zeros((length,), bool)
    mask[: len(values)] = True
    return out, mask


def continuation_targets(dec_ids: np.ndarray, dec_len: int, starts: np.ndarray, num_segments: int,
                         num_levels: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Targets of levels 1..num_levels as ``(ids, mask)`` [num_levels, width]; row r is level r + 1.

    ``starts[i]`` is the first decoder token after segment i - 1 (``starts[num_segments]``: the
    first one after the condensed context). Level i <= num_segments predicts
    ``dec_ids[starts[i]:dec_len]``, its first ``width`` tokens; other rows are all-masked.
    """
    ids = np.zeros((num_levels, width), np.int32)
    mask = np.zeros((num_levels, width), bool)
    for level in range(1, min(num_segments, num_levels) + 1):
        start = int(starts[level])
        stop = min(start + width, dec_len)
        if stop > start:
            ids[level - 1, : stop - start] = dec_ids[start:stop]
            mask[level - 1, : stop - start] = True
    return ids, mask


@dataclasses.dataclass(frozen=True)
class Tokens:
    """What an example is built from: a text's tokens, once per text (the arrays follow with numpy only).

    ``enc_ids`` are the encoder tokens of the condensed context, ``dec_ids`` the decoder tokens of the
    whole fitted text, ``starts[i]`` the first decoder token of segment ``i`` (``starts[-1]``: of the
    remainder). Instruction records add the prompt's and the completion's decoder tokens.
    """

    enc_ids: np.ndarray
    dec_ids: np.ndarray
    starts: np.ndarray
    prompt_ids: np.ndarray | None = None
    completion_ids: np.ndarray | None = None

    @property
    def num_segments(self) -> int:
        return len(self.starts) - 1


class ExampleBuilder:
    """Callable ``text (or instruction record, or its Tokens) -> Example`` (numpy arrays of static shapes).

    Keys: ``enc_ids``/``enc_mask`` [S, L] (the condensed context: the text's first ``S * L``
    encoder tokens), ``dec_ids``/``dec_mask`` [D] (the context in decoder tokens: the AE target),
    ``cont_ids``/``cont_mask`` [S, W] (row r is continuation level r + 1: what follows segment r,
    up to the end of the text) and ``num_segments`` [] -- the segments holding at least one token.
    With the instruction objective (``layout.max_prompt_tokens > 0``) also ``ins_ids``/``ins_mask``
    [P + C] (prompt then completion tokens) and ``ins_loss`` (the completion's tokens).
    ``tokens(item)`` does all the tokenizing; ``example(tokens)`` the rest.
    """

    def __init__(self, encoder_tokenizer, decoder_tokenizer, layout: Layout,
                 instruction_columns: tuple[str, str, str] = ("context", "activation_prompt", "expected_completion")):
        check_fast_tokenizer(encoder_tokenizer, "encoder")
        check_fast_tokenizer(decoder_tokenizer, "decoder")
        self.encoder_tokenizer = encoder_tokenizer
        self.decoder_tokenizer = decoder_tokenizer
        self.layout = layout
        self.instruction_columns = tuple(instruction_columns)

    @property
    def instruction(self) -> bool:
        return self.layout.max_prompt_tokens > 0

    def fit(self, text: str):
        return fit_text(text, self.encoder_tokenizer, self.decoder_tokenizer, self.layout.max_decoder_tokens,
                        self.layout.max_characters)

    def context_end(self, text: str) -> int:
        """The character where the condensed context ends (the continuation after it starts)."""
        fitted, enc_ids, enc_off, _, _ = self.fit(text)
        return context_end(fitted, enc_ids, enc_off, self.layout.max_tokens)

    def __call__(self, item) -> Example:
        return self.example(item if isinstance(item, Tokens) else self.tokens(item))

    def tokens(self, item) -> Tokens:
        if isinstance(item, dict):
            return self.instruction_tokens(item)
        if not isinstance(item, str):
            raise ValueError(f"condense: expected a text string, got {type(item).__name__}")
        if self.instruction:
            raise ValueError("condense: the instruction objective needs records with columns "
                             f"{', '.join(self.instruction_columns)}, got a plain text")
        return self.text_tokens(item)

    def text_tokens(self, text: str, fit=None) -> Tokens:
        """``fit``: the text's ``self.fit(text)`` when the caller has it already."""
        fitted, enc_ids, enc_off, dec_ids, dec_off = fit or self.fit(text)
        if not enc_ids or not dec_ids:
            raise ValueError(f"condense: text {text[:40]!r} has no tokens (empty or whitespace only)")
        context = min(len(enc_ids), self.layout.max_tokens)
        end = context_end(fitted, enc_ids, enc_off, context)
        char_starts = np.append(segment_char_starts(enc_off[:context], self.layout.segment_length), end)
        return Tokens(enc_ids=np.asarray(enc_ids[:context], np.int32), dec_ids=np.asarray(dec_ids, np.int32),
                      starts=decoder_segment_starts(dec_off, char_starts))

    def instruction_tokens(self, record: dict) -> Tokens:
        """The context is condensed (with its AE and continuation targets, as any text); the decoder
        then reads the prompt and is scored on the completion."""
        lay = self.layout
        if not self.instruction:
            raise ValueError("condense: got an instruction record but condense.objectives.instruction is 0")
        missing = [c for c in self.instruction_columns if not isinstance(record.get(c), str)]
        if missing:
            raise ValueError(f"condense: record has no text column(s) {', '.join(repr(c) for c in missing)} "
                             f"(columns: {sorted(record)})")
        context, prompt, completion = (record[c] for c in self.instruction_columns)
        tokens = self.text_tokens(context)
        tok = self.decoder_tokenizer
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"][-lay.max_prompt_tokens:]
        completion_ids = tok(completion, add_special_tokens=False)["input_ids"][:lay.max_completion_tokens]
        if not prompt_ids or not completion_ids:
            raise ValueError(f"condense: record with {self.instruction_columns[1]}={prompt[:30]!r} has an empty "
                             f"prompt or completion")
        return dataclasses.replace(tokens, prompt_ids=np.asarray(prompt_ids, np.int32),
                                   completion_ids=np.asarray(completion_ids, np.int32))

    def example(self, tokens: Tokens) -> Example:
        lay = self.layout
        num_segments = math.ceil(len(tokens.enc_ids) / lay.segment_length)
        dec_ids, starts = tokens.dec_ids, tokens.starts  # starts: [num_segments + 1]
        dec, _ = pad_to(dec_ids, lay.max_decoder_tokens)
        ae_ids, ae_mask = pad_to(dec_ids[:int(starts[num_segments])], lay.max_decoder_tokens)
        cont_ids, cont_mask = continuation_targets(dec, len(dec_ids), starts, num_segments, lay.num_levels,
                                                   lay.continuation_width)
        flat_ids, flat_mask = pad_to(tokens.enc_ids, lay.max_tokens)
        example = {
            "enc_ids": flat_ids.reshape(lay.max_segments, lay.segment_length),
            "enc_mask": flat_mask.reshape(lay.max_segments, lay.segment_length),
            "dec_ids": ae_ids,
            "dec_mask": ae_mask,
            "cont_ids": cont_ids,
            "cont_mask": cont_mask,
            "num_segments": np.asarray(num_segments, np.int32),
        }
        if tokens.prompt_ids is None:
            return example
        n_prompt, n_completion = len(tokens.prompt_ids), len(tokens.completion_ids)
        ids, mask = pad_to(np.concatenate([tokens.prompt_ids, tokens.completion_ids]), lay.instruction_width)
        loss = np.zeros_like(mask)
        loss[n_prompt: n_prompt + n_completion] = True
        return dict(example, ins_ids=ids, ins_mask=mask, ins_loss=loss)

    def usable(self, item) -> bool:
        """A text that fills at least one whole segment and has a continuation after it (instruction
        records: always; their parts are checked when their tokens are made)."""
        if isinstance(item, dict) or (isinstance(item, Tokens) and item.prompt_ids is not None):
            return True
        ex = self.example(item if isinstance(item, Tokens) else self.text_tokens(item))
        return bool(ex["enc_mask"][0].all()) and bool(ex["cont_mask"][0].any())

    def record_fn(self, column: str = "text"):
        """``record -> Example`` for dict records, naming the column when it is missing."""
        def build(record: Any) -> Example:
            if isinstance(record, str) or self.instruction:
                return self(record)
            if column not in record:
                raise ValueError(f"condense: record has no column '{column}' (columns: {sorted(record)})")
            return self(record[column])

        return build


def example_fields(layout: Layout) -> dict:
    """The batch fields of a condense example (see ``ExampleBuilder``), for ``jaxft.data.make_batches``."""
    from jaxft.data import Field

    seg = (layout.max_segments, layout.segment_length)
    cont = (layout.num_levels, layout.continuation_width)
    fields = {
        "enc_ids": Field(shape=seg), "enc_mask": Field(shape=seg, pad=False, dtype="bool"),
        "dec_ids": Field(shape=(layout.max_decoder_tokens,)),
        "dec_mask": Field(shape=(layout.max_decoder_tokens,), pad=False, dtype="bool"),
        "cont_ids": Field(shape=cont), "cont_mask": Field(shape=cont, pad=False, dtype="bool"),
        "num_segments": Field(shape=()),
    }
    if layout.max_prompt_tokens:
        ins = (layout.instruction_width,)
        fields.update({"ins_ids": Field(shape=ins), "ins_mask": Field(shape=ins, pad=False, dtype="bool"),
                       "ins_loss": Field(shape=ins, pad=False, dtype="bool")})
    return fields
