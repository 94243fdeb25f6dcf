"""Document/summary pairs as prompt + completion examples, with counted truncation.

The text of one pair is ``"Summarize: " + document + " " + "\\nTarget:" + summary`` followed by the
tokenizer's EOS. The prompt (everything up to and including ``\\nTarget:``) is tokenized as one
string and carries no loss; the summary tokens and the EOS do. The summary is tokenized on its own
and appended, so the prompt a model sees at generation time is token for token the prompt it was
trained on (tokenizing the joined string would let BPE merge ``:`` with the summary's first word).

``max_input_length`` cuts the *document* to that many of its own tokens (the cut falls on a token
boundary of the document's text, which is then put into the prompt; the markers are never cut);
``max_target_length`` cuts the summary's tokens; a cut summary gets no EOS, so the model is never
taught to stop in mid-sentence (a summary that fits ends with the EOS).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence

import numpy as np

from jaxft.data.records import DataError, RecordList

PROMPT_PREFIX = "Summarize: "
TARGET_MARKER = "\nTarget:"


def prompt_text(document: str) -> str:
    """The generation prompt for a document: the training text up to ``\\nTarget:``."""
    return PROMPT_PREFIX + document + " " + TARGET_MARKER


@dataclasses.dataclass
class TruncationCounts:
    """How many of the encoded pairs lost document or summary tokens."""

    examples: int = 0
    documents: int = 0
    summaries: int = 0

    def __str__(self) -> str:
        return (f"{self.documents:,} of {self.examples:,} documents truncated to max_input_length, "
                f"{self.summaries:,} summaries truncated to max_target_length")


class SummaryEncoder:
    """Token ids and loss masks of document/summary pairs for one tokenizer and length limits."""

    def __init__(self, tokenizer, max_input_length: int, max_target_length: int):
        if int(max_input_length) < 1 or int(max_target_length) < 1:
            raise ValueError(f"max_input_length and max_target_length must be positive, got "
                             f"{max_input_length} and {max_target_length}")
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token: a summary needs one to end")
        self.tokenizer = tokenizer
        self.max_input_length = int(max_input_length)
        self.max_target_length = int(max_target_length)
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.eos = tokenizer.eos_token_id

    def truncate_documents(self, documents: Sequence[str]) -> tuple[list[str], list[bool]]:
        """Each document cut to its first ``max_input_length`` tokens (as text), and whether it was cut."""
        documents = list(documents)
        if not documents:
            return [], []
        fast = bool(getattr(self.tokenizer, "is_fast", False))
        enc = self.tokenizer(documents, add_special_tokens=False, return_offsets_mapping=fast)
        out, cut = [], []
        for i, (document, ids) in enumerate(zip(documents, enc["input_ids"])):
            if len(ids) <= self.max_input_length:
                out.append(document)
                cut.append(False)
                continue
            if fast:  # the character span of the last kept token ends the kept text
                out.append(document[:enc["offset_mapping"][i][self.max_input_length - 1][1]])
            else:
                out.append(self.tokenizer.decode(ids[:self.max_input_length], skip_special_tokens=True))
            cut.append(True)
        return out, cut

    def prompt_ids(self, documents: Sequence[str]) -> tuple[list[list[int]], list[bool]]:
        """Prompt token ids (BOS if the tokenizer has one, then the prompt) and the truncation flags."""
        kept, cut = self.truncate_documents(documents)
        if not kept:
            return [], []
        encoded = self.tokenizer([prompt_text(d) for d in kept], add_special_tokens=False)["input_ids"]
        return [self.bos + list(ids) for ids in encoded], cut

    def encode(self, pairs: Sequence[tuple[str, str]], origins: Sequence[str] | None = None, *,
               chunk: int = 1024) -> tuple[list[dict[str, np.ndarray]], TruncationCounts]:
        """``{"input_ids": int32, "loss_mask": int8}`` arrays per pair, and the truncation counts.

        Pairs are tokenized ``chunk`` at a time, so the tokenizer's intermediate lists (offsets of
        whole articles) never exist for a whole data set at once.
        """
        pairs = list(pairs)
        examples: list[dict[str, np.ndarray]] = []
        counts = TruncationCounts(examples=len(pairs))
        for start in range(0, len(pairs), chunk):
            part = pairs[start:start + chunk]
            prompts, doc_cut = self.prompt_ids([d for d, _ in part])
            summaries = self.tokenizer([s for _, s in part], add_special_tokens=False)["input_ids"]
            counts.documents += sum(doc_cut)
            for i, (prompt, summary) in enumerate(zip(prompts, summaries), start=start):
                if not summary:
                    where = origins[i] if origins else f"pair {i}"
                    raise DataError(f"{where}: the summary encodes to no tokens")
                end = [self.eos]
                if len(summary) > self.max_target_length:
                    counts.summaries += 1
                    summary, end = summary[:self.max_target_length], []
                ids = np.asarray(prompt + list(summary) + end, np.int32)
                mask = np.zeros(len(ids), np.int8)
                mask[len(prompt):] = 1
                examples.append({"input_ids": ids, "loss_mask": mask})
        return examples, counts


# ---- offline demo pairs ------------------------------------------------------------------------

# A sentence ends at . ! or ? after a word, a digit or a closing bracket/quote, when a capital
# follows; "e.g." and "i.e." do not end one.
_SENTENCE_END = re.compile(r"(?<!\be\.g\.)(?<!\bi\.e\.)(?<=[a-z0-9)\]\"'`][.!?])\s+(?=[A-Z])")


DEMO_DOCUMENTS = ("body", "paragraph")


def docstring_pairs(paragraphs: Iterable[str], document: str = "body") -> list[dict[str, str]]:
    """``{"document", "summary"}`` pairs from prose paragraphs of two sentences or more: a docstring
    paragraph opens with its summary sentence, so the first sentence is the summary. The document is
    the rest of the paragraph (``"body"``) or the whole paragraph (``"paragraph"``: the summary is then
    its lead sentence, a summary the document determines)."""
    if document not in DEMO_DOCUMENTS:
        raise ValueError(f"config key 'summarize.demo_document'={document!r} is not one of "
                         f"{', '.join(DEMO_DOCUMENTS)}")
    pairs = []
    for paragraph in paragraphs:
        sentences = _SENTENCE_END.split(paragraph)
        if len(sentences) >= 2:
            body = " ".join(sentences if document == "paragraph" else sentences[1:])
            pairs.append({"document": body, "summary": sentences[0]})
    return pairs


def demo_pairs(document: str = "body") -> list[dict[str, str]]:
    """The demo data set: pairs from the standard-library docstrings of ``jaxft.data.demo_corpus``."""
    from jaxft.data.corpus import demo_corpus

    return docstring_pairs(demo_corpus(), document)




# ---- records from the config ------------------------------------------------------------------


def load_pairs(config, *, train: bool = True) -> tuple[RecordList | None, RecordList, str]:
    """``(train, validation, source)``: records ``{"document", "summary"}`` with their origins.

    ``data.path`` or ``data.hf_dataset`` (columns ``data.document_column`` / ``data.summary_column``)
    when configured, else the offline docstring pairs. Validation comes from the dataset's
    ``summarize.validation_split``, from ``summarize.validation_path``, or else a seeded
    ``data.validation_fraction`` of the training records. With ``train=False`` the training records
    are only read when validation is a fraction of them, and ``None`` is returned in their place.
    """
    from jaxft.data.records import split_records
    from jaxft.loaders import load_records

    d, s = config.data, config.summarize
    columns = (d.document_column, d.summary_column)
    extra = None
    if d.path and s.validation_path:
        extra = d.copy_and_resolve_references()
        extra.path = s.validation_path
    elif not d.path and d.hf_dataset and s.validation_split:
        extra = d.copy_and_resolve_references()
        extra.hf_split = s.validation_split
    if extra is not None and not train:
        extra.max_records = 0
        return None, _renamed(load_records(extra, columns), columns), str(extra.path or extra.hf_dataset)
    records = load_records(d, columns)
    if records is None:
        pairs = demo_pairs(str(s.get("demo_document", "body")))[: int(d.max_records) or None]
        records = RecordList(pairs, origins=[f"docstring pair {i}" for i in range(len(pairs))])
        train_part, valid = split_records(records, float(d.validation_fraction), int(config.seed))
        return train_part, valid, "document/summary pairs from Python's own docstrings"
    records = _renamed(records, columns)
    source = d.path or f"{d.hf_dataset} ({d.hf_config or 'default'}) {d.hf_split}"
    if extra is None:
        train_part, valid = split_records(records, float(d.validation_fraction), int(config.seed))
        return train_part, valid, source
    return records, _renamed(load_records(extra, columns), columns), source


def seeded_subset(records: RecordList, count: int, seed: int) -> RecordList:
    """A seeded choice of ``count`` records in their original order, keeping their origins: the same
    records at every eval, drawn from the whole set rather than its head (a file's first rows are often
    one source or one day)."""
    count = min(int(count), len(records))
    chosen = np.sort(np.random.default_rng(seed).permutation(len(records))[:count])
    origins = getattr(records, "origins", None) or None
    return RecordList([records[i] for i in chosen], origins=[origins[i] for i in chosen] if origins else None)


def _renamed(records: RecordList, columns: tuple[str, str]) -> RecordList:
    document, summary = columns
    return RecordList([{"document": r[document], "summary": r[summary]} for r in records],
                      origins=getattr(records, "origins", None) or None)
