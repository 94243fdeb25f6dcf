"""Chat-template rendering and tokenization of the Yes/No records, with an on-disk token cache.

Each record is rendered with the tokenizer's chat template as system / user (instruction, blank
line, input) / assistant (the answer). The rendered text is cut around the answer and the three
parts are tokenized separately, so the answer's tokens are known exactly:

* loss on the answer tokens and the end-of-turn marker that follows them (the template's text
  after the answer up to its trailing newline, e.g. ``<|im_end|>``); nothing else;
* ``answer_index``: the position whose logits predict the answer's first token; the Yes/No
  decision compares the logits of the first token of "Yes" and of "No" there. These are the
  tokens of the bare words "Yes"/"No" (no leading space), because every template used here puts
  the answer right after a newline (Qwen3: after ``<think>\\n\\n</think>\\n\\n``; ChatML: after
  ``<|im_start|>assistant\\n``). ``answer_token_ids`` checks that the two differ;
* sequences longer than ``cutoff_len`` are cut on the right (as the reference did), and counted;
  a record whose answer falls beyond the cut keeps its prompt loss-free and is left out of the
  accuracy/F1 (``has_answer`` 0).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from jaxft.data.records import DataError
from jaxft.recipes.movielens import prompts

log = logging.getLogger("jaxft")

# ChatML, for tokenizers without a template of their own (the demo's): SmolLM2's and Qwen2's layout.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
_ENCODING_VERSION = 1  # bump when the encoding below changes, so old cache entries are not read


def ensure_chat_template(tokenizer) -> str:
    """The tokenizer's chat template, after giving it ChatML if it had none."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer.chat_template


def render(tokenizer, messages: list[dict], **kwargs) -> str:
    ensure_chat_template(tokenizer)
    # Qwen3's template takes enable_thinking; others ignore unknown keyword arguments.
    return tokenizer.apply_chat_template(messages, tokenize=False, enable_thinking=False, **kwargs)


def answer_token_ids(tokenizer) -> tuple[int, int]:
    """(id of the first token of "Yes", of "No"), as the answers are tokenized after a newline."""
    ids = [tokenizer(word, add_special_tokens=False)["input_ids"] for word in (prompts.POSITIVE, prompts.NEGATIVE)]
    if not ids[0] or not ids[1] or ids[0][0] == ids[1][0]:
        raise ValueError(f"the tokenizer does not give 'Yes' and 'No' distinct first tokens ({ids})")
    return ids[0][0], ids[1][0]


@dataclasses.dataclass(frozen=True)
class Encoded:
    input_ids: np.ndarray  # int32 [n]
    loss_mask: np.ndarray  # int32 [n]
    answer_index: int  # logits position predicting the answer's first token; -1 when cut off
    is_yes: int
    truncated: bool


def split_rendered(text: str, answer: str) -> tuple[str, str, str]:
    """(prompt, answer, end of turn) of a rendered conversation whose last content is ``answer``."""
    at = text.rfind(answer)
    if at < 0:
        raise DataError(f"the chat template dropped the answer {answer!r}")
    rest = text[at + len(answer):]
    return text[:at], answer, rest.rstrip("\n")


def encode_record(tokenizer, rec: Mapping[str, str], cutoff_len: int) -> Encoded:
    return encode_records(tokenizer, [rec], cutoff_len)[0]


