"""Small tokenizers for demos and tests, trained on the offline demo corpus at first use.

Three kinds, so a demo can pair models with *different* vocabularies:

* ``"bpe"``: byte-level BPE (GPT-2 / Llama 3 style), never needs an unknown token;
* ``"unigram"``: SentencePiece-style Unigram over ``▁``-marked words (Llama 2 / T5 style);
* ``"byte"``: one token per UTF-8 byte; nothing to train.

Trained tokenizers are cached as ``tokenizer.json`` files keyed by kind, vocabulary size and Python
version (the corpus comes from the interpreter's own docstrings). Like Llama tokenizers, encoding
with ``add_special_tokens=True`` (the transformers default) prepends the bos token.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from jaxft.assets import cache_dir as jaxft_cache_dir
from jaxft.data.corpus import atomic_write_text, demo_corpus, python_tag

Kind = Literal["bpe", "unigram", "byte"]
PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
DEFAULT_VOCAB_SIZE = 4096
# Bump when the training recipe changes, so stale cache entries are not picked up.
_RECIPE = 1


def demo_tokenizer(kind: Kind = "bpe", vocab_size: int | None = None, *,
                   cache_dir: str | os.PathLike | None = None) -> PreTrainedTokenizerFast:
    """A ``transformers`` fast tokenizer with ``<s>``/``</s>``/``<pad>`` set (ids 1, 2, 0).

    ``vocab_size`` defaults to 4096 for the trained kinds and must be left unset for ``"byte"``
    (its vocabulary is the 256 bytes plus the special tokens). ``cache_dir`` defaults to
    ``~/.cache/jaxft/tokenizers``.
    """
    if kind == "byte":
        if vocab_size is not None:
            raise ValueError("the byte tokenizer has a fixed vocabulary (256 bytes + 3 special tokens); "
                             "leave vocab_size unset")
        return _wrap(_byte_tokenizer(), kind)
    if kind not in ("bpe", "unigram"):
        raise ValueError(f"unknown demo tokenizer kind {kind!r}; expected 'bpe', 'unigram' or 'byte'")
    vocab_size = DEFAULT_VOCAB_SIZE if vocab_size is None else vocab_size
    if not 300 <= vocab_size <= 32_768:
        raise ValueError(f"vocab_size={vocab_size} is out of range for a demo tokenizer (300..32768)")
    directory = Path(cache_dir) if cache_dir is not None else jaxft_cache_dir() / "tokenizers"
    path = directory / f"{kind}-{vocab_size}-{python_tag()}-r{_RECIPE}.json"
    if not path.exists():
        # Two processes may both train; each renames a complete file into place, so either wins intact.
        atomic_write_text(path, _train(kind, vocab_size).to_str())
    return _wrap(Tokenizer.from_file(str(path)), kind)


def _train(kind: str, vocab_size: int) -> Tokenizer:
    corpus = demo_corpus()
    if kind == "bpe":
        tokenizer = _byte_level(models.BPE())
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, BOS, EOS], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.normalizer = normalizers.NFKC()
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        # A faster pruning schedule than the default: about a quarter less CPU, same compression here.
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=[PAD, BOS, EOS, UNK], unk_token=UNK,
                                          shrinking_factor=0.5, max_piece_length=12, show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer


def _byte_level(model) -> Tokenizer:
    tokenizer = Tokenizer(model)
    # Bytes map to printable characters first, so no text is ever out of vocabulary.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _byte_tokenizer() -> Tokenizer:
    specials = [PAD, BOS, EOS]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(specials + alphabet)}
    tokenizer = _byte_level(models.BPE(vocab=vocab, merges=[]))
    tokenizer.add_special_tokens(specials)
    return tokenizer


def _wrap(tokenizer: Tokenizer, kind: str) -> PreTrainedTokenizerFast:
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)])
    extra = {"unk_token": UNK} if kind == "unigram" else {}
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   padding_side="right", **extra)
