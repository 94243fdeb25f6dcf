"""``check-seq-len``: how long the training records are once rendered with the chat template.

The reference's report: ``Measured {n} samples from {path} (tokens|characters).``, then min, max,
mean and the requested percentiles (numpy's linear interpolation), two decimals each. Tokens are
counted on the whole rendered conversation, answer included, as the tokenizer encodes it by
default; ``--char-only`` counts the characters of the message contents joined by newlines.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jaxft.recipes.movielens import prompts


def length_stats(lengths, percentiles) -> dict[str, float]:
    arr = np.asarray(lengths, np.float64)
    stats = {"min": float(arr.min()), "max": float(arr.max()), "mean": float(arr.mean())}
    for p in percentiles:
        stats[f"p{int(p)}"] = float(np.percentile(arr, p))
    return stats


def measure(records, tokenizer=None) -> list[int]:
    if tokenizer is None:
        return [len("\n".join(m["content"] for m in prompts.chat_messages(r))) for r in records]
    from jaxft.recipes.movielens.encoding import render

    texts = [render(tokenizer, prompts.chat_messages(r)) for r in records]
    return [len(ids) for ids in tokenizer(texts)["input_ids"]]


def check_seq_len(config_spec: str, *, data_dir: Path | None = None, percentiles=(50, 90, 95, 99, 100),
                  char_only: bool = False, max_samples: int | None = None) -> str:
    from jaxft.config import load_config_file
    from jaxft.recipes.movielens.recipe import data_dir as configured_dir, load_tokenizer

    config = load_config_file(config_spec)
    if data_dir is not None:
        config.data.dir = str(data_dir)
    directory = configured_dir(config)
    path = directory / "train.json"
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
    records = records[:max_samples] if max_samples else records
    if not records:
        raise ValueError(f"{path}: no records")
    tokenizer = None if char_only else load_tokenizer(config, directory)
    lengths = measure(records, tokenizer)
    mode = "characters" if char_only else "tokens"
    lines = [f"Measured {len(lengths)} samples from {path} ({mode})."]
    lines += [f"{k}: {v:.2f}" for k, v in length_stats(lengths, percentiles).items()]
    if not char_only:
        cutoff = int(config.data.cutoff_len)
        over = sum(n > cutoff for n in lengths)
        lines.append(f"over cutoff_len={cutoff}: {over} ({100 * over / len(lengths):.1f}%)")
    return "\n".join(lines)
