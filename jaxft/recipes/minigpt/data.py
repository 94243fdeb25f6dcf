"""minigpt data: a memory-mapped token file for pretraining, and SFT examples with a response mask.

Pretraining text is tokenized once into ``<name>.bin`` (``uint16`` when the vocabulary fits,
else ``uint32``) with a JSON sidecar naming the tokenizer and the hashes of the sources; a later
run with the same tokenizer and sources maps the file instead of tokenizing again. The stream
is split 90/10 into contiguous train/validation parts, and training reads random windows of
``seq_len + 1`` tokens (inputs and their next-token targets).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxft.data.records import DataError

log = logging.getLogger("jaxft")

RESPONSE_MARKER = "### Response:\n"  # the layout the demo writes
RESPONSE_TAG = "### Response:"  # what starts a response: the newline after it is optional, as in the reference
INSTRUCTION_TAG = "### Instruction:"
_EXAMPLE_START = re.compile(r"^" + re.escape(INSTRUCTION_TAG), re.MULTILINE)
SIDECAR_VERSION = 1


# ----------------------------------------------------------------------------- the token file


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's full serialisation (vocabulary, merges, normalisation)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def texts_fingerprint(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        encoded = text.encode("utf-8", "surrogatepass")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()


def token_file(texts: Sequence[str], tokenizer, path: str | Path, *, sources: Sequence[dict] | None = None
               ) -> np.ndarray:
    """The token stream of ``texts`` (an EOS after each text) as a read-only memmap at ``path``.

    ``sources`` names where the texts came from ({"name", "sha256"} each; default: one entry
    hashing all texts). When ``path`` and its ``.json`` sidecar exist with the same tokenizer,
    sources and length, the file is mapped as it is.
    """
    path = Path(path)
    sidecar = path.with_suffix(path.suffix + ".json")
    vocab = len(tokenizer)
    dtype = np.uint16 if vocab <= np.iinfo(np.uint16).max + 1 else np.uint32
    meta = {
        "version": SIDECAR_VERSION,
        "tokenizer": {"name": getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__,
                      "sha256": tokenizer_fingerprint(tokenizer), "vocab_size": vocab},
        "sources": list(sources) if sources is not None else [{"name": "texts", "sha256": texts_fingerprint(texts)}],
        "dtype": np.dtype(dtype).name,
        "eos_after_each_text": tokenizer.eos_token_id is not None,
    }
    if sidecar.is_file() and path.is_file():
        try:
            stored = json.loads(sidecar.read_text())
        except ValueError:
            stored = None
        if stored is not None and {k: stored.get(k) for k in meta} == meta:
            tokens = np.memmap(path, dtype=dtype, mode="r")
            if tokens.size == stored.get("num_tokens"):
                log.info("minigpt: reusing the token file %s (%d tokens)", path, tokens.size)
                return tokens
        log.info("minigpt: %s was made from another tokenizer or text; tokenizing again", path)
    eos = tokenizer.eos_token_id
    total = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as out:
        for start in range(0, len(texts), 1024):
            batch = list(texts[start:start + 1024])
            for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
                row = np.asarray(list(ids) + ([eos] if eos is not None else []), dtype)
                out.write(row.tobytes())
                total += row.size
    if total == 0:
        tmp.unlink()
        raise DataError("minigpt: the text is empty; nothing to tokenize")
    tmp.replace(path)
    sidecar.write_text(json.dumps(dict(meta, num_tokens=total), indent=2))
    return np.memmap(path, dtype=dtype, mode="r")


def split_stream(tokens: np.ndarray, validation_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous train/validation parts (the first 90% trains by default)."""
    cut = int(len(tokens) * (1.0 - validation_fraction))
    return tokens[:cut], tokens[cut:]


class WindowBatches:
    """Random windows of ``seq_len + 1`` tokens, resumable: batch ``n`` depends only on (seed, n).

    Yields ``input_ids`` and ``targets`` [batch, seq_len] (int32) and a ``loss_mask`` of ones.
    """

    def __init__(self, tokens: np.ndarray, *, batch_size: int, seq_len: int, seed: int):
        if len(tokens) < seq_len + 2:
            raise DataError(f"minigpt: {len(tokens)} training tokens are fewer than one window of "
                            f"seq_len + 1 = {seq_len + 1}; use more text or a smaller seq_len")
        self.tokens, self.batch_size, self.seq_len, self.seed = tokens, batch_size, seq_len, seed
        self.step = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.step])
        self.step += 1
        starts = rng.integers(0, len(self.tokens) - self.seq_len - 1, self.batch_size)
        return windows(self.tokens, starts, self.seq_len)

    def get_state(self) -> dict:
        return {"step": self.step}

    def set_state(self, state: dict) -> None:
        self.step = int(state["step"])


def windows(tokens: np.ndarray, starts, seq_len: int) -> dict[str, np.ndarray]:
    rows = np.stack([np.asarray(tokens[s:s + seq_len + 1], np.int32) for s in starts])
    return {"input_ids": rows[:, :-1], "targets": rows[:, 1:], "loss_mask": np.ones_like(rows[:, 1:])}


