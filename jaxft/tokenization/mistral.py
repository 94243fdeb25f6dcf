"""The Mistral-7B (v0.1) tokenizer, built offline from the packaged SentencePiece model.

The SentencePiece BPE model becomes a ``tokenizers`` byte-fallback BPE with the
merges ordered by piece score, as SentencePiece applies them (whitespace-only
pieces score lowest, so runs of spaces merge last), and SentencePiece's
normalization: spaces become "▁" and every text segment gets a leading "▁".
That reproduces ``sentencepiece`` ids exactly, runs of spaces and code
indentation included.

A segment is the text between two special tokens, which is how Mistral's
reference tokenizer (``mistral_common``, instruct format v1) encodes a
conversation, one piece at a time:

    <s> + sp("[INST] {user} [/INST]") + sp("{assistant}") + </s> + sp("[INST] ...") ...

The chat template renders exactly that (a system prompt, if any, is prefixed to
the first user turn), so ``apply_chat_template(..., tokenize=True)`` gives the
reference ids.
"""

from __future__ import annotations

from jaxft import assets

# Roles must alternate user/assistant (after an optional system message); assistant
# replies sit in a generation block so transformers can return an assistant-token mask.
MISTRAL_INST_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set turns = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system_prefix = '' -%}"
    "{%- set turns = messages -%}"
    "{%- endif -%}"
    "{{- bos_token -}}"
    "{%- for message in turns -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{- raise_exception('Mistral chats alternate user and assistant turns, starting with the user') -}}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- '[INST] ' + (system_prefix if loop.first else '') + message['content'] + ' [/INST]' -}}"
    "{%- else -%}"
    "{%- generation -%}{{- ' ' + message['content'] + eos_token -}}{%- endgeneration -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


def mistral_tokenizer():
    """A fast tokenizer for Mistral-7B v0.1 ids with the ``[INST]`` chat template.

    Adds ``<s>`` (id 1) in front of every encoded text; ``</s>`` is id 2 and
    ``<unk>`` id 0. There is no pad token (as in Mistral's checkpoints): set one
    before padding. Building takes about a second, so nothing is cached.
    """
    import sentencepiece
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.tokenization_utils_base import generate_merges

    path = assets.mistral_sentencepiece_path()
    sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    if pieces[:3] != ["<unk>", "<s>", "</s>"] or len(pieces) != 32000:
        raise ValueError(f"{path}: not Mistral's SentencePiece model ({len(pieces)} pieces, first {pieces[:3]})")
    vocab = {piece: i for i, piece in enumerate(pieces)}
    merges = generate_merges(vocab, {piece: sp.get_score(i) for i, piece in enumerate(pieces)})

    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in pieces[:3]])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   add_bos_token=True, add_eos_token=False, chat_template=MISTRAL_INST_TEMPLATE,
                                   model_max_length=32768)
