"""Text -> one fixed-shape condense example, tokenized for both models.

The encoder and the decoder have their own tokenizers. A text is cut to
``max_characters``, tokenized by both, and shortened further (at a token end)
until both tokenizations fit their budgets. The encoder tokens are split into
segments of ``segment_length`` tokens; segment ``i`` covers the characters
from the first character of its first token, ``b_i``, onward.

Decoder tokens are mapped to segments through character offsets: a decoder
token belongs to the first segment whose range holds the *last* character of
the token (its end offset minus one). So the continuation target of level
``i`` (every decoder token from segment ``i`` on) starts with the token that
covers character ``b_i``: no character the encoder has not condensed is
missing from the target, even when the two tokenizers split a word at
different places or attach spaces differently.

Every array has a static shape set by ``Layout``, so a batch compiles once.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from jaxft.recipes.condense import objectives

Example = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Layout:
    """Static shapes of a condense example (and so of every compiled program)."""

    num_condense_tokens: int  # n: condensed states per segment
    segment_length: int  # L: encoder tokens per segment
    max_segments: int  # S
    max_decoder_tokens: int  # D: decoder tokens of the whole context
    max_continuation_tokens: int  # C: decoder tokens per continuation level
    max_characters: int

    @property
    def max_tokens(self) -> int:
        return self.segment_length * self.max_segments

    @property
    def num_levels(self) -> int:
        """Continuation levels 1..S-1 (level i reads segments 0..i-1)."""
        return self.max_segments - 1

    @classmethod
    def create(cls, *, num_condense_tokens: int, compression_ratio: float, max_tokens: int,
               max_decoder_tokens: int, max_continuation_tokens: int, max_characters: int) -> "Layout":
        if num_condense_tokens <= 0:
            raise ValueError(f"config key 'condense.num_condense_tokens' must be positive, got {num_condense_tokens}")
        if compression_ratio <= 0:
            raise ValueError(f"config key 'condense.compression_ratio' must be positive, got {compression_ratio}")
        segment_length = int(round(compression_ratio * num_condense_tokens))
        if segment_length < 1:
            raise ValueError(f"condense: compression_ratio {compression_ratio} x num_condense_tokens "
                             f"{num_condense_tokens} gives segments of {segment_length} tokens")
        for key, value in (("max_tokens", max_tokens), ("max_decoder_tokens", max_decoder_tokens),
                           ("max_continuation_tokens", max_continuation_tokens),
                           ("max_characters", max_characters)):
            if value <= 0:
                raise ValueError(f"config key 'condense.{key}' must be positive, got {value}")
        return cls(num_condense_tokens=num_condense_tokens, segment_length=segment_length,
                   max_segments=math.ceil(max_tokens / segment_length), max_decoder_tokens=max_decoder_tokens,
                   max_continuation_tokens=max_continuation_tokens, max_characters=max_characters)


def _tokenize(tokenizer, text: str) -> tuple[list[int], np.ndarray]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = np.asarray(enc["offset_mapping"], np.int64).reshape(-1, 2)
    return list(enc["input_ids"]), offsets


def check_fast_tokenizer(tokenizer, name: str) -> None:
    """Character offsets need a Rust ("fast") tokenizer."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"condense: the {name} tokenizer ({type(tokenizer).__name__}) is not a fast tokenizer; "
                         "character offsets (return_offsets_mapping) need one -- load it with use_fast=True")


def fit_text(text: str, enc_tok, dec_tok, max_tokens: int, max_decoder_tokens: int, max_characters: int
             ) -> tuple[str, list[int], np.ndarray, list[int], np.ndarray]:
    """Shorten ``text`` at token ends until both tokenizations fit; return it with both tokenizations."""
    text = text[:max_characters]
    for _ in range(16):
        enc_ids, enc_off = _tokenize(enc_tok, text)
        dec_ids, dec_off = _tokenize(dec_tok, text)
        limit = len(text)
        if len(enc_ids) > max_tokens:
            limit = min(limit, int(enc_off[max_tokens - 1, 1]))
        if len(dec_ids) > max_decoder_tokens:
            limit = min(limit, int(dec_off[max_decoder_tokens - 1, 1]))
        if limit >= len(text):
            return text, enc_ids, enc_off, dec_ids, dec_off
        # Re-tokenizing a prefix can merge differently at the cut; shrink by at
        # least one character per round so the loop always ends.
        text = text[:min(limit, len(text) - 1)]
    enc_ids, enc_off = enc_ids[:max_tokens], enc_off[:max_tokens]
    dec_ids, dec_off = dec_ids[:max_decoder_tokens], dec_off[:max_decoder_tokens]
    return text, enc_ids, enc_off, dec_ids, dec_off


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


