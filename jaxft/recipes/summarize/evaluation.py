"""Summaries by generation, scored with ROUGE-1/2/L (the ``rouge-score`` package, Porter stemming).

Generation uses the reference's decoding: sampling at temperature 0.7 with top-p 0.9, top-k 50,
repetition penalty 1.1 and up to 128 new tokens (``greedy=True`` decodes greedily instead). The
results file keeps the reference's fields (``avg_summary_length`` in words, ``avg_generation_time``
in seconds per summary, and each sample's texts) and adds the ROUGE F-measures.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxft.recipes.summarize.data import SummaryEncoder

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
_PROMPT_BUCKET = 32  # prompts are left-padded to a multiple of this, so few shapes compile
_SHOWN_DOCUMENT_CHARS = 200  # the results file shows the start of each document, as the reference's


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    max_new_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.1
    greedy: bool = False

    def sampling(self, eos_token_id: int, pad_token_id: int):
        from jaxft.sampling import SamplingConfig

        if self.greedy:
            return SamplingConfig(max_new_tokens=self.max_new_tokens, temperature=0.0,
                                  repetition_penalty=self.repetition_penalty,
                                  eos_token_ids=(eos_token_id,), pad_token_id=pad_token_id)
        return SamplingConfig(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                              top_k=self.top_k, repetition_penalty=self.repetition_penalty,
                              eos_token_ids=(eos_token_id,), pad_token_id=pad_token_id)


def rouge_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measures (stemming on) of predictions against their references."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(reference, prediction)  # (target, prediction) order
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    n = max(len(predictions), 1)
    return {name: total / n for name, total in totals.items()}


def distinct_share(texts: Sequence[str]) -> float:
    """Distinct generations over generations: 1/n when every document gets the same summary."""
    return len(set(texts)) / len(texts) if texts else 0.0


def constant_baseline(candidates: Sequence[str], references: Sequence[str], *, pool: int = 256,
                      seed: int = 0) -> dict[str, Any]:
    """The best document-independent summary: of (a seeded ``pool`` of) ``candidates``, the one whose
    mean ROUGE-1 against every reference is highest, and its ROUGE-1/2/L. Chosen on the references
    themselves, so no constant summary from the candidates scores higher; a model whose summaries
    depend on their documents has to beat it to show it read them."""
    from rouge_score import rouge_scorer

    unique = sorted(set(c for c in candidates if c.strip()))
    if not unique or not references:
        raise ValueError("a constant baseline needs candidate summaries and references")
    if len(unique) > pool:
        unique = [unique[i] for i in np.sort(np.random.default_rng(seed).permutation(len(unique))[:pool])]
    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    means = [np.mean([scorer.score(r, c)["rouge1"].fmeasure for r in references]) for c in unique]
    best = unique[int(np.argmax(means))]
    return {"summary": best, "candidates": len(unique), **rouge_scores([best] * len(references), references)}


def generate_summaries(cfg, params, tokenizer, encoder: SummaryEncoder, documents: Sequence[str], *,
                       decode: DecodeSettings = DecodeSettings(), lora=None, batch_size: int = 8,
                       seed: int = 0) -> tuple[list[str], list[float]]:
    """(summary, seconds) for each document, generated in left-padded batches of ``batch_size``.

    A batch's wall time is shared equally by its rows; the first batch also pays for compilation.
    """
    import jax

    from jaxft.sampling import generate

    prompts, _ = encoder.prompt_ids(documents)
    if not prompts:
        return [], []
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else encoder.eos)
    sampling = decode.sampling(encoder.eos, pad)
    width = -(-max(len(p) for p in prompts) // _PROMPT_BUCKET) * _PROMPT_BUCKET
    rows = min(batch_size, len(prompts))
    texts, seconds = [], []
    for start in range(0, len(prompts), rows):
        chunk = prompts[start:start + rows]
        chunk = chunk + [chunk[-1]] * (rows - len(chunk))  # keep one batch shape; extra rows are dropped
        ids = np.full((rows, width), pad, np.int32)
        mask = np.zeros((rows, width), np.int32)
        for r, p in enumerate(chunk):
            ids[r, width - len(p):] = p
            mask[r, width - len(p):] = 1
        began = time.perf_counter()
        out = generate(cfg, params, ids, sampling, attention_mask=mask, lora=lora, seed=seed + start)
        tokens, lengths = jax.device_get((out.tokens, out.lengths))
        took = time.perf_counter() - began
        real = min(rows, len(prompts) - start)
        for r in range(real):
            n = int(lengths[r])
            texts.append(tokenizer.decode(tokens[r, :n], skip_special_tokens=True).strip())
            seconds.append(took / real)
    return texts, seconds


def evaluate_summaries(cfg, params, tokenizer, encoder: SummaryEncoder, pairs: Sequence[tuple[str, str]], *,
                       decode: DecodeSettings = DecodeSettings(), lora=None, batch_size: int = 8,
                       seed: int = 0) -> dict[str, Any]:
    """ROUGE and the reference's summary statistics over ``pairs`` of (document, reference summary)."""
    documents = [d for d, _ in pairs]
    references = [s for _, s in pairs]
    generated, seconds = generate_summaries(cfg, params, tokenizer, encoder, documents, decode=decode, lora=lora,
                                            batch_size=batch_size, seed=seed)
    results: dict[str, Any] = dict(rouge_scores(generated, references))
    results["avg_summary_length"] = float(np.mean([len(g.split()) for g in generated])) if generated else 0.0
    results["avg_generation_time"] = float(np.mean(seconds)) if seconds else 0.0
    results["num_samples"] = len(generated)
    results["distinct_share"] = distinct_share(generated)
    results["decoding"] = dataclasses.asdict(decode)
    results["samples"] = [
        {"original_text": _shown(document), "target_summary": reference, "generated_summary": summary,
         "generation_time": took}
        for document, reference, summary, took in zip(documents, references, generated, seconds)]
    return results


def _shown(document: str) -> str:
    if len(document) > _SHOWN_DOCUMENT_CHARS:
        return document[:_SHOWN_DOCUMENT_CHARS] + "..."
    return document


def write_results(path: str | Path, results: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def summary_line(results: dict[str, Any]) -> str:
    return (f"ROUGE-1 {results['rouge1']:.4f}  ROUGE-2 {results['rouge2']:.4f}  ROUGE-L {results['rougeL']:.4f}  "
            f"avg summary length {results['avg_summary_length']:.1f} words  "
            f"avg generation time {results['avg_generation_time']:.2f} s  "
            f"distinct {results['distinct_share']:.0%}  ({results['num_samples']} samples)")
