"""The Qwen2 / Qwen2.5 / Qwen3 tokenizer, built offline from the packaged BPE ranks.

The byte-level BPE ranks (``qwen.tiktoken``, 151,643 tokens) are turned into a
vocabulary and merges by transformers' tiktoken converter and wrapped in
transformers' ``Qwen2Tokenizer`` (NFC normalization, Qwen's split regex,
byte-level pre-tokenizer), the class Qwen checkpoints load with. The control
tokens follow at ids 151643-151668 in the order Qwen2.5 and Qwen3 checkpoints
use; Qwen3 added the last four.
"""

from __future__ import annotations

import importlib.metadata

from jaxft import assets
from jaxft.tokenization.pretrained import load_or_build

FIRST_SPECIAL_ID = 151643

# (content, special) in id order from FIRST_SPECIAL_ID. Tool, FIM and thinking markers are
# not "special" in Qwen's own tokenizer config, so decode(skip_special_tokens=True) keeps them.
QWEN_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)

# ChatML: every turn is "<|im_start|>{role}\n{content}<|im_end|>\n". Assistant replies (with
# their closing <|im_end|>) sit in a generation block, so transformers can return an
# assistant-token mask for loss masking. No default system prompt is injected.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- generation -%}{{- message['content'] + '<|im_end|>' -}}{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_BUILD_VERSION = 1  # bump when the construction below changes


def qwen_tokenizer(*, cache: bool = True):
    """A ``Qwen2Tokenizer`` for Qwen2/Qwen2.5/Qwen3 ids with a ChatML chat template.

    ``eos_token`` is ``<|im_end|>`` (end of a chat turn, as in the instruct and
    Qwen3 checkpoints) and ``pad_token`` is ``<|endoftext|>``; no BOS is added.
    The converted tokenizer is cached under ``jaxft.assets.cache_dir()``.
    """
    ranks = assets.qwen_tiktoken_path()
    if not cache:
        return _build(str(ranks))
    fingerprint = repr((_BUILD_VERSION, assets.QWEN_TIKTOKEN.installed_version(), ranks.stat().st_size,
                        importlib.metadata.version("transformers"), QWEN_ADDED_TOKENS, CHATML_TEMPLATE))
    return load_or_build("qwen", fingerprint, lambda: _build(str(ranks)))


def _build(ranks_file: str):
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter

    vocab, merges = TikTokenConverter(vocab_file=ranks_file).extract_vocab_merges_from_model(ranks_file)
    if len(vocab) != FIRST_SPECIAL_ID:
        raise ValueError(f"{ranks_file}: {len(vocab)} BPE ranks, Qwen2 ids need {FIRST_SPECIAL_ID}")
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token="<|endoftext|>",
                               pad_token="<|endoftext|>", unk_token=None, bos_token=None)
    # <|endoftext|> is already added (as the eos/pad token); the rest follow in id order.
    tokenizer.add_tokens([AddedToken(content, special=special, normalized=False)
                          for content, special in QWEN_ADDED_TOKENS[1:]])
    tokenizer.add_special_tokens({
        "eos_token": "<|im_end|>",
        "additional_special_tokens": [c for c, special in QWEN_ADDED_TOKENS[1:] if special],
    })
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.model_max_length = 131072
    for offset, (content, _) in enumerate(QWEN_ADDED_TOKENS):
        if tokenizer.convert_tokens_to_ids(content) != FIRST_SPECIAL_ID + offset:
            raise ValueError(f"{content} did not land on id {FIRST_SPECIAL_ID + offset}")
    return tokenizer