def encode_records(tokenizer, records: Sequence[Mapping[str, str]], cutoff_len: int,
                   origins: Sequence[str] | None = None) -> list[Encoded]:
    """Encode many records; the three parts of all records are tokenized in three batched calls."""
    parts = []
    for i, rec in enumerate(records):
        try:
            answer = rec["output"]
            if answer not in (prompts.POSITIVE, prompts.NEGATIVE):
                raise DataError(f"column 'output' is {answer!r}, expected 'Yes' or 'No'")
            parts.append(split_rendered(render(tokenizer, prompts.chat_messages(rec)), answer))
        except DataError as err:
            where = origins[i] if origins else f"record {i}"
            raise DataError(f"{where}: {err}") from None
    if not parts:
        return []
    tokenized = [tokenizer(list(texts), add_special_tokens=False)["input_ids"] for texts in zip(*parts)]
    out = []
    for (_prompt, answer, _), p, a, e in zip(parts, *tokenized):
        ids = np.asarray(p + a + e, np.int32)
        mask = np.asarray([0] * len(p) + [1] * (len(a) + len(e)), np.int32)
        truncated = len(ids) > cutoff_len
        ids, mask = ids[:cutoff_len], mask[:cutoff_len]
        answer_index = len(p) - 1 if len(p) < len(ids) else -1
        out.append(Encoded(ids, mask, answer_index, int(answer == prompts.POSITIVE), truncated))
    return out


@dataclasses.dataclass
class EncodedSet:
    """Token ids of many records, stored flat with offsets (one ``.npz`` in the cache)."""

    ids: np.ndarray
    loss_mask: np.ndarray
    offsets: np.ndarray  # [n + 1]
    answer_index: np.ndarray
    is_yes: np.ndarray
    truncated: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def example(self, i: int) -> dict[str, np.ndarray]:
        s, t = self.offsets[i], self.offsets[i + 1]
        return {"input_ids": self.ids[s:t], "loss_mask": self.loss_mask[s:t],
                "answer_index": np.int32(max(self.answer_index[i], 0)),
                "is_yes": np.int32(self.is_yes[i]), "has_answer": np.int32(self.answer_index[i] >= 0)}

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def build(cls, encoded: Sequence[Encoded]) -> EncodedSet:
        lengths = [len(e.input_ids) for e in encoded]
        cat = (lambda key: np.concatenate([getattr(e, key) for e in encoded]).astype(np.int32)) if encoded else (
            lambda key: np.zeros(0, np.int32))
        return cls(cat("input_ids"), cat("loss_mask"), np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                   np.asarray([e.answer_index for e in encoded], np.int32),
                   np.asarray([e.is_yes for e in encoded], np.int32),
                   np.asarray([e.truncated for e in encoded], bool))


def tokenizer_fingerprint(tokenizer) -> str:
    """Changes whenever the tokenizer would encode differently (vocabulary, merges, normalizers)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()


def cache_key(source_files: Sequence[Path], tokenizer, template: str, cutoff_len: int) -> str:
    digest = hashlib.sha256()
    for file in source_files:
        digest.update(hashlib.sha256(Path(file).read_bytes()).hexdigest().encode())
    for part in (tokenizer_fingerprint(tokenizer), template, str(cutoff_len), str(_ENCODING_VERSION)):
        digest.update(b"\0" + part.encode())
    return digest.hexdigest()[:24]


def encode_cached(name: str, source: Path, records: Sequence[Mapping], tokenizer, cutoff_len: int,
                  cache_dir: Path, origins: Sequence[str] | None = None) -> tuple[EncodedSet, bool]:
    """(encoded records, whether they came from the cache). The key covers the source file's bytes,
    the tokenizer, the chat template and ``cutoff_len``."""
    template = ensure_chat_template(tokenizer)
    path = Path(cache_dir) / f"{name}-{cache_key([source], tokenizer, template, cutoff_len)}.npz"
    if path.is_file():
        try:
            with np.load(path) as data:
                return EncodedSet(**{f.name: data[f.name] for f in dataclasses.fields(EncodedSet)}), True
        except (OSError, KeyError, ValueError) as err:  # a damaged entry: encode again
            log.warning("%s: unreadable token cache (%s); re-tokenizing", path, err)
    encoded = encode_records(tokenizer, records, cutoff_len, origins)
    result = EncodedSet.build(encoded)
    try:  # written whole, then renamed: a concurrent or killed run never leaves half a file
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **dataclasses.asdict(result))
        os.replace(tmp, path)
    except OSError as err:
        log.warning("could not cache tokenized %s in %s: %s", name, path.parent, err)
    return result, False
