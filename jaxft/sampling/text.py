"""Glue between strings and the token-level stop logic of ``generate``.

Stop *strings* cannot be checked inside the compiled loop, so they are turned
into stop *sequences* of token ids up front; since a string can tokenize
differently mid-text, the decoded text is also trimmed at the first stop string
afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jaxft.sampling.generate import GenerationOutput

# Prepended when encoding a stop string, then removed, to also get the ids the
# string has in the middle of a text (SentencePiece, for one, marks word starts).
_ANCHOR = "\n"


def _encode(tokenizer: Any, text: str) -> list[int]:
    try:
        return list(tokenizer.encode(text, add_special_tokens=False))
    except TypeError:  # tokenizers without special-token handling (e.g. tiktoken)
        return list(tokenizer.encode(text))


def stop_sequences_from_strings(tokenizer: Any, strings: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    """Token-id stop sequences for ``SamplingConfig.stop_sequences``.

    Each string contributes its standalone encoding and, when it differs, its
    encoding after other text.
    """
    if isinstance(strings, str):
        strings = (strings,)
    sequences: list[tuple[int, ...]] = []
    for s in strings:
        if not isinstance(s, str) or not s:
            raise ValueError(f"stop strings must be non-empty str, got {s!r}")
        variants = [tuple(_encode(tokenizer, s))]
        anchor = _encode(tokenizer, _ANCHOR)
        anchored = _encode(tokenizer, _ANCHOR + s)
        if anchored[:len(anchor)] == anchor and len(anchored) > len(anchor):
            variants.append(tuple(anchored[len(anchor):]))
        for v in variants:
            if not v:
                raise ValueError(f"stop string {s!r} encodes to no tokens")
            if v not in sequences:
                sequences.append(v)
    return tuple(sequences)


def trim_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """``text`` cut before the earliest occurrence of any stop string."""
    cut = len(text)
    for s in stop_strings:
        at = text.find(s) if s else -1
        if at != -1:
            cut = min(cut, at)
    return text[:cut]


def decode_and_trim(tokenizer: Any, output: GenerationOutput, stop_strings: Sequence[str] = (),
                    skip_special_tokens: bool = True) -> list[str]:
    """Decode each row of a ``GenerationOutput`` (up to its length) and trim it at the stop strings."""
    if isinstance(stop_strings, str):
        stop_strings = (stop_strings,)
    texts = []
    for ids in output.token_lists():
        try:
            text = tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        except TypeError:
            text = tokenizer.decode(ids)
        texts.append(trim_at_stop(text, stop_strings))
    return texts
