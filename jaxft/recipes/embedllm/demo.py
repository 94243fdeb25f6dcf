"""Generated conversations whose last turn can only be predicted from an earlier turn.

One history turn states a word ("Remember the word castle."), zero to two
turns of unrelated prose (sentences from the demo corpus) surround it, the
last history turn asks for it, and the last turn answers ("The word was
castle."). The word is drawn from ``num_words`` candidates, so without the
history the answer word costs about ``log(num_words)`` nats; with it, nothing.
"""

from __future__ import annotations

import numpy as np

from jaxft.recipes.embedllm.data import SEPARATOR

ANSWER = "The word was {}."
FACT = "Remember the word {}."
QUESTION = "What was the word?"


def fact_words(tokenizer, count: int) -> list[str]:
    """``count`` words that are one token in the answer sentence (so each answer is one uncertain token)."""
    base = len(tokenizer(ANSWER.format("x"), add_special_tokens=False)["input_ids"])
    words = []
    for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        word = tokenizer.convert_tokens_to_string([token]).strip()
        if len(word) < 4 or not word.isalpha() or not word.islower() or word in words:
            continue
        if len(tokenizer(ANSWER.format(word), add_special_tokens=False)["input_ids"]) == base:
            words.append(word)
        if len(words) == count:
            return words
    raise ValueError(f"embedllm demo: the tokenizer has only {len(words)} one-token words, need {count}")


def _fillers(max_words: int) -> list[str]:
    from jaxft.data.corpus import demo_corpus

    out = []
    for text in demo_corpus():
        words = text.split()
        if len(words) >= 4:
            out.append(" ".join(words[:max_words]))
    return out


def demo_conversations(tokenizer, count: int, *, num_words: int = 64, seed: int = 0, max_fillers: int = 2,
                       filler_words: int = 12, separator: str = SEPARATOR, words: list[str] | None = None) -> list[str]:
    rng = np.random.default_rng(seed)
    words, fillers = words or fact_words(tokenizer, num_words), _fillers(filler_words)
    out = []
    for _ in range(count):
        word = words[rng.integers(len(words))]
        history = [fillers[i] for i in rng.integers(len(fillers), size=rng.integers(max_fillers + 1))]
        history.insert(int(rng.integers(len(history) + 1)), FACT.format(word))
        out.append(separator.join(history + [QUESTION, ANSWER.format(word)]))
    return out


def answer_index(tokenizer, words: list[str]):
    """``answer_fn`` of the demo's last turns: the index of the recalled word's token in "The word was w."
    (the first position where two answers differ), or -1 for a turn too short to hold it."""
    a, b = (tokenizer(ANSWER.format(w), add_special_tokens=False)["input_ids"] for w in words[:2])
    index = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    return lambda target: index if len(target) > index else -1