def eval_windows(tokens: np.ndarray, *, batch_size: int, seq_len: int, max_batches: int | None = None):
    """Consecutive non-overlapping windows over the validation part (the same ones every eval)."""
    starts = list(range(0, len(tokens) - seq_len - 1, seq_len))
    if not starts:
        raise DataError(f"minigpt: the validation part has {len(tokens)} tokens, fewer than one window of "
                        f"{seq_len + 1}; use more text or a smaller seq_len")
    batches = [starts[i:i + batch_size] for i in range(0, len(starts) - batch_size + 1, batch_size)]
    if not batches:  # fewer windows than one batch: repeat the first ones to fill it
        batches = [(starts * batch_size)[:batch_size]]
    for group in batches[:max_batches]:
        yield windows(tokens, group, seq_len)


def unigram_loss(train: np.ndarray, valid: np.ndarray, vocab_size: int) -> float:
    """Validation cross-entropy (nats/token) of the add-one unigram model of the training part."""
    counts = np.bincount(np.asarray(train), minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[np.asarray(valid)].mean())


# ----------------------------------------------------------------------------- SFT examples


def split_examples(texts: Sequence[str], origins: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """Each text cut into its examples, one per line that opens with ``### Instruction:`` (a ``.txt`` of many
    examples, the reference's SFT file, is one record), with an origin per example (``file:line``)."""
    out, where = [], []
    for i, text in enumerate(texts):
        origin = origins[i] if origins else f"record {i + 1}"
        starts = [m.start() for m in _EXAMPLE_START.finditer(text)]
        if len(starts) < 2:
            out.append(text)
            where.append(origin)
            continue
        if text[:starts[0]].strip():  # text before the first example is one more record, named as such
            starts.insert(0, 0)
        path, _, line = origin.rpartition(":")
        for start, end in zip(starts, starts[1:] + [len(text)]):
            out.append(text[start:end].rstrip())
            first = text.count("\n", 0, start)
            where.append(f"{path}:{int(line) + first}" if path and line.isdigit() else f"{origin}, line {first + 1}")
    return out, where


def sft_example(text: str, tokenizer, *, max_len: int, where: str = "record") -> dict[str, np.ndarray] | None:
    """Token ids and a loss mask for one ``### Instruction: ... ### Response: ...`` example.

    Loss falls on every token that holds text after the last response marker (and the newline
    right after it, when there is one) -- the first response token included, also when the
    tokenizer's normalisation joins it to that newline -- and on the EOS appended to the example.
    An example longer than ``max_len`` keeps its first ``max_len`` tokens; one whose marker would
    be cut returns None (the caller counts and reports it). A text without the marker raises
    ``DataError`` naming ``where``.
    """
    cut = text.rfind(RESPONSE_TAG)
    if cut < 0:
        raise DataError(f"{where}: no '{RESPONSE_TAG}' marker; SFT examples look like "
                        f"'### Instruction: ...\\n### Response:\\n ...'")
    response_start = cut + len(RESPONSE_TAG)
    if text.startswith("\n", response_start):
        response_start += 1
    if not text[response_start:].strip():
        raise DataError(f"{where}: the response after '{RESPONSE_TAG}' is empty")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    mask = [1 if end > response_start else 0 for _, end in enc["offset_mapping"]]
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
        mask.append(1)
    if len(ids) > max_len:
        ids, mask = ids[:max_len], mask[:max_len]
        if not any(mask):
            return None
    return {"input_ids": np.asarray(ids, np.int32), "loss_mask": np.asarray(mask, np.int32)}


def sft_examples(texts: Sequence[str], tokenizer, *, max_len: int, origins: Sequence[str] | None = None
                 ) -> list[dict[str, np.ndarray]]:
    texts, origins = split_examples(texts, origins)
    examples, dropped = [], 0
    for i, text in enumerate(texts):
        example = sft_example(text, tokenizer, max_len=max_len, where=origins[i])
        if example is None:
            dropped += 1
        else:
            examples.append(example)
    if dropped:
        log.warning("minigpt: %d of %d SFT examples dropped: their prompt fills all %d tokens, so the "
                    "response marker would be cut (raise data.seq_len)", dropped, len(texts), max_len)
    if not examples:
        raise DataError("minigpt: no SFT example fits data.seq_len with its response")
    return examples


def demo_sft_texts(count: int, seed: int = 0) -> list[str]:
    """Generated instruction/response pairs (arithmetic, list questions, word reversal), reproducible."""
    rng = np.random.default_rng(seed)
    words = ["apple", "river", "stone", "cloud", "green", "light", "tiger", "paper", "music", "ocean",
             "bread", "chair", "dream", "flame", "glass", "honey", "lemon", "night", "plant", "smile"]
    texts = []
    for _ in range(count):
        kind = int(rng.integers(3))
        if kind == 0:
            a, b = (int(x) for x in rng.integers(0, 50, 2))
            q, r = f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
        elif kind == 1:
            picked = [words[int(i)] for i in rng.choice(len(words), 3, replace=False)]
            q, r = f"List the words {', '.join(picked)} in alphabetical order.", ", ".join(sorted(picked)) + "."
        else:
            word = words[int(rng.integers(len(words)))]
            q, r = f"Spell the word {word} backwards.", f"{word} backwards is {word[::-1]}."
        texts.append(f"### Instruction: {q}\n{RESPONSE_MARKER}{r}")
    return texts