class ExampleBuilder:
    """Callable ``text -> Example`` (numpy arrays of static shapes; see ``Layout``).

    Keys: ``enc_ids``/``enc_mask`` [S, L], ``dec_ids``/``dec_mask`` [D],
    ``cont_ids``/``cont_mask`` [S-1, C] (row r is continuation level r+1) and
    ``num_segments`` [] -- the segments holding at least one token.
    """

    def __init__(self, encoder_tokenizer, decoder_tokenizer, layout: Layout):
        check_fast_tokenizer(encoder_tokenizer, "encoder")
        check_fast_tokenizer(decoder_tokenizer, "decoder")
        self.encoder_tokenizer = encoder_tokenizer
        self.decoder_tokenizer = decoder_tokenizer
        self.layout = layout

    def fit(self, text: str):
        lay = self.layout
        return fit_text(text, self.encoder_tokenizer, self.decoder_tokenizer, lay.max_tokens,
                        lay.max_decoder_tokens, lay.max_characters)

    def __call__(self, text: str) -> Example:
        if not isinstance(text, str):
            raise ValueError(f"condense: expected a text string, got {type(text).__name__}")
        lay = self.layout
        _, enc_ids, enc_off, dec_ids, dec_off = self.fit(text)
        if not enc_ids or not dec_ids:
            raise ValueError(f"condense: text {text[:40]!r} has no tokens (empty or whitespace only)")
        num_segments = math.ceil(len(enc_ids) / lay.segment_length)

        flat_ids, flat_mask = pad_to(enc_ids, lay.max_tokens)
        dec, dec_mask = pad_to(dec_ids, lay.max_decoder_tokens)
        starts = decoder_segment_starts(dec_off, segment_char_starts(enc_off, lay.segment_length))
        cont_ids, cont_mask = objectives.continuation_targets(
            dec, len(dec_ids), starts, num_segments, lay.num_levels, lay.max_continuation_tokens)
        return {
            "enc_ids": flat_ids.reshape(lay.max_segments, lay.segment_length),
            "enc_mask": flat_mask.reshape(lay.max_segments, lay.segment_length),
            "dec_ids": dec,
            "dec_mask": dec_mask,
            "cont_ids": cont_ids,
            "cont_mask": cont_mask,
            "num_segments": np.asarray(num_segments, np.int32),
        }

    def record_fn(self, column: str = "text"):
        """``record -> Example`` for dict records, naming the column when it is missing."""
        def build(record: Any) -> Example:
            if isinstance(record, str):
                return self(record)
            if column not in record:
                raise ValueError(f"condense: record has no column '{column}' (columns: {sorted(record)})")
            return self(record[column])

        return build


def example_fields(layout: Layout) -> dict:
    """The batch fields of a condense example (see ``ExampleBuilder``), for ``jaxft.data.make_batches``."""
    from jaxft.data import Field

    seg = (layout.max_segments, layout.segment_length)
    cont = (layout.num_levels, layout.max_continuation_tokens)
    return {
        "enc_ids": Field(shape=seg), "enc_mask": Field(shape=seg, pad=False, dtype="bool"),
        "dec_ids": Field(shape=(layout.max_decoder_tokens,)),
        "dec_mask": Field(shape=(layout.max_decoder_tokens,), pad=False, dtype="bool"),
        "cont_ids": Field(shape=cont), "cont_mask": Field(shape=cont, pad=False, dtype="bool"),
        "num_segments": Field(shape=()),
    }
