"""Answers by generation, as the reference's ``infer_lora.py`` / ``batch_infer_lora.py`` (``finetune/scripts``
at ``c5d1f1c``) produce them: the prompt is rendered with the chat template and its generation prompt,
the model samples up to 64 new tokens (temperature 0.7, top-p 0.9; ``greedy`` decodes greedily), and
the answer is read from the text the way its ``extract_answer`` reads it. The prompt is the one the
export was trained on (its system prompt and instruction, ``movielens.json``), rendered with
``enable_thinking=False`` as in training, so for Qwen3 the generation starts after the empty think block.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np

from jaxft.recipes.movielens import encoding, prompts

UNKNOWN = "Unknown"
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
_PROMPT_BUCKET = 32  # left-padded prompt widths are multiples of this, so few shapes compile


@dataclasses.dataclass(frozen=True)
class Decoding:
    max_new_tokens: int = 64
    temperature: float = 0.7
    top_p: float = 0.9
    greedy: bool = False


def extract_answer(text: str) -> str:
    """Yes, No or Unknown from a generated text: a think block is dropped; the text starting with
    yes/no decides, else the one of the two words it contains alone (case-insensitive)."""
    text = _THINK.sub("", text.split("assistant")[-1]).strip().lower()
    if text.startswith("yes"):
        return prompts.POSITIVE
    if text.startswith("no"):
        return prompts.NEGATIVE
    if ("yes" in text) != ("no" in text):
        return prompts.POSITIVE if "yes" in text else prompts.NEGATIVE
    return UNKNOWN


def prompt_ids(tokenizer, records: Sequence[dict]) -> list[list[int]]:
    """Each record's generation prompt (system, user turn, the template's assistant opening)."""
    texts = [encoding.render(tokenizer, prompts.chat_messages(r, with_answer=False), add_generation_prompt=True)
             for r in records]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def stop_ids(tokenizer) -> tuple[int, ...]:
    """The tokenizer's EOS and the chat template's end of turn (``<|im_end|>``), when it has one."""
    ids = {tokenizer.eos_token_id}
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(end_of_turn, int) and end_of_turn != tokenizer.unk_token_id:
        ids.add(end_of_turn)
    return tuple(sorted(i for i in ids if i is not None))


def generate_answers(cfg, params, tokenizer, records: Sequence[dict], decoding: Decoding = Decoding(), *,
                     lora=None, batch_size: int = 8, seed: int = 0) -> list[str]:
    """The generated text of each record, in left-padded batches of one shape."""
    import jax

    from jaxft.sampling import SamplingConfig, generate

    ids = prompt_ids(tokenizer, records)
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids(tokenizer)[0])
    sampling = SamplingConfig(max_new_tokens=decoding.max_new_tokens,
                              temperature=0.0 if decoding.greedy else decoding.temperature,
                              top_p=1.0 if decoding.greedy else decoding.top_p, eos_token_ids=stop_ids(tokenizer),
                              pad_token_id=pad)
    width = -(-max(len(p) for p in ids) // _PROMPT_BUCKET) * _PROMPT_BUCKET
    rows = min(batch_size, len(ids))
    texts = []
    for start in range(0, len(ids), rows):
        chunk = ids[start:start + rows]
        chunk = chunk + [chunk[-1]] * (rows - len(chunk))  # one batch shape; the extra rows are dropped
        batch = np.full((rows, width), pad, np.int32)
        mask = np.zeros((rows, width), np.int32)
        for r, p in enumerate(chunk):
            batch[r, width - len(p):] = p
            mask[r, width - len(p):] = 1
        out = generate(cfg, params, batch, sampling, attention_mask=mask, lora=lora, seed=seed + start)
        tokens, lengths = jax.device_get((out.tokens, out.lengths))
        for r in range(min(rows, len(ids) - start)):
            texts.append(tokenizer.decode(tokens[r, :int(lengths[r])], skip_special_tokens=True))
    return texts


def answer_scores(answers: Sequence[str], labels: Sequence[str]) -> dict:
    """Accuracy over every record (an Unknown answer is wrong), precision/recall/F1 with Yes positive
    (Unknown is not a Yes), and how many answers were Unknown, as ``batch_infer_lora.py`` counts them."""
    from jaxft.recipes.movielens.metrics import scores

    pred = [int(a == prompts.POSITIVE) for a in answers]
    true = [int(label == prompts.POSITIVE) for label in labels]
    out = scores(pred, true)
    out["accuracy"] = sum(a == label for a, label in zip(answers, labels)) / len(labels) if labels else 0.0
    out["unknown"] = sum(a == UNKNOWN for a in answers)
    return out


def infer(export, *, data=None, prompt: str | None = None, limit: int | None = None, base: bool = False,
          decoding: Decoding = Decoding(), batch_size: int = 8, seed: int = 0, base_model: str | None = None) -> dict:
    """Generated answers of the tuned model (and of the base with ``base``) for the rows of a
    ``test_raw.jsonl`` or for one user ``prompt`` (a record's ``input`` text)."""
    from jaxft.recipes.movielens.compare import read_test_rows
    from jaxft.recipes.movielens.recipe import base_params, load_export

    if (data is None) == (prompt is None):
        raise ValueError("give --data (a test_raw.jsonl) or --prompt, not both")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    loaded = load_export(str(export), base_model)
    s = loaded.settings
    instruction, system = s.get("instruction", prompts.INSTRUCTION), s.get("system_prompt", prompts.SYSTEM_PROMPT)
    rows = read_test_rows(data, limit) if data is not None else []
    records = ([prompts.test_row_record(row, instruction, system) for row in rows] if rows else
               [{"instruction": instruction, "input": prompt, "system": system}])
    models = {"tuned": (loaded.params, loaded.adapters)}
    if base:
        models = {"base": (base_params(loaded, base_model), None), **models}
    out: dict = {"export": str(export), "data": str(data) if data is not None else None, "models": {}}
    for name, (params, lora) in models.items():
        texts = generate_answers(loaded.cfg, params, loaded.tokenizer, records, decoding, lora=lora,
                                 batch_size=batch_size, seed=seed)
        answers = [extract_answer(t) for t in texts]
        result = {"texts": texts, "answers": answers}
        if rows:
            result["scores"] = answer_scores(answers, [r["label"] for r in rows])
        out["models"][name] = result
    out["rows"] = rows
    return out


def format_infer(result: dict, examples: int = 5) -> str:
    lines = []
    for name, r in result["models"].items():
        if "scores" not in r:
            lines.append(f"{name}: {r['answers'][0]} <- {r['texts'][0]!r}")
            continue
        sc = r["scores"]
        lines.append(f"{name}: accuracy {sc['accuracy']:.4f}  precision {sc['precision']:.4f}  recall "
                     f"{sc['recall']:.4f}  F1 {sc['f1']:.4f}  unknown {sc['unknown']} of {sc['n']}")
        for row, text, answer in list(zip(result["rows"], r["texts"], r["answers"]))[:examples]:
            lines.append(f"  {row['candidate_title']!r} ({row['label']}): {answer} <- {text!r}")
    return "\n".join(lines)
