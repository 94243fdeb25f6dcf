"""Character-level tokenizers ("char:PATH"): one id per character of a training text.

Ids follow the sorted characters (as a plain character tokenizer numbers them), then
``<unk>``, ``</s>`` and ``<pad>``. ``PATH`` is the ``char_vocab.json`` written by
``build_char_vocab`` or the directory holding it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from jaxft.tokenization.pretrained import TokenizerError

VOCAB_FILE = "char_vocab.json"
UNK, EOS, PAD = "<unk>", "</s>", "<pad>"


def build_char_vocab(texts: Iterable[str], output_dir: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Collect the characters of ``texts`` into ``output_dir/char_vocab.json`` (+ transformers files)."""
    chars: set[str] = set()
    for text in texts:
        chars.update(text)
    if not chars:
        raise TokenizerError("--char: the input text is empty")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / VOCAB_FILE).write_text(json.dumps({"chars": sorted(chars)}, ensure_ascii=False))
    tokenizer = char_tokenizer(out)
    tokenizer.save_pretrained(str(out))
    return tokenizer


def char_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerFast:
    file = Path(path)
    if file.is_dir():
        file = file / VOCAB_FILE
    if not file.is_file():
        raise TokenizerError(f"{file}: no character vocabulary file")
    try:
        chars = json.loads(file.read_text())["chars"]
    except (ValueError, KeyError, TypeError):
        raise TokenizerError(f"{file}: not a character vocabulary (expected {{\"chars\": [...]}})") from None
    if not chars or not all(isinstance(c, str) and len(c) == 1 for c in chars) or len(set(chars)) != len(chars):
        raise TokenizerError(f"{file}: 'chars' must list distinct single characters")
    vocab = {c: i for i, c in enumerate(chars)}
    for special in (UNK, EOS, PAD):
        vocab[special] = len(vocab)
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), "isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens([UNK, EOS, PAD])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token=UNK, eos_token=EOS, pad_token=PAD,
                                   padding_side="right")
