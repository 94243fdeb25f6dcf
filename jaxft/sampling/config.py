"""What to generate: one frozen, hashable dataclass, a static argument of the jitted loop.

Changing any field recompiles the loop; calls that only change prompts (same
shapes), params or the seed reuse the compiled program.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Sequence

# Codes of ``GenerationOutput.finish_reason``; ``FINISH_REASONS[code]`` names them.
FINISH_LENGTH = 0  # ran out of max_new_tokens
FINISH_EOS = 1  # produced one of eos_token_ids
FINISH_STOP_SEQUENCE = 2  # the generated tail ended with one of stop_sequences
FINISH_REASONS = ("length", "eos", "stop_sequence")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Decoding settings, with Hugging Face ``generate`` semantics where both have them.

    ``temperature == 0`` is greedy decoding (``top_k``/``top_p`` are then unused).
    ``eos_token_ids=None`` and ``pad_token_id=None`` take the model's values
    (``DecoderConfig.eos_token_ids`` / ``pad_token_id``; the pad falls back to
    the first EOS id, then 0); ``eos_token_ids=()`` disables EOS.
    Before ``min_new_tokens`` tokens exist, EOS logits are masked and stop
    sequences are not honoured. Returned tokens include the EOS or stop sequence
    that ended a row.
    """

    max_new_tokens: int = 32
    min_new_tokens: int = 0
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    eos_token_ids: tuple[int, ...] | None = None
    pad_token_id: int | None = None
    stop_sequences: tuple[tuple[int, ...], ...] = ()
    # Also return the raw (unprocessed) float32 logits of every step.
    output_logits: bool = False
    # Penalties of the minigpt sampler (not in HF): subtract ln(count_penalty) * count(t) from the logit of
    # every token t seen so far (prompt included); ban the last ``ban_recent`` ids of the row.
    count_penalty: float = 1.0
    ban_recent: int = 0
    # Apply the bans (``ban_recent``, EOS before ``min_new_tokens``) after temperature and top-p, renormalising
    # what is left; with nothing left, take the best unbanned token. Off: bans act before sampling, HF-style.
    ban_after_top_p: bool = False

    def __post_init__(self):
        # Lists are accepted for convenience but stored as tuples, so the
        # config stays hashable (a jit static argument must be).
        if self.eos_token_ids is not None:
            object.__setattr__(self, "eos_token_ids", _int_tuple(self.eos_token_ids, "eos_token_ids"))
        stops = tuple(_int_tuple(s, "stop_sequences entry")
                      for s in _as_sequence(self.stop_sequences, "stop_sequences"))
        object.__setattr__(self, "stop_sequences", stops)
        self._validate()

    def _validate(self) -> None:
        def fail(msg: str):
            raise ValueError(f"SamplingConfig: {msg}")

        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            fail(f"max_new_tokens must be a positive int, got {self.max_new_tokens!r}")
        if not _is_int(self.min_new_tokens) or not 0 <= self.min_new_tokens <= self.max_new_tokens:
            fail(f"min_new_tokens must be an int in [0, max_new_tokens={self.max_new_tokens}], "
                 f"got {self.min_new_tokens!r}")
        for name in ("temperature", "top_p", "repetition_penalty"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                fail(f"{name} must be a number, got {value!r}")
        if not self.temperature >= 0:
            fail(f"temperature must be >= 0 (0 means greedy), got {self.temperature!r}")
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 1):
            fail(f"top_k must be None or a positive int, got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            fail(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not self.repetition_penalty > 0:
            fail(f"repetition_penalty must be > 0 (1 disables it), got {self.repetition_penalty!r}")
        if not isinstance(self.count_penalty, numbers.Real) or not self.count_penalty > 0:
            fail(f"count_penalty must be a number > 0 (1 disables it), got {self.count_penalty!r}")
        if not _is_int(self.ban_recent) or self.ban_recent < 0:
            fail(f"ban_recent must be an int >= 0 (0 disables it), got {self.ban_recent!r}")
        if self.ban_after_top_p and self.top_k is not None:
            fail("top_k cannot be combined with ban_after_top_p (that order has temperature and top-p only)")
        if not _is_int(self.no_repeat_ngram_size) or self.no_repeat_ngram_size < 0:
            fail(f"no_repeat_ngram_size must be an int >= 0 (0 disables it), got {self.no_repeat_ngram_size!r}")
        if self.pad_token_id is not None and (not _is_int(self.pad_token_id) or self.pad_token_id < 0):
            fail(f"pad_token_id must be None or an int >= 0, got {self.pad_token_id!r}")
        if any(len(s) == 0 for s in self.stop_sequences):
            fail("stop_sequences must not contain an empty sequence")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def replace(self, **changes) -> SamplingConfig:
        return dataclasses.replace(self, **changes)


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _as_sequence(value, name: str) -> Sequence:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"SamplingConfig: {name} must be a sequence of token ids, got {value!r}")
    return value


def _int_tuple(value, name: str) -> tuple[int, ...]:
    items = tuple(_as_sequence(value, name))
    if not all(_is_int(x) and x >= 0 for x in items):
        raise ValueError(f"SamplingConfig: {name} must hold non-negative int token ids, got {value!r}")
    return tuple(int(x) for x in items)  # numpy ints from a tokenizer become plain ints
