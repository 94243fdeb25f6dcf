"""Causal-LM training examples: token ids plus a loss mask.

Mask convention (the same as Hugging Face ``labels != -100``): ``loss_mask[t] == 1`` means token
``input_ids[t]`` is a prediction target, scored against the logits at position ``t - 1``. The
first token of an example therefore never carries loss: nothing before it predicts it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Literal

import numpy as np

from jaxft.data.records import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Example = dict[str, np.ndarray]
Overflow = Literal["truncate", "error", "chunk"]


def lm_example(tokenizer: PreTrainedTokenizerBase, text: str, max_len: int, *, prompt: str | None = None,
               overflow: Overflow = "truncate", row: int | str | None = None,
               add_bos: bool = True, add_eos: bool = True) -> Example | list[Example]:
    """``{"input_ids", "loss_mask"}`` (int32, 1-D) for ``[bos] prompt text [eos]``.

    With a ``prompt`` only the ``text`` tokens and eos carry loss (response-only training). bos/eos
    are added when the tokenizer defines them (and ``add_bos``/``add_eos``), never twice. Longer
    than ``max_len``: ``"truncate"`` keeps the start; ``"error"`` raises a ``DataError`` naming
    ``row``; ``"chunk"`` returns a *list* of examples whose windows overlap by one token, so every
    target is scored exactly once (later windows lose the prompt as context).
    """
    if max_len < 2:
        raise ValueError(f"max_len must be at least 2, got {max_len}")
    if overflow not in ("truncate", "error", "chunk"):
        raise ValueError(f"overflow must be 'truncate', 'error' or 'chunk', not {overflow!r}")
    bos = [tokenizer.bos_token_id] if add_bos and tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if add_eos and tokenizer.eos_token_id is not None else []
    prompt_ids = _encode(tokenizer, prompt) if prompt is not None else []
    ids = np.asarray(bos + prompt_ids + _encode(tokenizer, text) + eos, np.int32)
    where = f"row {row}: " if row is not None else ""  # callers without a row add their own context
    if len(ids) == 0:
        raise DataError(f"{where}the text encodes to no tokens")
    mask = np.ones(len(ids), np.int32)
    mask[:len(bos) + len(prompt_ids)] = 0
    mask[0] = 0
    if overflow == "chunk":
        chunks = [{"input_ids": ids[s:s + max_len], "loss_mask": _first_off(mask[s:s + max_len])}
                  for s in range(0, max(len(ids) - 1, 1), max_len - 1)]
        chunks = [c for c in chunks if c["loss_mask"].any()]
        if not chunks:
            raise DataError(f"{where}no token carries loss (empty response?)")
        return chunks
    if len(ids) > max_len:
        if overflow == "error":
            raise DataError(f"{where}{len(ids)} tokens, more than max_len={max_len}")
        ids, mask = ids[:max_len], mask[:max_len]
    if not mask.any():
        hint = f" (the prompt alone takes {len(bos) + len(prompt_ids)} tokens)" if prompt is not None else ""
        raise DataError(f"{where}no token carries loss within max_len={max_len}{hint}")
    return {"input_ids": ids, "loss_mask": mask}


def lm_example_fn(tokenizer: PreTrainedTokenizerBase, max_len: int, *, text_column: str = "text",
                  prompt_column: str | None = None, overflow: Overflow = "truncate",
                  add_bos: bool = True, add_eos: bool = True) -> Callable[[Mapping[str, str]], Example | list[Example]]:
    """A record -> example function for :func:`jaxft.data.make_batches` built on :func:`lm_example`."""

    def example_fn(record: Mapping[str, str]) -> Example | list[Example]:
        prompt = record[prompt_column] if prompt_column is not None else None
        return lm_example(tokenizer, record[text_column], max_len, prompt=prompt, overflow=overflow,
                          add_bos=add_bos, add_eos=add_eos)

    return example_fn


def text_chunks(tokenizer: PreTrainedTokenizerBase, texts: Iterable[str], seq_len: int, *,
                add_bos: bool = True, add_eos: bool = True) -> list[np.ndarray]:
    """Pretraining-style windows: all documents joined (each as ``[bos] text [eos]``) and cut into
    int32 arrays of exactly ``seq_len`` ids; the incomplete tail is dropped. Documents may share a
    window and attend to each other, as in classic LM pretraining. Every token but a window's
    first is a target, so the natural example is ``{"input_ids": window}`` (loss_mask all ones)."""
    texts = list(texts)
    bos = [tokenizer.bos_token_id] if add_bos and tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if add_eos and tokenizer.eos_token_id is not None else []
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    stream = np.fromiter((t for ids in encoded for t in bos + ids + eos), np.int32)
    count = len(stream) // seq_len
    if count == 0:
        raise DataError(f"the texts hold {len(stream)} tokens, fewer than seq_len={seq_len}")
    return list(stream[:count * seq_len].reshape(count, seq_len))


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _first_off(mask: np.ndarray) -> np.ndarray:
    mask = mask.copy()
    mask[0] = 0
    return mask
