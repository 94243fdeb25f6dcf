"""SentencePiece models as transformers fast tokenizers ("sentencepiece:PATH"), and their trainer.

The conversion builds a ``tokenizers`` pipeline that encodes exactly as
``SentencePieceProcessor.encode`` does for models trained by ``train_sentencepiece``
(identity normalisation, dummy prefix, byte fallback, user-defined pieces such as
``### Response:``), so the same ids come out of either, and the tokenizer can be
saved beside checkpoints with ``save_pretrained``.

Models trained with another normalisation rule (SentencePiece's default ``nmt_nfkc``, ``nfkc``,
their ``_cf`` variants, or a user-defined rule) carry the rule as a compiled character map in the
model file. That map is run as it is (the ``Precompiled`` normalizer executes SentencePiece's own
compiled trie), followed by SentencePiece's whitespace handling (``remove_extra_whitespaces``: no
leading, trailing or repeated spaces), so text is normalised as the model itself normalises it.
Decoding gives the normalised text back (NFKC is not invertible: "ﬁ" comes back as "fi").
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from jaxft.tokenization.pretrained import TokenizerError

SPM_FILE = "tokenizer.model"
RESPONSE_MARKER = "### Response:"
UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
_SPACE = "\u2581"  # SentencePiece's visible space


def train_sentencepiece(texts: Iterable[str], output_dir: str | os.PathLike, *, vocab_size: int,
                        model_type: str = "unigram", user_symbols: tuple[str, ...] = (RESPONSE_MARKER,),
                        ) -> PreTrainedTokenizerFast:
    """Train a SentencePiece model on ``texts`` (one string per sentence/paragraph), save it as
    ``output_dir/tokenizer.model`` with the transformers files next to it, and return the tokenizer.

    Byte fallback keeps every input encodable; whitespace and newlines are kept as they are
    (identity normalisation), so decoded samples keep their line breaks.
    """
    import sentencepiece as spm

    if model_type not in ("unigram", "bpe"):
        raise ValueError(f"--model-type must be unigram or bpe, got {model_type!r}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=buffer, vocab_size=int(vocab_size), model_type=model_type,
            byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
            remove_extra_whitespaces=False, split_digits=True, max_sentence_length=1 << 16,
            user_defined_symbols=[s.replace(" ", _SPACE) for s in user_symbols],
            unk_id=0, bos_id=1, eos_id=2, pad_id=3, pad_piece=PAD, minloglevel=2,
            hard_vocab_limit=False)  # a soft limit: small texts get the vocabulary they support
    except RuntimeError as e:  # e.g. a vocabulary larger than the text supports
        raise TokenizerError(f"sentencepiece training failed: {str(e).strip().splitlines()[-1]}") from None
    (out / SPM_FILE).write_bytes(buffer.getvalue())
    tokenizer = sentencepiece_tokenizer(out / SPM_FILE)
    tokenizer.save_pretrained(str(out))
    return tokenizer


def sentencepiece_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """A transformers tokenizer for a SentencePiece ``.model`` file (or a directory holding ``tokenizer.model``)."""
    from sentencepiece import sentencepiece_model_pb2

    file = Path(path)
    if file.is_dir():
        file = file / SPM_FILE
    if not file.is_file():
        raise TokenizerError(f"{file}: no SentencePiece model file")
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(file.read_bytes())
    except Exception as e:  # protobuf's DecodeError
        raise TokenizerError(f"{file}: not a SentencePiece model ({type(e).__name__})") from None
    if not proto.pieces:
        raise TokenizerError(f"{file}: not a SentencePiece model (no pieces)")
    return _convert(proto, file)


def _convert(proto, file: Path) -> PreTrainedTokenizerFast:
    pb = type(proto.pieces[0])
    pieces = [(p.piece, p.score) for p in proto.pieces]
    unk_id = proto.trainer_spec.unk_id
    byte_fallback = proto.trainer_spec.byte_fallback
    if proto.trainer_spec.model_type == 1:  # UNIGRAM
        model = models.Unigram(pieces, unk_id=unk_id, byte_fallback=byte_fallback)
    elif proto.trainer_spec.model_type == 2:  # BPE
        vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
        model = models.BPE(vocab, _bpe_merges(vocab, proto, pb), unk_token=pieces[unk_id][0], fuse_unk=True,
                           byte_fallback=byte_fallback)
    else:
        raise TokenizerError(f"{file}: SentencePiece model type {proto.trainer_spec.model_type} is not supported "
                             "(unigram or bpe)")
    tokenizer = Tokenizer(model)
    # One deviation, at the very start of a text only: SentencePiece adds its dummy prefix even before a
    # leading space (kept by identity normalisation), a leading user piece or a character its rule removes;
    # Metaspace does not. Everywhere else the ids are the same.
    tokenizer.normalizer = _normalizer(proto.normalizer_spec, file)
    prepend = "first" if proto.normalizer_spec.add_dummy_prefix else "never"
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_SPACE, prepend_scheme=prepend, split=True)
    steps = [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if proto.normalizer_spec.add_dummy_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    tokenizer.decoder = decoders.Sequence(steps)
    # Control pieces are special tokens; user-defined pieces match anywhere in the normalised text, as
    # SentencePiece matches them (after its normalisation, so "\n### Response:" is found after the
    # newline became a space under nmt_nfkc).
    tokenizer.add_special_tokens([AddedToken(p.piece, special=True, normalized=False)
                                  for p in proto.pieces if p.type == pb.CONTROL])
    tokenizer.add_tokens([AddedToken(p.piece, special=False, normalized=True)
                          for p in proto.pieces if p.type == pb.USER_DEFINED])
    names = {p.piece for p in proto.pieces}
    specials = {key: tok for key, tok in (("unk_token", UNK), ("bos_token", BOS), ("eos_token", EOS),
                                          ("pad_token", PAD)) if tok in names}
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, padding_side="right", **specials)


def _normalizer(spec, file: Path) -> normalizers.Normalizer:
    """SentencePiece's normalisation of ``spec``: its compiled rule, its whitespace handling, visible spaces."""
    steps = []
    if spec.name not in ("identity", ""):
        if not spec.precompiled_charsmap:
            raise TokenizerError(f"{file}: normalization rule '{spec.name}' has no compiled character map")
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:
        # Leading spaces collapse to the one that the dummy prefix would add (Metaspace adds none before it);
        # stripping them would move the text's start and lose the prefix.
        steps += [normalizers.Strip(left=False, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    if not spec.escape_whitespaces and spec.HasField("escape_whitespaces"):
        raise TokenizerError(f"{file}: models trained with escape_whitespaces=false are not supported")
    steps.append(normalizers.Replace(" ", _SPACE))
    return normalizers.Sequence(steps)


def _bpe_merges(vocab: dict[str, int], proto, pb) -> list[tuple[str, str]]:
    """Merges ranked like SentencePiece's scores: by the merged piece's id, then by its parts' ids."""
    mergeable = {p.piece for p in proto.pieces if p.type == pb.NORMAL}
    merges = []
    for piece in mergeable:
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                merges.append((vocab[piece], vocab[left], vocab[right], left, right))
    merges.sort()
    return [(left, right) for *_, left, right in merges]
